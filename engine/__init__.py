"""The inference engine, shared by both programs: the sync exports and gates models with it, the
worker serves with it. Imports neither program (docs/architecture.md).
"""
