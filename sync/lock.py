"""A lease on the cache so two syncs normally do not run at once.

The lease is an optimisation, not what keeps readers safe: on last-writer-wins storage (GCS)
two hosts can both believe they hold it for a moment. Correctness comes from the layout (files
are content-addressed, never rewritten with other bytes) and the commit (manifest, then a .done
naming its digest): a reader either sees one writer's complete generation or a mismatch it
treats as a miss. The lease only makes that rare, and it must never outlive a dead holder: it
carries an expiry its holder keeps renewing, and on the same host a dead pid frees it at once.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from types import TracebackType

import orjson

from base import logs
from base.cache.manifest import LOCK_NAME
from base.cache.reads import read_small

MAX_LOCK_BYTES = 64 << 10

log = logs.get(__name__)


class LeaseBusy(RuntimeError):
    """Another live sync held the lease for longer than we were willing to wait."""


class Lease:
    def __init__(self, root: Path, ttl: float, wait: float) -> None:
        self.path = root / LOCK_NAME
        self.ttl = ttl
        self.wait = wait
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self._lost = False

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def acquire(self) -> None:
        deadline = time.monotonic() + self.wait
        delay = 0.05
        while not self._try_create():
            current = self._read()
            if self._stale(current):
                log.warning("Taking over a stale sync lock", extra={"lock": current})
                self.path.unlink(missing_ok=True)
                continue
            if time.monotonic() >= deadline:
                raise LeaseBusy(f"another sync holds {self.path}: {current}")
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
        self._renewer = threading.Thread(target=self._renew_loop, name="lease", daemon=True)
        self._renewer.start()

    def held(self) -> bool:
        """Re-read the lock: checked right before committing, so a lost lease aborts the commit."""
        current = self._read()
        return not self._lost and current is not None and current.get("holder") == self.holder

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        if self.held():
            self.path.unlink(missing_ok=True)

    # -----------------------------------------------------------------------------------------

    def _body(self) -> bytes:
        return orjson.dumps({
            "holder": self.holder, "host": socket.gethostname(), "pid": os.getpid(),
            "expires_unix": time.time() + self.ttl,
        })  # fmt: skip

    def _try_create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as fh:
            fh.write(self._body())
        # On storage without exclusive create, a racing writer may have replaced our file.
        current = self._read()
        return current is not None and current.get("holder") == self.holder

    def _read(self) -> dict[str, object] | None:
        try:
            value = orjson.loads(read_small(self.path, MAX_LOCK_BYTES))
        except (OSError, orjson.JSONDecodeError):
            return None
        return value if isinstance(value, dict) else None

    def _stale(self, lock: dict[str, object] | None) -> bool:
        if lock is not None:
            return _stale(lock)
        try:  # unreadable: being written right now, or left half-written by a crash
            return time.time() - self.path.stat().st_mtime > self.ttl
        except FileNotFoundError:
            return False

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            if not self.held():
                log.error("Sync lock lost to another holder", extra={"lock": self._read()})
                self._lost = True
                return
            tmp = self.path.with_name(f"{LOCK_NAME}.{self.holder.replace(':', '_')}")
            tmp.write_bytes(self._body())
            os.replace(tmp, self.path)


def _stale(lock: dict[str, object]) -> bool:
    expires = lock.get("expires_unix")
    if isinstance(expires, int | float) and expires < time.time():
        return True
    pid = lock.get("pid")
    if lock.get("host") == socket.gethostname() and isinstance(pid, int):
        return not _alive(pid)
    return False


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):  # a zombie (killed, not yet reaped) is dead for us
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[-1].split()[0] != "Z"
    return True
