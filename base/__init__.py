"""The shared base of `tabular-worker` and `tabular-sync`; it imports neither program.

`base.cache` is the model cache's format (layout, manifest.json, .done, sync-status.json,
verified copy, model source specs): the sync writes it, the worker reads it. The rest is the
runtime both programs need: JSON logs (`logs`), settings from the environment (`env`), the
health/metrics HTTP server (`http`), Pub/Sub names and clients (`pubsub`), asyncio helpers
(`aio`). See docs/architecture.md.
"""
