"""Table definitions, one module per domain, all on `coordinator.db.metadata.metadata`.

They are registered by `coordinator.db.schema`, which imports every one of them explicitly.
"""
