"""The model thread's busy share (`tabular_model_busy_ratio`) and busy seconds.

The window arithmetic is checked with a hand-driven clock; the exported series with the real
pipeline and model on a registry of its own, read back in Prometheus text format.
"""

from __future__ import annotations

import asyncio
import threading
import time

import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import PipelineFactory
from worker.metrics import WorkerMetrics
from worker.model import EmbeddingModel
from worker.pipeline import Pipeline
from worker.settings import WorkerSettings
from worker.utilisation import BusyMeter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_share_of_the_window_with_calls_clipped_and_running() -> None:
    clock = Clock()
    busy: list[float] = []
    meter = BusyMeter(10.0, on_busy=busy.append, clock=clock)
    clock.now += 2
    assert meter.share() == 0.0
    meter.begin()
    clock.now += 1
    assert meter.share() == pytest.approx(1 / 3)  # younger than the window: since start
    meter.end()
    clock.now += 17  # t = 20: the 2..3 call has left the 10 s window
    assert meter.share() == 0.0
    meter.begin()
    clock.now += 4  # a call running for 4 s counts while it runs
    assert meter.share() == pytest.approx(0.4)
    meter.end()
    clock.now += 8  # t = 32: the window 22..32 keeps 2 s of the 20..24 call
    assert meter.share() == pytest.approx(0.2)
    assert busy == [pytest.approx(1.0), pytest.approx(4.0)]


def test_two_streams_share_is_of_both_threads_time() -> None:
    clock = Clock()
    meter = BusyMeter(10.0, clock=clock, threads=2)
    clock.now += 10
    meter.begin()  # this thread busy for the next 5 s, another thread for 2 s of them

    def two_seconds() -> None:
        meter.begin()
        clock.now += 2
        meter.end()

    other = threading.Thread(target=two_seconds)
    other.start()
    other.join()
    clock.now += 3
    meter.end()
    assert meter.share() == pytest.approx((5 + 2) / (2 * 10))


def test_end_without_begin_changes_nothing() -> None:
    meter = BusyMeter(5.0)
    meter.end()
    assert meter.share() == 0.0
    with pytest.raises(ValueError):
        BusyMeter(0)


def scrape(registry: CollectorRegistry) -> dict[str, float]:
    text = generate_latest(registry).decode()
    return {
        s.name: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("tabular_model_busy")
    }


async def test_pipeline_exports_the_model_threads_busy_time(
    embedding_model: EmbeddingModel, settings: WorkerSettings
) -> None:
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    pipeline = Pipeline(settings, embedding_model, metrics=metrics)
    try:
        assert scrape(registry)["tabular_model_busy_seconds_total"] == 0.0
        rows = [[f"row {i} about nothing in particular"] for i in range(256)]
        job = {"job_id": "j", "type": "embed", "table": {"columns": ["t"], "rows": rows}}
        started = time.perf_counter()
        outcome = await pipeline.handle(orjson.dumps(job))
        elapsed = time.perf_counter() - started
        assert outcome.status == "ok"
        values = scrape(registry)
        # The encode calls were most of the job's time, and the share says so.
        assert 0.5 * elapsed < values["tabular_model_busy_seconds_total"] <= elapsed
        assert 0.3 < values["tabular_model_busy_ratio"] <= 1.0
    finally:
        await pipeline.close()


async def test_idle_pipeline_is_not_busy(make_pipeline: PipelineFactory) -> None:
    pipeline = make_pipeline(utilisation_window_seconds=1)
    await pipeline.handle(orjson.dumps({"job_id": "x", "type": "embed",
                                        "table": {"columns": ["t"], "rows": [["a"]]}}))  # fmt: skip
    await asyncio.sleep(1.2)
    assert pipeline.meter.share() == 0.0
