"""Classification by an LLM: Ollama asked one row at a time, its answer checked.

The embedding-space methods (zero_shot, few_shot) are in `engine.heads`; all three give the same
shape: (label, score, scores per label) per row.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import orjson

from engine.heads import Prediction
from worker.errors import JobError
from worker.jobs import Label

# ---------------------------------------------------------------------------------------------
# llm


# Waits until the LLM can answer, or raises a (retryable) JobError: OllamaState.wait_ready.
Availability = Callable[[], Awaitable[None]]


class LlmClassifier:
    """Asks Ollama (`/api/chat`, `format` = a JSON schema naming the labels) one row at a time."""

    def __init__(
        self,
        host: str,
        model: str,
        timeout: float,
        concurrency: int = 2,
        availability: Availability | None = None,
    ) -> None:
        from ollama import AsyncClient

        self.model = model
        self.timeout = timeout
        self._client = AsyncClient(host=host, timeout=timeout)
        self._slots = asyncio.Semaphore(concurrency)
        self._availability = availability

    async def classify(self, texts: list[str], labels: list[Label]) -> list[Prediction]:
        """One prediction per row; the first row that fails fails the job at once.

        The job's other requests are cancelled then, queued or in flight (the HTTP request is
        closed, so Ollama stops generating): a timed-out job must not keep the concurrency
        slots busy for the jobs after it.
        """
        if self._availability is not None:
            await self._availability()
        tasks = [asyncio.ensure_future(self._one(i, t, labels)) for i, t in enumerate(texts)]
        if not tasks:
            return []
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in tasks:
                error = task.exception() if task in done else None
                if error is not None:
                    raise error
            return [t.result() for t in tasks]
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _one(self, index: int, text: str, labels: list[Label]) -> Prediction:
        names = [label.name for label in labels]
        async with self._slots:
            content = await self._ask(text, labels)
        try:
            answer = orjson.loads(content)
        except orjson.JSONDecodeError:
            raise JobError(
                "llm_invalid_answer", f"row {index}: the LLM answer is not JSON: {content[:80]!r}"
            ) from None
        label = answer.get("label") if isinstance(answer, dict) else None
        if label not in names:
            raise JobError(
                "llm_invalid_answer",
                f"row {index}: the LLM answered {label!r}, not one of the labels",
            )
        confidence = answer.get("confidence", 1.0)
        if not isinstance(confidence, int | float) or not 0.0 <= confidence <= 1.0:
            confidence = 1.0
        rest = (1.0 - confidence) / max(1, len(names) - 1)
        scores = {n: round(float(confidence) if n == label else rest, 6) for n in names}
        return Prediction(label, round(float(confidence), 6), scores)

    async def _ask(self, text: str, labels: list[Label]) -> str:
        from ollama import ResponseError

        listing = "\n".join(
            f"- {lb.name}" + (f": {lb.description}" if lb.description else "") for lb in labels
        )
        schema: dict[str, Any] = {
            "type": "object",
            "properties": {
                "label": {"type": "string", "enum": [lb.name for lb in labels]},
                "confidence": {"type": "number"},
            },
            "required": ["label"],
        }
        messages = [
            {
                "role": "system",
                "content": "You classify one table row. Answer with JSON: "
                '{"label": <one of the labels>, "confidence": <0..1>}.\nLabels:\n' + listing,
            },
            {"role": "user", "content": text},
        ]
        try:
            response = await asyncio.wait_for(
                self._client.chat(
                    model=self.model, messages=messages, format=schema, options={"temperature": 0}
                ),
                self.timeout,
            )
        except (TimeoutError, httpx.TimeoutException):
            raise JobError(
                "llm_timeout", f"Ollama did not answer within {self.timeout:g} s"
            ) from None
        except (httpx.TransportError, ConnectionError) as exc:
            raise JobError("llm_unavailable", f"Ollama is unreachable: {exc}") from None
        except ResponseError as exc:
            code = "llm_unavailable" if exc.status_code >= 500 else "llm_error"
            if exc.status_code == 404:
                code = "llm_model_missing"
            raise JobError(code, f"Ollama answered {exc.status_code}: {exc.error}") from None
        except ValueError as exc:  # a 200 whose body is not an Ollama response (JSON, schema)
            raise JobError(
                "llm_unavailable",
                f"the server at OLLAMA_HOST did not answer like Ollama: {type(exc).__name__}",
            ) from None
        return str(response.message.content or "")
