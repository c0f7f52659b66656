"""Where models come from: hf://org/name[@rev], ollama://name[:tag], file://PATH.

A source fetches a model into its private staging directory and reports each file's sha256,
computed while the bytes were written (or, for a hub snapshot, read once right after). Each
source also has a cheap identity (hub commit, Ollama manifest digest, file sizes and mtimes):
when it matches the previous generation's, nothing is fetched or read at all.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson

from base import logs
from base.cache.copy import copy_hashing
from base.cache.manifest import TMP_DIR, ModelEntry, check_relative, sha256_bytes, sha256_file
from base.cache.specs import HF_IGNORE, SpecError, parse_uri
from base.cache.variants import Variants
from sync.settings import SyncSettings

log = logs.get(__name__)
_PROGRESS_EVERY = 2.0


class SourceError(RuntimeError):
    """The source could not deliver the model (unreachable, missing, or inconsistent)."""


@dataclass(frozen=True)
class StagedFile:
    path: str  # relative to the model's root
    staged: Path  # where it lies now, under the run's staging directory
    size: int
    sha256: str


@dataclass
class Fetched:
    kind: str
    revision: str  # "" lets the caller use the tree digest
    fingerprint: str
    files: list[StagedFile] = field(default_factory=list)
    unchanged: bool = False  # identical to the previous entry: reuse it, nothing was fetched
    variants: Variants | None = None  # ONNX variants staged with it (sync.variants)

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self.files)


@dataclass(frozen=True)
class FetchContext:
    root: Path  # the cache root
    staging: Path  # this model's private staging directory
    previous: ModelEntry | None  # the entry in the last committed generation, when intact
    settings: SyncSettings


class Source(Protocol):
    @property
    def uri(self) -> str: ...

    def fetch(self, ctx: FetchContext) -> Fetched: ...


def parse_source(uri: str) -> Source:
    try:
        parsed = parse_uri(uri)
    except SpecError as exc:
        raise SourceError(str(exc)) from None
    if parsed.scheme == "file":
        return FileSource(uri, parsed.path)
    if parsed.scheme == "hf":
        return HfSource(uri, parsed.target, parsed.revision)
    return OllamaSource(uri, parsed.target)


def _unchanged(ctx: FetchContext, uri: str, **identity: str) -> bool:
    prev = ctx.previous
    return (
        prev is not None
        and prev.source == uri
        and all(getattr(prev, key) == value for key, value in identity.items())
    )


# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileSource:
    """A local directory (air-gapped installs): a sentence-transformers model or an Ollama store."""

    uri: str
    path: Path

    def fetch(self, ctx: FetchContext) -> Fetched:
        if not self.path.is_dir():
            raise SourceError(f"{self.uri}: {self.path} is not a directory")
        found = list(_walk(self.path))
        if not found:
            raise SourceError(f"{self.uri}: no files")
        lines = (f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n" for rel, _, st in found)
        fingerprint = sha256_bytes("".join(lines).encode())
        is_store = (self.path / "manifests").is_dir() and (self.path / "blobs").is_dir()
        kind = "ollama" if is_store else "sbert"
        if _unchanged(ctx, self.uri, fingerprint=fingerprint):
            return Fetched(kind, ctx.previous.revision if ctx.previous else "", fingerprint,
                           unchanged=True)  # fmt: skip
        files = [_stage_copy(src, rel, ctx.staging) for rel, src, _ in found]
        return Fetched(kind, "", fingerprint, files)


def _walk(top: Path) -> list[tuple[str, Path, os.stat_result]]:
    """Regular files (symlinks followed), sorted; dot-directories such as .git/.cache skipped."""
    found = []
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            full = Path(dirpath) / name
            st = full.stat()
            if stat.S_ISREG(st.st_mode):
                found.append((full.relative_to(top).as_posix(), full, st))
    return sorted(found, key=lambda item: item[0])


def _stage_copy(src: Path, rel: str, staging: Path) -> StagedFile:
    check_relative(rel)
    size, digest = copy_hashing(src, staging / rel)
    log.info("File staged", extra={"file": rel, "bytes": size})
    return StagedFile(rel, staging / rel, size, digest)


# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HfSource:
    """A Hugging Face hub repository at a branch, tag or commit (HF_ENDPOINT, HF_TOKEN apply)."""

    uri: str
    repo: str
    revision: str

    def fetch(self, ctx: FetchContext) -> Fetched:
        from huggingface_hub import HfApi, snapshot_download

        endpoint = os.environ.get("HF_ENDPOINT") or None
        try:
            info = HfApi(endpoint=endpoint).model_info(
                self.repo, revision=self.revision, files_metadata=True
            )
        except Exception as exc:  # the hub raises many types; all mean "cannot fetch"
            raise SourceError(f"{self.uri}: {type(exc).__name__}: {exc}") from None
        commit = str(info.sha)
        if _unchanged(ctx, self.uri, revision=commit):
            return Fetched("sbert", commit, commit, unchanged=True)
        siblings = list(info.siblings or [])
        names = [s.rfilename for s in siblings]
        expected = {s.rfilename: s.lfs.sha256 for s in siblings if getattr(s, "lfs", None)}
        ignore = HF_IGNORE + (["*.bin"] if any(n.endswith(".safetensors") for n in names) else [])
        target = ctx.staging / "snapshot"
        log.info("Downloading", extra={"source": self.uri, "commit": commit, "files": len(names)})
        try:
            snapshot_download(
                self.repo, revision=commit, local_dir=target, ignore_patterns=ignore,
                endpoint=endpoint,
            )  # fmt: skip
        except Exception as exc:
            raise SourceError(f"{self.uri}: download failed: {type(exc).__name__}: {exc}") from None
        files = [_hashed(src, rel, expected.get(rel)) for rel, src, _ in _walk(target)]
        return Fetched("sbert", commit, commit, files)


def _hashed(path: Path, rel: str, expected: str | None) -> StagedFile:
    check_relative(rel)
    digest = sha256_file(path)
    if expected and digest != expected:
        raise SourceError(f"{rel}: downloaded sha256 {digest[:12]}, the hub says {expected[:12]}")
    size = path.stat().st_size
    log.info("File staged", extra={"file": rel, "bytes": size})
    return StagedFile(rel, path, size, digest)


# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OllamaSource:
    """A model an Ollama server pulls into its store (TABULAR_SYNC_OLLAMA_MODELS), then copied.

    The server is not started here: run it beside the sync with OLLAMA_MODELS pointing at the
    staging store and OLLAMA_NOPRUNE=1 (see docs/cache.md).
    """

    uri: str
    model: str  # name:tag

    def fetch(self, ctx: FetchContext) -> Fetched:
        host = ctx.settings.sync_ollama_host or ctx.settings.ollama_host
        store = store_dir(ctx.root, ctx.settings)
        self._pull(host)
        rel_manifest = ollama_manifest_path(self.model)
        try:
            data = (store / rel_manifest).read_bytes()
            layers = _ollama_digests(orjson.loads(data))
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise SourceError(
                f"{self.uri}: pulled, but {store / rel_manifest} is missing or unreadable ({exc}): "
                "is TABULAR_SYNC_OLLAMA_MODELS the server's OLLAMA_MODELS?"
            ) from None
        os.utime(store)  # in use: the .tmp/ clean-up keeps it
        revision = "sha256:" + sha256_bytes(data)
        if _unchanged(ctx, self.uri, revision=revision):
            return Fetched("ollama", revision, revision, unchanged=True)
        files = [_stage_copy(store / rel_manifest, rel_manifest, ctx.staging)]
        for digest in layers:
            rel = "blobs/" + digest.replace(":", "-")
            staged = _stage_copy(store / rel, rel, ctx.staging)
            if "sha256:" + staged.sha256 != digest:
                raise SourceError(f"{self.uri}: blob {digest} does not match its own digest")
            files.append(staged)
        return Fetched("ollama", revision, revision, files)

    def _pull(self, host: str) -> None:
        from ollama import Client, ResponseError

        last = 0.0
        try:
            for event in Client(host=host).pull(self.model, stream=True):
                now = time.monotonic()
                if now - last >= _PROGRESS_EVERY or event.status in ("success",):
                    last = now
                    log.info("Pull progress", extra=_progress(self.model, event))
        except ResponseError as exc:
            raise SourceError(f"{self.uri}: Ollama refused the pull: {exc.error}") from None
        except Exception as exc:  # connection errors come as httpx/OS errors
            raise SourceError(
                f"{self.uri}: Ollama at {host}: {type(exc).__name__}: {exc}"
            ) from None


def _progress(model: str, event: Any) -> dict[str, Any]:
    return {"model": model, "status": event.status, "completed": event.completed,
            "total": event.total}  # fmt: skip


def store_dir(root: Path, settings: SyncSettings) -> Path:
    return Path(settings.sync_ollama_models or root / TMP_DIR / "ollama-store")


def ollama_manifest_path(model: str) -> str:
    """Where Ollama keeps a model's manifest: manifests/<registry>/<namespace>/<name>/<tag>."""
    name, _, tag = model.rpartition(":") if ":" in model.rsplit("/", 1)[-1] else (model, "", "")
    parts = name.split("/")
    if len(parts) == 1:
        parts = ["registry.ollama.ai", "library", *parts]
    elif len(parts) == 2:
        parts = ["registry.ollama.ai", *parts]
    rel = "/".join(["manifests", *parts, tag or "latest"])
    check_relative(rel)
    return rel


def _ollama_digests(manifest: dict[str, Any]) -> list[str]:
    digests = [layer["digest"] for layer in manifest["layers"]]
    if manifest.get("config"):
        digests.insert(0, manifest["config"]["digest"])
    for digest in digests:
        if not isinstance(digest, str) or not digest.startswith("sha256:") or len(digest) != 71:
            raise KeyError(f"bad digest {digest!r}")
    return list(dict.fromkeys(digests))
