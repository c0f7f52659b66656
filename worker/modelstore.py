"""Deciding which files the embedding model is loaded from, and loading it warmed.

Without the shared cache a model name resolves to the packaged MiniLM, a local directory, or a
name under SENTENCE_TRANSFORMERS_HOME.
"""

from __future__ import annotations

from worker import logs
from worker.metrics import WorkerMetrics
from worker.model import EmbeddingModel, ModelInfo, local_model_dir
from worker.settings import Settings

log = logs.get(__name__)


def load_local(settings: Settings) -> EmbeddingModel:
    """Blocking: load and warm the configured model from local storage."""
    path, source = local_model_dir(settings.embedding_model, settings.sentence_transformers_home)
    model = EmbeddingModel.load(path, ModelInfo(settings.embedding_model, str(path), source))
    model.warm_up()
    return model


async def load_embedding_model(
    settings: Settings, metrics: WorkerMetrics | None = None
) -> EmbeddingModel:
    """Load in a worker thread so the event loop (health checks) keeps answering meanwhile."""
    import asyncio

    model = await asyncio.to_thread(load_local, settings)
    log.info(
        "Embedding model loaded",
        extra={
            "model": model.info.name,
            "source": model.info.source,
            "load_seconds": round(model.load_seconds, 3),
            "warmup_seconds": round(model.warmup_seconds, 3),
            "dims": model.dims,
        },
    )
    if metrics is not None:
        metrics.model_load_seconds.set(model.load_seconds)
        metrics.model_warmup_seconds.set(model.warmup_seconds)
        metrics.model_generation.set(model.info.generation)
        metrics.model_info.info(
            {"name": model.info.name, "source": model.info.source,
             "generation": str(model.info.generation)}
        )  # fmt: skip
    return model
