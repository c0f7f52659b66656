"""Pulling: at most the flow-control limits leased and dispatched, leases held past the ack
deadline, a nack or a failed handler redelivered at once, held messages given back on stop.
Publishing: results over Pub/Sub's 10 MB limit travel in parts and come back whole; messages
published together go as a few Publish RPCs, and a failed RPC fails each of its callers."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import pytest
from google.api_core import exceptions as gexc

from base import pubsub as names
from harness.pubsub import PubSubEnv
from worker import transport


async def test_large_result_split_and_reassembled(
    pubsub: PubSubEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in pubsub.env().items():
        monkeypatch.setenv(key, value)
    data = os.urandom(6_000_000).hex().encode()  # 12 MB: over the 10 MB message limit
    publisher = transport.Publisher(names.publisher_api())
    await publisher.publish(pubsub.results_topic, data, {"job_id": "huge"})
    await publisher.close()
    messages = pubsub.pull_results(2, timeout=60)
    assert sorted(m.message.attributes["part"] for m in messages) == ["1", "2"]
    assert {m.message.attributes["parts"] for m in messages} == {"2"}
    parts = transport.Reassembler()
    whole = [parts.add(m.message.data, dict(m.message.attributes)) for m in messages]
    assert [w for w in whole if w is not None] == [data]


def test_small_result_is_one_message() -> None:
    assert transport.split(b"abc") == [b"abc"]
    assert transport.Reassembler().add(b"abc", {"job_id": "x"}) == b"abc"


def test_short_ids_need_a_project() -> None:
    assert names.full_name("topics", "t1", "p") == "projects/p/topics/t1"
    assert names.full_name("topics", "projects/q/topics/t", "") == "projects/q/topics/t"
    with pytest.raises(ValueError, match="GOOGLE_CLOUD_PROJECT"):
        names.full_name("subscriptions", "s1", "")


class _Counted:
    """The generated client, counting its Publish RPCs (the real RPCs still run)."""

    def __init__(self, api: Any) -> None:
        self.api = api
        self.requests: list[int] = []

    def publish(self, request: Any) -> Any:
        self.requests.append(len(request.messages))
        return self.api.publish(request)


async def test_messages_published_together_share_rpcs(
    pubsub: PubSubEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in pubsub.env().items():
        monkeypatch.setenv(key, value)
    counted = _Counted(names.publisher_api())
    publisher = transport.Publisher(counted, max_messages=100)
    sent = [f"row {n}".encode() for n in range(250)]
    await asyncio.gather(*(
        publisher.publish(pubsub.results_topic, data, {"job_id": str(n)})
        for n, data in enumerate(sent)
    ))  # fmt: skip
    late = asyncio.ensure_future(publisher.publish(pubsub.results_topic, b"last", {"job_id": "z"}))
    await asyncio.sleep(0)  # `late` waits in a batch now
    await publisher.close()  # sends the batch its timer has not sent yet
    await late
    with pytest.raises(RuntimeError, match="closed"):
        await publisher.publish(pubsub.results_topic, b"after", {})
    assert sorted(counted.requests) == [1, 50, 100, 100]
    got = pubsub.pull_results(251, timeout=60)
    assert sorted(m.message.data for m in got) == sorted([*sent, b"last"])
    assert {m.message.attributes["job_id"] for m in got} == {*map(str, range(250)), "z"}


async def test_a_failed_rpc_fails_every_message_in_it(
    pubsub: PubSubEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in pubsub.env().items():
        monkeypatch.setenv(key, value)
    publisher = transport.Publisher(names.publisher_api())
    missing = pubsub.server.topic_path("no-such-topic")
    calls = [publisher.publish(missing, b"x", {"job_id": str(n)}) for n in range(3)]
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert [type(o) for o in outcomes] == [gexc.NotFound] * 3
    await publisher.publish(pubsub.results_topic, b"ok", {"job_id": "ok"})  # still publishes
    await publisher.close()
    assert [m.message.data for m in pubsub.pull_results(1)] == [b"ok"]


# --- pulling ---------------------------------------------------------------------------------


class _Jobs:
    """A handler that counts deliveries and how many run at once."""

    def __init__(self, expected: int, seconds: float = 0.2) -> None:
        self.expected = expected
        self.seconds = seconds
        self.running = 0
        self.most = 0
        self.deliveries: list[tuple[bytes, float]] = []
        self.done = asyncio.Event()
        self.acked: set[bytes] = set()

    async def __call__(self, msg: transport.Received) -> bool:
        self.running += 1
        self.most = max(self.most, self.running)
        self.deliveries.append((msg.data, time.monotonic()))
        try:
            ok = await self.answer(msg)
        finally:
            self.running -= 1
        if ok:
            self.acked.add(msg.data)
            if len(self.acked) >= self.expected:
                self.done.set()
        return ok

    async def answer(self, msg: transport.Received) -> bool:
        await asyncio.sleep(self.seconds)
        return True


async def _consume(
    pubsub: PubSubEnv,
    handler: transport.Handler,
    until: asyncio.Event,
    subscription: str = "",
    **limits: Any,
) -> transport.Consumer:
    """Run a Consumer on the jobs subscription (or `subscription`) until `until` is set; stop
    and close it."""
    consumer = transport.Consumer(
        names.subscriber_async_api(), subscription or pubsub.jobs_subscription, handler,
        ack_deadline=pubsub.ack_deadline, **limits,
    )  # fmt: skip
    stop = asyncio.Event()
    running = asyncio.create_task(consumer.run(stop))
    try:
        await asyncio.wait_for(until.wait(), 60)
    finally:
        stop.set()
        await running
        await consumer.close()
    return consumer


@pytest.fixture
def emulated(pubsub: PubSubEnv, monkeypatch: pytest.MonkeyPatch) -> PubSubEnv:
    for key, value in pubsub.env().items():
        monkeypatch.setenv(key, value)
    return pubsub


async def test_at_most_max_messages_run_and_every_one_is_acked(emulated: PubSubEnv) -> None:
    sent = [f"job {n}".encode() for n in range(12)]
    for data in sent:
        emulated.publish_job(data)
    jobs = _Jobs(len(sent))
    await _consume(emulated, jobs, jobs.done, max_messages=4)
    assert sorted(data for data, _ in jobs.deliveries) == sorted(sent)
    assert jobs.most == 4
    # Acked means gone: nothing comes back once the leases would have lapsed.
    wait = emulated.ack_deadline + 1.0
    assert await asyncio.to_thread(emulated.drain, emulated.jobs_subscription, wait) == []


async def test_max_bytes_bounds_what_runs_at_once(emulated: PubSubEnv) -> None:
    sent = [bytes([65 + n]) * 1000 for n in range(6)]
    for data in sent:
        emulated.publish_job(data)
    jobs = _Jobs(len(sent))
    await _consume(emulated, jobs, jobs.done, max_messages=8, max_bytes=2500)
    assert sorted(data for data, _ in jobs.deliveries) == sorted(sent)
    assert jobs.most == 2  # ~1 KB each: a third would pass 2,500 bytes


async def test_a_job_longer_than_the_ack_deadline_keeps_its_lease(emulated: PubSubEnv) -> None:
    emulated.publish_job(b"long")
    jobs = _Jobs(1, seconds=emulated.ack_deadline + 3.0)
    await _consume(emulated, jobs, jobs.done, max_messages=4, lease_seconds=10)
    assert [data for data, _ in jobs.deliveries] == [b"long"]  # never redelivered meanwhile


async def test_a_lease_is_not_extended_past_max_lease(emulated: PubSubEnv) -> None:
    emulated.publish_job(b"stuck")
    redelivered = asyncio.Event()

    class Stuck(_Jobs):
        async def answer(self, msg: transport.Received) -> bool:
            if len(self.deliveries) == 1:  # stuck until Pub/Sub hands the job out again
                await asyncio.wait_for(redelivered.wait(), emulated.ack_deadline + 20)
            redelivered.set()
            return True

    jobs = Stuck(1)
    await _consume(emulated, jobs, jobs.done, max_messages=4, lease_seconds=10, max_lease=1.0)
    (first, at_first), (again, at_again) = jobs.deliveries
    assert first == again == b"stuck"
    # Back once the ack deadline lapsed, not extended (nor nacked by the first one giving up).
    assert at_again - at_first < emulated.ack_deadline + 5


async def test_a_nack_or_a_failed_handler_is_redelivered_at_once(emulated: PubSubEnv) -> None:
    emulated.publish_job(b"nack")
    emulated.publish_job(b"raise")
    seen: set[bytes] = set()

    class FirstTimeFails(_Jobs):
        async def answer(self, msg: transport.Received) -> bool:
            first = msg.data not in seen
            seen.add(msg.data)
            if first and msg.data == b"raise":
                raise RuntimeError("a bug in the handler")
            return not first

    jobs = FirstTimeFails(2)
    await _consume(emulated, jobs, jobs.done, max_messages=4)
    times: dict[bytes, list[float]] = {}
    for data, at in jobs.deliveries:
        times.setdefault(data, []).append(at)
    assert sorted(times) == [b"nack", b"raise"]
    for data, (first, second) in times.items():  # long before the ack deadline would lapse
        assert second - first < emulated.ack_deadline / 2, data


async def test_stop_gives_back_what_was_held_and_finishes_what_runs(emulated: PubSubEnv) -> None:
    for data in (b"a" * 1000, b"b" * 1000, b"c" * 1000):
        emulated.publish_job(data)
    release = asyncio.Event()
    started = asyncio.Event()

    class Blocking(_Jobs):
        async def answer(self, msg: transport.Received) -> bool:
            started.set()
            await release.wait()
            return True

    jobs = Blocking(1)
    consumer = transport.Consumer(
        names.subscriber_async_api(), emulated.jobs_subscription, jobs,
        max_messages=8, max_bytes=1500, ack_deadline=emulated.ack_deadline,
    )  # fmt: skip
    stop = asyncio.Event()
    running = asyncio.create_task(consumer.run(stop))
    await asyncio.wait_for(started.wait(), 30)
    await asyncio.sleep(0.5)  # the other two arrive and wait for room under max_bytes
    stop.set()
    await running
    await consumer.stop_pulling()
    # The two held messages were nacked: back well before their leases would lapse.
    back = await asyncio.to_thread(emulated.drain, emulated.jobs_subscription, 3.0)
    assert len(back) == 2
    assert len(jobs.deliveries) == 1
    release.set()  # the running job finishes after the stop and is still acked
    await asyncio.wait_for(jobs.done.wait(), 10)
    await consumer.close()
    wait = emulated.ack_deadline + 1.0
    assert await asyncio.to_thread(emulated.drain, emulated.jobs_subscription, wait) == []


async def test_a_failing_pull_is_counted_and_retried(emulated: PubSubEnv) -> None:
    errors: list[str] = []
    retried = asyncio.Event()

    def count(rpc: str) -> None:
        errors.append(rpc)
        if len(errors) >= 2:  # the first failure, then its retry's
            retried.set()

    missing = emulated.jobs_subscription + "-missing"
    await _consume(emulated, _Jobs(1), retried, missing, max_messages=4, on_error=count)
    assert errors[:2] == ["pull", "pull"]
