"""Hot reload: jobs keep flowing through a Pipeline while the cache moves to new generations."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from prometheus_client import CollectorRegistry

from engine.pooling import normalize
from tests.cache_helpers import PACKAGED, TEXTS, build, copy_model
from worker.metrics import WorkerMetrics
from worker.model import EmbeddingModel
from worker.modelstore import CacheReloader, cache_snapshot, load_embedding_model
from worker.pipeline import Pipeline
from worker.results import decode_vectors
from worker.rowtext import row_text
from worker.settings import WorkerSettings


def job(i: int) -> bytes:
    return orjson.dumps({"job_id": f"j{i}", "type": "embed",
                         "table": {"columns": ["product", "note"], "rows": TEXTS}})  # fmt: skip


async def wait_for(condition: Any, within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_jobs_flow_through_generation_switches(
    tmp_path: Path, embedding_model: EmbeddingModel
) -> None:
    v1 = copy_model(tmp_path / "v1")
    v2 = copy_model(tmp_path / "v2")
    (v2 / "README.md").write_text("generation two: other files, same weights")
    cache = tmp_path / "cache"
    build(cache, minilm=v1)
    settings = WorkerSettings.from_env(
        {}, model_cache_path=str(cache), local_model_dir=str(tmp_path / "local"),
        embedding_model="minilm", reload_interval_seconds=0.1, llm_enabled=False,
    )  # fmt: skip
    metrics = WorkerMetrics(CollectorRegistry())
    first = await load_embedding_model(settings, metrics)
    assert (first.info.source, first.info.generation) == ("cache", 1)
    first_copy = Path(first.info.path)
    pipeline = Pipeline(settings, first)
    del first
    reloader, stop = CacheReloader(settings, metrics), asyncio.Event()
    reload_task = asyncio.create_task(reloader.run(pipeline, stop))
    results: list[tuple[int, dict[str, Any]]] = []  # (generation current at submit, result)
    submitted = 0
    producing = True

    async def producer() -> None:
        nonlocal submitted
        while producing:
            generation = pipeline.model.info.generation
            submitted += 1
            outcome = await pipeline.handle(job(submitted))
            results.append((generation, outcome.result))

    producers = [asyncio.create_task(producer()) for _ in range(4)]
    try:
        await asyncio.sleep(0.3)
        await asyncio.to_thread(build, cache, minilm=v2)  # generation 2: minilm's files changed
        await wait_for(lambda: pipeline.model.info.generation == 2)
        second_copy = Path(pipeline.model.info.path)
        await asyncio.sleep(0.3)
        await asyncio.to_thread(build, cache, minilm=v2, other=PACKAGED)  # 3: minilm unchanged
        await wait_for(lambda: pipeline.model.info.generation == 3)
        await asyncio.sleep(0.3)
    finally:
        producing = False
        await asyncio.gather(*producers)
        stop.set()
        await reload_task
        await pipeline.close()

    assert len(results) == submitted > 20, "every submitted job has a result"
    texts = [row_text(["product", "note"], r) for r in TEXTS]
    want = normalize(embedding_model.encode(texts)[0])
    for _, result in results:
        assert result["status"] == "ok", result
        assert np.allclose(decode_vectors(result["embeddings"]), want, atol=1e-4)
    for generation_at_submit, result in results:
        assert result["model"]["generation"] >= generation_at_submit
    served = {result["model"]["generation"] for _, result in results}
    assert served == {1, 2, 3}
    assert not await asyncio.to_thread(first_copy.exists), "the replaced local copy is freed"
    assert Path(pipeline.model.info.path) == second_copy, "generation 3 reused the loaded files"
    assert await asyncio.to_thread(second_copy.is_dir)
    assert metrics.model_reloads.labels("ok")._value.get() == 2
    assert metrics.model_generation._value.get() == 3


async def test_failed_reload_keeps_serving_the_current_model(
    tmp_path: Path, embedding_model: EmbeddingModel
) -> None:
    cache = tmp_path / "cache"
    build(cache, minilm=copy_model(tmp_path / "v1"))
    settings = WorkerSettings.from_env({}, model_cache_path=str(cache), embedding_model="minilm",
                                 local_model_dir=str(tmp_path / "local"))  # fmt: skip
    pipeline = Pipeline(settings, await load_embedding_model(settings))
    broken = copy_model(tmp_path / "broken")
    (broken / "modules.json").write_text("not a module list")
    build(cache, minilm=broken)
    reloader = CacheReloader(settings)
    try:
        assert await reloader.check_once(pipeline) is False
        assert await reloader.check_once(pipeline) is False  # not retried for the same generation
        assert pipeline.model.info.generation == 1
        snapshot = cache_snapshot(settings, pipeline.model)
        assert (snapshot["start_cache_hit"], snapshot["start_reason"]) == (True, "hit")
        assert (snapshot["loaded_generation"], snapshot["committed_generation"]) == (1, 2)
        assert snapshot["reload_pending"] is True
        result = (await pipeline.handle(job(1))).result
    finally:
        await pipeline.close()
    assert result["status"] == "ok" and result["model"]["generation"] == 1
