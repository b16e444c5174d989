"""Small shared layers (nano-vllm style): RMSNorms, packed linear layers, rotary embedding, gated MLP.

All operate on flat token-major tensors: x: [T, H]; q/k: [T, heads, D].
Numerics follow HF Llama so fp16/bf16 runs round the same way: RMSNorm normalises in fp32
and casts back before the weight; RoPE angles are computed in fp32 and cos/sin cast to the
activation dtype.

Packed projections (q/k/v, gate/up) are one registered Parameter each: the loader writes each
checkpoint tensor straight into its row slice (`PackedLinear.load_shard`, nano-vllm's packed
`weight_loader`), so one GEMM reads x once and `model.parameters()` counts every weight once.
Under tensor parallelism a packed block is this rank's rows of its checkpoint tensor
(`PackedLinear(sources=...)`, built by engine/parallel.py); `ShardLoader` is the interface the
loader uses for every module that places checkpoint tensors itself.
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from rmbench_fast.engine.config import RopeConfig
from rmbench_fast.engine.cpu_gemm import Linear, gemm


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


@runtime_checkable
class ShardLoader(Protocol):
    """A module that places checkpoint tensors itself (packed rows, tensor-parallel slices).

    shard_shape: the checkpoint tensor's full shape for parameter `leaf` and shard id `shard`;
    shard_slice: the (dim, start, length) part of it this module reads (None: all of it);
    load_shard: copy that part (any dtype/device) into place.
    """

    def shard_shape(self, leaf: str, shard: str) -> tuple[int, ...]: ...

    def shard_slice(self, leaf: str, shard: str) -> tuple[int, int, int] | None: ...

    def load_shard(self, leaf: str, tensor: torch.Tensor, shard: str) -> None: ...


class PackedLinear(nn.Module):
    """y = x Wᵀ + b with W = [W_a; W_b; ...] packed by rows: x [T, in] -> y [T, Σ out_s].

    `shards` names the row blocks in order with their sizes, e.g. {"q": Hq·D, "k": Hk·D, "v": Hk·D}.
    The checkpoint's separate tensors (q_proj, k_proj, v_proj) are written into their row
    slices by `load_shard`; the layer holds one weight (and one bias) Parameter. Same GEMM as
    x @ cat(W_a, W_b, ...)ᵀ, so the same numbers as concatenating after loading.

    `sources` (tensor parallelism, engine/parallel.py): per shard (start, full), meaning this
    rank's block is rows [start, start + size) of a checkpoint tensor of `full` rows. Without
    it each block is a whole checkpoint tensor. The shard id "" is the whole packed tensor (a
    checkpoint that stores qkv_proj already packed; not with `sources`).
    """

    packable_weight = True  # cpu_gemm.prepack may pack it for oneDNN

    def __init__(
        self,
        in_features: int,
        shards: dict[str, int],
        bias: bool,
        *,
        sources: dict[str, tuple[int, int]] | None = None,
    ) -> None:
        super().__init__()
        self.shards: dict[str, tuple[int, int]] = {}
        offset = 0
        for name, size in shards.items():
            self.shards[name] = (offset, size)
            offset += size
        self.out_sizes = list(shards.values())
        self.sources = dict(sources or {})
        self.weight = nn.Parameter(torch.empty(offset, in_features))
        self.bias = nn.Parameter(torch.empty(offset)) if bias else None

    def shard_shape(self, leaf: str, shard: str) -> tuple[int, ...]:
        """The checkpoint tensor's shape for parameter `leaf` ("weight" | "bias") and `shard`."""
        if shard == "":
            param = self.weight if leaf == "weight" else self.bias
            assert param is not None
            return tuple(param.shape)
        size = self.sources[shard][1] if shard in self.sources else self.shards[shard][1]
        return (size, self.weight.shape[1]) if leaf == "weight" else (size,)

    def shard_slice(self, leaf: str, shard: str) -> tuple[int, int, int] | None:
        """(0, start, size): the checkpoint rows this rank's block holds (None: the whole tensor)."""
        if shard not in self.sources:
            return None
        start, full = self.sources[shard]
        size = self.shards[shard][1]
        return None if (start, size) == (0, full) else (0, start, size)

    def load_shard(self, leaf: str, tensor: torch.Tensor, shard: str) -> None:
        """Copy a checkpoint tensor (any dtype/device; its `shard_slice` part under tensor
        parallelism) into rows [offset, offset + size) of `leaf` ("" = the whole parameter)."""
        param = self.weight if leaf == "weight" else self.bias
        assert param is not None
        with torch.no_grad():
            if shard == "":
                param.copy_(tensor)
                return
            offset, size = self.shards[shard]
            param.narrow(0, offset, size).copy_(tensor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gemm(x, self.weight, self.bias)


class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)), act = silu (Llama family) or tanh-approximated GELU (Gemma-2).

    gate and up are one packed [2I, H] projection (`gate_up_proj`, shards "gate" and "up").
    """

    def __init__(self, hidden: int, inter: int, bias: bool, act: str = "silu") -> None:
        super().__init__()
        self.act = ACT_FNS[act]
        self.gate_up_proj = PackedLinear(hidden, {"gate": inter, "up": inter}, bias)
        self.down_proj = Linear(inter, hidden, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [T, H] -> [T, H]
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)  # [T, I] each
        return self.down_proj(self.act(gate).mul_(up))  # act() allocates; multiply in place


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
    torch.addcmul(x1 * c, x2, s, value=-1, out=out[..., :half])
    torch.addcmul(x2 * c, x1, s, out=out[..., half:])
    return out
