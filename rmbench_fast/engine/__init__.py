"""The native scoring engine: Llama-family and Gemma-2 models over packed shared-prefix batches.

Data flow: scheduler (batches, out-of-memory back-off) -> layout (what a packed batch looks like
to attention) -> config -> layers/ (norms, packed linears, RoPE, attention backends, MLP,
tensor-parallel layers) -> models/ (the family files, reward heads, one rank's shard) -> loader
(weights into a built model) -> heads (LM-head log-probs, classifier pooling) -> scorer
(NativeScorer, the public entry point).
"""

from rmbench_fast.engine.config import EngineConfig
from rmbench_fast.engine.loader import load_model
from rmbench_fast.engine.scorer import NativeScorer, native_supports

__all__ = ["EngineConfig", "NativeScorer", "load_model", "native_supports"]
