"""OllamaState against the Ollama double while the pipeline keeps serving embedding jobs."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from base.cache.specs import ModelSpec
from sync.run import sync_once
from sync.settings import SyncSettings
from tests.cache_helpers import files_under, manifest
from tests.conftest import PipelineFactory
from tests.ollama_double import OllamaDouble, keyword_label
from worker.classify import LlmClassifier
from worker.ollama_state import OllamaState
from worker.settings import WorkerSettings

MODEL = "llama3.2:1b"


@pytest.fixture
def ollama(tmp_path: Path) -> Iterator[OllamaDouble]:
    double = OllamaDouble(models_dir=tmp_path / "local-ollama").start()
    yield double
    double.stop()


def make_settings(tmp_path: Path, double: OllamaDouble, **overrides: Any) -> WorkerSettings:
    values: dict[str, Any] = {
        "ollama_host": double.url, "llm_model": MODEL, "llm_wait_seconds": 10.0,
        "ollama_ready_timeout_seconds": 10.0, "model_cache_path": str(tmp_path / "no-cache"),
        "ollama_models": str(double.models_dir), "data_root": str(tmp_path),
        "shared_model_volume_enabled": False,
    }  # fmt: skip
    return WorkerSettings.from_env({}, **{**values, **overrides})


@pytest.fixture
async def states() -> AsyncIterator[list[OllamaState]]:
    made: list[OllamaState] = []
    yield made
    for state in made:
        await state.close()


def started(settings: WorkerSettings, states: list[OllamaState]) -> OllamaState:
    state = OllamaState(settings)
    states.append(state)
    state.start()
    return state


def embed_job(i: int) -> bytes:
    return orjson.dumps({"job_id": f"e{i}", "type": "embed", "output": {"embeddings": "none"},
                         "table": {"columns": ["t"], "rows": [[f"row {i}"]]}})  # fmt: skip


def llm_job() -> bytes:
    return orjson.dumps({"job_id": "llm", "type": "classify", "method": "llm",
                         "labels": [{"name": "billing"}, {"name": "shipping"}],
                         "table": {"columns": ["t"], "rows": [["shipping is late"]]}})  # fmt: skip


async def embed_while(condition: Any, make_pipeline: PipelineFactory) -> list[dict[str, Any]]:
    """Serve embedding jobs back to back for as long as `condition()` holds."""
    pipeline = make_pipeline()
    results, i = [], 0
    while condition():
        started_at = time.monotonic()
        results.append((await pipeline.handle(embed_job(i))).result)
        assert time.monotonic() - started_at < 2.0, "an embedding job was held up"
        i += 1
    return results


async def test_not_ready_then_ready_while_embeddings_are_served(
    tmp_path: Path, ollama: OllamaDouble, make_pipeline: PipelineFactory,
    states: list[OllamaState],
) -> None:  # fmt: skip
    ollama.models.add(MODEL)
    ollama.chat_reply = keyword_label
    ollama.not_ready_until = time.monotonic() + 1.5
    settings = make_settings(tmp_path, ollama)
    state = started(settings, states)
    assert state.snapshot()["state"] == "starting" and not state.ready
    llm = LlmClassifier(ollama.url, MODEL, 5.0, availability=state.wait_ready)
    llm_pipeline = make_pipeline(llm=llm)
    llm_task = asyncio.create_task(llm_pipeline.handle(llm_job()))  # waits for Ollama
    results = await embed_while(lambda: not state.ready, make_pipeline)
    assert len(results) >= 3 and all(r["status"] == "ok" for r in results)
    llm_result = (await llm_task).result
    assert llm_result["status"] == "ok", llm_result
    assert llm_result["predictions"][0]["label"] == "shipping"
    snap = state.snapshot()
    assert (snap["state"], snap["ready"], snap["source"]) == ("ready", True, "present")
    assert snap["server_version"] == "0.12.0" and snap["error"] == ""
    polls = [p for m, p in ollama.requests if p == "/api/version"]
    assert 3 <= len(polls) <= 10, f"exponential backoff, not a busy loop: {len(polls)} polls"


async def test_never_ready_reaches_a_clear_state(
    tmp_path: Path, ollama: OllamaDouble, make_pipeline: PipelineFactory,
    states: list[OllamaState],
) -> None:  # fmt: skip
    ollama.not_ready_until = math.inf
    settings = make_settings(tmp_path, ollama, ollama_ready_timeout_seconds=1.0)
    state = started(settings, states)
    results = await embed_while(lambda: state.snapshot()["state"] == "starting", make_pipeline)
    assert all(r["status"] == "ok" for r in results)
    snap = state.snapshot()
    assert (snap["state"], snap["ready"]) == ("unavailable", False)
    assert "did not answer within 1 s" in snap["error"] and "503" in snap["error"]
    llm = LlmClassifier(ollama.url, MODEL, 5.0, availability=state.wait_ready)
    started_at = time.monotonic()
    result = (await make_pipeline(llm=llm).handle(llm_job())).result
    assert time.monotonic() - started_at < 1.0, "a settled failure does not make jobs wait"
    assert result["error"]["code"] == "llm_unavailable" and result["error"]["retryable"]
    assert "did not answer" in result["error"]["message"]


async def test_llm_job_gives_up_after_its_wait(
    tmp_path: Path, ollama: OllamaDouble, make_pipeline: PipelineFactory,
    states: list[OllamaState],
) -> None:  # fmt: skip
    ollama.not_ready_until = math.inf
    state = started(make_settings(tmp_path, ollama, llm_wait_seconds=0.3), states)
    llm = LlmClassifier(ollama.url, MODEL, 5.0, availability=state.wait_ready)
    result = (await make_pipeline(llm=llm).handle(llm_job())).result
    assert result["error"]["code"] == "llm_unavailable" and result["error"]["retryable"]
    assert "not ready after 0.3 s (Ollama: starting" in result["error"]["message"]


async def test_missing_model_is_pulled_with_progress(
    tmp_path: Path, ollama: OllamaDouble, make_pipeline: PipelineFactory,
    states: list[OllamaState], caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    ollama.pull_delay = 0.15
    with caplog.at_level(logging.INFO, logger="worker.ollama_state"):
        state = started(make_settings(tmp_path, ollama), states)
        seen: list[tuple[str, int]] = []

        def sample() -> bool:
            snap = state.snapshot()
            seen.append((snap["state"], snap["progress"].get("completed", -1)))
            return not state.ready

        results = await embed_while(sample, make_pipeline)
    assert all(r["status"] == "ok" for r in results)
    pulling = sorted({done for s, done in seen if s == "pulling" and done >= 0})
    assert len(pulling) >= 2, f"progress was not streamed: {seen}"
    assert state.snapshot()["source"] == "pull"
    logged = [r for r in caplog.records if r.getMessage() == "LLM pull progress"]
    assert logged and logged[-1].__dict__["status"] == "success"
    assert ollama.models_dir is not None
    assert any(p.name.startswith("sha256-") for p in (ollama.models_dir / "blobs").iterdir())


async def test_pull_failure_is_a_clear_state(
    tmp_path: Path, ollama: OllamaDouble, states: list[OllamaState]
) -> None:
    ollama.fail_pull = True
    state = started(make_settings(tmp_path, ollama), states)
    with pytest.raises(Exception, match="file does not exist"):
        await state.wait_ready()
    assert state.snapshot()["state"] == "unavailable"


async def test_model_copied_from_cache_instead_of_pulled(
    tmp_path: Path, ollama: OllamaDouble, states: list[OllamaState]
) -> None:
    source = OllamaDouble(models_dir=tmp_path / "sync-store").start()
    try:
        cache = tmp_path / "cache"
        settings = SyncSettings.from_env(
            {}, model_cache_path=str(cache), sync_ollama_host=source.url, sync_export=False,
            sync_ollama_models=str(source.models_dir),
        )  # fmt: skip
        assert sync_once(cache, [ModelSpec("llama", f"ollama://{MODEL}")], settings).ok
    finally:
        source.stop()
    assert ollama.listed() == []
    state = started(make_settings(tmp_path, ollama, shared_model_volume_enabled=True,
                                  model_cache_path=str(cache)), states)  # fmt: skip
    await state.wait_ready()
    assert state.snapshot()["source"] == "cache"
    assert ("POST", "/api/pull") not in ollama.requests
    (entry,) = manifest(cache).models
    assert ollama.models_dir is not None
    assert files_under(ollama.models_dir) == files_under(cache / entry.location)
    assert ollama.listed() == [MODEL]
