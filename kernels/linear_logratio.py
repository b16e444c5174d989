"""Kernel B: label log-probs straight from hidden states, fusing the lm_head matmul.

    logits[t, v] = Σ_h hidden[t, h] · weight[v, h]          (tl.dot, fp32 accumulation)
    logits       = cap · tanh(logits / cap)                   (optional final soft-cap, Gemma-2)
    out[t]       = logits[t, y_t] − logsumexp_v logits[t, v]  (0.0 where y_t == ignore_index)

The [T, V] logits never reach memory (the Cut Cross-Entropy idea, forward only): each program
owns BLOCK_T rows and loops over V in BLOCK_V tiles; per tile it computes the [BLOCK_T, BLOCK_V]
logits block in registers (inner loop over H in BLOCK_H steps), folds it into a per-row online
log-sum-exp (running max m, running sum s) and picks out the label logit where the tile holds it.
Extra memory is O(T): the [T] fp32 output. The label logit is taken from the same fp32 tile as the
normalizer, so log-prob and log-sum-exp see identically rounded logits.

Why a V loop per T-block rather than split-V + a second reduction: with T in the thousands the
grid T / BLOCK_T already fills the GPU, and it avoids the O(T · V/BLOCK_V) partial buffers.
hidden is re-read once per V tile; those re-reads hit L2 (a [BLOCK_T, H] block is ≤ 1 MB).

fp32 inputs use IEEE fp32 dot products (no TF32), so fp32 results match the fp32 reference.
"""

from __future__ import annotations

import torch

try:
    import triton.language as tl

    HAVE_TRITON = True
except ImportError:  # pragma: no cover
    tl = None  # type: ignore[assignment]
    HAVE_TRITON = False

from ._triton_util import build_kernel, check_same_device, is_float_dtype, next_pow2
from .reference import IGNORE_INDEX, linear_logratio_ref

__all__ = ["IGNORE_INDEX", "linear_logratio_ref", "linear_logratio_triton"]


def _linear_logprob_kernel(
    h_ptr,  # [T, H]
    w_ptr,  # [V, H]
    lab_ptr,  # [T]
    out_ptr,  # [T] fp32
    T,
    V,
    H,
    stride_ht,
    stride_hh,
    stride_wv,
    stride_wh,
    stride_lab,
    softcap,
    IGNORE: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_H: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    IEEE_DOT: tl.constexpr,
    UPCAST: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_T + tl.arange(0, BLOCK_T)  # [BT]
    row_ok = rows < T
    rows64 = rows.to(tl.int64)
    labels = tl.load(lab_ptr + rows64 * stride_lab, mask=row_ok, other=IGNORE).to(tl.int64)  # [BT]
    offs_v = tl.arange(0, BLOCK_V)
    offs_h = tl.arange(0, BLOCK_H)

    m = tl.full((BLOCK_T,), -1.0e30, tl.float32)
    s = tl.full((BLOCK_T,), 0.0, tl.float32)
    lab_logit = tl.full((BLOCK_T,), 0.0, tl.float32)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + offs_v  # [BV]
        col_ok = cols < V
        acc = tl.full((BLOCK_T, BLOCK_V), 0.0, tl.float32)
        for h0 in range(0, H, BLOCK_H):
            hk = h0 + offs_h  # [BH]
            h_ok = hk < H
            a = tl.load(
                h_ptr + rows64[:, None] * stride_ht + hk[None, :].to(tl.int64) * stride_hh,
                mask=row_ok[:, None] & h_ok[None, :],
                other=0.0,
            )  # [BT, BH]
            b = tl.load(
                w_ptr + cols[None, :].to(tl.int64) * stride_wv + hk[:, None].to(tl.int64) * stride_wh,
                mask=col_ok[None, :] & h_ok[:, None],
                other=0.0,
            )  # [BH, BV] = weight tile transposed
            if UPCAST:
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            if IEEE_DOT:
                acc = tl.dot(a, b, acc, input_precision="ieee")
            else:
                acc = tl.dot(a, b, acc)
        if HAS_SOFTCAP:
            # cap * tanh(x / cap), with tanh(y) = 1 - 2 / (exp(2y) + 1): exact limits ±1 at overflow.
            acc = softcap * (1.0 - 2.0 / (tl.exp(2.0 * acc / softcap) + 1.0))
        acc = tl.where(col_ok[None, :], acc, float("-inf"))
        m_new = tl.maximum(m, tl.max(acc, axis=1))  # [BT]
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(acc - m_new[:, None]), axis=1)
        m = m_new
        hit = cols[None, :].to(tl.int64) == labels[:, None]  # [BT, BV]
        lab_logit += tl.sum(tl.where(hit, acc, 0.0), axis=1)

    valid = labels != IGNORE
    out = tl.where(valid, lab_logit - (m + tl.log(tl.where(s > 0, s, 1.0))), 0.0)
    tl.store(out_ptr + rows64, out, mask=row_ok)


_HEURISTICS = {"HAS_SOFTCAP": lambda args: args["softcap"] is not None and args["softcap"] > 0}


def linear_logratio_triton(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    softcap: float | None = None,
    ignore_index: int = IGNORE_INDEX,
    block_t: int | None = None,
    block_v: int | None = None,
    block_h: int | None = None,
) -> torch.Tensor:
    """Per-token label log-prob [T] fp32 of logits = hidden @ weight.T, never materializing them.

    hidden: [T, H], weight: [V, H] (tied embeddings or an untied lm_head: any weight tensor),
    same float dtype (bf16/fp16/fp32), any strides; labels: [T] int32/int64, in [0, V) or
    ignore_index (-> 0.0). softcap: Gemma-2's final_logit_softcapping, or None.
    Labels outside [0, V) silently get logit 0 (the dispatcher rejects them up front).
    """
    if not HAVE_TRITON:
        raise RuntimeError("triton is not installed; use backend='torch'")
    device = hidden.device
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"hidden [T, H] and weight [V, H] mismatch: {tuple(hidden.shape)} vs {tuple(weight.shape)}"
        )
    if not is_float_dtype(hidden.dtype) or hidden.dtype != weight.dtype:
        raise ValueError(
            f"hidden and weight must share a float16/bfloat16/float32 dtype, got {hidden.dtype}, {weight.dtype}"
        )
    check_same_device("weight", weight, device)
    check_same_device("labels", labels, device)
    T, H = hidden.shape
    V = weight.shape[0]
    if labels.dim() != 1 or labels.shape[0] != T or labels.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"labels must be int32/int64 [T] = [{T}], got {labels.dtype} {tuple(labels.shape)}")
    out = torch.empty(T, dtype=torch.float32, device=device)
    if T == 0:
        return out

    interpret = device.type != "cuda"
    kernel = build_kernel(_linear_logprob_kernel, device=device, heuristics=_HEURISTICS)
    cfg = linear_launch_config(
        V,
        H,
        interpret=interpret,
        fp32=hidden.dtype == torch.float32,
        block_t=block_t,
        block_v=block_v,
        block_h=block_h,
    )
    kernel[(triton_cdiv(T, cfg["BLOCK_T"]),)](
        hidden,
        weight,
        labels,
        out,
        T,
        V,
        H,
        hidden.stride(0),
        hidden.stride(1),
        weight.stride(0),
        weight.stride(1),
        labels.stride(0),
        softcap,
        IGNORE=ignore_index,
        IEEE_DOT=hidden.dtype == torch.float32 or interpret,
        # Triton's interpreter (numpy) has no bf16 matmul: upcast there. bf16 x bf16 products are
        # exact in fp32, so this matches the GPU's bf16 tensor-core dot with fp32 accumulation.
        UPCAST=interpret and hidden.dtype == torch.bfloat16,
        **cfg,
    )
    return out


def linear_launch_config(
    V: int,
    H: int,
    *,
    interpret: bool,
    fp32: bool = False,
    block_t: int | None = None,
    block_v: int | None = None,
    block_h: int | None = None,
) -> dict[str, int]:
    """Tile sizes and launch options: BLOCK_T, BLOCK_V, BLOCK_H, num_warps, num_stages.

    tl.dot needs every block dim >= 16. GPU: 64x128 tiles, 64-wide K steps (bf16 tensor cores);
    fp32 (IEEE FMA dots) 64x64 tiles and 32-wide K steps: the bf16 tiles need 255 registers and
    spill there on sm_80 (see `python -m rmbench_fast.kernels.codegen`).
    Interpreter: wide tiles so numpy does the work in few steps.
    """
    bt = block_t or (16 if interpret else 64)
    bv = block_v or min(max(16, next_pow2(V)), 1024 if interpret else (64 if fp32 else 128))
    bh = block_h or min(max(16, next_pow2(H)), 256 if interpret else (32 if fp32 else 64))
    return {
        "BLOCK_T": bt,
        "BLOCK_V": bv,
        "BLOCK_H": bh,
        "num_warps": 8 if bt * bv >= 8192 or (fp32 and bt * bv >= 4096) else 4,
        "num_stages": 3 if not interpret else 1,
    }


def triton_cdiv(a: int, b: int) -> int:
    """ceil(a / b) for positive ints."""
    return -(-a // b)
