# --- the pull worker as a Cloud Run worker pool (worker_runtime = "worker_pool", the default) -----
# A worker pool is Cloud Run's resource for pull workloads: no URL, no request-driven scaling, an
# instance count set from outside. CREMA (autoscaler.tf) sets that count from the jobs
# subscription's backlog. Same image, command, environment, cache volume, probes and sidecar as
# the service in run.tf.
resource "google_cloud_run_v2_worker_pool" "worker" {
  count               = local.worker_pool
  name                = local.worker_name
  location            = var.region
  deletion_protection = false # stateless: switching worker_runtime replaces it

  scaling {
    scaling_mode          = "MANUAL"
    manual_instance_count = var.worker_min_instances
  }

  template {
    service_account = google_service_account.worker.email

    containers {
      name  = "worker"
      image = local.worker_image
      args  = ["tabular-worker", "serve"]

      resources {
        limits = {
          cpu    = var.worker_cpu
          memory = var.worker_memory
        }
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

      # No port is published, but the worker's own HTTP server answers on 8080 inside the
      # instance: the probes and the Prometheus sidecar use it.
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

  # The autoscaler owns the instance count once the pool exists; an apply must not reset it.
  lifecycle {
    ignore_changes = [scaling[0].manual_instance_count]
  }

  depends_on = [
    google_storage_bucket_iam_member.worker_cache_reader,
    google_pubsub_subscription_iam_member.worker_jobs_subscriber,
    google_pubsub_topic_iam_member.worker_results_publisher,
  ]
}
