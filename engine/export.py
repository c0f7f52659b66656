"""Exporting a sentence-transformers model's transformer to ONNX, and making its int8 variants.

The graph is (input_ids, attention_mask[, token_type_ids]) -> token embeddings; pooling and
normalisation stay in numpy (engine.pooling), read from the model's own config, so one export
serves every pooling mode. A model over the 2 GB protobuf limit (bge-m3) is written as
`model.onnx` + `model.onnx_data`. Needs torch, transformers, onnx and onnxruntime: the sync image
has them, the worker image does not.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.config import EXPORTED_TOKENIZER, ModelConfig

OPSET = 17
ONNX_DIR = "onnx"
FP32_FILE = f"{ONNX_DIR}/model.onnx"
_EXTERNAL_ABOVE = 1_800_000_000  # bytes of float32 weights: past this, external data
_SAMPLE = [
    "customer: Vandelay Logistics; city: Osaka; product: wireless mouse; total: 54",
    "short row",
    "Die Lieferung verzögert sich um drei Tage, bitte entschuldigen Sie.",
]


@dataclass(frozen=True)
class Exported:
    """A variant's files as written (relative to the model directory), and how it was made."""

    name: str
    precision: str
    files: tuple[str, ...]
    recipe: str


def export_fp32(config: ModelConfig) -> Exported:
    """Write `onnx/model.onnx` (+ `model.onnx_data` for large models) into the model directory."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = config.transformer_path
    model = AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in tokenizer.model_input_names:
        names.append("token_type_ids")
    sample = tokenizer(_SAMPLE, padding=True, return_tensors="pt")
    (config.path / EXPORTED_TOKENIZER).parent.mkdir(parents=True, exist_ok=True)
    tokenizer.backend_tokenizer.save(str(config.path / EXPORTED_TOKENIZER))
    large = sum(p.numel() for p in model.parameters()) * 4 > _EXTERNAL_ABOVE
    target = config.path / FP32_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    axes = {name: {0: "batch", 1: "sequence"} for name in [*names, "token_embeddings"]}
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        first = Path(scratch) / "model.onnx" if large else target
        with torch.no_grad():
            torch.onnx.export(
                _hidden(model), tuple(sample[n] for n in names), str(first), dynamo=False,
                input_names=names, output_names=["token_embeddings"], dynamic_axes=axes,
                opset_version=OPSET, do_constant_folding=True,
            )  # fmt: skip
        if large:  # the exporter wrote one file per tensor: pack them into one data file
            _save_external(first, target)
    files = [FP32_FILE] + ([f"{FP32_FILE}_data"] if large else [])
    recipe = f"torch.onnx.export opset {OPSET} (eager attention), fp32"
    return Exported("onnx-fp32", "fp32", tuple(files), recipe)


def _hidden(model: Any) -> Any:
    """The transformer as a module of its positional inputs, returning the token embeddings."""
    import torch

    class Hidden(torch.nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs: Any) -> Any:
            keys = ("input_ids", "attention_mask", "token_type_ids")
            return self.model(**dict(zip(keys, inputs, strict=False))).last_hidden_state

    return Hidden().eval()


def _save_external(source: Path, target: Path) -> None:
    import onnx

    proto = onnx.load(str(source), load_external_data=True)
    for stale in (target, target.with_name(target.name + "_data")):
        stale.unlink(missing_ok=True)
    onnx.save_model(proto, str(target), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=target.name + "_data", size_threshold=1024)  # fmt: skip


def remove_exports(model_dir: Path) -> None:
    """Drop a previous export (the sync re-exports when the exporter's version changes)."""
    shutil.rmtree(model_dir / ONNX_DIR, ignore_errors=True)
