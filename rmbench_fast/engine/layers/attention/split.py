"""The "split" backend (CPU): each branch's attention as two exact parts merged by log-sum-exp.

All branch rows of a segment attend to the prefix keys in one dense call (A), and each branch
attends causally to itself (B, so the kernel skips the upper blocks, with no padding):
    o = (e^{l_A} o_A + e^{l_B} o_B) / (e^{l_A} + e^{l_B}).
It needs the CPU flash-attention op, which returns each row's log-sum-exp next to the output,
and applies only when no window bites, every key is valid and there is no soft-cap.

No copies of K/V: the op takes grouped-query heads directly (Hq a multiple of Hk; query head h
reads KV head h // (Hq / Hk), as HF's repeat_kv), so prefix K/V are read in place. The merge is
one fused step per branch: o = lerp(o_B, o_A, sigmoid(l_A - l_B)), since
e^{l_A} / (e^{l_A} + e^{l_B}) = sigmoid(l_A - l_B), written straight into the output rows.
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


def _heads_first(x: torch.Tensor) -> torch.Tensor:
    """[L, H, D] -> [1, H, L, D], a view (the op reads strided inputs)."""
    return x.transpose(0, 1)[None]


def _attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """q: [Lq, Hq, D], k/v: [Lk, Hk, D] (Hk divides Hq) -> (out [Lq, Hq, D], lse [Lq, Hq] fp32).

    `out` is in q's dtype (a view of the op's [1, Hq, Lq, D] result)."""
    out, lse = FLASH_CPU(_heads_first(q), _heads_first(k), _heads_first(v), 0.0, causal, scale=scale)
    return out[0].transpose(0, 1), lse[0].transpose(0, 1)


def sdpa_split(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    spans: SegmentSpans,
    scale: float | None = None,
) -> torch.Tensor:
    """q: [T, Hq, D], k/v: [T, Hk, D] -> [T, Hq, D]."""
    out = torch.empty_like(q)
    for a, P, branches in spans:
        if P:
            out[a : a + P] = _attend(q[a : a + P], k[a : a + P], v[a : a + P], True, scale)[0]
        if not branches:
            continue
        lo, hi = branches[0][0], branches[-1][1]  # a segment's branches are contiguous
        if P:
            # [Nb, Hq, D], [Nb, Hq]
            o_a, l_a = _attend(q[lo:hi], k[a : a + P], v[a : a + P], False, scale)
        for s0, s1 in branches:
            o_b, l_b = _attend(q[s0:s1], k[s0:s1], v[s0:s1], True, scale)
            if not P:
                out[s0:s1] = o_b
                continue
            r = slice(s0 - lo, s1 - lo)
            w_a = torch.sigmoid(l_a[r] - l_b)[..., None]  # [Lb, Hq, 1] fp32
            if q.dtype == torch.float32:
                torch.lerp(o_b, o_a[r], w_a, out=out[s0:s1])
            else:  # half precision: merge in fp32, round once
                out[s0:s1] = torch.lerp(o_b.float(), o_a[r].float(), w_a)
    return out
