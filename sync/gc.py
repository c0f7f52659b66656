"""Garbage collection: delete the model trees no recent generation needs, after a sync.

Trees are content-addressed and never rewritten, so every model change leaves its old tree behind.
After each run (under the sync lease) the sync keeps:

- every tree the committed manifest names, and every tree its predecessor names
  (`manifest.previous.json`): a worker may still be loading the previous generation;
- everything, while the predecessor was committed less than the grace period ago: a tree that
  neither names was retired no later than that commit, and a worker that started reading an
  older generation finishes within the grace period;
- any tree written within the grace period (its newest file or directory mtime): a tree a sync
  is publishing but has not committed yet.

The rest is deleted, logged and counted. A cache written before `manifest.previous.json` existed
is collected the same way: its predecessor is then known from the next commit on, and until
then the committed manifest's own time bounds when the other trees were retired.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from base import logs
from base.cache.manifest import KINDS, Manifest, read_cache, read_previous

log = logs.get(__name__)


@dataclass
class GcResult:
    trees: int = 0  # trees deleted
    bytes: int = 0  # bytes they held
    kept: int = 0  # trees kept that no manifest names (within the grace period)


def collect(root: Path, grace_seconds: float, now: float | None = None) -> GcResult:
    """Delete the trees neither the committed generation nor its predecessor needs (see above)."""
    result = GcResult()
    state = read_cache(root, retry_delay=0)
    if not state.valid or state.manifest is None:
        log.info(
            "Garbage collection skipped: no committed generation", extra={"reason": state.reason}
        )
        return result
    now = time.time() if now is None else now
    previous = read_previous(root)
    named = _locations(state.manifest) | (_locations(previous) if previous else set())
    retired_by = _created(previous or state.manifest)
    if retired_by is None or now - retired_by < grace_seconds:
        return result  # the predecessor is recent: anything else may still be being read
    for tree in _trees(root):
        location = tree.relative_to(root).as_posix()
        if location in named:
            continue
        if now - _newest_mtime(tree) < grace_seconds:
            result.kept += 1
            continue
        size = _size(tree)
        try:
            _remove(tree)
        except OSError as exc:
            log.warning("Could not delete an old tree", extra={"location": location,
                                                               "error": str(exc)})  # fmt: skip
            continue
        result.trees, result.bytes = result.trees + 1, result.bytes + size
        log.info("Old tree deleted", extra={"location": location, "bytes": size})
        _remove_empty(tree.parent)
    log.info("Old trees collected", extra={"trees": result.trees, "bytes": result.bytes,
             "kept_in_grace": result.kept, "grace_seconds": grace_seconds})  # fmt: skip
    return result


def _locations(manifest: Manifest) -> set[str]:
    return {m.location for m in manifest.models}


def _created(manifest: Manifest) -> float | None:
    try:
        return _dt.datetime.fromisoformat(manifest.created).timestamp()
    except ValueError:
        return None


def _trees(root: Path) -> list[Path]:
    """`<kind>/<name>/<tree>` directories (symlinks included, never followed)."""
    found = []
    for kind in KINDS:
        base = root / kind
        if not base.is_dir() or base.is_symlink():
            continue
        for name in sorted(base.iterdir()):
            if name.is_dir() and not name.is_symlink():
                found += sorted(name.iterdir())
    return found


def _walk(tree: Path) -> list[os.stat_result]:
    stats = [tree.lstat()]
    if tree.is_symlink() or not tree.is_dir():
        return stats
    for dirpath, dirnames, filenames in os.walk(tree):
        stats += [os.lstat(os.path.join(dirpath, n)) for n in dirnames + filenames]
    return stats


def _newest_mtime(tree: Path) -> float:
    return max(st.st_mtime for st in _walk(tree))


def _size(tree: Path) -> int:
    return sum(st.st_size for st in _walk(tree) if not stat.S_ISDIR(st.st_mode))


def _remove(tree: Path) -> None:
    if tree.is_symlink() or not tree.is_dir():
        tree.unlink()
    else:
        shutil.rmtree(tree)


def _remove_empty(directory: Path) -> None:
    try:
        directory.rmdir()  # only when empty
    except OSError:
        pass
