"""Micro-batching: rows from many concurrent jobs share one `encode` call.

Batching is worth ~3x on this CPU for one-row jobs (raw encode: ~80 rows/s at batch 1, ~250 at
batch 32). The batcher knows nothing of models: it is handed a blocking `encode` function and runs
it in model threads so the event loop keeps receiving jobs while the model works.

- **Streams.** Up to `streams` encode calls run at once, each in its own model thread (an ONNX
  session and a torch model both run concurrent calls safely). By default one single-threaded
  stream per CPU with calls of 32 rows: a call takes about what one 64-row call on every core
  took, but a pass split over both cores waits for its slower thread at every layer, so a core
  taken for a moment by the Pub/Sub client or the event loop stalled both; independent streams
  lose only what was taken (torch 1.13x, ONNX about equal alone, both steadier under load:
  docs/benchmarks.md, "Pub/Sub").
- **Fairness.** A batch takes rows from jobs that have not started first (in arrival order), then
  from started jobs in turn (round robin), so a 1-row job waits for the batches already running,
  not behind every row of a 10,000-row job; and new jobs go out in a batch of their own, not
  topped up with a started job's rows, so that batch is quick too. A batch of new jobs alone
  gives the started jobs the front of the next batch, so a stream of small jobs cannot starve a
  large one (measured in bench/pubsub.py: docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from base.aio import cancel_and_wait
from worker.utilisation import BusyMeter

_T = TypeVar("_T")
Vectors = npt.NDArray[np.float32]
# encode(texts) -> (vectors [n, dims], token counts [n]) ; blocking, run in the model thread.
EncodeFn = Callable[[list[str]], tuple[Vectors, npt.NDArray[np.int64]]]
BatchObserver = Callable[[int, int], None]


def estimate_tokens(text: str) -> int:
    """Cheap upper-bound-ish estimate for batch limits (WordPiece averages ~4 chars a token)."""
    return len(text) // 4 + 2


@dataclass
class _Request:
    texts: list[str]
    future: asyncio.Future[tuple[Vectors, npt.NDArray[np.int64]]]
    encode: EncodeFn
    next_row: int = 0  # first row not yet handed to a batch
    parts: list[tuple[int, Vectors, npt.NDArray[np.int64]]] = field(default_factory=list)
    done_rows: int = 0


class Batcher:
    def __init__(
        self,
        *,
        max_rows: int = 64,
        max_tokens: int = 16_384,
        max_wait: float = 0.005,
        max_tokens_per_row: int = 512,
        observe: BatchObserver | None = None,
        meter: BusyMeter | None = None,
        streams: int = 1,
    ) -> None:
        if streams < 1:
            raise ValueError("streams must be >= 1")
        self.max_rows = max_rows
        self.max_tokens = max_tokens
        self.max_wait = max_wait
        self.max_tokens_per_row = max_tokens_per_row
        self._observe = observe
        self.meter = meter  # times everything the model threads run (utilisation)
        self.streams = streams
        self._queue: deque[_Request] = deque()
        self._wakeup = asyncio.Event()
        self._executor = concurrent.futures.ThreadPoolExecutor(streams, thread_name_prefix="model")
        self._slots: asyncio.Semaphore | None = None  # one per stream, made on the loop
        self._running: set[asyncio.Task[None]] = set()
        self._started_first = False  # the last batch held new jobs only: started jobs go first
        self._task: asyncio.Task[None] | None = None
        self.batches: list[int] = []  # sizes of recent encode calls (tests, debugging)

    async def encode(
        self, texts: Sequence[str], encode: EncodeFn
    ) -> tuple[Vectors, npt.NDArray[np.int64]]:
        """Vectors and token counts for `texts`, in order, computed with `encode`.

        `encode` travels with the request so a hot reload can switch models between batches:
        rows queued before the switch finish on the model they were queued for.
        """
        loop = asyncio.get_running_loop()
        if not texts:
            return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run(), name="batcher")
        request = _Request(list(texts), loop.create_future(), encode)
        self._queue.append(request)
        self._wakeup.set()
        return await request.future

    async def run_in_model_thread(self, fn: Callable[[], _T]) -> _T:
        """CPU work besides encode (a few-shot fit) takes a stream's turn, so it is metered and
        never oversubscribes the cores."""
        async with self._semaphore():
            return await self._submit(fn)

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        for task in list(self._running):
            await cancel_and_wait(task)
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _semaphore(self) -> asyncio.Semaphore:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.streams)
        return self._slots

    def _submit(self, fn: Callable[[], _T]) -> asyncio.Future[_T]:
        """Start `fn` in a model thread now (not when a task first runs), metered."""
        meter = self.meter
        if meter is None:
            return asyncio.get_running_loop().run_in_executor(self._executor, fn)

        def timed() -> _T:
            meter.begin()
            try:
                return fn()
            finally:
                meter.end()

        return asyncio.get_running_loop().run_in_executor(self._executor, timed)

    # -----------------------------------------------------------------------------------------

    async def _run(self) -> None:
        slots = self._semaphore()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                await slots.acquire()  # a free stream first: rows arriving meanwhile join
                await self._fill()
                batch = self._take_batch()
                if not batch:
                    slots.release()
                    continue
                texts = [t for request, a, b in batch for t in request.texts[a:b]]
                encode = batch[0][0].encode
                call = self._submit(functools.partial(encode, texts))  # the stream starts now
                task = asyncio.get_running_loop().create_task(self._finish(batch, texts, call))
                self._running.add(task)
                task.add_done_callback(self._running.discard)

    async def _finish(
        self,
        batch: list[tuple[_Request, int, int]],
        texts: list[str],
        call: asyncio.Future[tuple[Vectors, npt.NDArray[np.int64]]],
    ) -> None:
        """Hand a call's vectors to its jobs. The stream is freed first, so the next call starts
        before the jobs' results are built and published, not after (a call of 1-row jobs wakes
        as many jobs as it has rows)."""
        freed = False
        try:
            try:
                vectors, counts = await call
            except Exception as exc:
                await self._isolate(batch, exc)  # on the same stream
                return
            self._semaphore().release()
            freed = True
            self._deliver_batch(batch, texts, vectors, counts)
        finally:
            if not freed:
                self._semaphore().release()

    async def _isolate(self, batch: list[tuple[_Request, int, int]], exc: Exception) -> None:
        """Each job's rows again on their own, so one bad job cannot fail the jobs it happened
        to share a call with."""
        if len(batch) == 1:
            self._fail(batch[0][0], exc)
            return
        for request, a, b in batch:
            texts = request.texts[a:b]
            try:
                vectors, counts = await self._submit(functools.partial(request.encode, texts))
            except Exception as one:
                self._fail(request, one)
                continue
            self._deliver_batch([(request, a, b)], texts, vectors, counts)

    async def _fill(self) -> None:
        """Wait up to max_wait for a partial batch to fill, never longer."""
        deadline = time.monotonic() + self.max_wait
        while self._pending_rows() < self.max_rows:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return

    def _pending_rows(self) -> int:
        return sum(len(r.texts) - r.next_row for r in self._queue if not r.future.done())

    def _take_batch(self) -> list[tuple[_Request, int, int]]:
        """Slices (request, start, stop) up to the row and token limits, fairly (module doc).

        Only requests sharing the first candidate's encode function go into one batch.
        """
        self._queue = deque(r for r in self._queue if not r.future.done())  # drop cancelled
        new = [r for r in self._queue if r.next_row == 0]
        started = [r for r in self._queue if r.next_row > 0]
        if not self._queue:
            return []
        express = bool(new) and not self._started_first
        order = new + started if express else started + new
        encode = order[0].encode
        batch: list[tuple[_Request, int, int]] = []
        rows = tokens = 0
        for request in order:
            if request.encode != encode:
                continue
            if express and request.next_row > 0:
                break  # new jobs go out on their own: a 1-row job waits for one batch, not two
            start = stop = request.next_row
            while stop < len(request.texts) and rows < self.max_rows:
                cost = min(estimate_tokens(request.texts[stop]), self.max_tokens_per_row)
                if rows and tokens + cost > self.max_tokens:
                    break
                rows, tokens, stop = rows + 1, tokens + cost, stop + 1
            if stop > start:
                batch.append((request, start, stop))
                request.next_row = stop
                self._queue.remove(request)
                if stop < len(request.texts):
                    self._queue.append(request)  # round robin: to the back of the line
            if rows >= self.max_rows or (rows and tokens >= self.max_tokens):
                break
        self._started_first = bool(started) and all(start == 0 for _, start, _ in batch)
        return batch

    def _deliver_batch(
        self,
        batch: list[tuple[_Request, int, int]],
        texts: list[str],
        vectors: Vectors,
        counts: npt.NDArray[np.int64],
    ) -> None:
        self.batches.append(len(texts))
        del self.batches[:-1000]
        if self._observe is not None:
            self._observe(len(texts), int(counts.sum()))
        offset = 0
        for request, a, b in batch:
            n = b - a
            self._deliver(request, a, vectors[offset : offset + n], counts[offset : offset + n])
            offset += n

    def _deliver(
        self, request: _Request, start: int, vectors: Vectors, counts: npt.NDArray[np.int64]
    ) -> None:
        if request.future.done():
            return
        request.parts.append((start, vectors, counts))
        request.done_rows += len(vectors)
        if request.done_rows == len(request.texts):
            request.parts.sort(key=lambda p: p[0])
            request.future.set_result(
                (
                    np.concatenate([p[1] for p in request.parts]),
                    np.concatenate([p[2] for p in request.parts]),
                )
            )

    def _fail(self, request: _Request, exc: Exception) -> None:
        if not request.future.done():
            request.future.set_exception(ModelError(f"the model could not encode: {exc}"))
        if request in self._queue:
            self._queue.remove(request)


class ModelError(RuntimeError):
    """Encoding failed; raised to the job(s) whose rows were in the failed call."""
