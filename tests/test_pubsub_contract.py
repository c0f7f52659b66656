"""Contract tests: the behaviour the project relies on, against the official emulator and the
stand-in (tests/pubsub_server.py) alike, through the real google-cloud-pubsub clients over gRPC.

The emulator variant is skipped only when the emulator is not installed (or when
TABULAR_TEST_PUBSUB=standin simulates such a machine).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import threading
import time
from collections.abc import Iterator

import pytest
from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1
from google.cloud.pubsub_v1.subscriber.exceptions import AcknowledgeStatus
from google.cloud.pubsub_v1.subscriber.message import Message

from harness.pubsub import (
    KINDS,
    PubSubEnv,
    PubSubServerPool,
    StreamCollector,
    unique_name,
)
from tests.pubsub_fixture import server_or_skip

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=KINDS)
def ps(request: pytest.FixtureRequest, pubsub_servers: PubSubServerPool) -> Iterator[PubSubEnv]:
    """Fresh topics/subscriptions on the session's server of the parametrized kind."""
    server = server_or_skip(pubsub_servers, request.param)
    server.ensure_running()
    env = PubSubEnv(server).create()
    yield env
    env.close()
    assert server.running, f"{server.kind} died during the test:\n{server.log_text()}"
    env.delete()


def test_streaming_pull_1000_messages(ps: PubSubEnv) -> None:
    n = 1000
    publisher = ps.publisher()
    futures = [
        publisher.publish(ps.jobs_topic, f"message-{i}".encode(), index=str(i)) for i in range(n)
    ]
    ids = [f.result(timeout=60) for f in futures]
    assert len(set(ids)) == n

    with StreamCollector(ps.subscriber(), ps.jobs_subscription) as collector:
        assert collector.wait_for(n, timeout=60), f"only {len(collector.seen)} of {n} arrived"
        time.sleep(1.0)  # let the client send its last acks
    assert not collector.errors
    assert collector.duplicates() == {}
    by_index = {m.attributes["index"]: m for m in collector.deliveries}
    assert sorted(by_index) == sorted(str(i) for i in range(n))
    assert all(m.data == f"message-{i}".encode() for i, m in by_index.items())
    assert {m.message_id for m in collector.deliveries} == set(ids)
    now = dt.datetime.now(dt.UTC)
    assert all(abs((now - m.publish_time).total_seconds()) < 120 for m in collector.deliveries)
    assert all(m.delivery_attempt == 1 for m in collector.deliveries)  # a dead-letter policy

    # Acked means gone: nothing comes back, even once any lease would have expired (10 s).
    assert ps.drain(ps.jobs_subscription, wait=ps.ack_deadline + 1.0) == []


def test_nack_redelivers(ps: PubSubEnv) -> None:
    message_id = ps.publish_job(b"nack me once", job_id="j-1")

    def decide(msg: Message, n: int) -> str:
        return "nack" if n == 1 else "ack"

    with StreamCollector(ps.subscriber(), ps.jobs_subscription, decide) as collector:
        assert collector.wait_deliveries(2, timeout=30)
        time.sleep(0.5)
    first, second = collector.deliveries[:2]
    assert first.message_id == second.message_id == message_id
    assert second.data == b"nack me once"
    assert second.attributes["job_id"] == "j-1"
    assert [first.delivery_attempt, second.delivery_attempt] == [1, 2]
    assert len(collector.deliveries) == 2
    assert ps.drain(ps.jobs_subscription, wait=1.0) == []


def test_ack_deadline_expiry_redelivers(ps: PubSubEnv) -> None:
    """Unacked messages come back after the subscription's ack deadline; a modack extends it."""
    sub = ps.results_subscription  # ack deadline 10 s, no dead-letter policy
    ps.publish(ps.results_topic, b"expire")
    ps.publish(ps.results_topic, b"extended")
    first = ps.pull_all(sub, expected=2, timeout=15, ack=False)
    start = time.monotonic()
    assert sorted(m.message.data for m in first) == [b"expire", b"extended"]
    by_data = {m.message.data: m for m in first}
    ps.server.admin_subscriber.modify_ack_deadline(
        subscription=sub, ack_ids=[by_data[b"extended"].ack_id], ack_deadline_seconds=40
    )

    again = ps.pull_all(sub, expected=1, timeout=30, ack=False)
    elapsed = time.monotonic() - start
    assert [m.message.data for m in again] == [b"expire"], "only the unextended one returns"
    assert 8.0 <= elapsed <= 25.0, elapsed
    assert again[0].message.message_id == by_data[b"expire"].message.message_id
    assert again[0].ack_id != by_data[b"expire"].ack_id  # each delivery has its own ack id
    assert again[0].delivery_attempt == 0  # unset without a dead-letter policy

    ps.server.admin_subscriber.acknowledge(
        subscription=sub, ack_ids=[again[0].ack_id, by_data[b"extended"].ack_id]
    )
    assert ps.drain(sub, wait=1.0) == []


def test_modack_shortens_deadline_and_zero_nacks(ps: PubSubEnv) -> None:
    sub = ps.jobs_subscription
    admin = ps.server.admin_subscriber
    ps.publish_job(b"modack")
    (first,) = ps.pull_all(sub, expected=1, timeout=15, ack=False)
    assert first.delivery_attempt == 1

    start = time.monotonic()
    admin.modify_ack_deadline(subscription=sub, ack_ids=[first.ack_id], ack_deadline_seconds=1)
    (second,) = ps.pull_all(sub, expected=1, timeout=15, ack=False)
    assert time.monotonic() - start < 8.0  # well before the 10 s subscription deadline
    assert second.message.message_id == first.message.message_id
    assert second.delivery_attempt == 2

    start = time.monotonic()
    admin.modify_ack_deadline(subscription=sub, ack_ids=[second.ack_id], ack_deadline_seconds=0)
    (third,) = ps.pull_all(sub, expected=1, timeout=15, ack=False)
    assert time.monotonic() - start < 8.0
    assert third.delivery_attempt == 3

    admin.acknowledge(subscription=sub, ack_ids=[third.ack_id])
    assert ps.drain(sub, wait=1.0) == []


def test_client_extends_lease_for_long_callback(ps: PubSubEnv) -> None:
    """A 13 s callback on a 10 s ack deadline: the client's modacks keep the message leased."""
    ps.publish(ps.results_topic, b"slow")
    finished = threading.Event()

    def decide(msg: Message, n: int) -> str:
        if n == 1:
            time.sleep(13.0)
            finished.set()
        return "ack"

    with StreamCollector(ps.subscriber(), ps.results_subscription, decide) as collector:
        assert collector.wait_for(1, timeout=15)
        assert finished.wait(30)
        time.sleep(1.5)
    assert len(collector.deliveries) == 1, collector.duplicates()
    assert ps.drain(ps.results_subscription, wait=1.0) == []


def test_dead_letter_after_max_attempts(ps: PubSubEnv) -> None:
    message_id = ps.publish_job(b"poison", job_id="p-1")

    with StreamCollector(ps.subscriber(), ps.jobs_subscription, lambda m, n: "nack") as collector:
        dead = ps.pull_dead_letters(1, timeout=90)
    attempts = [m.delivery_attempt for m in collector.deliveries]
    assert attempts == [1, 2, 3, 4, 5]
    assert {m.message_id for m in collector.deliveries} == {message_id}

    assert len(dead) == 1
    msg = dead[0].message
    assert msg.data == b"poison"
    attrs = dict(msg.attributes)
    assert attrs.pop("job_id") == "p-1"
    source_time = attrs.pop("CloudPubSubDeadLetterSourceTopicPublishTime")
    assert attrs == {
        "CloudPubSubDeadLetterSourceDeliveryCount": "5",
        "CloudPubSubDeadLetterSourceSubscription": ps.jobs_subscription_id,
        "CloudPubSubDeadLetterSourceSubscriptionProject": ps.project,
    }
    original = collector.deliveries[0].publish_time
    parsed = dt.datetime.strptime(source_time, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)
    assert abs((parsed - original).total_seconds()) < 0.002, (source_time, original)
    assert dead[0].delivery_attempt == 0  # the dead-letter subscription has no policy
    assert ps.drain(ps.jobs_subscription, wait=1.0) == []


def test_large_messages(ps: PubSubEnv) -> None:
    """Two ~8 MB messages through publish and streaming pull (over gRPC's 4 MB default)."""
    payloads = [os.urandom(8 * 1000 * 1000) for _ in range(2)]
    publisher = ps.publisher()
    futures = [
        publisher.publish(ps.jobs_topic, p, sha256=hashlib.sha256(p).hexdigest()) for p in payloads
    ]
    for f in futures:
        f.result(timeout=60)

    with StreamCollector(ps.subscriber(), ps.jobs_subscription) as collector:
        assert collector.wait_for(2, timeout=60)
        time.sleep(0.5)
    assert not collector.errors
    got = sorted(collector.deliveries, key=lambda m: m.attributes["sha256"])
    assert len(got) == 2
    for m in got:
        assert len(m.data) == 8 * 1000 * 1000
        assert hashlib.sha256(m.data).hexdigest() == m.attributes["sha256"]


def test_pull_rpc(ps: PubSubEnv) -> None:
    sub = ps.results_subscription
    admin = ps.server.admin_subscriber
    ids = [ps.publish(ps.results_topic, f"row-{i}".encode(), i=str(i)) for i in range(5)]

    first = admin.pull(subscription=sub, max_messages=2, timeout=15)
    assert 1 <= len(first.received_messages) <= 2
    admin.acknowledge(subscription=sub, ack_ids=[m.ack_id for m in first.received_messages])
    rest = ps.pull_all(sub, expected=5 - len(first.received_messages), timeout=15)
    got = [*first.received_messages, *rest]
    assert sorted(m.message.message_id for m in got) == sorted(ids)
    for m in got:
        assert m.message.data == f"row-{m.message.attributes['i']}".encode()
        assert m.ack_id

    start = time.monotonic()
    empty = admin.pull(subscription=sub, max_messages=10, return_immediately=True, timeout=15)
    assert list(empty.received_messages) == []
    assert time.monotonic() - start < 3.0


def test_not_found_and_already_exists(ps: PubSubEnv) -> None:
    server = ps.server
    missing_sub = server.subscription_path("no-such-subscription")
    missing_topic = server.topic_path("no-such-topic")
    admin_sub = server.admin_subscriber
    with pytest.raises(gexc.NotFound):
        admin_sub.get_subscription(subscription=missing_sub, timeout=10)
    with pytest.raises(gexc.NotFound):
        admin_sub.pull(subscription=missing_sub, max_messages=1, timeout=10)
    with pytest.raises(gexc.NotFound):
        server.admin_publisher.get_topic(topic=missing_topic, timeout=10)
    with pytest.raises(gexc.NotFound):
        server.publish(missing_topic, b"x")
    with pytest.raises(gexc.NotFound):
        server.create_subscription(server.subscription_path("orphan-sub"), missing_topic)
    with pytest.raises(gexc.AlreadyExists):
        server.create_topic(ps.jobs_topic)
    with pytest.raises(gexc.AlreadyExists):
        server.create_subscription(ps.jobs_subscription, ps.jobs_topic)

    # What the worker relies on: streaming pull on a missing subscription fails with NOT_FOUND.
    future = ps.subscriber().subscribe(missing_sub, lambda m: m.ack())
    with pytest.raises(gexc.NotFound):
        future.result(timeout=30)


def test_invalid_names_rejected(ps: PubSubEnv) -> None:
    server = ps.server
    with pytest.raises(gexc.InvalidArgument):
        server.create_topic("ab")  # ids need >= 3 characters
    with pytest.raises(gexc.InvalidArgument):
        server.create_subscription("ab", ps.jobs_topic)
    with pytest.raises(gexc.InvalidArgument):
        server.create_subscription("too-long-deadline", ps.jobs_topic, ack_deadline=601)


def test_default_channel_limit_is_4mb(ps: PubSubEnv) -> None:
    """Why the harness builds its own channels: the client's emulator channel caps receives."""
    ps.publish(ps.results_topic, os.urandom(5 * 1000 * 1000))
    old = os.environ.get("PUBSUB_EMULATOR_HOST")
    os.environ["PUBSUB_EMULATOR_HOST"] = ps.host
    try:
        plain = pubsub_v1.SubscriberClient()
    finally:
        if old is None:
            del os.environ["PUBSUB_EMULATOR_HOST"]
        else:
            os.environ["PUBSUB_EMULATOR_HOST"] = old
    try:
        with pytest.raises(gexc.ResourceExhausted):
            plain.pull(subscription=ps.results_subscription, max_messages=1, timeout=15)
    finally:
        plain.close()


def test_exactly_once_ack_with_response(ps: PubSubEnv) -> None:
    server = ps.server
    admin = server.admin_subscriber
    sub = server.create_subscription(unique_name("eod"), ps.results_topic, enable_exactly_once=True)
    try:
        # A nacked delivery's ack id is dead: acking it fails with PERMANENT_FAILURE_INVALID_ACK_ID.
        # (Checked before any streaming pull: after one, the emulator loses such a message.)
        server.publish(ps.results_topic, b"eod-nacked")
        (first,) = server.pull_all(sub, expected=1, timeout=15, ack=False)
        admin.modify_ack_deadline(subscription=sub, ack_ids=[first.ack_id], ack_deadline_seconds=0)
        with pytest.raises(gexc.InvalidArgument) as err:
            admin.acknowledge(subscription=sub, ack_ids=[first.ack_id])
        assert "PERMANENT_FAILURE_INVALID_ACK_ID" in str(err.value)
        (second,) = server.pull_all(sub, expected=1, timeout=15)
        assert second.message.message_id == first.message.message_id

        ids = {server.publish(ps.results_topic, f"eod-{i}".encode()) for i in range(3)}
        statuses: list[AcknowledgeStatus] = []

        def decide(msg: Message, n: int) -> str:
            statuses.append(msg.ack_with_response().result(timeout=30))
            return "ignore"

        with StreamCollector(ps.subscriber(), sub, decide) as collector:
            assert collector.wait_until(lambda c: len(statuses) >= 3, timeout=30)
            time.sleep(1.0)
        assert {m.message_id for m in collector.deliveries} == ids
        assert collector.duplicates() == {}
        assert statuses == [AcknowledgeStatus.SUCCESS] * 3
    finally:
        server.delete_subscription(sub)


def test_ordering_keys(ps: PubSubEnv) -> None:
    server = ps.server
    sub = server.create_subscription(
        unique_name("ord"), ps.results_topic, enable_message_ordering=True
    )
    try:
        publisher = ps.publisher(
            publisher_options=pubsub_v1.types.PublisherOptions(enable_message_ordering=True)
        )
        futures = [
            publisher.publish(ps.results_topic, b"x", ordering_key=f"k{i % 3}", seq=str(i))
            for i in range(60)
        ]
        for f in futures:
            f.result(timeout=30)
        with StreamCollector(ps.subscriber(), sub) as collector:
            assert collector.wait_for(60, timeout=30)
            time.sleep(0.5)
        for key in ("k0", "k1", "k2"):
            seqs = [int(m.attributes["seq"]) for m in collector.deliveries if m.ordering_key == key]
            assert seqs == sorted(seqs) and len(seqs) == 20, (key, seqs)
    finally:
        server.delete_subscription(sub)
