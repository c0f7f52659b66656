"""`tabular-sync listen`: one sync per refresh event from Pub/Sub, one at a time.

Cloud Scheduler publishes to the refresh topic; its payload may name models
(`{"models": ["minilm"]}` or an attribute `models=minilm,llama`), anything else means all.
Events are serialised by flow control (one leased message) and a lock, and each is acked only
after its sync finished, so a crashed listener's event is redelivered. A sync failure still
acks: the outcome is in sync-status.json and the next scheduled event retries.

The listener serves /metrics (`SyncMetrics`, updated after each sync), /healthz and /readyz on
TABULAR_SYNC_METRICS_PORT with `base.http.HttpThread`.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from base import logs
from base.cache.specs import ModelSpec
from base.cache.status import cache_status
from base.http import HttpThread
from base.pubsub import full_name, publisher_client, subscriber_client
from sync.metrics import SyncMetrics
from sync.run import SyncResult, sync_once
from sync.settings import SyncSettings

log = logs.get(__name__)
MAX_LEASE_SECONDS = 4 * 3600  # the client keeps extending the ack deadline while a sync runs


def parse_event(data: bytes, attributes: Mapping[str, str]) -> list[str] | None:
    """Model names an event asks for, or None for every configured model."""
    if attributes.get("models"):
        return _names(attributes["models"].split(","))
    try:
        body = orjson.loads(data) if data.strip() else None
    except orjson.JSONDecodeError:
        return None
    models = body.get("models") if isinstance(body, dict) else None
    if isinstance(models, str):
        return _names(models.split(","))
    if isinstance(models, list) and all(isinstance(m, str) for m in models):
        return _names(models)
    return None


def _names(items: Sequence[str]) -> list[str] | None:
    names = [item.strip() for item in items if item.strip()]
    return names or None


class Listener:
    def __init__(
        self,
        root: Path,
        specs: Sequence[ModelSpec],
        settings: SyncSettings,
        metrics: SyncMetrics | None = None,
    ) -> None:
        self.root = root
        self.specs = list(specs)
        self.settings = settings
        self.metrics = metrics
        self._lock = threading.Lock()
        self._publisher = publisher_client() if settings.refresh_complete_topic else None
        self.syncs = 0
        self.last_outcome = ""

    def handle(self, message: Any) -> None:
        """Pub/Sub callback (a client thread): run the sync, announce it, then ack."""
        with self._lock:
            only = parse_event(message.data, dict(message.attributes))
            log.info("Refresh event", extra={"message_id": message.message_id, "models": only})
            result = sync_once(self.root, self.specs, self.settings, only=only)
            self.syncs += 1
            self.last_outcome = result.outcome
            if self.metrics is not None:
                self.metrics.count_run(result)
                self.metrics.set_status(cache_status(self.root))
            self._announce(result, message.message_id)
            message.ack()

    def _announce(self, result: SyncResult, trigger: str) -> None:
        if self._publisher is None:
            return
        body = {"event": "refresh-complete", "trigger_message_id": trigger, **result.to_dict()}
        try:
            topic = full_name("topics", self.settings.refresh_complete_topic, self.settings.project)
            self._publisher.publish(
                topic, orjson.dumps(body), outcome=result.outcome,
                generation=str(result.generation),
            ).result(timeout=60)  # fmt: skip
        except Exception as exc:  # the sync itself succeeded or failed already; just report
            log.error("Could not publish refresh-complete", extra={"error": str(exc)})
            return
        log.info("Refresh complete published", extra={"topic": topic,
                 "generation": result.generation})  # fmt: skip


def listen(root: Path, specs: Sequence[ModelSpec], settings: SyncSettings) -> int:
    """Block until SIGTERM/SIGINT; returns the exit code."""
    from google.cloud import pubsub_v1

    metrics = SyncMetrics(quota_bytes=settings.cache_quota_bytes or None)
    metrics.set_status(cache_status(root))  # the state before the first event
    listener = Listener(root, specs, settings, metrics)
    stop = threading.Event()
    streaming: list[Any] = []  # the subscribe() future, once the stream is opened

    def readiness() -> tuple[bool, dict[str, Any]]:
        ready = bool(streaming) and not streaming[0].done() and not stop.is_set()
        return ready, {"syncs": listener.syncs, "last_outcome": listener.last_outcome}

    try:
        subscription = full_name("subscriptions", settings.refresh_subscription, settings.project)
    except ValueError as exc:
        log.error("Cannot name the refresh subscription", extra={"error": str(exc)})
        return 2
    http = HttpThread(settings.sync_metrics_port, readiness)
    try:
        http.start()
    except OSError as exc:
        log.error("Cannot serve metrics", extra={"port": settings.sync_metrics_port,
                  "error": str(exc)})  # fmt: skip
        return 1
    subscriber = subscriber_client()
    flow = pubsub_v1.types.FlowControl(max_messages=1, max_lease_duration=MAX_LEASE_SECONDS)
    future = subscriber.subscribe(subscription, listener.handle, flow_control=flow)
    streaming.append(future)

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()
        future.cancel()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("Listening for refresh events", extra={"subscription": subscription,
             "models": [s.name for s in specs], "metrics_port": http.server.port})  # fmt: skip
    try:
        future.result()
    except Exception as exc:
        if not stop.is_set():
            log.error("Refresh subscription failed", extra={"error": str(exc)})
            return 1
    finally:
        subscriber.close()
        http.stop()
    log.info("Listener stopped", extra={"syncs": listener.syncs})
    return 0
