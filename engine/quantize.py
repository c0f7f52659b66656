"""int8 variants of an exported fp32 model, by recipe.

Measured here (docs/engine.md): onnxruntime's default dynamic quantisation (all MatMuls, int8
weights per tensor, activations quantised per tensor at run time) is fast and visibly worse
(mean cosine 0.95 on MiniLM). The recipes below are the ones that came closest to the fp32 answers
at the best speed; each is gated like any variant, and the fastest that passes is served.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.config import ModelConfig
from engine.export import FP32_FILE, ONNX_DIR, Exported


@dataclass(frozen=True)
class Recipe:
    name: str  # the variant's name
    description: str  # recorded in variants.json
    kind: str  # blocked | dynamic
    options: dict[str, Any]


RECIPES = (
    Recipe(
        "onnx-int8-blocked",
        "MatMulNBits: int8 weights in blocks of 32 (symmetric), int8 activations per block "
        "(accuracy level 4); embeddings, attention softmax and layer norms stay fp32",
        "blocked",
        {"bits": 8, "block_size": 32, "accuracy_level": 4},
    ),
    Recipe(
        "onnx-int8-dynamic",
        "quantize_dynamic: MatMul weights uint8 per channel, activations uint8 per tensor at run "
        "time; the FFN down-projections (the largest activations) stay fp32",
        "dynamic",
        {"per_channel": True, "exclude": "ffn_down"},
    ),
)


def quantize(config: ModelConfig, fp32: Exported, recipe: Recipe) -> Exported:
    """Write `onnx/<recipe>.onnx` (+ external data for large models) from the fp32 export."""
    source = config.path / FP32_FILE
    target = config.path / ONNX_DIR / f"{recipe.name.removeprefix('onnx-')}.onnx"
    large = len(fp32.files) > 1
    if recipe.kind == "blocked":
        _blocked(source, target, large, **recipe.options)
    else:
        _dynamic(source, target, large, **recipe.options)
    rel = target.relative_to(config.path).as_posix()
    files = (rel, f"{rel}_data") if (target.with_name(target.name + "_data")).exists() else (rel,)
    return Exported(recipe.name, "int8", files, recipe.description)


def _blocked(source: Path, target: Path, large: bool, **options: Any) -> None:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model = onnx.load(str(source), load_external_data=True)
    quantizer = MatMulNBitsQuantizer(model, is_symmetric=True, **options)
    quantizer.process()
    _save(quantizer.model.model, target, large)


def _dynamic(source: Path, target: Path, large: bool, per_channel: bool, exclude: str) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(source), load_external_data=False).graph
    skipped = _ffn_down(graph) if exclude == "ffn_down" else []
    quantize_dynamic(
        str(source), str(target), op_types_to_quantize=["MatMul"], per_channel=per_channel,
        weight_type=QuantType.QUInt8, nodes_to_exclude=skipped, use_external_data_format=large,
        extra_options={"MatMulConstBOnly": True},
    )  # fmt: skip


def _ffn_down(graph: Any) -> list[str]:
    """Each layer's FFN down-projection (`encoder.layer.N.output.dense` in BERT and XLM-R
    exports, as opposed to `...attention.output.dense`)."""
    pattern = re.compile(r"layer\.\d+/output/dense/MatMul")
    return [n.name for n in graph.node if n.op_type == "MatMul" and pattern.search(n.name)]


def _save(model: Any, target: Path, large: bool) -> None:
    import onnx

    for stale in (target, target.with_name(target.name + "_data")):
        stale.unlink(missing_ok=True)
    if large:
        onnx.save_model(model, str(target), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=target.name + "_data",
                        size_threshold=1024)  # fmt: skip
    else:
        onnx.save_model(model, str(target))
