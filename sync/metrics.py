"""Prometheus metrics of the sync module.

In `listen` mode the sync process serves these on its own `/metrics`; in `once` mode it pushes
them to a Pushgateway under `job="tabular-sync"` when the run ends (`SyncMetrics.push`).

Three gauges share their names with the worker's (`tabular_sync_consecutive_failures`,
`tabular_sync_last_success_timestamp_seconds`, `tabular_cache_size_bytes`): workers read the same
facts from the cache's sync-status.json, so alerts take `max`/`min` over every source without
caring which job reported them. Because of those shared names, `SyncMetrics` and `WorkerMetrics`
cannot be registered on one registry; each process uses its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, push_to_gateway

if TYPE_CHECKING:
    from base.cache.status import CacheStatus
    from sync.run import SyncResult

#: The `job` label sync runs push under (the Pushgateway's grouping key).
PUSH_JOB = "tabular-sync"
#: Values of `tabular_sync_runs_total{outcome}`.
RUN_OUTCOMES = ("success", "failure")


class SyncMetrics:
    """All sync series in one place, registered on one registry (the default in production).

    `quota_bytes` registers `tabular_cache_quota_bytes`; without it the series does not exist
    (so a "cache near quota" alert has nothing to compare against instead of comparing with 0).
    """

    def __init__(
        self, registry: CollectorRegistry = REGISTRY, *, quota_bytes: int | None = None
    ) -> None:
        self.registry = registry
        r = registry
        self.runs = Counter(
            "tabular_sync_runs",
            "Sync runs finished, by outcome (success|failure).",
            ["outcome"],
            registry=r,
        )
        for outcome in RUN_OUTCOMES:
            # Both series exist from the start, so the first failure is an increase from 0.
            self.runs.labels(outcome)
        self.consecutive_failures = Gauge(
            "tabular_sync_consecutive_failures",
            "Failed sync runs since the last success (as written to sync-status.json).",
            registry=r,
        )
        self.last_success = Gauge(
            "tabular_sync_last_success_timestamp_seconds",
            "Unix time the last successful sync run finished (0: never).",
            registry=r,
        )
        self.bytes = Counter(
            "tabular_sync_bytes", "Bytes written into the cache by sync runs.", registry=r
        )
        self.files = Counter(
            "tabular_sync_files", "Files written into the cache by sync runs.", registry=r
        )
        self.gc_trees = Counter(
            "tabular_sync_gc_trees",
            "Old model trees deleted by garbage collection after sync runs.",
            registry=r,
        )
        self.gc_bytes = Counter(
            "tabular_sync_gc_bytes", "Bytes freed by garbage collection after sync runs.",
            registry=r,
        )  # fmt: skip
        self.duration_seconds = Gauge(
            "tabular_sync_duration_seconds",
            "Seconds the last sync run took (success or failure).",
            registry=r,
        )
        self.cache_size_bytes = Gauge(
            "tabular_cache_size_bytes", "Bytes the cache's manifest accounts for.", registry=r
        )
        self.cache_quota_bytes: Gauge | None = None
        if quota_bytes is not None:
            self.set_quota(quota_bytes)

    def set_quota(self, quota_bytes: int) -> None:
        """Export `tabular_cache_quota_bytes` (registered on first use)."""
        if quota_bytes <= 0:
            raise ValueError(f"cache quota must be positive, not {quota_bytes}")
        if self.cache_quota_bytes is None:
            self.cache_quota_bytes = Gauge(
                "tabular_cache_quota_bytes",
                "Configured size limit of the cache, in bytes.",
                registry=self.registry,
            )
        self.cache_quota_bytes.set(quota_bytes)

    def count_run(self, result: SyncResult) -> None:
        """One finished run: its outcome, what it wrote and how long it took."""
        self.runs.labels("success" if result.ok else "failure").inc()
        self.bytes.inc(result.bytes)
        self.files.inc(result.files)
        self.gc_trees.inc(result.gc_trees)
        self.gc_bytes.inc(result.gc_bytes)
        self.duration_seconds.set(result.duration_seconds)

    def set_status(self, status: CacheStatus | None) -> None:
        """The gauges that carry state across runs, from the cache's sync-status.json."""
        if status is None:
            return
        self.consecutive_failures.set(status.consecutive_failures)
        self.last_success.set(status.last_success_unix)
        if status.size_bytes is not None:
            self.cache_size_bytes.set(status.size_bytes)

    def push(
        self,
        gateway: str,
        *,
        grouping_key: Mapping[str, str] | None = None,
        timeout: float | None = 30,
    ) -> None:
        """Replace the `job="tabular-sync"` group on a Pushgateway with this registry's series."""
        push_to_gateway(
            gateway,
            job=PUSH_JOB,
            registry=self.registry,
            grouping_key=dict(grouping_key) if grouping_key else None,
            timeout=timeout,
        )
