"""Worker warm start from the shared cache: hits, every miss reason, and what a miss serves.

Caches are built by the real sync from the packaged MiniLM, then damaged the way storage,
operators or interrupted syncs damage them. Every test serves a real job and compares its
vectors with the packaged model's, so a corrupt model being served would fail it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from base.cache.manifest import DONE_NAME, MANIFEST_NAME
from base.env import SettingsError
from tests.cache_helpers import (
    PACKAGED,
    ROOT,
    assert_correct_embeddings,
    build,
    copy_model,
    embed_job,
    files_under,
    manifest,
    model_file,
    recommit,
    rewrite_manifest_raw,
    sync_cli,
)
from tests.hub_double import HubDouble
from worker.metrics import WorkerMetrics
from worker.model import EmbeddingModel
from worker.modelstore import cache_snapshot, load_embedding_model
from worker.pipeline import Pipeline
from worker.settings import WorkerSettings


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    build(tmp_path / "cache", minilm=PACKAGED)
    return tmp_path / "cache"


def worker_settings(tmp_path: Path, cache: Path, **overrides: Any) -> WorkerSettings:
    values: dict[str, Any] = {
        "model_cache_path": str(cache), "local_model_dir": str(tmp_path / "local"),
        "embedding_model": "minilm", "sync_models": f"minilm=file://{PACKAGED}",
        "llm_enabled": False, "data_root": str(tmp_path),
    }  # fmt: skip
    return WorkerSettings.from_env({}, **{**values, **overrides})


async def start(settings: WorkerSettings, caplog: pytest.LogCaptureFixture,
                ) -> tuple[EmbeddingModel, dict[str, Any], WorkerMetrics]:  # fmt: skip
    """Start as the worker does; return the model, the 'Model cache checked' line and metrics."""
    metrics = WorkerMetrics(CollectorRegistry())
    with caplog.at_level(logging.INFO, logger="worker.modelstore"):
        model = await load_embedding_model(settings, metrics)
    checked = [r for r in caplog.records if r.getMessage() == "Model cache checked"]
    assert len(checked) == 1, "one cache line per start"
    return model, checked[0].__dict__, metrics


async def serve_one(settings: WorkerSettings, model: EmbeddingModel) -> dict[str, Any]:
    pipeline = Pipeline(settings, model)
    try:
        return (await pipeline.handle(embed_job())).result
    finally:
        await pipeline.close()


def lookups(metrics: WorkerMetrics, result: str, reason: str) -> float:
    return metrics.cache_lookups.labels(result, reason)._value.get()  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------------------------
# hits


@pytest.mark.parametrize("strategy", ["copy", "mount"])
async def test_hit_serves_verified_model_from_cache(
    tmp_path: Path, cache: Path, strategy: str, caplog: pytest.LogCaptureFixture,
    embedding_model: EmbeddingModel,
) -> None:  # fmt: skip
    settings = worker_settings(tmp_path, cache, model_load_strategy=strategy)
    before = files_under(cache)
    model, line, metrics = await start(settings, caplog)
    assert (line["cache_hit"], line["reason"], line["generation"]) == (True, "hit", 1)
    assert "Shared volume available" in caplog.text
    assert lookups(metrics, "hit", "hit") == 1
    entry = manifest(cache).models[0]
    assert (model.info.source, model.info.generation) == ("cache", 1)
    assert model.info.revision == entry.revision
    loaded_from = Path(model.info.path)
    if strategy == "copy":
        assert loaded_from.is_relative_to(tmp_path / "local")
        assert files_under(loaded_from) == {f.path: f.size for f in entry.files}
    else:
        assert loaded_from == cache / entry.location
    assert_correct_embeddings(await serve_one(settings, model), embedding_model)
    assert files_under(cache) == before
    snapshot = cache_snapshot(settings, model)
    assert (snapshot["start_reason"], snapshot["model_source"]) == ("hit", "cache")
    assert (snapshot["committed_generation"], snapshot["reload_pending"]) == (1, False)


def test_hit_through_the_cli(tmp_path: Path, embedding_model: EmbeddingModel) -> None:
    """`tabular-sync once` builds the cache; `tabular-worker run` starts from it and serves."""
    cache = tmp_path / "cache"
    proc = sync_cli("once", "--cache", str(cache), "--model", f"minilm=file://{PACKAGED}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sync_cli("verify", "--cache", str(cache)).returncode == 0
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MODEL_CACHE_PATH": str(cache),
           "TABULAR_EMBEDDING_MODEL": "minilm", "TABULAR_LLM_ENABLED": "false",
           "TABULAR_LOCAL_MODEL_DIR": str(tmp_path / "local")}  # fmt: skip
    run = subprocess.run([sys.executable, "-m", "worker", "run", "--input", "-"],
                         input=embed_job() + b"\n" + embed_job("job-2"), capture_output=True,
                         env=env, cwd=ROOT, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [orjson.loads(line) for line in run.stderr.splitlines()]
    checked = [e for e in lines if e["message"] == "Model cache checked"]
    assert [(e["cache_hit"], e["reason"], e["generation"]) for e in checked] == [(True, "hit", 1)]
    assert any(e["message"] == "Shared volume available" for e in lines)
    results = [orjson.loads(line) for line in run.stdout.splitlines()]
    assert sorted(r["job_id"] for r in results) == ["job-1", "job-2"]
    for result in results:
        assert result["model"]["source"] == "cache" and result["model"]["generation"] == 1
        assert_correct_embeddings(result, embedding_model)


# ---------------------------------------------------------------------------------------------
# misses: each reason detected, logged, counted, and the fallback serves correct results


def _truncate(cache: Path) -> None:
    weights = model_file(cache, "model.safetensors")
    os.truncate(weights, weights.stat().st_size // 2)


def _flip_byte(cache: Path) -> None:
    weights = model_file(cache, "model.safetensors")
    with open(weights, "r+b") as fh:
        fh.seek(weights.stat().st_size // 2)
        byte = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([byte[0] ^ 0x01]))


def _unsafe_location(cache: Path) -> None:
    """A committed manifest pointing outside the cache: refused even though .done matches."""
    current = manifest(cache)
    bad = dataclasses.replace(current.models[0], location="sbert/../../outside")
    recommit(cache, dataclasses.replace(current, generation=2, models=(bad,)))


def _next_generation_without_done(cache: Path) -> None:
    """What a sync killed between writing manifest.json and .done leaves behind."""
    rewrite_manifest_raw(cache, lambda body: body.update(generation=body["generation"] + 1))


def _edit_manifest(cache: Path) -> None:
    rewrite_manifest_raw(cache, lambda body: body.update(created="1999-01-01T00:00:00+00:00"))


MISSES: dict[str, tuple[str, Callable[[Path], object]]] = {
    "no_done": ("no_done", lambda cache: (cache / DONE_NAME).unlink()),
    "manifest_garbage": ("manifest_unreadable",
                         lambda cache: (cache / MANIFEST_NAME).write_bytes(b"{not json")),
    "manifest_unsafe_path": ("manifest_unreadable", _unsafe_location),
    "digest_mismatch": ("digest_mismatch", _edit_manifest),
    "generation_mismatch": ("generation_mismatch", _next_generation_without_done),
    "truncated_weights": ("checksum_mismatch", _truncate),
    "flipped_byte": ("checksum_mismatch", _flip_byte),
}  # fmt: skip


# The load strategy only matters once the manifest is accepted: checksums are checked both ways.
CASES = [(case, "copy") for case in sorted(MISSES)] + [
    ("truncated_weights", "mount"), ("flipped_byte", "mount")]  # fmt: skip


@pytest.mark.parametrize(("case", "strategy"), CASES)
async def test_damaged_cache_is_a_miss_and_fallback_serves(
    tmp_path: Path, cache: Path, case: str, strategy: str, caplog: pytest.LogCaptureFixture,
    embedding_model: EmbeddingModel,
) -> None:  # fmt: skip
    reason, damage = MISSES[case]
    damage(cache)
    before = files_under(cache)
    settings = worker_settings(tmp_path, cache, model_load_strategy=strategy)
    model, line, metrics = await start(settings, caplog)
    assert (line["cache_hit"], line["reason"]) == (False, reason), line
    assert line["detail"]
    assert lookups(metrics, "miss", reason) == 1
    assert model.info.source == "local" and model.info.generation == 0
    assert_correct_embeddings(await serve_one(settings, model), embedding_model)
    assert files_under(cache) == before, "a miss must never write into the shared cache"
    assert files_under(tmp_path / "local") == {}, "no unverified copy is left behind"


async def test_disabled(tmp_path: Path, cache: Path, caplog: pytest.LogCaptureFixture,
                        embedding_model: EmbeddingModel) -> None:  # fmt: skip
    settings = worker_settings(tmp_path, cache, shared_model_volume_enabled=False)
    model, line, metrics = await start(settings, caplog)
    assert (line["cache_hit"], line["reason"]) == (False, "disabled")
    assert "Shared volume available" not in caplog.text
    assert lookups(metrics, "miss", "disabled") == 1
    assert model.info.source == "local"
    assert_correct_embeddings(await serve_one(settings, model), embedding_model)


async def test_no_mount(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                        embedding_model: EmbeddingModel) -> None:  # fmt: skip
    settings = worker_settings(tmp_path, tmp_path / "not-mounted")
    model, line, _ = await start(settings, caplog)
    assert (line["cache_hit"], line["reason"]) == (False, "no_mount")
    assert "Shared volume available" not in caplog.text
    assert_correct_embeddings(await serve_one(settings, model), embedding_model)


async def test_model_not_in_manifest(tmp_path: Path, cache: Path,
                                     caplog: pytest.LogCaptureFixture,
                                     embedding_model: EmbeddingModel) -> None:  # fmt: skip
    settings = worker_settings(tmp_path, cache, embedding_model="other",
                               sync_models=f"other=file://{PACKAGED}")  # fmt: skip
    model, line, _ = await start(settings, caplog)
    assert (line["cache_hit"], line["reason"], line["generation"]) == (
        False, "model_not_in_manifest", 1)  # fmt: skip
    assert model.info.name == "other" and model.info.source == "local"
    assert_correct_embeddings(await serve_one(settings, model), embedding_model)


async def test_load_failed(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                           embedding_model: EmbeddingModel) -> None:  # fmt: skip
    """Checksums match what the sync saw, but the files are not a loadable model."""
    broken = copy_model(tmp_path / "broken")
    (broken / "modules.json").write_text("this is not a module list")
    build(tmp_path / "cache", minilm=broken)
    settings = worker_settings(tmp_path, tmp_path / "cache")
    model, line, _ = await start(settings, caplog)
    assert (line["cache_hit"], line["reason"]) == (False, "load_failed")
    assert model.info.source == "local"
    assert_correct_embeddings(await serve_one(settings, model), embedding_model)
    assert files_under(tmp_path / "local") == {}


def test_fallback_downloads_into_local_storage_never_the_cache(
    tmp_path: Path, embedding_model: EmbeddingModel
) -> None:
    """A miss for an hf:// model downloads it (real HTTP, loopback hub) into the local dir."""
    hub = HubDouble().start()
    try:
        hub.add("sentence-transformers/all-MiniLM-L6-v2", PACKAGED, "d" * 40)
        cache = tmp_path / "cache"
        cache.mkdir()
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "0",
            "HF_ENDPOINT": hub.url,
            "MODEL_CACHE_PATH": str(cache),
            "TABULAR_EMBEDDING_MODEL": "minilm",
            "TABULAR_SYNC_MODELS": "minilm=hf://sentence-transformers/all-MiniLM-L6-v2",
            "TABULAR_LLM_ENABLED": "false",
            "TABULAR_LOCAL_MODEL_DIR": str(tmp_path / "local"),
        }
        run = subprocess.run([sys.executable, "-m", "worker", "run", "--input", "-"],
                             input=embed_job(), capture_output=True, env=env, cwd=ROOT,
                             timeout=300)  # fmt: skip
    finally:
        hub.stop()
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [orjson.loads(line) for line in run.stderr.splitlines()]
    checked = [e for e in lines if e["message"] == "Model cache checked"]
    assert [(e["cache_hit"], e["reason"]) for e in checked] == [(False, "no_done")]
    assert_correct_embeddings(orjson.loads(run.stdout), embedding_model)
    assert files_under(cache) == {}
    downloaded = files_under(tmp_path / "local" / "hub")
    assert downloaded["sentence-transformers_all-MiniLM-L6-v2/model.safetensors"] > 90_000_000


def test_local_dir_inside_the_cache_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="TABULAR_LOCAL_MODEL_DIR"):
        WorkerSettings.from_env({"MODEL_CACHE_PATH": str(tmp_path),
                           "TABULAR_LOCAL_MODEL_DIR": str(tmp_path / "local")})  # fmt: skip
    disabled = WorkerSettings.from_env(
        {
            "MODEL_CACHE_PATH": str(tmp_path),
            "SHARED_MODEL_VOLUME_ENABLED": "false",
            "TABULAR_LOCAL_MODEL_DIR": str(tmp_path / "local"),
        }
    )
    assert not disabled.shared_model_volume_enabled  # no cache in use: the same dir is fine
