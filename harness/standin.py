"""A small stand-in Pub/Sub server for tests on machines without Google's emulator.

It speaks the real gRPC API (``google.pubsub.v1.Publisher`` / ``Subscriber``) using the protobuf
message classes shipped inside google-cloud-pubsub and ``grpc.aio`` generic handlers, so the real
client library talks to it exactly as it talks to the official emulator. State lives in memory.

Run it as a subprocess, like the emulator::

    python tests/pubsub_server.py --port 8085

It prints one ready line to stderr (``pubsub stand-in listening on 127.0.0.1:PORT``) and nothing
to stdout; SIGTERM/SIGINT stop it.

Implemented: CreateTopic, GetTopic, DeleteTopic, ListTopics, ListTopicSubscriptions, Publish,
CreateSubscription, GetSubscription, DeleteSubscription, ListSubscriptions, StreamingPull,
Pull, Acknowledge, ModifyAckDeadline. Semantics follow Pub/Sub (and the official emulator where
the two differ only in timing):

- StreamingPull honours ``max_outstanding_messages`` / ``max_outstanding_bytes`` of the first
  request (the emulator ignores them; Pub/Sub honours them), ``stream_ack_deadline_seconds`` of
  any request, and ack_ids / modify_deadline_* sent on the stream.
- ModifyAckDeadline with 0 is a nack: the message is redelivered at once. An expired ack
  deadline also redelivers. Every delivery gets a new ack_id; acks of stale ack_ids are ignored
  (with exactly-once delivery they fail with ``PERMANENT_FAILURE_INVALID_ACK_ID``).
- Dead-letter policies: ``delivery_attempt`` is set only when the subscription has one; a message
  nacked or expired after ``max_delivery_attempts`` deliveries is published to the dead-letter
  topic with the ``CloudPubSubDeadLetterSource*`` attributes the emulator adds.
- Message ordering: with ``enable_message_ordering`` messages of one ordering key are delivered in
  publish order, one outstanding at a time.
- NOT_FOUND for missing topics/subscriptions, ALREADY_EXISTS for duplicates, INVALID_ARGUMENT for
  bad names (ids need 3..255 characters) and out-of-range deadlines.

Differences from the official emulator (0.8.20) seen on this project's machines; the contract
tests in tests/test_pubsub_contract.py pin down the common ground:

- The emulator ignores StreamingPull flow control (it streams every available message); the
  stand-in honours it, like Pub/Sub.
- On streaming pull the emulator seems to redeliver expired or stream-nacked messages on a ~5 s
  sweep (a nack sent on the stream at 3.5 s came back at 5.0 s);
  the stand-in redelivers nacks at once and expired leases within ~50 ms.
- The emulator accepts messages over 10 MB (10.5 MB went through) and ModifyAckDeadline above
  600 s; the stand-in rejects both with INVALID_ARGUMENT, like Pub/Sub.
- With exactly-once delivery the emulator still accepts an ack whose deadline has expired (before
  redelivery); the stand-in fails it with PERMANENT_FAILURE_INVALID_ACK_ID, like Pub/Sub.
  Also seen on the emulator: after a streaming pull on an exactly-once subscription, a message
  nacked and then acked with its (failing) stale ack id was not redelivered for 27 s+.
- With message ordering the stand-in keeps at most one message per ordering key outstanding (the
  emulator may deliver several in order).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime as dt
import heapq
import itertools
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import empty_pb2
from google.pubsub_v1.types import pubsub as _types
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

# The raw protobuf message classes behind the proto-plus wrappers.
Topic: Any = _types.Topic.pb()
Subscription: Any = _types.Subscription.pb()
PubsubMessage: Any = _types.PubsubMessage.pb()
ReceivedMessage: Any = _types.ReceivedMessage.pb()
PublishRequest: Any = _types.PublishRequest.pb()
PublishResponse: Any = _types.PublishResponse.pb()
GetTopicRequest: Any = _types.GetTopicRequest.pb()
DeleteTopicRequest: Any = _types.DeleteTopicRequest.pb()
ListTopicsRequest: Any = _types.ListTopicsRequest.pb()
ListTopicsResponse: Any = _types.ListTopicsResponse.pb()
ListTopicSubscriptionsRequest: Any = _types.ListTopicSubscriptionsRequest.pb()
ListTopicSubscriptionsResponse: Any = _types.ListTopicSubscriptionsResponse.pb()
GetSubscriptionRequest: Any = _types.GetSubscriptionRequest.pb()
DeleteSubscriptionRequest: Any = _types.DeleteSubscriptionRequest.pb()
ListSubscriptionsRequest: Any = _types.ListSubscriptionsRequest.pb()
ListSubscriptionsResponse: Any = _types.ListSubscriptionsResponse.pb()
PullRequest: Any = _types.PullRequest.pb()
PullResponse: Any = _types.PullResponse.pb()
AcknowledgeRequest: Any = _types.AcknowledgeRequest.pb()
ModifyAckDeadlineRequest: Any = _types.ModifyAckDeadlineRequest.pb()
StreamingPullRequest: Any = _types.StreamingPullRequest.pb()
StreamingPullResponse: Any = _types.StreamingPullResponse.pb()

MAX_GRPC_MESSAGE = 64 * 1024 * 1024
MAX_MESSAGE_BYTES = 10 * 1000 * 1000  # Pub/Sub's limit on one message (and one publish request)
MAX_RESPONSE_BYTES = 16 * 1024 * 1024  # soft cap on one StreamingPull response (>= 1 message)
MAX_RESPONSE_MESSAGES = 1000
DEFAULT_ACK_DEADLINE = 10
DEFAULT_MAX_DELIVERY_ATTEMPTS = 5
RETENTION_SECONDS = 7 * 24 * 3600
DELETED_TOPIC = "_deleted-topic_"
REAP_INTERVAL = 0.05

_ID_RE = r"[A-Za-z][-A-Za-z0-9_.~+%]{2,254}"
_TOPIC_RE = re.compile(rf"projects/([^/]+)/topics/({_ID_RE})")
_SUB_RE = re.compile(rf"projects/([^/]+)/subscriptions/({_ID_RE})")
_PROJECT_RE = re.compile(r"projects/([^/]+)")


class RpcError(Exception):
    """Raised inside handlers; turned into a gRPC status by the handler wrappers."""

    def __init__(
        self,
        code: grpc.StatusCode,
        details: str,
        trailing_metadata: tuple[tuple[str, str | bytes], ...] = (),
    ) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
        self.trailing_metadata = trailing_metadata


def _check_name(name: str, pattern: re.Pattern[str], kind: str) -> tuple[str, str]:
    m = pattern.fullmatch(name)
    if m is None or m.group(2).lower().startswith("goog"):
        raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"Invalid [{kind}] name: (name={name})")
    return m.group(1), m.group(2)


def _rfc3339_ms(seconds: int, nanos: int) -> str:
    stamp = dt.datetime.fromtimestamp(seconds, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{nanos // 1_000_000:03d}Z"


@dataclass
class Pending:
    """One message as seen by one subscription."""

    message: Any  # PubsubMessage
    size: int
    delivery_count: int = 0
    expired_ack_ids: list[str] = field(default_factory=list)


@dataclass
class Lease:
    ack_id: str
    pending: Pending
    deadline: float
    stream: Stream | None


@dataclass(eq=False)
class Stream:
    """One open StreamingPull call."""

    sub: Sub
    ack_deadline: int
    max_messages: int
    max_bytes: int
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    outstanding: set[str] = field(default_factory=set)
    outstanding_bytes: int = 0
    closed: bool = False


@dataclass(eq=False)
class Sub:
    pb: Any  # Subscription
    project: str
    short_id: str
    queue: collections.deque[Pending] = field(default_factory=collections.deque)
    leases: dict[str, Lease] = field(default_factory=dict)
    # ack ids whose deadline expired while their message waits for redelivery: like the
    # emulator (and Pub/Sub without exactly-once), a late ack still counts until then.
    expired: dict[str, Pending] = field(default_factory=dict)
    streams: set[Stream] = field(default_factory=set)
    pull_waiters: set[asyncio.Event] = field(default_factory=set)
    keys_outstanding: set[str] = field(default_factory=set)
    deleted: bool = False

    @property
    def name(self) -> str:
        return str(self.pb.name)

    def wake(self) -> None:
        for stream in self.streams:
            stream.wakeup.set()
        for event in self.pull_waiters:
            event.set()


class PubSubState:
    """All topics, subscriptions and messages; used from one event loop only."""

    def __init__(self) -> None:
        self.topics: dict[str, Any] = {}
        self.subs: dict[str, Sub] = {}
        self._message_ids = itertools.count(1)
        self._ack_seq = itertools.count(1)
        self._heap_seq = itertools.count()
        self._heap: list[tuple[float, int, str, str]] = []  # (deadline, seq, sub, ack_id)
        self._reaper: asyncio.Task[None] | None = None

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> None:
        self._reaper = asyncio.get_running_loop().create_task(self._reap_forever())

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            try:
                await self._reaper
            except asyncio.CancelledError:
                pass

    async def _reap_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            while self._heap and self._heap[0][0] <= now:
                _, _, sub_name, ack_id = heapq.heappop(self._heap)
                sub = self.subs.get(sub_name)
                lease = sub.leases.get(ack_id) if sub is not None else None
                if sub is not None and lease is not None and lease.deadline <= now:
                    self._release(sub, lease, redeliver=True, expired=True)
            await asyncio.sleep(REAP_INTERVAL)

    # ----------------------------------------------------------------- topics
    def create_topic(self, req: Any) -> Any:
        _check_name(req.name, _TOPIC_RE, "topics")
        if req.name in self.topics:
            raise RpcError(grpc.StatusCode.ALREADY_EXISTS, "Topic already exists")
        topic = Topic()
        topic.CopyFrom(req)
        self.topics[req.name] = topic
        return topic

    def get_topic(self, name: str) -> Any:
        topic = self.topics.get(name)
        if topic is None:
            raise RpcError(grpc.StatusCode.NOT_FOUND, "Topic not found")
        return topic

    def delete_topic(self, name: str) -> None:
        self.get_topic(name)
        del self.topics[name]
        for sub in self.subs.values():
            if sub.pb.topic == name:
                sub.pb.topic = DELETED_TOPIC

    def list_topics(self, project: str) -> list[Any]:
        return [t for n, t in sorted(self.topics.items()) if n.startswith(project + "/topics/")]

    def publish(self, topic_name: str, messages: Iterable[Any]) -> list[str]:
        self.get_topic(topic_name)
        messages = list(messages)
        if not messages:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "No messages in publish request")
        for msg in messages:
            if not msg.data and not msg.attributes:
                raise RpcError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "A message must have either a non-empty data field or at least one attribute",
                )
            if msg.ByteSize() > MAX_MESSAGE_BYTES:
                raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "Message too large")
        now_ns = time.time_ns()
        ids = []
        for msg in messages:
            stored = PubsubMessage()
            stored.CopyFrom(msg)
            stored.message_id = str(next(self._message_ids))
            stored.publish_time.FromNanoseconds(now_ns - now_ns % 1_000_000)
            self._fan_out(topic_name, stored)
            ids.append(stored.message_id)
        return ids

    def _fan_out(self, topic_name: str, msg: Any) -> None:
        size = msg.ByteSize()
        for sub in self.subs.values():
            if sub.pb.topic == topic_name:
                sub.queue.append(Pending(message=msg, size=size))
                sub.wake()

    # ----------------------------------------------------------------- subscriptions
    def create_subscription(self, req: Any) -> Any:
        project, short_id = _check_name(req.name, _SUB_RE, "subscriptions")
        _check_name(req.topic, _TOPIC_RE, "topics")
        if req.name in self.subs:
            raise RpcError(grpc.StatusCode.ALREADY_EXISTS, "Subscription already exists")
        if req.topic not in self.topics:
            raise RpcError(grpc.StatusCode.NOT_FOUND, "Subscription topic does not exist")
        pb = Subscription()
        pb.CopyFrom(req)
        if pb.ack_deadline_seconds == 0:
            pb.ack_deadline_seconds = DEFAULT_ACK_DEADLINE
        if not 10 <= pb.ack_deadline_seconds <= 600:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "ack_deadline_secs out of bounds")
        if not pb.HasField("message_retention_duration"):
            pb.message_retention_duration.seconds = RETENTION_SECONDS
        pb.push_config.SetInParent()
        if pb.HasField("dead_letter_policy"):
            policy = pb.dead_letter_policy
            if policy.max_delivery_attempts == 0:
                policy.max_delivery_attempts = DEFAULT_MAX_DELIVERY_ATTEMPTS
            if not 5 <= policy.max_delivery_attempts <= 100:
                low = policy.max_delivery_attempts < 5
                raise RpcError(
                    grpc.StatusCode.OUT_OF_RANGE,
                    f"The value for max_delivery_attempts is too {'small' if low else 'large'}. "
                    f"You passed {policy.max_delivery_attempts} in the request, but the "
                    f"{'minimum value is 5' if low else 'maximum value is 100'}.",
                )
            if policy.dead_letter_topic:
                _check_name(policy.dead_letter_topic, _TOPIC_RE, "topics")
        self.subs[req.name] = Sub(pb=pb, project=project, short_id=short_id)
        return pb

    def get_sub(self, name: str) -> Sub:
        sub = self.subs.get(name)
        if sub is None:
            raise RpcError(grpc.StatusCode.NOT_FOUND, "Subscription does not exist")
        return sub

    def delete_subscription(self, name: str) -> None:
        sub = self.get_sub(name)
        del self.subs[name]
        sub.deleted = True
        sub.wake()

    def list_subscriptions(self, project: str) -> list[Any]:
        prefix = project + "/subscriptions/"
        return [s.pb for n, s in sorted(self.subs.items()) if n.startswith(prefix)]

    # ----------------------------------------------------------------- delivery
    def take(self, sub: Sub, stream: Stream | None, max_messages: int) -> list[Any]:
        """Lease up to ``max_messages`` messages (within the stream's flow control)."""
        loop_time = asyncio.get_running_loop().time()
        if stream is not None:
            deadline_s = stream.ack_deadline
        else:
            deadline_s = sub.pb.ack_deadline_seconds
        ordering = sub.pb.enable_message_ordering
        with_attempts = sub.pb.HasField("dead_letter_policy")
        out: list[Any] = []
        out_bytes = 0
        skipped: list[Pending] = []
        while sub.queue and len(out) < max_messages:
            pending = sub.queue[0]
            if out and out_bytes + pending.size > MAX_RESPONSE_BYTES:
                break
            if stream is not None and (out or stream.outstanding):
                if stream.max_messages and len(stream.outstanding) >= stream.max_messages:
                    break
                if stream.max_bytes and stream.outstanding_bytes + pending.size > stream.max_bytes:
                    break
            sub.queue.popleft()
            key = pending.message.ordering_key
            if ordering and key:
                if key in sub.keys_outstanding:
                    skipped.append(pending)
                    continue
                sub.keys_outstanding.add(key)
            for old in pending.expired_ack_ids:
                sub.expired.pop(old, None)
            pending.expired_ack_ids.clear()
            pending.delivery_count += 1
            ack_id = f"{sub.name}:{next(self._ack_seq)}"
            lease = Lease(ack_id, pending, loop_time + deadline_s, stream)
            sub.leases[ack_id] = lease
            heapq.heappush(self._heap, (lease.deadline, next(self._heap_seq), sub.name, ack_id))
            if stream is not None:
                stream.outstanding.add(ack_id)
                stream.outstanding_bytes += pending.size
            received = ReceivedMessage(ack_id=ack_id)
            received.message.CopyFrom(pending.message)
            if with_attempts:
                received.delivery_attempt = pending.delivery_count
            out.append(received)
            out_bytes += pending.size
        sub.queue.extendleft(reversed(skipped))
        return out

    def _release(self, sub: Sub, lease: Lease, *, redeliver: bool, expired: bool = False) -> None:
        """End a lease: acked (``redeliver=False``) or nacked/expired (``redeliver=True``)."""
        del sub.leases[lease.ack_id]
        pending = lease.pending
        if lease.stream is not None:
            lease.stream.outstanding.discard(lease.ack_id)
            lease.stream.outstanding_bytes -= pending.size
        key = pending.message.ordering_key
        if sub.pb.enable_message_ordering and key:
            sub.keys_outstanding.discard(key)
        if redeliver and not self._dead_letter(sub, pending):
            sub.queue.appendleft(pending)
            if expired and not sub.pb.enable_exactly_once_delivery:
                sub.expired[lease.ack_id] = pending
                pending.expired_ack_ids.append(lease.ack_id)
        sub.wake()

    def _dead_letter(self, sub: Sub, pending: Pending) -> bool:
        """Forward a message that used up its delivery attempts; True if it was forwarded."""
        if not sub.pb.HasField("dead_letter_policy"):
            return False
        policy = sub.pb.dead_letter_policy
        if pending.delivery_count < policy.max_delivery_attempts:
            return False
        if policy.dead_letter_topic not in self.topics:
            return False  # like Pub/Sub without publish rights: keep redelivering
        src = pending.message
        msg = PubsubMessage(data=src.data, ordering_key=src.ordering_key)
        for k, v in src.attributes.items():
            msg.attributes[k] = v
        msg.attributes["CloudPubSubDeadLetterSourceDeliveryCount"] = str(pending.delivery_count)
        msg.attributes["CloudPubSubDeadLetterSourceSubscription"] = sub.short_id
        msg.attributes["CloudPubSubDeadLetterSourceSubscriptionProject"] = sub.project
        msg.attributes["CloudPubSubDeadLetterSourceTopicPublishTime"] = _rfc3339_ms(
            src.publish_time.seconds, src.publish_time.nanos
        )
        self.publish(policy.dead_letter_topic, [msg])
        return True

    def _check_ack_ids(self, sub: Sub, ack_ids: Iterable[str]) -> list[str]:
        """Return the ack ids that are not (or no longer) valid; raise on malformed ones."""
        stale = []
        for ack_id in ack_ids:
            prefix, _, seq = ack_id.rpartition(":")
            if prefix != sub.name or not seq.isdigit():
                raise RpcError(
                    grpc.StatusCode.INVALID_ARGUMENT, f"Invalid ack id (ack_id={ack_id})"
                )
            if ack_id not in sub.leases and ack_id not in sub.expired:
                stale.append(ack_id)
        return stale

    def _eod_failure(self, stale: list[str]) -> RpcError:
        info = error_details_pb2.ErrorInfo(
            reason="EXACTLY_ONCE_ACKID_FAILURE",
            domain="pubsub.googleapis.com",
            metadata={ack_id: "PERMANENT_FAILURE_INVALID_ACK_ID" for ack_id in stale},
        )
        status = status_pb2.Status(
            code=code_pb2.INVALID_ARGUMENT, message="Some acknowledgement ids are invalid"
        )
        status.details.add().Pack(info)
        grpc_status = rpc_status.to_status(status)
        return RpcError(grpc_status.code, grpc_status.details, grpc_status.trailing_metadata)

    def acknowledge(self, sub: Sub, ack_ids: Iterable[str], *, strict: bool = True) -> None:
        ack_ids = list(ack_ids)
        stale = self._check_ack_ids(sub, ack_ids) if strict else []
        for ack_id in ack_ids:
            lease = sub.leases.get(ack_id)
            if lease is not None:
                self._release(sub, lease, redeliver=False)
                continue
            pending = sub.expired.pop(ack_id, None)
            if pending is not None:  # a late ack of a message not yet redelivered
                for old in pending.expired_ack_ids:
                    sub.expired.pop(old, None)
                pending.expired_ack_ids.clear()
                sub.queue.remove(pending)
        if stale and sub.pb.enable_exactly_once_delivery:
            raise self._eod_failure(stale)

    def modify_ack_deadline(
        self, sub: Sub, ack_ids: Iterable[str], seconds: Iterable[int], *, strict: bool = True
    ) -> None:
        pairs = list(zip(ack_ids, seconds, strict=True))
        for _, sec in pairs:
            if not 0 <= sec <= 600:
                raise RpcError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"Invalid ack deadline given: {sec}. Must be between 0 and 600 seconds.",
                )
        stale = self._check_ack_ids(sub, [a for a, _ in pairs]) if strict else []
        now = asyncio.get_running_loop().time()
        for ack_id, sec in pairs:
            lease = sub.leases.get(ack_id)
            if lease is None:
                continue
            if sec == 0:
                self._release(sub, lease, redeliver=True)
            else:
                lease.deadline = now + sec
                heapq.heappush(self._heap, (lease.deadline, next(self._heap_seq), sub.name, ack_id))
        if stale and sub.pb.enable_exactly_once_delivery:
            raise self._eod_failure(stale)

    def properties(self, sub: Sub) -> Any:
        props = StreamingPullResponse.SubscriptionProperties(
            exactly_once_delivery_enabled=sub.pb.enable_exactly_once_delivery,
            message_ordering_enabled=sub.pb.enable_message_ordering,
        )
        return props


class PubSubServicer:
    """gRPC method implementations over :class:`PubSubState`."""

    def __init__(self, state: PubSubState) -> None:
        self.state = state

    # Publisher
    async def create_topic(self, req: Any, ctx: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return self.state.create_topic(req)

    async def get_topic(self, req: Any, ctx: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return self.state.get_topic(req.topic)

    async def delete_topic(self, req: Any, ctx: grpc.aio.ServicerContext[Any, Any]) -> Any:
        self.state.delete_topic(req.topic)
        return empty_pb2.Empty()

    async def list_topics(self, req: Any, ctx: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return ListTopicsResponse(topics=self.state.list_topics(req.project))

    async def list_topic_subscriptions(
        self, req: Any, ctx: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        self.state.get_topic(req.topic)
        names = [n for n, s in sorted(self.state.subs.items()) if s.pb.topic == req.topic]
        return ListTopicSubscriptionsResponse(subscriptions=names)

    async def publish(self, req: Any, ctx: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return PublishResponse(message_ids=self.state.publish(req.topic, req.messages))

    # Subscriber
    async def create_subscription(self, req: Any, ctx: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return self.state.create_subscription(req)

    async def get_subscription(self, req: Any, ctx: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return self.state.get_sub(req.subscription).pb

    async def delete_subscription(self, req: Any, ctx: grpc.aio.ServicerContext[Any, Any]) -> Any:
        self.state.delete_subscription(req.subscription)
        return empty_pb2.Empty()

    async def list_subscriptions(self, req: Any, ctx: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return ListSubscriptionsResponse(subscriptions=self.state.list_subscriptions(req.project))

    async def acknowledge(self, req: Any, ctx: grpc.aio.ServicerContext[Any, Any]) -> Any:
        self.state.acknowledge(self.state.get_sub(req.subscription), req.ack_ids)
        return empty_pb2.Empty()

    async def modify_ack_deadline(self, req: Any, ctx: grpc.aio.ServicerContext[Any, Any]) -> Any:
        sub = self.state.get_sub(req.subscription)
        seconds = [req.ack_deadline_seconds] * len(req.ack_ids)
        self.state.modify_ack_deadline(sub, req.ack_ids, seconds)
        return empty_pb2.Empty()

    async def pull(self, req: Any, ctx: grpc.aio.ServicerContext[Any, Any]) -> Any:
        sub = self.state.get_sub(req.subscription)
        if req.max_messages <= 0:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "max_messages must be positive")
        loop = asyncio.get_running_loop()
        remaining = ctx.time_remaining()
        # Like the emulator: wait for messages until shortly before the caller's deadline.
        wait = 60.0 if remaining is None else min(60.0, max(0.0, remaining - 1.0))
        give_up = loop.time() + wait
        event = asyncio.Event()
        sub.pull_waiters.add(event)
        try:
            while True:
                event.clear()
                if sub.deleted:
                    raise RpcError(grpc.StatusCode.NOT_FOUND, "Subscription does not exist")
                got = self.state.take(sub, None, req.max_messages)
                left = give_up - loop.time()
                if got or req.return_immediately or left <= 0:
                    return PullResponse(received_messages=got)
                try:
                    await asyncio.wait_for(event.wait(), timeout=left)
                except TimeoutError:
                    pass
        finally:
            sub.pull_waiters.discard(event)

    async def streaming_pull(
        self, requests: AsyncIterator[Any], ctx: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        try:
            first = await anext(requests)
        except StopAsyncIteration:
            return
        if not first.subscription:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "subscription is required")
        sub = self.state.get_sub(first.subscription)
        if not 10 <= first.stream_ack_deadline_seconds <= 600:
            raise RpcError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "stream_ack_deadline_seconds must be between 10 and 600",
            )
        stream = Stream(
            sub=sub,
            ack_deadline=first.stream_ack_deadline_seconds,
            max_messages=max(0, first.max_outstanding_messages),
            max_bytes=max(0, first.max_outstanding_bytes),
        )
        sub.streams.add(stream)
        self._apply_stream_request(sub, stream, first)
        reader = asyncio.get_running_loop().create_task(self._read_stream(sub, stream, requests))
        props = self.state.properties(sub)
        try:
            while True:
                stream.wakeup.clear()
                if sub.deleted:
                    raise RpcError(grpc.StatusCode.NOT_FOUND, "Subscription does not exist")
                if stream.closed:
                    return
                got = self.state.take(sub, stream, MAX_RESPONSE_MESSAGES)
                if got:
                    yield StreamingPullResponse(
                        received_messages=got, subscription_properties=props
                    )
                    continue
                try:
                    await asyncio.wait_for(stream.wakeup.wait(), timeout=1.0)
                except TimeoutError:
                    pass
        finally:
            sub.streams.discard(stream)
            reader.cancel()

    def _apply_stream_request(self, sub: Sub, stream: Stream, req: Any) -> None:
        if req.stream_ack_deadline_seconds:
            stream.ack_deadline = min(600, max(10, req.stream_ack_deadline_seconds))
        if req.ack_ids:
            self.state.acknowledge(sub, req.ack_ids, strict=False)
        if req.modify_deadline_ack_ids:
            self.state.modify_ack_deadline(
                sub, req.modify_deadline_ack_ids, req.modify_deadline_seconds, strict=False
            )

    async def _read_stream(self, sub: Sub, stream: Stream, requests: AsyncIterator[Any]) -> None:
        try:
            async for req in requests:
                try:
                    self._apply_stream_request(sub, stream, req)
                except (RpcError, ValueError) as err:
                    print(f"pubsub stand-in: bad stream request: {err}", file=sys.stderr)
        except (asyncio.CancelledError, grpc.RpcError):
            pass
        finally:
            stream.closed = True
            stream.wakeup.set()


Handler = Callable[..., Any]


def _unary(fn: Handler, req_cls: Any, resp_cls: Any) -> grpc.RpcMethodHandler:
    async def call(req: Any, ctx: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await fn(req, ctx)
        except RpcError as err:
            await ctx.abort(err.code, err.details, err.trailing_metadata)

    return grpc.unary_unary_rpc_method_handler(
        call,
        request_deserializer=req_cls.FromString,
        response_serializer=resp_cls.SerializeToString,
    )


def _streaming(fn: Handler, req_cls: Any, resp_cls: Any) -> grpc.RpcMethodHandler:
    async def call(requests: AsyncIterator[Any], ctx: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            async for resp in fn(requests, ctx):
                yield resp
        except RpcError as err:
            await ctx.abort(err.code, err.details, err.trailing_metadata)

    return grpc.stream_stream_rpc_method_handler(
        call,
        request_deserializer=req_cls.FromString,
        response_serializer=resp_cls.SerializeToString,
    )


def generic_handlers(servicer: PubSubServicer) -> tuple[grpc.GenericRpcHandler, ...]:
    s = servicer
    empty = empty_pb2.Empty
    publisher = grpc.method_handlers_generic_handler(
        "google.pubsub.v1.Publisher",
        {
            "CreateTopic": _unary(s.create_topic, Topic, Topic),
            "GetTopic": _unary(s.get_topic, GetTopicRequest, Topic),
            "DeleteTopic": _unary(s.delete_topic, DeleteTopicRequest, empty),
            "ListTopics": _unary(s.list_topics, ListTopicsRequest, ListTopicsResponse),
            "ListTopicSubscriptions": _unary(
                s.list_topic_subscriptions,
                ListTopicSubscriptionsRequest,
                ListTopicSubscriptionsResponse,
            ),
            "Publish": _unary(s.publish, PublishRequest, PublishResponse),
        },
    )
    subscriber = grpc.method_handlers_generic_handler(
        "google.pubsub.v1.Subscriber",
        {
            "CreateSubscription": _unary(s.create_subscription, Subscription, Subscription),
            "GetSubscription": _unary(s.get_subscription, GetSubscriptionRequest, Subscription),
            "DeleteSubscription": _unary(s.delete_subscription, DeleteSubscriptionRequest, empty),
            "ListSubscriptions": _unary(
                s.list_subscriptions, ListSubscriptionsRequest, ListSubscriptionsResponse
            ),
            "Acknowledge": _unary(s.acknowledge, AcknowledgeRequest, empty),
            "ModifyAckDeadline": _unary(s.modify_ack_deadline, ModifyAckDeadlineRequest, empty),
            "Pull": _unary(s.pull, PullRequest, PullResponse),
            "StreamingPull": _streaming(
                s.streaming_pull, StreamingPullRequest, StreamingPullResponse
            ),
        },
    )
    return (publisher, subscriber)


async def start_server(host: str = "127.0.0.1", port: int = 0) -> tuple[grpc.aio.Server, int]:
    """Start a stand-in server in the running event loop; returns (server, bound port)."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE),
            ("grpc.max_send_message_length", MAX_GRPC_MESSAGE),
            ("grpc.so_reuseport", 0),
        ]
    )
    state = PubSubState()
    state.start()
    server.add_generic_rpc_handlers(generic_handlers(PubSubServicer(state)))
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    return server, bound


async def _main(host: str, port: int) -> None:
    server, bound = await start_server(host, port)
    print(f"pubsub stand-in listening on {host}:{bound}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0.5)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Stand-in Pub/Sub gRPC server for tests")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8085)
    args = parser.parse_args(argv)
    asyncio.run(_main(args.host, args.port))


if __name__ == "__main__":
    main()
