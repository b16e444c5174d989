"""Attention over a packed shared-prefix batch: one entry point, one file per backend.

Every backend computes softmax(cap(q·kᵀ * scale) + mask) v under the visibility rule of
`rmbench_fast.engine.layout` exactly; they differ only in which pairs they skip computing.
    "cpu"    (default on a CPU with AVX-512F or AVX2, fp32, head size 64 or 128) the whole
             batch in one C++ call (cpu_kernel.py); a call it cannot compute exactly (a window
             that bites, a soft-cap, another dtype or head size) runs "sdpa", counted as
             "cpu_fallback"
    "sdpa"   (default elsewhere off-GPU) per segment: prefix once, branches batched and padded
             (sdpa.py); on the CPU, when the split conditions hold, the exact LSE-merged split
             over torch's flash op (split.py)
    "flash"  (default on CUDA) FlashAttention varlen, three calls merged by LSE (flash.py);
             where it cannot express a call (fp32, a head size it lacks, a window that bites,
             a soft-cap) the call runs "sdpa" instead, counted as "flash_fallback:<reason>"
    "flex"   one FlexAttention call with a block mask (flex.py); the CUDA default for
             Gemma-2's attention soft-cap, which flash cannot apply
    "dense"  the [T, T] mask materialised; the test reference (dense.py)
Each call counts the backend that actually ran in `layout.ran`, which the scorer reports; on
CUDA the "sdpa" path also counts the SDPA kernel of each of its calls ("sdpa_kernel:<name>").
Scores are q·k * scale (default head_dim^-0.5); a soft-cap (Gemma-2) makes them
cap * tanh(q·k * scale / cap) before masking.
"""

from __future__ import annotations

from typing import Literal

import torch

from rmbench_fast.engine.layers.attention.cpu_kernel import (
    cpu_kernel_applies,
    cpu_kernel_attention,
    kernel_name,
)
from rmbench_fast.engine.layers.attention.dense import dense_attention
from rmbench_fast.engine.layers.attention.flash import flash_attention, flash_unfit
from rmbench_fast.engine.layers.attention.flex import FlexCompileError, flex_attention
from rmbench_fast.engine.layers.attention.sdpa import sdpa_segments, segment_plans
from rmbench_fast.engine.layers.attention.split import sdpa_split, split_applies
from rmbench_fast.engine.layout import PackedLayout
from rmbench_fast.utils.phases import phase

AttnImpl = Literal["cpu", "sdpa", "flash", "flex", "dense"]
ATTN_IMPLS: tuple[str, ...] = ("cpu", "sdpa", "flash", "flex", "dense")


def default_impl(
    device: torch.device,
    softcap: float | None = None,
    head_dim: int | None = None,
    dtype: torch.dtype | None = None,
) -> AttnImpl:
    """`--attn auto`: the backend a model runs on a device by default ("cpu" where the C++
    kernel runs for this head size and dtype; "sdpa" elsewhere off-GPU)."""
    if device.type != "cuda":
        known = head_dim is not None and dtype is not None
        return "cpu" if known and kernel_name(head_dim, dtype, device, softcap) is not None else "sdpa"
    return "flex" if softcap is not None else "flash"


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
    with phase("attention"):
        return _dispatch(q, k, v, layout, layout.effective_window(window), impl, scale, softcap)


def _dispatch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: PackedLayout,
    window: int | None,
    impl: AttnImpl,
    scale: float | None,
    softcap: float | None,
) -> torch.Tensor:
    if impl == "flash":
        why = flash_unfit(q, layout, window, softcap, k)
        if why is None:
            layout.ran["flash"] += 1
            return flash_attention(q, k, v, layout, scale)
        layout.ran[f"flash_fallback:{why}"] += 1
    if impl == "cpu":
        if cpu_kernel_applies(q, layout, window, softcap):
            layout.ran["cpu_kernel"] += 1
            return cpu_kernel_attention(q, k, v, layout, scale)
        layout.ran["cpu_fallback"] += 1
    if impl in ("cpu", "sdpa", "flash"):
        if split_applies(q, layout, window, softcap):
            layout.ran["split"] += 1
            return sdpa_split(q, k, v, layout.segment_spans(), scale)
        layout.ran["sdpa"] += 1
        return sdpa_segments(q, k, v, segment_plans(layout, window), scale, softcap, layout.ran)
    if impl == "flex":
        layout.ran["flex"] += 1
        return flex_attention(q, k, v, layout, window, scale, softcap)
    if impl == "dense":
        layout.ran["dense"] += 1
        return dense_attention(q, k, v, layout, window, scale, softcap)
    raise ValueError(f"unknown attention implementation {impl!r}; use one of {ATTN_IMPLS}")


__all__ = ["ATTN_IMPLS", "AttnImpl", "FlexCompileError", "PackedLayout", "default_impl", "packed_attention"]
