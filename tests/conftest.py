"""Shared fixtures: the real packaged model (loaded once), settings and pipelines."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from worker.model import EmbeddingModel, ModelInfo, packaged_model_dir
from worker.pipeline import Pipeline
from worker.settings import Settings


@pytest.fixture(scope="session")
def embedding_model() -> EmbeddingModel:
    path = packaged_model_dir()
    model = EmbeddingModel.load(path, ModelInfo("all-MiniLM-L6-v2", str(path), "packaged"))
    model.warm_up()
    return model


@pytest.fixture
def settings(tmp_path: Any) -> Settings:
    return Settings.from_env({}, data_root=str(tmp_path), shared_model_volume_enabled=False)


PipelineFactory = Callable[..., Pipeline]


@pytest.fixture
async def make_pipeline(
    embedding_model: EmbeddingModel, settings: Settings
) -> AsyncIterator[PipelineFactory]:
    made: list[Pipeline] = []

    def factory(**overrides: Any) -> Pipeline:
        llm = overrides.pop("llm", None)
        merged = Settings.from_env({}, **{**settings.__dict__, **overrides})
        pipeline = Pipeline(merged, embedding_model, llm=llm)
        made.append(pipeline)
        return pipeline

    yield factory
    for pipeline in made:
        await pipeline.close()
