"""Gemma-2 decoder over a packed flat token stream, built from the shared layers.

What differs from the Llama family (all from config.json, see EngineConfig):
  * embeddings are multiplied by sqrt(H), rounded to the model dtype first (HF's embed_scale);
  * four RMSNorms per layer, "sandwich" style, each Gemma's x * (1 + w) in fp32:
        x = x + post_attention_norm(attn(input_norm(x)))
        x = x + post_feedforward_norm(mlp(pre_feedforward_norm(x)))
  * attention scores scaled by query_pre_attn_scalar^-0.5 and soft-capped (cap * tanh(s / cap));
  * tanh-approximated GELU in the gated MLP;
  * alternating sliding-window layers (even layers slide by default);
  * a final logit soft-cap on the LM head, applied by the runner where the head is applied
    (per vocabulary shard under tensor parallelism: the cap is elementwise).
Parameter names equal the HF checkpoint names (packed projections as in llama.py).
"""

from __future__ import annotations

import torch
from torch import nn

from rmbench_fast.engine.config import EngineConfig
from rmbench_fast.engine.layers.attention import AttnImpl, PackedLayout
from rmbench_fast.engine.layers.mlp import GatedMLP
from rmbench_fast.engine.layers.norms import OffsetRMSNorm
from rmbench_fast.engine.models.llama import Attention, LlamaForScoring, LlamaModel


class Gemma2DecoderLayer(nn.Module):
    """Sandwich-norm block (four OffsetRMSNorms), Llama's attention and gated MLP."""

    def __init__(self, cfg: EngineConfig, window: int | None) -> None:
        super().__init__()
        H, eps = cfg.hidden_size, cfg.rms_norm_eps
        self.input_layernorm = OffsetRMSNorm(H, eps)
        self.self_attn = Attention(cfg, window)
        self.post_attention_layernorm = OffsetRMSNorm(H, eps)
        self.pre_feedforward_layernorm = OffsetRMSNorm(H, eps)
        self.mlp = GatedMLP(H, cfg.intermediate_size, cfg.mlp_bias, cfg.hidden_act)
        self.post_feedforward_layernorm = OffsetRMSNorm(H, eps)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layout: PackedLayout, impl: AttnImpl
    ) -> torch.Tensor:
        # x: [T, H]
        x = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), cos, sin, layout, impl))
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))


class Gemma2Model(LlamaModel):
    """embed * sqrt(H) -> Gemma-2 layers -> final (1 + w) norm; returns hidden states [T, H]."""

    layer_cls = Gemma2DecoderLayer
    norm_cls = OffsetRMSNorm

    @staticmethod
    def embedding_scale(cfg: EngineConfig) -> float | None:
        return cfg.hidden_size**0.5


class Gemma2ForScoring(LlamaForScoring):
    """Gemma-2 body plus `lm_head` (tied by default) or a `score` head; see LlamaForScoring."""

    body_cls = Gemma2Model
