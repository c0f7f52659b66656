"""`tabular-worker serve`: jobs from a Pub/Sub subscription, results to a topic.

A job message is acked only after its result (or error result) is published. Transient failures
are nacked for redelivery; on the last delivery attempt the worker publishes an error result
first, then lets the dead-letter policy take the message, so every job_id is answered.
"""

from __future__ import annotations

import asyncio
import functools
import signal
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1

from base import logs, pubsub
from base.http import HealthServer
from worker import transport
from worker.classify import LlmClassifier
from worker.metrics import WorkerMetrics, job_type_label
from worker.model import EmbeddingModel
from worker.modelstore import (
    CacheReloader,
    cache_snapshot,
    export_sync_status,
    load_embedding_model,
)
from worker.ollama_state import OllamaState
from worker.pipeline import Pipeline
from worker.results import Outcome
from worker.settings import WorkerSettings
from worker.transport import Consumer, Received

log = logs.get(__name__)


class SetupError(RuntimeError):
    """The worker cannot start (missing subscription, bad names): exit non-zero, say why."""


class RecentResults:
    """Bounded memory of published results by job_id: a redelivered job costs a lookup."""

    def __init__(self, max_items: int, max_bytes: int = 64_000_000) -> None:
        self._items: OrderedDict[str, tuple[bytes, dict[str, str]]] = OrderedDict()
        self._max_items = max_items
        self._max_bytes = max_bytes
        self._bytes = 0

    def get(self, job_id: str | None) -> tuple[bytes, dict[str, str]] | None:
        if job_id is None or job_id not in self._items:
            return None
        self._items.move_to_end(job_id)
        return self._items[job_id]

    def put(self, job_id: str, data: bytes, attributes: dict[str, str]) -> None:
        if self._max_items < 1 or len(data) > self._max_bytes // 8:
            return
        if job_id in self._items:
            self._bytes -= len(self._items.pop(job_id)[0])
        self._items[job_id] = (data, attributes)
        self._bytes += len(data)
        while len(self._items) > self._max_items or self._bytes > self._max_bytes:
            self._bytes -= len(self._items.popitem(last=False)[1][0])


# How the service gets its embedding model: `load_embedding_model` in production; a test can
# hand in another loader (tests/delay_worker.py) without touching the rest of the service.
ModelLoader = Callable[[WorkerSettings, WorkerMetrics], Awaitable[EmbeddingModel]]


class Service:
    def __init__(
        self,
        settings: WorkerSettings,
        metrics: WorkerMetrics | None = None,
        load_model: ModelLoader = load_embedding_model,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or WorkerMetrics()
        self._load_model = load_model
        self.pipeline: Pipeline | None = None
        self.stop = asyncio.Event()
        self.subscription = ""
        self.results_topic = ""
        self.jobs_topic = ""
        self.max_delivery_attempts: int | None = None
        self._ack_deadline = 10  # the subscription's, read at start
        self._recent = RecentResults(settings.result_cache_size)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._publisher: transport.Publisher | None = None
        self._deadline = 0.0  # set by SIGTERM: when the grace period ends
        self._state: dict[str, Any] = {"model": {"state": "loading"}, "pubsub": {"state": "init"}}
        self.ollama = OllamaState(settings, self.metrics)

    # --- readiness ----------------------------------------------------------------------------

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready = model loaded and warmed, not shutting down. Ollama never gates readiness:
        `llm` capability is reported on its own."""
        ready = self.pipeline is not None and not self.stop.is_set()
        self.metrics.ready.set(1 if ready else 0)
        components = dict(self._state)
        if self.pipeline is not None:
            components["cache"] = cache_snapshot(self.settings, self.pipeline.model)
        components["ollama"] = self.ollama.snapshot()
        return ready, {"components": components, "llm": self.ollama.ready}

    # --- lifecycle ----------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        # The sync/cache gauges are read from sync-status.json whenever /metrics is scraped.
        refresh = functools.partial(export_sync_status, self.settings, self.metrics)
        health = HealthServer(self.settings.port, self.readiness, on_scrape=refresh)
        await health.start()
        try:
            return await self._serve()
        except SetupError as exc:
            log.error(str(exc))
            return 1
        finally:
            await self.ollama.close()
            await health.close()
            if self.pipeline is not None:
                await self.pipeline.close()

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("Shutting down", extra={"signal": sig.name})
        self._deadline = time.monotonic() + self.settings.shutdown_grace_seconds
        self.stop.set()

    async def _serve(self) -> int:
        s = self.settings
        subscriber = pubsub.subscriber_client()
        self._publisher = transport.Publisher(pubsub.publisher_api())
        self.subscription = pubsub.full_name("subscriptions", s.jobs_subscription, s.project)
        project = pubsub.project_of(self.subscription)
        self.results_topic = pubsub.full_name("topics", s.results_topic, project)
        self.jobs_topic = pubsub.full_name("topics", s.jobs_topic, project)
        if s.create_resources:
            transport.ensure_resources(
                self._publisher.api, subscriber,
                jobs_topic=pubsub.full_name("topics", s.jobs_topic, project),
                subscription=self.subscription, results_topic=self.results_topic,
                dead_letter_topic=pubsub.full_name("topics", s.dead_letter_topic, project),
                max_delivery_attempts=s.max_delivery_attempts,
            )  # fmt: skip
        await self._check_subscription(subscriber)
        if self.stop.is_set():
            return 0
        self.ollama.start()  # comes up in the background; embedding work never waits for it
        model = await self._load_model(s, self.metrics)
        self.pipeline = Pipeline(s, model, metrics=self.metrics, llm=self._llm(), fan_out=True)
        self._state["model"] = {
            "state": "ready", "name": model.info.name, "source": model.info.source,
            "generation": model.info.generation, "dims": model.dims,
        }  # fmt: skip
        if self.stop.is_set():
            return 0
        self.metrics.ready.set(1)
        self.metrics.scaling_max_instances.set(s.scaling_max_instances)
        log.info("Worker ready", extra={"subscription": self.subscription})
        consumer = Consumer(
            pubsub.subscriber_async_api(), self.subscription, self.handle,
            max_messages=s.max_in_flight_jobs, max_bytes=s.max_in_flight_bytes,
            lease_seconds=s.lease_extension_seconds, ack_deadline=self._ack_deadline,
            on_error=lambda rpc: self.metrics.pubsub_errors.labels(rpc).inc(),
        )  # fmt: skip
        self._state["pubsub"] = {"state": "pulling", "subscription": self.subscription}
        reloader = None
        if s.shared_model_volume_enabled:
            reloading = CacheReloader(s, self.metrics).run(self.pipeline, self.stop)
            reloader = asyncio.create_task(reloading)
        await consumer.run(self.stop)
        if reloader is not None:
            await asyncio.wait({reloader}, timeout=1.0)
        self.metrics.ready.set(0)
        await self._drain(consumer)
        return 0

    async def _check_subscription(self, subscriber: pubsub_v1.SubscriberClient) -> None:
        """Fail fast on a missing subscription; wait out an unreachable endpoint."""
        delay = 1.0
        while not self.stop.is_set():
            try:
                sub = await asyncio.to_thread(
                    subscriber.get_subscription, subscription=self.subscription, timeout=10
                )
            except gexc.NotFound:
                raise SetupError(
                    f"subscription {self.subscription} does not exist: create it (see "
                    "infra/terraform) or set TABULAR_CREATE_RESOURCES=true for development"
                ) from None
            except (gexc.GoogleAPICallError, gexc.RetryError) as exc:
                log.warning(
                    "Pub/Sub unreachable; retrying",
                    extra={"error": repr(exc), "retry_in_seconds": delay},
                )
                try:
                    await asyncio.wait_for(self.stop.wait(), delay)
                except TimeoutError:
                    pass
                delay = min(delay * 2, 30.0)
                continue
            self._ack_deadline = sub.ack_deadline_seconds or 10
            policy = sub.dead_letter_policy
            if policy and policy.dead_letter_topic:
                self.max_delivery_attempts = policy.max_delivery_attempts or 5
            else:
                log.warning(
                    "Subscription has no dead-letter policy: a job that keeps failing "
                    "transiently is redelivered forever",
                    extra={"subscription": self.subscription},
                )
            return

    async def _drain(self, consumer: Consumer) -> None:
        """Stop receiving, finish in-flight jobs within the grace period, nack the rest,
        flush results."""
        deadline = self._deadline or time.monotonic() + self.settings.shutdown_grace_seconds
        await consumer.stop_pulling()
        pending = {t for t in self._tasks if not t.done()}
        if pending:
            # Keep ~2 s of the grace period for nacks, acks and flushing results.
            budget = max(deadline - time.monotonic() - 2.0, 0.1)
            log.info("Finishing in-flight jobs", extra={"jobs": len(pending), "seconds": budget})
            _, late = await asyncio.wait(pending, timeout=budget)
            for task in late:
                task.cancel()  # its message is nacked and redelivered elsewhere
            if late:
                await asyncio.wait(late, timeout=0.5)
                log.warning("Nacked unfinished jobs", extra={"jobs": len(late)})
        if self._publisher is not None:
            await self._publisher.close()
        await consumer.close()
        overran = round(max(0.0, time.monotonic() - deadline), 3)
        log.info("Stopped", extra={"overran_seconds": overran})

    def _llm(self) -> LlmClassifier | None:
        s = self.settings
        if not s.llm_enabled:
            return None
        return LlmClassifier(
            s.ollama_host, s.llm_model, s.llm_timeout_seconds, availability=self.ollama.wait_ready
        )

    # --- one job --------------------------------------------------------------------------

    async def handle(self, msg: Received) -> bool:
        """Process one delivery; True means ack."""
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        m = self.metrics
        m.in_flight.inc()
        started = time.perf_counter()
        m.queue_seconds.observe(max(0.0, time.time() - msg.publish_time))
        if msg.delivery_attempt and msg.delivery_attempt > 1:
            m.redeliveries.inc()
        try:
            ack, job_type = await self._handle(msg)
        except asyncio.CancelledError:
            m.nacks.inc()
            raise
        finally:
            m.in_flight.dec()
            self._tasks.discard(task)
        m.acks.inc() if ack else m.nacks.inc()
        m.job_seconds.labels(job_type).observe(time.perf_counter() - started)
        return ack

    async def _handle(self, msg: Received) -> tuple[bool, str]:
        """(ack?, job type label)."""
        assert self.pipeline is not None
        cached = _duplicate_of(self._recent, msg)
        if cached is not None:
            self.metrics.duplicates.inc()
            data, stored = cached
            # The stored result, but the attributes of this delivery, not of the first one.
            attrs = {k: v for k, v in stored.items() if k not in _DELIVERY_KEYS}
            attrs |= _delivery_attributes(msg)
            return await self._publish(data, attrs), job_type_label(attrs.get("type"))
        outcome = await self.pipeline.handle(msg.data)
        fields = {"job_id": outcome.job_id, "delivery_attempt": msg.delivery_attempt,
                  "message_id": msg.message_id}  # fmt: skip
        job_type = job_type_label(outcome.type)
        if outcome.retryable:
            last = (
                self.max_delivery_attempts is not None
                and msg.delivery_attempt is not None
                and msg.delivery_attempt >= self.max_delivery_attempts
            )
            if not last:
                self.metrics.jobs.labels(job_type, "retry", outcome.code).inc()
                log.warning("Job failed transiently; nacking for redelivery",
                            extra={**fields, "code": outcome.code})  # fmt: skip
                return False, job_type
            _give_up(outcome, msg.delivery_attempt or 0)
            self.metrics.dead_lettered.inc()
            log.error("Job failed on its last attempt; error result published, dead-lettering",
                      extra={**fields, "code": outcome.code})  # fmt: skip
        self.metrics.jobs.labels(job_type, outcome.status, outcome.code).inc()
        data, attrs = outcome.data(), _attributes(outcome, msg)
        # Shard jobs first: once the split is answered and acked, they must already be queued.
        published = all([await self._publish_job(job) for job in outcome.jobs])
        published = published and await self._publish(data, attrs)
        for follow_up in outcome.follow_ups:  # the final result of a job whose last shard this was
            published = published and await self._publish(
                follow_up.data(), _attributes(follow_up, msg)
            )
        if published and outcome.job_id is not None and not outcome.retryable:
            self._recent.put(outcome.job_id, data, attrs)
        if outcome.status != "ok":
            log.info("Job answered with an error", extra={**fields, "code": outcome.code})
        # A dead-lettered job is nacked after its error result, so the policy forwards it.
        return published and not outcome.retryable, job_type

    async def _publish_job(self, data: bytes) -> bool:
        """A shard job onto the jobs topic (worker.shards); False (nack the parent) on failure."""
        assert self._publisher is not None
        job_id = _body_job_id(data) or ""
        try:
            await self._publisher.publish(self.jobs_topic, data, {"job_id": job_id})
        except Exception as exc:
            log.error("Publishing a shard job failed; nacking the job",
                      extra={"job_id": job_id, "error": repr(exc)})  # fmt: skip
            return False
        return True

    async def _publish(self, data: bytes, attributes: dict[str, str]) -> bool:
        assert self._publisher is not None
        started = time.perf_counter()
        try:
            await self._publisher.publish(self.results_topic, data, attributes)
        except Exception as exc:
            log.error("Publishing a result failed; nacking the job",
                      extra={"job_id": attributes.get("job_id"), "error": repr(exc)})  # fmt: skip
            return False
        self.metrics.publish_seconds.observe(time.perf_counter() - started)
        return True


def _duplicate_of(recent: RecentResults, msg: Received) -> tuple[bytes, dict[str, str]] | None:
    """The published result this delivery repeats, if any, keyed by the body's `job_id`.

    The body's `job_id` is the job's id: its result carries it. The `job_id` attribute (`submit`
    sets it) is a shortcut that saves parsing the body, and a hit through it counts only when
    the body agrees: a message whose attribute names another job (an earlier one, already
    answered) is processed and gets a result of its own.
    """
    attribute = msg.attributes.get("job_id")
    if attribute is None:
        return recent.get(_body_job_id(msg.data))
    cached = recent.get(attribute)
    return cached if cached is not None and _body_job_id(msg.data) == attribute else None


def _body_job_id(data: bytes) -> str | None:
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    job_id = obj.get("job_id") if isinstance(obj, dict) else None
    return job_id if isinstance(job_id, str) else None


def _attributes(outcome: Outcome, msg: Received) -> dict[str, str]:
    return {
        "job_id": outcome.job_id or "",
        "status": outcome.status,
        "type": outcome.type or "",
        **_delivery_attributes(msg),
    }


_DELIVERY_KEYS = ("source_message_id", "delivery_attempt")


def _delivery_attributes(msg: Received) -> dict[str, str]:
    """Which delivery a result answers: the job's message id and, when the subscription has a
    dead-letter policy (Pub/Sub counts attempts only then), the delivery attempt."""
    attrs = {"source_message_id": msg.message_id}
    if msg.delivery_attempt is not None:
        attrs["delivery_attempt"] = str(msg.delivery_attempt)
    return attrs


def _give_up(outcome: Outcome, attempt: int) -> None:
    error = outcome.result["error"]
    error["message"] += f" (gave up after {attempt} delivery attempts; the job is dead-lettered)"
    error["dead_lettered"] = True
