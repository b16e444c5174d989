"""RMSNorms over flat token-major activations x: [T, H].

Numerics follow HF Llama so fp16/bf16 runs round the same way: RMSNorm normalises in fp32 and
casts back before the weight; Gemma's offset RMSNorm takes the product in fp32 before the cast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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
