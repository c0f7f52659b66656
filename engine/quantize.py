"""int8 variants of an exported fp32 model, by recipe.

Measured here (docs/benchmarks.md, AVX2 without VNNI): onnxruntime's default dynamic
quantisation (every MatMul, weights per tensor) is fast and visibly worse (mean cosine 0.95 on
MiniLM); per-channel weights recover most of it, and what remains comes from quantising
activations per tensor, which flips zero-shot and few-shot labels near ties. Block-wise int8
(MatMulNBits) keeps the answers but runs no faster than fp32 on this CPU. Both recipes are made
and gated; `auto` serves whichever passed and measured fastest, fp32 included.

Both start from onnxruntime's transformer optimizer output (attention, skip layer norm and GELU
fused), which lets the dynamic recipe quantise Q, K and V as one GEMM (`QAttention`).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from engine.config import ModelConfig
from engine.export import FP32_FILE, ONNX_DIR, Exported, save_external

FUSED_FILE = f"{ONNX_DIR}/_fused.onnx"  # an intermediate, removed by `remove_fused`


@dataclass(frozen=True)
class Recipe:
    name: str  # the variant's name
    description: str  # recorded in variants.json
    kind: str  # dynamic | blocked


RECIPES = (
    Recipe(
        "onnx-int8",
        "quantize_dynamic of the fused graph: MatMul and Attention weights int8 per channel "
        "(reduce_range), activations int8 per tensor at run time; embeddings, softmax and layer "
        "norms stay fp32",
        "dynamic",
    ),
    Recipe(
        "onnx-int8-blocked",
        "MatMulNBits of the fused graph: int8 weights in symmetric blocks of 32, int8 activations "
        "per block (accuracy level 4)",
        "blocked",
    ),
)


def fuse(config: ModelConfig) -> Path:
    """The fp32 export with onnxruntime's transformer fusions, saved for the recipes."""
    from onnxruntime.transformers.optimizer import optimize_model

    hf = orjson.loads((config.transformer_path / "config.json").read_bytes())
    optimized = optimize_model(
        str(config.path / FP32_FILE), model_type="bert", opt_level=0,
        num_heads=int(hf["num_attention_heads"]), hidden_size=int(hf["hidden_size"]),
    )  # fmt: skip
    target = config.path / FUSED_FILE
    # (its own save: it declares the com.microsoft opset the fused operators need)
    optimized.save_model_to_file(str(target), use_external_data_format=True,
                                 all_tensors_to_one_file=True)  # fmt: skip
    return target


def quantize(config: ModelConfig, fused: Path, recipe: Recipe) -> Exported:
    """Write `onnx/<name>.onnx` + `_data` from the fused fp32 graph."""
    target = config.path / ONNX_DIR / f"{recipe.name.removeprefix('onnx-')}.onnx"
    if recipe.kind == "blocked":
        _blocked(fused, target)
    else:
        _dynamic(fused, target)
    rel = target.relative_to(config.path).as_posix()
    return Exported(recipe.name, "int8", (rel, f"{rel}_data"), recipe.description)


def remove_fused(config: ModelConfig) -> None:
    fused = config.path / FUSED_FILE
    for path in fused.parent.glob(fused.name + "*"):  # the graph and its data file
        path.unlink()


def _dynamic(source: Path, target: Path) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    scratch = target.with_name(target.stem + "-tmp.onnx")
    quantize_dynamic(
        str(source), str(scratch), op_types_to_quantize=["MatMul", "Attention"],
        per_channel=True, reduce_range=True, weight_type=QuantType.QInt8,
        use_external_data_format=True,
        # contrib ops of the fused graph have no ONNX shape inference: give their outputs a type
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT, "MatMulConstBOnly": True},
    )  # fmt: skip
    save_external(onnx.load(str(scratch), load_external_data=True), target)
    for leftover in scratch.parent.glob(scratch.name + "*"):
        leftover.unlink()
    shutil.rmtree(scratch.with_suffix(""), ignore_errors=True)


def _blocked(source: Path, target: Path) -> None:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(
        onnx.load(str(source), load_external_data=True), bits=8, block_size=32,
        is_symmetric=True, accuracy_level=4,
    )  # fmt: skip
    quantizer.process()
    model: Any = quantizer.model.model
    save_external(model, target)
