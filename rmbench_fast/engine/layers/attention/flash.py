"""The "flash" backend (CUDA): FlashAttention through torch's public varlen API, three pieces
merged exactly by log-sum-exp. No torch.compile, no block mask, no Python loop per segment.

Over the flat batch (segments [prefix | branch 0 | ... | branch 5] back to back):
  A  every piece attends causally to itself: one call whose cu_seqlens are all the piece
     boundaries. The pieces are each prefix, each branch, and each masked leading token
     (a duplicated BOS with key_valid False, SPEC §4) on its own, so the tokens after it never
     see it while its own row sees itself, exactly the layout rule's `k == q` term;
  B  every segment's tokens attend, non-causally, to that segment's prefix keys less a masked
     leading token: one call with cu_seq_q = segment offsets, cu_seq_k = segment offsets
     shifted past the masked token and the keys cut to the prefix (`seqused_k`, or the prefix
     keys gathered when this torch has no seqused_k);
  prefix rows take A; branch rows of a segment with B keys take the LSE merge of A and B:
        o = (e^{l_A} o_A + e^{l_B} o_B) / (e^{l_A} + e^{l_B}),
  (on CUDA one Triton kernel, kernels/lse_merge.py, when triton is installed);
  branch rows of a segment without B keys (no shared prefix, or a prefix that is only the
  masked BOS) take A: FlashAttention gives a row with no keys l = +inf (its CPU stand-ins give
  -inf), so l_B of those rows is set to -inf from the plan, never read from the kernel.
B also computes prefix rows against the whole prefix without the causal mask; those rows are
never read.

It applies (`flash_unfit` is None) on CUDA with compute capability >= 8.0, fp16/bf16 inputs, a
head size that is a multiple of 8 and at most 256 (FlashAttention-2's limits), Hk dividing Hq,
no soft-cap, no window that bites, and masked keys only at segment or branch starts; the
dispatcher counts each reason it falls back (`layout.ran["flash_fallback:<reason>"]`).

The varlen LSE is [Hq, Tq] in every torch release that has varlen_attn (2.10 to 2.13, whatever
its docstring says): `lse_heads_first` reads it from the op's own shape contract (its fake
kernel on meta tensors with Tq != Hq), never from the shape of a real result, which is
ambiguous when Tq == Hq.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
from typing import Any

import numpy as np
import torch

from rmbench_fast.engine.layout import PackedLayout

FLASH_DTYPES = (torch.float16, torch.bfloat16)
FLASH_MAX_HEAD_DIM = 256  # FlashAttention-2: head size <= 256 and a multiple of 8
FLASH_MIN_CAPABILITY = (8, 0)  # Ampere and newer


@functools.cache
def _varlen() -> tuple[Any, Any, frozenset[str]]:
    """(varlen_attn, AuxRequest, its keyword names), or (None, None, ∅) when this torch lacks it."""
    try:
        from torch.nn.attention.varlen import AuxRequest, varlen_attn  # start-up cost: torch
    except ImportError:
        return None, None, frozenset()
    return varlen_attn, AuxRequest, frozenset(inspect.signature(varlen_attn).parameters)


def flash_available() -> bool:
    """Whether this torch has a varlen_attn that returns the LSE (the merge needs it)."""
    fn, _, names = _varlen()
    return fn is not None and "return_aux" in names


@functools.cache
def lse_heads_first() -> bool | None:
    """True: varlen_attn's LSE is [Hq, Tq]; False: [Tq, Hq]; None: neither (ROCm's [B, H,
    max_q]) or no varlen_attn. Read from the op's fake kernel on meta tensors (Tq=3, Hq=2)."""
    try:
        from torch.nn.attention.varlen import AuxRequest, varlen_attn  # start-up cost: torch
    except ImportError:
        return None
    T, H, D = 3, 2, 8
    q = torch.empty(T, H, D, device="meta", dtype=torch.float16)
    cu = torch.tensor([0, T], dtype=torch.int32, device="meta")
    try:
        _, lse = varlen_attn(q, q, q, cu, cu, T, T, return_aux=AuxRequest(lse=True))
    except Exception:  # noqa: BLE001 - an API we do not know: flash does not apply
        return None
    shape = tuple(lse.shape)
    return True if shape == (H, T) else False if shape == (T, H) else None


@functools.cache
def _capability_ok(index: int | None) -> bool:
    return torch.cuda.get_device_capability(index) >= FLASH_MIN_CAPABILITY


def _device_ok(q: torch.Tensor) -> bool:
    """On a CUDA device FlashAttention-2 runs on (a host query, cached: no sync)."""
    return q.device.type == "cuda" and _capability_ok(q.device.index)


def _masked_keys_lead(layout: PackedLayout) -> bool:
    """Whether every masked key starts a segment or a branch (the planner's only kind: a
    sequence's token 0), so it can be its own piece in call A (host arrays, cached)."""

    def build() -> bool:
        b = layout.batch
        masked = np.flatnonzero(~np.asarray(b.key_valid, dtype=bool))
        starts = np.concatenate([np.asarray(b.seg_offsets[:-1]), np.asarray(b.branch_offsets)])
        return bool(np.isin(masked, starts).all())

    return layout.all_keys_valid or layout.cached(("flash_masked", None), build)


def flash_unfit(
    q: torch.Tensor,
    layout: PackedLayout,
    window: int | None,
    softcap: float | None,
    k: torch.Tensor | None = None,
) -> str | None:
    """None when the three-call decomposition computes this call exactly (module docstring),
    else the reason it does not, for the dispatcher's fallback count."""
    if not _device_ok(q):
        return "device"
    if not flash_available() or lse_heads_first() is None:
        return "api"
    if q.dtype not in FLASH_DTYPES or (k is not None and k.dtype != q.dtype):
        return "dtype"
    D = q.shape[-1]
    if D % 8 or D > FLASH_MAX_HEAD_DIM:
        return "head_dim"
    if k is not None and q.shape[1] % k.shape[1]:
        return "heads"
    if softcap is not None:
        return "softcap"
    if window is not None:
        return "window"
    if not _masked_keys_lead(layout):
        return "masked_keys"
    return None


def flash_applies(q: torch.Tensor, layout: PackedLayout, window: int | None, softcap: float | None) -> bool:
    """Whether the three-call decomposition computes this call exactly (`flash_unfit`)."""
    return flash_unfit(q, layout, window, softcap) is None


def _int32(a: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int32)).to(device, non_blocking=True)


def _host_plan(layout: PackedLayout) -> dict[str, Any]:
    """The plan's host arrays (numpy; `_plan` moves them to the device). T tokens, S segments."""
    b = layout.batch
    seg_off = np.asarray(b.seg_offsets, dtype=np.int64)  # [S+1]
    prefix = np.asarray(b.prefix_len, dtype=np.int64)  # [S]
    bo = np.asarray(b.branch_offsets, dtype=np.int64)
    masked = np.flatnonzero(~np.asarray(b.key_valid, dtype=bool))
    T = layout.n_tokens
    # Piece boundaries: every segment start, every branch start, the token after each masked
    # one (so the masked token is a piece of its own), and the batch end.
    cuts = np.unique(np.concatenate([seg_off, bo, masked + 1]))
    pieces = np.diff(cuts)
    seg_len = np.diff(seg_off)
    # B's keys per segment: the prefix, less a masked leading token.
    lead = np.zeros(len(prefix), dtype=np.int64)
    if len(masked):
        lead = np.isin(seg_off[:-1], masked).astype(np.int64) * (prefix > 0)
    n_keys = prefix - lead  # [S]
    k_start = seg_off[:-1] + lead
    cu_k = np.concatenate([k_start, [T]])  # non-decreasing: a segment holds >= 1 token
    merge_rows = np.zeros(T, dtype=bool)  # branch rows of a segment that has B keys
    for s0, s1, p, nk in zip(seg_off[:-1], seg_off[1:], prefix, n_keys):
        merge_rows[s0 + p : s1] = nk > 0
    idx = np.concatenate([np.arange(a, a + n) for a, n in zip(k_start, n_keys)] or [np.zeros(0)])
    return {
        "cu_pieces": cuts,
        "max_piece": int(pieces.max()) if len(pieces) else 0,
        "cu_seg": seg_off,
        "max_seg": int(seg_len.max()) if len(seg_len) else 0,
        "cu_k": cu_k,
        "max_k": int(np.diff(cu_k).max()) if len(seg_len) else 0,
        "n_keys": n_keys,
        "max_keys": int(n_keys.max()) if len(n_keys) else 0,
        "has_prefix": bool((n_keys > 0).any()),
        "merge_rows": merge_rows,
        # Gathered prefix keys, for a torch whose varlen_attn has no seqused_k.
        "prefix_idx": idx.astype(np.int64),
        "cu_prefix": np.concatenate([[0], np.cumsum(n_keys)]),
    }


def _plan(layout: PackedLayout) -> dict[str, Any]:
    """cu_seqlens and the row selections for one batch, built on the host once per batch."""

    def build() -> dict[str, Any]:
        h, dev = _host_plan(layout), layout.seg.device
        return {
            "cu_pieces": _int32(h["cu_pieces"], dev),
            "max_piece": h["max_piece"],
            "cu_seg": _int32(h["cu_seg"], dev),
            "max_seg": h["max_seg"],
            "cu_k": _int32(h["cu_k"], dev),
            "max_k": h["max_k"],
            "n_keys": _int32(h["n_keys"], dev),
            "max_keys": h["max_keys"],
            "has_prefix": h["has_prefix"],
            "merge_rows": torch.from_numpy(h["merge_rows"]).to(dev, non_blocking=True)[:, None],
            "prefix_idx": torch.from_numpy(h["prefix_idx"]).to(dev, non_blocking=True),
            "cu_prefix": _int32(h["cu_prefix"], dev),
        }

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
    """One varlen_attn call -> (out [Tq, Hq, D], lse [Tq, Hq] fp32); adapts to the torch version.

    Keywords go only to an API that has them: no `scale` -> q is pre-scaled by scale·√D (the
    API's default is D^-0.5); no `enable_gqa` -> the KV heads are expanded (HF repeat_kv order);
    no `window_size` -> `is_causal`."""
    varlen_attn, aux, names = _varlen()
    kw: dict[str, Any] = {"return_aux": aux(lse=True)}
    if scale is not None:
        if "scale" in names:
            kw["scale"] = scale
        else:
            q = q * (scale * q.shape[-1] ** 0.5)
    if causal:
        if "window_size" in names:
            kw["window_size"] = (-1, 0)
        else:
            kw["is_causal"] = True
    if k.shape[1] != q.shape[1]:
        if "enable_gqa" in names:
            kw["enable_gqa"] = True
        else:
            rep = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    if seqused_k is not None:
        kw["seqused_k"] = seqused_k
    out, lse = varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, **kw)
    if lse_heads_first():  # [Hq, Tq] -> [Tq, Hq]
        lse = lse.transpose(0, 1)
    return out, lse.float()


def lse_merge(
    o_a: torch.Tensor, l_a: torch.Tensor, o_b: torch.Tensor, l_b: torch.Tensor, rows: torch.Tensor
) -> torch.Tensor:
    """Rows where `rows` ([T, 1] bool): (e^{l_A} o_A + e^{l_B} o_B) / (e^{l_A} + e^{l_B}) in fp32,
    rounded once to o_A's dtype; other rows: o_A. o: [T, H, D], l: [T, H] fp32. l_B of the
    other rows is never read (it may be ±inf there), and an l_B of -inf adds nothing."""
    l_b = torch.where(rows, l_b, -torch.inf)
    m = torch.maximum(l_a, l_b)[..., None]  # [T, H, 1]; l_a is finite: every A row sees itself
    w_a, w_b = torch.exp(l_a[..., None] - m), torch.exp(l_b[..., None] - m)
    o_b = torch.where(w_b > 0, o_b.float(), 0.0)  # a row with no B keys must not leak a NaN
    merged = (o_a.float() * w_a + o_b * w_b) / (w_a + w_b)
    return torch.where(rows[..., None], merged.to(o_a.dtype), o_a)


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
            q, k, v, p["cu_seg"], p["cu_k"], p["max_seg"], p["max_k"],
            causal=False, scale=scale, seqused_k=p["n_keys"],
        )  # fmt: skip
    else:
        kp, vp = k.index_select(0, p["prefix_idx"]), v.index_select(0, p["prefix_idx"])
        o_b, l_b = _call(
            q, kp, vp, p["cu_seg"], p["cu_prefix"], p["max_seg"], p["max_keys"], causal=False, scale=scale
        )
    merge = _fused_merge() if q.device.type == "cuda" else None
    return (merge or lse_merge)(o_a, l_a, o_b, l_b, p["merge_rows"])


@functools.cache
def _fused_merge() -> Any:
    """The merge as one Triton kernel (kernels/lse_merge.py, the same arithmetic in one pass over
    o_A and o_B instead of ~8 [T, Hq, D] fp32 temporaries), or None without triton."""
    if importlib.util.find_spec("triton") is None:
        return None
    # optional dependency: triton (the [gpu] extra)
    from rmbench_fast.kernels.lse_merge import lse_merge_triton

    return lse_merge_triton
