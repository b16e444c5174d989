"""The "split" backend (CPU): each branch's attention as two exact parts merged by log-sum-exp.

All branch rows of a segment attend to the prefix keys in one dense call (A), and each branch
attends causally to itself (B, so the kernel skips the upper blocks, with no padding):
    o = (e^{l_A} o_A + e^{l_B} o_B) / (e^{l_A} + e^{l_B}).
It needs the CPU flash-attention op, which returns each row's log-sum-exp next to the output,
and applies only when no window bites, every key is valid and there is no soft-cap.
"""

from __future__ import annotations

import torch

from rmbench_fast.engine.layout import PackedLayout, SegmentSpans

# Missing in a torch build -> the split backend is unavailable and "sdpa" runs padded.
FLASH_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def split_applies(q: torch.Tensor, layout: PackedLayout, window: int | None, softcap: float | None) -> bool:
    """Whether the split path computes this call exactly (see the module docstring)."""
    return (
        FLASH_CPU is not None
        and softcap is None
        and q.device.type == "cpu"
        and window is None
        and layout.all_keys_valid
    )


def _heads_first(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """[L, H, D] -> [1, H * n_rep, L, D], each KV head repeated n_rep times (HF repeat_kv)."""
    x = x.transpose(0, 1)
    if n_rep > 1:
        x = x.repeat_interleave(n_rep, dim=0)
    return x[None]


def _attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, n_rep: int, scale: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """q: [Lq, Hq, D], k/v: [Lk, Hk, D] -> (out [Lq, Hq, D] fp32, lse [Lq, Hq] fp32)."""
    out, lse = FLASH_CPU(
        _heads_first(q, 1), _heads_first(k, n_rep), _heads_first(v, n_rep), 0.0, causal, scale=scale
    )
    return out[0].transpose(0, 1).float(), lse[0].transpose(0, 1)


def sdpa_split(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    spans: SegmentSpans,
    scale: float | None = None,
) -> torch.Tensor:
    """q: [T, Hq, D], k/v: [T, Hk, D] -> [T, Hq, D]."""
    out = torch.empty_like(q)
    n_rep = q.shape[1] // k.shape[1]
    for a, P, branches in spans:
        if P:
            pre = _attend(q[a : a + P], k[a : a + P], v[a : a + P], True, n_rep, scale)[0]
            out[a : a + P] = pre.to(q.dtype)
        if not branches:
            continue
        lo, hi = branches[0][0], branches[-1][1]  # a segment's branches are contiguous
        if P:
            # [Nb, Hq, D], [Nb, Hq]
            o_a, l_a = _attend(q[lo:hi], k[a : a + P], v[a : a + P], False, n_rep, scale)
        for s0, s1 in branches:
            o_b, l_b = _attend(q[s0:s1], k[s0:s1], v[s0:s1], True, n_rep, scale)
            if P:
                r = slice(s0 - lo, s1 - lo)
                m = torch.maximum(l_a[r], l_b)
                w_a, w_b = torch.exp(l_a[r] - m)[..., None], torch.exp(l_b - m)[..., None]
                o_b = (o_a[r] * w_a + o_b * w_b) / (w_a + w_b)
            out[s0:s1] = o_b.to(q.dtype)
    return out
