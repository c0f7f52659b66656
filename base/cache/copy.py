"""Moving model files with their checksums computed on the way, never by a second read.

`copy_verified` is how a worker takes a model out of the cache: parallel range readers (a GCS
FUSE mount serves concurrent reads of one object far faster than one sequential stream) and an
in-order sha256 per file, so verification costs no extra read. `copy_hashing` is the sync's
single-stream counterpart for staging.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from base.cache.manifest import FileEntry, ModelEntry, safe_path, sha256_file
from base.cache.reads import READ_TIMEOUT, Watch, open_regular, run_watched

CHUNK_BYTES = 8 << 20
FREE_SPACE_MARGIN = 0.05  # keep 5 % of the target's free space unused


class ChecksumMismatch(Exception):
    """A file's size or sha256 differs from what the manifest promises."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


class InsufficientSpace(OSError):
    """The local directory cannot hold the model (on Cloud Run, local disk is memory)."""


@dataclass
class CopyResult:
    files: int = 0
    bytes: int = 0
    seconds: float = 0.0


def ensure_free_space(directory: Path, needed: int) -> None:
    """Fail before writing anything when `needed` bytes will not fit with a small margin."""
    directory.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(directory).free
    if needed > free * (1 - FREE_SPACE_MARGIN):
        raise InsufficientSpace(
            f"{directory} needs {needed} bytes free for the model, has {free}. On Cloud Run the "
            "local disk is memory: raise the memory limit or use TABULAR_MODEL_LOAD_STRATEGY=mount"
        )


def copy_hashing(src: Path, dst: Path, block: int = CHUNK_BYTES) -> tuple[int, str]:
    """Copy one file, fsync it, and return (size, sha256) of the bytes actually written."""
    digest = hashlib.sha256()
    size = 0
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while data := fin.read(block):
            digest.update(data)
            fout.write(data)
            size += len(data)
        fout.flush()
        os.fsync(fout.fileno())
    return size, digest.hexdigest()


def check_sizes(
    root: Path,
    model: ModelEntry,
    timeout: float = READ_TIMEOUT,
    only: Collection[str] | None = None,
) -> None:
    """Every file (those in `only`, when given) present at the size the manifest says (stat
    only): a manifest claiming a size the file does not have is a mismatch before anything is
    read or any space is reserved."""

    def check(entry: FileEntry, watch: Watch) -> None:
        _check_size(safe_path(root, f"{model.location}/{entry.path}"), entry)

    tasks = [lambda watch, e=e: check(e, watch) for e in selected(model, only)]
    run_watched(tasks, 4, timeout, "checking file sizes")


def verify_files(
    root: Path,
    model: ModelEntry,
    readers: int = 4,
    only: Collection[str] | None = None,
    timeout: float = READ_TIMEOUT,
) -> None:
    """Hash a model's files (those in `only`, when given) where they lie (the `mount` strategy);
    raise on the first mismatch."""

    def check(entry: FileEntry, watch: Watch) -> None:
        path = safe_path(root, f"{model.location}/{entry.path}")
        _check_size(path, entry)
        actual = sha256_file(path, watch)
        if actual != entry.sha256:
            raise ChecksumMismatch(
                entry.path, f"sha256 {actual[:12]}, expected {entry.sha256[:12]}"
            )

    tasks = [lambda watch, e=e: check(e, watch) for e in selected(model, only)]
    run_watched(tasks, readers, timeout, f"verifying {model.name}")


def copy_verified(
    root: Path,
    model: ModelEntry,
    dest: Path,
    *,
    readers: int = 4,
    chunk_bytes: int = CHUNK_BYTES,
    only: Collection[str] | None = None,
    timeout: float = READ_TIMEOUT,
) -> CopyResult:
    """Copy `model`'s files (those named in `only`, when given) from the cache under `root` into
    `dest`, verified, all or nothing.

    Files are written as `*.partial` and renamed once every checksum matched, so `dest` never
    holds an unverified file. Files under `manifests/` are renamed last: an Ollama server reading
    `dest` must never see a model manifest before its blobs. A copy that receives no byte for
    `timeout` seconds raises `Stalled` (a hung FUSE read).
    """
    started = time.perf_counter()
    files = selected(model, only)
    size = sum(f.size for f in files)
    ensure_free_space(dest, size)
    jobs = [_FileCopy(root, model, entry, dest) for entry in files]
    try:
        for job in jobs:
            job.open()
        chunks = [
            lambda watch, job=job, off=off: job.copy_chunk(off, chunk_bytes, watch)
            for job in jobs
            for off in range(0, job.entry.size, chunk_bytes)
        ]
        run_watched(chunks, readers, timeout, f"copying {model.name}")
        for job in jobs:
            job.finish()
    except BaseException:
        for job in jobs:
            job.abort()
        raise
    for job in sorted(jobs, key=lambda j: (j.entry.path.startswith("manifests/"), j.entry.path)):
        job.publish()
    return CopyResult(len(jobs), size, time.perf_counter() - started)


def selected(model: ModelEntry, only: Collection[str] | None) -> tuple[FileEntry, ...]:
    """The model's file entries named in `only` (all of them for None)."""
    if only is None:
        return model.files
    return tuple(f for f in model.files if f.path in set(only))


def _check_size(path: Path, entry: FileEntry) -> None:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ChecksumMismatch(entry.path, "missing") from None
    if size != entry.size:
        raise ChecksumMismatch(entry.path, f"size {size}, expected {entry.size}")


@dataclass
class _FileCopy:
    """One file's copy: chunks arrive out of order, the hash consumes them in order."""

    root: Path
    model: ModelEntry
    entry: FileEntry
    dest: Path
    _src: int = -1
    _dst: int = -1
    _next: int = 0
    _pending: dict[int, bytes] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _digest: hashlib._Hash = field(default_factory=hashlib.sha256)

    @property
    def target(self) -> Path:
        return self.dest / self.entry.path

    @property
    def partial(self) -> Path:
        return self.target.with_name(self.target.name + ".partial")

    def open(self) -> None:
        src = safe_path(self.root, f"{self.model.location}/{self.entry.path}")
        _check_size(src, self.entry)  # a truncated file fails here, before any copying
        self.partial.parent.mkdir(parents=True, exist_ok=True)
        self._src = open_regular(src)
        self._dst = os.open(self.partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.ftruncate(self._dst, self.entry.size)

    def copy_chunk(self, offset: int, length: int, watch: Watch) -> None:
        length = min(length, self.entry.size - offset)
        data = os.pread(self._src, length, offset)
        watch.tick()
        if len(data) != length:
            raise ChecksumMismatch(self.entry.path, f"short read at {offset}: file changed")
        os.pwrite(self._dst, data, offset)
        with self._lock:
            self._pending[offset] = data
            for ready in self._in_order():
                self._digest.update(ready)

    def _in_order(self) -> Iterator[bytes]:
        while self._next in self._pending:
            data = self._pending.pop(self._next)
            self._next += len(data)
            yield data

    def finish(self) -> None:
        actual = self._digest.hexdigest()
        if self._next != self.entry.size or actual != self.entry.sha256:
            raise ChecksumMismatch(
                self.entry.path, f"sha256 {actual[:12]}, expected {self.entry.sha256[:12]}"
            )
        self._close()

    def abort(self) -> None:
        self._close()
        self.partial.unlink(missing_ok=True)

    def publish(self) -> None:
        os.replace(self.partial, self.target)

    def _close(self) -> None:
        for fd in (self._src, self._dst):
            if fd >= 0:
                os.close(fd)
        self._src = self._dst = -1
