"""Deciding which files the embedding model is loaded from, and loading it warmed.

With the shared cache enabled (default) a start first tries the cache: `.done` must match the
manifest, the configured model must be in it, and its files must match their checksums as they
are copied out (strategy `copy`) or read in place (`mount`). Anything else is a miss with one of
the fixed reasons in `base.cache.manifest.MISS_REASONS`, and the model comes from local storage
instead: the packaged MiniLM, a local directory, a TABULAR_SYNC_MODELS source, or a hub download
into TABULAR_LOCAL_MODEL_DIR — never into the shared cache. A corrupt model is never served.

The cache is read only through `base.cache` (manifest, checks, verified copy).
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import importlib
import os
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import TYPE_CHECKING, Any

from base import logs
from base.cache.copy import (
    ChecksumMismatch,
    InsufficientSpace,
    check_sizes,
    copy_verified,
    ensure_free_space,
    verify_files,
)
from base.cache.manifest import (
    HIT,
    ModelEntry,
    UnsafePath,
    find_model,
    read_cache,
    read_done,
    safe_path,
)
from base.cache.reads import Stalled, with_deadline
from base.cache.specs import HF_IGNORE, SpecError, configured_source
from base.cache.status import cache_status
from base.cache.variants import Variant, read_variants, serving_files
from worker.backend import BackendUnavailable, choose
from worker.metrics import WorkerMetrics
from worker.model import EmbeddingModel, ModelInfo, Tuning, local_model_dir
from worker.settings import WorkerSettings

if TYPE_CHECKING:
    from worker.pipeline import Pipeline

log = logs.get(__name__)


class ModelStoreError(RuntimeError):
    """No model can be served from local storage (after a cache miss, or with the cache off).

    `reason` is logged as the fallback's own verdict: `insufficient_space` (a download does not
    fit) or `local_unavailable` (the model cannot be found or loaded locally).
    """

    def __init__(self, message: str, reason: str = "local_unavailable") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class CacheLookup:
    cache_hit: bool
    reason: str  # "hit" or one of base.cache.manifest.MISS_REASONS
    generation: int = 0
    detail: str = ""


_last_lookup: CacheLookup | None = None  # this process's start, for cache_snapshot()


async def load_embedding_model(
    settings: WorkerSettings, metrics: WorkerMetrics | None = None
) -> EmbeddingModel:
    """Load in a worker thread so the event loop (health checks) keeps answering meanwhile.

    The cache check always ends with one `Model cache checked` line and one count, before any
    fallback is tried; a fallback that fails then logs `Model fallback failed` with its own
    reason and raises `ModelStoreError`.
    """
    model = await asyncio.to_thread(_load, settings, metrics)
    _log_loaded(model)
    if metrics is not None:
        _export(metrics, model)
    return model


def report_lookup(
    settings: WorkerSettings,
    lookup: CacheLookup,
    metrics: WorkerMetrics | None,
    model: EmbeddingModel | None = None,
) -> None:
    """The verdict of one cache check: logged and counted (the hit-rate alert's input). On a
    hit, `model` (from the cache) adds its backend and precision; on a miss they are empty, as
    the fallback has not loaded anything yet."""
    global _last_lookup
    _last_lookup = lookup
    log.info(
        "Model cache checked",
        extra={"cache_hit": lookup.cache_hit, "reason": lookup.reason,
               "generation": lookup.generation, "detail": lookup.detail,
               "model": settings.embedding_model, "strategy": settings.model_load_strategy,
               "backend": model.info.backend if model else "",
               "precision": model.info.precision if model else ""},
    )  # fmt: skip
    if metrics is not None:
        metrics.cache_lookups.labels("hit" if lookup.cache_hit else "miss", lookup.reason).inc()


def cache_snapshot(settings: WorkerSettings, model: EmbeddingModel) -> dict[str, Any]:
    """Cache state for /readyz: what this start found, what is loaded, what is committed now."""
    root = Path(settings.model_cache_path)
    committed = current_generation(settings)
    lookup = _last_lookup
    return {
        "enabled": settings.shared_model_volume_enabled, "path": str(root),
        "mounted": settings.shared_model_volume_enabled and os.path.ismount(root),
        "start_cache_hit": lookup.cache_hit if lookup else None,
        "start_reason": lookup.reason if lookup else None,
        "model_source": model.info.source, "loaded_generation": model.info.generation,
        "committed_generation": committed,
        "reload_pending": committed is not None and committed > model.info.generation,
    }  # fmt: skip


def export_sync_status(settings: WorkerSettings, metrics: WorkerMetrics) -> None:
    """Set the sync/cache gauges from the cache's sync-status.json, read through `base.cache`.

    Cheap (one small file read, plus the manifest only for a status file older than the
    `cache_size_bytes` field); the worker calls it whenever /metrics is scraped.
    """
    if not settings.shared_model_volume_enabled:
        return
    status = cache_status(Path(settings.model_cache_path), settings.cache_read_timeout_seconds)
    if status is not None:
        metrics.set_sync_status(
            status.last_success_unix, status.consecutive_failures, status.size_bytes
        )


def current_generation(settings: WorkerSettings) -> int | None:
    """The committed cache generation (one small read of `.done`), None without a valid marker."""
    if not settings.shared_model_volume_enabled:
        return None
    done = read_done(Path(settings.model_cache_path), settings.cache_read_timeout_seconds)
    return done.generation if done is not None else None


def _load(settings: WorkerSettings, metrics: WorkerMetrics | None) -> EmbeddingModel:
    lookup, model = try_cache(settings)
    report_lookup(settings, lookup, metrics, model)
    if model is not None:
        return model
    if lookup.reason != "disabled":
        log.warning("Model cache miss: loading from local storage",
                    extra={"reason": lookup.reason, "detail": lookup.detail})  # fmt: skip
    try:
        return load_local(settings)
    except ModelStoreError as exc:
        log.error("Model fallback failed",
                  extra={"reason": exc.reason, "detail": str(exc), "cache_reason": lookup.reason,
                         "model": settings.embedding_model})  # fmt: skip
        raise


def _preimport(variant: Variant | None) -> None:
    """Import the backend's library (sentence-transformers takes seconds, mostly CPU) in a thread
    while the cache is copied (I/O and hashing, which release the GIL): a cache hit then starts
    about as fast as a bare process that only imports and loads."""

    def run() -> None:
        try:
            importlib.import_module("onnxruntime" if variant else "sentence_transformers")
        except Exception:
            pass  # the load itself reports import problems

    threading.Thread(target=run, name="preimport", daemon=True).start()


def try_cache(settings: WorkerSettings) -> tuple[CacheLookup, EmbeddingModel | None]:
    """Blocking: the warmed model from the cache, or why not (the reason goes to logs/metrics)."""
    if not settings.shared_model_volume_enabled:
        return CacheLookup(False, "disabled"), None
    root, timeout = Path(settings.model_cache_path), settings.cache_read_timeout_seconds
    try:
        is_dir, mounted = with_deadline(
            lambda: (root.is_dir(), os.path.ismount(root)), timeout, f"looking at {root}"
        )
    except Stalled as exc:
        return CacheLookup(False, "read_timeout", detail=str(exc)), None
    if not is_dir:
        return CacheLookup(False, "no_mount", detail=f"{root} is not a directory"), None
    log.info("Shared volume available", extra={"path": str(root), "mountpoint": mounted})
    state = read_cache(root, timeout=timeout)
    if not state.valid or state.manifest is None:
        return CacheLookup(False, state.reason, detail=state.detail), None
    generation = state.generation
    entry = find_model(state.manifest, settings.embedding_model, kind="sbert")
    if entry is None:
        detail = f"{settings.embedding_model!r} is not an sbert model of generation {generation}"
        return CacheLookup(False, "model_not_in_manifest", generation, detail), None
    variant = choose(entry.variants, settings.inference_backend, settings.inference_precision)
    _preimport(variant)
    try:
        model = load_cached(settings, root, entry, generation, variant)
    except ChecksumMismatch as exc:
        return CacheLookup(False, "checksum_mismatch", generation, str(exc)), None
    except Stalled as exc:
        return CacheLookup(False, "read_timeout", generation, str(exc)), None
    except InsufficientSpace as exc:
        return CacheLookup(False, "insufficient_space", generation, str(exc)), None
    except (OSError, UnsafePath) as exc:  # not a regular file, permissions, a symlink loop
        detail = f"{type(exc).__name__}: {exc}"
        return CacheLookup(False, "file_unreadable", generation, detail), None
    except Exception as exc:  # whatever the loader raises, the files did not make a model
        return CacheLookup(False, "load_failed", generation, f"{type(exc).__name__}: {exc}"), None
    return CacheLookup(True, HIT, generation), model


def load_cached(
    settings: WorkerSettings,
    root: Path,
    entry: ModelEntry,
    generation: int,
    variant: Variant | None,
) -> EmbeddingModel:
    """Blocking: a verified copy (`copy`) or an in-place check (`mount`) of the files `variant`
    needs (None: the torch model), then load and warm.

    The files' sizes are checked against the manifest first: a manifest claiming more than the
    files hold is a checksum mismatch, not a reason to give up for lack of space.
    """
    listed = entry.variants.variants if entry.variants else ()
    only = serving_files([f.path for f in entry.files], variant, listed)
    timeout, readers = settings.cache_read_timeout_seconds, settings.model_copy_readers
    info = ModelInfo(settings.embedding_model, "", "cache", generation, entry.revision)
    check_sizes(root, entry, timeout, only=only)
    if settings.model_load_strategy == "mount":
        verify_files(root, entry, readers=readers, only=only, timeout=timeout)
        return _load_warm(settings, safe_path(root, entry.location), info, variant)
    parent = Path(settings.local_model_dir) / "cache" / entry.kind
    ensure_free_space(parent, sum(f.size for f in entry.files if f.path in set(only)))
    dest = Path(tempfile.mkdtemp(prefix=f"{_slug(entry.name)}-g{generation}-", dir=parent))
    try:
        copy_verified(root, entry, dest, readers=readers, only=only, timeout=timeout)
        return _load_warm(settings, dest, info, variant)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def _load_warm(
    settings: WorkerSettings, path: Path | str, info: ModelInfo, variant: Variant | None
) -> EmbeddingModel:
    tuning = Tuning(
        settings.inference_threads, settings.inference_spin, settings.max_seq_length,
        settings.model_streams,
    )  # fmt: skip
    model = EmbeddingModel.load(path, dataclasses.replace(info, path=str(path)), variant, tuning)
    model.warm_up()
    return model


# ---------------------------------------------------------------------------------------------
# local storage (a miss, or the cache disabled)


def load_local(settings: WorkerSettings) -> EmbeddingModel:
    """Blocking: load and warm the configured model from local storage."""
    try:
        path, source = resolve_local(settings)
        variants = read_variants(path) if isinstance(path, Path) else None
        variant = choose(variants, settings.inference_backend, settings.inference_precision)
        info = ModelInfo(settings.embedding_model, str(path), source)
        model = _load_warm(settings, path, info, variant)
    except (ModelStoreError, BackendUnavailable):
        raise
    except InsufficientSpace as exc:
        raise ModelStoreError(str(exc), "insufficient_space") from exc
    except Exception as exc:
        raise ModelStoreError(
            f"model {settings.embedding_model!r} cannot be loaded from local storage: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    return model


def resolve_local(settings: WorkerSettings) -> tuple[Path | str, str]:
    """Where the model is without the cache: (directory or hub id, source).

    A name configured in TABULAR_SYNC_MODELS uses its source: file:// is loaded in place (an
    image-baked directory), hf:// is downloaded into TABULAR_LOCAL_MODEL_DIR.
    """
    name = settings.embedding_model
    source = _configured_source(settings, name)
    if source.startswith("file://") and Path(source[7:]).expanduser().is_dir():
        return Path(source[7:]).expanduser(), "local"
    if source.startswith("hf://"):
        repo, _, revision = source[5:].partition("@")
        return download_local(settings, repo, revision or None), "hub"
    path, kind = local_model_dir(name, settings.sentence_transformers_home)
    if kind == "hub" and not _offline():
        return download_local(settings, name, None), "hub"
    return path, kind  # offline: sentence-transformers looks in its own local caches only


def download_local(settings: WorkerSettings, repo: str, revision: str | None) -> Path:
    """Download a hub model into TABULAR_LOCAL_MODEL_DIR after checking it fits."""
    from huggingface_hub import HfApi, snapshot_download

    endpoint = os.environ.get("HF_ENDPOINT") or None
    dest = Path(settings.local_model_dir) / "hub" / _slug(repo)
    info = HfApi(endpoint=endpoint).model_info(repo, revision=revision, files_metadata=True)
    siblings = list(info.siblings or [])
    safetensors = any(s.rfilename.endswith(".safetensors") for s in siblings)
    ignore = HF_IGNORE + (["*.bin"] if safetensors else [])
    keep = [s for s in siblings if not any(fnmatch(s.rfilename, p) for p in ignore)]
    ensure_free_space(dest, sum(s.size or 0 for s in keep))
    log.info("Downloading model into local storage",
             extra={"repo": repo, "commit": info.sha, "path": str(dest)})  # fmt: skip
    snapshot_download(repo, revision=info.sha, local_dir=dest, ignore_patterns=ignore,
                      endpoint=endpoint)  # fmt: skip
    return dest


def _configured_source(settings: WorkerSettings, name: str) -> str:
    try:
        return configured_source(settings.sync_models, name)
    except SpecError as exc:
        log.warning("TABULAR_SYNC_MODELS ignored", extra={"error": str(exc)})
        return ""


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


# ---------------------------------------------------------------------------------------------
# hot reload


class CacheReloader:
    """Switches a running pipeline to a new cache generation between batches.

    The new model is loaded and warmed beside the old one in a thread; then `pipeline.model` is
    replaced. Requests already queued carry the old model's encode function and finish on it, so
    no job is dropped or sees two models; then the old model and its local copy are freed.
    """

    def __init__(self, settings: WorkerSettings, metrics: WorkerMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self._failed_generation = 0

    async def run(self, pipeline: Pipeline, stop: asyncio.Event) -> None:
        interval = max(0.05, self.settings.reload_interval_seconds)
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), interval)
                return
            except TimeoutError:
                pass
            try:
                await self.check_once(pipeline)
            except Exception:  # a reload bug must not stop the worker or future reloads
                log.exception("Model reload check failed")

    async def check_once(self, pipeline: Pipeline) -> bool:
        """Switch to a newer generation if there is one; True when the pipeline switched."""
        current = pipeline.model
        generation = await asyncio.to_thread(current_generation, self.settings)
        if generation is None or generation <= current.info.generation:
            return False
        if generation == self._failed_generation:
            return False  # already tried; wait for the next generation
        try:
            new = await asyncio.to_thread(self._load_generation, current)
        except Exception as exc:
            self._failed_generation = generation
            self._count("failed")
            log.error("Model reload failed; keeping the current model",
                      extra={"generation": generation, "error": f"{type(exc).__name__}: {exc}",
                             "current_generation": current.info.generation})  # fmt: skip
            return False
        pipeline.model = new
        self._count("ok")
        if self.metrics is not None:
            _export(self.metrics, new)
        log.info("Model reloaded", extra={"generation": new.info.generation, "path": new.info.path,
                 "previous_generation": current.info.generation})  # fmt: skip
        old, replaced = current.info, new.info.path != current.info.path
        del current  # queued batches keep the old model alive until they finish, then it goes
        if replaced:
            await asyncio.to_thread(self._free, old)
        return True

    def _load_generation(self, current: EmbeddingModel) -> EmbeddingModel:
        root = Path(self.settings.model_cache_path)
        state = read_cache(root, timeout=self.settings.cache_read_timeout_seconds)
        if not state.valid or state.manifest is None:
            raise ModelStoreError(f"cache not usable: {state.reason}: {state.detail}")
        entry = find_model(state.manifest, self.settings.embedding_model, kind="sbert")
        if entry is None:
            raise ModelStoreError(f"{self.settings.embedding_model!r} is not in the manifest")
        s = self.settings
        variant = choose(entry.variants, s.inference_backend, s.inference_precision)
        same = current.info.revision == entry.revision and current.info.variant == (
            variant.name if variant else ""
        )
        if current.info.source == "cache" and same:
            # Same files, new generation (another model changed): relabel, no reload.
            info = dataclasses.replace(current.info, generation=state.generation)
            return current.relabel(info)
        return load_cached(s, root, entry, state.generation, variant)

    def _free(self, old: ModelInfo) -> None:
        """Delete the old local copy (on Cloud Run it occupies memory) and collect the model.

        Safe while a last batch still encodes on it: its weights are already in memory.
        """
        copies = (Path(self.settings.local_model_dir) / "cache").resolve()
        path = Path(old.path).resolve()
        if old.source == "cache" and path.is_relative_to(copies):
            shutil.rmtree(path, ignore_errors=True)
        gc.collect()

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.model_reloads.labels(outcome).inc()


def _log_loaded(model: EmbeddingModel) -> None:
    log.info(
        "Embedding model loaded",
        extra={
            "model": model.info.name,
            "source": model.info.source,
            "generation": model.info.generation,
            "backend": model.info.backend,
            "precision": model.info.precision,
            "variant": model.info.variant,
            "streams": model.streams,
            "threads": model.threads,
            "load_seconds": round(model.load_seconds, 3),
            "warmup_seconds": round(model.warmup_seconds, 3),
            "dims": model.dims,
        },
    )


def _export(metrics: WorkerMetrics, model: EmbeddingModel) -> None:
    info = model.info
    metrics.set_model_times(info.backend, info.precision, model.load_seconds, model.warmup_seconds)
    metrics.model_generation.set(info.generation)
    metrics.model_info.info(
        {"name": info.name, "source": info.source, "generation": str(info.generation),
         "backend": info.backend, "precision": info.precision, "variant": info.variant,
         "streams": str(model.streams), "threads": str(model.threads)}
    )  # fmt: skip
