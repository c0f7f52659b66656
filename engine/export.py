"""Exporting a sentence-transformers model's transformer to ONNX, and making its int8 variants.

The graph is (input_ids, attention_mask[, token_type_ids]) -> token embeddings; pooling and
normalisation stay in numpy (engine.pooling), read from the model's own config, so one export
serves every pooling mode. Every model is written as `model.onnx` + `model.onnx_data`
(`save_external`). Needs torch, transformers, onnx and onnxruntime: the sync image
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
    target = config.path / FP32_FILE
    axes = {name: {0: "batch", 1: "sequence"} for name in [*names, "token_embeddings"]}
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        first = Path(scratch) / "model.onnx"  # past 2 GB the exporter writes a file per tensor
        with torch.no_grad():
            torch.onnx.export(
                _hidden(model), tuple(sample[n] for n in names), str(first), dynamo=False,
                input_names=names, output_names=["token_embeddings"], dynamic_axes=axes,
                opset_version=OPSET, do_constant_folding=True,
            )  # fmt: skip
        import onnx

        save_external(onnx.load(str(first), load_external_data=True), target)
    recipe = f"torch.onnx.export opset {OPSET} (eager attention), fp32"
    return Exported("onnx-fp32", "fp32", (FP32_FILE, f"{FP32_FILE}_data"), recipe)


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


def save_external(model: Any, target: Path) -> None:
    """`target` + `target_data`: the graph, and every weight in one data file beside it.

    Always, not only past protobuf's 2 GB limit: onnxruntime maps the data file, so weights it
    rarely touches (bge-m3's 1 GB embedding table) stay out of memory, where a single protobuf is
    parsed and copied whole (bge-m3 int8: 37 s and 2.3 GB to the first embedding, against 3 s and
    0.5 GB with external data).
    """
    import onnx

    for stale in (target, target.with_name(target.name + "_data")):
        stale.unlink(missing_ok=True)
    onnx.save_model(model, str(target), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=target.name + "_data", size_threshold=0)  # fmt: skip


def remove_exports(model_dir: Path) -> None:
    """Drop a previous export (the sync re-exports when the exporter's version changes)."""
    shutil.rmtree(model_dir / ONNX_DIR, ignore_errors=True)
