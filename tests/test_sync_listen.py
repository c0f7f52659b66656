"""`tabular-sync listen` as a subprocess against the Pub/Sub emulator."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from harness.pubsub import PubSubServer, unique_name
from sync.listen import parse_event
from tests.cache_helpers import ROOT, manifest


class Lines:
    """A subprocess's stderr JSON lines, collected as they come."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.items: list[dict[str, Any]] = []
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            self.items.append(orjson.loads(line))

    def count(self, message: str) -> int:
        return sum(1 for e in self.items if e["message"] == message)

    def wait(self, message: str, within: float = 60.0) -> None:
        deadline = time.monotonic() + within
        while not self.count(message):
            assert time.monotonic() < deadline, f"no {message!r} in {self.items[-5:]}"
            time.sleep(0.05)


def test_one_refresh_event_runs_exactly_one_sync(
    pubsub_server: PubSubServer, tmp_path: Path
) -> None:
    server = pubsub_server
    source = tmp_path / "model"
    source.mkdir()
    (source / "config.json").write_text("{}")
    prefix = unique_name("sync")
    refresh = server.create_topic(f"{prefix}-refresh")
    server.create_subscription(f"{prefix}-refresh-sub", refresh)
    complete = server.create_topic(f"{prefix}-complete")
    watch = server.create_subscription(f"{prefix}-complete-watch", complete)
    env = {**os.environ, **server.env(), "HF_HUB_OFFLINE": "1",
           "TABULAR_REFRESH_SUBSCRIPTION": f"{prefix}-refresh-sub",
           "TABULAR_REFRESH_COMPLETE_TOPIC": f"{prefix}-complete",
           "MODEL_CACHE_PATH": str(tmp_path / "cache"),
           "TABULAR_SYNC_MODELS": f"m=file://{source}"}  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "sync", "listen"], env=env, cwd=ROOT,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)  # fmt: skip
    lines = Lines(proc)
    try:
        lines.wait("Listening for refresh events")
        # What Cloud Scheduler publishes: its configured body (here not JSON: refresh all).
        server.publish(refresh, b"scheduled refresh")
        lines.wait("Refresh complete published")
        messages = [m.message for m in server.drain(watch, wait=4.0)]
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    assert code == 0
    assert lines.count("Refresh event") == 1 and lines.count("Sync finished") == 1
    assert len(messages) == 1
    body = orjson.loads(messages[0].data)
    assert (body["event"], body["outcome"], body["generation"]) == ("refresh-complete", "ok", 1)
    assert dict(messages[0].attributes) == {"outcome": "ok", "generation": "1"}
    assert manifest(tmp_path / "cache").generation == 1
    assert [e["syncs"] for e in lines.items if e["message"] == "Listener stopped"] == [1]


def test_event_payloads() -> None:
    assert parse_event(b"", {}) is None
    assert parse_event(b"scheduled refresh", {}) is None
    assert parse_event(b'{"models": ["a", "b"]}', {}) == ["a", "b"]
    assert parse_event(b'{"models": "a, b"}', {}) == ["a", "b"]
    assert parse_event(b'{"models": []}', {}) is None
    assert parse_event(b"{}", {"models": "c"}) == ["c"]
