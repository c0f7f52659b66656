"""Prometheus metrics of the worker.

Names follow Prometheus conventions: `tabular_` prefix, `_total` counters, base units
(`_seconds`, `_bytes`). Label values are bounded: job types, outcomes and error codes are fixed
vocabularies, never job ids or user strings.
"""

from __future__ import annotations

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
)

from worker.threads import ThreadCpuCollector

# Buckets that resolve both a 5 ms single-row job and a 60 s table job.
LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
TOKEN_BUCKETS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768)
#: Job types whose ok series are created at 0 when the metrics are.
JOB_TYPES = ("embed", "classify")


def job_type_label(value: str | None) -> str:
    """A bounded `type` label: jobs that never said a valid type count as `unknown`."""
    return value if value in ("embed", "classify") else "unknown"


class WorkerMetrics:
    """All worker series in one place, registered on one registry (the default in production)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        r = registry
        self.jobs = Counter(
            "tabular_jobs",
            "Jobs finished, by type, outcome (ok|error|retry) and error code ('' when ok).",
            ["type", "outcome", "code"],
            registry=r,
        )
        self.rows = Counter("tabular_rows", "Table rows processed, by job type.", ["type"],
                            registry=r)  # fmt: skip
        self.rows_truncated = Counter(
            "tabular_rows_truncated",
            "Rows embedded from their first max_tokens tokens (longer texts), by job type.",
            ["type"],
            registry=r,
        )
        for job_type in JOB_TYPES:
            # The ok series exist at 0 from the start, so rate()/increase() see the first jobs.
            self.jobs.labels(job_type, "ok", "")
            self.rows.labels(job_type)
            self.rows_truncated.labels(job_type)
        self.queue_seconds = Histogram(
            "tabular_job_queue_seconds",
            "Time from publish to the worker starting the job (Pub/Sub publish_time).",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.inference_seconds = Histogram(
            "tabular_job_inference_seconds",
            "Time from decode to a finished result (batch wait + encode + classify).",
            ["type"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.publish_seconds = Histogram(
            "tabular_job_publish_seconds",
            "Time to publish a result until the publish future resolves.",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.job_seconds = Histogram(
            "tabular_job_duration_seconds",
            "Time from receiving a job message to its ack, by type.",
            ["type"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_rows = Histogram(
            "tabular_batch_rows", "Rows per encode call.", buckets=ROW_BUCKETS, registry=r
        )
        self.batch_tokens = Histogram(
            "tabular_batch_tokens", "Estimated tokens per encode call.",
            buckets=TOKEN_BUCKETS, registry=r,
        )  # fmt: skip
        self.in_flight = Gauge("tabular_jobs_in_flight", "Jobs received and not yet acked or "
                               "nacked.", registry=r)  # fmt: skip
        self.acks = Counter("tabular_pubsub_acks", "Job messages acked.", registry=r)
        self.nacks = Counter("tabular_pubsub_nacks", "Job messages nacked.", registry=r)
        self.redeliveries = Counter(
            "tabular_pubsub_redeliveries",
            "Job messages received with delivery_attempt > 1.", registry=r,
        )  # fmt: skip
        self.pubsub_errors = Counter(
            "tabular_pubsub_rpc_errors",
            "Failed Pub/Sub RPCs of the job subscription, by rpc (pull, ack, nack, modack): "
            "retried, or their messages redelivered.", ["rpc"], registry=r,
        )  # fmt: skip
        self.dead_lettered = Counter(
            "tabular_pubsub_dead_lettered",
            "Jobs answered with an error on their last delivery attempt (then dead-lettered).",
            registry=r,
        )
        self.duplicates = Counter(
            "tabular_duplicate_jobs", "Deliveries answered from the recent-results memory.",
            registry=r,
        )  # fmt: skip
        self.cache_lookups = Counter(
            "tabular_model_cache_lookups",
            "Model cache checks at load time, by result (hit|miss) and reason.",
            ["result", "reason"], registry=r,
        )  # fmt: skip
        self.model_load_seconds = Gauge(
            "tabular_model_load_seconds", "Seconds the last model load took, by backend.",
            ["backend", "precision"], registry=r,
        )  # fmt: skip
        self.model_warmup_seconds = Gauge(
            "tabular_model_warmup_seconds", "Seconds the last warm-up encode took, by backend.",
            ["backend", "precision"], registry=r,
        )  # fmt: skip
        self.model_info = Info(
            "tabular_model",
            "The model serving embeddings (name, source, generation, backend, precision, variant, "
            "streams, threads per stream).",
            registry=r,
        )
        self.model_generation = Gauge(
            "tabular_model_generation", "Cache generation of the loaded model (0: not from the "
            "cache).", registry=r,
        )  # fmt: skip
        self.model_reloads = Counter(
            "tabular_model_reloads", "Hot reloads to a new cache generation, by outcome.",
            ["outcome"], registry=r,
        )  # fmt: skip
        self.ready = Gauge("tabular_ready", "1 when the worker answers /readyz with 200.",
                           registry=r)  # fmt: skip
        self.model_busy_ratio = Gauge(
            "tabular_model_busy_ratio",
            "Share of the last TABULAR_UTILISATION_WINDOW_SECONDS the model threads (one per "
            "stream) spent working (encode, few-shot fits): the instance's utilisation.",
            registry=r,
        )  # fmt: skip
        self.model_busy_seconds = Counter(
            "tabular_model_busy_seconds",
            "Seconds the model threads spent working, divided by the streams (rate() <= 1).",
            registry=r,
        )
        self.scaling_max_instances = Gauge(
            "tabular_scaling_max_instances",
            "The autoscaler's instance maximum, as configured (TABULAR_SCALING_MAX_INSTANCES; "
            "0: not known).", registry=r,
        )  # fmt: skip
        self.ollama_ready = Gauge(
            "tabular_ollama_ready", "1 when Ollama answers and the LLM model is present.",
            registry=r,
        )  # fmt: skip
        self.sync_last_success = Gauge(
            "tabular_sync_last_success_timestamp_seconds",
            "Unix time of the cache's last successful sync (from sync-status.json).", registry=r,
        )  # fmt: skip
        self.sync_consecutive_failures = Gauge(
            "tabular_sync_consecutive_failures",
            "Failed syncs since the last success (from sync-status.json).", registry=r,
        )  # fmt: skip
        self.cache_size_bytes = Gauge(
            "tabular_cache_size_bytes", "Bytes the cache's manifest accounts for.", registry=r
        )
        r.register(ThreadCpuCollector())  # tabular_thread_cpu_seconds{group}

    def set_model_times(
        self, backend: str, precision: str, load_seconds: float, warmup_seconds: float
    ) -> None:
        """Load and warm-up time of the model now serving (one series: the old one is cleared)."""
        for gauge, value in ((self.model_load_seconds, load_seconds),
                             (self.model_warmup_seconds, warmup_seconds)):  # fmt: skip
            gauge.clear()
            gauge.labels(backend, precision).set(value)

    def set_sync_status(
        self, last_success_unix: float, consecutive_failures: int, cache_size_bytes: int | None
    ) -> None:
        """The sync gauges, from the cache's sync-status.json (`modelstore.export_sync_status`)."""
        self.sync_last_success.set(last_success_unix)
        self.sync_consecutive_failures.set(consecutive_failures)
        if cache_size_bytes is not None:
            self.cache_size_bytes.set(cache_size_bytes)
