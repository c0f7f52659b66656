"""Shared fixtures: the real packaged model (loaded once), settings, pipelines, and real
Prometheus/Pushgateway servers (see tests/prometheus_server.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `tabular-sync` processes started by tests export ONNX variants only where a test asks for it
# (tests/test_sync_export.py): an export takes about a minute per model.
os.environ.setdefault("TABULAR_SYNC_EXPORT", "false")

from engine.build import build_variants
from engine.config import packaged_model_dir
from harness.models import build_xlmr
from tests.prometheus_server import MetricsEndpoint, PrometheusServer, Pushgateway
from worker.model import EmbeddingModel, ModelInfo, Tuning
from worker.pipeline import Pipeline
from worker.settings import WorkerSettings

pytest_plugins = ["tests.pubsub_fixture"]


@pytest.fixture(scope="session")
def embedding_model() -> EmbeddingModel:
    path = packaged_model_dir()
    info = ModelInfo("all-MiniLM-L6-v2", str(path), "packaged")
    model = EmbeddingModel.load(path, info, None, Tuning())  # torch: the reference
    model.warm_up()
    return model


@pytest.fixture(scope="session")
def minilm_exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The packaged MiniLM with its ONNX variants, made once by `tabular-sync export` (CLI)."""
    out = tmp_path_factory.mktemp("exported") / "minilm"
    proc = subprocess.run(
        [sys.executable, "-m", "sync", "export", "--model", "all-MiniLM-L6-v2", "--out", str(out)],
        capture_output=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    return out


@pytest.fixture(scope="session")
def xlmr_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small random XLM-RoBERTa sentence-transformers model: bge-m3's architecture."""
    return build_xlmr(tmp_path_factory.mktemp("xlmr") / "xlmr-small")


@pytest.fixture(scope="session")
def xlmr_exported(xlmr_small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small XLM-RoBERTa with its ONNX variants (engine.build, in process)."""
    out = tmp_path_factory.mktemp("exported") / "xlmr"
    shutil.copytree(xlmr_small, out)
    build_variants(out)
    return out


@pytest.fixture
def settings(tmp_path: Any) -> WorkerSettings:
    return WorkerSettings.from_env({}, data_root=str(tmp_path), shared_model_volume_enabled=False)


PipelineFactory = Callable[..., Pipeline]


@pytest.fixture
async def make_pipeline(
    embedding_model: EmbeddingModel, settings: WorkerSettings
) -> AsyncIterator[PipelineFactory]:
    made: list[Pipeline] = []

    def factory(**overrides: Any) -> Pipeline:
        llm = overrides.pop("llm", None)
        merged = WorkerSettings.from_env({}, **{**settings.__dict__, **overrides})
        pipeline = Pipeline(merged, embedding_model, llm=llm)
        made.append(pipeline)
        return pipeline

    yield factory
    for pipeline in made:
        await pipeline.close()


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[Callable[..., PrometheusServer]]:
    """`prometheus_factory(targets, **kwargs)` starts a real Prometheus (stopped at teardown).

    Keyword arguments are PrometheusServer's: jobs, rule_files, scrape_interval, ...
    """
    servers: list[PrometheusServer] = []

    def start(targets: list[str] | tuple[str, ...] = (), **kwargs: Any) -> PrometheusServer:
        server = PrometheusServer(tmp_path / f"prometheus-{len(servers)}", targets, **kwargs)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def pushgateway(tmp_path: Path) -> Iterator[Pushgateway]:
    """A real Pushgateway on a free loopback port."""
    with Pushgateway(tmp_path / "pushgateway") as gateway:
        yield gateway


@pytest.fixture
def metrics_endpoint_factory() -> Iterator[Callable[[CollectorRegistry], MetricsEndpoint]]:
    """`metrics_endpoint_factory(registry)` serves a registry on /metrics (a fake worker)."""
    endpoints: list[MetricsEndpoint] = []

    def start(registry: CollectorRegistry) -> MetricsEndpoint:
        endpoint = MetricsEndpoint(registry)
        endpoints.append(endpoint)
        return endpoint

    yield start
    for endpoint in endpoints:
        endpoint.stop()
