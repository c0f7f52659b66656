"""The cache's manifest: its format, reading it safely, checking a cache against it.

Layout under the cache root (see docs/cache.md):

    manifest.json           the current generation: every model and every file, with sha256
    manifest.previous.json  the generation before it (what garbage collection must keep)
    .done                   {"generation", "manifest_sha256"}: written last, the commit point
    sync-status.json        outcome of the last sync runs (for alerts)
    sbert/<name>/<tree>/    sentence-transformers model files
    ollama/<name>/<tree>/   an OLLAMA_MODELS store holding one model (manifests/ + blobs/)
    .tmp/                   staging of running syncs

`<tree>` is derived from the model's file list and checksums (content addressing), so a new
generation never rewrites a file an older manifest points to: a reader holding an old manifest
keeps reading consistent files while a sync publishes the next one.

Everything here is cheap and dependency-free: the worker imports it at start.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, TypeGuard

import orjson

from base.cache.reads import READ_TIMEOUT, Stalled, Watch, open_regular, read_small, run_watched
from base.cache.reads import with_deadline as _with_deadline
from base.cache.variants import Variants, VariantsError, parse_variants

MANIFEST_VERSION = 1
MANIFEST_NAME = "manifest.json"
PREVIOUS_NAME = "manifest.previous.json"  # the generation before the committed one (for GC)
DONE_NAME = ".done"
STATUS_NAME = "sync-status.json"
LOCK_NAME = "sync.lock"
TMP_DIR = ".tmp"
KINDS = ("sbert", "ollama")

HIT = "hit"
# Why a cache could not be used. Metrics labels and alerts use these exact strings.
MISS_REASONS = (
    "disabled",
    "no_mount",
    "no_done",
    "manifest_unreadable",
    "digest_mismatch",
    "generation_mismatch",
    "model_not_in_manifest",
    "checksum_mismatch",
    "load_failed",
    "read_timeout",
    "file_unreadable",
    "insufficient_space",
)
# Size bounds of the small files (a .done of gigabytes, or /dev/zero, is not a marker).
MAX_DONE_BYTES = 64 << 10
MAX_MANIFEST_BYTES = 64 << 20
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_READ_BLOCK = 1 << 20


class ManifestError(ValueError):
    """manifest.json or .done does not have the documented shape."""


class UnsafePath(ValueError):
    """A manifest path that could reach outside the cache root."""


@dataclass(frozen=True)
class FileEntry:
    path: str  # relative to the model's location
    size: int
    sha256: str


@dataclass(frozen=True)
class ModelEntry:
    name: str
    kind: str  # sbert | ollama
    source: str  # the URI it was synced from
    revision: str  # hub commit, Ollama manifest digest, or the tree digest for file://
    location: str  # directory relative to the cache root
    files: tuple[FileEntry, ...]
    fingerprint: str = ""  # the source's identity at sync time (skips unchanged sources)
    variants: Variants | None = None  # ONNX variants exported into the tree, with gate figures

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def tree(self) -> str:
        return tree_digest(self.files)


@dataclass(frozen=True)
class Manifest:
    generation: int
    created: str
    models: tuple[ModelEntry, ...]
    version: int = MANIFEST_VERSION

    def to_bytes(self) -> bytes:
        return orjson.dumps(_manifest_dict(self), option=orjson.OPT_INDENT_2) + b"\n"

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        try:
            raw = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise ManifestError(f"manifest.json is not JSON: {exc}") from None
        return _parse_manifest(raw)


@dataclass(frozen=True)
class Done:
    generation: int
    manifest_sha256: str

    def to_bytes(self) -> bytes:
        body = {"generation": self.generation, "manifest_sha256": self.manifest_sha256}
        return orjson.dumps(body) + b"\n"


@dataclass(frozen=True)
class CacheState:
    """The outcome of reading a cache: a committed manifest (reason "hit"), or why not."""

    reason: str
    manifest: Manifest | None = None
    done: Done | None = None
    detail: str = ""

    @property
    def valid(self) -> bool:
        return self.reason == HIT

    @property
    def generation(self) -> int:
        return self.manifest.generation if self.manifest is not None and self.valid else 0


@dataclass(frozen=True)
class Problem:
    path: str
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


# ---------------------------------------------------------------------------------------------
# paths


def safe_path(root: Path, rel: str) -> Path:
    """`root/rel`, refusing anything that could leave the cache root.

    Manifests travel through shared storage: a hostile or corrupt one must not make a reader
    open /etc/passwd or write outside the cache, including through a symlink inside it.
    """
    check_relative(rel)
    full = root / rel
    try:
        inside = full.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError) as exc:  # a symlink loop (RuntimeError on Python 3.11)
        raise UnsafePath(f"{rel!r} cannot be resolved: {exc}") from None
    if not inside:
        raise UnsafePath(f"{rel!r} resolves outside the cache root")
    return full


def check_relative(rel: str) -> None:
    """Syntactic half of `safe_path`: no absolute paths, `..`, empty parts or odd characters."""
    if not rel or "\x00" in rel or "\\" in rel:
        raise UnsafePath(f"{rel!r} is not a clean relative path")
    if PurePosixPath(rel).is_absolute() or rel.startswith("/"):
        raise UnsafePath(f"{rel!r} is absolute")
    if any(part in ("", ".", "..") for part in rel.split("/")):
        raise UnsafePath(f"{rel!r} has an empty, '.' or '..' component")


def model_location(kind: str, name: str, tree: str) -> str:
    """Content-addressed directory: equal content maps to the same place, new content elsewhere."""
    slug = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    return f"{kind}/{slug}/{tree[:16]}"


# ---------------------------------------------------------------------------------------------
# checksums


def sha256_file(path: Path, watch: Watch | None = None) -> str:
    """sha256 of a regular file (a FIFO or device is refused); `watch` sees every block read."""
    digest = hashlib.sha256()
    fd = open_regular(path)
    try:
        while block := os.read(fd, _READ_BLOCK):
            digest.update(block)
            if watch is not None:
                watch.tick()
    finally:
        os.close(fd)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tree_digest(files: Iterable[FileEntry]) -> str:
    """One digest for a file list, in `sha256sum` line format so it can be checked by hand."""
    lines = sorted(f"{f.sha256}  {f.path}\n" for f in files)
    return sha256_bytes("".join(lines).encode())


# ---------------------------------------------------------------------------------------------
# reading


def read_done(root: Path, timeout: float = READ_TIMEOUT) -> Done | None:
    """The committed generation marker, or None when missing, malformed or unreadable in time
    (cheap: one small read). Hot reload polls this alone; the manifest is read only when the
    generation moves."""
    return _read_done(root, timeout)[0]


def _read_done(root: Path, timeout: float) -> tuple[Done | None, str, str]:
    """(marker, reason, detail): reason is "" with a marker, else no_done or read_timeout."""
    try:
        raw = orjson.loads(read_small(root / DONE_NAME, MAX_DONE_BYTES, timeout))
        generation, digest = raw["generation"], raw["manifest_sha256"]
    except Stalled as exc:
        return None, "read_timeout", str(exc)
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError) as exc:
        return None, "no_done", f"{DONE_NAME} is missing or malformed: {_why(exc)}"
    if not _is_int(generation) or not isinstance(digest, str) or not _SHA256.match(digest):
        return None, "no_done", f"{DONE_NAME} is malformed"
    return Done(int(generation), digest), "", ""


def read_cache(root: Path, retry_delay: float = 0.1, timeout: float = READ_TIMEOUT) -> CacheState:
    """Check `.done` against manifest.json; a mismatch is re-read once after `retry_delay`.

    A sync commits by writing manifest.json, then .done: a reader landing between the two sees a
    mismatch for a moment, which the re-read resolves. A mismatch that persists is a real miss.
    Every read is bounded (`timeout` without progress is `read_timeout`) and sized: this always
    returns, with a state.
    """
    state = _read_cache_once(root, timeout)
    if state.reason in ("generation_mismatch", "digest_mismatch") and retry_delay > 0:
        time.sleep(retry_delay)
        state = _read_cache_once(root, timeout)
    return state


def _read_cache_once(root: Path, timeout: float) -> CacheState:
    try:
        is_dir = _with_deadline(root.is_dir, timeout, f"looking at {root}")
    except Stalled as exc:
        return CacheState("read_timeout", detail=str(exc))
    if not is_dir:
        return CacheState("no_mount", detail=f"{root} is not a directory")
    done, reason, detail = _read_done(root, timeout)
    if done is None:
        return CacheState(reason, detail=detail)
    try:
        data = read_small(root / MANIFEST_NAME, MAX_MANIFEST_BYTES, timeout)
        manifest = Manifest.from_bytes(data)
    except Stalled as exc:
        return CacheState("read_timeout", done=done, detail=str(exc))
    except (OSError, ManifestError, UnsafePath) as exc:
        return CacheState("manifest_unreadable", done=done, detail=_why(exc))
    if manifest.generation != done.generation:
        detail = f"{DONE_NAME} names generation {done.generation}, manifest has "
        detail += str(manifest.generation)
        return CacheState("generation_mismatch", manifest, done, detail)
    actual = sha256_bytes(data)
    if actual != done.manifest_sha256:
        detail = f"manifest sha256 {actual[:12]}, {DONE_NAME} expects {done.manifest_sha256[:12]}"
        return CacheState("digest_mismatch", manifest, done, detail)
    return CacheState(HIT, manifest, done)


def _why(exc: BaseException) -> str:
    return exc.strerror or str(exc) if isinstance(exc, OSError) else str(exc)


def read_previous(root: Path, timeout: float = READ_TIMEOUT) -> Manifest | None:
    """The manifest committed before the current one (None: missing, unreadable, or a cache
    written before the sync kept it). Only garbage collection reads it."""
    try:
        return Manifest.from_bytes(read_small(root / PREVIOUS_NAME, MAX_MANIFEST_BYTES, timeout))
    except (OSError, ManifestError, UnsafePath):
        return None


def find_model(manifest: Manifest, name: str, kind: str | None = None) -> ModelEntry | None:
    """The entry a configured model name refers to.

    Matches the sync's name for it first, then its source (`org/name` of an hf:// source, its last
    part, or the `name:tag` of an ollama:// source), so TABULAR_EMBEDDING_MODEL=BAAI/bge-m3 finds
    a model synced as `bge=hf://BAAI/bge-m3`.
    """
    candidates = [m for m in manifest.models if kind is None or m.kind == kind]
    for model in candidates:
        if model.name == name:
            return model
    for model in candidates:
        if name in _source_aliases(model.source):
            return model
    return None


def _source_aliases(source: str) -> set[str]:
    scheme, _, rest = source.partition("://")
    if scheme == "hf":
        repo = rest.partition("@")[0]
        return {repo, repo.rsplit("/", 1)[-1]}
    if scheme == "ollama":
        return {rest, rest.partition(":")[0]} if rest.endswith(":latest") else {rest}
    return set()


# ---------------------------------------------------------------------------------------------
# verifying


def verify(root: Path, readers: int = 4, timeout: float = READ_TIMEOUT) -> list[Problem]:
    """Every problem with a cache: marker, manifest, and each file's presence, size and sha256.

    Reads every byte (in parallel across files): this is the full check `tabular-sync verify`
    runs, not the cheap one a worker does at start. Whatever a file is (a FIFO, a symlink loop, a
    file it may not read) it becomes a problem line; a read stalled for `timeout` ends the check.
    """
    state = read_cache(root, retry_delay=0, timeout=timeout)
    problems: list[Problem] = []
    if state.reason != HIT:
        problems.append(Problem(".", f"{state.reason}: {state.detail}"))
    manifest = state.manifest
    if manifest is None:
        return problems
    names = [m.name for m in manifest.models]
    problems += [Problem(MANIFEST_NAME, f"model {n!r} listed twice") for n in _dupes(names)]
    found: list[list[Problem]] = []
    tasks = [
        lambda watch, m=m, f=f: found.append(_check_file(root, m, f, watch))
        for m in manifest.models
        for f in m.files
    ]
    try:
        run_watched(tasks, readers, timeout, "verifying model files")
    except Stalled as exc:
        problems.append(Problem(".", f"read_timeout: {exc}"))
    return problems + [p for group in found for p in group]


def _check_file(root: Path, model: ModelEntry, entry: FileEntry, watch: Watch) -> list[Problem]:
    rel = f"{model.location}/{entry.path}"
    try:
        path = safe_path(root, rel)
        size = path.stat().st_size
    except UnsafePath as exc:
        return [Problem(rel, str(exc))]
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (Python 3.11)
        return [Problem(rel, f"missing or unreachable ({_why(exc)})")]
    if size != entry.size:
        return [Problem(rel, f"size {size}, manifest says {entry.size}")]
    try:
        actual = sha256_file(path, watch)
    except Stalled:
        raise
    except OSError as exc:
        return [Problem(rel, f"unreadable ({_why(exc)})")]
    if actual != entry.sha256:
        return [Problem(rel, f"sha256 {actual[:12]}, manifest says {entry.sha256[:12]}")]
    return []


def _dupes(items: Sequence[str]) -> list[str]:
    return sorted(item for item, count in Counter(items).items() if count > 1)


# ---------------------------------------------------------------------------------------------
# (de)serialising


def _manifest_dict(manifest: Manifest) -> dict[str, Any]:
    return {
        "version": manifest.version,
        "generation": manifest.generation,
        "created": manifest.created,
        "models": [
            {
                "name": m.name,
                "kind": m.kind,
                "source": m.source,
                "revision": m.revision,
                "location": m.location,
                "tree": m.tree,
                "size": m.size,
                "fingerprint": m.fingerprint,
                "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in m.files],
                **({"variants": m.variants.to_dict()} if m.variants is not None else {}),
            }
            for m in manifest.models
        ],
    }


def _parse_manifest(raw: Any) -> Manifest:
    if not isinstance(raw, dict):
        raise ManifestError("manifest.json is not an object")
    version = raw.get("version")
    if version != MANIFEST_VERSION:
        raise ManifestError(f"manifest version {version!r} is not {MANIFEST_VERSION}")
    generation, created, models = raw.get("generation"), raw.get("created"), raw.get("models")
    if not _is_int(generation) or generation < 1:
        raise ManifestError("generation must be a positive integer")
    if not isinstance(created, str) or not isinstance(models, list):
        raise ManifestError("created must be a string and models a list")
    return Manifest(int(generation), created, tuple(_parse_model(m) for m in models))


def _parse_model(raw: Any) -> ModelEntry:
    if not isinstance(raw, dict):
        raise ManifestError("a model entry is not an object")
    text = {k: raw.get(k) for k in ("name", "kind", "source", "revision", "location")}
    if not all(isinstance(v, str) for v in text.values()):
        raise ManifestError(f"model entry fields must be strings: {text}")
    name, kind, location = str(text["name"]), str(text["kind"]), str(text["location"])
    if not _NAME.match(name):
        raise ManifestError(f"model name {name!r} is not allowed")
    if kind not in KINDS:
        raise ManifestError(f"model {name!r}: kind {kind!r} is not one of {KINDS}")
    check_relative(location)
    files = raw.get("files")
    if not isinstance(files, list) or not files:
        raise ManifestError(f"model {name!r} lists no files")
    entries = tuple(_parse_file(name, f) for f in files)
    fingerprint = raw.get("fingerprint", "")
    variants = None
    if raw.get("variants") is not None:
        try:
            variants = parse_variants(raw["variants"])
        except VariantsError as exc:
            raise ManifestError(f"model {name!r}: {exc}") from None
        listed = {f.path for f in entries}
        missing = sorted({p for v in variants.variants for p in v.files} - listed)
        if missing:
            raise ManifestError(f"model {name!r}: variant files not in its file list: {missing}")
    return ModelEntry(
        name, kind, str(text["source"]), str(text["revision"]), location, entries,
        fingerprint if isinstance(fingerprint, str) else "", variants,
    )  # fmt: skip


def _parse_file(model: str, raw: Any) -> FileEntry:
    if not isinstance(raw, dict):
        raise ManifestError(f"model {model!r}: a file entry is not an object")
    path, size, digest = raw.get("path"), raw.get("size"), raw.get("sha256")
    if not isinstance(path, str) or not _is_int(size) or size < 0:
        raise ManifestError(f"model {model!r}: file entry needs path and size: {raw}")
    if not isinstance(digest, str) or not _SHA256.match(digest):
        raise ManifestError(f"model {model!r}: {path}: sha256 must be 64 hex digits")
    check_relative(path)
    return FileEntry(path, int(size), digest)


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)
