"""`llm` classification through the official ollama client against a loopback Ollama double."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from tests.conftest import PipelineFactory
from tests.ollama_double import OllamaDouble, keyword_label
from worker.classify import LlmClassifier

MODEL = "llama3.2:1b"


@pytest.fixture
def ollama() -> Iterator[OllamaDouble]:
    double = OllamaDouble().start()
    double.models.add(MODEL)
    yield double
    double.stop()


def llm_job() -> bytes:
    return orjson.dumps({
        "job_id": "llm-1", "type": "classify", "method": "llm",
        "labels": [{"name": "billing", "description": "payments"}, {"name": "shipping"}],
        "table": {"columns": ["ticket"], "rows": [["my shipping is late"], ["billing error"]]},
    })  # fmt: skip


async def run(make_pipeline: PipelineFactory, url: str, wait: float = 5.0) -> dict[str, Any]:
    llm = LlmClassifier(url, MODEL, wait)
    return (await make_pipeline(llm=llm).handle(llm_job())).result


async def test_good_answers(make_pipeline: PipelineFactory, ollama: OllamaDouble) -> None:
    ollama.chat_reply = keyword_label
    result = await run(make_pipeline, ollama.url)
    assert result["status"] == "ok", result
    assert [p["label"] for p in result["predictions"]] == ["shipping", "billing"]
    assert result["predictions"][0]["score"] == 0.8
    assert "embeddings" not in result


async def test_answer_outside_labels(make_pipeline: PipelineFactory, ollama: OllamaDouble) -> None:
    ollama.chat_reply = lambda body: json.dumps({"label": "refunds"})
    result = await run(make_pipeline, ollama.url)
    assert result["error"]["code"] == "llm_invalid_answer"
    assert "refunds" in result["error"]["message"]


async def test_malformed_json(make_pipeline: PipelineFactory, ollama: OllamaDouble) -> None:
    ollama.chat_reply = lambda body: "Sure! The label is billing."
    result = await run(make_pipeline, ollama.url)
    assert result["error"]["code"] == "llm_invalid_answer"


async def test_timeout_is_retryable(make_pipeline: PipelineFactory, ollama: OllamaDouble) -> None:
    ollama.chat_delay = 2.0
    result = await run(make_pipeline, ollama.url, wait=0.5)
    assert result["error"]["code"] == "llm_timeout"
    assert result["error"]["retryable"] is True


async def test_server_down(make_pipeline: PipelineFactory) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = await run(make_pipeline, f"http://127.0.0.1:{port}")
    assert result["error"]["code"] == "llm_unavailable"
    assert result["error"]["retryable"] is True


async def test_model_missing(make_pipeline: PipelineFactory, ollama: OllamaDouble) -> None:
    ollama.models.clear()
    result = await run(make_pipeline, ollama.url)
    assert result["error"]["code"] == "llm_model_missing"


async def test_llm_disabled(make_pipeline: PipelineFactory) -> None:
    result = (await make_pipeline().handle(llm_job())).result
    assert result["error"]["code"] == "llm_disabled"
