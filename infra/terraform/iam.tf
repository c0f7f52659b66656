# Least privilege: every data-plane grant is scoped to one bucket, topic or subscription. The only
# project-level grants are the write-only telemetry roles, which have no narrower scope.

resource "google_service_account" "worker" {
  account_id   = "tabular-worker"
  display_name = "tabular-worker (Cloud Run pull worker)"
}

resource "google_service_account" "sync" {
  account_id   = "tabular-sync"
  display_name = "tabular-sync (model cache listener and job)"
}

# --- worker: read the cache, pull jobs, publish results, write metrics and logs ---------------
resource "google_storage_bucket_iam_member" "worker_cache_reader" {
  bucket = google_storage_bucket.model_cache.name
  role   = "roles/storage.objectViewer"
  member = google_service_account.worker.member
}

resource "google_pubsub_subscription_iam_member" "worker_jobs_subscriber" {
  subscription = google_pubsub_subscription.jobs.name
  role         = "roles/pubsub.subscriber"
  member       = google_service_account.worker.member
}

# Shard jobs of large tables go back onto the jobs topic (docs/jobs.md, "Sharding").
resource "google_pubsub_topic_iam_member" "worker_jobs_publisher" {
  topic  = google_pubsub_topic.jobs.name
  role   = "roles/pubsub.publisher"
  member = google_service_account.worker.member
}

# The data and output buckets, when configured: read the sources, write (and rename) the parts.
resource "google_storage_bucket_iam_member" "worker_data_reader" {
  count  = var.data_bucket_name == "" ? 0 : 1
  bucket = var.data_bucket_name
  role   = "roles/storage.objectViewer"
  member = google_service_account.worker.member
}

resource "google_storage_bucket_iam_member" "worker_output_writer" {
  count  = var.output_bucket_name == "" ? 0 : 1
  bucket = var.output_bucket_name
  role   = "roles/storage.objectUser"
  member = google_service_account.worker.member
}

resource "google_pubsub_topic_iam_member" "worker_results_publisher" {
  topic  = google_pubsub_topic.results.name
  role   = "roles/pubsub.publisher"
  member = google_service_account.worker.member
}

# --- sync: write only the cache bucket, pull refresh events, announce completed refreshes -----
resource "google_storage_bucket_iam_member" "sync_cache_writer" {
  bucket = google_storage_bucket.model_cache.name
  role   = "roles/storage.objectUser"
  member = google_service_account.sync.member
}

resource "google_pubsub_subscription_iam_member" "sync_refresh_subscriber" {
  subscription = google_pubsub_subscription.refresh.name
  role         = "roles/pubsub.subscriber"
  member       = google_service_account.sync.member
}

resource "google_pubsub_topic_iam_member" "sync_refresh_complete_publisher" {
  topic  = google_pubsub_topic.refresh_complete.name
  role   = "roles/pubsub.publisher"
  member = google_service_account.sync.member
}

# --- telemetry (both) ---------------------------------------------------------------------------
resource "google_project_iam_member" "telemetry" {
  for_each = {
    for pair in setproduct(
      ["worker", "sync"],
      ["roles/monitoring.metricWriter", "roles/logging.logWriter"],
    ) : "${pair[0]}-${pair[1]}" => pair
  }
  project = var.project_id
  role    = each.value[1]
  member  = each.value[0] == "worker" ? google_service_account.worker.member : google_service_account.sync.member
}

# --- dead-lettering: the Pub/Sub service agent forwards undeliverable jobs ----------------------
resource "google_pubsub_topic_iam_member" "dead_letter_publisher" {
  topic  = google_pubsub_topic.jobs_dead_letter.name
  role   = "roles/pubsub.publisher"
  member = local.pubsub_service_agent
}

resource "google_pubsub_subscription_iam_member" "dead_letter_source_subscriber" {
  subscription = google_pubsub_subscription.jobs.name
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_service_agent
}
