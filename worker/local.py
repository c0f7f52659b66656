"""`tabular-worker run`: job lines in, result lines out, through the same pipeline as `serve`.

No cloud needed: this is the embedded default and what `make demo` runs.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from typing import BinaryIO

import aiofiles

from base import logs
from worker.classify import LlmClassifier
from worker.modelstore import load_embedding_model
from worker.pipeline import Pipeline
from worker.settings import WorkerSettings

log = logs.get(__name__)


async def run(settings: WorkerSettings, input_path: str, output: BinaryIO, concurrency: int) -> int:
    """Process every job line; returns the number of error results."""
    model = await load_embedding_model(settings)
    llm = (
        LlmClassifier(settings.ollama_host, settings.llm_model, settings.llm_timeout_seconds)
        if settings.llm_enabled
        else None
    )
    pipeline = Pipeline(settings, model, llm=llm)
    slots = asyncio.Semaphore(concurrency)
    tasks: set[asyncio.Task[None]] = set()
    counts = {"done": 0, "errors": 0}
    progress = _Progress()

    async def one(line: bytes) -> None:
        try:
            outcome = await pipeline.handle(line)
            output.write(outcome.data() + b"\n")
            output.flush()
            counts["done"] += 1
            counts["errors"] += outcome.status != "ok"
            progress.update(counts["done"])
        finally:
            slots.release()

    try:
        async for line in _lines(input_path):
            await slots.acquire()
            task = asyncio.create_task(one(line))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)
    finally:
        await pipeline.close()
    progress.finish(counts["done"])
    log.info("Run finished", extra={"jobs": counts["done"], "errors": counts["errors"]})
    return counts["errors"]


async def _lines(path: str) -> AsyncIterator[bytes]:
    """Non-blank lines of the input; a job line that is not JSON still becomes a job."""
    if path == "-":
        while line := await asyncio.to_thread(sys.stdin.buffer.readline):
            if line.strip():
                yield line.rstrip(b"\r\n")
        return
    async with aiofiles.open(path, "rb") as fh:
        async for line in fh:
            if line.strip():
                yield line.rstrip(b"\r\n")


class _Progress:
    """Progress is a log event every few seconds; a bar only when a person watches stderr."""

    def __init__(self, every: float = 5.0) -> None:
        self._tty = sys.stderr.isatty()
        self._every = every
        self._last = time.monotonic()
        self._started = self._last

    def update(self, done: int) -> None:
        now = time.monotonic()
        if self._tty:
            rate = done / max(now - self._started, 1e-9)
            sys.stderr.write(f"\r{done} jobs done ({rate:.1f}/s)")
            sys.stderr.flush()
        elif now - self._last >= self._every:
            self._last = now
            log.info("Progress", extra={"jobs_done": done})

    def finish(self, done: int) -> None:
        if self._tty and done:
            sys.stderr.write("\n")
