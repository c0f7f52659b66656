"""`tabular-worker serve` end to end: a real worker process, a real Pub/Sub server, real clients."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from engine.pooling import normalize
from harness.pubsub import PubSubEnv, free_port
from harness.worker_proc import ROOT, WorkerProcess
from tests.conftest import PipelineFactory
from tests.prometheus_server import wait_for
from worker.results import decode_vectors

StartWorker = Callable[..., WorkerProcess]


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[StartWorker]:
    started: list[WorkerProcess] = []

    def start(env: PubSubEnv, wait_ready: float = 180.0, **extra: str) -> WorkerProcess:
        log = tmp_path / f"worker-{len(started)}.log"
        fast = {"TABULAR_LEASE_EXTENSION_SECONDS": "10"}  # a killed worker's jobs return soon
        worker = WorkerProcess({**env.env(), **fast, **extra}, log)
        started.append(worker)
        return worker.start(wait_ready)

    yield start
    for worker in started:
        worker.stop()


def embed_job(job_id: str, rows: list[str]) -> dict[str, Any]:
    return {"job_id": job_id, "type": "embed",
            "table": {"columns": ["text"], "rows": [[r] for r in rows]}}  # fmt: skip


def mixed_jobs(n: int) -> list[dict[str, Any]]:
    """Embed, zero-shot and few-shot jobs plus invalid ones, deterministic by index."""
    jobs: list[dict[str, Any]] = []
    for i in range(n):
        kind = i % 5
        rows = [f"order {i} row {r}: {['red shoes', 'tax refund', 'rainy day'][r % 3]}"
                for r in range(1 + i % 3)]  # fmt: skip
        if kind in (0, 1):
            jobs.append(embed_job(f"mix-{i}", rows))
        elif kind == 2:
            jobs.append(
                {
                    "job_id": f"mix-{i}",
                    "type": "classify",
                    "labels": ["fashion", "finance", "weather"],
                    "table": {"columns": ["text"], "rows": [[r] for r in rows]},
                }
            )
        elif kind == 3:
            jobs.append(
                {
                    "job_id": f"mix-{i}",
                    "type": "classify",
                    "examples": [
                        {"row": ["shoes and a dress"], "label": "fashion"},
                        {"row": ["bank taxes money"], "label": "finance"},
                    ],
                    "table": {"columns": ["text"], "rows": [[r] for r in rows]},
                }
            )
        else:
            jobs.append(
                {"job_id": f"mix-{i}", "type": "embed", "table": {"columns": ["a"], "rows": []}}
            )
    return jobs  # fmt: skip


def results_by_id(messages: list[Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for m in messages:
        result = orjson.loads(m.message.data)
        assert m.message.attributes["job_id"] == (result["job_id"] or "")
        assert m.message.attributes["status"] == result["status"]
        out[result["job_id"]] = result
    return out


def collect(
    env: PubSubEnv, job_ids: set[str], timeout: float, seen: dict[str, Any] | None = None
) -> dict[str, dict[str, Any]]:
    """Pull results until every job_id in `job_ids` is answered (duplicates allowed)."""
    seen = {} if seen is None else seen
    deadline = time.monotonic() + timeout
    while not job_ids <= set(seen) and time.monotonic() < deadline:
        left = len(job_ids - set(seen))
        seen.update(results_by_id(env.pull_results(left, timeout=min(10.0, timeout))))
    return seen


def assert_agree(got: dict[str, Any], want: dict[str, Any]) -> None:
    """Same status, code, labels; embeddings equal within cosine 0.9999."""
    assert got["status"] == want["status"], (got, want)
    if got["status"] == "error":
        assert got["error"]["code"] == want["error"]["code"]
        return
    if "predictions" in want:
        assert [p["label"] for p in got["predictions"]] == [p["label"] for p in want["predictions"]]
    if "embeddings" in want:
        a, b = decode_vectors(got["embeddings"]), decode_vectors(want["embeddings"])
        cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        assert cos.min() >= 0.9999


async def test_mixed_jobs_agree_with_local_run(
    pubsub: PubSubEnv, start_worker: StartWorker, make_pipeline: PipelineFactory
) -> None:
    worker = start_worker(pubsub)
    assert worker.get("/healthz")[0] == 200
    jobs = mixed_jobs(500)
    publisher = pubsub.publisher()
    futures = [publisher.publish(pubsub.jobs_topic, orjson.dumps(j)) for j in jobs]
    for f in futures:
        f.result(60)
    got = collect(pubsub, {j["job_id"] for j in jobs}, timeout=240)
    assert sorted(got) == sorted(j["job_id"] for j in jobs)
    pipeline = make_pipeline()
    for job in jobs:
        want = (await pipeline.handle(orjson.dumps(job))).result
        assert_agree(got[job["job_id"]], want)
    status, body = worker.get("/readyz")
    assert status == 200 and json.loads(body)["components"]["model"]["state"] == "ready"
    metrics = worker.get("/metrics")[1].decode()
    assert 'tabular_jobs_total{code="empty_table",outcome="error",type="embed"} 100.0' in metrics
    assert "tabular_pubsub_acks_total 500.0" in metrics


def test_sigkill_halfway_loses_nothing(
    pubsub_redelivering: PubSubEnv, start_worker: StartWorker
) -> None:
    pubsub = pubsub_redelivering
    jobs = [embed_job(f"k-{i}", [f"row number {i}"]) for i in range(2000)]
    first = start_worker(pubsub)
    publisher = pubsub.publisher()
    for f in [publisher.publish(pubsub.jobs_topic, orjson.dumps(j)) for j in jobs]:
        f.result(60)
    seen = results_by_id(pubsub.pull_results(600, timeout=120))
    assert len(seen) >= 300
    first.proc.kill()  # type: ignore[union-attr]
    first.wait(10)
    start_worker(pubsub)
    collect(pubsub, {j["job_id"] for j in jobs}, timeout=300, seen=seen)
    missing = {j["job_id"] for j in jobs} - set(seen)
    assert not missing, f"{len(missing)} jobs never answered"


def test_sigterm_drains_and_exits_zero(
    pubsub_redelivering: PubSubEnv, start_worker: StartWorker
) -> None:
    pubsub = pubsub_redelivering
    jobs = [embed_job(f"t-{i}", [f"sentence {i} " * 20] * 8) for i in range(300)]
    worker = start_worker(pubsub, TABULAR_SHUTDOWN_GRACE_SECONDS="5")
    publisher = pubsub.publisher()
    for f in [publisher.publish(pubsub.jobs_topic, orjson.dumps(j)) for j in jobs]:
        f.result(60)
    seen = results_by_id(pubsub.pull_results(20, timeout=120))
    started = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait(15) == 0
    assert time.monotonic() - started <= 5 + 2.0
    messages = [e["message"] for e in worker.logs()]
    assert "Shutting down" in messages
    start_worker(pubsub)
    collect(pubsub, {j["job_id"] for j in jobs}, timeout=300, seen=seen)
    assert {j["job_id"] for j in jobs} <= set(seen)
    # Refused deliveries during shutdown must not burn delivery attempts into the DLQ.
    assert not pubsub.drain(pubsub.dead_letter_subscription, wait=1.0)


def test_hostile_jobs_and_dead_letters(pubsub: PubSubEnv, start_worker: StartWorker) -> None:
    closed_port = free_port()
    start_worker(pubsub, TABULAR_LLM_ENABLED="true", TABULAR_LLM_WAIT_SECONDS="0.5",
                 OLLAMA_HOST=f"http://127.0.0.1:{closed_port}")  # fmt: skip
    good = [embed_job(f"good-{i}", [f"fine row {i}"]) for i in range(20)]
    bad: list[tuple[str | None, bytes, str]] = [
        (None, b"\x00\xff not json", "invalid_json"),
        (None, b"[]", "not_an_object"),
        ("big", orjson.dumps(embed_job("big", ["x" * 8_000_000])), "cell_too_large"),
        ("ragged", orjson.dumps({"job_id": "ragged", "type": "embed",
                                 "table": {"columns": ["a", "b"], "rows": [["x"]]}}),
         "ragged_rows"),
    ]  # fmt: skip
    llm = {"job_id": "needs-llm", "type": "classify", "method": "llm", "labels": ["a", "b"],
           "table": {"columns": ["t"], "rows": [["x"]]}}  # fmt: skip
    publisher = pubsub.publisher()
    payloads = [orjson.dumps(j) for j in good[:10]] + [b for _, b, _ in bad]
    payloads += [orjson.dumps(llm)] + [orjson.dumps(j) for j in good[10:]]
    for f in [publisher.publish(pubsub.jobs_topic, p) for p in payloads]:
        f.result(60)
    messages = pubsub.pull_results(len(good) + len(bad) + 1, timeout=120)
    results = [orjson.loads(m.message.data) for m in messages]
    ok = {r["job_id"] for r in results if r["status"] == "ok"}
    assert ok == {j["job_id"] for j in good}
    errors = sorted(r["error"]["code"] for r in results if r["status"] == "error")
    assert errors == sorted([code for _, _, code in bad] + ["llm_unavailable"])
    llm_result = next(r for r in results if r["job_id"] == "needs-llm")
    assert llm_result["error"]["dead_lettered"] is True
    dead = pubsub.pull_dead_letters(1, timeout=60)
    assert [orjson.loads(m.message.data)["job_id"] for m in dead] == ["needs-llm"]
    # Answered once, on the last attempt: no duplicate error results for the retries.
    assert not pubsub.drain(pubsub.results_subscription, wait=2.0)


def test_duplicate_deliveries_agree(pubsub: PubSubEnv, start_worker: StartWorker) -> None:
    worker = start_worker(pubsub)
    job = orjson.dumps({"job_id": "dup", "type": "classify", "labels": ["cats", "cars"],
                        "table": {"columns": ["t"], "rows": [["a kitten purrs"]]},
                        "output": {"embeddings": "base64"}})  # fmt: skip
    sent = [pubsub.publish_job(job), pubsub.publish_job(job)]  # both in flight: computed twice
    messages = pubsub.pull_results(2, timeout=120)
    # The worker remembers a result once it is published, then acks; the result can reach us
    # before that, so wait for both acks (a delivery sent earlier would be computed again).
    acked = "tabular_pubsub_acks_total 2.0"
    wait_for(lambda: acked in worker.get("/metrics")[1].decode(), timeout=30, interval=0.05,
             message="the first two deliveries were never acked")  # fmt: skip
    sent.append(pubsub.publish_job(job))  # after the result: answered from memory
    messages += pubsub.pull_results(1, timeout=120)
    results = [orjson.loads(m.message.data) for m in messages]
    assert len(results) == 3
    # Each result names the delivery it answers, the one answered from memory included.
    answered = sorted(m.message.attributes["source_message_id"] for m in messages)
    assert answered == sorted(sent)
    assert {m.message.attributes["delivery_attempt"] for m in messages} == {"1"}
    assert_agree(results[0], results[1])
    assert_agree(results[0], results[2])
    assert results[0]["predictions"][0]["label"] == "cats"
    # A delivery answered from memory carries the stored body byte for byte (its timings too);
    # the second can be one as well, when the first was done before it was pulled.
    from_memory = len(messages) - len({m.message.data for m in messages})
    assert from_memory >= 1
    metric = f"tabular_duplicate_jobs_total {float(from_memory)}"
    assert metric in worker.get("/metrics")[1].decode()


def test_attribute_naming_another_job_gets_a_result_of_its_own(
    pubsub: PubSubEnv, start_worker: StartWorker
) -> None:
    """The body's job_id wins: an attribute naming an earlier, answered job is not a duplicate."""
    worker = start_worker(pubsub)
    first = orjson.dumps(embed_job("first", ["a first row"]))
    pubsub.publish_job(first, job_id="first")
    assert [r["job_id"] for r in map(json.loads, (m.message.data for m in
            pubsub.pull_results(1, timeout=120)))] == ["first"]  # fmt: skip
    second = orjson.dumps(embed_job("second", ["another row", "and one more"]))
    pubsub.publish_job(second, job_id="first")
    [message] = pubsub.pull_results(1, timeout=60)
    result = orjson.loads(message.message.data)
    assert (result["job_id"], result["status"], result["rows"]) == ("second", "ok", 2)
    assert message.message.attributes["job_id"] == "second"
    assert "tabular_duplicate_jobs_total 0.0" in worker.get("/metrics")[1].decode()


def test_missing_subscription_exits_nonzero(pubsub: PubSubEnv, tmp_path: Path) -> None:
    env = {**pubsub.env(), "TABULAR_JOBS_SUBSCRIPTION": "no-such-subscription"}
    worker = WorkerProcess(env, tmp_path / "w.log").start(wait_ready=0)
    assert worker.wait(120) == 1
    errors = [e for e in worker.logs() if e["severity"] == "ERROR"]
    assert errors and "no-such-subscription" in errors[0]["message"]
    assert "TABULAR_CREATE_RESOURCES" in errors[0]["message"]


def test_create_resources_switch(pubsub: PubSubEnv, start_worker: StartWorker) -> None:
    fresh = PubSubEnv(pubsub.server)  # names exist nowhere yet
    try:
        start_worker(fresh, TABULAR_CREATE_RESOURCES="true")
        fresh.server.create_subscription(fresh.results_subscription, fresh.results_topic)
        fresh.publish_job(orjson.dumps(embed_job("created", ["hello"])))
        assert results_by_id(fresh.pull_results(1, timeout=120))["created"]["status"] == "ok"
    finally:
        fresh.delete()
        fresh.close()


def test_emulator_paused_then_resumed(pubsub_private: PubSubEnv, start_worker: StartWorker) -> None:
    env = pubsub_private
    start_worker(env)
    jobs = [embed_job(f"p-{i}", [f"row {i}"]) for i in range(200)]
    publisher = env.publisher()
    for f in [publisher.publish(env.jobs_topic, orjson.dumps(j)) for j in jobs[:100]]:
        f.result(60)
    seen = results_by_id(env.pull_results(20, timeout=120))
    env.server.pause()
    time.sleep(env.ack_deadline + 5)
    env.server.resume()
    for f in [publisher.publish(env.jobs_topic, orjson.dumps(j)) for j in jobs[100:]]:
        f.result(60)
    collect(env, {j["job_id"] for j in jobs}, timeout=240, seen=seen)
    assert {j["job_id"] for j in jobs} <= set(seen)


def test_emulator_restarted(pubsub_private: PubSubEnv, start_worker: StartWorker) -> None:
    env = pubsub_private
    worker = start_worker(env)
    env.publish_job(orjson.dumps(embed_job("before", ["x"])))
    assert "before" in results_by_id(env.pull_results(1, timeout=120))
    env.server.restart()
    env.recreate()
    deadline = time.monotonic() + 120
    answered: dict[str, Any] = {}
    n = 0
    while "after-0" not in answered and time.monotonic() < deadline:
        env.publish_job(orjson.dumps(embed_job(f"after-{n}", ["y"])))
        n += 1
        answered.update(results_by_id(env.pull_results(1, timeout=10)))
    assert answered, worker.logs_text()
    assert worker.proc is not None and worker.proc.poll() is None


def test_submit_wait_writes_npy(
    pubsub: PubSubEnv, start_worker: StartWorker, tmp_path: Path, make_pipeline: PipelineFactory
) -> None:
    start_worker(pubsub)
    table = tmp_path / "t.csv"
    table.write_text("name,city\n" + "".join(f"person {i},city {i % 7}\n" for i in range(50)))
    out = tmp_path / "emb.npy"
    proc = subprocess.run(
        [sys.executable, "-m", "worker", "submit", "--input", str(table), "--rows-per-job", "8",
         "--wait", "--results-subscription", pubsub.results_subscription_id, "--output",
         str(out), "--timeout", "120"],
        env={**WorkerProcess(pubsub.env(), tmp_path / "x").env}, cwd=ROOT, capture_output=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    vectors = np.load(out)
    assert vectors.shape == (50, 384)
    from worker.rowtext import row_text

    texts = [row_text(["name", "city"], [f"person {i}", f"city {i % 7}"]) for i in range(50)]
    want = normalize(make_pipeline().model.encode(texts)[0])
    assert ((vectors * want).sum(1)).min() >= 0.999


def test_submit_reports_jobs_that_never_come_back(pubsub: PubSubEnv, tmp_path: Path) -> None:
    """No worker runs: every job is reported missing, exit status 3."""
    table = tmp_path / "t.csv"
    table.write_text("a\n1\n2\n3\n")
    proc = subprocess.run(
        [sys.executable, "-m", "worker", "submit", "--input", str(table), "--rows-per-job", "1",
         "--job-prefix", "lost", "--wait", "--results-subscription",
         pubsub.results_subscription_id, "--timeout", "3"],
        env=WorkerProcess(pubsub.env(), tmp_path / "x").env, cwd=ROOT, capture_output=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 3
    entries = [json.loads(line) for line in proc.stderr.decode().splitlines()]
    missing = next(e for e in entries if e["message"] == "Jobs did not come back")
    assert missing["missing"] == ["lost-000000", "lost-000001", "lost-000002"]
