"""The crash-safe results store (SQLite) and the scheduler's view of it.

Data flow: keys (the scope, sequence, batch and judge keys a stored value is found by, and the
values' layout) -> fingerprint (a model's content hash) -> summary (what `info()` reports) -> db
(ResultStore: its schema, paths, batches, judge answers, the file-hash memo) -> admin (`cache
info` / `cache clear`) -> resume (the store as the engine scheduler's batch cache: resume and reuse).
"""
