"""The worker's Pub/Sub transport: streaming pull bridged into asyncio, and batched publishing.

The official client runs streaming pull and callbacks on its own threads; everything here keeps
those threads short (hand the message to the event loop and return) and never blocks the loop
on a client future.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1
from google.cloud.pubsub_v1.subscriber.message import Message
from google.pubsub_v1.types import PublishRequest, PubsubMessage

from base import logs

if TYPE_CHECKING:
    from google.pubsub_v1 import PublisherClient as PublisherApi

log = logs.get(__name__)

# Pub/Sub's limit is 10 MB per message including attributes, and per Publish request; stay
# well under it.
MAX_PART_BYTES = 9_000_000
MAX_REQUEST_BYTES = 9_500_000
# The generated protobuf classes: building them skips proto-plus's per-field wrapping.
_RawMessage = PubsubMessage.pb()
_RawRequest = PublishRequest.pb()


# ---------------------------------------------------------------------------------------------
# receiving


@dataclass(frozen=True)
class Received:
    """What the service needs of a job message, detached from the client's thread."""

    data: bytes
    attributes: dict[str, str]
    message_id: str
    publish_time: float  # unix seconds
    delivery_attempt: int | None  # None unless the subscription has a dead-letter policy


Handler = Callable[[Received], Coroutine[Any, Any, bool]]  # True: ack, False: nack


class Consumer:
    """Streaming pull bridged into asyncio; resubscribes when the stream dies."""

    def __init__(
        self,
        subscriber: pubsub_v1.SubscriberClient,
        subscription: str,
        handler: Handler,
        flow_control: pubsub_v1.types.FlowControl,
        on_settled: Callable[[bool], None] | None = None,
    ) -> None:
        self._subscriber = subscriber
        self._subscription = subscription
        self._handler = handler
        self._flow = flow_control
        self._on_settled = on_settled
        self._loop: asyncio.AbstractEventLoop | None = None
        self._future: Any = None
        self._stopping = False
        self._closed = False
        # Settled after the stream closed: the client would drop these acks, so they are sent
        # as plain RPCs by `flush_late`. (ack_id, ack?)
        self._late: list[tuple[str, bool]] = []
        self.pending: set[concurrent.futures.Future[bool]] = set()

    async def run(self, stop: asyncio.Event) -> None:
        """Pull until `stop` is set; a failed stream is resubscribed with backoff."""
        self._loop = asyncio.get_running_loop()
        delay = 1.0
        while not stop.is_set():
            self._future = self._subscriber.subscribe(
                self._subscription, self._callback, flow_control=self._flow,
                await_callbacks_on_shutdown=False,
            )  # fmt: skip
            log.info("Pulling jobs", extra={"subscription": self._subscription})
            waiter = asyncio.ensure_future(asyncio.to_thread(self._future.exception))
            stopper = asyncio.ensure_future(stop.wait())
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if stop.is_set():
                stopper.cancel()
                break
            stopper.cancel()
            error = waiter.result()
            log.warning(
                "Streaming pull ended; resubscribing",
                extra={"error": repr(error), "retry_in_seconds": delay},
            )
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except TimeoutError:
                pass
            delay = min(delay * 2, 30.0)
        self._stopping = True

    async def stop_pulling(self, wait: float = 10.0) -> None:
        """Stop receiving; messages the client holds but has not dispatched are nacked by it.

        Close the stream at once rather than keep it open refusing deliveries: every refusal is
        a nack, the server redelivers at once, and a few seconds of that burn through a
        dead-letter policy's attempts, dead-lettering jobs no one ever ran.
        """
        self._stopping = True
        self._closed = True
        if self._future is not None:
            self._future.cancel()
            try:
                await asyncio.wait_for(asyncio.to_thread(self._future.result, wait), wait)
            except Exception:
                pass

    def _callback(self, message: Message) -> None:
        """Runs on the client's callback thread: hand over and return at once."""
        assert self._loop is not None
        if self._stopping:
            message.nack()
            return
        received = Received(
            data=message.data,
            attributes=dict(message.attributes),
            message_id=message.message_id,
            publish_time=message.publish_time.timestamp(),
            delivery_attempt=message.delivery_attempt,
        )
        try:
            fut = asyncio.run_coroutine_threadsafe(self._handler(received), self._loop)
        except RuntimeError:  # the loop is closed: shutting down
            message.nack()
            return
        self.pending.add(fut)
        fut.add_done_callback(lambda f: self._settle(message, f))

    async def flush_late(self) -> None:
        """Ack/nack, by RPC, jobs that finished after the stream closed."""
        late, self._late = self._late, []
        acks = [ack_id for ack_id, ok in late if ok]
        nacks = [ack_id for ack_id, ok in late if not ok]
        try:
            if acks:
                await asyncio.to_thread(
                    self._subscriber.acknowledge,
                    subscription=self._subscription,
                    ack_ids=acks,
                    timeout=5,
                )
            if nacks:
                await asyncio.to_thread(
                    self._subscriber.modify_ack_deadline,
                    subscription=self._subscription,
                    ack_ids=nacks,
                    ack_deadline_seconds=0,
                    timeout=5,
                )
        except Exception as exc:  # their leases expire and Pub/Sub redelivers them: no loss
            log.warning("Could not settle late jobs", extra={"error": repr(exc)})

    def _settle(self, message: Message, fut: concurrent.futures.Future[bool]) -> None:
        self.pending.discard(fut)
        ok = not fut.cancelled() and fut.exception() is None and fut.result()
        if self._closed:
            self._late.append((message.ack_id, bool(ok)))
        elif ok:
            message.ack()
        else:
            message.nack()
        if self._on_settled is not None:
            self._on_settled(bool(ok))


# ---------------------------------------------------------------------------------------------
# publishing


def split(data: bytes, limit: int = MAX_PART_BYTES) -> list[bytes]:
    """A result over Pub/Sub's message limit travels as byte ranges, reassembled in order."""
    return [data[i : i + limit] for i in range(0, len(data), limit)] or [b""]


class Publisher:
    """Publishes from the event loop: messages wait in a per-topic batch for at most
    `max_latency`, then go as one Publish RPC (the generated client's retry and timeout) on one of
    a few threads of its own.

    Why not the client library's `publish`: each batch starts a commit-timer thread from the
    calling thread, and a thread start on the event loop blocks it for about a millisecond while
    the model's streams hold both cores; every message also passes a flow controller, a
    sequencer and a thread future (docs/benchmarks.md, "Pub/Sub"). Here a batch is a list, its
    timer is `call_later`, and the only thread work is the RPC.
    """

    def __init__(
        self,
        api: PublisherApi,
        *,
        max_messages: int = 100,
        max_latency: float = 0.01,
        threads: int = 4,
    ) -> None:
        self._api = api
        self._max_messages = max_messages
        self._max_latency = max_latency
        self._pool = concurrent.futures.ThreadPoolExecutor(threads, "pubsub-publish")
        self._batches: dict[str, _Batch] = {}
        self._sending: set[asyncio.Future[Any]] = set()
        self._closed = False

    @property
    def api(self) -> PublisherApi:
        return self._api

    async def publish(self, topic: str, data: bytes, attributes: dict[str, str]) -> None:
        """Publish (in parts when needed) and return once Pub/Sub has every part."""
        parts = split(data)
        waits = []
        for index, part in enumerate(parts, 1):
            attrs = dict(attributes)
            if len(parts) > 1:
                attrs.update(part=str(index), parts=str(len(parts)))
            waits.append(self._add(topic, part, attrs))
        await asyncio.gather(*waits)

    async def close(self) -> None:
        """Send what waits in batches, wait for every RPC under way, refuse further messages."""
        while self._batches or self._sending:
            for topic in list(self._batches):
                self._send(topic)
            if self._sending:
                await asyncio.wait(set(self._sending))
        self._closed = True
        self._pool.shutdown(wait=False)

    def _add(self, topic: str, data: bytes, attributes: dict[str, str]) -> asyncio.Future[None]:
        if self._closed:
            raise RuntimeError("the publisher is closed")
        loop = asyncio.get_running_loop()
        size = len(data) + sum(len(k) + len(v) + 8 for k, v in attributes.items()) + 16
        batch = self._batches.get(topic)
        if batch is not None and batch.size + size > MAX_REQUEST_BYTES:
            self._send(topic)
            batch = None
        if batch is None:
            batch = _Batch(loop.call_later(self._max_latency, self._send, topic))
            self._batches[topic] = batch
        waiter: asyncio.Future[None] = loop.create_future()
        batch.messages.append(_RawMessage(data=data, attributes=attributes))
        batch.waiters.append(waiter)
        batch.size += size
        if len(batch.messages) >= self._max_messages:
            self._send(topic)
        return waiter

    def _send(self, topic: str) -> None:
        batch = self._batches.pop(topic, None)
        if batch is None:
            return
        batch.timer.cancel()
        request = PublishRequest.wrap(_RawRequest(topic=topic, messages=batch.messages))
        rpc = asyncio.get_running_loop().run_in_executor(self._pool, self._api.publish, request)
        self._sending.add(rpc)
        rpc.add_done_callback(lambda done: self._settle(batch, done))

    def _settle(self, batch: _Batch, rpc: asyncio.Future[Any]) -> None:
        self._sending.discard(rpc)
        error = rpc.exception() if not rpc.cancelled() else asyncio.CancelledError()
        for waiter in batch.waiters:
            if waiter.done():  # its job was cancelled meanwhile
                continue
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)


@dataclass
class _Batch:
    timer: asyncio.TimerHandle
    messages: list[Any] = field(default_factory=list)
    waiters: list[asyncio.Future[None]] = field(default_factory=list)
    size: int = 0


class Reassembler:
    """Joins multi-part results back together (`part`/`parts` attributes), keyed by job_id."""

    def __init__(self) -> None:
        self._parts: dict[str, dict[int, bytes]] = {}

    def add(self, data: bytes, attributes: dict[str, str]) -> bytes | None:
        """The complete result once every part has arrived, else None."""
        parts = int(attributes.get("parts", "1"))
        if parts <= 1:
            return data
        key = attributes.get("job_id", "")
        got = self._parts.setdefault(key, {})
        got[int(attributes["part"])] = data
        if len(got) < parts:
            return None
        del self._parts[key]
        return b"".join(got[i] for i in range(1, parts + 1))


# ---------------------------------------------------------------------------------------------
# resources


def ensure_resources(
    publisher: PublisherApi,
    subscriber: pubsub_v1.SubscriberClient,
    *,
    jobs_topic: str,
    subscription: str,
    results_topic: str,
    dead_letter_topic: str,
    max_delivery_attempts: int,
) -> None:
    """Development switch: create what is missing (production uses Terraform)."""
    for topic in (jobs_topic, results_topic, dead_letter_topic):
        try:
            publisher.create_topic(name=topic)
            log.info("Created topic", extra={"topic": topic})
        except gexc.AlreadyExists:
            pass
    try:
        subscriber.create_subscription(
            request={
                "name": subscription,
                "topic": jobs_topic,
                "ack_deadline_seconds": 60,
                "dead_letter_policy": {
                    "dead_letter_topic": dead_letter_topic,
                    "max_delivery_attempts": max_delivery_attempts,
                },
            }
        )
        log.info("Created subscription", extra={"subscription": subscription})
    except gexc.AlreadyExists:
        pass
