"""The "dense" backend: the [T, T] mask materialised from the rule. The test reference."""

from __future__ import annotations

import torch

from rmbench_fast.engine.layers.attention.sdpa import sdpa
from rmbench_fast.engine.layout import PackedLayout


def dense_mask(layout: PackedLayout, window: int | None) -> torch.Tensor:
    """[T, T] bool: the rule evaluated at every (q, k) pair."""

    def build() -> torch.Tensor:
        idx = torch.arange(layout.n_tokens, device=layout.seg.device)
        return layout.mask_mod(window)(None, None, idx[:, None], idx[None, :])

    return layout.cached(("dense", window), build)


def dense_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: PackedLayout,
    window: int | None,
    scale: float | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """q: [T, Hq, D], k/v: [T, Hk, D] -> [T, Hq, D] under the full [T, T] mask."""
    out = sdpa(
        q.transpose(0, 1)[None],
        k.transpose(0, 1)[None],
        v.transpose(0, 1)[None],
        mask=dense_mask(layout, window),
        scale=scale,
        softcap=softcap,
    )  # [1, Hq, T, D]
    return out[0].transpose(0, 1)
