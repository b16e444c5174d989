"""Rotary position embedding: inverse frequencies (default, linear, llama3, yarn, dynamic), cos/sin, rotation.

q/k: [T, heads, D]. RoPE angles are computed in fp32 and cos/sin cast to the activation dtype,
as HF does, so fp16/bf16 runs round the same way.
"""

from __future__ import annotations

import math

import torch

from rmbench_fast.engine.config import RopeConfig


def rope_inv_freq(rope: RopeConfig, head_dim: int) -> torch.Tensor:
    """Inverse frequencies [D/2] (fp32), computed as transformers computes them at load time.

    default: f_i = theta^(-2i/D); linear: f_i / factor; llama3: f_i / factor for long
    wavelengths (> orig/low), unchanged for short ones (< orig/high), smooth blend between;
    yarn: `yarn_inv_freq`; dynamic (NTK): theta' = theta·(factor·L/L - (factor - 1))^(D/(D-2))
    at L = max_position_embeddings, i.e. HF's frequencies for sequences up to that length.
    """
    if rope.type == "yarn":
        return yarn_inv_freq(rope, head_dim)
    theta = rope.theta
    if rope.type == "dynamic":
        seq_len = rope.max_position_embeddings
        factor = rope.factor
        theta = theta * ((factor * seq_len / rope.max_position_embeddings) - (factor - 1)) ** (
            head_dim / (head_dim - 2)
        )
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
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


def yarn_inv_freq(rope: RopeConfig, head_dim: int) -> torch.Tensor:
    """YaRN inverse frequencies [D/2] (fp32), transformers' `_compute_yarn_parameters` step by step.

    p_i = theta^(2i/D); dims below the correction range keep 1/p_i (extrapolation), dims above
    it get 1/(factor p_i) (interpolation), with a linear ramp between. The range is where a
    dim completes beta_fast .. beta_slow rotations over original_max_position_embeddings:
    d(r) = D ln(orig / (2π r)) / (2 ln theta), floored/ceiled when `truncate`.
    """
    dim, base, factor = head_dim, rope.theta, rope.factor
    orig = rope.original_max_position_embeddings

    def correction_dim(num_rotations: float) -> float:
        return (dim * math.log(orig / (num_rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(rope.beta_fast), correction_dim(rope.beta_slow)
    if rope.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # HF: prevent a singular ramp
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    pos_freqs = base ** (torch.arange(0, dim, 2).to(dtype=torch.float) / dim)
    inv_extrapolation = 1.0 / pos_freqs
    inv_interpolation = 1.0 / (factor * pos_freqs)
    extrapolation_factor = 1 - ramp
    return inv_interpolation * (1 - extrapolation_factor) + inv_extrapolation * extrapolation_factor


def rope_cos_sin(
    inv_freq: torch.Tensor, positions: torch.Tensor, dtype: torch.dtype, attention_factor: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin: [T, D/2] for position ids [T] (angles in fp32, then cast to `dtype`).

    HF builds [T, D] tables as cat(freqs, freqs); both halves are equal, so half is kept.
    attention_factor (YaRN's attention scaling): cos and sin are multiplied by it in fp32
    before the cast, as HF does (a factor of 1 is skipped: x * 1.0 == x exactly).
    """
    freqs = positions.float()[:, None] * inv_freq.to(positions.device)[None, :]  # [T, D/2]
    cos, sin = freqs.cos(), freqs.sin()
    if attention_factor != 1.0:
        cos, sin = cos * attention_factor, sin * attention_factor
    return cos.to(dtype), sin.to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """HF's x * cos + rotate_half(x) * sin, per half: [x1 c - x2 s, x2 c + x1 s].

    x: [T, heads, D], cos/sin: [T, D/2]. Same products and sums as HF, so same rounding.
    """
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    c, s = cos[:, None, :], sin[:, None, :]
    out = torch.empty_like(x)
    o1, o2 = out[..., :half], out[..., half:]
    # Each half is written in place (no temporaries); the same product-then-addcmul as before.
    torch.mul(x1, c, out=o1).addcmul_(x2, s, value=-1)
    torch.mul(x2, c, out=o2).addcmul_(x1, s)
    return out
