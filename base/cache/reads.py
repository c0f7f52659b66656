"""Reading the cache so that every read ends, in bounded time and memory, with bytes or a reason.

The cache is shared storage (GCS FUSE in production), and a reader must survive whatever is
found there: a `.done` that is a FIFO would block `open` forever, one that is a symlink to
`/dev/zero` never reaches end-of-file, and a read on a FUSE mount can hang in the kernel. So every
file is opened non-blocking and must be a regular file, small files are read up to a size
bound, and every read runs on a daemon thread watched by a deadline: the caller gets `Stalled`
when no byte arrived for `timeout` seconds. A thread stuck in the kernel cannot be killed; it is
left behind (daemon, so the process can still exit) and the caller goes on with a verdict.
"""

from __future__ import annotations

import os
import queue
import stat
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

_T = TypeVar("_T")

#: Default deadline for one cache read to make progress (TABULAR_CACHE_READ_TIMEOUT_SECONDS).
READ_TIMEOUT = 30.0
_BLOCK = 1 << 20


class Stalled(TimeoutError):
    """No byte of the cache arrived within the deadline (a hung FUSE read, a dead mount)."""


class NotRegularFile(OSError):
    """A cache file that is a FIFO, a device, a directory...: never read."""


class TooLarge(OSError):
    """A cache file over the size its kind may have (a manifest of gigabytes is not one)."""


def open_regular(path: Path) -> int:
    """A read-only descriptor of `path`, which must be a regular file (opening never blocks)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(f"{path.name} is not a regular file ({_kind(mode)})")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_small(path: Path, max_bytes: int, timeout: float = READ_TIMEOUT) -> bytes:
    """The whole of a small cache file (marker, manifest, status, lock), bounded and watched."""

    def read() -> bytes:
        fd = open_regular(path)
        try:
            if os.fstat(fd).st_size > max_bytes:
                raise TooLarge(f"{path.name} is over {max_bytes} bytes")
            chunks, size = [], 0
            while chunk := os.read(fd, min(_BLOCK, max_bytes + 1 - size)):
                chunks.append(chunk)
                size += len(chunk)
                if size > max_bytes:
                    raise TooLarge(f"{path.name} is over {max_bytes} bytes")
            return b"".join(chunks)
        finally:
            os.close(fd)

    return with_deadline(read, timeout, f"reading {path.name}")


def with_deadline(fn: Callable[[], _T], timeout: float, what: str) -> _T:
    """`fn()` on a daemon thread; `Stalled` when it has not returned within `timeout` seconds."""
    results: queue.Queue[tuple[bool, object]] = queue.Queue(maxsize=1)

    def run() -> None:
        try:
            results.put((True, fn()))
        except BaseException as exc:  # handed to the caller
            results.put((False, exc))

    threading.Thread(target=run, name="cache-read", daemon=True).start()
    try:
        ok, value = results.get(timeout=timeout)
    except queue.Empty:
        raise Stalled(f"{what}: no answer within {timeout:g} s") from None
    if not ok:
        assert isinstance(value, BaseException)
        raise value
    return value  # type: ignore[return-value]


class Watch:
    """Progress of parallel reads: each read that returns bytes calls `tick`."""

    def __init__(self) -> None:
        self.last = time.monotonic()
        self.stop = threading.Event()

    def tick(self) -> None:
        self.last = time.monotonic()
        if self.stop.is_set():
            raise Stalled("stopped: another read failed or stalled")


def run_watched(
    tasks: Sequence[Callable[[Watch], None]], readers: int, timeout: float, what: str
) -> None:
    """Run `tasks` on `readers` daemon threads; raise the first error, or `Stalled` once no task
    has made progress (ticked or finished) for `timeout` seconds. Remaining tasks are skipped."""
    watch = Watch()
    pending: queue.Queue[Callable[[Watch], None]] = queue.Queue()
    for task in tasks:
        pending.put(task)
    done: queue.Queue[BaseException | None] = queue.Queue()

    def worker() -> None:
        while not watch.stop.is_set():
            try:
                task = pending.get_nowait()
            except queue.Empty:
                return
            try:
                task(watch)
                done.put(None)
            except BaseException as exc:  # handed to the caller
                done.put(exc)

    for _ in range(max(1, min(readers, len(tasks)))):
        threading.Thread(target=worker, name="cache-read", daemon=True).start()
    try:
        for _ in tasks:
            while True:
                try:
                    error = done.get(timeout=min(1.0, timeout))
                    break
                except queue.Empty:
                    if time.monotonic() - watch.last > timeout:
                        raise Stalled(f"{what}: no progress for {timeout:g} s") from None
            if error is not None:
                raise error
            watch.last = time.monotonic()
    finally:
        watch.stop.set()


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISSOCK, "a socket")):  # fmt: skip
        if test(mode):
            return name
    return "not a file"
