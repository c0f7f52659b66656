"""tabular-service sync: keeps the shared model cache filled, committed and checkable."""
