"""A CPU stand-in for torch.nn.attention.varlen.varlen_attn with FlashAttention's real contract,
for the "flash" backend's tests (the real op runs on CUDA only).

The contract it follows, as the CUDA op does (torch 2.10 to 2.13):
* per sequence i, q[cu_q[i]:cu_q[i+1]] attends to the first seqused_k[i] keys of
  k[cu_k[i]:cu_k[i+1]] (all of them without seqused_k); causal (window (-1, 0)) aligns the ends;
* the LSE comes back as [Hq, Tq] fp32 (heads first, whatever the docstring says);
* a row with no keys gets output 0 and LSE = +inf (FlashAttention's convention).
`make_varlen(names)` builds one whose keyword set is `names` (an older or newer API), so a call
passing a keyword the API lacks fails with TypeError, as it would on the GPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

ALL_NAMES = frozenset({"return_aux", "scale", "window_size", "enable_gqa", "seqused_k"})


class Aux:
    """AuxRequest's stand-in."""

    def __init__(self, lse: bool = False) -> None:
        self.lse = lse


def varlen_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_q: torch.Tensor,
    cu_k: torch.Tensor,
    max_q: int,
    max_k: int,
    *,
    return_aux: Any = None,
    scale: float | None = None,
    window_size: tuple[int, int] = (-1, -1),
    enable_gqa: bool = False,
    seqused_k: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """varlen_attn's contract (module docstring) in float64 loops -> (out [Tq, Hq, D] in q's
    dtype, lse [Hq, Tq] fp32)."""
    Hq, D = q.shape[1], q.shape[2]
    if k.shape[1] != Hq:
        assert enable_gqa, "grouped-query K/V without enable_gqa"
        k, v = k.repeat_interleave(Hq // k.shape[1], 1), v.repeat_interleave(Hq // v.shape[1], 1)
    out = torch.zeros(q.shape, dtype=torch.float64)
    lse = torch.full(q.shape[:2], math.inf, dtype=torch.float64)  # rows with no keys: +inf
    sc = D**-0.5 if scale is None else scale
    for i in range(len(cu_q) - 1):
        qa, qb, ka, kb = int(cu_q[i]), int(cu_q[i + 1]), int(cu_k[i]), int(cu_k[i + 1])
        if seqused_k is not None:
            kb = ka + int(seqused_k[i])
        if qb == qa or kb == ka:
            continue
        s = torch.einsum("qhd,khd->hqk", q[qa:qb].double(), k[ka:kb].double()) * sc
        if window_size == (-1, 0):
            Lq, Lk = qb - qa, kb - ka
            s = s.masked_fill(~torch.ones(Lq, Lk, dtype=torch.bool).tril(Lk - Lq), -math.inf)
        lse[qa:qb] = torch.logsumexp(s, -1).transpose(0, 1)
        out[qa:qb] = torch.einsum("hqk,khd->qhd", torch.softmax(s, -1), v[ka:kb].double())
    return out.to(q.dtype), lse.float().transpose(0, 1).contiguous()


def make_varlen(names: frozenset[str]) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """A varlen_attn stand-in that takes exactly the keywords `names` (and TypeError otherwise)."""

    def fn(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        cu_q: torch.Tensor,
        cu_k: torch.Tensor,
        max_q: int,
        max_k: int,
        **kw: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        extra = set(kw) - names
        if extra:
            raise TypeError(f"varlen_attn() got unexpected keyword arguments {sorted(extra)}")
        return varlen_ref(q, k, v, cu_q, cu_k, max_q, max_k, **kw)

    return fn
