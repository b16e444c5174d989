"""The crash-safe results store (SQLite) and the scheduler's view of it.

Data flow: db (ResultStore, its schema, the keys and model fingerprints a stored value is
found by) -> resume (the store as the engine scheduler's batch cache: resume and reuse).
"""
