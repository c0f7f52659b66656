"""Few-shot scores a user can trust: calibrated on a public table, right on the demo's job, and an
optional abstain threshold (`min_score`).

The calibration test embeds scikit-learn's bundled iris table with the packaged model, rendered as
the worker renders rows, and compares the head with the one it replaced (bench/fewshot.py runs
the same comparison on more tables and sizes).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest

from bench.fewshot import before, scores, tables
from engine.heads import few_shot
from engine.pooling import normalize
from tests.cache_helpers import ROOT
from tests.conftest import PipelineFactory
from worker.model import EmbeddingModel


def demo_job() -> dict[str, Any]:
    for line in (ROOT / "examples" / "jobs.jsonl").read_bytes().splitlines():
        job: dict[str, Any] = orjson.loads(line)
        if job["job_id"] == "classify-reviews-few-shot":
            return job
    raise AssertionError("the demo has no few-shot job")


async def test_demo_few_shot_job_is_right_and_confident(make_pipeline: PipelineFactory) -> None:
    result = (await make_pipeline().handle(orjson.dumps(demo_job()))).result
    assert result["status"] == "ok", result
    labels = [p["label"] for p in result["predictions"]]
    assert labels == ["positive", "negative", "positive", "negative", None]
    confident = [p["score"] for p in result["predictions"][:4]]
    assert min(confident) > 0.8, confident
    neutral = result["predictions"][4]
    assert neutral["score"] < 0.7 and max(neutral["scores"].values()) == neutral["score"]


@pytest.mark.parametrize("shots", [4, 16])
def test_scores_are_calibrated_on_a_public_table(
    embedding_model: EmbeddingModel, shots: int
) -> None:
    texts, labels = tables()["iris"]
    vectors = normalize(embedding_model.encode(texts)[0])
    names = sorted(set(labels))
    runs = {head: [scores(fn, vectors, labels, names, shots, seed) for seed in range(4)]
            for head, fn in (("before", before), ("after", few_shot))}  # fmt: skip
    mean = {(h, m): float(np.mean([r[m] for r in rs])) for h, rs in runs.items()
            for m in ("accuracy", "brier", "ece")}  # fmt: skip
    assert mean["after", "accuracy"] >= mean["before", "accuracy"], mean
    assert mean["after", "ece"] < 0.2 < mean["before", "ece"], mean
    assert mean["after", "brier"] < 0.45 < mean["before", "brier"], mean


@pytest.mark.parametrize(
    ("value", "job_type"), [(-0.1, "classify"), (1.5, "classify"), ("0.5", "classify"),
                            (True, "classify"), (0.5, "embed")],
)  # fmt: skip
async def test_bad_min_score_is_invalid_field(
    make_pipeline: PipelineFactory, value: Any, job_type: str
) -> None:
    job: dict[str, Any] = {"job_id": "m", "type": job_type, "min_score": value,
                           "table": {"columns": ["t"], "rows": [["x"]]}}  # fmt: skip
    if job_type == "classify":
        job["labels"] = ["a", "b"]
    outcome = await make_pipeline().handle(orjson.dumps(job))
    assert outcome.result["error"]["code"] == "invalid_field", outcome.result
