"""The "flash" backend (CUDA): FlashAttention through torch's public varlen API, three pieces
merged exactly by log-sum-exp. No torch.compile, no block mask, no Python loop per segment.

Over the flat batch (segments [prefix | branch 0 | ... | branch 5] back to back):
  A  every piece (each prefix, each branch) attends causally to itself: one call whose
     cu_seqlens are all the piece boundaries;
  B  every segment's tokens attend, non-causally, to that segment's prefix keys: one call with
     cu_seq_q = cu_seq_k = segment offsets and the keys cut to the prefix (`seqused_k`, or the
     prefix keys gathered when this torch has no seqused_k);
  prefix rows take A; branch rows take the LSE merge of A and B:
        o = (e^{l_A} o_A + e^{l_B} o_B) / (e^{l_A} + e^{l_B}).
B also computes prefix rows against the whole prefix without the causal mask; those rows are
never read. It applies when no window bites, every key is valid and there is no soft-cap; the
dispatcher falls back to another backend otherwise (`flash_applies`).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import numpy as np
import torch

from rmbench_fast.engine.layout import PackedLayout


@functools.cache
def _varlen() -> tuple[Any, Any, frozenset[str]]:
    """(varlen_attn, AuxRequest, its keyword names), or (None, None, ∅) when this torch lacks it."""
    try:
        from torch.nn.attention.varlen import AuxRequest, varlen_attn
    except ImportError:
        return None, None, frozenset()
    return varlen_attn, AuxRequest, frozenset(inspect.signature(varlen_attn).parameters)


def flash_available() -> bool:
    return _varlen()[0] is not None


def flash_applies(q: torch.Tensor, layout: PackedLayout, window: int | None, softcap: float | None) -> bool:
    """Whether the three-call decomposition computes this call exactly (module docstring)."""
    return (
        q.device.type == "cuda"
        and flash_available()
        and softcap is None
        and window is None
        and layout.all_keys_valid
    )


def _int32(a: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int32)).to(device, non_blocking=True)


def _plan(layout: PackedLayout) -> dict[str, Any]:
    """cu_seqlens and the row selections for one batch, built on the host once per batch."""

    def build() -> dict[str, Any]:
        b, dev = layout.batch, layout.seg.device
        seg_off = np.asarray(b.seg_offsets, dtype=np.int64)
        prefix = np.asarray(b.prefix_len, dtype=np.int64)
        bo = np.asarray(b.branch_offsets, dtype=np.int64)
        # Piece boundaries: every segment start, every branch start, and the batch end.
        cuts = np.unique(np.concatenate([seg_off, bo]))
        pieces = np.diff(cuts)
        seg_len = np.diff(seg_off)
        prefix_rows = np.zeros(layout.n_tokens, dtype=bool)
        for s0, p in zip(seg_off[:-1], prefix):
            prefix_rows[s0 : s0 + p] = True
        plan: dict[str, Any] = {
            "cu_pieces": _int32(cuts, dev),
            "max_piece": int(pieces.max()) if len(pieces) else 0,
            "cu_seg": _int32(seg_off, dev),
            "max_seg": int(seg_len.max()) if len(seg_len) else 0,
            "prefix_len": _int32(prefix, dev),
            "max_prefix": int(prefix.max()) if len(prefix) else 0,
            "has_prefix": bool(prefix.any()),
            "branch_rows": torch.from_numpy(~prefix_rows).to(dev, non_blocking=True)[:, None, None],
        }
        # Gathered prefix keys, for a torch whose varlen_attn has no seqused_k.
        idx = np.concatenate([np.arange(s0, s0 + p) for s0, p in zip(seg_off[:-1], prefix)] or [np.zeros(0)])
        plan["prefix_idx"] = torch.from_numpy(idx.astype(np.int64)).to(dev, non_blocking=True)
        plan["cu_prefix"] = _int32(np.concatenate([[0], np.cumsum(prefix)]), dev)
        return plan

    return layout.cached(("flash", None), build)


def _call(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_q: torch.Tensor,
    cu_k: torch.Tensor,
    max_q: int,
    max_k: int,
    *,
    causal: bool,
    scale: float | None,
    seqused_k: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One varlen_attn call -> (out [Tq, Hq, D], lse [Tq, Hq] fp32); adapts to the torch version."""
    varlen_attn, aux, names = _varlen()
    kw: dict[str, Any] = {"return_aux": aux(lse=True), "scale": scale}
    if causal:
        kw["window_size"] = (-1, 0)
    if k.shape[1] != q.shape[1]:
        if "enable_gqa" in names:
            kw["enable_gqa"] = True
        else:  # expand the KV heads ourselves (HF repeat_kv order)
            rep = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    if seqused_k is not None:
        kw["seqused_k"] = seqused_k
    if "window_size" not in names and causal:
        kw.pop("window_size")
        kw["is_causal"] = True
    out, lse = varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, **kw)
    if lse.shape != q.shape[:2]:  # older releases return [Hq, Tq]
        lse = lse.transpose(0, 1)
    return out, lse.float()


def flash_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: PackedLayout, scale: float | None = None
) -> torch.Tensor:
    """q: [T, Hq, D], k/v: [T, Hk, D] -> [T, Hq, D] (see the module docstring)."""
    p = _plan(layout)
    o_a, l_a = _call(
        q, k, v, p["cu_pieces"], p["cu_pieces"], p["max_piece"], p["max_piece"], causal=True, scale=scale
    )
    if not p["has_prefix"]:
        return o_a
    if "seqused_k" in _varlen()[2]:
        o_b, l_b = _call(
            q, k, v, p["cu_seg"], p["cu_seg"], p["max_seg"], p["max_seg"],
            causal=False, scale=scale, seqused_k=p["prefix_len"],
        )  # fmt: skip
    else:
        kp, vp = k.index_select(0, p["prefix_idx"]), v.index_select(0, p["prefix_idx"])
        o_b, l_b = _call(
            q, kp, vp, p["cu_seg"], p["cu_prefix"], p["max_seg"], p["max_prefix"], causal=False, scale=scale
        )
    # A segment without a prefix has no B keys: l_B = -inf, and o_B must not leak a NaN.
    m = torch.maximum(l_a, l_b)[..., None]  # [T, Hq, 1]
    w_a, w_b = torch.exp(l_a[..., None] - m), torch.exp(l_b[..., None] - m)
    o_b = torch.where(w_b > 0, o_b.float(), 0.0)
    merged = (o_a.float() * w_a + o_b * w_b) / (w_a + w_b)
    return torch.where(p["branch_rows"], merged.to(q.dtype), o_a)
