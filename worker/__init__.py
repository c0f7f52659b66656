"""tabular-service worker: Pub/Sub jobs in, embeddings and labels out."""

__version__ = "0.1.0"
