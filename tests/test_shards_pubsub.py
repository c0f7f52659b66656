"""One large Parquet job shared by three `tabular-worker serve` processes through Pub/Sub.

The worker that receives the job splits it into shard jobs on the jobs topic; the three workers
run them, each writing its part; whichever finds every part present writes `_SUCCESS` and
publishes the final result. Through the official emulator (or the stand-in where it is absent);
and on the stand-in (which redelivers a dead subscriber's messages, as Pub/Sub does: see
tests/pubsub_fixture.py) with one worker SIGKILLed while parts are being written. Either way the
output must equal a one-worker local run, row for row.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from harness.pubsub import PubSubEnv
from harness.worker_proc import ROOT, WorkerProcess

# TABULAR_TEST_TABLE_ROWS / _SHARD_ROWS scale the table up for a manual run (docs/benchmarks.md
# records one of 100,000 rows); `make test` uses the small default.
ROWS = int(os.environ.get("TABULAR_TEST_TABLE_ROWS", "1200"))
SHARD_ROWS = int(os.environ.get("TABULAR_TEST_SHARD_ROWS", "100"))
TIMEOUT = max(300, ROWS // 50)


def _table(path: Path) -> None:
    words = ["trail shoes", "desk lamp", "green tea", "phone case", "wool socks", "kettle"]
    pq.write_table(
        pa.table({
            "sku": list(range(50_000, 50_000 + ROWS)),
            "title": [f"{words[i % 6]} model {i} ({words[(i * 7) % 6]})" for i in range(ROWS)],
            "price": [round(1.0 + (i % 97) * 0.75, 2) for i in range(ROWS)],
        }),
        path,
        row_group_size=256,
    )  # fmt: skip


JOB: dict[str, Any] = {
    "job_id": "catalogue-1",
    "type": "embed",
    "source": {"path": "catalogue.parquet"},
    "text": {"columns": ["title", "price"]},
    "output": {"path": "catalogue-emb", "columns": ["sku"]},
}


def _local_run(data: Path, out: Path) -> pa.Table:
    jobs = data / "job.jsonl"
    jobs.write_bytes(orjson.dumps(JOB) + b"\n")
    env = {"TABULAR_DATA_ROOT": str(data), "TABULAR_OUTPUT_ROOT": str(out),
           "TABULAR_SHARD_ROWS": str(SHARD_ROWS), "HF_HUB_OFFLINE": "1",
           "SHARED_MODEL_VOLUME_ENABLED": "false", "PATH": "/usr/bin:/bin"}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "worker", "run", "--input", str(jobs)],
        cwd=ROOT, env=env, capture_output=True, timeout=TIMEOUT * 3, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    result = orjson.loads(done.stdout.splitlines()[-1])
    assert result["status"] == "ok", result
    return pq.read_table(out / "catalogue-emb").sort_by("row")


@pytest.fixture
def workers_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[WorkerProcess] = []

    def start(env: PubSubEnv, data: Path, out: Path, count: int = 3) -> list[WorkerProcess]:
        for n in range(count):
            worker_env = {
                **env.env(),
                "TABULAR_DATA_ROOT": str(data), "TABULAR_OUTPUT_ROOT": str(out),
                "TABULAR_SHARD_ROWS": str(SHARD_ROWS), "TABULAR_MAX_IN_FLIGHT_JOBS": "2",
                "TABULAR_LEASE_EXTENSION_SECONDS": "10",
            }  # fmt: skip
            started.append(WorkerProcess(worker_env, tmp_path / f"worker-{n}.log"))
        for worker in started[-count:]:
            worker.start(wait_ready=0)
        for worker in started[-count:]:
            worker.wait_ready(180)
        return started[-count:]

    yield start
    for worker in started:
        worker.stop()


def _follow(env: PubSubEnv, timeout: float, kill: WorkerProcess | None) -> list[dict[str, Any]]:
    """Results until the final one; SIGKILL `kill` once the first shard result arrives."""
    results: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for message in env.drain(env.results_subscription, wait=0.5):
            results.append(orjson.loads(message.message.data))
        shard_done = any("shard" in r for r in results)
        if kill is not None and shard_done and kill.proc and kill.proc.poll() is None:
            kill.signal(signal.SIGKILL)
        if any(r["job_id"] == JOB["job_id"] and r["status"] == "ok" for r in results):
            return results
    raise AssertionError(
        f"no final result in {timeout} s; got {[r.get('job_id') for r in results]}"
    )


@pytest.mark.parametrize("server", ["shared", "redelivering-kill"])
def test_three_workers_share_one_large_job(
    server: str, request: pytest.FixtureRequest, workers_factory: Any, tmp_path: Path
) -> None:
    env: PubSubEnv = request.getfixturevalue("pubsub" if server == "shared" else
                                              "pubsub_redelivering")  # fmt: skip
    data, out, local_out = tmp_path / "data", tmp_path / "out", tmp_path / "local"
    for d in (data, out, local_out):
        d.mkdir()
    _table(data / "catalogue.parquet")
    expected = _local_run(data, local_out)

    workers = workers_factory(env, data, out)
    env.publish_job(orjson.dumps(JOB), job_id=JOB["job_id"])
    killed = workers[1] if server.endswith("kill") else None
    results = _follow(env, TIMEOUT, killed)
    if killed is not None:
        assert killed.proc is not None and killed.proc.wait(10) == -signal.SIGKILL

    running = [r for r in results if r["job_id"] == JOB["job_id"] and r["status"] == "running"]
    assert running and running[0]["progress"] == {"parts_done": 0, "parts": -(-ROWS // SHARD_ROWS)}
    shards = {r["shard"]["index"] for r in results if "shard" in r and r["status"] == "ok"}
    assert shards <= set(range(-(-ROWS // SHARD_ROWS)))
    assert max(r["progress"]["parts_done"] for r in results if "shard" in r) >= 1
    final = next(r for r in results if r["job_id"] == JOB["job_id"] and r["status"] == "ok")
    parts = -(-ROWS // SHARD_ROWS)
    assert final["output"] == {
        "path": "catalogue-emb",
        "parts": parts,
        "rows": ROWS,
        "errors": 0,
        "truncated": 0,
    }

    target = out / "catalogue-emb"
    assert (target / "_SUCCESS").is_file()
    assert not [p.name for p in target.iterdir() if p.name.startswith(".")]
    got = pq.read_table(target).sort_by("row")
    assert got.column("row").to_pylist() == list(range(ROWS)), "every row exactly once"
    assert got.column("sku").to_pylist() == expected.column("sku").to_pylist()
    a = np.asarray(got.column("embedding").to_pylist(), np.float32)
    b = np.asarray(expected.column("embedding").to_pylist(), np.float32)
    assert np.allclose(a, b, atol=1e-4), "the same vectors as a one-worker run"


def test_submit_sends_one_source_job_and_follows_its_progress(
    pubsub: PubSubEnv, workers_factory: Any, tmp_path: Path
) -> None:
    data, out = tmp_path / "data", tmp_path / "out"
    for d in (data, out):
        d.mkdir()
    _table(data / "catalogue.parquet")
    workers_factory(pubsub, data, out, count=1)
    done = subprocess.run(
        [sys.executable, "-m", "worker", "submit", "--source", "catalogue.parquet",
         "--output-path", "via-submit", "--columns", "sku", "--template", "{title}",
         "--job-prefix", "submitted-1", "--wait", "--results-subscription",
         pubsub.results_subscription_id, "--timeout", "240"],
        env=WorkerProcess(pubsub.env(), tmp_path / "x").env, cwd=ROOT, capture_output=True,
        timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    (final,) = [orjson.loads(line) for line in done.stdout.splitlines()]
    assert final["job_id"] == "submitted-1" and final["status"] == "ok"
    assert final["output"]["rows"] == ROWS and final["output"]["parts"] == ROWS // SHARD_ROWS
    logs = [orjson.loads(line) for line in done.stderr.splitlines()]
    progress = [e["parts_done"] for e in logs if e["message"] == "Progress" and "parts_done" in e]
    assert progress and progress == sorted(progress) and max(progress) >= 1
    assert (out / "via-submit" / "_SUCCESS").is_file()
    assert pq.read_table(out / "via-submit").num_rows == ROWS
