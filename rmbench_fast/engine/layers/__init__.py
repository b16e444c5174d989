"""The engine's building blocks, on flat token-major tensors (x: [T, H]; q/k: [T, heads, D]).

Data flow through one decoder layer: norms (RMSNorm, Gemma's offset RMSNorm) -> linear (packed
q/k/v and gate/up projections) -> rope (rotary embedding of q and k) -> attention/ (packed
shared-prefix attention, one file per backend) -> mlp (the gated MLP); cpu_gemm is the one product
every body linear runs (oneDNN-packed or F.linear on the CPU); parallel holds the
tensor-parallel collectives, layers and vocab-parallel log-probs the models and heads use.
"""
