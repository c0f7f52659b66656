"""ONNX variants for each sentence-transformers model the sync stages: reuse, or export and gate.

A staged model that already carries a current `onnx/variants.json` (a directory made by
`tabular-sync export`, synced with file://) keeps it. Otherwise, with TABULAR_SYNC_EXPORT on, the
variants are exported, quantised and gated (engine.build) into the staging directory, and their
files join the model's file list: checksummed in the manifest, copied and verified like any other.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from base import logs
from base.cache.manifest import sha256_file
from base.cache.variants import VARIANTS_FILE, Variants, VariantsError, read_variants
from engine.config import UnsupportedModel
from engine.export import ONNX_DIR
from engine.version import EXPORT_VERSION
from sync.sources import Fetched, StagedFile

log = logs.get(__name__)


def current(variants: Variants | None) -> bool:
    """Whether a record was made by this exporter version (else the sync exports again)."""
    return variants is not None and variants.export_version == EXPORT_VERSION


def add_variants(fetched: Fetched, model: str, export: bool) -> None:
    """Give a staged sbert model its variants (in place): reuse, export, or none."""
    if fetched.kind != "sbert" or not fetched.files:
        return
    root = model_dir(fetched.files[0])
    try:
        shipped = read_variants(root)
    except VariantsError as exc:
        log.warning("Ignoring a broken variants.json", extra={"model": model, "error": str(exc)})
        shipped = None
    if current(shipped) and _complete(root, shipped):
        fetched.variants = shipped
        log.info("Model ships its ONNX variants", extra={"model": model})
        return
    fetched.files = [f for f in fetched.files if not f.path.startswith("onnx/")]
    if not export:
        return
    from engine.build import build_variants  # torch, onnx: imported only to export

    try:
        variants = build_variants(root)
    except UnsupportedModel as exc:  # served by torch only; not a failure of the sync
        log.warning("No ONNX export for this model", extra={"model": model, "reason": str(exc)})
        fetched.variants = Variants(EXPORT_VERSION, (), note=f"not exported: {exc}")
        return
    fetched.files += [_staged(root, path) for path in _files(root)]
    fetched.variants = variants


def export_directory(model: str, out: Path) -> Variants:
    """`tabular-sync export`: copy a model directory to `out` (unless it is `out`), then build
    its variants there, so `TABULAR_EMBEDDING_MODEL=out` serves them with no cache."""
    from engine.build import build_variants
    from engine.config import is_packaged, packaged_model_dir

    source = packaged_model_dir() if is_packaged(model) else Path(model).expanduser()
    if not source.is_dir():
        raise FileNotFoundError(f"{model}: not a model directory (nor the packaged model name)")
    if source.resolve() != out.resolve():
        shutil.copytree(source, out, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(".git", ".cache", "onnx"))  # fmt: skip
    return build_variants(out)


def model_dir(staged: StagedFile) -> Path:
    """The staged model's root directory, from any of its files."""
    return Path(staged.staged.as_posix().removesuffix("/" + staged.path))


def _files(root: Path) -> list[str]:
    """Everything the export wrote: the variants, their tokenizer, variants.json."""
    return sorted(p.relative_to(root).as_posix() for p in (root / ONNX_DIR).rglob("*")
                  if p.is_file())  # fmt: skip


def _complete(root: Path, variants: Variants | None) -> bool:
    named = {p for v in variants.variants for p in v.files} if variants else set()
    return variants is not None and all((root / p).is_file() for p in named | {VARIANTS_FILE})


def _staged(root: Path, path: str) -> StagedFile:
    full = root / path
    return StagedFile(path, full, full.stat().st_size, sha256_file(full))
