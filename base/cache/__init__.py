"""The shared model cache's format, in one place: `sync` writes it, `worker` reads it.

manifest  layout, manifest.json and .done, reading and verifying a cache
copy      moving model files with their checksums computed on the way
specs     name=source-uri model specifications (TABULAR_SYNC_MODELS)
status    sync-status.json
"""
