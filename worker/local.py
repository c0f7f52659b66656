"""`tabular-worker run`: job lines in, result lines out, through the same pipeline as `serve`.

No cloud needed: this is the embedded default and what `make demo` runs. Results are JSON lines
(`--format jsonl`, the machine format) or a readable summary (`--format summary`, see
`worker.summary`); progress (jobs and rows done, rows/s) goes to stderr.
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
from worker.results import Outcome
from worker.settings import WorkerSettings
from worker.summary import summary

log = logs.get(__name__)


async def run(
    settings: WorkerSettings,
    input_path: str,
    output: BinaryIO,
    concurrency: int,
    fmt: str = "jsonl",
) -> int:
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
    counts = {"done": 0, "errors": 0, "rows": 0}
    progress = _Progress()

    async def one(line: bytes) -> None:
        try:
            outcome = await pipeline.handle(line)
            progress.clear()
            output.write(_render(outcome, fmt))
            output.flush()
            counts["done"] += 1
            counts["errors"] += outcome.status != "ok"
            counts["rows"] += outcome.rows if outcome.status == "ok" else 0
            progress.update(counts["done"], counts["rows"])
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
    log.info("Run finished", extra={"jobs": counts["done"], "errors": counts["errors"],
                                    "rows": counts["rows"]})  # fmt: skip
    return counts["errors"]


def _render(outcome: Outcome, fmt: str) -> bytes:
    return summary(outcome.result).encode() if fmt == "summary" else outcome.data() + b"\n"


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
    """Jobs and rows done, and rows/s: a line on stderr when a person watches it, else a log
    event every few seconds."""

    def __init__(self, every: float = 5.0) -> None:
        self._tty = sys.stderr.isatty()
        self._every = every
        self._last = time.monotonic()
        self._started = self._last
        self._shown = False

    def update(self, done: int, rows: int) -> None:
        now = time.monotonic()
        rate = rows / max(now - self._started, 1e-9)
        if self._tty:
            sys.stderr.write(f"\r{done} jobs, {rows} rows done ({rate:.1f} rows/s)\033[K")
            sys.stderr.flush()
            self._shown = True
        elif now - self._last >= self._every:
            self._last = now
            log.info("Progress", extra={"jobs_done": done, "rows_done": rows,
                                        "rows_per_second": round(rate, 1)})  # fmt: skip

    def clear(self) -> None:
        """Erase the progress line before a result is written to the same terminal."""
        if self._shown:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
            self._shown = False

    def finish(self, done: int) -> None:
        if self._tty and done:
            sys.stderr.write("\n")
