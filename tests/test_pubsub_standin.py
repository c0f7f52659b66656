"""Stand-in-only behaviour: what Pub/Sub does but the emulator does not (or not checkably)."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.api_core import exceptions as gexc
from google.pubsub_v1.types import PublishRequest, PubsubMessage, StreamingPullRequest

from harness.pubsub import PubSubEnv, PubSubServerPool

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def standin(pubsub_servers: PubSubServerPool) -> Iterator[PubSubEnv]:
    server = pubsub_servers.get("standin")
    server.ensure_running()
    env = PubSubEnv(server).create()
    yield env
    env.close()
    env.delete()


class RawStream:
    """A raw StreamingPull call: send requests, read responses in a thread."""

    def __init__(self, env: PubSubEnv, first: StreamingPullRequest) -> None:
        self._requests: queue.Queue[StreamingPullRequest | None] = queue.Queue()
        self._requests.put(first)
        self.received: list[Any] = []
        self._cond = threading.Condition()
        self._call = env.server.admin_subscriber.streaming_pull(requests=self._iter())
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _iter(self) -> Iterator[StreamingPullRequest]:
        while (req := self._requests.get()) is not None:
            yield req

    def _read(self) -> None:
        try:
            for resp in self._call:
                with self._cond:
                    self.received.extend(resp.received_messages)
                    self._cond.notify_all()
        except gexc.GoogleAPICallError:
            pass

    def send(self, req: StreamingPullRequest) -> None:
        self._requests.put(req)

    def wait_count(self, n: int, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self.received) >= n, timeout)

    def close(self) -> None:
        self._requests.put(None)
        self._thread.join(10)


def test_streaming_pull_honours_max_outstanding_messages(standin: PubSubEnv) -> None:
    for i in range(10):
        standin.publish_job(f"m{i}".encode())
    stream = RawStream(
        standin,
        StreamingPullRequest(
            subscription=standin.jobs_subscription,
            stream_ack_deadline_seconds=30,
            max_outstanding_messages=3,
        ),
    )
    try:
        assert stream.wait_count(3, timeout=10)
        time.sleep(0.5)
        assert len(stream.received) == 3  # the emulator would have sent all 10
        stream.send(StreamingPullRequest(ack_ids=[m.ack_id for m in stream.received[:2]]))
        assert stream.wait_count(5, timeout=10)
        time.sleep(0.5)
        assert len(stream.received) == 5
        # a nack on the stream frees the slot and redelivers at once
        nacked = stream.received[2]
        stream.send(
            StreamingPullRequest(
                modify_deadline_ack_ids=[nacked.ack_id], modify_deadline_seconds=[0]
            )
        )
        assert stream.wait_count(6, timeout=10)
        assert stream.received[5].message.message_id == nacked.message.message_id
    finally:
        stream.close()


def test_streaming_pull_honours_max_outstanding_bytes(standin: PubSubEnv) -> None:
    for _ in range(4):
        standin.publish_job(b"x" * 1000)
    stream = RawStream(
        standin,
        StreamingPullRequest(
            subscription=standin.jobs_subscription,
            stream_ack_deadline_seconds=30,
            max_outstanding_bytes=2500,
        ),
    )
    try:
        assert stream.wait_count(2, timeout=10)
        time.sleep(0.5)
        assert len(stream.received) == 2
    finally:
        stream.close()


def test_late_ack_counts_until_redelivery(standin: PubSubEnv) -> None:
    """Like the emulator: an expired ack id still acks while the message waits for redelivery."""
    admin = standin.server.admin_subscriber
    sub = standin.results_subscription
    standin.publish(standin.results_topic, b"late")
    (first,) = standin.pull_all(sub, expected=1, timeout=10, ack=False)
    admin.modify_ack_deadline(subscription=sub, ack_ids=[first.ack_id], ack_deadline_seconds=1)
    time.sleep(1.5)  # expired, not pulled again yet
    admin.acknowledge(subscription=sub, ack_ids=[first.ack_id])
    assert standin.drain(sub, wait=1.0) == []


def test_publish_limits(standin: PubSubEnv) -> None:
    """Pub/Sub rejects messages over 10 MB and empty ones (the emulator accepts 10.5 MB)."""
    transport: Any = standin.server.admin_publisher.transport
    too_big = PubsubMessage(data=b"x" * 10_000_001)
    for message in (too_big, PubsubMessage()):
        with pytest.raises(grpc.RpcError) as err:
            transport.publish(PublishRequest(topic=standin.jobs_topic, messages=[message]))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_out_of_range_values(standin: PubSubEnv) -> None:
    server = standin.server
    with pytest.raises(gexc.OutOfRange):
        server.create_subscription(
            "few-attempts",
            standin.jobs_topic,
            dead_letter_topic=standin.dead_letter_topic,
            max_delivery_attempts=3,
        )
    standin.publish_job(b"m")
    (got,) = standin.pull_all(standin.jobs_subscription, expected=1, timeout=10, ack=False)
    with pytest.raises(gexc.InvalidArgument):
        server.admin_subscriber.modify_ack_deadline(
            subscription=standin.jobs_subscription, ack_ids=[got.ack_id], ack_deadline_seconds=601
        )
