"""Pub/Sub fixtures (a pytest plugin, loaded from tests/conftest.py) over ``harness.pubsub``.

- ``pubsub_server`` (session): one :class:`PubSubServer` shared by the session.
- ``pubsub`` (function): a :class:`PubSubEnv` with fresh topics/subscriptions on that server.
- ``pubsub_private`` (function): a :class:`PubSubEnv` on a server of its own, for tests that
  pause, kill or restart it.
- ``pubsub_servers`` (session): a :class:`PubSubServerPool` giving one server per kind; tests
  take one with :func:`server_or_skip` (the contract tests run on both kinds).
- ``pubsub_redelivering`` (function): a :class:`PubSubEnv` on the stand-in, for tests that kill
  subscribers and need their messages back (see the fixture).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

from harness import pubsub as harness
from harness.pubsub import KindUnavailable, PubSubEnv, PubSubServer, PubSubServerPool


def server_or_skip(pool: PubSubServerPool, kind: str | None = None) -> PubSubServer:
    """``pool.get(kind)``, skipping the test when that kind cannot run here."""
    try:
        return pool.get(kind)
    except KindUnavailable as exc:
        pytest.skip(str(exc))


# --------------------------------------------------------------------------- pytest hooks


def pytest_report_header(config: pytest.Config) -> str:
    try:
        kind = harness.default_kind()
    except ValueError as err:
        return f"pubsub: {err}"
    forced = harness.requested_kind()
    how = (
        f"forced by {harness.ENV_CHOICE}"
        if forced
        else f"auto; {harness.ENV_CHOICE}=standin|emulator to force"
    )
    emulator = harness.find_emulator()
    where = f" ({emulator[0]})" if kind == "emulator" and emulator else ""
    if kind == "emulator" and emulator is None:
        where = " (NOT INSTALLED: Pub/Sub tests will error)"
    return f"pubsub: {kind}{where} [{how}]"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if harness._STARTED:
        ran = ", ".join(f"{kind} ({cmd})" for kind, cmd in sorted(harness._STARTED.items()))
        terminalreporter.write_line(f"pubsub servers used: {ran}")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def pubsub_servers() -> Iterator[PubSubServerPool]:
    """One server per kind for the whole session (started lazily)."""
    pool = PubSubServerPool()
    yield pool
    pool.close()


@pytest.fixture(scope="session")
def pubsub_server(pubsub_servers: PubSubServerPool) -> PubSubServer:
    """The session's shared server (emulator if installed, else the stand-in)."""
    return server_or_skip(pubsub_servers)


@pytest.fixture
def pubsub(pubsub_server: PubSubServer) -> Iterator[PubSubEnv]:
    """Fresh jobs/results/dead-letter topics and subscriptions on the shared server."""
    pubsub_server.ensure_running()  # e.g. a test killed the shared server
    env = PubSubEnv(pubsub_server).create()
    yield env
    env.close()
    with contextlib.suppress(Exception):
        env.delete()


@pytest.fixture
def pubsub_private() -> Iterator[PubSubEnv]:
    """A PubSubEnv on a server of its own (``.server``): free to pause, kill or restart."""
    kind = harness.default_kind()
    reason = harness.kind_unavailable(kind)
    if reason is not None:
        raise RuntimeError(f"{harness.ENV_CHOICE}={kind}, but {reason}")
    with PubSubServer(kind) as server:
        env = PubSubEnv(server).create()
        try:
            yield env
        finally:
            server.resume()
            env.close()


@pytest.fixture
def pubsub_redelivering(pubsub_servers: PubSubServerPool) -> Iterator[PubSubEnv]:
    """Topics on the stand-in server, which redelivers a dead stream's messages after their
    ack deadline as Pub/Sub does. The official emulator (0.8.20) over-delivers past flow control
    and then never redelivers the messages that were in transit to a killed subscriber (seen
    here: 100 of 2,000 still missing after 700 s), so a crash test against it can only hang."""
    env = PubSubEnv(pubsub_servers.get("standin")).create()
    yield env
    env.close()
    env.delete()
