"""Backend-independent scoring math: what every scorer (engine, transformers) shares.

Data flow: plan (shared-prefix packing and token-budget batching, C++ core with a Python
reference) -> logprobs (the dispatch to the log-prob kernels) -> rewards (per-sequence sums ->
DPO rewards, SPEC §5, the one place).
"""
