"""A job's cost is bounded before work starts, from what it expands to, not from its size.

In-process: each limit refuses the job with its documented code, fast and without building the
text. Out of process: a real `tabular-worker run` under a memory cap (RLIMIT_AS, as a container
limit caps it), run without the capabilities that let root ignore file modes, answers the
hostile jobs of issue #16 with their codes and still answers the canary job after them.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.cache_helpers import ROOT
from tests.conftest import PipelineFactory
from worker.cost import job_cost
from worker.jobs import Limits, decode

LONG = "x" * 20_000


def repeated_column_job(job_id: str = "bomb", times: int = 3_000) -> dict[str, Any]:
    """44 KB that renders 60 MB of text per row: one 20,000-character column named 3,000 times."""
    return {"job_id": job_id, "type": "embed", "text": {"columns": ["c"] * times},
            "table": {"columns": ["c"], "rows": [[LONG]]}}  # fmt: skip


def score_bomb(job_id: str = "scores", n: int = 6_000) -> dict[str, Any]:
    """0.1 MB asking for n x n scores (36 million for 6,000)."""
    return {"job_id": job_id, "type": "classify", "method": "zero_shot",
            "labels": [f"l{i}" for i in range(n)],
            "table": {"columns": ["w"], "rows": [[f"w{i}"] for i in range(n)]}}  # fmt: skip


def canary(job_id: str = "canary") -> dict[str, Any]:
    return {"job_id": job_id, "type": "embed", "table": {"columns": ["t"], "rows": [["alive"]]}}


@pytest.mark.parametrize(
    ("job", "overrides", "code"),
    [
        (repeated_column_job(), {}, "text_too_large"),
        ({**repeated_column_job(), "text": "{c}" * 3_000}, {}, "text_too_large"),
        (repeated_column_job(times=3), {"max_row_text_chars": 50_000}, "text_too_large"),
        ({"job_id": "t", "type": "embed",
          "table": {"columns": ["c"], "rows": [[LONG]] * 50}}, {"max_job_text_chars": 900_000},
         "text_too_large"),
        (score_bomb(), {}, "too_many_scores"),
        ({**score_bomb(n=100), "method": "llm",
          "labels": [{"name": f"l{i}", "description": "d" * 5_000} for i in range(100)]}, {},
         "text_too_large"),
        ({"job_id": "l", "type": "embed", "output": {"embeddings": "list"},
          "table": {"columns": ["t"], "rows": [["a"]] * 100}}, {"max_result_bytes": 500_000},
         "result_too_large"),
        ({**score_bomb(n=1_000), "labels": [f"label-{'n' * 200}-{i}" for i in range(1_000)]},
         {"max_job_scores": 10**9}, "result_too_large"),
    ],
)  # fmt: skip
async def test_each_limit_refuses_before_any_work(
    make_pipeline: PipelineFactory, job: dict[str, Any], overrides: dict[str, Any], code: str
) -> None:
    pipeline = make_pipeline(**overrides)
    started = time.perf_counter()
    outcome = await pipeline.handle(orjson.dumps(job))
    assert outcome.result["error"]["code"] == code, outcome.result
    assert not outcome.retryable, "the same job would fail again"
    assert time.perf_counter() - started < 5.0
    assert pipeline.batcher.batches == [], "nothing was encoded"


async def test_jobs_within_the_limits_still_run(make_pipeline: PipelineFactory) -> None:
    pipeline = make_pipeline()
    ok = [repeated_column_job(times=4), score_bomb(n=300), canary()]
    for job in ok:
        outcome = await pipeline.handle(orjson.dumps(job))
        assert outcome.status == "ok", outcome.result
        assert (
            len(outcome.data()) <= job_cost(decode(orjson.dumps(job), Limits()), 384).result_bytes
        )


# ---------------------------------------------------------------------------------------------
# a real worker under a memory cap

MEMORY_CAP = 2_500 * 2**20  # a worker needs ~1.5 GB of address space; the bombs need far more
# Root reads any file whatever its mode; without these two capabilities it cannot (the tests run
# as root, and the interpreter lives where an unprivileged user may not execute it).
NO_DAC = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]


def _capped() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="util-linux setpriv is missing")
def test_capped_worker_survives_hostile_jobs_and_answers_the_canary(tmp_path: Path) -> None:
    """A file with mode 000 is really unreadable to this worker (see NO_DAC)."""
    data = tmp_path / "data"
    data.mkdir()
    secret = data / "locked.csv"
    secret.write_text("a\n1\n")
    secret.chmod(0)
    (data / "open.csv").write_text("a\n1\n")
    jobs = [
        repeated_column_job(),
        score_bomb(),
        {"job_id": "locked", "type": "embed", "source": {"path": "locked.csv"}},
        {"job_id": "open", "type": "embed", "source": {"path": "open.csv"}},
        canary(),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TABULAR_LLM_ENABLED": "false",
           "SHARED_MODEL_VOLUME_ENABLED": "false", "TABULAR_DATA_ROOT": str(data),
           "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    run = subprocess.run(
        [*NO_DAC, sys.executable, "-m", "worker", "run", "--input", "-", "--concurrency", "8"],
        input=b"\n".join(orjson.dumps(j) for j in jobs), capture_output=True, env=env,
        cwd=ROOT, timeout=600, preexec_fn=_capped,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    results = {r["job_id"]: r for r in map(orjson.loads, run.stdout.splitlines())}
    codes = {k: r["error"]["code"] if r["status"] == "error" else "ok" for k, r in results.items()}
    assert codes == {
        "bomb": "text_too_large",
        "scores": "too_many_scores",
        "locked": "source_unreadable",
        "open": "ok",
        "canary": "ok",
    }, codes
