"""A small Pub/Sub emulator fixture for the sync's listen test.

Stand-in until the shared harness (tests/pubsub_fixture.py) is merged here: the test only uses
`pubsub_emulator.host`, `.project`, `topic()`, `subscription()` and `close()`, so switching is a
change of fixture. Skips when the official emulator is not installed (e.g. Debian 13 images).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

LAUNCHER = "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator"


def launcher() -> str | None:
    """The emulator's own launcher (faster than `gcloud beta emulators pubsub start`)."""
    if Path(LAUNCHER).is_file() and shutil.which("java"):
        return LAUNCHER
    try:
        listed = subprocess.run(["dpkg", "-L", "google-cloud-cli-pubsub-emulator"],
                                capture_output=True, text=True, check=False).stdout  # fmt: skip
    except OSError:
        return None
    found = [p for p in listed.splitlines() if p.endswith("bin/cloud-pubsub-emulator")]
    return found[0] if found and shutil.which("java") else None


class Emulator:
    def __init__(self, command: str, project: str = "sync-test") -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.host, self.project = f"127.0.0.1:{port}", project
        self._proc = subprocess.Popen(
            [command, "--host=127.0.0.1", f"--port={port}"], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        self._clients: list[Any] = []
        self._wait_listening(port)

    def _wait_listening(self, port: int, within: float = 60.0) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            assert self._proc.poll() is None, "the emulator exited"
            time.sleep(0.1)
        raise TimeoutError("the Pub/Sub emulator did not start")

    def publisher(self) -> Any:
        from google.cloud import pubsub_v1

        os.environ["PUBSUB_EMULATOR_HOST"] = self.host
        client = pubsub_v1.PublisherClient()
        self._clients.append(client)
        return client

    def subscriber(self) -> Any:
        from google.cloud import pubsub_v1

        os.environ["PUBSUB_EMULATOR_HOST"] = self.host
        client = pubsub_v1.SubscriberClient()
        self._clients.append(client)
        return client

    def topic(self, name: str) -> str:
        path = f"projects/{self.project}/topics/{name}"
        self.publisher().create_topic(name=path)
        return path

    def subscription(self, name: str, topic: str) -> str:
        path = f"projects/{self.project}/subscriptions/{name}"
        self.subscriber().create_subscription(name=path, topic=topic, ack_deadline_seconds=30)
        return path

    def close(self) -> None:
        for client in self._clients:
            try:
                client.close() if hasattr(client, "close") else client.transport.close()
            except Exception:
                pass
        os.killpg(self._proc.pid, signal.SIGTERM)
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(10)


@pytest.fixture
def pubsub_emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[Emulator]:
    command = launcher()
    if command is None:
        pytest.skip("the Pub/Sub emulator (google-cloud-cli-pubsub-emulator) is not installed")
    monkeypatch.delenv("PUBSUB_EMULATOR_HOST", raising=False)
    emulator = Emulator(command)
    yield emulator
    emulator.close()
