"""A real worker's /metrics end to end: counts match the jobs sent, `promtool check metrics` is
clean, and a real Prometheus scraping workers on a corrupt cache fires the cache alert."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from base.cache.status import read_status
from harness.pubsub import PubSubEnv
from harness.worker_proc import WorkerProcess
from tests.cache_helpers import PACKAGED, manifest, model_file, sync_cli
from tests.prometheus_server import PrometheusServer, require_binary, rules_without_for, wait_for

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(env: PubSubEnv, **extra: str) -> WorkerProcess:
        worker = WorkerProcess({**env.env(), **extra}, tmp_path / f"worker-{len(started)}.log")
        started.append(worker)
        return worker.start(wait_ready=0)

    yield start
    for worker in started:
        worker.stop()


def scrape(worker: WorkerProcess) -> tuple[bytes, Samples]:
    status, body = worker.get("/metrics")
    assert status == 200
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }
    return body, samples


def series(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: value for (n, labels), value in samples.items() if n == name}


def labels(**kv: str) -> frozenset[tuple[str, str]]:
    return frozenset(kv.items())


def table(rows: list[str]) -> dict[str, Any]:
    return {"columns": ["text"], "rows": [[r] for r in rows]}


def embed(job_id: str, rows: int) -> bytes:
    texts = [f"{job_id} row {r}: red trail shoes" for r in range(rows)]
    if rows == LONG_ROWS:  # one row over MiniLM's 256 tokens: embedded truncated
        texts[0] = " ".join(f"word{i}" for i in range(400))
    return orjson.dumps({"job_id": job_id, "type": "embed", "table": table(texts)})


def classify(job_id: str, rows: int) -> bytes:
    texts = [f"row {r}: a tax refund" for r in range(rows)]
    return orjson.dumps({"job_id": job_id, "type": "classify", "table": table(texts),
                         "labels": ["fashion", "finance", "weather"]})  # fmt: skip


EMBED_ROWS = [1, 2, 3, 4, 5, 6, 7]  # 7 ok embed jobs, 28 rows
LONG_ROWS = 3  # the embed job with this many rows has one row longer than the model takes
CLASSIFY_ROWS = [2, 3]  # 2 ok classify jobs, 5 rows
INVALID = {  # job_id: (message body, type label, error code)
    "bad-empty": (orjson.dumps({"job_id": "bad-empty", "type": "embed",
                                "table": {"columns": ["a"], "rows": []}}), "embed", "empty_table"),
    "bad-type": (orjson.dumps({"job_id": "bad-type", "type": "bogus",
                               "table": {"columns": ["a"], "rows": [["x"]]}}), "unknown",
                 "unknown_type"),
    "bad-json": (b'{"job_id": "bad-json", "type": "embed", ', "unknown", "invalid_json"),
}  # fmt: skip


def test_worker_metrics_count_exactly_the_jobs_sent(
    pubsub: PubSubEnv, workers: Callable[..., WorkerProcess]
) -> None:
    worker = workers(pubsub)
    worker.wait_ready(180)
    _, before = scrape(worker)
    # The ok series exist before the first job, so rate() sees that job.
    assert series(before, "tabular_jobs_total") == {
        labels(type="embed", outcome="ok", code=""): 0.0,
        labels(type="classify", outcome="ok", code=""): 0.0,
    }
    for i, rows in enumerate(EMBED_ROWS):
        pubsub.publish_job(embed(f"embed-{i}", rows))
    for i, rows in enumerate(CLASSIFY_ROWS):
        pubsub.publish_job(classify(f"classify-{i}", rows))
    for body, _, _ in INVALID.values():
        pubsub.publish_job(body)
    total = len(EMBED_ROWS) + len(CLASSIFY_ROWS) + len(INVALID)
    results = [orjson.loads(m.message.data) for m in pubsub.pull_results(total, timeout=120)]
    # Unparseable JSON has no job_id to answer with: compare the codes.
    errors = sorted(r["error"]["code"] for r in results if r["status"] == "error")
    assert errors == sorted(code for _, _, code in INVALID.values())

    # Acks are counted after the result is published: wait for the last one.
    wait_for(lambda: scrape(worker)[1][("tabular_pubsub_acks_total", labels())] == total,
             timeout=30, message="every job acked")  # fmt: skip
    body, samples = scrape(worker)
    want_jobs = {
        labels(type="embed", outcome="ok", code=""): float(len(EMBED_ROWS)),
        labels(type="classify", outcome="ok", code=""): float(len(CLASSIFY_ROWS)),
    }
    for _, type_label, code in INVALID.values():
        want_jobs[labels(type=type_label, outcome="error", code=code)] = 1.0
    assert series(samples, "tabular_jobs_total") == want_jobs
    assert series(samples, "tabular_rows_total") == {
        labels(type="embed"): float(sum(EMBED_ROWS)),
        labels(type="classify"): float(sum(CLASSIFY_ROWS)),
    }
    assert series(samples, "tabular_rows_truncated_total") == {
        labels(type="embed"): 1.0,
        labels(type="classify"): 0.0,
    }
    assert series(samples, "tabular_job_duration_seconds_count") == {
        labels(type="embed"): float(len(EMBED_ROWS) + 1),  # bad-empty is an embed job
        labels(type="classify"): float(len(CLASSIFY_ROWS)),
        labels(type="unknown"): 2.0,
    }
    assert samples[("tabular_pubsub_nacks_total", labels())] == 0.0
    assert samples[("tabular_jobs_in_flight", labels())] == 0.0

    check = subprocess.run([require_binary("promtool"), "check", "metrics"], input=body,
                           capture_output=True, timeout=60, check=False)  # fmt: skip
    assert (check.returncode, check.stdout, check.stderr) == (0, b"", b""), check


def query_by_instance(prom: PrometheusServer, expr: str) -> dict[str, float]:
    return {row["metric"]["instance"]: float(row["value"][1]) for row in prom.query(expr)}


def test_prometheus_fires_the_cache_alert_for_workers_on_a_corrupt_cache(
    tmp_path: Path,
    pubsub: PubSubEnv,
    workers: Callable[..., WorkerProcess],
    prometheus_factory: Callable[..., PrometheusServer],
) -> None:
    cache = tmp_path / "cache"
    synced = sync_cli("once", "--cache", str(cache), "--model", f"minilm=file://{PACKAGED}")
    assert synced.returncode == 0, synced.stderr[-2000:]
    weights = model_file(cache, "model.safetensors")
    with open(weights, "r+b") as fh:  # one flipped bit: the size still matches
        fh.seek(weights.stat().st_size // 2)
        byte = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([byte[0] ^ 0x01]))
    env: dict[str, Any] = {
        "SHARED_MODEL_VOLUME_ENABLED": "true", "MODEL_CACHE_PATH": str(cache),
        "TABULAR_EMBEDDING_MODEL": "minilm", "TABULAR_SYNC_MODELS": f"minilm=file://{PACKAGED}",
        "TABULAR_MODEL_LOAD_STRATEGY": "mount",
    }  # fmt: skip
    # The alert needs two misses within the hour: two workers, one miss each at start-up.
    started = [workers(pubsub, **env, TABULAR_LOCAL_MODEL_DIR=str(tmp_path / f"local-{i}"))
               for i in range(2)]  # fmt: skip
    for worker in started:
        worker.wait_ready(240)
    rules = rules_without_for(tmp_path / "alerts-instant.yml")
    prom = prometheus_factory([f"127.0.0.1:{w.port}" for w in started], rule_files=[rules])
    prom.wait_for_targets_up(timeout=30)
    instances = {f"127.0.0.1:{w.port}" for w in started}

    misses = 'tabular_model_cache_lookups_total{result="miss",reason="checksum_mismatch"}'
    assert query_by_instance(prom, misses) == dict.fromkeys(instances, 1.0)
    assert query_by_instance(prom, 'tabular_model_cache_lookups_total{result="hit"}') == {}
    (alert,) = wait_for(lambda: prom.firing("TabularModelCacheHitRateLow"), timeout=30,
                        message="TabularModelCacheHitRateLow firing")  # fmt: skip
    assert float(alert["value"]) == 0.0  # hit rate: no hits at all

    # The sync gauges workers export are sync-status.json's values, read at scrape time.
    status = read_status(cache)
    size = sum(f.size for m in manifest(cache).models for f in m.files)
    last = query_by_instance(prom, "tabular_sync_last_success_timestamp_seconds")
    assert last.keys() == instances
    assert all(v == pytest.approx(status["last_success_unix"], abs=1e-3) for v in last.values())
    assert query_by_instance(prom, "tabular_cache_size_bytes") == dict.fromkeys(instances, size)
    failures = query_by_instance(prom, "tabular_sync_consecutive_failures")
    assert failures == dict.fromkeys(instances, 0.0)
