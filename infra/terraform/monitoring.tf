# Alerts, all behind enable_monitoring_alerts.

locals {
  alerts = var.enable_monitoring_alerts ? 1 : 0
}

# Every worker start logs one JSON line: {"message": "Model cache checked", "cache_hit": true|false,
# "reason": "..."}; Cloud Run lifts it into jsonPayload. The filter takes the worker in either
# runtime (a service's revisions, or the worker pool).
resource "google_logging_metric" "cache_lookups" {
  count       = local.alerts
  name        = "tabular_model_cache_lookups"
  description = "Worker starts by shared model cache outcome (log line 'Model cache checked')."
  filter      = "((resource.type=\"cloud_run_revision\" AND resource.labels.service_name=\"${local.worker_name}\") OR (resource.type=\"cloud_run_worker_pool\" AND resource.labels.worker_pool_name=\"${local.worker_name}\")) AND jsonPayload.message=\"Model cache checked\""

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
    unit        = "1"

    labels {
      key         = "cache_hit"
      value_type  = "STRING"
      description = "true when the worker loaded its models from the shared cache"
    }
    labels {
      key         = "reason"
      value_type  = "STRING"
      description = "why the cache was (not) used"
    }
  }

  label_extractors = {
    cache_hit = "EXTRACT(jsonPayload.cache_hit)"
    reason    = "EXTRACT(jsonPayload.reason)"
  }
}

resource "google_monitoring_alert_policy" "cache_hit_rate" {
  count        = local.alerts
  display_name = "tabular: model cache hit rate below 90 % (1 h)"
  combiner     = "OR"

  conditions {
    display_name = "cache hit rate < 0.9 over 1 h"
    condition_prometheus_query_language {
      query               = <<-EOT
        sum(increase(logging_googleapis_com:user_${google_logging_metric.cache_lookups[0].name}{cache_hit="true"}[1h]))
          / sum(increase(logging_googleapis_com:user_${google_logging_metric.cache_lookups[0].name}[1h])) < 0.9
      EOT
      duration            = "0s"
      evaluation_interval = "300s"
    }
  }

  notification_channels = var.notification_channels
  documentation {
    content   = "Workers are loading models without the shared cache (slow starts, hub traffic). Check the `reason` label and the last `tabular-model-sync` run; see docs/deploy.md."
    mime_type = "text/markdown"
  }
}

resource "google_monitoring_alert_policy" "sync_failures" {
  count        = local.alerts
  display_name = "tabular: model sync failed 2+ times in a row"
  combiner     = "OR"

  conditions {
    display_name = "tabular_sync_consecutive_failures >= 2"
    condition_prometheus_query_language {
      query               = "max(tabular_sync_consecutive_failures) >= 2"
      duration            = "0s"
      evaluation_interval = "60s"
    }
  }

  notification_channels = var.notification_channels
  documentation {
    content   = "The sync listener failed to refresh the model cache twice in a row. Logs: `resource.labels.service_name=\"tabular-sync-listener\"`. Workers keep serving the previous generation."
    mime_type = "text/markdown"
  }
}

resource "google_monitoring_alert_policy" "bucket_usage" {
  count        = local.alerts
  display_name = "tabular: model cache bucket above 80 % of its quota"
  combiner     = "OR"

  conditions {
    display_name = "total bytes > 80 % of cache_quota_bytes"
    condition_threshold {
      filter          = "resource.type=\"gcs_bucket\" AND resource.labels.bucket_name=\"${google_storage_bucket.model_cache.name}\" AND metric.type=\"storage.googleapis.com/storage/total_bytes\""
      comparison      = "COMPARISON_GT"
      threshold_value = var.cache_quota_bytes * 0.8
      duration        = "0s"

      aggregations {
        alignment_period     = "3600s"
        per_series_aligner   = "ALIGN_MAX"
        cross_series_reducer = "REDUCE_SUM"
      }
    }
  }

  notification_channels = var.notification_channels
}

# cloudbuild.yaml's last step prints TABULAR_BUILD_SECONDS=<seconds from first to last step>.
resource "google_logging_metric" "build_seconds" {
  count           = local.alerts
  name            = "tabular_image_build_seconds"
  description     = "Duration of tabular image builds (cloudbuild.yaml), from its own marker line."
  filter          = "resource.type=\"build\" AND textPayload:\"TABULAR_BUILD_SECONDS=\""
  value_extractor = "REGEXP_EXTRACT(textPayload, \"TABULAR_BUILD_SECONDS=([0-9]+)\")"

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "DISTRIBUTION"
    unit        = "s"
  }

  bucket_options {
    exponential_buckets {
      num_finite_buckets = 16
      growth_factor      = 1.5
      scale              = 30
    }
  }
}

resource "google_monitoring_alert_policy" "slow_builds" {
  count        = local.alerts
  display_name = "tabular: image build over ${var.build_duration_threshold_seconds / 60} minutes"
  combiner     = "OR"

  conditions {
    display_name = "build seconds > ${var.build_duration_threshold_seconds}"
    condition_threshold {
      filter          = "resource.type=\"build\" AND metric.type=\"logging.googleapis.com/user/${google_logging_metric.build_seconds[0].name}\""
      comparison      = "COMPARISON_GT"
      threshold_value = var.build_duration_threshold_seconds
      duration        = "0s"

      aggregations {
        alignment_period     = "600s"
        per_series_aligner   = "ALIGN_PERCENTILE_99"
        cross_series_reducer = "REDUCE_MAX"
      }
    }
  }

  notification_channels = var.notification_channels
  documentation {
    content   = "An image build took longer than expected: the BuildKit cache (`--cache-from ...:latest`) probably missed. See docs/benchmarks.md for the expected timings."
    mime_type = "text/markdown"
  }
}
