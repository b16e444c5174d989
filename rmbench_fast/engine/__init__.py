"""The native scoring engine: Llama-family models over packed shared-prefix batches.

config.py  HF config.json -> EngineConfig (unsupported features raise ModelError)
layers.py  RMSNorm, RoPE (default / linear / llama3), gated MLP
attention.py  the packed visibility rule and its sdpa / flex / dense implementations
llama.py   Llama / Mistral / Qwen2 decoder + head
loader.py  safetensors streaming onto a meta-built model
runner.py  NativeScorer: DPO and classifier rewards over planner batches
"""

from rmbench_fast.engine.config import EngineConfig
from rmbench_fast.engine.loader import load_model
from rmbench_fast.engine.runner import NativeScorer, native_supports

__all__ = ["EngineConfig", "NativeScorer", "load_model", "native_supports"]
