"""The flash backend's log-sum-exp merge as one Triton kernel (engine/layers/attention/flash.py).

Two attention results over disjoint key sets, o_A, o_B [T, H, D] with their row log-sum-exps
l_A, l_B [T, H] fp32, merge exactly into the attention over the union:
    m = max(l_A, l_B),  w_A = e^{l_A - m},  w_B = e^{l_B - m}
    o = (w_A o_A + w_B o_B) / (w_A + w_B)                      on rows where rows[t]
    o = o_A                                                     elsewhere
in fp32, rounded once to o_A's dtype. l_B of the other rows is never read (FlashAttention gives
+inf there), an l_B of -inf adds nothing, and o_B counts as 0 where w_B = 0, so a row without B
keys never leaks a NaN. The torch version materialises ~8 [T, H, D] fp32 temporaries; the
kernel reads o_A, o_B once and writes o once.

Shapes: o_a, o_b [T, H, D] (fp32/fp16/bf16, any strides, D <= 1024), l_a, l_b [T, H] fp32 (any
strides: varlen_attn's transposed LSE is passed as is), rows [T] bool. One program per (t, h)
with the whole head (BLOCK_D = next_pow2(D)) in registers; offsets in int64.
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

__all__ = ["lse_merge_ref", "lse_merge_triton"]


def lse_merge_ref(
    o_a: torch.Tensor, l_a: torch.Tensor, o_b: torch.Tensor, l_b: torch.Tensor, rows: torch.Tensor
) -> torch.Tensor:
    """The merge in torch (module docstring). rows: [T] or [T, 1] bool -> [T, H, D] in o_a's dtype."""
    r = rows.reshape(-1, 1)
    l_b = torch.where(r, l_b, -torch.inf)
    m = torch.maximum(l_a, l_b)[..., None]  # [T, H, 1]
    w_a, w_b = torch.exp(l_a[..., None] - m), torch.exp(l_b[..., None] - m)
    o_b = torch.where(w_b > 0, o_b.float(), 0.0)
    merged = (o_a.float() * w_a + o_b * w_b) / (w_a + w_b)
    return torch.where(r[..., None], merged.to(o_a.dtype), o_a)


def _lse_merge_kernel(
    oa_ptr,
    la_ptr,
    ob_ptr,
    lb_ptr,
    rows_ptr,
    out_ptr,
    H,
    D,
    s_oat,
    s_oah,
    s_oad,
    s_obt,
    s_obh,
    s_obd,
    s_lat,
    s_lah,
    s_lbt,
    s_lbh,
    BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    t = pid // H
    h = pid % H
    d = tl.arange(0, BLOCK_D).to(tl.int64)
    dm = d < D
    o_a = tl.load(oa_ptr + t * s_oat + h * s_oah + d * s_oad, mask=dm, other=0.0)
    merge = tl.load(rows_ptr + t) != 0
    out = o_a
    if merge:
        l_a = tl.load(la_ptr + t * s_lat + h * s_lah)
        l_b = tl.load(lb_ptr + t * s_lbt + h * s_lbh)
        m = tl.maximum(l_a, l_b)
        w_a = tl.exp(l_a - m)
        w_b = tl.exp(l_b - m)  # 0 for l_b = -inf; +inf never reaches here (m = +inf -> NaN)
        o_b = tl.load(ob_ptr + t * s_obt + h * s_obh + d * s_obd, mask=dm, other=0.0)
        o_b = tl.where(w_b > 0, o_b.to(tl.float32), 0.0)  # a row without B keys: o_B unread
        merged = (o_a.to(tl.float32) * w_a + o_b * w_b) / (w_a + w_b)
        out = merged.to(o_a.dtype)
    tl.store(out_ptr + t * H * D + h * D + d, out, mask=dm)


def lse_merge_triton(
    o_a: torch.Tensor, l_a: torch.Tensor, o_b: torch.Tensor, l_b: torch.Tensor, rows: torch.Tensor
) -> torch.Tensor:
    """`lse_merge_ref` as one kernel -> a new contiguous [T, H, D] tensor in o_a's dtype.

    The caller guarantees l_B is finite or -inf on merged rows (flash sets the rows without B
    keys outside `rows`). CUDA tensors run the compiled kernel; CPU tensors need TRITON_INTERPRET=1.
    """
    if not HAVE_TRITON:
        raise RuntimeError("triton is not installed; use lse_merge_ref")
    if o_a.dim() != 3 or o_b.shape != o_a.shape:
        raise ValueError(f"o_a, o_b must both be [T, H, D], got {tuple(o_a.shape)} and {tuple(o_b.shape)}")
    T, H, D = o_a.shape
    if l_a.shape != (T, H) or l_b.shape != (T, H) or l_a.dtype != torch.float32 or l_b.dtype != torch.float32:
        raise ValueError(f"l_a, l_b must be [T, H] = [{T}, {H}] float32")
    if not is_float_dtype(o_a.dtype) or o_b.dtype != o_a.dtype:
        raise ValueError(f"o_a, o_b must share a float dtype, got {o_a.dtype} and {o_b.dtype}")
    if D > 1024:
        raise ValueError(f"head size {D} > 1024")
    dev = o_a.device
    for name, x in (("l_a", l_a), ("o_b", o_b), ("l_b", l_b), ("rows", rows)):
        check_same_device(name, x, dev)
    r = rows.reshape(-1)
    if r.shape[0] != T:
        raise ValueError(f"rows must hold T = {T} flags, got {tuple(rows.shape)}")
    r = r.to(torch.int8).contiguous()
    out = torch.empty((T, H, D), dtype=o_a.dtype, device=dev)
    if T * H == 0:
        return out
    kernel = build_kernel(_lse_merge_kernel, device=dev, heuristics={})
    BLOCK_D = next_pow2(D)
    kernel[(T * H,)](
        o_a, l_a, o_b, l_b, r, out, H, D,
        *o_a.stride(), *o_b.stride(), *l_a.stride(), *l_b.stride(),
        BLOCK_D=BLOCK_D, num_warps=1 if BLOCK_D <= 128 else 2,
    )  # fmt: skip
    return out
