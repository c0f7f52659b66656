terraform {
  required_version = ">= 1.5"

  required_providers {
    google = {
      source = "hashicorp/google"
      # google_cloud_run_v2_worker_pool appeared in 6.38; 6.47 fixed setting its manual instance
      # count to 0 (worker_min_instances = 0).
      version = "~> 6.47"
    }
  }
}

provider "google" {
  project = var.project_id
  region  = var.region
}

data "google_project" "this" {
  project_id = var.project_id
}
