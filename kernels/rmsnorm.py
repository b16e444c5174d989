"""RMSNorm as one Triton kernel, the engine's two forms (engine/layers.py):
    Llama / Qwen / Mistral:  y = w * (x · rsqrt(mean(x²) + eps)).to(dtype)    (product in dtype)
    Gemma (offset=True):     y = (x · rsqrt(mean(x²) + eps) · (1 + w)).to(dtype)  (all fp32)
the mean and rsqrt in fp32 whatever x's dtype. torch runs this as ~5 kernels with [T, H] fp32
temporaries; the kernel reads x and w once and writes y once.

Shapes: x [T, H] (fp32/fp16/bf16, any row stride, unit column stride), w [H] -> y [T, H]
contiguous in x's dtype. One program per row with the row in registers (BLOCK_H = next_pow2(H),
H <= 65536); offsets in int64.
"""

from __future__ import annotations

import torch

try:  # Triton is optional at import time (CPU-only installs use the torch reference).
    import triton.language as tl

    HAVE_TRITON = True
except ImportError:  # pragma: no cover - exercised only without triton
    tl = None  # type: ignore[assignment]
    HAVE_TRITON = False

from ._triton_util import build_kernel, check_same_device, is_float_dtype, next_pow2

__all__ = ["rmsnorm_ref", "rmsnorm_triton"]


def rmsnorm_ref(x: torch.Tensor, w: torch.Tensor, eps: float, *, offset: bool = False) -> torch.Tensor:
    """The engine's RMSNorm in torch (module docstring). x: [..., H], w: [H]."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    if offset:
        return (h * (1.0 + w.float())).to(x.dtype)
    return w * h.to(x.dtype)


def _rmsnorm_kernel(
    x_ptr,
    w_ptr,
    y_ptr,
    H,
    stride_x,
    eps,
    BLOCK_H: tl.constexpr,
    OFFSET: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    c = tl.arange(0, BLOCK_H).to(tl.int64)
    cm = c < H
    x = tl.load(x_ptr + row * stride_x + c, mask=cm, other=0.0)
    xf = x.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(xf * xf, axis=0) / H + eps)
    n = xf * rstd
    w = tl.load(w_ptr + c, mask=cm, other=0.0)
    if OFFSET:
        y = (n * (1.0 + w.to(tl.float32))).to(x.dtype)
    else:
        y = (w.to(tl.float32) * n.to(x.dtype).to(tl.float32)).to(x.dtype)
    tl.store(y_ptr + row * H + c, y, mask=cm)


def rmsnorm_triton(x: torch.Tensor, w: torch.Tensor, eps: float, *, offset: bool = False) -> torch.Tensor:
    """`rmsnorm_ref` as one kernel. x: [T, H] (unit column stride), w: [H] in x's dtype (or fp32
    with offset) -> y [T, H] contiguous. CUDA runs the compiled kernel; CPU needs TRITON_INTERPRET=1."""
    if not HAVE_TRITON:
        raise RuntimeError("triton is not installed; use rmsnorm_ref")
    if x.dim() != 2 or w.dim() != 1 or w.shape[0] != x.shape[1]:
        raise ValueError(f"x must be [T, H] and w [H], got {tuple(x.shape)} and {tuple(w.shape)}")
    if not is_float_dtype(x.dtype) or not is_float_dtype(w.dtype):
        raise ValueError(f"x and w must be float32, float16 or bfloat16, got {x.dtype} and {w.dtype}")
    if x.shape[1] and x.stride(1) != 1:
        raise ValueError("x must have a unit column stride")
    T, H = x.shape
    if H > 65536:
        raise ValueError(f"H = {H} > 65536")
    check_same_device("w", w, x.device)
    y = torch.empty((T, H), dtype=x.dtype, device=x.device)
    if T * H == 0:
        return y
    kernel = build_kernel(_rmsnorm_kernel, device=x.device, heuristics={})
    BLOCK_H = next_pow2(H)
    kernel[(T,)](
        x, w, y, H, x.stride(0), float(eps),
        BLOCK_H=BLOCK_H, OFFSET=offset, num_warps=min(16, max(1, BLOCK_H // 256)),
    )  # fmt: skip
    return y
