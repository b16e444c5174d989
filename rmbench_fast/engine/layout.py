"""What a packed shared-prefix batch looks like to attention (SPEC §7, PackedBatch docstring).

The visibility rule, written once as a FlexAttention-style `mask_mod` and used by every path:
    q sees k  iff  seg[q] == seg[k]  and  k <= q (flat order)
                   and (k is in the prefix or br[k] == br[q])
                   and (key_valid[k] or k == q)
                   [and pos[q] - pos[k] < window, for sliding-window layers]
The `k == q` term only matters for a masked duplicated BOS (key_valid False): its own row would
otherwise see nothing and SDPA would return NaN, which then leaks into other rows through
0 * NaN in the value product. Its output is never read (nothing attends to it, it is never a
label or pooled position), so letting it see itself changes no score.

A layout is built once per batch and shared by every layer; each attention backend caches the
plan it derives from it (`PackedLayout.cached`), so a plan is built once per batch and window.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from rmbench_fast.records import PackedBatch
from rmbench_fast.scoring.plan import branch_bounds
from rmbench_fast.utils.phases import phase

MaskMod = Callable[[Any, Any, torch.Tensor, torch.Tensor], torch.Tensor]
# Per segment: (prefix start, prefix length, [(start, end) of each non-empty branch]).
SegmentSpans = list[tuple[int, int, list[tuple[int, int]]]]


@dataclass
class PackedLayout:
    """A PackedBatch on the compute device: its tokens, per-token metadata for attention, the
    rows the heads read, and the cached backend plans."""

    n_tokens: int
    positions: torch.Tensor  # [T] int64
    seg: torch.Tensor  # [T] int32 segment id
    branch: torch.Tensor  # [T] int32 sequence index j, -1 in a prefix
    key_valid: torch.Tensor  # [T] bool
    batch: PackedBatch
    max_span: int  # largest pos[q] - pos[k] possible inside one sequence
    all_keys_valid: bool  # no masked duplicated BOS anywhere in the batch
    input_ids: torch.Tensor  # [T] int64
    label_pos: torch.Tensor  # [K] int64: the flat row whose output predicts label k
    label_ids: torch.Tensor  # [K] int64
    label_seq: torch.Tensor  # [K] int64: the sequence j of label k
    pool_pos: torch.Tensor  # [J] int64: the classifier's pooled row of sequence j (-1 for DPO)
    _cache: dict[tuple[str, int | None], Any] = field(default_factory=dict)
    ran: Counter[str] = field(default_factory=Counter)  # attention calls per backend that ran

    @classmethod
    def from_batch(cls, batch: PackedBatch, device: torch.device) -> PackedLayout:
        """All of a batch's per-token arrays in one host->device copy (pinned, non-blocking on
        CUDA), split into views on the device: no sync, one transfer instead of nine."""
        T = batch.n_tokens
        seg_off = np.asarray(batch.seg_offsets, dtype=np.int64)
        seg = np.repeat(np.arange(len(seg_off) - 1, dtype=np.int64), np.diff(seg_off))
        starts, ends = branch_bounds(batch)
        branch = np.full(T, -1, dtype=np.int64)
        for j in range(len(starts)):
            branch[starts[j] : ends[j]] = j
        pos = np.asarray(batch.position_ids, dtype=np.int64)
        key_valid = np.asarray(batch.key_valid, dtype=bool)
        parts = [
            np.asarray(batch.input_ids, dtype=np.int64),
            pos,
            seg,
            branch,
            key_valid.astype(np.int64),
            np.asarray(batch.label_pos, dtype=np.int64),
            np.asarray(batch.label_ids, dtype=np.int64),
            np.asarray(batch.label_seq, dtype=np.int64),
            np.asarray(batch.pool_pos, dtype=np.int64),
        ]
        with phase("host_copies"):
            host = torch.from_numpy(np.concatenate(parts))
            if device.type == "cuda":
                host = host.pin_memory()
            flat = host.to(device, non_blocking=True)
        ids, positions, seg_t, branch_t, valid_t, lpos, lids, lseq, pool = flat.split([len(p) for p in parts])
        return cls(
            n_tokens=T,
            positions=positions,
            seg=seg_t.to(torch.int32),
            branch=branch_t.to(torch.int32),
            key_valid=valid_t.bool(),
            batch=batch,
            max_span=int(pos.max()) if T else 0,
            all_keys_valid=bool(key_valid.all()),  # from the host copy: no device sync
            input_ids=ids,
            label_pos=lpos,
            label_ids=lids,
            label_seq=lseq,
            pool_pos=pool,
        )

    def effective_window(self, window: int | None) -> int | None:
        """None when the window cannot bite in this batch (every span < window)."""
        return None if window is None or window > self.max_span else window

    def mask_mod(self, window: int | None) -> MaskMod:
        return make_mask_mod(self.seg, self.branch, self.key_valid, self.positions, window)

    def cached(self, key: tuple[str, int | None], build: Callable[[], Any]) -> Any:
        """A backend's plan for this batch, built on first use (shared by every layer)."""
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def segment_spans(self) -> SegmentSpans:
        """Per segment: (prefix start, prefix length, [(start, end) of each non-empty branch])."""

        def build() -> SegmentSpans:
            b = self.batch
            seg_off = np.asarray(b.seg_offsets, dtype=np.int64)
            seg_seq = np.asarray(b.seg_seqs, dtype=np.int64)
            starts, ends = branch_bounds(b)
            spans = []
            for si in range(b.n_segments):
                sl = slice(seg_seq[si], seg_seq[si + 1])
                br = [(int(x), int(y)) for x, y in zip(starts[sl], ends[sl]) if y > x]
                spans.append((int(seg_off[si]), int(b.prefix_len[si]), br))
            return spans

        return self.cached(("spans", None), build)


def make_mask_mod(
    seg: torch.Tensor, branch: torch.Tensor, key_valid: torch.Tensor, pos: torch.Tensor, window: int | None
) -> MaskMod:
    """The visibility rule (module docstring) as a FlexAttention mask_mod over flat indices."""

    def mask_mod(b: Any, h: Any, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        same_seq = (seg[q] == seg[k]) & ((branch[k] < 0) | (branch[k] == branch[q]))
        m = same_seq & (k <= q) & (key_valid[k] | (q == k))
        if window is not None:
            m = m & (pos[q] - pos[k] < window)
        return m

    return mask_mod
