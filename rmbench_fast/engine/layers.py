"""Small shared layers (nano-vllm style): RMSNorms, rotary embedding, gated MLP.

All operate on flat token-major tensors: x: [T, H]; q/k: [T, heads, D].
Numerics follow HF Llama so fp16/bf16 runs round the same way: RMSNorm normalises in fp32
and casts back before the weight; RoPE angles are computed in fp32 and cos/sin cast to the
activation dtype.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rmbench_fast.engine.config import RopeConfig


class RMSNorm(nn.Module):
    """y = w * (x / sqrt(mean(x^2) + eps)), the mean and rsqrt in fp32."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [T, H]
        dtype = x.dtype
        if dtype == torch.float32 and self.weight.dtype == torch.float32:
            # One fused pass; in fp32 it is the same arithmetic as below (tested bit-equal).
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


class OffsetRMSNorm(nn.Module):
    """Gemma's RMSNorm: y = (x / sqrt(mean(x^2) + eps)) * (1 + w), all in fp32, then cast.

    The weight is stored as an offset from 1, and (unlike Llama) the product is taken in fp32
    before the cast back, as HF Gemma2RMSNorm does.
    """

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [T, H]
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return (h * (1.0 + self.weight.float())).to(x.dtype)


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


ACT_FNS = {"silu": F.silu, "gelu_pytorch_tanh": _gelu_tanh}


class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)), act = silu (Llama family) or tanh-approximated GELU (Gemma-2)."""

    def __init__(self, hidden: int, inter: int, bias: bool, act: str = "silu") -> None:
        super().__init__()
        self.act = ACT_FNS[act]
        self.gate_proj = nn.Linear(hidden, inter, bias=bias)
        self.up_proj = nn.Linear(hidden, inter, bias=bias)
        self.down_proj = nn.Linear(inter, hidden, bias=bias)

        self.gate_up_weight: torch.Tensor | None = None
        self.gate_up_bias: torch.Tensor | None = None

    def fuse(self) -> None:
        """Concatenate gate and up into one [2I, H] weight and drop the two modules."""
        g, u = self.gate_proj, self.up_proj
        self.gate_up_weight = torch.cat([g.weight, u.weight])
        self.gate_up_bias = torch.cat([g.bias, u.bias]) if g.bias is not None else None
        del self.gate_proj, self.up_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [T, H] -> [T, H]
        if self.gate_up_weight is None:
            return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))
        gate, up = F.linear(x, self.gate_up_weight, self.gate_up_bias).chunk(2, dim=-1)  # [T, I] each
        return self.down_proj(self.act(gate).mul_(up))  # act() allocates; multiply in place


def rope_inv_freq(rope: RopeConfig, head_dim: int) -> torch.Tensor:
    """Inverse frequencies [D/2] (fp32) for default, linear and llama3 RoPE.

    default: f_i = theta^(-2i/D); linear: f_i / factor; llama3: f_i / factor for long
    wavelengths (> orig/low), unchanged for short ones (< orig/high), smooth blend between.
    """
    inv = 1.0 / (rope.theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    if rope.type == "linear":
        return inv / rope.factor
    if rope.type != "llama3":
        return inv
    orig = rope.original_max_position_embeddings
    low_wavelen = orig / rope.low_freq_factor
    high_wavelen = orig / rope.high_freq_factor
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > low_wavelen, inv / rope.factor, inv)
    smooth = (orig / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor)
    blended = (1 - smooth) * scaled / rope.factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return torch.where(medium, blended, scaled)


def rope_cos_sin(
    inv_freq: torch.Tensor, positions: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin: [T, D/2] for position ids [T] (angles in fp32, then cast to `dtype`).

    HF builds [T, D] tables as cat(freqs, freqs); both halves are equal, so half is kept.
    """
    freqs = positions.float()[:, None] * inv_freq.to(positions.device)[None, :]  # [T, D/2]
    return freqs.cos().to(dtype), freqs.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """HF's x * cos + rotate_half(x) * sin, per half: [x1 c - x2 s, x2 c + x1 s].

    x: [T, heads, D], cos/sin: [T, D/2]. Same products and sums as HF, so same rounding.
    """
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    c, s = cos[:, None, :], sin[:, None, :]
    out = torch.empty_like(x)
    torch.addcmul(x1 * c, x2, s, value=-1, out=out[..., :half])
    torch.addcmul(x2 * c, x1, s, out=out[..., half:])
    return out
