"""Results over Pub/Sub's 10 MB limit travel in parts and come back whole."""

from __future__ import annotations

import os

import pytest

from base import pubsub as names
from harness.pubsub import PubSubEnv
from worker import transport


async def test_large_result_split_and_reassembled(
    pubsub: PubSubEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in pubsub.env().items():
        monkeypatch.setenv(key, value)
    data = os.urandom(6_000_000).hex().encode()  # 12 MB: over the 10 MB message limit
    publisher = names.publisher_client()
    await transport.publish(publisher, pubsub.results_topic, data, {"job_id": "huge"})
    publisher.stop()
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
