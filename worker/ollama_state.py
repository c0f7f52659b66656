"""Bringing the LLM up beside the worker without ever holding up embedding jobs.

Ollama starts slower than the worker and its model may be missing. `OllamaState` polls the
server (exponential backoff up to a deadline), then makes sure the model is there: already
present, copied from the shared cache into the local OLLAMA_MODELS (Ollama cannot load from a
GCS-mounted store), or pulled with progress logged. Embedding jobs never wait on any of this and
the worker's readiness does not either; `llm` jobs wait for it, bounded, then fail with a clear
retryable error. `snapshot()` is what /readyz shows.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from base import logs
from base.aio import cancel_and_wait
from base.cache.copy import copy_verified
from base.cache.manifest import find_model, read_cache
from base.env import inside
from worker.errors import JobError
from worker.metrics import WorkerMetrics
from worker.settings import WorkerSettings

log = logs.get(__name__)
_PROGRESS_EVERY = 2.0
_MAX_BACKOFF = 5.0


class OllamaUnavailable(RuntimeError):
    """Ollama did not answer before the deadline, or the model could not be made available."""


class OllamaState:
    def __init__(self, settings: WorkerSettings, metrics: WorkerMetrics | None = None) -> None:
        from ollama import AsyncClient

        self.settings = settings
        self.metrics = metrics
        self.model = settings.llm_model
        self.host = settings.ollama_host
        self.state = "starting" if settings.llm_enabled else "disabled"
        self.source = ""  # present | cache | pull
        self.error = ""
        self.server_version = ""
        self.progress: dict[str, Any] = {}
        self._client = AsyncClient(host=settings.ollama_host, timeout=30)
        self._settled = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._changed = time.monotonic()

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def start(self) -> asyncio.Task[None] | None:
        """Begin bringing the LLM up in the background (no-op when llm is disabled)."""
        if self.settings.llm_enabled and self._task is None:
            self._task = asyncio.create_task(self._run(), name="ollama-state")
        return self._task

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        await self._client._client.aclose()

    def snapshot(self) -> dict[str, Any]:
        return {
            "enabled": self.settings.llm_enabled, "state": self.state, "ready": self.ready,
            "host": self.host, "model": self.model, "source": self.source,
            "server_version": self.server_version, "error": self.error,
            "progress": dict(self.progress),
            "seconds_in_state": round(time.monotonic() - self._changed, 3),
        }  # fmt: skip

    async def wait_ready(self, wait: float | None = None) -> None:
        """For `llm` jobs: return once the LLM is ready, or raise a retryable `JobError`."""
        wait = self.settings.llm_wait_seconds if wait is None else wait
        if self.ready:
            return
        if not self._settled.is_set():
            try:
                await asyncio.wait_for(self._settled.wait(), wait)
            except TimeoutError:
                raise JobError("llm_unavailable", self._not_ready_message(wait)) from None
        if not self.ready:
            raise JobError("llm_unavailable", f"the LLM {self.model} is unavailable: {self.error}")

    # -----------------------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._wait_for_server()
            if not await self._has_model() and not await self._copy_from_cache():
                await self._pull()
            self._set("ready")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.error = str(exc) or type(exc).__name__
            self._set("unavailable")
            log.error("LLM unavailable", extra={"model": self.model, "error": self.error})
        finally:
            self._settled.set()

    async def _wait_for_server(self) -> None:
        """Backoff 0.1 s doubling to 5 s, until the deadline: Ollama may take a while to start."""
        timeout = self.settings.ollama_ready_timeout_seconds
        deadline = time.monotonic() + timeout
        delay, attempts = 0.1, 0
        while True:
            attempts += 1
            try:
                response = await self._client._request_raw("GET", "/api/version")  # type: ignore[no-untyped-call]
                self.server_version = str(response.json().get("version", ""))
                log.info("Ollama answered", extra={"host": self.host, "attempts": attempts,
                         "version": self.server_version})  # fmt: skip
                return
            except Exception as exc:  # refused, reset, timeout, 5xx: all mean "not yet"
                self.error = f"{type(exc).__name__}: {exc}"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise OllamaUnavailable(
                    f"Ollama at {self.host} did not answer within {timeout:g} s "
                    f"({attempts} attempts; last error: {self.error})"
                )
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, _MAX_BACKOFF)

    async def _has_model(self) -> bool:
        listing = await self._client.list()
        names = {m.model for m in listing.models if m.model}
        wanted = {self.model, self.model.removesuffix(":latest")}
        if ":" not in self.model:
            wanted.add(f"{self.model}:latest")
        if names & wanted:
            self.source = self.source or "present"
            return True
        return False

    async def _copy_from_cache(self) -> bool:
        """Copy the model's manifest and blobs from the cache into the local OLLAMA_MODELS."""
        dest = self.settings.ollama_models
        if not self.settings.shared_model_volume_enabled or not dest:
            return False
        root = Path(self.settings.model_cache_path)
        if inside(dest, str(root)):
            log.warning("OLLAMA_MODELS lies inside the cache: not copying", extra={"dest": dest})
            return False
        state = await asyncio.to_thread(
            read_cache, root, timeout=self.settings.cache_read_timeout_seconds
        )
        entry = find_model(state.manifest, self.model, "ollama") if state.manifest else None
        if not state.valid or entry is None:
            log.info("LLM not in the cache", extra={"model": self.model, "reason": state.reason})
            return False
        self._set("copying")
        try:
            result = await asyncio.to_thread(
                copy_verified, root, entry, Path(dest), readers=self.settings.model_copy_readers
            )
        except Exception as exc:  # a bad cache copy falls back to a pull
            log.error("LLM copy from the cache failed", extra={"error": str(exc)})
            return False
        log.info("LLM copied from the cache", extra={"model": self.model, "bytes": result.bytes,
                 "seconds": round(result.seconds, 3), "generation": state.generation})  # fmt: skip
        self.source = "cache"
        if await self._has_model():
            return True
        log.warning("Ollama does not list the copied model: is OLLAMA_MODELS its store?",
                    extra={"dest": dest})  # fmt: skip
        self.source = ""
        return False

    async def _pull(self) -> None:
        if not self.settings.ollama_pull:
            raise OllamaUnavailable(f"{self.model} is not in Ollama and TABULAR_OLLAMA_PULL=false")
        self._set("pulling")
        last = 0.0
        async for event in await self._client.pull(self.model, stream=True):
            completed, total = event.completed or 0, event.total or 0
            self.progress = {"status": event.status, "completed": completed, "total": total}
            now = time.monotonic()
            if now - last >= _PROGRESS_EVERY or event.status == "success":
                last = now
                log.info("LLM pull progress", extra={"model": self.model, **self.progress})
        self.source = "pull"
        if not await self._has_model():
            raise OllamaUnavailable(f"pulled {self.model}, but Ollama does not list it")

    def _set(self, state: str) -> None:
        self.state, self._changed = state, time.monotonic()
        if state == "ready":
            self.error = ""
            log.info("LLM ready", extra={"model": self.model, "source": self.source})
        if self.metrics is not None:
            self.metrics.ollama_ready.set(1 if state == "ready" else 0)

    def _not_ready_message(self, waited: float) -> str:
        detail = self.state
        if self.state == "pulling" and self.progress.get("total"):
            detail += f" {100 * self.progress['completed'] / self.progress['total']:.0f}%"
        if self.error and self.state == "starting":
            detail += f"; last error: {self.error}"
        return f"the LLM {self.model} is not ready after {waited:g} s (Ollama: {detail})"
