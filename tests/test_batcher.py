"""The batcher: concurrent small jobs share encode calls; each job gets exactly its rows back."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import numpy.typing as npt
import orjson
import pytest

from tests.conftest import PipelineFactory
from worker.batcher import Batcher


def fake_encode(calls: list[list[str]]) -> object:
    """A deterministic stand-in encoder: row i's vector encodes its text (to check routing)."""

    def encode(texts: list[str]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        calls.append(list(texts))
        if any("poison" in t for t in texts):
            raise ValueError("cannot encode poison")
        vecs = np.array([[float(hash(t) % 1000), float(len(t))] for t in texts], np.float32)
        return vecs, np.array([len(t) for t in texts], np.int64)

    return encode


async def test_many_small_jobs_share_batches_and_get_their_rows() -> None:
    calls: list[list[str]] = []
    encode = fake_encode(calls)
    batcher = Batcher(max_rows=32, max_wait=0.02)
    jobs = [[f"job{j}-row{r}" for r in range(1 + j % 3)] for j in range(60)]
    results = await asyncio.gather(*(batcher.encode(rows, encode) for rows in jobs))  # type: ignore[arg-type]
    await batcher.close()
    for rows, (vecs, counts) in zip(jobs, results, strict=True):
        assert vecs.shape == (len(rows), 2)
        assert [int(v) for v in vecs[:, 0]] == [hash(t) % 1000 for t in rows]
        assert list(counts) == [len(t) for t in rows]
    total = sum(len(r) for r in jobs)
    assert sum(len(c) for c in calls) == total
    assert max(len(c) for c in calls) == 32
    assert len(calls) <= total // 32 + 2  # batched, not one call per job


async def test_large_job_is_split_across_batches_in_order() -> None:
    calls: list[list[str]] = []
    batcher = Batcher(max_rows=16, max_wait=0.001)
    rows = [f"row {i}" for i in range(100)]
    vecs, _ = await batcher.encode(rows, fake_encode(calls))  # type: ignore[arg-type]
    await batcher.close()
    assert [len(c) for c in calls] == [16] * 6 + [4]
    assert [int(v) for v in vecs[:, 0]] == [hash(t) % 1000 for t in rows]


async def test_token_limit_bounds_a_batch() -> None:
    calls: list[list[str]] = []
    batcher = Batcher(max_rows=64, max_tokens=100, max_wait=0.01)
    long = "w" * 160  # ~42 estimated tokens
    await asyncio.gather(*(batcher.encode([long], fake_encode(calls)) for _ in range(6)))  # type: ignore[arg-type]
    await batcher.close()
    assert all(len(c) <= 2 for c in calls)


async def test_failing_job_does_not_fail_its_batch_mates() -> None:
    calls: list[list[str]] = []
    encode = fake_encode(calls)
    batcher = Batcher(max_rows=32, max_wait=0.02)
    good = [batcher.encode([f"good {i}"], encode) for i in range(5)]  # type: ignore[arg-type]
    bad = batcher.encode(["poison row"], encode)  # type: ignore[arg-type]
    results = await asyncio.gather(*good, bad, return_exceptions=True)
    await batcher.close()
    assert all(isinstance(r, tuple) for r in results[:5])
    assert isinstance(results[5], Exception)
    assert any(len(c) > 1 for c in calls)  # they were batched together first


async def test_pipeline_batches_real_model_across_jobs(make_pipeline: PipelineFactory) -> None:
    pipeline = make_pipeline(batch_max_rows=32, batch_max_wait_ms=20)
    payloads = [
        orjson.dumps({"job_id": f"j{i}", "type": "embed",
                      "table": {"columns": ["t"], "rows": [[f"sentence number {i}"]]}})
        for i in range(64)
    ]  # fmt: skip
    outcomes = await asyncio.gather(*(pipeline.handle(p) for p in payloads))
    assert [o.job_id for o in outcomes] == [f"j{i}" for i in range(64)]
    assert all(o.status == "ok" for o in outcomes)
    sizes = pipeline.batcher.batches
    assert sum(sizes) == 64 and max(sizes) == 32 and len(sizes) <= 4


def slow_encode(calls: list[list[str]], seconds: float) -> object:
    """fake_encode that takes `seconds` per call, like a model (so jobs arrive mid-run)."""
    inner = fake_encode(calls)

    def encode(texts: list[str]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        time.sleep(seconds)
        return inner(texts)  # type: ignore[operator, no-any-return]

    return encode


async def test_one_row_job_behind_a_large_job_waits_for_one_batch() -> None:
    calls: list[list[str]] = []
    encode = slow_encode(calls, 0.01)
    batcher = Batcher(max_rows=16, max_wait=0.001)
    big = asyncio.create_task(batcher.encode([f"big {i}" for i in range(1600)], encode))  # type: ignore[arg-type]
    while len(calls) < 3:  # noqa: ASYNC110 (the encoder runs in a thread: poll it)
        await asyncio.sleep(0.001)
    queued_at = len(calls)
    await batcher.encode(["small"], encode)  # type: ignore[arg-type]
    answered_at = next(i for i, c in enumerate(calls) if "small" in c)
    assert answered_at <= queued_at + 1  # the batch running when it came, then its own
    assert calls[answered_at] == ["small"]  # in a batch of its own: a quick one
    await big
    await batcher.close()


async def test_a_stream_of_small_jobs_does_not_starve_a_started_job() -> None:
    calls: list[list[str]] = []
    encode = slow_encode(calls, 0.005)
    batcher = Batcher(max_rows=8, max_wait=0.001)
    big = asyncio.create_task(batcher.encode([f"big {i}" for i in range(40)], encode))  # type: ignore[arg-type]
    small: list[asyncio.Task[object]] = []
    while not big.done():  # always a full batch of new one-row jobs waiting
        while sum(not t.done() for t in small) < 16:
            small.append(asyncio.create_task(batcher.encode([f"s{len(small)}"], encode)))  # type: ignore[arg-type]
        await asyncio.sleep(0.001)
    with_big = [i for i, c in enumerate(calls) if any(t.startswith("big") for t in c)]
    assert len(with_big) >= 5  # 40 rows, 8 a batch
    assert with_big[-1] <= 2 * len(with_big)  # at least every other batch
    await asyncio.gather(*small)
    await batcher.close()


@pytest.mark.parametrize("streams", [1, 2])
async def test_streams_run_that_many_encodes_at_once(streams: int) -> None:
    calls: list[list[str]] = []
    inner = fake_encode(calls)
    lock = threading.Lock()
    running, most = [0], [0]

    def encode(texts: list[str]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.03)
        with lock:
            running[0] -= 1
        return inner(texts)  # type: ignore[operator, no-any-return]

    batcher = Batcher(max_rows=4, max_wait=0.001, streams=streams)
    jobs = [[f"job{j}-row{r}" for r in range(5)] for j in range(6)]
    results = await asyncio.gather(*(batcher.encode(rows, encode) for rows in jobs))
    await batcher.close()
    for rows, (vecs, _) in zip(jobs, results, strict=True):
        assert [int(v) for v in vecs[:, 0]] == [hash(t) % 1000 for t in rows]
    assert most[0] == streams
