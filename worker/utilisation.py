"""How busy the model threads were over the last window: the worker's utilisation figure.

The batcher runs every encode call in one of its model threads (one per stream), so the share of
the streams' wall time spent working is the instance's utilisation. With a backlog on the
subscription, a share near 1 means the instance is saturated and more instances would drain it
faster; a share well below 1 means something else holds the worker back (flow control, a slow
publish, Pub/Sub itself), and more instances of the same would not help as much.
`tabular_model_busy_ratio` exports the share, `tabular_model_busy_seconds_total` the running
total (docs/scaling.md, docs/observability.md).

Intervals are kept for one window and clipped to it when read; a call still running counts up to
now, so one long encode (bge-m3 on a large batch) shows as busy while it runs.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable


class BusyMeter:
    """Busy intervals of `threads` threads over a sliding window. Thread-safe."""

    def __init__(
        self,
        window_seconds: float = 60.0,
        on_busy: Callable[[float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        threads: int = 1,
    ) -> None:
        if window_seconds <= 0 or threads < 1:
            raise ValueError("window_seconds and threads must be positive")
        self.window = window_seconds
        self.threads = threads
        self._on_busy = on_busy
        self._clock = clock
        self._lock = threading.Lock()
        self._done: deque[tuple[float, float]] = deque()  # finished (start, end), oldest first
        self._running: dict[int, float] = {}  # thread ident -> when its call started
        self._started_at = clock()

    def begin(self) -> None:
        """The calling thread starts working."""
        with self._lock:
            self._running[threading.get_ident()] = self._clock()

    def end(self) -> None:
        """The calling thread stops working."""
        with self._lock:
            start = self._running.pop(threading.get_ident(), None)
            if start is None:
                return
            now = self._clock()
            self._done.append((start, now))
            self._forget(now)
        if self._on_busy is not None:
            self._on_busy((now - start) / self.threads)  # a share of the instance, like share()

    def share(self) -> float:
        """Busy share of the threads' time over the last window (or since start, if younger)."""
        with self._lock:
            now = self._clock()
            self._forget(now)
            since = max(now - self.window, self._started_at)
            span = now - since
            if span <= 0:
                return 0.0
            busy = sum(min(end, now) - max(start, since) for start, end in self._done)
            busy += sum(now - max(start, since) for start in self._running.values())
            return min(1.0, max(0.0, busy / (span * self.threads)))

    def _forget(self, now: float) -> None:
        while self._done and self._done[0][1] <= now - self.window:
            self._done.popleft()
