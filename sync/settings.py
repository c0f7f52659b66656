"""The sync's settings: the variables `tabular-sync` reads, on top of the shared ones.

Every field's variable is listed in the README's sync table (a test checks that the two agree);
the variables both programs read are in `base.env.CommonSettings`.
"""

from __future__ import annotations

from dataclasses import dataclass

from base.env import CommonSettings, SettingsError, setting


@dataclass(frozen=True)
class SyncSettings(CommonSettings):
    sync_export: bool = setting(
        "TABULAR_SYNC_EXPORT",
        True,
        "Export ONNX variants (fp32, int8) of each sentence-transformers model and gate them "
        "against torch fp32 (needs torch, onnx, onnxruntime: the sync image).",
    )
    refresh_subscription: str = setting(
        "TABULAR_REFRESH_SUBSCRIPTION",
        "tabular-model-refresh-sub",
        "Subscription `tabular-sync listen` takes refresh events (Cloud Scheduler) from.",
    )
    refresh_complete_topic: str = setting(
        "TABULAR_REFRESH_COMPLETE_TOPIC",
        "",
        "Topic a refresh-complete message is published to after each sync (empty: none).",
    )
    sync_lock_ttl_seconds: float = setting(
        "TABULAR_SYNC_LOCK_TTL_SECONDS",
        120.0,
        "Lifetime of the sync lock; its holder renews it, so it expires soon after a crash.",
    )
    sync_lock_wait_seconds: float = setting(
        "TABULAR_SYNC_LOCK_WAIT_SECONDS", 900.0, "How long a sync waits for another one to finish."
    )
    sync_tmp_max_age_hours: float = setting(
        "TABULAR_SYNC_TMP_MAX_AGE_HOURS", 168.0, "Staging entries under .tmp/ older than this go."
    )
    sync_gc_grace_hours: float = setting(
        "TABULAR_SYNC_GC_GRACE_HOURS",
        24.0,
        "After a sync, trees neither the committed nor the previous generation names are deleted "
        "once the previous one was committed (and they were written) this long ago (<0: never).",
    )
    sync_ollama_host: str = setting(
        "TABULAR_SYNC_OLLAMA_HOST",
        "",
        "Ollama server the sync pulls through (default OLLAMA_HOST).",
    )
    sync_ollama_models: str = setting(
        "TABULAR_SYNC_OLLAMA_MODELS",
        "",
        "OLLAMA_MODELS of that server, read by the sync (default <cache>/.tmp/ollama-store).",
    )
    pushgateway_url: str = setting(
        "TABULAR_PUSHGATEWAY_URL",
        "",
        "Pushgateway `tabular-sync once` pushes its metrics to (host:port or URL; empty: no push).",
    )
    sync_metrics_port: int = setting(
        "TABULAR_SYNC_METRICS_PORT",
        8080,
        "HTTP port of `tabular-sync listen` for /metrics, /healthz and /readyz.",
    )
    cache_quota_bytes: int = setting(
        "TABULAR_CACHE_QUOTA_BYTES",
        0,
        "Cache size limit the sync exports as tabular_cache_quota_bytes (0: none, no series).",
    )

    def validate(self) -> None:
        if self.cache_quota_bytes < 0:
            raise SettingsError("TABULAR_CACHE_QUOTA_BYTES must be >= 0 (0: no quota)")
