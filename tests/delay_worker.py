"""TEST DOUBLE: `tabular-worker serve` with `DelayModel`, a calibrated delay, as its model.

Run as a subprocess (``python -m tests.delay_worker``), configured like ``tabular-worker serve``
(the same variables), plus:

- ``TABULAR_TEST_DELAY_PER_CALL_SECONDS`` / ``TABULAR_TEST_DELAY_PER_ROW_SECONDS``: the cost of
  one encode call of n rows is ``per_call + n * per_row`` seconds, spent asleep in the model
  thread. The defaults are the capacity model's fit of all-MiniLM-L6-v2 on this project's 2-vCPU
  machines (`bench.scale.BACKENDS["minilm-torch"]`: ~80 rows/s at batch 1, ~250 rows/s at batch
  32, docs/benchmarks.md), so one process drains rows like one MiniLM instance would.
- ``TABULAR_TEST_DELAY_DIMS``: vector size (small: the test is about delivery, not payloads).

Everything else is the real worker: `worker.service.Service` with its transport, flow control,
pipeline, batcher, results, metrics and shutdown. Only the model is replaced, because many
workers each running a real model cannot share two cores; sleeping instead of computing lets
three of them drain a backlog at the rate three instances with their own CPUs would
(tests/test_scale_out.py). Vectors are a deterministic function of the row text, so two results
for the same job must agree exactly.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time

import numpy as np
import numpy.typing as npt

from base.env import load_settings
from bench.drain import ServiceRate
from bench.scale import BACKENDS
from worker.batcher import estimate_tokens
from worker.metrics import WorkerMetrics
from worker.model import EmbeddingModel, ModelInfo
from worker.service import Service
from worker.settings import WorkerSettings


def _minilm() -> ServiceRate:
    rate = BACKENDS["minilm-torch"].rate
    assert rate is not None
    return rate


MINILM = _minilm()


class DelayModel(EmbeddingModel):
    """An `EmbeddingModel` whose encode sleeps for a calibrated time and returns vectors that
    depend only on each text."""

    def __init__(self, per_call: float, per_row: float, dims: int) -> None:
        # No sentence-transformers object behind it: set what the pipeline reads.
        self.info = ModelInfo(name="delay-model", path="", source="test-double")
        self.dims = dims
        self.max_seq_length = 512
        self.streams = 1
        self.load_seconds = self.warmup_seconds = 0.0
        self.per_call = per_call
        self.per_row = per_row

    def encode(self, texts: list[str]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        time.sleep(self.per_call + self.per_row * len(texts))
        vectors = np.stack([self._vector(t) for t in texts]).astype(np.float32)
        counts = np.fromiter((estimate_tokens(t) for t in texts), np.int64, len(texts))
        return vectors, counts

    def warm_up(self) -> None:
        self.encode(["warm up"])

    def _vector(self, text: str) -> npt.NDArray[np.float32]:
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        return np.random.default_rng(seed).standard_normal(self.dims).astype(np.float32)


def delay_model_from_env() -> DelayModel:
    env = os.environ
    return DelayModel(
        per_call=float(env.get("TABULAR_TEST_DELAY_PER_CALL_SECONDS", MINILM.per_call)),
        per_row=float(env.get("TABULAR_TEST_DELAY_PER_ROW_SECONDS", MINILM.per_row)),
        dims=int(env.get("TABULAR_TEST_DELAY_DIMS", "16")),
    )


async def load_delay_model(settings: WorkerSettings, metrics: WorkerMetrics) -> EmbeddingModel:
    model = delay_model_from_env()
    await asyncio.to_thread(model.warm_up)
    return model


def main() -> int:
    settings = load_settings(WorkerSettings)
    if settings is None:
        return 2
    return asyncio.run(Service(settings, load_model=load_delay_model).run())


if __name__ == "__main__":
    raise SystemExit(main())
