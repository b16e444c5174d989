"""Qwen3 (dense) decoder over a packed flat token stream: the Llama block with q/k RMSNorm.

What differs from Qwen2 (all from config.json, see EngineConfig):
  * q and k are RMS-normalised per head over head_dim, each with its own weight [D], after
    the projection and before RoPE (HF Qwen3Attention: q_norm / k_norm);
  * no q/k/v bias by default (`attention_bias` turns on q/k/v *and* o biases);
  * head_dim is its own field (default 128, not hidden_size / heads);
  * sliding-window layers as Qwen2 reads them (use_sliding_window, max_window_layers, layer_types).
Parameter names equal the HF checkpoint names (packed projections as in llama.py).
"""

from __future__ import annotations

import torch

from rmbench_fast.engine.config import EngineConfig
from rmbench_fast.engine.layers.norms import RMSNorm
from rmbench_fast.engine.models.llama import Attention, DecoderLayer, LlamaForScoring, LlamaModel


class Qwen3Attention(Attention):
    """Llama attention with q = RMSNorm_q(q), k = RMSNorm_k(k) over the last dim (D) before RoPE."""

    def __init__(self, cfg: EngineConfig, window: int | None) -> None:
        super().__init__(cfg, window)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)

    def qk_transform(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # q: [T, Hq, D], k: [T, Hk, D]; RMSNorm reduces over the last dim, as HF's does
        return self.q_norm(q), self.k_norm(k)


class Qwen3DecoderLayer(DecoderLayer):
    attention_cls = Qwen3Attention


class Qwen3Model(LlamaModel):
    """embed -> Qwen3 layers -> final RMSNorm; returns hidden states [T, H]."""

    layer_cls = Qwen3DecoderLayer


class Qwen3ForScoring(LlamaForScoring):
    """Qwen3 body plus `lm_head` (tied or not) or a `score` head; see LlamaForScoring."""

    body_cls = Qwen3Model
