"""The Pub/Sub harness itself: fixtures, process control (pause/kill/restart), kind selection."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from google.api_core import exceptions as gexc

from harness import pubsub as harness
from harness.pubsub import KindUnavailable, PubSubEnv, PubSubServer
from tests import pubsub_fixture

pytestmark = pytest.mark.timeout(120)


def _group_pids(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state != "Z":
            pids.append(int(entry.name))
    return pids


def _states(pids: list[int]) -> set[str]:
    out = set()
    for pid in pids:
        try:
            out.add(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0])
        except OSError:
            pass
    return out


def test_pubsub_env_resources_and_env(pubsub: PubSubEnv) -> None:
    env = pubsub.env()
    assert env["PUBSUB_EMULATOR_HOST"] == pubsub.host
    assert env["GOOGLE_CLOUD_PROJECT"] == pubsub.project
    assert env["TABULAR_JOBS_SUBSCRIPTION"] == pubsub.jobs_subscription_id
    assert env["TABULAR_RESULTS_TOPIC"] == pubsub.results_topic_id
    assert env["TABULAR_JOBS_TOPIC"] == pubsub.jobs_topic_id
    assert env["TABULAR_DEAD_LETTER_TOPIC"] == pubsub.dead_letter_topic_id
    assert pubsub.jobs_subscription == (
        f"projects/{pubsub.project}/subscriptions/{pubsub.jobs_subscription_id}"
    )
    assert pubsub.kind == pubsub.server.kind in harness.KINDS

    jobs = pubsub.server.admin_subscriber.get_subscription(subscription=pubsub.jobs_subscription)
    assert jobs.topic == pubsub.jobs_topic
    assert jobs.ack_deadline_seconds == 10
    assert jobs.dead_letter_policy.dead_letter_topic == pubsub.dead_letter_topic
    assert jobs.dead_letter_policy.max_delivery_attempts == 5

    message_id = pubsub.publish_job(b"{}", job_id="a1")
    (got,) = pubsub.pull_all(pubsub.jobs_subscription, expected=1, timeout=15)
    assert got.message.message_id == message_id
    assert got.message.attributes["job_id"] == "a1"
    assert pubsub.pull_results(1, timeout=1.0) == []


def test_two_envs_do_not_share_resources(pubsub: PubSubEnv) -> None:
    other = PubSubEnv(pubsub.server).create()
    try:
        assert other.jobs_topic != pubsub.jobs_topic
        other.publish_job(b"other")
        assert pubsub.drain(pubsub.jobs_subscription, wait=0.5) == []
        assert len(other.pull_all(other.jobs_subscription, expected=1, timeout=15)) == 1
    finally:
        other.close()
        other.delete()


def test_restart_loses_state_and_recreate_restores(pubsub_private: PubSubEnv) -> None:
    server = pubsub_private.server
    host = server.host
    pubsub_private.publish_job(b"lost")
    server.restart()
    assert server.host == host and server.running
    with pytest.raises(gexc.NotFound):
        server.admin_subscriber.get_subscription(
            subscription=pubsub_private.jobs_subscription, timeout=10
        )
    pubsub_private.recreate()
    pubsub_private.recreate()  # idempotent
    pubsub_private.publish_job(b"after restart")
    (got,) = pubsub_private.pull_all(pubsub_private.jobs_subscription, expected=1, timeout=15)
    assert got.message.data == b"after restart"


def test_pause_and_resume(pubsub_private: PubSubEnv) -> None:
    server = pubsub_private.server
    assert server.pid is not None
    pids = _group_pids(server.pid)
    assert pids
    server.pause()
    try:
        deadline = time.monotonic() + 5  # SIGSTOP reaches a many-threaded JVM after a moment
        while _states(pids) != {"T"} and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _states(pids) == {"T"}, "every process of the group is stopped"
        with pytest.raises(gexc.DeadlineExceeded):
            server.admin_publisher.get_topic(topic=pubsub_private.jobs_topic, timeout=2, retry=None)
    finally:
        server.resume()
    assert "T" not in _states(pids)
    topic = server.admin_publisher.get_topic(topic=pubsub_private.jobs_topic, timeout=10)
    assert topic.name == pubsub_private.jobs_topic


def test_kill_reaches_the_whole_process_group(pubsub_private: PubSubEnv) -> None:
    server = pubsub_private.server
    pgid = server.pid
    assert pgid is not None and _group_pids(pgid)
    server.kill()
    assert not server.running
    deadline = time.monotonic() + 5
    while _group_pids(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _group_pids(pgid) == []
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, signal.SIG_DFL)
    with pytest.raises(gexc.ServiceUnavailable):
        server.admin_publisher.get_topic(topic=pubsub_private.jobs_topic, timeout=3, retry=None)


def test_env_var_selects_the_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(harness.ENV_CHOICE, "standin")
    assert harness.default_kind() == "standin"
    assert harness.kind_unavailable("emulator") is not None
    assert "standin" in pubsub_fixture.pytest_report_header(None)  # type: ignore[arg-type]

    monkeypatch.setenv(harness.ENV_CHOICE, "bogus")
    with pytest.raises(ValueError):
        harness.default_kind()

    monkeypatch.delenv(harness.ENV_CHOICE)
    expected = "emulator" if harness.find_emulator() else "standin"
    assert harness.default_kind() == expected


def test_machine_without_emulator(monkeypatch: pytest.MonkeyPatch) -> None:
    """Debian 13 images: no emulator, so the stand-in runs and the emulator variants skip."""
    monkeypatch.setattr(harness, "find_emulator", lambda: None)
    monkeypatch.delenv(harness.ENV_CHOICE, raising=False)
    assert harness.default_kind() == "standin"
    assert "not installed" in (harness.kind_unavailable("emulator") or "")
    pool = harness.PubSubServerPool()
    with pytest.raises(KindUnavailable):
        pool.get("emulator")
    monkeypatch.setenv(harness.ENV_CHOICE, "emulator")
    with pytest.raises(RuntimeError, match="not installed"):
        pool.get("emulator")
    assert "NOT INSTALLED" in pubsub_fixture.pytest_report_header(None)  # type: ignore[arg-type]


def test_standin_runs_as_a_script_and_stops_on_sigterm() -> None:
    server = PubSubServer("standin").start()
    try:
        assert server.running
        assert server.command()[1].endswith("standin.py")
    finally:
        server.stop()
    assert not server.running
    assert "listening on" in server.log_text()
    server.close()
