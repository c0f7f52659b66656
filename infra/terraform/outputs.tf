output "tabular_model_cache_bucket_name" {
  description = "The shared model cache bucket (mounted at /models)."
  value       = google_storage_bucket.model_cache.name
}

output "image" {
  description = "Image reference the Cloud Run resources run."
  value       = local.image
}

output "worker_service_account" {
  description = "Service account of the worker service."
  value       = google_service_account.worker.email
}

output "sync_service_account" {
  description = "Service account of the sync listener and the sync job."
  value       = google_service_account.sync.email
}
