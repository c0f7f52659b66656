"""The worker's settings: the variables `tabular-worker` reads, on top of the shared ones.

Every field's variable is listed in the README's worker table (a test checks that the two agree);
the variables both programs read are in `base.env.CommonSettings`.
"""

from __future__ import annotations

from dataclasses import dataclass

from base.env import CommonSettings, SettingsError, inside, setting
from engine.config import PACKAGED_MODEL


@dataclass(frozen=True)
class WorkerSettings(CommonSettings):
    # --- models -------------------------------------------------------------------------------
    embedding_model: str = setting(
        "TABULAR_EMBEDDING_MODEL",
        PACKAGED_MODEL,
        "Embedding model: a directory, a name under SENTENCE_TRANSFORMERS_HOME or in the cache "
        "manifest, or the packaged all-MiniLM-L6-v2 (default). Production: BAAI/bge-m3.",
    )
    normalize_embeddings: bool = setting(
        "TABULAR_NORMALIZE_EMBEDDINGS", True, "L2-normalise embeddings (jobs may override)."
    )
    inference_backend: str = setting(
        "TABULAR_INFERENCE_BACKEND",
        "auto",
        "auto (the fastest ONNX variant that passed the quality gate, else torch), onnx or torch.",
    )
    inference_precision: str = setting(
        "TABULAR_INFERENCE_PRECISION",
        "auto",
        "auto (int8 when it passed the gate, else fp32), fp32 or int8. Naming a precision serves "
        "that ONNX variant even if it failed the gate (with a warning).",
    )
    inference_threads: int = setting(
        "TABULAR_INFERENCE_THREADS",
        0,
        "Intra-op threads of each model stream (0: the CPU quota divided by the streams).",
    )
    model_streams: int = setting(
        "TABULAR_MODEL_STREAMS",
        0,
        "Encode calls run at once, each on its own threads (0: one single-threaded stream per CPU "
        "of the quota, which keeps every core busy when other work takes one for a moment).",
    )
    inference_spin: bool = setting(
        "TABULAR_INFERENCE_SPIN",
        False,
        "Let idle ONNX threads spin between passes (faster alone; takes CPU from Pub/Sub threads).",
    )
    max_seq_length: int = setting(
        "TABULAR_MAX_SEQ_LENGTH",
        0,
        "Tokens a row is truncated to (0: the model's own maximum; bge-m3's is 8192).",
    )
    sentence_transformers_home: str = setting(
        "SENTENCE_TRANSFORMERS_HOME", "", "Where sentence-transformers looks for named models."
    )
    huggingface_hub_cache: str = setting(
        "HUGGINGFACE_HUB_CACHE", "", "Hugging Face hub cache directory (read by huggingface_hub)."
    )
    # --- shared model cache ---------------------------------------------------------------
    shared_model_volume_enabled: bool = setting(
        "SHARED_MODEL_VOLUME_ENABLED", True, "Load models from the shared cache when valid."
    )
    local_model_dir: str = setting(
        "TABULAR_LOCAL_MODEL_DIR",
        "/tmp/tabular-models",
        "Local directory for models copied out of the cache or fetched on a miss.",
    )
    model_load_strategy: str = setting(
        "TABULAR_MODEL_LOAD_STRATEGY", "copy", "copy (to local disk, verified) or mount."
    )
    reload_interval_seconds: float = setting(
        "TABULAR_RELOAD_INTERVAL_SECONDS", 60.0, "How often to poll the cache for a new generation."
    )
    model_copy_readers: int = setting(
        "TABULAR_MODEL_COPY_READERS", 4, "Parallel readers when copying a model out of the cache."
    )
    # --- jobs and limits ----------------------------------------------------------------------
    data_root: str = setting("TABULAR_DATA_ROOT", ".", "Root for job `source.path` files.")
    output_root: str = setting(
        "TABULAR_OUTPUT_ROOT",
        "",
        "Root for job `output.path` directories (Parquet parts and _SUCCESS). Empty: `serve` "
        "refuses such jobs (output_disabled); `run` writes under the working directory.",
    )
    shard_rows: int = setting(
        "TABULAR_SHARD_ROWS",
        10_000,
        "Rows per shard of a job that writes files: more rows are split into shard jobs.",
    )
    max_source_rows: int = setting(
        "TABULAR_MAX_SOURCE_ROWS", 100_000_000, "Rows allowed in a source job that writes files."
    )
    max_rows_per_job: int = setting("TABULAR_MAX_ROWS_PER_JOB", 10_000, "Rows allowed in one job.")
    max_cell_chars: int = setting("TABULAR_MAX_CELL_CHARS", 20_000, "Characters allowed per cell.")
    max_job_bytes: int = setting(
        "TABULAR_MAX_JOB_BYTES", 10_000_000, "Bytes allowed in one job (message or source file)."
    )
    max_row_text_chars: int = setting(
        "TABULAR_MAX_ROW_TEXT_CHARS",
        100_000,
        "Characters the text of one row (example, label) may render to.",
    )
    max_job_text_chars: int = setting(
        "TABULAR_MAX_JOB_TEXT_CHARS",
        20_000_000,
        "Characters of text one job may make the models read (rows, examples, labels, prompts).",
    )
    max_job_scores: int = setting(
        "TABULAR_MAX_JOB_SCORES", 1_000_000, "Scores one classify job may ask for (rows x labels)."
    )
    max_result_bytes: int = setting(
        "TABULAR_MAX_RESULT_BYTES", 100_000_000, "Estimated bytes of one job's result allowed."
    )
    # --- batcher ------------------------------------------------------------------------------
    batch_max_rows: int = setting("TABULAR_BATCH_MAX_ROWS", 32, "Rows per encode call.")
    batch_max_tokens: int = setting(
        "TABULAR_BATCH_MAX_TOKENS", 16_384, "Estimated tokens per encode call."
    )
    batch_max_wait_ms: float = setting(
        "TABULAR_BATCH_MAX_WAIT_MS", 5.0, "How long a partial batch waits for more rows."
    )
    # --- classification -----------------------------------------------------------------------
    zero_shot_temperature: float = setting(
        "TABULAR_ZERO_SHOT_TEMPERATURE", 0.05, "Softmax temperature over label similarities."
    )
    ollama_models: str = setting("OLLAMA_MODELS", "", "Ollama's model store (local copy).")
    llm_model: str = setting("TABULAR_LLM_MODEL", "llama3.2:1b", "Ollama model for `llm` jobs.")
    llm_timeout_seconds: float = setting(
        "TABULAR_LLM_TIMEOUT_SECONDS", 60.0, "Per-request timeout for Ollama calls."
    )
    llm_enabled: bool = setting(
        "TABULAR_LLM_ENABLED", True, "Accept `llm` jobs (and poll Ollama for readiness)."
    )
    llm_wait_seconds: float = setting(
        "TABULAR_LLM_WAIT_SECONDS", 30.0, "How long an `llm` job waits for Ollama to become ready."
    )
    ollama_ready_timeout_seconds: float = setting(
        "TABULAR_OLLAMA_READY_TIMEOUT_SECONDS",
        300.0,
        "Deadline for Ollama to answer at start; after it the LLM is reported unavailable.",
    )
    ollama_pull: bool = setting(
        "TABULAR_OLLAMA_PULL", True, "Pull the LLM when neither Ollama nor the cache has it."
    )
    # --- transport ----------------------------------------------------------------------------
    jobs_subscription: str = setting(
        "TABULAR_JOBS_SUBSCRIPTION", "tabular-jobs-sub", "Subscription the worker pulls jobs from."
    )
    results_topic: str = setting(
        "TABULAR_RESULTS_TOPIC", "tabular-results", "Topic results are published to."
    )
    jobs_topic: str = setting(
        "TABULAR_JOBS_TOPIC", "tabular-jobs", "Jobs topic (`submit`, TABULAR_CREATE_RESOURCES)."
    )
    dead_letter_topic: str = setting(
        "TABULAR_DEAD_LETTER_TOPIC",
        "tabular-jobs-dead-letter",
        "Dead-letter topic (used by TABULAR_CREATE_RESOURCES).",
    )
    max_delivery_attempts: int = setting(
        "TABULAR_MAX_DELIVERY_ATTEMPTS", 5, "Dead-letter policy attempts (created resources)."
    )
    create_resources: bool = setting(
        "TABULAR_CREATE_RESOURCES", False, "Development: create missing topics/subscriptions."
    )
    max_in_flight_jobs: int = setting(
        "TABULAR_MAX_IN_FLIGHT_JOBS",
        128,
        "Flow control: leased, unacked job messages (1-row jobs need two calls' worth per stream).",
    )
    max_in_flight_bytes: int = setting(
        "TABULAR_MAX_IN_FLIGHT_BYTES", 100_000_000, "Flow control: bytes of running jobs' messages."
    )
    lease_extension_seconds: int = setting(
        "TABULAR_LEASE_EXTENSION_SECONDS",
        60,
        "Longest single lease extension: bounds how long a crashed worker's jobs stay hidden.",
    )
    shutdown_grace_seconds: float = setting(
        "TABULAR_SHUTDOWN_GRACE_SECONDS", 8.0, "SIGTERM: time to finish in-flight jobs."
    )
    result_cache_size: int = setting(
        "TABULAR_RESULT_CACHE_SIZE", 1024, "Recent results kept to answer duplicates cheaply."
    )
    # --- capacity and scaling -------------------------------------------------------------
    utilisation_window_seconds: float = setting(
        "TABULAR_UTILISATION_WINDOW_SECONDS",
        60.0,
        "Window of tabular_model_busy_ratio, the model thread's busy share.",
    )
    scaling_max_instances: int = setting(
        "TABULAR_SCALING_MAX_INSTANCES",
        0,
        "The autoscaler's instance maximum, exported as tabular_scaling_max_instances for the "
        "backlog alert (0: not known).",
    )
    port: int = setting("PORT", 8080, "HTTP port for /healthz, /readyz, /metrics.")

    def validate(self) -> None:
        if self.inference_backend not in ("auto", "onnx", "torch"):
            raise SettingsError("TABULAR_INFERENCE_BACKEND must be auto, onnx or torch")
        if self.inference_precision not in ("auto", "fp32", "int8"):
            raise SettingsError("TABULAR_INFERENCE_PRECISION must be auto, fp32 or int8")
        if min(self.inference_threads, self.model_streams, self.max_seq_length) < 0:
            raise SettingsError(
                "TABULAR_INFERENCE_THREADS, TABULAR_MODEL_STREAMS and TABULAR_MAX_SEQ_LENGTH must "
                "be >= 0"
            )
        if self.model_load_strategy not in ("copy", "mount"):
            raise SettingsError("TABULAR_MODEL_LOAD_STRATEGY must be 'copy' or 'mount'")
        if self.shared_model_volume_enabled and inside(self.local_model_dir, self.model_cache_path):
            # Fallback copies and downloads must never write into the shared cache.
            raise SettingsError("TABULAR_LOCAL_MODEL_DIR must lie outside MODEL_CACHE_PATH")
        self.require_positive(
            "max_rows_per_job", "max_cell_chars", "max_job_bytes", "batch_max_rows",
            "model_copy_readers", "max_row_text_chars", "max_job_text_chars", "max_job_scores",
            "max_result_bytes", "utilisation_window_seconds", "shard_rows",
            "max_source_rows",
        )  # fmt: skip
        if self.scaling_max_instances < 0:
            raise SettingsError("TABULAR_SCALING_MAX_INSTANCES must be 0 (not known) or more")
