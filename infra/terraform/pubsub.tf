resource "google_pubsub_topic" "jobs" {
  #checkov:skip=CKV_GCP_83:Job payloads carry no secrets; Google-managed encryption is used.
  name                       = "tabular-jobs"
  message_retention_duration = "86400s"
}

resource "google_pubsub_topic" "results" {
  #checkov:skip=CKV_GCP_83:Job payloads carry no secrets; Google-managed encryption is used.
  name                       = "tabular-results"
  message_retention_duration = "86400s"
}

resource "google_pubsub_topic" "jobs_dead_letter" {
  #checkov:skip=CKV_GCP_83:Job payloads carry no secrets; Google-managed encryption is used.
  name = "tabular-jobs-dead-letter"
}

resource "google_pubsub_topic" "refresh" {
  #checkov:skip=CKV_GCP_83:Job payloads carry no secrets; Google-managed encryption is used.
  name = "tabular-model-refresh"
}

resource "google_pubsub_topic" "refresh_complete" {
  #checkov:skip=CKV_GCP_83:Job payloads carry no secrets; Google-managed encryption is used.
  name = "tabular-model-refresh-complete"
}

resource "google_pubsub_subscription" "jobs" {
  name                 = "tabular-jobs-sub"
  topic                = google_pubsub_topic.jobs.id
  ack_deadline_seconds = 60

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.jobs_dead_letter.id
    max_delivery_attempts = var.max_delivery_attempts
  }

  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "600s"
  }

  expiration_policy {
    ttl = ""
  }
}

# Keeps dead-lettered jobs for inspection and replay (a topic alone would drop them).
resource "google_pubsub_subscription" "jobs_dead_letter" {
  name                       = "tabular-jobs-dead-letter-sub"
  topic                      = google_pubsub_topic.jobs_dead_letter.id
  message_retention_duration = "604800s"

  expiration_policy {
    ttl = ""
  }
}

# Results are consumed by the clients; this subscription is the default reader.
resource "google_pubsub_subscription" "results" {
  name  = "tabular-results-sub"
  topic = google_pubsub_topic.results.id

  expiration_policy {
    ttl = ""
  }
}

resource "google_pubsub_subscription" "refresh" {
  name                 = "tabular-model-refresh-sub"
  topic                = google_pubsub_topic.refresh.id
  ack_deadline_seconds = 600

  expiration_policy {
    ttl = ""
  }
}

# Nightly refresh event: the sync listener stages new model versions into the cache.
resource "google_cloud_scheduler_job" "nightly_refresh" {
  name        = "tabular-model-refresh-nightly"
  description = "Asks tabular-sync listen to refresh the shared model cache."
  region      = var.region
  schedule    = var.refresh_schedule
  time_zone   = var.refresh_time_zone

  pubsub_target {
    topic_name = google_pubsub_topic.refresh.id
    data       = base64encode(jsonencode({ reason = "scheduled" }))
    attributes = {
      source = "cloud-scheduler"
    }
  }
}
