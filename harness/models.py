"""Randomly initialised models of the production architecture, built offline for tests and bench.

Production serves BAAI/bge-m3: XLM-RoBERTa large with a SentencePiece (Unigram) tokenizer, CLS
pooling and normalisation. The hub is unreachable here, so `build_xlmr` makes a
sentence-transformers directory of that architecture with random weights: "small" (2 layers,
hidden 128: tests) or "full" (bge-m3's shape, 568 M parameters: speed and memory only). Its
tokenizer is a Unigram model trained on local text with XLM-R's special tokens, normaliser,
Metaspace pre-tokenizer and `<s> $A </s>` template, saved through transformers like a real one.
Random weights cost what trained ones cost; their answers mean nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_CORPORA = (ROOT / "engine/data/calibration.jsonl", ROOT / "bench/data/heldout.jsonl")
_SIZES = {
    "small": {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
              "intermediate_size": 512, "max_position_embeddings": 514},
    "full": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
             "intermediate_size": 4096, "max_position_embeddings": 8194, "vocab_size": 250002},
}  # fmt: skip


def build_xlmr(out: Path, size: str = "small", max_seq_length: int = 0, seed: int = 0) -> Path:
    """Write a sentence-transformers model directory of the bge-m3 architecture into `out`."""
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaModel, XLMRobertaTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    raw = out / "_unigram.json"
    vocab = _train_tokenizer(raw)
    tokenizer = XLMRobertaTokenizerFast(tokenizer_file=str(raw))
    limit = max_seq_length or (512 if size == "small" else 8192)
    tokenizer.model_max_length = limit
    tokenizer.save_pretrained(out)
    raw.unlink()
    shape = dict(_SIZES[size])
    shape["vocab_size"] = max(shape.get("vocab_size", 0), vocab)
    config = XLMRobertaConfig(type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                              layer_norm_eps=1e-5, **shape)  # fmt: skip
    torch.manual_seed(seed)
    XLMRobertaModel(config).eval().save_pretrained(out, safe_serialization=True)
    (out / "1_Pooling").mkdir(exist_ok=True)
    _write(out / "1_Pooling/config.json", {
        "word_embedding_dimension": config.hidden_size, "pooling_mode_cls_token": True,
        "pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    })  # fmt: skip
    modules = ["Transformer", "Pooling", "Normalize"]
    _write(out / "modules.json", [
        {"idx": i, "name": str(i), "path": ["", "1_Pooling", "2_Normalize"][i],
         "type": f"sentence_transformers.models.{kind}"} for i, kind in enumerate(modules)
    ])  # fmt: skip
    _write(out / "sentence_bert_config.json", {"max_seq_length": limit, "do_lower_case": False})
    return out


def _train_tokenizer(path: Path, vocab_size: int = 8000) -> int:
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram
    from tokenizers.trainers import UnigramTrainer

    tok = Tokenizer(Unigram())
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")]
    )
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = UnigramTrainer(
        vocab_size=vocab_size, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        unk_token="<unk>", shrinking_factor=0.75, max_piece_length=16, n_sub_iterations=2,
    )  # fmt: skip
    tok.train_from_iterator(_corpus(), trainer=trainer)
    tok.add_special_tokens(["<mask>"])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)],
    )  # fmt: skip
    tok.save(str(path))
    return int(tok.get_vocab_size())


def _corpus() -> Iterator[str]:
    """The project's calibration and held-out texts, plus package metadata prose for variety."""
    for corpus in _CORPORA:
        for line in corpus.read_text(encoding="utf-8").splitlines():
            text = json.loads(line).get("text")
            if text:
                yield text
    import sklearn

    count = 0
    for meta in sorted(Path(sklearn.__file__).parent.parent.glob("*.dist-info/METADATA")):
        for line in meta.read_text(encoding="utf-8", errors="ignore").splitlines():
            if len(line) > 20 and ":" not in line[:20]:
                yield line.strip()
                count += 1
        if count > 40_000:
            return


def _write(path: Path, body: object) -> None:
    path.write_text(json.dumps(body, indent=2) + "\n")
