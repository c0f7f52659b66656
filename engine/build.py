"""Making a model's variants: export fp32, quantise to int8, gate each against torch fp32.

`build_variants(model_dir)` writes `onnx/` into the model directory (the sync's staging copy, or
the output of `tabular-sync export`) and returns the record it also writes to
`onnx/variants.json`. Every variant is kept, passed or not; `auto` serves only those that passed.
"""

from __future__ import annotations

import time
from pathlib import Path

from base import logs
from base.cache.variants import VARIANTS_FILE, Variant, Variants
from engine.config import read_config
from engine.encoder import Encoder, OnnxEncoder, TorchEncoder
from engine.export import Exported, export_fp32, remove_exports
from engine.gate import (
    CALIBRATION,
    RULE,
    Calibration,
    Reference,
    answers,
    figures,
    load_calibration,
    passes,
)
from engine.quantize import RECIPES, fuse, quantize, remove_fused
from engine.version import EXPORT_VERSION

log = logs.get(__name__)


def build_variants(model_dir: Path, calibration: Path = CALIBRATION) -> Variants:
    """Export, quantise and gate; raises UnsupportedModel for a model the engine cannot run."""
    config = read_config(model_dir)
    data = load_calibration(calibration)
    remove_exports(model_dir)
    started = time.perf_counter()
    torch_encoder = TorchEncoder(model_dir)
    reference = answers(_warm(torch_encoder), data)
    del torch_encoder
    made = [export_fp32(config)]
    fused = fuse(config)
    try:
        made += [quantize(config, fused, recipe) for recipe in RECIPES]
    finally:
        remove_fused(config)
    variants = tuple(_gated(model_dir, exported, reference, data) for exported in made)
    import sentence_transformers
    import torch

    record = Variants(
        EXPORT_VERSION, variants, calibration=data.name, gate_rule=RULE,
        reference=f"torch {torch.__version__} fp32, sentence-transformers "
        f"{sentence_transformers.__version__}",
    )  # fmt: skip
    (model_dir / VARIANTS_FILE).write_bytes(record.to_bytes())
    log.info("ONNX variants built", extra={
        "model_dir": str(model_dir), "seconds": round(time.perf_counter() - started, 1),
        "variants": {v.name: {"passed": v.passed, **v.gate} for v in variants},
    })  # fmt: skip
    return record


def _gated(model_dir: Path, exported: Exported, reference: Reference, data: Calibration) -> Variant:
    encoder = OnnxEncoder(model_dir, exported.files[0], exported.precision)
    gate = figures(reference, answers(_warm(encoder), data))
    verdict = passes(exported.precision, gate)
    return Variant(exported.name, "onnx", exported.precision, exported.files, verdict, gate,
                   exported.recipe)  # fmt: skip


def _warm(encoder: Encoder) -> Encoder:
    encoder.encode(["warm up", "a second, longer row to warm up with"])
    return encoder
