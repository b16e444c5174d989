"""Shared layers: the fused fp32 RMSNorm equals HF's arithmetic bit for bit."""

from __future__ import annotations

import pytest
import torch

from rmbench_fast.engine.layers import RMSNorm


def hf_rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' LlamaRMSNorm: normalise in fp32, cast back, then scale."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return w * h.to(x.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 8), (37, 576), (5, 4096)])
def test_rms_norm_matches_hf(dtype: torch.dtype, shape: tuple[int, int]) -> None:
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=g) * 3).to(dtype)
    norm = RMSNorm(shape[1], 1e-6).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(shape[1], generator=g))
        out = norm(x)
    ref = hf_rms_norm(x, norm.weight.detach(), 1e-6)
    assert out.dtype == ref.dtype
    # fp32: the fused kernel computes the same thing in the same precision; bf16 keeps HF's path.
    torch.testing.assert_close(
        out, ref, rtol=2e-7 if dtype == torch.float32 else 0, atol=1e-6 if dtype == torch.float32 else 0
    )
