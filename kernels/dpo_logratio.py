"""Kernel A: per-token label log-probs of a policy (and optionally a reference) from logits.

For each token row t with label y_t != ignore_index:
    log π(y_t)     = x[t, y_t]     − logsumexp_v x[t, v]          (x = policy logits)
    log π_ref(y_t) = x_ref[t, y_t] − logsumexp_v x_ref[t, v]
    diff_t         = log π(y_t) − log π_ref(y_t)
computed in fp32 whatever the logits dtype (bf16/fp16 are upcast on load), in ONE pass over each
row: an online log-sum-exp over BLOCK_V chunks (running max m and running sum s of exp(x − m)),
plus a single scalar load of the label logit. Ignored rows (label == ignore_index) read nothing
and write exactly 0.0 to every output (a defined, NaN-free value; the segment reductions also
skip them by mask). A label outside [0, V) gives NaN (the dispatcher rejects those up front).

Shapes: logits [T, V] with any row/column strides (in elements), labels [T] int32/int64 with any
stride; outputs [T] fp32 contiguous. One program per row: the grid is (T,), fine up to
T = 2^31 − 1; row offsets are computed in int64 so T·V > 2^31 is safe.
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
from .reference import IGNORE_INDEX, dpo_logratio_ref

__all__ = ["IGNORE_INDEX", "dpo_logratio_ref", "dpo_logratio_triton"]


def _dpo_logratio_kernel(
    pol_ptr,  # [T, V] policy logits
    ref_ptr,  # [T, V] reference logits (== pol_ptr when HAS_REF is False; never read then)
    lab_ptr,  # [T] labels
    out_pol_ptr,  # [T] fp32
    out_ref_ptr,  # [T] fp32 (unused without ref)
    out_diff_ptr,  # [T] fp32 (unused without ref)
    V,
    stride_pt,
    stride_pv,
    stride_rt,
    stride_rv,
    stride_lab,
    IGNORE: tl.constexpr,
    BLOCK_V: tl.constexpr,
    HAS_REF: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    lab = tl.load(lab_ptr + row * stride_lab).to(tl.int64)
    valid = lab != IGNORE
    in_range = (lab >= 0) & (lab < V)
    # Ignored rows run zero chunks: they cost one label load and three stores.
    n_v = tl.where(valid, V, 0)
    safe_lab = tl.where(in_range, lab, 0)
    cols = tl.arange(0, BLOCK_V)

    # Policy row: online LSE. m starts finite so an all -inf chunk never computes (-inf) - (-inf).
    base = pol_ptr + row * stride_pt
    m = tl.full((), -1.0e30, tl.float32)
    s = tl.zeros((), tl.float32)
    for v0 in range(0, n_v, BLOCK_V):
        c = v0 + cols
        x = tl.load(base + c.to(tl.int64) * stride_pv, mask=c < V, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
        m = m_new
    x_lab = tl.load(base + safe_lab * stride_pv, mask=valid & in_range, other=float("nan")).to(tl.float32)
    # s == 0 only on ignored rows (no chunks read): log(1) keeps the interpreter quiet.
    lp = tl.where(valid, x_lab - (m + tl.log(tl.where(valid, s, 1.0))), 0.0)
    tl.store(out_pol_ptr + row, lp)

    if HAS_REF:
        rbase = ref_ptr + row * stride_rt
        mr = tl.full((), -1.0e30, tl.float32)
        sr = tl.zeros((), tl.float32)
        for v0 in range(0, n_v, BLOCK_V):
            c = v0 + cols
            x = tl.load(rbase + c.to(tl.int64) * stride_rv, mask=c < V, other=float("-inf")).to(tl.float32)
            mr_new = tl.maximum(mr, tl.max(x, axis=0))
            sr = sr * tl.exp(mr - mr_new) + tl.sum(tl.exp(x - mr_new), axis=0)
            mr = mr_new
        xr_lab = tl.load(rbase + safe_lab * stride_rv, mask=valid & in_range, other=float("nan")).to(
            tl.float32
        )
        lpr = tl.where(valid, xr_lab - (mr + tl.log(tl.where(valid, sr, 1.0))), 0.0)
        tl.store(out_ref_ptr + row, lpr)
        tl.store(out_diff_ptr + row, lp - lpr)


_HEURISTICS = {"HAS_REF": lambda args: args["ref_ptr"] is not args["pol_ptr"]}


def _check_logits(name: str, x: torch.Tensor, device: torch.device) -> None:
    if x.dim() != 2:
        raise ValueError(f"{name} must be [T, V], got shape {tuple(x.shape)}")
    if not is_float_dtype(x.dtype):
        raise ValueError(f"{name} must be float32, float16 or bfloat16, got {x.dtype}")
    check_same_device(name, x, device)


def _check_label_tensor(labels: torch.Tensor, T: int, device: torch.device) -> None:
    if labels.dim() != 1 or labels.shape[0] != T:
        raise ValueError(f"labels must be [T] = [{T}], got shape {tuple(labels.shape)}")
    if labels.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"labels must be int32 or int64, got {labels.dtype}")
    check_same_device("labels", labels, device)


def logratio_launch_config(V: int, *, interpret: bool, block_v: int | None = None) -> tuple[int, int]:
    """(BLOCK_V, num_warps) for a vocabulary of V.

    GPU: 4096-wide chunks (8 KB of bf16 per load, enough bytes in flight per SM); interpreter:
    one numpy op per chunk, so fewer, larger chunks are faster.
    """
    if block_v is None:
        block_v = min(next_pow2(V), 16384 if interpret else 4096)
    return block_v, 8 if block_v >= 2048 else 4


def dpo_logratio_triton(
    policy_logits: torch.Tensor,
    ref_logits: torch.Tensor | None,
    labels: torch.Tensor,
    *,
    ignore_index: int = IGNORE_INDEX,
    block_v: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Per-token (log π, log π_ref, log π − log π_ref), each [T] fp32; the last two None without ref.

    policy_logits, ref_logits: [T, V] bf16/fp16/fp32, any strides, same device and V.
    labels: [T] int32/int64; ignore_index rows get 0.0 in every output.
    CUDA tensors run the compiled kernel; CPU tensors run Triton's interpreter (slow, for tests).
    """
    if not HAVE_TRITON:
        raise RuntimeError("triton is not installed; use backend='torch'")
    device = policy_logits.device
    _check_logits("policy_logits", policy_logits, device)
    T, V = policy_logits.shape
    if ref_logits is not None:
        _check_logits("ref_logits", ref_logits, device)
        if tuple(ref_logits.shape) != (T, V):
            raise ValueError(f"ref_logits shape {tuple(ref_logits.shape)} != policy_logits shape {(T, V)}")
    _check_label_tensor(labels, T, device)

    out_pol = torch.empty(T, dtype=torch.float32, device=device)
    out_ref = torch.empty(T, dtype=torch.float32, device=device) if ref_logits is not None else None
    out_diff = torch.empty(T, dtype=torch.float32, device=device) if ref_logits is not None else None
    if T == 0:
        return out_pol, out_ref, out_diff

    interpret = device.type != "cuda"
    kernel = build_kernel(_dpo_logratio_kernel, device=device, heuristics=_HEURISTICS)
    block_v, num_warps = logratio_launch_config(V, interpret=interpret, block_v=block_v)
    ref = ref_logits if ref_logits is not None else policy_logits
    kernel[(T,)](
        policy_logits,
        ref,
        labels,
        out_pol,
        out_ref if out_ref is not None else out_pol,
        out_diff if out_diff is not None else out_pol,
        V,
        policy_logits.stride(0),
        policy_logits.stride(1),
        ref.stride(0),
        ref.stride(1),
        labels.stride(0),
        IGNORE=ignore_index,
        BLOCK_V=block_v,
        num_warps=num_warps,
    )
    return out_pol, out_ref, out_diff
