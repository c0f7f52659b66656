"""Encoders: texts in, unnormalised float32 vectors and untruncated token counts out.

Two backends behind one shape. `OnnxEncoder` imports onnxruntime, tokenizers and numpy only: it
is what a torch-free worker serves with. `TorchEncoder` wraps sentence-transformers: the
reference the quality gate compares with, and the fallback for a model without ONNX variants.
Both sort a call's rows by token count before slicing them into forward passes of at most
`FORWARD_BATCH` rows, so a pass pads to rows of similar length.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from engine.config import ModelConfig, read_config
from engine.pooling import normalize, pool
from engine.session import session
from engine.tokenizer import TextTokenizer

Vectors = npt.NDArray[np.float32]
Counts = npt.NDArray[np.int64]
# Rows per forward pass. The batcher's default call (32 rows) is one pass; a larger call runs as
# passes of 32 similar-length rows: less padding and smaller activations than one pass of 64
# (docs/benchmarks.md).
FORWARD_BATCH = 32


class Encoder(Protocol):
    backend: str  # torch | onnx
    precision: str  # fp32 | int8
    dims: int
    max_seq_length: int

    def encode(self, texts: list[str]) -> tuple[Vectors, Counts]: ...


class OnnxEncoder:
    """An exported variant: tokenizer.json -> onnxruntime -> pooling [-> normalize] in numpy."""

    backend = "onnx"

    def __init__(
        self,
        model_dir: Path,
        model_file: str,
        precision: str,
        *,
        threads: int = 0,
        spin: bool = False,
        max_seq_length: int = 0,
    ) -> None:
        self.config: ModelConfig = read_config(model_dir, max_seq_length)
        self.precision = precision
        self.dims = self.config.dims
        self.max_seq_length = self.config.max_seq_length
        self.tokenizer = TextTokenizer(
            self.config.tokenizer_file, self.max_seq_length, self.config.do_lower_case
        )
        self.session = session(model_dir / model_file, threads, spin)
        self._inputs = [i.name for i in self.session.get_inputs()]

    def encode(self, texts: list[str]) -> tuple[Vectors, Counts]:
        out = np.zeros((len(texts), self.dims), np.float32)
        if not texts:
            return out, np.zeros(0, np.int64)
        encodings, counts = self.tokenizer.encode(texts)
        order = np.argsort(-counts, kind="stable")
        for start in range(0, len(order), FORWARD_BATCH):
            rows = order[start : start + FORWARD_BATCH]
            batch = self.tokenizer.batch([encodings[i] for i in rows])
            feeds = {name: getattr(batch, name) for name in self._inputs}
            hidden = self.session.run(None, feeds)[0]
            out[rows] = pool(hidden, batch.attention_mask, self.config.pooling)
        return (normalize(out) if self.config.normalize else out), counts


class TorchEncoder:
    """A sentence-transformers model on the CPU (float32).

    The batcher's streams call it from several threads at once. The forward pass holds no state,
    but a transformers fast tokenizer keeps its padding and truncation on the shared Rust
    tokenizer and sets them on each call whenever they differ from the last: a call without them
    (the untruncated counts) beside `encode` (padded, truncated) switched them under each other,
    giving padded counts and "Unable to create tensor" or untruncated rows past the position
    table. So the counts come from a private copy that is never reconfigured, and the shared one
    is set up once here, so that `encode`'s calls find it as they want it and never write to it
    (tests/test_engine.py hammers this from four threads).
    """

    backend = "torch"
    precision = "fp32"

    def __init__(self, path: Path | str, max_seq_length: int = 0, threads: int = 0) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        if threads > 0:  # process-wide in torch: every stream runs with the same count
            torch.set_num_threads(threads)
        kwargs: dict[str, Any] = {"device": "cpu"}
        home = os.environ.get("SENTENCE_TRANSFORMERS_HOME")
        if home:
            kwargs["cache_folder"] = home
        self.st = SentenceTransformer(str(path), **kwargs)
        self.st.eval()
        if max_seq_length > 0:
            self.st.max_seq_length = min(int(self.st.max_seq_length), max_seq_length)
        self.dims = int(self.st.get_embedding_dimension())
        self.max_seq_length = int(self.st.max_seq_length)
        self.st.preprocess([""])  # settles the shared tokenizer's padding and truncation
        self._counter = _untruncated_copy(self.st.tokenizer)

    def encode(self, texts: list[str]) -> tuple[Vectors, Counts]:
        counts = self._counter(texts)
        vectors = self.st.encode(
            texts,
            batch_size=max(1, min(len(texts), FORWARD_BATCH)),
            convert_to_numpy=True,
            normalize_embeddings=False,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), self.dims), counts


def _untruncated_copy(tokenizer: Any) -> Callable[[list[str]], Counts]:
    """A counter of each text's untruncated tokens (special tokens included) that shares no
    mutable state with `tokenizer`: a copy of a fast tokenizer's Rust backend, or a slow (pure
    Python) tokenizer itself."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        from tokenizers import Tokenizer

        copy = Tokenizer.from_str(backend.to_str())
        copy.no_truncation()
        copy.no_padding()

        def count(texts: list[str]) -> Counts:
            encodings = copy.encode_batch(texts, add_special_tokens=True)
            return np.fromiter((len(e.ids) for e in encodings), np.int64, len(encodings))

        return count

    def count_slow(texts: list[str]) -> Counts:  # a Python tokenizer keeps no such state
        ids = tokenizer(texts, add_special_tokens=True, truncation=False)["input_ids"]
        return np.fromiter((len(row) for row in ids), np.int64, len(texts))

    return count_slow
