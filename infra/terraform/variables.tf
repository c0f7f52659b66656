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
  description = "Artifact Registry Docker repository that holds the tabular image."
  type        = string
  default     = "tabular"
}

variable "image_tag" {
  description = "Tag of the tabular image to deploy ($SHORT_SHA from Cloud Build, or latest)."
  type        = string
  default     = "latest"
}

variable "worker_min_instances" {
  description = "Minimum worker instances: the pull worker must keep at least one alive."
  type        = number
  default     = 1
}

variable "worker_max_instances" {
  description = "Maximum worker instances."
  type        = number
  default     = 10
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
