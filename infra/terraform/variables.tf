variable "project_id" {
  description = "Google Cloud project that runs tabular-service."
  type        = string
}

variable "region" {
  description = "Region for Cloud Run, Artifact Registry, Cloud Scheduler and the cache bucket."
  type        = string
  default     = "us-central1"
}

variable "bucket_name" {
  description = "Name of the shared model cache bucket (globally unique)."
  type        = string
  default     = "tabular-model-cache"
}

variable "artifact_repository_id" {
  description = "Artifact Registry Docker repository that holds the tabular-worker and tabular-sync images."
  type        = string
  default     = "tabular"
}

variable "image_tag" {
  description = "Tag of the tabular-worker and tabular-sync images to deploy ($SHORT_SHA from Cloud Build, or latest)."
  type        = string
  default     = "latest"
}

variable "worker_runtime" {
  description = "How the pull worker runs: \"worker_pool\" (a Cloud Run worker pool scaled on the jobs backlog by CREMA; the default) or \"service\" (a Cloud Run service with min/max instances, as before). See docs/deploy.md."
  type        = string
  default     = "worker_pool"

  validation {
    condition     = contains(["worker_pool", "service"], var.worker_runtime)
    error_message = "worker_runtime must be \"worker_pool\" or \"service\"."
  }
}

variable "worker_min_instances" {
  description = "Minimum worker instances (service: min_instance_count; worker pool: the autoscaler's minReplicaCount). 0 lets the pool scale to zero, at the price of a cold start (docs/scaling.md)."
  type        = number
  default     = 1
}

variable "worker_max_instances" {
  description = "Maximum worker instances (service: max_instance_count; worker pool: the autoscaler's maxReplicaCount). Also exported by the workers for the backlog alert."
  type        = number
  default     = 10
}

variable "autoscaler_target_backlog_per_instance" {
  description = "CREMA gcp-pubsub trigger value: undelivered job messages per worker instance (instances = ceil(backlog / this)). docs/scaling.md shows how to choose it."
  type        = number
  default     = 50
}

variable "autoscaler_activation_backlog" {
  description = "gcp-pubsub activationValue: the backlog at or under which a KEDA deployment stays at zero. CREMA (1.x) ignores it; kept for the same spec on GKE."
  type        = number
  default     = 0
}

variable "autoscaler_polling_seconds" {
  description = "CREMA pollingInterval: seconds between metric reads and scaling decisions."
  type        = number
  default     = 30
}

variable "autoscaler_scale_down_window_seconds" {
  description = "Scale-down stabilisation window: instances are removed only when every recommendation of this window allows it."
  type        = number
  default     = 300
}

variable "autoscaler_image" {
  description = "The CREMA autoscaler image (Google's pre-built release)."
  type        = string
  default     = "us-central1-docker.pkg.dev/cloud-run-oss-images/crema-v1/autoscaler:1.2"
}

variable "autoscaler_base_image" {
  description = "Runtime base image of the CREMA image (built FROM scratch for automatic base image updates)."
  type        = string
  default     = "us-central1-docker.pkg.dev/serverless-runtimes/google-24/runtimes/java25"
}

variable "worker_cpu" {
  description = "CPU limit of the worker container."
  type        = string
  default     = "2"
}

variable "worker_memory" {
  description = "Memory limit of the worker container (bge-m3 needs about 3 GiB)."
  type        = string
  default     = "4Gi"
}

variable "embedding_model" {
  description = "TABULAR_EMBEDDING_MODEL for the worker."
  type        = string
  default     = "BAAI/bge-m3"
}

variable "llm_enabled" {
  description = "TABULAR_LLM_ENABLED: start Ollama in the worker container and accept llm jobs."
  type        = bool
  default     = true
}

variable "llm_model" {
  description = "TABULAR_LLM_MODEL (an Ollama model in the shared cache)."
  type        = string
  default     = "llama3.2:1b"
}

variable "sync_models" {
  description = "TABULAR_SYNC_MODELS: comma-separated name=source-uri pairs the sync job stages."
  type        = string
  default     = "bge-m3=hf://BAAI/bge-m3,llama=ollama://llama3.2:1b"
}

variable "cache_quota_bytes" {
  description = "Intended size limit of the cache bucket; the usage alert fires at 80 %."
  type        = number
  default     = 21474836480 # 20 GiB
}

variable "max_delivery_attempts" {
  description = "Deliveries of one job before it goes to the dead-letter topic (5..100)."
  type        = number
  default     = 5

  validation {
    condition     = var.max_delivery_attempts >= 5 && var.max_delivery_attempts <= 100
    error_message = "Pub/Sub allows 5 to 100 delivery attempts."
  }
}

variable "refresh_schedule" {
  description = "Cron schedule of the nightly model refresh event."
  type        = string
  default     = "0 3 * * *"
}

variable "refresh_time_zone" {
  description = "Time zone of refresh_schedule."
  type        = string
  default     = "Etc/UTC"
}

variable "enable_monitoring_alerts" {
  description = "Create the log-based metrics and alert policies."
  type        = bool
  default     = true
}

variable "notification_channels" {
  description = "Cloud Monitoring notification channel IDs the alert policies notify."
  type        = list(string)
  default     = []
}

variable "build_duration_threshold_seconds" {
  description = "Alert when an image build (cloudbuild.yaml) takes longer than this."
  type        = number
  default     = 600
}

variable "data_bucket_name" {
  description = "Existing bucket of job source files (Parquet, CSV, JSON Lines), mounted read-only at /data (TABULAR_DATA_ROOT). Empty: none."
  type        = string
  default     = ""
}

variable "output_bucket_name" {
  description = "Existing bucket where jobs with output.path write Parquet parts, mounted read-write at /output (TABULAR_OUTPUT_ROOT). Empty: file outputs are off."
  type        = string
  default     = ""
}

variable "output_prefix" {
  description = "Mount only this folder of the output bucket (gcsfuse only-dir). Empty: the whole bucket."
  type        = string
  default     = ""
}
