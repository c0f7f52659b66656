"""The worker's Pub/Sub transport: pulling and publishing from the event loop.

Both sides use the generated clients, one RPC per call: the client library's streaming pull and
batching publisher run their work on threads of their own beside the model's (docs/benchmarks.md,
"Pub/Sub"), while here a Pull, an Acknowledge or a Publish is one awaited RPC.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1
from google.pubsub_v1.types import PublishRequest, PubsubMessage, PullResponse

from base import logs
from base.aio import cancel_and_wait

if TYPE_CHECKING:
    from google.pubsub_v1 import PublisherClient as PublisherApi
    from google.pubsub_v1 import SubscriberAsyncClient as SubscriberAsyncApi

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

PULL_TIMEOUT = 30.0  # a long poll: Pub/Sub answers as soon as messages come, or empty by then
LEASE_TICK = 1.0  # how often leases are checked
LEASE_MARGIN = 4.0  # extend a lease this long before Pub/Sub would redeliver its message
MAX_LEASE = 3600.0  # a job still running after this is let go (the client library's default)
SETTLE_DELAY = 0.01  # acks and nacks wait this long to share one RPC
MAX_ACK_IDS = 1000  # per Acknowledge / ModifyAckDeadline request (Pub/Sub allows 2,500)


@dataclass(frozen=True)
class Received:
    """What the service needs of a job message."""

    data: bytes
    attributes: dict[str, str]
    message_id: str
    publish_time: float  # unix seconds
    delivery_attempt: int | None  # None unless the subscription has a dead-letter policy


Handler = Callable[[Received], Coroutine[Any, Any, bool]]  # True: ack, False: nack


@dataclass(eq=False)
class _Lease:
    ack_id: str
    size: int
    expires: float  # loop time at which Pub/Sub would redeliver the message
    received: Received
    until: float  # loop time after which the lease is no longer extended


class Consumer:
    """Unary Pull from the event loop, with flow control, lease extension and batched acks.

    Why not the client library's streaming pull: it runs the stream, the callbacks and the
    leases on threads of its own that share the instance's CPUs with the model, and its flow
    control is a request the server may ignore (the emulator does). Here one long-polling Pull
    at a time asks for at most the free room (`max_messages` leased, `max_bytes` dispatched),
    each message runs as a task on the loop, acks and nacks of ~10 ms go as one RPC, and a
    lease is extended by `lease_seconds` shortly before it would lapse, for at most `max_lease`
    seconds (a job stuck longer is redelivered; docs/benchmarks.md, "Pub/Sub"). Pull errors
    (the service unreachable, restarted) are retried with backoff.
    """

    def __init__(
        self,
        api: SubscriberAsyncApi,
        subscription: str,
        handler: Handler,
        *,
        max_messages: int,
        max_bytes: int = 0,
        lease_seconds: int = 60,
        ack_deadline: int = 10,
        max_lease: float = MAX_LEASE,
        on_error: Callable[[str], None] = lambda rpc: None,
    ) -> None:
        self._api = api
        self._subscription = subscription
        self._handler = handler
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._lease_seconds = lease_seconds
        self._ack_deadline = ack_deadline
        self._max_lease = max_lease
        self._on_error = on_error  # counts a failed RPC: "pull", "ack", "nack" or "modack"
        self._leases: dict[str, _Lease] = {}  # every message leased and not yet settled
        self._held: deque[_Lease] = deque()  # leased, waiting for room under max_bytes
        self._bytes = 0  # of dispatched messages
        self._acks: list[str] = []
        self._nacks: list[str] = []
        self._flush_timer: asyncio.TimerHandle | None = None
        self._room = asyncio.Event()
        self._stopping = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._rpcs: set[asyncio.Task[Any]] = set()
        self._leaser: asyncio.Task[None] | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Pull until `stop` is set."""
        self._leaser = self._leaser or asyncio.create_task(self._extend_leases())
        log.info("Pulling jobs", extra={"subscription": self._subscription})
        delay = 1.0
        while not stop.is_set():
            wanted = self._wanted()
            if wanted == 0:
                self._room.clear()
                await _first(self._room.wait(), stop.wait())
                continue
            pull = asyncio.ensure_future(self._api.pull(
                subscription=self._subscription, max_messages=wanted,
                retry=None, timeout=PULL_TIMEOUT,
            ))  # fmt: skip
            await _first(pull, stop.wait())
            if not pull.done():
                pull.cancel()  # what the server had leased to it comes back after the deadline
                break
            try:
                response = pull.result()
            except gexc.DeadlineExceeded:
                continue
            except (gexc.GoogleAPICallError, gexc.RetryError) as exc:
                self._on_error("pull")
                log.warning(
                    "Pull failed; retrying",
                    extra={"error": repr(exc), "retry_in_seconds": delay},
                )
                await _first(asyncio.sleep(delay), stop.wait())
                delay = min(delay * 2, 10.0)
                continue
            delay = 1.0
            self._accept(PullResponse.pb(response).received_messages)
        self._stopping = True

    async def stop_pulling(self) -> None:
        """Stop receiving: messages held for room are nacked at once; dispatched jobs go on,
        their leases still extended, and are settled as they finish."""
        self._stopping = True
        self._room.set()
        held, self._held = list(self._held), deque()
        for lease in held:
            self._settle(lease, False)

    async def close(self) -> None:
        """Send the acks and nacks still waiting (within 5 s), stop extending leases, close the
        client's channel (the Consumer owns `api`)."""
        await self.stop_pulling()
        self._flush()
        if self._rpcs:
            await asyncio.wait(set(self._rpcs), timeout=5.0)
        await cancel_and_wait(self._leaser)
        await self._api.transport.close()

    # --- receiving --------------------------------------------------------------------------

    def _wanted(self) -> int:
        """How many messages to ask for: none until a quarter of the room is free, so a busy
        instance sends a few large Pulls rather than one per finished job."""
        room = self._max_messages - len(self._leases)
        if room < max(1, self._max_messages // 4) or self._held:
            return 0
        return min(room, 1000)

    def _accept(self, messages: Any) -> None:
        now = asyncio.get_running_loop().time()
        for received in messages:
            m = received.message
            lease = _Lease(
                ack_id=received.ack_id,
                size=m.ByteSize(),
                expires=now + self._ack_deadline,
                until=now + self._max_lease,
                received=Received(
                    data=m.data,
                    attributes=dict(m.attributes),
                    message_id=m.message_id,
                    publish_time=m.publish_time.seconds + m.publish_time.nanos * 1e-9,
                    delivery_attempt=received.delivery_attempt or None,
                ),
            )
            self._leases[lease.ack_id] = lease
            self._held.append(lease)
        self._dispatch()

    def _dispatch(self) -> None:
        """Start held messages while the dispatched bytes stay under `max_bytes` (one message
        always runs, however large)."""
        while self._held:
            lease = self._held[0]
            if self._stopping:
                self._held.popleft()
                self._settle(lease, False)
                continue
            if self._max_bytes and self._bytes and self._bytes + lease.size > self._max_bytes:
                return
            self._held.popleft()
            self._bytes += lease.size
            task = asyncio.create_task(self._run(lease))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, lease: _Lease) -> None:
        ok = False
        try:
            ok = await self._handler(lease.received)
        except Exception:
            log.exception(
                "Job handler failed; nacking", extra={"message_id": lease.received.message_id}
            )
        finally:  # also when cancelled (a drain that ran out of time): nacked, redelivered
            self._bytes -= lease.size
            self._settle(lease, ok)
            self._dispatch()

    # --- settling ---------------------------------------------------------------------------

    def _settle(self, lease: _Lease, ok: bool) -> None:
        if self._leases.pop(lease.ack_id, None) is None:
            return
        (self._acks if ok else self._nacks).append(lease.ack_id)
        if len(self._acks) + len(self._nacks) >= MAX_ACK_IDS:
            self._flush()
        elif self._flush_timer is None:
            self._flush_timer = asyncio.get_running_loop().call_later(SETTLE_DELAY, self._flush)
        if not self._room.is_set() and self._wanted():
            self._room.set()

    def _flush(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        acks, self._acks = self._acks, []
        nacks, self._nacks = self._nacks, []
        if acks:
            self._call("ack", self._api.acknowledge(
                subscription=self._subscription, ack_ids=acks, retry=None, timeout=10,
            ))  # fmt: skip
        if nacks:
            self._modack(nacks, 0, "nack")

    def _modack(self, ack_ids: list[str], seconds: int, what: str) -> None:
        self._call(what, self._api.modify_ack_deadline(
            subscription=self._subscription, ack_ids=ack_ids, ack_deadline_seconds=seconds,
            retry=None, timeout=10,
        ))  # fmt: skip

    def _call(self, what: str, rpc: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(rpc)
        self._rpcs.add(task)
        task.add_done_callback(lambda done: self._rpc_done(what, done))

    def _rpc_done(self, what: str, task: asyncio.Future[Any]) -> None:
        self._rpcs.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        # The messages' leases lapse and Pub/Sub redelivers them: a duplicate, not a loss.
        self._on_error(what)
        log.warning("Pub/Sub RPC failed", extra={"rpc": what, "error": repr(task.exception())})

    async def _extend_leases(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(LEASE_TICK)
            now = loop.time()
            due = [
                lease
                for lease in self._leases.values()
                if lease.expires - now < LEASE_MARGIN and now < lease.until
            ]
            for lease in due:
                lease.expires = now + self._lease_seconds
            for n in range(0, len(due), MAX_ACK_IDS):
                ids = [lease.ack_id for lease in due[n : n + MAX_ACK_IDS]]
                self._modack(ids, self._lease_seconds, "modack")


async def _first(*waits: Awaitable[Any]) -> None:
    """Wait until the first of `waits` is done; cancel the rest that this call created."""
    futures = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(futures, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for future, wait in zip(futures, waits, strict=True):
            if future is not wait and not future.done():
                future.cancel()


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
