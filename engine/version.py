"""The exporter's version: bump it when export, quantisation or the gate change what they make.

The sync compares it with each model's recorded `export_version` and exports again when they
differ, so caches made by an older release get current variants at their next sync.
"""

EXPORT_VERSION = 1
