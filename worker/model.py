"""The embedding model: where it comes from, loading it, and the blocking encode the batcher runs.

Which files to load is decided by `worker.modelstore` (shared cache or local) and which backend
serves them by `worker.backend`; this module turns a directory and that choice into a warmed
`EmbeddingModel` over an `engine` encoder (ONNX or torch).
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path

from base import logs
from base.cache.variants import Variant
from engine.config import is_packaged, packaged_model_dir
from engine.encoder import Counts, Encoder, OnnxEncoder, TorchEncoder, Vectors
from engine.session import cpu_quota

log = logs.get(__name__)


@dataclass(frozen=True)
class ModelInfo:
    name: str  # as configured (TABULAR_EMBEDDING_MODEL)
    path: str  # directory the weights were loaded from
    source: str  # packaged | local | cache | hub
    generation: int = 0  # cache generation, 0 when not from the cache
    revision: str = ""
    backend: str = "torch"  # torch | onnx
    precision: str = "fp32"  # fp32 | int8
    variant: str = ""  # the ONNX variant's name ("" for torch)


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
    """A loaded model behind an `engine` encoder. `encode` is blocking: run it in the model
    thread."""

    def __init__(
        self, encoder: Encoder, info: ModelInfo, streams: int = 1, threads: int = 0
    ) -> None:
        self.encoder = encoder
        self.info = info
        self.streams = streams  # encode calls that may run at once (the batcher's streams)
        self.threads = threads  # intra-op threads of each stream (0: the engine's default)
        self.dims = encoder.dims
        self.max_seq_length = encoder.max_seq_length
        self.load_seconds = 0.0
        self.warmup_seconds = 0.0

    @classmethod
    def load(
        cls, path: Path | str, info: ModelInfo, variant: Variant | None, tuning: Tuning
    ) -> EmbeddingModel:
        """`variant` None: the torch model at `path`; else that ONNX variant of it."""
        started = time.perf_counter()
        tuning = tuning.resolved()
        encoder: Encoder
        if variant is None:
            encoder = TorchEncoder(path, tuning.max_seq_length, tuning.threads)
        else:
            encoder = OnnxEncoder(
                Path(path), variant.model_file, variant.precision, threads=tuning.threads,
                spin=tuning.spin, max_seq_length=tuning.max_seq_length,
            )  # fmt: skip
        info = dataclasses.replace(
            info, backend=encoder.backend, precision=encoder.precision,
            variant=variant.name if variant else "",
        )  # fmt: skip
        model = cls(encoder, info, tuning.streams, tuning.threads)
        model.load_seconds = time.perf_counter() - started
        return model

    def relabel(self, info: ModelInfo) -> EmbeddingModel:
        """The same loaded weights under new metadata (a cache generation that did not touch
        this model's files): a hot reload without loading anything."""
        model = EmbeddingModel(self.encoder, info, self.streams, self.threads)
        model.load_seconds, model.warmup_seconds = self.load_seconds, self.warmup_seconds
        return model

    def encode(self, texts: list[str]) -> tuple[Vectors, Counts]:
        """Unnormalised float32 vectors plus each text's untruncated token count.

        Normalisation is per job (an output option), so it happens after batching.
        """
        return self.encoder.encode(texts)

    def warm_up(self) -> None:
        """First encode pays for lazy init (kernels, allocator); pay it before taking jobs."""
        started = time.perf_counter()
        self.encode(["warm up: the first call is slow", "a second row of a table"])
        self.warmup_seconds = time.perf_counter() - started


@dataclass(frozen=True)
class Tuning:
    """How the encoder runs (TABULAR_INFERENCE_THREADS, _SPIN, TABULAR_MODEL_STREAMS,
    TABULAR_MAX_SEQ_LENGTH).

    By default one single-threaded stream per CPU: a forward pass split over every core waits,
    at each layer, for its slowest thread, so anything else that takes a core for a moment (the
    Pub/Sub client, the event loop, a neighbour) stalls the whole pass; independent streams only
    lose what was taken (docs/benchmarks.md, "Pub/Sub").
    """

    threads: int = 0  # per stream; 0: the CPU quota divided by the streams
    spin: bool = False
    max_seq_length: int = 0  # 0: the model's own
    streams: int = 0  # encode calls at once; 0: one per CPU of the quota

    def resolved(self) -> Tuning:
        """Streams and threads per stream made concrete for this CPU quota."""
        quota = cpu_quota()
        streams = self.streams or quota
        threads = self.threads or max(1, quota // streams)
        return dataclasses.replace(self, streams=streams, threads=threads)
