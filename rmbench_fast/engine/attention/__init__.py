"""Attention over a packed shared-prefix batch: one entry point, one file per backend.

Every backend computes softmax(cap(q·kᵀ * scale) + mask) v under the visibility rule of
`rmbench_fast.engine.layout` exactly; they differ only in which pairs they skip computing.
    "sdpa"   (default off-GPU) per segment: prefix once, branches batched and padded (sdpa.py);
             on the CPU, when the split conditions hold, the exact LSE-merged split (split.py)
    "flex"   (default on CUDA) one FlexAttention call with a block mask (flex.py)
    "dense"  the [T, T] mask materialised; the test reference (dense.py)
Scores are q·k * scale (default head_dim^-0.5); a soft-cap (Gemma-2) makes them
cap * tanh(q·k * scale / cap) before masking.
"""

from __future__ import annotations

from typing import Literal

import torch

from rmbench_fast.engine.attention.dense import dense_attention
from rmbench_fast.engine.attention.flex import FlexCompileError, flex_attention
from rmbench_fast.engine.attention.sdpa import sdpa_segments, segment_plans
from rmbench_fast.engine.attention.split import sdpa_split, split_applies
from rmbench_fast.engine.layout import PackedLayout

AttnImpl = Literal["sdpa", "flex", "dense"]
ATTN_IMPLS: tuple[str, ...] = ("sdpa", "flex", "dense")


def default_impl(device: torch.device) -> AttnImpl:
    """The backend a device runs by default."""
    return "flex" if device.type == "cuda" else "sdpa"


def packed_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: PackedLayout,
    window: int | None,
    impl: AttnImpl,
    *,
    scale: float | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """Attention under the packed rule. q: [T, Hq, D], k/v: [T, Hk, D] -> [T, Hq, D].

    scale None: D^-0.5; softcap None: no cap. "flex" may raise FlexCompileError (the caller
    falls back for that model).
    """
    window = layout.effective_window(window)
    if impl == "sdpa":
        if split_applies(q, layout, window, softcap):
            return sdpa_split(q, k, v, layout.segment_spans(), scale)
        return sdpa_segments(q, k, v, segment_plans(layout, window), scale, softcap)
    if impl == "flex":
        return flex_attention(q, k, v, layout, window, scale, softcap)
    if impl == "dense":
        return dense_attention(q, k, v, layout, window, scale, softcap)
    raise ValueError(f"unknown attention implementation {impl!r}; use one of {ATTN_IMPLS}")


__all__ = ["ATTN_IMPLS", "AttnImpl", "FlexCompileError", "PackedLayout", "default_impl", "packed_attention"]
