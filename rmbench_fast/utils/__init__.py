"""Small helpers every layer may use; they import nothing of the package but `errors` (and the face's
`__version__`).

Modules: install_check (is this an installed package?), dtypes (dtype names -> torch dtypes),
distributed (torchrun's world: DP x TP ranks, their groups, the rank-0 question), phases (the
profiler's named phase marks), atomic (the one atomic JSON / JSON-lines writer), versions (the one
versions record of a run's metadata), threads (the CPU thread count and heap retention).
"""
