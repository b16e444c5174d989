"""Llama-family decoder (Llama 2/3/3.1/3.2, Mistral, Qwen2) over a packed flat token stream.

The three families differ only in config flags (EngineConfig): Qwen2 has q/k/v biases,
Mistral and Qwen2 may have sliding-window layers, Llama 3.x uses llama3 RoPE scaling.
Parameter names equal the HF checkpoint names, so weights load by name.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rmbench_fast.engine.attention import AttnImpl, PackedLayout, packed_attention
from rmbench_fast.engine.config import EngineConfig
from rmbench_fast.engine.layers import GatedMLP, RMSNorm, apply_rope, rope_cos_sin, rope_inv_freq


class Attention(nn.Module):
    def __init__(self, cfg: EngineConfig, window: int | None) -> None:
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        )
        self.window = window
        self.scale, self.softcap = cfg.attn_scale, cfg.attn_softcap
        H, D = cfg.hidden_size, cfg.head_dim
        self.q_proj = nn.Linear(H, self.n_heads * D, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(H, self.n_kv * D, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(H, self.n_kv * D, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(self.n_heads * D, H, bias=cfg.o_bias)
        self.qkv_weight: torch.Tensor | None = None
        self.qkv_bias: torch.Tensor | None = None

    def fuse(self) -> None:
        """Concatenate q/k/v into one [(Hq + 2 Hk) D, H] weight and drop the three modules."""
        projs = (self.q_proj, self.k_proj, self.v_proj)
        self.qkv_weight = torch.cat([p.weight for p in projs])
        self.qkv_bias = torch.cat([p.bias for p in projs]) if projs[0].bias is not None else None
        del self.q_proj, self.k_proj, self.v_proj

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layout: PackedLayout, impl: AttnImpl
    ) -> torch.Tensor:
        # x: [T, H]
        T, D = x.shape[0], self.head_dim
        if self.qkv_weight is not None:  # one GEMM reads x once
            qkv = F.linear(x, self.qkv_weight, self.qkv_bias)  # [T, (Hq + 2 Hk) D]
            q, k, v = qkv.split([self.n_heads * D, self.n_kv * D, self.n_kv * D], dim=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q = q.reshape(T, self.n_heads, D)  # [T, Hq, D]
        k = k.reshape(T, self.n_kv, D)  # [T, Hk, D]
        v = v.reshape(T, self.n_kv, D)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        o = packed_attention(
            q, k, v, layout, self.window, impl, scale=self.scale, softcap=self.softcap
        )  # [T, Hq, D]
        return self.o_proj(o.reshape(T, self.n_heads * self.head_dim))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: EngineConfig, window: int | None) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, window)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = GatedMLP(cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias, cfg.hidden_act)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layout: PackedLayout, impl: AttnImpl
    ) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, layout, impl)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    """embed (* embed_scale) -> layers -> final norm; returns the last hidden states [T, H]."""

    def __init__(self, cfg: EngineConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, w) for w in cfg.layer_windows)
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.embed_scale: float | None = None  # Gemma: sqrt(H)

    def forward(
        self,
        input_ids: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        layout: PackedLayout,
        impl: AttnImpl,
    ) -> torch.Tensor:
        x = self.embed_tokens(input_ids)  # [T, H]
        if self.embed_scale is not None:
            # HF keeps the scale as an fp32 tensor cast to the weight dtype (sqrt(3584) -> 60.0
            # in bf16): the same double rounding here.
            x = x * torch.tensor(self.embed_scale, dtype=torch.float32).to(x.dtype)
        for layer in self.layers:
            x = layer(x, cos, sin, layout, impl)
        return self.norm(x)


class LlamaForScoring(nn.Module):
    """The decoder plus its head: `lm_head` [V, H] (causal) or `score` [1, H] (classifier).

    The head is not applied in forward: the runner applies it only at the rows it needs
    (label positions / pooled positions), which is the main saving over full [T, V] logits.
    """

    def __init__(self, cfg: EngineConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = self.build_body(cfg)
        if cfg.head == "causal":
            self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        else:
            self.score = nn.Linear(cfg.hidden_size, cfg.num_labels, bias=False)
        self.register_buffer("inv_freq", rope_inv_freq(cfg.rope, cfg.head_dim), persistent=False)

    @staticmethod
    def build_body(cfg: EngineConfig) -> nn.Module:
        """The decoder without its head (one class per family)."""
        return LlamaModel(cfg)

    def fuse(self) -> None:
        """Fuse per-layer projections after loading (fewer, larger GEMMs)."""
        for layer in self.model.layers:
            layer.self_attn.fuse()
            layer.mlp.fuse()

    def head_weight(self) -> torch.Tensor:
        return self.lm_head.weight if self.cfg.head == "causal" else self.score.weight

    def classify(self, h: torch.Tensor, fp32: bool = False) -> torch.Tensor:
        """The classifier head at the pooled rows: h [S, H] -> scores [S, num_labels].

        In the model dtype (SPEC §4 rounding), or in fp32 when `fp32` (--fp32-scores).
        """
        w = self.score.weight  # [num_labels, H]
        return F.linear(h.float(), w.float()) if fp32 else F.linear(h, w)

    @torch.inference_mode()
    def hidden_states(self, input_ids: torch.Tensor, layout: PackedLayout, impl: AttnImpl) -> torch.Tensor:
        """Final-norm hidden states [T, H] for a packed batch (input_ids: [T])."""
        dtype = self.model.embed_tokens.weight.dtype
        cos, sin = rope_cos_sin(self.inv_freq, layout.positions, dtype)  # [T, D]
        return self.model(input_ids, cos, sin, layout, impl)
