"""worker.model: how many encode streams run and on how many threads each."""

from __future__ import annotations

import pytest

from worker import model
from worker.model import Tuning


@pytest.mark.parametrize(
    ("quota", "tuning", "streams", "threads"),
    [
        (2, Tuning(), 2, 1),  # default: one single-threaded stream per CPU
        (4, Tuning(), 4, 1),
        (1, Tuning(), 1, 1),
        (4, Tuning(streams=1), 1, 4),  # one stream takes every core
        (4, Tuning(streams=2), 2, 2),
        (2, Tuning(streams=3), 3, 1),  # more streams than CPUs: still one thread each
        (4, Tuning(threads=3), 4, 3),  # explicit threads win
    ],
)
def test_streams_and_threads_follow_the_cpu_quota(
    monkeypatch: pytest.MonkeyPatch, quota: int, tuning: Tuning, streams: int, threads: int
) -> None:
    monkeypatch.setattr(model, "cpu_quota", lambda: quota)
    resolved = tuning.resolved()
    assert (resolved.streams, resolved.threads) == (streams, threads)
