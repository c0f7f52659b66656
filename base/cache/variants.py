"""ONNX variants of a model: which files make each one, and how it scored in the quality gate.

The sync exports variants into a model's own directory (`onnx/`), gates each one against the torch
fp32 model, and writes `onnx/variants.json`; the same record travels in the model's manifest entry.
A worker reads it from the manifest (cache) or the file (a local directory) to choose what to load
and which files to copy. Only the format lives here; making and running variants is `engine`'s.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

VARIANTS_FILE = "onnx/variants.json"
BACKENDS = ("torch", "onnx")
PRECISIONS = ("fp32", "int8")
# Weight files of the torch model (and of other heads, e.g. bge-m3's colbert_linear.pt): an ONNX
# worker never reads them.
TORCH_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack")


class VariantsError(ValueError):
    """variants.json (or a manifest's `variants`) does not have the documented shape."""


@dataclass(frozen=True)
class Variant:
    name: str  # e.g. onnx-fp32, onnx-int8
    backend: str  # onnx
    precision: str  # fp32 | int8
    files: tuple[str, ...]  # relative to the model directory; the first is the model
    passed: bool  # the quality gate's verdict: `auto` serves only variants that passed
    gate: dict[str, float] = field(default_factory=dict)  # figures against torch fp32
    recipe: str = ""  # how it was made (exporter, optimisation, quantisation options)

    @property
    def model_file(self) -> str:
        return self.files[0]


@dataclass(frozen=True)
class Variants:
    export_version: int  # the exporter's version: a newer sync re-exports older records
    variants: tuple[Variant, ...]
    reference: str = ""  # what the gate compared with (torch fp32, library versions)
    calibration: str = ""  # the calibration set (name and sha256)
    gate_rule: str = ""  # the thresholds, in words
    note: str = ""  # why there are no variants (a model the exporter cannot handle)

    def to_dict(self) -> dict[str, Any]:
        body = asdict(self)
        body["variants"] = [dict(asdict(v), files=list(v.files)) for v in self.variants]
        return body

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.to_dict(), option=orjson.OPT_INDENT_2) + b"\n"

    def get(self, name: str) -> Variant | None:
        return next((v for v in self.variants if v.name == name), None)

    def passed(self) -> list[Variant]:
        return [v for v in self.variants if v.passed]


def parse_variants(raw: Any) -> Variants:
    if not isinstance(raw, dict):
        raise VariantsError("variants is not an object")
    version, items = raw.get("export_version"), raw.get("variants")
    if not isinstance(version, int) or isinstance(version, bool) or not isinstance(items, list):
        raise VariantsError("variants needs export_version (integer) and variants (list)")
    texts = {k: raw.get(k, "") for k in ("reference", "calibration", "gate_rule", "note")}
    if not all(isinstance(v, str) for v in texts.values()):
        raise VariantsError("reference, calibration, gate_rule and note must be strings")
    return Variants(version, tuple(_parse_variant(v) for v in items), **texts)


def _parse_variant(raw: Any) -> Variant:
    if not isinstance(raw, dict):
        raise VariantsError("a variant is not an object")
    name, backend, precision = raw.get("name"), raw.get("backend"), raw.get("precision")
    files, passed, gate = raw.get("files"), raw.get("passed"), raw.get("gate", {})
    if not isinstance(name, str) or backend not in BACKENDS or precision not in PRECISIONS:
        raise VariantsError(f"variant {name!r}: name, backend and precision are required")
    if not isinstance(files, list) or not files or not all(isinstance(f, str) for f in files):
        raise VariantsError(f"variant {name!r}: files must be a non-empty list of paths")
    if not isinstance(passed, bool) or not isinstance(gate, dict):
        raise VariantsError(f"variant {name!r}: passed must be a boolean and gate an object")
    figures = {k: float(v) for k, v in gate.items() if isinstance(v, int | float)}
    recipe = raw.get("recipe", "")
    return Variant(name, backend, precision, tuple(files), passed, figures,
                   recipe if isinstance(recipe, str) else "")  # fmt: skip


def read_variants(model_dir: Path) -> Variants | None:
    """A model directory's `onnx/variants.json`, or None when it has none (never exported)."""
    path = model_dir / VARIANTS_FILE
    if not path.is_file():
        return None
    try:
        return parse_variants(orjson.loads(path.read_bytes()))
    except (OSError, orjson.JSONDecodeError) as exc:
        raise VariantsError(f"{path}: {exc}") from None


def serving_files(
    files: Iterable[str], variant: Variant | None, all_variants: Sequence[Variant]
) -> list[str]:
    """The files a worker needs to serve `variant` (None: the torch model).

    Every file but the other variants' files; an ONNX variant also skips the torch weights. On
    Cloud Run local disk is memory, so copying bge-m3's 2.3 GB of fp32 weights for an int8 worker
    would cost more than the int8 model itself.
    """
    others = {f for v in all_variants if v is not variant for f in v.files}
    keep = []
    for path in files:
        if path in others or (variant is None and path.startswith("onnx/")):
            continue
        if variant is not None and path.endswith(TORCH_WEIGHT_SUFFIXES):
            continue
        keep.append(path)
    return keep
