"""Building real caches for tests: the sync as users run it, and ways to damage what it wrote."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from base.cache.manifest import MANIFEST_NAME, Manifest, read_cache
from base.cache.specs import ModelSpec
from engine.config import packaged_model_dir
from engine.pooling import normalize
from sync.run import SyncResult, commit, sync_once
from sync.settings import SyncSettings
from worker.model import EmbeddingModel
from worker.results import decode_vectors
from worker.rowtext import Cell, row_text

ROOT = Path(__file__).resolve().parent.parent
PACKAGED = packaged_model_dir()
TEXTS: list[list[Cell]] = [["Trail shoes", "great grip"], ["Office chair", "comfy"], ["Pan", None]]


def sync_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120,
             prefix: list[str] | None = None) -> subprocess.CompletedProcess[bytes]:  # fmt: skip
    """`tabular-sync ARGS` as a subprocess (the console script is `python -m sync`); `prefix`
    runs it through a wrapper (such as `setpriv`)."""
    full = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([*(prefix or []), sys.executable, "-m", "sync", *args],
                          capture_output=True, env=full, cwd=ROOT, timeout=timeout)  # fmt: skip


def build(cache: Path, export: bool = False, **models: Path | str) -> SyncResult:
    """In-process `tabular-sync once` of file:// directories (or full URIs) into `cache`.

    ONNX export is off unless asked for: it takes a minute per model, and most cache tests are
    about the cache, not the variants (tests/test_sync_export.py covers those).
    """
    specs = [ModelSpec(name, f"file://{src}" if isinstance(src, Path) else src)
             for name, src in models.items()]  # fmt: skip
    settings = SyncSettings.from_env({}, model_cache_path=str(cache), sync_export=export)
    result = sync_once(cache, specs, settings)
    assert result.ok, result
    return result


def copy_model(dest: Path, src: Path = PACKAGED) -> Path:
    shutil.copytree(src, dest)
    return dest


def manifest(cache: Path) -> Manifest:
    state = read_cache(cache, retry_delay=0)
    assert state.manifest is not None, state
    return state.manifest


def model_file(cache: Path, rel: str, model: str = "minilm") -> Path:
    entry = next(m for m in manifest(cache).models if m.name == model)
    return cache / entry.location / rel


def recommit(cache: Path, edited: Manifest) -> None:
    """Commit a hand-edited manifest properly (matching .done), as a sync would."""
    commit(cache, edited, cache / ".tmp" / "test-commit")


def rewrite_manifest_raw(cache: Path, edit: Any) -> None:
    """Edit manifest.json's JSON without touching .done (what a torn or tampered write leaves)."""
    body = orjson.loads((cache / MANIFEST_NAME).read_bytes())
    edit(body)
    (cache / MANIFEST_NAME).write_bytes(orjson.dumps(body, option=orjson.OPT_INDENT_2))


def files_under(path: Path) -> dict[str, int]:
    return {p.relative_to(path).as_posix(): p.stat().st_size for p in path.rglob("*")
            if p.is_file()}  # fmt: skip


def embed_job(job_id: str = "job-1") -> bytes:
    return orjson.dumps({"job_id": job_id, "type": "embed",
                         "table": {"columns": ["product", "note"], "rows": TEXTS}})  # fmt: skip


def assert_correct_embeddings(result: dict[str, Any], reference: EmbeddingModel) -> None:
    """The vectors a job got are the packaged MiniLM's, so a wrong or corrupt model fails."""
    assert result["status"] == "ok", result
    got = decode_vectors(result["embeddings"])
    texts = [row_text(["product", "note"], row) for row in TEXTS]
    want = normalize(reference.encode(texts)[0])
    cosines = (got * want).sum(axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cosines.min() > 0.999, cosines
