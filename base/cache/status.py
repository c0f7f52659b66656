"""sync-status.json: the outcome of the last sync runs, kept in the cache for alerts.

The sync writes it after every run (`status_body`), so a failure is visible without a long-lived
process to ask; workers read it on every /metrics scrape (`cache_status`) and export the same
gauges the sync does.
"""

from __future__ import annotations

import datetime as _dt
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from base.cache.manifest import STATUS_NAME, read_cache
from base.cache.reads import READ_TIMEOUT, read_small

MAX_STATUS_BYTES = 1 << 20


@dataclass(frozen=True)
class CacheStatus:
    """The facts metrics report about a cache: from sync-status.json, the size from the manifest
    when an older status file does not carry it."""

    last_success_unix: float  # 0: no successful sync recorded
    consecutive_failures: int
    size_bytes: int | None  # None: no committed manifest


def read_status(root: Path, timeout: float = READ_TIMEOUT) -> dict[str, Any]:
    """The status file's fields ({} when missing, unreadable, oversized or stalled)."""
    try:
        value = orjson.loads(read_small(root / STATUS_NAME, MAX_STATUS_BYTES, timeout))
    except (OSError, orjson.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def manifest_size(root: Path, timeout: float = READ_TIMEOUT) -> int | None:
    """Bytes the committed manifest accounts for (each tree once), None without a valid one."""
    state = read_cache(root, retry_delay=0, timeout=timeout)
    if not state.valid or state.manifest is None:
        return None
    trees = {m.location: m.size for m in state.manifest.models}
    return sum(trees.values())


def cache_status(root: Path, timeout: float = READ_TIMEOUT) -> CacheStatus | None:
    """What sync-status.json says (None when the cache has none): cheap, one small read."""
    status = read_status(root, timeout)
    if not status:
        return None
    last = _number(status.get("last_success_unix"))
    failures = _number(status.get("consecutive_failures"))
    size = _number(status.get("cache_size_bytes"))
    return CacheStatus(
        last_success_unix=last or 0.0,
        consecutive_failures=int(failures or 0),
        size_bytes=int(size) if size is not None else manifest_size(root, timeout),
    )


def status_body(previous: dict[str, Any], outcome: str, **run: Any) -> dict[str, Any]:
    """The next sync-status.json after a run ending in `outcome` (ok | unchanged | failed).

    `run` carries the run's own facts (error, generation, run_id, duration_seconds, files, bytes,
    cache_size_bytes); success time and the failure streak carry over from `previous`.
    """
    now, iso = time.time(), now_iso()
    ok = outcome != "failed"
    return {
        "last_attempt": iso, "last_attempt_unix": now,
        "last_outcome": outcome, "last_error": run.pop("error", ""),
        "last_success": iso if ok else previous.get("last_success"),
        "last_success_unix": now if ok else previous.get("last_success_unix"),
        "consecutive_failures": 0 if ok else int(previous.get("consecutive_failures", 0)) + 1,
        **run,
    }  # fmt: skip


def now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
