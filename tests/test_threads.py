"""Per-thread CPU by role (`tabular_thread_cpu_seconds{group}`), from /proc, on a real pipeline."""

from __future__ import annotations

import threading
import time

import orjson
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from worker.metrics import WorkerMetrics
from worker.model import EmbeddingModel
from worker.pipeline import Pipeline
from worker.settings import WorkerSettings
from worker.threads import group_of, thread_cpu_seconds


def test_python_threads_are_grouped_by_name_and_native_ones_by_os_name() -> None:
    assert group_of("model_0", "python3") == "model"
    assert group_of("pubsub-publish_0", "python3") == "pubsub publisher"
    assert group_of("Thread-7 (worker)", "python3") == "other"
    assert group_of(None, "grpc_global_tim") == "grpc core"
    assert group_of(None, "python3") == "native compute"


def test_a_busy_thread_shows_in_its_group() -> None:
    spun, done = threading.Event(), threading.Event()

    def spin() -> None:
        while time.thread_time() < 0.3:  # its own CPU, however loaded the machine is
            pass
        spun.set()
        done.wait(30)  # stays alive to be read: dead threads leave /proc

    before = thread_cpu_seconds().get("model", 0.0)
    thread = threading.Thread(target=spin, name="model_9")
    thread.start()
    try:
        assert spun.wait(60)
        during = thread_cpu_seconds().get("model", 0.0)
    finally:
        done.set()
        thread.join()
    assert during - before >= 0.25


async def test_worker_scrape_breaks_cpu_down_by_role(
    embedding_model: EmbeddingModel, settings: WorkerSettings
) -> None:
    registry = CollectorRegistry()
    pipeline = Pipeline(settings, embedding_model, metrics=WorkerMetrics(registry))
    try:
        rows = [[f"row {i} about nothing in particular"] for i in range(256)]
        job = {"job_id": "j", "type": "embed", "table": {"columns": ["t"], "rows": rows}}
        assert (await pipeline.handle(orjson.dumps(job))).status == "ok"
        text = generate_latest(registry).decode()
        families = text_string_to_metric_families(text)
        (family,) = [f for f in families if f.name == "tabular_thread_cpu_seconds"]
        by_group = {s.labels["group"]: s.value for s in family.samples}
        assert "event loop" in by_group
        # The encode calls ran in the model stream's thread (and its native pool, if any).
        assert by_group.get("model", 0.0) + by_group.get("native compute", 0.0) > 0.05
    finally:
        await pipeline.close()
