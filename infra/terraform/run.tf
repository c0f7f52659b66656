# Two images, three commands: the worker image runs the worker (a worker pool, workerpool.tf, or
# the service below); the sync image runs the sync listener and the sync job.

locals {
  # worker_runtime picks one of the two forms of the pull worker; both run the same container.
  worker_name    = "tabular-worker"
  worker_pool    = var.worker_runtime == "worker_pool" ? 1 : 0
  worker_service = var.worker_runtime == "service" ? 1 : 0

  cache_env = {
    MODEL_CACHE_PATH            = "/models"
    SHARED_MODEL_VOLUME_ENABLED = "true"
    SENTENCE_TRANSFORMERS_HOME  = "/models/sbert"
    HUGGINGFACE_HUB_CACHE       = "/models/sbert"
    OLLAMA_MODELS               = "/models/ollama"
    OLLAMA_NOPRUNE              = "1"
    GOOGLE_CLOUD_PROJECT        = var.project_id
  }

  # PORT is not set: Cloud Run reserves it and sets it from the container port.
  worker_env = merge(local.cache_env, {
    OLLAMA_HOST                    = "http://127.0.0.1:11434"
    TABULAR_EMBEDDING_MODEL        = var.embedding_model
    TABULAR_JOBS_SUBSCRIPTION      = google_pubsub_subscription.jobs.name
    TABULAR_RESULTS_TOPIC          = google_pubsub_topic.results.name
    TABULAR_LLM_ENABLED            = tostring(var.llm_enabled)
    TABULAR_LLM_MODEL              = var.llm_model
    TABULAR_LOCAL_MODEL_DIR        = "/tmp/tabular-models"
    TABULAR_MODEL_LOAD_STRATEGY    = "copy"
    TABULAR_SHUTDOWN_GRACE_SECONDS = "8"
    TABULAR_SCALING_MAX_INSTANCES  = tostring(var.worker_max_instances)
    TABULAR_JOBS_TOPIC             = google_pubsub_topic.jobs.name # shard jobs of large tables
    },
    var.data_bucket_name == "" ? {} : { TABULAR_DATA_ROOT = "/data" },
    var.output_bucket_name == "" ? {} : { TABULAR_OUTPUT_ROOT = "/output" },
  )

  # Data and output buckets (docs/jobs.md, "Tables of any size"), mounted with gcsfuse in the
  # worker: sources read-only, outputs read-write. Both optional.
  table_volumes = concat(
    var.data_bucket_name == "" ? [] : [{
      name          = "data"
      bucket        = var.data_bucket_name
      read_only     = true
      path          = "/data"
      mount_options = []
    }],
    var.output_bucket_name == "" ? [] : [{
      name          = "output"
      bucket        = var.output_bucket_name
      read_only     = false
      path          = "/output"
      mount_options = var.output_prefix == "" ? [] : ["only-dir=${var.output_prefix}"]
    }],
  )

  sync_env = merge(local.cache_env, {
    TABULAR_SYNC_MODELS            = var.sync_models
    TABULAR_REFRESH_SUBSCRIPTION   = google_pubsub_subscription.refresh.name
    TABULAR_REFRESH_COMPLETE_TOPIC = google_pubsub_topic.refresh_complete.name
    TABULAR_CACHE_QUOTA_BYTES      = tostring(var.cache_quota_bytes)
    TABULAR_SYNC_METRICS_PORT      = "8080"
    TABULAR_LLM_ENABLED            = "false"
  })
}

# --- the pull worker as a service (worker_runtime = "service") -----------------------------------
# A service scales on requests and CPU, which a pull subscriber does not generate: it keeps
# worker_min_instances up with CPU always allocated and cannot follow the backlog. The default,
# a worker pool scaled on the backlog, is in workerpool.tf (docs/deploy.md, docs/scaling.md).
resource "google_cloud_run_v2_service" "worker" {
  count               = local.worker_service
  name                = local.worker_name
  location            = var.region
  ingress             = "INGRESS_TRAFFIC_INTERNAL_ONLY"
  deletion_protection = false # stateless: switching worker_runtime replaces it

  template {
    service_account       = google_service_account.worker.email
    execution_environment = "EXECUTION_ENVIRONMENT_GEN2"
    timeout               = "300s"

    scaling {
      min_instance_count = var.worker_min_instances
      max_instance_count = var.worker_max_instances
    }

    containers {
      name  = "worker"
      image = local.worker_image
      args  = ["tabular-worker", "serve"]

      ports {
        container_port = 8080
      }

      resources {
        limits = {
          cpu    = var.worker_cpu
          memory = var.worker_memory
        }
        cpu_idle          = false # CPU always allocated: it pulls jobs between requests
        startup_cpu_boost = true
      }

      dynamic "env" {
        for_each = local.worker_env
        content {
          name  = env.key
          value = env.value
        }
      }

      volume_mounts {
        name       = "model-cache"
        mount_path = "/models"
      }

      dynamic "volume_mounts" {
        for_each = local.table_volumes
        content {
          name       = volume_mounts.value.name
          mount_path = volume_mounts.value.path
        }
      }

      startup_probe {
        http_get {
          path = "/readyz"
          port = 8080
        }
        period_seconds    = 10
        timeout_seconds   = 5
        failure_threshold = 24
      }

      liveness_probe {
        http_get {
          path = "/healthz"
          port = 8080
        }
        period_seconds    = 15
        timeout_seconds   = 5
        failure_threshold = 3
      }
    }

    containers {
      name       = "prometheus-collector"
      image      = local.gmp_sidecar_image
      depends_on = ["worker"]

      resources {
        limits = {
          cpu    = "500m"
          memory = "512Mi"
        }
      }
    }

    volumes {
      name = "model-cache"
      gcs {
        bucket    = google_storage_bucket.model_cache.name
        read_only = true
      }
    }

    dynamic "volumes" {
      for_each = local.table_volumes
      content {
        name = volumes.value.name
        gcs {
          bucket        = volumes.value.bucket
          read_only     = volumes.value.read_only
          mount_options = volumes.value.mount_options
        }
      }
    }
  }

  depends_on = [
    google_storage_bucket_iam_member.worker_cache_reader,
    google_pubsub_subscription_iam_member.worker_jobs_subscriber,
    google_pubsub_topic_iam_member.worker_results_publisher,
  ]
}

# --- the sync listener: `tabular-sync listen`, exactly one instance, cache read-write ------------
resource "google_cloud_run_v2_service" "sync_listener" {
  name     = "tabular-sync-listener"
  location = var.region
  ingress  = "INGRESS_TRAFFIC_INTERNAL_ONLY"

  template {
    service_account                  = google_service_account.sync.email
    execution_environment            = "EXECUTION_ENVIRONMENT_GEN2"
    max_instance_request_concurrency = 1

    scaling {
      min_instance_count = 1
      max_instance_count = 1
    }

    containers {
      name  = "sync"
      image = local.sync_image
      args  = ["tabular-sync", "listen"]

      ports {
        container_port = 8080
      }

      resources {
        limits = {
          cpu    = "1"
          memory = "2Gi"
        }
        cpu_idle = false
      }

      dynamic "env" {
        for_each = local.sync_env
        content {
          name  = env.key
          value = env.value
        }
      }

      volume_mounts {
        name       = "model-cache"
        mount_path = "/models"
      }

      startup_probe {
        tcp_socket {
          port = 8080
        }
      }
    }

    containers {
      name       = "prometheus-collector"
      image      = local.gmp_sidecar_image
      depends_on = ["sync"]

      resources {
        limits = {
          cpu    = "500m"
          memory = "512Mi"
        }
      }
    }

    volumes {
      name = "model-cache"
      gcs {
        bucket    = google_storage_bucket.model_cache.name
        read_only = false
      }
    }
  }

  depends_on = [
    google_storage_bucket_iam_member.sync_cache_writer,
    google_pubsub_subscription_iam_member.sync_refresh_subscriber,
  ]
}

# --- the sync job: `tabular-sync once`, for seeding and manual refreshes --------------------------
#   gcloud run jobs execute tabular-model-sync --region REGION --wait
resource "google_cloud_run_v2_job" "model_sync" {
  name     = "tabular-model-sync"
  location = var.region

  template {
    task_count  = 1
    parallelism = 1

    template {
      service_account       = google_service_account.sync.email
      execution_environment = "EXECUTION_ENVIRONMENT_GEN2"
      timeout               = "3600s"
      max_retries           = 1

      containers {
        image = local.sync_image
        args  = ["tabular-sync", "once"]

        resources {
          limits = {
            cpu    = "2"
            memory = "4Gi"
          }
        }

        dynamic "env" {
          for_each = { for k, v in local.sync_env : k => v if k != "TABULAR_SYNC_METRICS_PORT" }
          content {
            name  = env.key
            value = env.value
          }
        }

        volume_mounts {
          name       = "model-cache"
          mount_path = "/models"
        }
      }

      volumes {
        name = "model-cache"
        gcs {
          bucket    = google_storage_bucket.model_cache.name
          read_only = false
        }
      }
    }
  }

  depends_on = [google_storage_bucket_iam_member.sync_cache_writer]
}
