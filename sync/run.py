"""One sync run: fetch every configured model, publish a new generation, record the outcome.

Order of writes (each a whole-file rename from .tmp/, so no reader sees a partial file):
1. model files into their content-addressed tree directories (new trees only);
2. manifest.json;
3. .done naming the manifest's generation and sha256 — the commit point
   (manifest.previous.json, the replaced generation, is written before 2).
A run killed anywhere before 3 leaves the previous generation committed and intact: its trees
are never rewritten. A run that finds every source unchanged commits nothing. After the run, trees
no recent generation needs are garbage collected (sync.gc).
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from base import logs
from base.cache.manifest import (
    DONE_NAME,
    MANIFEST_NAME,
    MAX_DONE_BYTES,
    MAX_MANIFEST_BYTES,
    PREVIOUS_NAME,
    STATUS_NAME,
    TMP_DIR,
    Done,
    FileEntry,
    Manifest,
    ModelEntry,
    model_location,
    read_cache,
    safe_path,
    sha256_bytes,
    tree_digest,
)
from base.cache.reads import read_small
from base.cache.specs import ModelSpec
from base.cache.status import manifest_size, now_iso, read_status, status_body
from sync.gc import collect
from sync.lock import Lease
from sync.settings import SyncSettings
from sync.sources import FetchContext, Fetched, StagedFile, parse_source, store_dir
from sync.variants import add_variants, current

log = logs.get(__name__)


@dataclass
class ModelResult:
    name: str
    outcome: str  # updated | unchanged | failed
    revision: str = ""
    files: int = 0  # files written into the cache
    bytes: int = 0  # bytes written into the cache
    files_skipped: int = 0  # files not fetched or not rewritten because they were current
    error: str = ""


@dataclass
class SyncResult:
    """What one run did: easy to turn into metrics, a log line, or a refresh-complete message."""

    outcome: str  # ok | unchanged | failed
    generation: int  # the committed generation after the run
    previous_generation: int
    run_id: str
    models: list[ModelResult] = field(default_factory=list)
    duration_seconds: float = 0.0
    error: str = ""
    gc_trees: int = 0  # old trees garbage collection deleted
    gc_bytes: int = 0  # bytes they held

    @property
    def files(self) -> int:
        return sum(m.files for m in self.models)

    @property
    def bytes(self) -> int:
        return sum(m.bytes for m in self.models)

    @property
    def ok(self) -> bool:
        return self.outcome != "failed"

    def to_dict(self) -> dict[str, Any]:
        body = asdict(self)
        body.update(files=self.files, bytes=self.bytes)
        return body


def sync_once(
    root: Path,
    specs: Sequence[ModelSpec],
    settings: SyncSettings,
    *,
    only: Collection[str] | None = None,
    force: bool = False,
) -> SyncResult:
    """Refresh `specs` (or the subset named in `only`) into the cache at `root`. Never raises."""
    started = time.monotonic()
    run_id = _run_id()
    result = SyncResult("failed", 0, 0, run_id)
    staging = root / TMP_DIR / run_id
    log.info("Sync started", extra={"run_id": run_id, "cache": str(root),
                                    "models": [s.name for s in specs]})  # fmt: skip
    try:
        root.mkdir(parents=True, exist_ok=True)
        keep = {store_dir(root, settings).resolve()}  # an Ollama server may be using it
        cleanup_tmp(root, settings.sync_tmp_max_age_hours * 3600, keep)
        staging.mkdir(parents=True)
        with Lease(root, settings.sync_lock_ttl_seconds, settings.sync_lock_wait_seconds) as lease:
            result = _sync_locked(root, specs, settings, only, force, staging, lease)
    except Exception as exc:  # the outcome is recorded either way: alerts depend on it
        log.exception("Sync failed", extra={"run_id": run_id})
        result.error = result.error or f"{type(exc).__name__}: {exc}"
        result.outcome = "failed"
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    result.duration_seconds = round(time.monotonic() - started, 3)
    _record_status(root, result)
    log.info("Sync finished", extra=result.to_dict())
    return result


def _sync_locked(
    root: Path,
    specs: Sequence[ModelSpec],
    settings: SyncSettings,
    only: Collection[str] | None,
    force: bool,
    staging: Path,
    lease: Lease,
) -> SyncResult:
    state = read_cache(root, retry_delay=0)
    base = state.manifest if state.valid else None
    committed = state.generation  # 0 unless .done and the manifest agree
    result = SyncResult("ok", committed, committed, staging.name)
    current = {m.name: m for m in base.models} if base else {}
    wanted = [s for s in specs if only is None or base is None or s.name in only]
    for name in sorted(set(only or ()) - {s.name for s in specs}):
        result.models.append(ModelResult(name, "failed", error="not a configured model"))
    for spec in wanted:
        previous = None if force else _intact(root, current.get(spec.name))
        if previous is not None and _export_due(previous, settings):
            previous = None  # exported by an older version, or not at all: fetch and export
        model_result, entry = _sync_model(root, spec, settings, staging, previous)
        result.models.append(model_result)
        if entry is not None:
            current[spec.name] = entry
    models = tuple(current[s.name] for s in specs if s.name in current)
    failed = [m.name for m in result.models if m.outcome == "failed"]
    if failed:
        result.outcome, result.error = "failed", f"models failed: {', '.join(failed)}"
    if (base is not None and models == base.models) or not models:
        result.outcome = "failed" if failed else "unchanged"
    else:
        if not lease.held():
            raise RuntimeError("the sync lock was lost before commit; nothing committed")
        generation = _latest_generation(root) + 1
        commit(root, Manifest(generation, now_iso(), models), staging / "_commit")
        result.generation = generation
    _collect(root, settings, lease, result)
    return result


def _collect(root: Path, settings: SyncSettings, lease: Lease, result: SyncResult) -> None:
    """Garbage collection after the run, under the lease; its failure never fails the sync."""
    if settings.sync_gc_grace_hours < 0 or not lease.held():
        return
    try:
        collected = collect(root, settings.sync_gc_grace_hours * 3600)
    except Exception:
        log.exception("Garbage collection failed")
        return
    result.gc_trees, result.gc_bytes = collected.trees, collected.bytes


def _sync_model(
    root: Path, spec: ModelSpec, settings: SyncSettings, staging: Path, previous: ModelEntry | None
) -> tuple[ModelResult, ModelEntry | None]:
    log.info("Model sync started", extra={"model": spec.name, "source": spec.source})
    model_staging = staging / re.sub(r"[^A-Za-z0-9._-]", "_", spec.name)
    model_staging.mkdir(parents=True)
    try:
        source = parse_source(spec.source)
        fetched = source.fetch(FetchContext(root, model_staging, previous, settings))
        if fetched.unchanged and previous is not None:
            skipped = len(previous.files)
            log.info("Model unchanged", extra={"model": spec.name, "revision": previous.revision})
            return ModelResult(spec.name, "unchanged", previous.revision,
                               files_skipped=skipped), previous  # fmt: skip
        add_variants(fetched, spec.name, settings.sync_export)
        entry = _entry(spec, fetched)
        written, skipped, nbytes = _publish(root, entry.location, fetched.files)
    except Exception as exc:
        log.error("Model sync failed", extra={"model": spec.name, "error": str(exc)})
        return ModelResult(spec.name, "failed", error=f"{type(exc).__name__}: {exc}"), None
    outcome = "unchanged" if previous is not None and entry == previous else "updated"
    log.info("Model synced", extra={"model": spec.name, "revision": entry.revision,
             "location": entry.location, "files": written, "bytes": nbytes})  # fmt: skip
    return ModelResult(spec.name, outcome, entry.revision, written, nbytes, skipped), entry


def _entry(spec: ModelSpec, fetched: Fetched) -> ModelEntry:
    files = tuple(FileEntry(f.path, f.size, f.sha256) for f in sorted(fetched.files,
                  key=lambda f: f.path))  # fmt: skip
    tree = tree_digest(files)
    return ModelEntry(
        spec.name, fetched.kind, spec.source, fetched.revision or tree,
        model_location(fetched.kind, spec.name, tree), files, fetched.fingerprint,
        fetched.variants,
    )  # fmt: skip


def _publish(root: Path, location: str, files: list[StagedFile]) -> tuple[int, int, int]:
    """Rename staged files into the tree; files already there (a tree with the same content,
    e.g. from a run killed after publishing) are left alone, so readers are never disturbed."""
    written = skipped = nbytes = 0
    for staged in files:
        target = safe_path(root, f"{location}/{staged.path}")
        if target.is_file() and target.stat().st_size == staged.size:
            skipped += 1
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged.staged, target)
        written, nbytes = written + 1, nbytes + staged.size
    return written, skipped, nbytes


def _export_due(entry: ModelEntry, settings: SyncSettings) -> bool:
    """An sbert model whose variants predate this exporter (or were never made) is exported."""
    return settings.sync_export and entry.kind == "sbert" and not current(entry.variants)


def _intact(root: Path, entry: ModelEntry | None) -> ModelEntry | None:
    """The previous entry if its files are all present at their size (a cheap stat check)."""
    if entry is None:
        return None
    for f in entry.files:
        try:
            if safe_path(root, f"{entry.location}/{f.path}").stat().st_size != f.size:
                return None
        except (OSError, ValueError):
            return None
    return entry


def commit(root: Path, manifest: Manifest, scratch: Path) -> None:
    """Publish `manifest`: manifest.json, then .done naming it; then check nobody interleaved.

    The generation being replaced is kept first as manifest.previous.json: garbage collection
    never deletes what it names, as workers may still be reading it.
    """
    data = manifest.to_bytes()
    done = Done(manifest.generation, sha256_bytes(data))
    scratch.mkdir(parents=True, exist_ok=True)
    replaced = read_cache(root, retry_delay=0)
    if replaced.manifest is not None and replaced.generation < manifest.generation:
        _put(root, PREVIOUS_NAME, replaced.manifest.to_bytes(), scratch)
    for attempt in range(2):
        _put(root, MANIFEST_NAME, data, scratch)
        _put(root, DONE_NAME, done.to_bytes(), scratch)
        state = read_cache(root, retry_delay=0)
        if state.valid or _latest_generation(root) > manifest.generation:
            break  # ours, or a newer generation being committed by someone else
        log.warning("Commit interleaved with another writer", extra={"attempt": attempt})
    log.info("Generation committed", extra={"generation": manifest.generation,
             "manifest_sha256": done.manifest_sha256})  # fmt: skip


def _put(root: Path, name: str, data: bytes, scratch: Path, durable: bool = True) -> None:
    """Whole-file replace via a rename; `durable` adds fsyncs so a commit survives power loss
    (not needed for the advisory status file, and they dominate an unchanged sync's time)."""
    tmp = scratch / name
    with open(tmp, "wb") as fh:
        fh.write(data)
        if durable:
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, root / name)
    if durable:
        _fsync_dir(root)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # not supported by every filesystem (FUSE)
    finally:
        os.close(fd)


def _latest_generation(root: Path) -> int:
    """The highest generation named by .done or manifest.json: a new one must exceed both."""
    found = [0]
    for name, key in ((DONE_NAME, "generation"), (MANIFEST_NAME, "generation")):
        try:
            limit = MAX_DONE_BYTES if name == DONE_NAME else MAX_MANIFEST_BYTES
            value = orjson.loads(read_small(root / name, limit)).get(key)
        except (OSError, orjson.JSONDecodeError, AttributeError):
            continue
        if isinstance(value, int) and not isinstance(value, bool):
            found.append(value)
    return max(found)


# ---------------------------------------------------------------------------------------------
# status and housekeeping


def _record_status(root: Path, result: SyncResult) -> None:
    """sync-status.json lets an alert see failures without a long-lived process to ask."""
    try:
        body = status_body(
            read_status(root), result.outcome, error=result.error,
            generation=result.generation, run_id=result.run_id,
            duration_seconds=result.duration_seconds, files=result.files, bytes=result.bytes,
            cache_size_bytes=manifest_size(root),
        )  # fmt: skip
        scratch = root / TMP_DIR / f"{result.run_id}-status"
        scratch.mkdir(parents=True, exist_ok=True)
        data = orjson.dumps(body, option=orjson.OPT_INDENT_2)
        _put(root, STATUS_NAME, data, scratch, durable=False)
        shutil.rmtree(scratch, ignore_errors=True)
    except OSError as exc:
        log.error("Could not record the sync status", extra={"error": str(exc)})


def cleanup_tmp(root: Path, max_age_seconds: float, keep: Collection[Path] = ()) -> None:
    """Remove staging left by runs that died (SIGKILL, lost host) once older than the limit."""
    tmp = root / TMP_DIR
    if not tmp.is_dir():
        return
    cutoff = time.time() - max_age_seconds
    for entry in tmp.iterdir():
        try:
            if entry.lstat().st_mtime >= cutoff or entry.resolve() in keep:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except OSError as exc:
            log.warning("Could not remove staging", extra={"path": str(entry), "error": str(exc)})
            continue
        log.info("Removed old staging", extra={"path": entry.name})


def _run_id() -> str:
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%S")
    return f"{stamp}-{socket.gethostname()[:20]}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
