"""Run `tabular-worker serve` as a real subprocess, the way Cloud Run would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.pubsub import free_port

ROOT = Path(__file__).resolve().parent.parent


# `python -m worker serve`; a test may start another entry point that serves the same way.
SERVE = ("-m", "worker", "serve")


class WorkerProcess:
    def __init__(
        self,
        env: dict[str, str],
        log_path: Path,
        port: int | None = None,
        command: Sequence[str] = SERVE,
    ) -> None:
        self.port = port or free_port()
        self.command = list(command)
        self.log_path = log_path
        self.env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "SHARED_MODEL_VOLUME_ENABLED": "false",
            "TABULAR_LLM_ENABLED": "false",
            "PORT": str(self.port),
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait_ready: float = 120.0) -> WorkerProcess:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, *self.command], env=self.env, cwd=ROOT,
            stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
        log.close()
        if wait_ready:
            self.wait_ready(wait_ready)
        return self

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return int(r.status), r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited {self.proc.returncode}:\n{self.logs_text()}")
            try:
                if self.get("/readyz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"worker not ready after {timeout}s:\n{self.logs_text()}")

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def logs_text(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def logs(self) -> list[dict[str, Any]]:
        """Every stderr line, parsed: a non-JSON line fails the test that reads it."""
        lines = self.log_path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]
