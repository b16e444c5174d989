"""The "sdpa" backend: per segment, causal SDPA over the prefix once, then the segment's
branches as one batch, padded to the longest branch, each attending to [prefix K/V ; own
branch K/V]. Cost ~ P^2 + N B (P + B) instead of (P + N B)^2 for N branches.

With an attention soft-cap (Gemma-2) SDPA cannot apply the cap, so the same plan runs through
`math_attention`, which follows HF's eager attention op for op.

On CUDA each SDPA call is checked (`cuda_sdpa`): the fused kernel SDPA will pick is asked for
first, with the arguments it will get, and counted in `ran["sdpa_kernel:<name>"]` (flash,
efficient, cudnn, math), which the scorer reports. A boolean mask with grouped-query heads has
no fused kernel (FlashAttention takes no mask, the memory-efficient kernel no GQA), so when the
pick is math the KV heads are expanded (HF repeat_kv order) and the pick asked again; a call
that still lands on math is counted and warned about once, never silent. The CPU path is the
plain SDPA call, unchanged.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from rmbench_fast.engine.layout import PackedLayout
from rmbench_fast.scoring.plan import branch_bounds


@dataclass
class SegmentPlan:
    """Index tensors for one segment (built once per batch and window)."""

    start: int  # flat start of the prefix
    prefix_len: int
    prefix_mask: torch.Tensor | None  # [P, P] bool, None = plain causal
    branch_rows: torch.Tensor  # [nb * Bmax] flat index gathered into each padded branch row
    n_branches: int  # non-empty branches
    bmax: int
    row_valid: torch.Tensor  # [n_valid] int64: the padded rows that hold a real token
    out_idx: torch.Tensor  # [n_valid] flat index of each real branch row
    branch_mask: torch.Tensor  # [nb, 1, Bmax, P + Bmax] bool
    key_rows: torch.Tensor  # [nb * (P + Bmax)] flat index of each branch row's keys


def segment_plans(layout: PackedLayout, window: int | None) -> list[SegmentPlan]:
    """The per-segment plans of a batch for one (effective) window, cached on the layout."""
    return layout.cached(("sdpa", window), lambda: _build_segment_plans(layout, window))


def _build_segment_plans(layout: PackedLayout, window: int | None) -> list[SegmentPlan]:
    b = layout.batch
    dev = layout.seg.device
    rule = layout.mask_mod(window)
    seg_off = np.asarray(b.seg_offsets, dtype=np.int64)
    key_valid = np.asarray(b.key_valid, dtype=bool)
    br_start, br_end = branch_bounds(b)
    seg_seq = np.asarray(b.seg_seqs, dtype=np.int64)
    plans = []
    for s in range(b.n_segments):
        a, P = int(seg_off[s]), int(b.prefix_len[s])
        pidx = torch.arange(a, a + P, device=dev)
        prefix_mask = None
        prefix_plain = bool(key_valid[a : a + P].all()) and (window is None or window > P)
        if P and not prefix_plain:
            prefix_mask = rule(None, None, pidx[:, None], pidx[None, :])
        starts = br_start[seg_seq[s] : seg_seq[s + 1]]
        ends = br_end[seg_seq[s] : seg_seq[s + 1]]
        lens = ends - starts
        keep = np.nonzero(lens > 0)[0]
        nb, bmax = len(keep), int(lens.max()) if len(lens) else 0
        if nb == 0:
            empty = torch.zeros(0, dtype=torch.long, device=dev)
            plans.append(SegmentPlan(a, P, prefix_mask, empty, 0, 0, empty, empty, empty.bool(), empty))
            continue
        off = np.arange(bmax)
        rows = starts[keep][:, None] + off[None, :]  # [nb, Bmax]
        valid = off[None, :] < lens[keep][:, None]
        rows = np.where(valid, rows, starts[keep][:, None])  # padding re-reads a real token
        rows_t = torch.from_numpy(rows.reshape(-1)).to(dev)
        valid_t = torch.from_numpy(valid.reshape(-1)).to(dev)
        # host-side selections: boolean indexing on the device would sync (nonzero)
        out_idx = torch.from_numpy(rows.reshape(-1)[valid.reshape(-1)]).to(dev)
        real_rows = torch.from_numpy(np.flatnonzero(valid.reshape(-1))).to(dev)
        q_idx = rows_t.view(nb, bmax)
        k_idx = torch.cat([pidx[None, :].expand(nb, P), q_idx], dim=1)  # [nb, P + Bmax]
        mask = rule(None, None, q_idx[:, :, None], k_idx[:, None, :])  # [nb, Bmax, P + Bmax]
        vt = valid_t.view(nb, bmax)
        key_real = torch.cat([torch.ones(nb, P, dtype=torch.bool, device=dev), vt], dim=1)
        mask = mask & key_real[:, None, :]
        # padded query rows: see key 0 only, to stay finite; they are dropped afterwards
        mask[:, :, 0] |= ~vt
        plans.append(
            SegmentPlan(
                a, P, prefix_mask, rows_t, nb, bmax, real_rows, out_idx, mask[:, None], k_idx.reshape(-1)
            )
        )
    return plans


def sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
    softcap: float | None = None,
    ran: Counter[str] | None = None,
) -> torch.Tensor:
    """q: [B, Hq, Lq, D], k/v: [B, Hk, Lk, D], mask: bool broadcastable to [B, Hq, Lq, Lk].

    `ran`: where a CUDA call counts the kernel that ran (module docstring)."""
    if softcap is None:
        if _checked(q):
            return cuda_sdpa(q, k, v, mask=mask, causal=causal, scale=scale, ran=ran)
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal, scale=scale, enable_gqa=True
        )
    if ran is not None and _checked(q):
        ran["sdpa_kernel:eager_softcap"] += 1
    return math_attention(q, k, v, mask=mask, causal=causal, scale=scale, softcap=softcap)


def _checked(q: torch.Tensor) -> bool:
    """Whether SDPA calls on q's device are checked and counted (CUDA; tests mock it)."""
    return q.device.type == "cuda"


# torch.nn.attention.SDPBackend's values, as `torch._fused_sdp_choice` returns them.
SDPA_KERNELS = {-1: "error", 0: "math", 1: "flash", 2: "efficient", 3: "cudnn", 4: "overrideable"}
_warned_math = False


def sdpa_kernel_choice(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    causal: bool,
    scale: float | None,
    enable_gqa: bool,
) -> str:
    """The kernel SDPA picks for these arguments (its own selection, asked without running it)."""
    pick = torch._fused_sdp_choice(q, k, v, mask, 0.0, causal, scale=scale, enable_gqa=enable_gqa)
    return SDPA_KERNELS.get(int(pick), f"backend {int(pick)}")


def cuda_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    mask: torch.Tensor | None,
    causal: bool,
    scale: float | None,
    ran: Counter[str] | None,
) -> torch.Tensor:
    """SDPA on CUDA with its kernel checked and counted (module docstring). Shapes as `sdpa`."""
    global _warned_math
    if mask is not None and mask.dtype == torch.bool:
        # SDPA turns a boolean mask into this additive one before it picks a kernel: pick on
        # the same tensor it will get, and convert once.
        mask = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, -torch.inf)
    gqa = k.shape[1] != q.shape[1]
    which = sdpa_kernel_choice(q, k, v, mask, causal, scale, gqa)
    if which == "math" and gqa:
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        gqa = False
        which = sdpa_kernel_choice(q, k, v, mask, causal, scale, gqa)
    if ran is not None:
        ran[f"sdpa_kernel:{which}"] += 1
    if which == "math" and not _warned_math:
        _warned_math = True
        warnings.warn(
            f"SDPA runs its math kernel on CUDA (dtype {q.dtype}, head size {q.shape[-1]}, "
            f"mask {mask is not None}): correct but slow; counted in attention_calls",
            RuntimeWarning,
            stacklevel=3,
        )
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=causal, scale=scale, enable_gqa=gqa
    )


def math_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    mask: torch.Tensor | None,
    causal: bool,
    scale: float | None,
    softcap: float | None,
) -> torch.Tensor:
    """HF eager attention, op for op: w = (q kᵀ) * scale; w = tanh(w / cap) * cap; masked keys
    -> -inf; softmax in fp32, cast to q's dtype; w v. Shapes as `sdpa`; every row must see a key."""
    n_rep = q.shape[1] // k.shape[1]
    if n_rep > 1:
        k, v = k.repeat_interleave(n_rep, dim=1), v.repeat_interleave(n_rep, dim=1)
    w = torch.matmul(q, k.transpose(-1, -2)) * (q.shape[-1] ** -0.5 if scale is None else scale)
    if softcap is not None:
        w = torch.tanh(w / softcap) * softcap
    if causal:
        Lq, Lk = w.shape[-2], w.shape[-1]
        mask = torch.ones(Lq, Lk, dtype=torch.bool, device=w.device).tril(Lk - Lq)
    if mask is not None:
        w = w.masked_fill(~mask, float("-inf"))
    w = torch.softmax(w, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(w, v)


def sdpa_segments(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    plans: list[SegmentPlan],
    scale: float | None = None,
    softcap: float | None = None,
    ran: Counter[str] | None = None,
) -> torch.Tensor:
    """The padded per-segment path. q: [T, Hq, D], k/v: [T, Hk, D] -> [T, Hq, D].

    `ran`: where CUDA calls count the SDPA kernel that ran (module docstring)."""
    out = torch.empty_like(q)
    Hq, D = q.shape[1], q.shape[2]
    for p in plans:
        a, P = p.start, p.prefix_len
        # prefix: [1, H, P, D]
        if P:
            kp, vp = k[a : a + P].transpose(0, 1), v[a : a + P].transpose(0, 1)
            qp = q[a : a + P].transpose(0, 1)
            if p.prefix_mask is None:
                o = sdpa(qp[None], kp[None], vp[None], causal=True, scale=scale, softcap=softcap, ran=ran)
            else:
                o = sdpa(
                    qp[None], kp[None], vp[None], mask=p.prefix_mask, scale=scale, softcap=softcap, ran=ran
                )
            out[a : a + P] = o[0].transpose(0, 1)
        if not p.n_branches:
            continue
        nb, bm = p.n_branches, p.bmax
        # branches: q [nb, Hq, Bmax, D]; keys [nb, Hk, P + Bmax, D]
        qb = q[p.branch_rows].view(nb, bm, Hq, D).transpose(1, 2)
        # one gather builds [prefix ; own branch] keys for every branch row
        kk = k[p.key_rows].view(nb, P + bm, -1, D).transpose(1, 2)
        vv = v[p.key_rows].view(nb, P + bm, -1, D).transpose(1, 2)
        o = sdpa(qb, kk, vv, mask=p.branch_mask, scale=scale, softcap=softcap, ran=ran)
        o = o.transpose(1, 2).reshape(nb * bm, Hq, D)
        out[p.out_idx] = o.index_select(0, p.row_valid)
    return out
