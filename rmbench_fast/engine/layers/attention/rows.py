"""Attention for a few query rows of a packed batch: the last layer of a model whose head reads
only pooled rows (a classifier reads one row per sequence).

Every other row's output in the last layer is never read, so that layer needs K/V at every
token but queries, the attention output, o_proj, the MLP and the final norm only at the pooled
rows. Each row attends to exactly the keys the packed rule lets it see (engine/layout.py): its
segment's prefix up to itself, its own branch up to itself, valid keys only (or itself), within
the sliding window. The keys of one row are gathered and attended in fp32 (scores, soft-cap,
softmax, value sum), the output cast back to the model dtype, as the fused kernels accumulate.

    o_r = softmax_k(cap(q_r · k * scale))ᵀ v     over the visible keys k of row r
"""

from __future__ import annotations

import numpy as np
import torch

from rmbench_fast.engine.layout import PackedLayout
from rmbench_fast.scoring.plan import branch_bounds, seq_segments


def visible_keys(layout: PackedLayout, rows: np.ndarray, window: int | None) -> list[np.ndarray]:
    """Per pooled row rows[j] (sequence j's row) -> the flat indices of the keys it sees (host)."""
    b = layout.batch
    seg_off = np.asarray(b.seg_offsets, dtype=np.int64)
    prefix_len = np.asarray(b.prefix_len, dtype=np.int64)
    key_valid = np.asarray(b.key_valid, dtype=bool)
    pos = np.asarray(b.position_ids, dtype=np.int64)
    starts, _ = branch_bounds(b)
    segs = seq_segments(b)
    out = []
    for j, r in enumerate(rows.tolist()):
        s0 = int(seg_off[segs[j]])
        keys = np.arange(s0, min(s0 + int(prefix_len[segs[j]]), r + 1), dtype=np.int64)
        if r >= starts[j]:  # the pooled row is in the branch (else in the prefix: no branch key)
            keys = np.concatenate([keys, np.arange(int(starts[j]), r + 1, dtype=np.int64)])
        keep = key_valid[keys] | (keys == r)
        if window is not None:
            keep &= pos[r] - pos[keys] < window
        out.append(keys[keep])
    return out


def rows_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: PackedLayout,
    rows: np.ndarray,
    window: int | None,
    scale: float | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """q: [R, Hq, D] at the flat rows `rows` [R] (host int64); k/v: [T, Hk, D] -> [R, Hq, D].

    One small product per row: R is the number of sequences in the batch, not its tokens."""
    R, Hq, D = q.shape
    Hk = k.shape[1]
    group = Hq // Hk  # query head h reads KV head h // group (HF's repeat_kv)
    sc = D**-0.5 if scale is None else scale
    out = torch.empty_like(q)
    window = layout.effective_window(window)
    for j, keys in enumerate(visible_keys(layout, rows, window)):
        idx = torch.from_numpy(keys).to(k.device, non_blocking=True)
        kj = k.index_select(0, idx).float()  # [n, Hk, D]
        vj = v.index_select(0, idx).float()
        qj = q[j].float().view(Hk, group, D)  # [Hk, g, D]
        s = torch.einsum("hgd,nhd->hgn", qj, kj) * sc  # [Hk, g, n]
        if softcap is not None:
            s = torch.tanh(s / softcap) * softcap
        p = torch.softmax(s, dim=-1)
        out[j] = torch.einsum("hgn,nhd->hgd", p, vj).reshape(Hq, D).to(q.dtype)
    return out
