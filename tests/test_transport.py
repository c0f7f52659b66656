"""Publishing: results over Pub/Sub's 10 MB limit travel in parts and come back whole; messages
published together go as a few Publish RPCs, and a failed RPC fails each of its callers."""

from __future__ import annotations

import asyncio
import os
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
