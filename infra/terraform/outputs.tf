output "tabular_model_cache_bucket_name" {
  description = "The shared model cache bucket (mounted at /models)."
  value       = google_storage_bucket.model_cache.name
}

output "worker_image" {
  description = "Image the worker (service or worker pool) runs: torch-free, serves ONNX variants."
  value       = local.worker_image
}

output "sync_image" {
  description = "Image the sync listener and the sync job run: exports and gates ONNX variants."
  value       = local.sync_image
}

output "worker_service_account" {
  description = "Service account of the worker service."
  value       = google_service_account.worker.email
}

output "sync_service_account" {
  description = "Service account of the sync listener and the sync job."
  value       = google_service_account.sync.email
}

output "worker_runtime" {
  description = "How the worker runs: worker_pool (scaled by the tabular-autoscaler service) or service."
  value       = var.worker_runtime
}

output "autoscaler_service_account" {
  description = "Service account of the CREMA autoscaler (null when the worker runs as a service)."
  value       = one(google_service_account.autoscaler[*].email)
}
