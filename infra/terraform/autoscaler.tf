# --- CREMA: scales the worker pool on the jobs backlog (worker_runtime = "worker_pool") ---------
# Cloud Run External Metrics Autoscaling (github.com/GoogleCloudPlatform/cloud-run-external-
# metrics-autoscaling) runs KEDA scalers in a Cloud Run service: every pollingInterval it reads
# the jobs subscription's num_undelivered_messages from Cloud Monitoring (KEDA gcp-pubsub) and
# sets the pool's instance count to ceil(backlog / target), within min/max and the scale-up and
# scale-down policies of templates/crema-config.yaml.tftpl. docs/scaling.md models its behaviour.

locals {
  worker_pool_fqn = "projects/${var.project_id}/locations/${var.region}/workerpools/${local.worker_name}"

  crema_config = templatefile("${path.module}/templates/crema-config.yaml.tftpl", {
    polling_seconds   = var.autoscaler_polling_seconds
    worker_pool       = local.worker_pool_fqn
    min_instances     = var.worker_min_instances
    max_instances     = var.worker_max_instances
    subscription      = google_pubsub_subscription.jobs.id
    target            = var.autoscaler_target_backlog_per_instance
    activation        = var.autoscaler_activation_backlog
    scale_down_window = var.autoscaler_scale_down_window_seconds
  })
}

resource "google_service_account" "autoscaler" {
  count        = local.worker_pool
  account_id   = "tabular-autoscaler"
  display_name = "tabular-autoscaler (CREMA: scales the worker pool on the jobs backlog)"
}

# Read the backlog. Cloud Monitoring reads have no narrower scope than the project; the role is
# read-only (metrics, no data).
resource "google_project_iam_member" "autoscaler_monitoring_viewer" {
  count   = local.worker_pool
  project = var.project_id
  role    = "roles/monitoring.viewer"
  member  = google_service_account.autoscaler[0].member
}

# Read its own configuration (the parameter below); the provider has no per-parameter IAM.
resource "google_project_iam_member" "autoscaler_config_reader" {
  count   = local.worker_pool
  project = var.project_id
  role    = "roles/parametermanager.parameterViewer"
  member  = google_service_account.autoscaler[0].member
}

# Set the instance count of this one pool (CREMA's README: run.developer on the pool only).
resource "google_cloud_run_v2_worker_pool_iam_member" "autoscaler_scales_pool" {
  count    = local.worker_pool
  project  = var.project_id
  location = var.region
  name     = google_cloud_run_v2_worker_pool.worker[0].name
  role     = "roles/run.developer"
  member   = google_service_account.autoscaler[0].member
}

# Updating a pool that runs as the worker's service account requires acting as it.
resource "google_service_account_iam_member" "autoscaler_acts_as_worker" {
  count              = local.worker_pool
  service_account_id = google_service_account.worker.name
  role               = "roles/iam.serviceAccountUser"
  member             = google_service_account.autoscaler[0].member
}

resource "google_parameter_manager_parameter" "autoscaler" {
  count        = local.worker_pool
  parameter_id = "tabular-autoscaler-config"
  format       = "YAML"
}

# A new version per configuration change (the id carries its hash); the service below points
# at it, so a change rolls out a new autoscaler revision.
resource "google_parameter_manager_parameter_version" "autoscaler" {
  count                = local.worker_pool
  parameter            = google_parameter_manager_parameter.autoscaler[0].id
  parameter_version_id = "v-${substr(sha256(local.crema_config), 0, 12)}"
  parameter_data       = local.crema_config
}

resource "google_cloud_run_v2_service" "autoscaler" {
  count               = local.worker_pool
  name                = "tabular-autoscaler"
  location            = var.region
  ingress             = "INGRESS_TRAFFIC_INTERNAL_ONLY"
  deletion_protection = false

  template {
    service_account = google_service_account.autoscaler[0].email

    # Exactly one instance: CREMA polls on its own (pollingInterval), and one pool must be
    # scaled by one CREMA only.
    scaling {
      min_instance_count = 1
      max_instance_count = 1
    }

    containers {
      image          = var.autoscaler_image
      base_image_uri = var.autoscaler_base_image

      resources {
        limits = {
          cpu    = "1"
          memory = "1Gi"
        }
        cpu_idle = false # it polls between requests
      }

      env {
        name  = "CREMA_CONFIG"
        value = google_parameter_manager_parameter_version.autoscaler[0].name
      }
      env {
        name  = "OUTPUT_SCALER_METRICS"
        value = "False"
      }
      env {
        name  = "ENABLE_CLOUD_LOGGING"
        value = "False"
      }
    }
  }

  depends_on = [
    google_project_iam_member.autoscaler_monitoring_viewer,
    google_project_iam_member.autoscaler_config_reader,
    google_cloud_run_v2_worker_pool_iam_member.autoscaler_scales_pool,
    google_service_account_iam_member.autoscaler_acts_as_worker,
  ]
}
