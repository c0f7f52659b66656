# The shared model cache: /models in every container (gcsfuse CSI volume).
resource "google_storage_bucket" "model_cache" {
  #checkov:skip=CKV_GCP_62:Access logs of a model cache add cost without a reader; audit logs cover writes.
  name                        = var.bucket_name
  location                    = var.region
  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false

  # Versioning keeps the previous manifest.json and model files for a short while, so a bad sync
  # can be rolled back by restoring the previous generation.
  versioning {
    enabled = true
  }

  # Staging area of the sync job: anything left behind by a crashed run goes after 7 days.
  lifecycle_rule {
    condition {
      age            = 7
      matches_prefix = [".tmp/"]
    }
    action {
      type = "Delete"
    }
  }

  lifecycle_rule {
    condition {
      days_since_noncurrent_time = 7
      with_state                 = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }

  labels = {
    app = "tabular-service"
  }
}

resource "google_artifact_registry_repository" "tabular" {
  #checkov:skip=CKV_GCP_84:Google-managed encryption is enough for an image without secrets.
  location      = var.region
  repository_id = var.artifact_repository_id
  format        = "DOCKER"
  description   = "tabular-service images (Dockerfile.tabular)"

  cleanup_policies {
    id     = "keep-recent"
    action = "KEEP"
    most_recent_versions {
      keep_count = 20
    }
  }

  cleanup_policies {
    id     = "delete-old-untagged"
    action = "DELETE"
    condition {
      tag_state  = "UNTAGGED"
      older_than = "1209600s"
    }
  }
}

locals {
  # Two images of Dockerfile.tabular (docs/deploy.md, "Which image runs where"): the torch-free
  # worker, and the sync image (the worker's layers plus torch) for the listener and the job.
  registry     = "${var.region}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.tabular.repository_id}"
  worker_image = "${local.registry}/tabular-worker:${var.image_tag}"
  sync_image   = "${local.registry}/tabular-sync:${var.image_tag}"

  # Cloud Managed Service for Prometheus sidecar for Cloud Run: scrapes :8080/metrics of the
  # container it depends on and writes prometheus.googleapis.com/tabular_* time series.
  gmp_sidecar_image = "us-docker.pkg.dev/cloud-ops-agents-artifacts/cloud-run-gmp-sidecar/cloud-run-gmp-sidecar:1.2.0"

  pubsub_service_agent = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"
}
