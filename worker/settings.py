"""One typed settings object, read from the environment.

Names the ops docs already use (MODEL_CACHE_PATH, OLLAMA_HOST, PORT, ...) keep their names; the
project's own knobs take the TABULAR_ prefix. Every field's variable is listed in the README table
(a test checks that the two agree).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

PACKAGED_MODEL = "all-MiniLM-L6-v2"


class SettingsError(ValueError):
    """A variable is set to something this service cannot use."""


def _env(name: str, default: Any, doc: str) -> Any:
    return field(default=default, metadata={"env": name, "doc": doc})


@dataclass(frozen=True)
class Settings:
    # --- models -------------------------------------------------------------------------------
    embedding_model: str = _env(
        "TABULAR_EMBEDDING_MODEL",
        PACKAGED_MODEL,
        "Embedding model: a directory, a name under SENTENCE_TRANSFORMERS_HOME or in the cache "
        "manifest, or the packaged all-MiniLM-L6-v2 (default). Production: BAAI/bge-m3.",
    )
    normalize_embeddings: bool = _env(
        "TABULAR_NORMALIZE_EMBEDDINGS", True, "L2-normalise embeddings (jobs may override)."
    )
    sentence_transformers_home: str = _env(
        "SENTENCE_TRANSFORMERS_HOME", "", "Where sentence-transformers looks for named models."
    )
    huggingface_hub_cache: str = _env(
        "HUGGINGFACE_HUB_CACHE", "", "Hugging Face hub cache directory (read by huggingface_hub)."
    )
    # --- shared model cache ---------------------------------------------------------------
    model_cache_path: str = _env(
        "MODEL_CACHE_PATH", "/models", "Root of the shared model cache (GCS FUSE mount)."
    )
    shared_model_volume_enabled: bool = _env(
        "SHARED_MODEL_VOLUME_ENABLED", True, "Load models from the shared cache when valid."
    )
    local_model_dir: str = _env(
        "TABULAR_LOCAL_MODEL_DIR",
        "/tmp/tabular-models",
        "Local directory for models copied out of the cache or fetched on a miss.",
    )
    model_load_strategy: str = _env(
        "TABULAR_MODEL_LOAD_STRATEGY", "copy", "copy (to local disk, verified) or mount."
    )
    reload_interval_seconds: float = _env(
        "TABULAR_RELOAD_INTERVAL_SECONDS", 60.0, "How often to poll the cache for a new generation."
    )
    model_copy_readers: int = _env(
        "TABULAR_MODEL_COPY_READERS", 4, "Parallel readers when copying a model out of the cache."
    )
    # --- sync (tabular-sync) --------------------------------------------------------------
    sync_models: str = _env(
        "TABULAR_SYNC_MODELS",
        "",
        "Models the sync keeps in the cache: comma-separated name=source-uri (hf://org/name[@rev],"
        " ollama://name:tag, file://PATH). The worker resolves these names on a cache miss too.",
    )
    refresh_subscription: str = _env(
        "TABULAR_REFRESH_SUBSCRIPTION",
        "tabular-model-refresh-sub",
        "Subscription `tabular-sync listen` takes refresh events (Cloud Scheduler) from.",
    )
    refresh_complete_topic: str = _env(
        "TABULAR_REFRESH_COMPLETE_TOPIC",
        "",
        "Topic a refresh-complete message is published to after each sync (empty: none).",
    )
    sync_lock_ttl_seconds: float = _env(
        "TABULAR_SYNC_LOCK_TTL_SECONDS",
        120.0,
        "Lifetime of the sync lock; its holder renews it, so it expires soon after a crash.",
    )
    sync_lock_wait_seconds: float = _env(
        "TABULAR_SYNC_LOCK_WAIT_SECONDS", 900.0, "How long a sync waits for another one to finish."
    )
    sync_tmp_max_age_hours: float = _env(
        "TABULAR_SYNC_TMP_MAX_AGE_HOURS", 168.0, "Staging entries under .tmp/ older than this go."
    )
    sync_ollama_host: str = _env(
        "TABULAR_SYNC_OLLAMA_HOST",
        "",
        "Ollama server the sync pulls through (default OLLAMA_HOST).",
    )
    sync_ollama_models: str = _env(
        "TABULAR_SYNC_OLLAMA_MODELS",
        "",
        "OLLAMA_MODELS of that server, read by the sync (default <cache>/.tmp/ollama-store).",
    )
    pushgateway_url: str = _env(
        "TABULAR_PUSHGATEWAY_URL",
        "",
        "Pushgateway `tabular-sync once` pushes its metrics to (host:port or URL; empty: no push).",
    )
    sync_metrics_port: int = _env(
        "TABULAR_SYNC_METRICS_PORT",
        8080,
        "HTTP port of `tabular-sync listen` for /metrics, /healthz and /readyz.",
    )
    cache_quota_bytes: int = _env(
        "TABULAR_CACHE_QUOTA_BYTES",
        0,
        "Cache size limit the sync exports as tabular_cache_quota_bytes (0: none, no series).",
    )
    # --- jobs and limits ----------------------------------------------------------------------
    data_root: str = _env("TABULAR_DATA_ROOT", ".", "Root for job `source.path` files.")
    max_rows_per_job: int = _env("TABULAR_MAX_ROWS_PER_JOB", 10_000, "Rows allowed in one job.")
    max_cell_chars: int = _env("TABULAR_MAX_CELL_CHARS", 20_000, "Characters allowed per cell.")
    max_job_bytes: int = _env(
        "TABULAR_MAX_JOB_BYTES", 10_000_000, "Bytes allowed in one job (message or source file)."
    )
    # --- batcher ------------------------------------------------------------------------------
    batch_max_rows: int = _env("TABULAR_BATCH_MAX_ROWS", 64, "Rows per encode call.")
    batch_max_tokens: int = _env(
        "TABULAR_BATCH_MAX_TOKENS", 16_384, "Estimated tokens per encode call."
    )
    batch_max_wait_ms: float = _env(
        "TABULAR_BATCH_MAX_WAIT_MS", 5.0, "How long a partial batch waits for more rows."
    )
    # --- classification -----------------------------------------------------------------------
    zero_shot_temperature: float = _env(
        "TABULAR_ZERO_SHOT_TEMPERATURE", 0.05, "Softmax temperature over label similarities."
    )
    ollama_host: str = _env("OLLAMA_HOST", "http://127.0.0.1:11434", "Ollama server address.")
    ollama_models: str = _env("OLLAMA_MODELS", "", "Ollama's model store (local copy).")
    llm_model: str = _env("TABULAR_LLM_MODEL", "llama3.2:1b", "Ollama model for `llm` jobs.")
    llm_timeout_seconds: float = _env(
        "TABULAR_LLM_TIMEOUT_SECONDS", 60.0, "Per-request timeout for Ollama calls."
    )
    llm_enabled: bool = _env(
        "TABULAR_LLM_ENABLED", True, "Accept `llm` jobs (and poll Ollama for readiness)."
    )
    llm_wait_seconds: float = _env(
        "TABULAR_LLM_WAIT_SECONDS", 30.0, "How long an `llm` job waits for Ollama to become ready."
    )
    ollama_ready_timeout_seconds: float = _env(
        "TABULAR_OLLAMA_READY_TIMEOUT_SECONDS",
        300.0,
        "Deadline for Ollama to answer at start; after it the LLM is reported unavailable.",
    )
    ollama_pull: bool = _env(
        "TABULAR_OLLAMA_PULL", True, "Pull the LLM when neither Ollama nor the cache has it."
    )
    # --- transport ----------------------------------------------------------------------------
    project: str = _env("GOOGLE_CLOUD_PROJECT", "", "Google Cloud project for short IDs.")
    pubsub_emulator_host: str = _env(
        "PUBSUB_EMULATOR_HOST", "", "host:port of a Pub/Sub emulator (tests, local runs)."
    )
    jobs_subscription: str = _env(
        "TABULAR_JOBS_SUBSCRIPTION", "tabular-jobs-sub", "Subscription the worker pulls jobs from."
    )
    results_topic: str = _env(
        "TABULAR_RESULTS_TOPIC", "tabular-results", "Topic results are published to."
    )
    jobs_topic: str = _env(
        "TABULAR_JOBS_TOPIC", "tabular-jobs", "Jobs topic (`submit`, TABULAR_CREATE_RESOURCES)."
    )
    dead_letter_topic: str = _env(
        "TABULAR_DEAD_LETTER_TOPIC",
        "tabular-jobs-dead-letter",
        "Dead-letter topic (used by TABULAR_CREATE_RESOURCES).",
    )
    max_delivery_attempts: int = _env(
        "TABULAR_MAX_DELIVERY_ATTEMPTS", 5, "Dead-letter policy attempts (created resources)."
    )
    create_resources: bool = _env(
        "TABULAR_CREATE_RESOURCES", False, "Development: create missing topics/subscriptions."
    )
    max_in_flight_jobs: int = _env(
        "TABULAR_MAX_IN_FLIGHT_JOBS", 64, "Flow control: leased, unacked job messages."
    )
    max_in_flight_bytes: int = _env(
        "TABULAR_MAX_IN_FLIGHT_BYTES", 100_000_000, "Flow control: bytes of leased messages."
    )
    lease_extension_seconds: int = _env(
        "TABULAR_LEASE_EXTENSION_SECONDS",
        60,
        "Longest single lease extension: bounds how long a crashed worker's jobs stay hidden.",
    )
    shutdown_grace_seconds: float = _env(
        "TABULAR_SHUTDOWN_GRACE_SECONDS", 8.0, "SIGTERM: time to finish in-flight jobs."
    )
    result_cache_size: int = _env(
        "TABULAR_RESULT_CACHE_SIZE", 1024, "Recent results kept to answer duplicates cheaply."
    )
    port: int = _env("PORT", 8080, "HTTP port for /healthz, /readyz, /metrics.")
    log_level: str = _env("TABULAR_LOG_LEVEL", "INFO", "Log level.")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(f.metadata["env"])
            if raw is not None and raw != "":
                values[f.name] = _parse(f.metadata["env"], raw, f.default)
        values.update(overrides)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.model_load_strategy not in ("copy", "mount"):
            raise SettingsError("TABULAR_MODEL_LOAD_STRATEGY must be 'copy' or 'mount'")
        if self.shared_model_volume_enabled and _inside(
            self.local_model_dir, self.model_cache_path
        ):
            # Fallback copies and downloads must never write into the shared cache.
            raise SettingsError("TABULAR_LOCAL_MODEL_DIR must lie outside MODEL_CACHE_PATH")
        if self.cache_quota_bytes < 0:
            raise SettingsError("TABULAR_CACHE_QUOTA_BYTES must be >= 0 (0: no quota)")
        for name in (
            "max_rows_per_job", "max_cell_chars", "max_job_bytes", "batch_max_rows",
            "model_copy_readers",
        ):  # fmt: skip
            if getattr(self, name) < 1:
                raise SettingsError(f"{_env_name(name)} must be >= 1")


def _inside(path: str, root: str) -> bool:
    child, parent = os.path.abspath(path), os.path.abspath(root)
    return child == parent or child.startswith(parent.rstrip(os.sep) + os.sep)


def _env_name(field_name: str) -> str:
    return str(
        next(f.metadata["env"] for f in dataclasses.fields(Settings) if f.name == field_name)
    )


def _parse(name: str, raw: str, default: Any) -> Any:
    try:
        if isinstance(default, bool):
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a valid {type(default).__name__}") from None
    return raw


def env_table() -> list[tuple[str, str, str]]:
    """(variable, default, meaning) for every setting: the README table is made from this."""
    return [
        (f.metadata["env"], str(f.default), f.metadata["doc"]) for f in dataclasses.fields(Settings)
    ]


def for_command() -> Settings | None:
    """Settings for a CLI command, with JSON logging set up either way.

    None means a variable is invalid: that has been logged (one JSON line) and the command
    should exit 2.
    """
    from worker import logs

    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        logs.setup()
        logs.get("settings").error(str(exc))
        return None
    logs.setup(settings.log_level)
    return settings
