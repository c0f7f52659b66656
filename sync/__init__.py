"""tabular-service sync: fills the shared model cache and owns its manifest format."""
