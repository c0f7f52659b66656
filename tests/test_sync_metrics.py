"""The sync's metrics as operators get them: `tabular-sync once` pushing to a real Pushgateway,
`tabular-sync listen` serving /metrics, /healthz and /readyz on TABULAR_SYNC_METRICS_PORT."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import urllib.error
from pathlib import Path

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from base.cache.status import read_status
from harness.pubsub import PubSubEnv
from sync.metrics import PUSH_JOB
from tests.cache_helpers import ROOT, manifest, sync_cli
from tests.prometheus_server import Pushgateway, free_port, http_get, wait_for

FILES = {"config.json": b"{}" * 50, "weights.bin": bytes(range(256)) * 8}  # 100 + 2048 bytes
SIZE = sum(len(data) for data in FILES.values())
QUOTA = 10_000_000


def model_dir(path: Path) -> Path:
    path.mkdir()
    for name, data in FILES.items():
        (path / name).write_bytes(data)
    return path


def pushed(gateway: Pushgateway) -> dict[str, float]:
    """The pushed tabular-sync group as {'name{k=v,...}': value} (job/instance labels dropped)."""
    values: dict[str, float] = {}
    for sample in gateway.samples():
        if sample.labels.get("job") != PUSH_JOB or not sample.name.startswith("tabular_"):
            continue
        if sample.name.endswith("_created"):
            continue
        labels = {k: v for k, v in sample.labels.items() if k not in ("job", "instance")}
        key = sample.name + "".join(f"{{{k}={v}}}" for k, v in sorted(labels.items()))
        values[key] = sample.value
    return values


def test_once_pushes_run_metrics_to_the_pushgateway(
    tmp_path: Path, pushgateway: Pushgateway
) -> None:
    source, cache = model_dir(tmp_path / "model"), tmp_path / "cache"
    env = {"TABULAR_PUSHGATEWAY_URL": pushgateway.address,
           "TABULAR_CACHE_QUOTA_BYTES": str(QUOTA)}  # fmt: skip
    first = sync_cli("once", "--cache", str(cache), "--model", f"m=file://{source}", env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    status = read_status(cache)
    assert status["cache_size_bytes"] == SIZE == manifest(cache).models[0].size
    got = pushed(pushgateway)
    assert got.pop("tabular_sync_last_success_timestamp_seconds") == pytest.approx(
        status["last_success_unix"], abs=1e-3
    )
    assert got.pop("tabular_sync_duration_seconds") == pytest.approx(
        status["duration_seconds"], abs=1e-3
    )
    assert got == {
        "tabular_sync_runs_total{outcome=success}": 1.0,
        "tabular_sync_runs_total{outcome=failure}": 0.0,
        "tabular_sync_consecutive_failures": 0.0,
        "tabular_sync_bytes_total": float(SIZE),
        "tabular_sync_gc_trees_total": 0.0,
        "tabular_sync_gc_bytes_total": 0.0,
        "tabular_sync_files_total": float(len(FILES)),
        "tabular_cache_size_bytes": float(SIZE),
        "tabular_cache_quota_bytes": float(QUOTA),
    }

    # A failed run replaces the group: the failure counted, the last success kept.
    shutil.rmtree(source)
    second = sync_cli("once", "--cache", str(cache), "--model", f"m=file://{source}",
                      "--force", env=env)  # fmt: skip
    assert second.returncode == 1, second.stderr[-2000:]
    got = pushed(pushgateway)
    assert got["tabular_sync_runs_total{outcome=failure}"] == 1.0
    assert got["tabular_sync_runs_total{outcome=success}"] == 0.0
    assert got["tabular_sync_consecutive_failures"] == 1.0
    assert got["tabular_sync_bytes_total"] == got["tabular_sync_files_total"] == 0.0
    assert got["tabular_sync_last_success_timestamp_seconds"] == pytest.approx(
        status["last_success_unix"], abs=1e-3
    )
    assert got["tabular_cache_size_bytes"] == float(SIZE)  # the previous generation stays


def test_once_without_a_pushgateway_says_so(tmp_path: Path) -> None:
    source = model_dir(tmp_path / "model")
    proc = sync_cli("once", "--cache", str(tmp_path / "cache"), "--model", f"m=file://{source}",
                    env={"TABULAR_PUSHGATEWAY_URL": ""})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    messages = [orjson.loads(line)["message"] for line in proc.stderr.splitlines() if line]
    assert "Sync metrics not pushed: TABULAR_PUSHGATEWAY_URL is not set" in messages


def scrape(port: int) -> dict[str, float]:
    text = http_get(f"http://127.0.0.1:{port}/metrics").decode()
    return {
        s.name + "".join(f"{{{k}={v}}}" for k, v in sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_listen_serves_metrics_health_and_readiness(tmp_path: Path, pubsub: PubSubEnv) -> None:
    server = pubsub.server
    refresh = server.topic_path(f"{pubsub.prefix}-refresh")
    server.create_topic(refresh)
    server.create_subscription(server.subscription_path(f"{pubsub.prefix}-refresh-sub"), refresh)
    source, port = model_dir(tmp_path / "model"), free_port()
    env = {**server.env(), "HF_HUB_OFFLINE": "1", "MODEL_CACHE_PATH": str(tmp_path / "cache"),
           "TABULAR_REFRESH_SUBSCRIPTION": f"{pubsub.prefix}-refresh-sub",
           "TABULAR_SYNC_MODELS": f"m=file://{source}", "TABULAR_SYNC_METRICS_PORT": str(port),
           "TABULAR_CACHE_QUOTA_BYTES": str(QUOTA)}  # fmt: skip
    log = (tmp_path / "listen.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "sync", "listen"], env=env, cwd=ROOT,
                            stderr=log, stdout=subprocess.DEVNULL)  # fmt: skip
    try:

        def ready() -> bool:
            assert proc.poll() is None, (tmp_path / "listen.log").read_text()[-2000:]
            return bool(orjson.loads(http_get(f"http://127.0.0.1:{port}/readyz"))["ready"])

        wait_for(ready, timeout=60, message="listen /readyz")
        assert orjson.loads(http_get(f"http://127.0.0.1:{port}/healthz")) == {"status": "alive"}
        before = scrape(port)
        assert before["tabular_sync_runs_total{outcome=success}"] == 0.0
        assert before["tabular_cache_quota_bytes"] == float(QUOTA)
        server.publish(refresh, b"scheduled refresh")

        def after_one_sync() -> dict[str, float] | None:
            metrics = scrape(port)
            return metrics if metrics["tabular_sync_runs_total{outcome=success}"] == 1.0 else None

        after = wait_for(after_one_sync, timeout=60, message="one successful sync counted")
        assert after["tabular_sync_files_total"] == float(len(FILES))
        assert after["tabular_sync_bytes_total"] == after["tabular_cache_size_bytes"] == SIZE
        assert after["tabular_sync_consecutive_failures"] == 0.0
        status = read_status(tmp_path / "cache")
        assert after["tabular_sync_last_success_timestamp_seconds"] == pytest.approx(
            status["last_success_unix"], abs=1e-3
        )
        assert "process_cpu_seconds_total" in after  # the default registry's collectors
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        log.close()
    assert code == 0, (tmp_path / "listen.log").read_text()[-2000:]
    with pytest.raises(urllib.error.URLError):
        http_get(f"http://127.0.0.1:{port}/healthz", timeout=1)
