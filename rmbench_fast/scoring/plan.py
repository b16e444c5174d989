"""The batch planner: records -> packed, prefix-shared, token-budgeted batches (SPEC §7).

A record is a prompt with N completions (N = 1..MAX_GROUP, per record: RM-Bench's six, RewardBench
2's four, a Ties prompt's twenty): N token sequences in slot order. Each record becomes one
*segment*: the longest common token-id prefix of its N sequences (P tokens, stored once), then the
N branches in slot order, each the rest of its sequence.
Segments are sorted into length buckets and packed greedily into `PackedBatch`es of at most
`batch_tokens` tokens (and `max_segments` segments). See `PackedBatch` for the flat layout.

Layout details that the `PackedBatch` docstring leaves open (this module defines them):

* Sequences. Segment s holds the batch-local sequences j = seg_seqs[s] .. seg_seqs[s+1]-1, its
  branch (slot) b being j = seg_seqs[s] + b (with N = 6 everywhere, j = 6s + b).
* Branch bounds. Branch j starts at `branch_offsets[j]`. It ends at `branch_offsets[j+1]`,
  except the last branch of a segment (j = seg_seqs[s+1]-1), which ends at `seg_offsets[s+1]`
  (the next entry of `branch_offsets` is the next segment's *branch* start, after that
  segment's prefix). `branch_offsets[J] == T`. Use `branch_bounds(batch)`.
* mask_first. Token 0 of a sequence with `mask_first` has `key_valid = False` (a masked
  duplicated BOS that keeps its position). When P >= 1, token 0 lives in the shared prefix,
  so sharing is only exact when all N sequences agree on `mask_first`; if they do not, the
  planner does not share that record's prefix (P = 0) and each branch carries its own token 0.
* Labels. For sequence j, every t in [label_start, len) gives one label: `label_ids = ids[t]`,
  `label_pos` = flat index of token t-1 (may lie in the shared prefix, and several sequences
  may point at the same prefix index), `label_seq = j`. Labels are grouped by j, in token order.
* Empty branches are allowed (a sequence equal to the prefix, e.g. identical responses or a
  response that is a prefix of another); its last token then lies in the prefix.
* Buckets. A segment of packed length L (= P + sum of branch lengths) falls in bucket
  floor(log_sqrt2(L)) = bit_length(L*L) - 1 (bucket -1 for L = 0), i.e. powers of sqrt(2).
  Segments are ordered by (bucket descending, record index ascending) and packed greedily in
  that order: a batch is closed when the next segment would exceed the token budget or the
  segment cap. Longest first, so a too-small budget shows up in the first batch.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from rmbench_fast.records import PackedBatch, TokSeq

try:  # the C++ core is optional: a source checkout without a build still plans (slowly).
    from rmbench_fast import _core
except ImportError:  # pragma: no cover - depends on the build
    _core = None

Impl = Literal["auto", "cpp", "python"]
MAX_GROUP = 64  # sequences per record at most (the C++ planner's kMaxGroup)


def have_cpp() -> bool:
    """True when the compiled core provides the C++ planner."""
    return _core is not None and hasattr(_core, "plan_batches")


# --------------------------------------------------------------------------------------------
# Shared prefixes
# --------------------------------------------------------------------------------------------


def common_prefix_lengths_np(ids: np.ndarray, offsets: np.ndarray, group_size: int) -> np.ndarray:
    """numpy reference of `_core.common_prefix_lengths`: per group of `group_size` consecutive
    sequences (flat ids [N], offsets [G*group_size+1]) the longest common token prefix. [G] int32."""
    ids = np.asarray(ids)
    offsets = np.asarray(offsets, dtype=np.int64)
    n_seq = len(offsets) - 1
    if ids.ndim != 1 or offsets.ndim != 1:
        raise ValueError("ids and offsets must be 1-D")
    if group_size < 1:
        raise ValueError("group_size must be >= 1")
    if n_seq < 0 or n_seq % group_size != 0:
        raise ValueError(f"offsets must hold n_groups * group_size + 1 entries, got {len(offsets)}")
    if offsets[0] != 0 or np.any(np.diff(offsets) < 0) or offsets[-1] != len(ids):
        raise ValueError("offsets must start at 0, be non-decreasing and end at len(ids)")
    out = np.zeros(n_seq // group_size, dtype=np.int32)
    for g in range(len(out)):
        o = offsets[g * group_size : (g + 1) * group_size + 1]
        lens = np.diff(o)
        m = int(lens.min())
        if m == 0:
            continue
        # rows: [group_size, m] — the first m tokens of every sequence
        rows = np.stack([ids[o[s] : o[s] + m] for s in range(group_size)])
        same = np.all(rows == rows[0], axis=0)  # [m]
        out[g] = m if same.all() else int(np.argmin(same))
    return out


def common_prefix_lengths(ids: np.ndarray, offsets: np.ndarray, group_size: int) -> np.ndarray:
    """Per group of `group_size` consecutive sequences, their longest common token prefix:
    the C++ core when built, else `common_prefix_lengths_np` (same results, tested)."""
    if _core is not None:
        return np.asarray(_core.common_prefix_lengths(ids, offsets, group_size))
    return common_prefix_lengths_np(ids, offsets, group_size)


def _lcp(group: Sequence[TokSeq]) -> int:
    first = group[0].ids
    p = len(first)
    for s in group[1:]:
        ids = s.ids
        k, m = 0, min(p, len(ids))
        while k < m and ids[k] == first[k]:
            k += 1
        p = k
    return p


def segment_bucket(length: int) -> int:
    """Length bucket of a segment of `length` packed tokens: floor(log_sqrt2(length)), -1 for 0."""
    return (length * length).bit_length() - 1


def segment_lengths(seqs: Sequence[Sequence[TokSeq]], *, share_prefix: bool = True) -> np.ndarray:
    """Packed length of each record's segment, int64 [n]: P + sum_b (len_b - P), with P the
    prefix the planner shares (0 when the N disagree on mask_first). The smallest valid
    `batch_tokens` is its max."""
    out = np.zeros(len(seqs), dtype=np.int64)
    for r, group in enumerate(seqs):
        p = _prefix_len(group, share_prefix)
        out[r] = p + sum(len(s.ids) - p for s in group)
    return out


# --------------------------------------------------------------------------------------------
# Python reference planner
# --------------------------------------------------------------------------------------------


def _check_record(r: int, group: Sequence[TokSeq], vocab_size: int | None) -> None:
    if not 1 <= len(group) <= MAX_GROUP:
        raise ValueError(f"record {r}: expected 1 to {MAX_GROUP} sequences, got {len(group)}")
    for b, s in enumerate(group):
        n = len(s.ids)
        if not (s.label_start == n or 1 <= s.label_start <= n):
            raise ValueError(f"record {r} slot {b}: label_start {s.label_start} out of range [1, {n}]")
        if not (s.pool_index == -1 or 0 <= s.pool_index < n):
            raise ValueError(f"record {r} slot {b}: pool_index {s.pool_index} out of range [0, {n}) or -1")
        if n:
            lo, hi = min(s.ids), max(s.ids)
            if lo < 0 or (vocab_size is not None and hi >= vocab_size):
                bad = lo if lo < 0 else hi
                raise ValueError(f"record {r} slot {b}: token id {bad} out of range [0, {vocab_size})")


def _prefix_len(group: Sequence[TokSeq], share_prefix: bool) -> int:
    if not share_prefix:
        return 0
    p = _lcp(group)
    # Token 0 is shared when p >= 1: only exact when every sequence masks it the same way.
    if p and len({bool(s.mask_first) for s in group}) > 1:
        return 0
    return p


def _order_and_split(seg_len: Sequence[int], batch_tokens: int, max_segments: int | None) -> list[list[int]]:
    """Bucket, sort (bucket desc, record asc) and greedily pack record indices into batches."""
    cap = max_segments if max_segments is not None and max_segments > 0 else len(seg_len) + 1
    order = sorted(range(len(seg_len)), key=lambda r: (-segment_bucket(seg_len[r]), r))
    batches: list[list[int]] = []
    cur: list[int] = []
    cur_tokens = 0
    for r in order:
        n = seg_len[r]
        if cur and (cur_tokens + n > batch_tokens or len(cur) >= cap):
            batches.append(cur)
            cur, cur_tokens = [], 0
        cur.append(r)
        cur_tokens += n
    if cur:
        batches.append(cur)
    return batches


def _build_batch(seqs: Sequence[Sequence[TokSeq]], recs: list[int], prefix: Sequence[int]) -> PackedBatch:
    input_ids: list[int] = []
    pos: list[int] = []
    valid: list[bool] = []
    seg_off, pre, br_off, seg_seq = [0], [], [], [0]
    l_pos: list[int] = []
    l_ids: list[int] = []
    l_seq: list[int] = []
    pool: list[int] = []
    srec: list[int] = []
    for r in recs:
        group, p = seqs[r], prefix[r]
        base = len(input_ids)
        input_ids.extend(group[0].ids[:p])
        pos.extend(range(p))
        valid.extend([True] * p)
        if p and group[0].mask_first:
            valid[base] = False
        starts = []
        for ts in group:
            st = len(input_ids)
            starts.append(st)
            br_off.append(st)
            input_ids.extend(ts.ids[p:])
            pos.extend(range(p, len(ts.ids)))
            valid.extend([True] * (len(ts.ids) - p))
            if p == 0 and ts.mask_first and ts.ids:
                valid[st] = False
        for b, ts in enumerate(group):
            j = seg_seq[-1] + b
            shift = starts[b] - p  # token t >= p of this sequence sits at flat shift + t
            for t in range(ts.label_start, len(ts.ids)):
                l_pos.append(base + t - 1 if t - 1 < p else shift + t - 1)
                l_ids.append(ts.ids[t])
                l_seq.append(j)
            q = ts.pool_index
            pool.append(-1 if q < 0 else (base + q if q < p else shift + q))
            srec.append(r)
        seg_off.append(len(input_ids))
        seg_seq.append(seg_seq[-1] + len(group))
        pre.append(p)
    br_off.append(len(input_ids))
    i32 = np.int32
    return PackedBatch(
        input_ids=np.asarray(input_ids, dtype=i32),
        position_ids=np.asarray(pos, dtype=i32),
        key_valid=np.asarray(valid, dtype=bool),
        seg_offsets=np.asarray(seg_off, dtype=i32),
        prefix_len=np.asarray(pre, dtype=i32),
        branch_offsets=np.asarray(br_off, dtype=i32),
        label_pos=np.asarray(l_pos, dtype=i32),
        label_ids=np.asarray(l_ids, dtype=i32),
        label_seq=np.asarray(l_seq, dtype=i32),
        pool_pos=np.asarray(pool, dtype=i32),
        seq_record=np.asarray(srec, dtype=i32),
        seg_seqs=np.asarray(seg_seq, dtype=i32),
    )


def _plan_python(
    seqs: Sequence[Sequence[TokSeq]],
    batch_tokens: int,
    max_segments: int | None,
    share_prefix: bool,
    vocab_size: int | None,
) -> list[PackedBatch]:
    for r, group in enumerate(seqs):
        _check_record(r, group, vocab_size)
    prefix = [_prefix_len(g, share_prefix) for g in seqs]
    seg_len = [p + sum(len(s.ids) - p for s in g) for g, p in zip(seqs, prefix)]
    _check_budget(seg_len, batch_tokens)
    return [
        _build_batch(seqs, recs, prefix) for recs in _order_and_split(seg_len, batch_tokens, max_segments)
    ]


def _check_budget(seg_len: Sequence[int], batch_tokens: int) -> None:
    if batch_tokens < 1:
        raise ValueError(f"batch_tokens must be >= 1, got {batch_tokens}")
    for r, n in enumerate(seg_len):
        if n > batch_tokens:
            longest = max(seg_len)
            raise ValueError(
                f"record {r}: its packed segment has {n} tokens, more than batch_tokens={batch_tokens} "
                f"(the longest segment has {longest} tokens; use batch_tokens >= {longest})"
            )


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------


def flatten_seqs(seqs: Sequence[Sequence[TokSeq]]) -> dict[str, np.ndarray]:
    """TokSeq groups -> the flat numpy inputs of `plan_batches_flat` over M = sum_r N_r sequences
    (ids int32, offsets int64 [M+1], label_start / pool_index int32 [M], mask_first uint8 [M],
    group_offsets int64 [n+1]: record r holds sequences group_offsets[r] .. group_offsets[r+1]-1).
    Group sizes are checked by the planner (1..MAX_GROUP)."""
    group_offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
    np.cumsum([len(g) for g in seqs], out=group_offsets[1:])
    flat = [s for g in seqs for s in g]
    lens = np.fromiter((len(s.ids) for s in flat), dtype=np.int64, count=len(flat))
    offsets = np.zeros(len(flat) + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    total = int(offsets[-1])
    ids_iter = itertools.chain.from_iterable(s.ids for s in flat)
    ids64 = np.fromiter(ids_iter, dtype=np.int64, count=total)
    if total and (ids64.min() < np.iinfo(np.int32).min or ids64.max() > np.iinfo(np.int32).max):
        raise ValueError("token ids must fit in int32")
    return {
        "ids": ids64.astype(np.int32),
        "offsets": offsets,
        "label_start": np.fromiter((s.label_start for s in flat), dtype=np.int32, count=len(flat)),
        "pool_index": np.fromiter((s.pool_index for s in flat), dtype=np.int32, count=len(flat)),
        "mask_first": np.fromiter((bool(s.mask_first) for s in flat), dtype=np.uint8, count=len(flat)),
        "group_offsets": group_offsets,
    }


def _check_flat(ids: np.ndarray, offsets: np.ndarray, per_seq: list[np.ndarray], groups: np.ndarray) -> None:
    """The buffer checks the C++ binding makes, for the Python path (same messages)."""
    if ids.ndim != 1 or offsets.ndim != 1:
        raise ValueError("ids and offsets must be 1-D")
    if len(offsets) < 1:
        raise ValueError("offsets must hold n_sequences + 1 entries, got 0")
    n_seq = len(offsets) - 1
    for a, name in zip(per_seq, ("label_start", "pool_index", "mask_first")):
        if len(a) != n_seq:
            raise ValueError(f"{name} must hold one entry per sequence ({n_seq}), got {len(a)}")
    if groups.ndim != 1 or len(groups) < 1 or groups[0] != 0 or groups[-1] != n_seq:
        raise ValueError(f"group_offsets must run from 0 to the number of sequences ({n_seq})")
    down = np.flatnonzero(np.diff(groups) < 0)
    if len(down):
        raise ValueError(f"group_offsets must be non-decreasing (at {down[0]})")
    if offsets[0] != 0:
        raise ValueError(f"offsets[0] must be 0, got {offsets[0]}")
    bad = np.flatnonzero(np.diff(offsets) < 0)
    if len(bad):
        raise ValueError(f"offsets must be non-decreasing (at {bad[0]})")
    if offsets[-1] != len(ids):
        raise ValueError(f"offsets[-1] = {offsets[-1]} but ids has {len(ids)} tokens")


def _unflatten(
    ids: np.ndarray,
    offsets: np.ndarray,
    label_start: np.ndarray,
    pool_index: np.ndarray,
    mask_first: np.ndarray,
    group_offsets: np.ndarray,
) -> list[list[TokSeq]]:
    n_seq = len(offsets) - 1
    seqs = [
        TokSeq(
            ids[offsets[i] : offsets[i + 1]].tolist(),
            int(label_start[i]),
            int(pool_index[i]),
            bool(mask_first[i]),
        )
        for i in range(n_seq)
    ]
    g = [int(x) for x in group_offsets]
    return [seqs[g[r] : g[r + 1]] for r in range(len(g) - 1)]


def _batches_from_core(out: dict[str, Any]) -> list[PackedBatch]:
    """Slice the C++ planner's concatenated, batch-local arrays into PackedBatch views."""
    tok = out["batch_tok"].tolist()  # [B+1] token ranges
    seg = out["batch_seg"].tolist()  # [B+1] segment ranges
    lab = out["batch_lab"].tolist()  # [B+1] label ranges
    seq = out["batch_seq"].tolist()  # [B+1] sequence ranges
    batches = []
    for b in range(len(tok) - 1):
        t0, t1, s0, s1, k0, k1 = tok[b], tok[b + 1], seg[b], seg[b + 1], lab[b], lab[b + 1]
        q0, q1 = seq[b], seq[b + 1]
        batches.append(
            PackedBatch(
                input_ids=out["input_ids"][t0:t1],
                position_ids=out["position_ids"][t0:t1],
                key_valid=out["key_valid"][t0:t1],
                # seg_offsets / seg_seqs / branch_offsets carry one extra entry per batch
                seg_offsets=out["seg_offsets"][s0 + b : s1 + b + 1],
                prefix_len=out["prefix_len"][s0:s1],
                branch_offsets=out["branch_offsets"][q0 + b : q1 + b + 1],
                label_pos=out["label_pos"][k0:k1],
                label_ids=out["label_ids"][k0:k1],
                label_seq=out["label_seq"][k0:k1],
                pool_pos=out["pool_pos"][q0:q1],
                seq_record=out["seq_record"][q0:q1],
                seg_seqs=out["seg_seqs"][s0 + b : s1 + b + 1],
            )
        )
    return batches


class PlanWorkspace:
    """Reusable output buffers for repeated C++ planning calls (streaming large sweeps).

    A plan of 100k records is several GB of flat arrays; allocating them fresh on every call
    costs more in first-touch page faults than the planning itself. With a workspace the C++
    planner writes into buffers kept from earlier calls (grown, with 25% headroom, when a call
    needs more), so a sweep planned chunk by chunk touches its memory once.

    The batches a call returns are *views* into the workspace: the next call with the same
    workspace overwrites them. Consume (or copy) a plan before planning the next chunk.
    Buffers may be replaced by any 1-D C-contiguous writable numpy arrays of the right dtype,
    e.g. numpy views of pinned host tensors for the copy to a GPU.
    """

    def __init__(self) -> None:
        self.buffers: dict[str, np.ndarray] = {}

    @property
    def nbytes(self) -> int:
        """Bytes reserved by the buffers (capacity, not what the last plan used)."""
        return sum(a.nbytes for a in self.buffers.values())


def plan_batches_flat(
    ids: np.ndarray,
    offsets: np.ndarray,
    label_start: np.ndarray,
    pool_index: np.ndarray,
    mask_first: np.ndarray,
    group_offsets: np.ndarray,
    *,
    batch_tokens: int,
    max_segments: int | None = None,
    share_prefix: bool = True,
    vocab_size: int | None = None,
    impl: Impl = "auto",
    workspace: PlanWorkspace | None = None,
) -> list[PackedBatch]:
    """`plan_batches` on flat numpy inputs (see `flatten_seqs`): the fast path, no TokSeq lists.

    `workspace` (C++ only) reuses output buffers across calls; the returned batches then alias
    it and are overwritten by the next call with the same workspace (see `PlanWorkspace`).
    """
    use_cpp = _pick_impl(impl)
    if workspace is not None and not use_cpp:
        raise ValueError("workspace needs the C++ planner (impl='cpp' or 'auto' with the core built)")
    if not use_cpp:
        groups = np.asarray(group_offsets, dtype=np.int64)
        _check_flat(np.asarray(ids), np.asarray(offsets), [label_start, pool_index, mask_first], groups)
        seqs = _unflatten(
            np.asarray(ids),
            np.asarray(offsets),
            np.asarray(label_start),
            np.asarray(pool_index),
            np.asarray(mask_first),
            groups,
        )
        return _plan_python(seqs, batch_tokens, max_segments, share_prefix, vocab_size)
    out = _core.plan_batches(
        ids,
        offsets,
        label_start,
        pool_index,
        mask_first,
        group_offsets,
        vocab_size=-1 if vocab_size is None else int(vocab_size),
        batch_tokens=int(batch_tokens),
        max_segments=0 if max_segments is None else int(max_segments),
        share_prefix=bool(share_prefix),
        workspace=None if workspace is None else workspace.buffers,
    )
    return _batches_from_core(out)


def _pick_impl(impl: Impl) -> bool:
    if impl not in ("auto", "cpp", "python"):
        raise ValueError(f"impl must be 'auto', 'cpp' or 'python', got {impl!r}")
    if impl == "cpp" and not have_cpp():
        raise RuntimeError("impl='cpp' but rmbench_fast._core has no plan_batches (rebuild the package)")
    return impl == "cpp" or (impl == "auto" and have_cpp())


def plan_batches(
    seqs: Sequence[Sequence[TokSeq]],
    *,
    batch_tokens: int,
    max_segments: int | None = None,
    share_prefix: bool = True,
    vocab_size: int | None = None,
    impl: Impl = "auto",
) -> list[PackedBatch]:
    """Pack records into token-budgeted, prefix-shared batches.

    seqs[r] are record r's N_r TokSeqs in slot order (1 <= N_r <= MAX_GROUP; N_r may differ
    between records). Every record becomes one segment of
    L_r = P_r + sum_b (len_b - P_r) tokens (P_r = shared prefix, 0 with share_prefix=False);
    each batch holds at most `batch_tokens` tokens and `max_segments` segments (None: no cap).
    Raises ValueError on malformed sequences, ids outside [0, vocab_size), or a segment longer
    than `batch_tokens`. impl="auto" uses the C++ core when built, else this module's
    reference; both give identical batches.
    """
    if _pick_impl(impl):
        return plan_batches_flat(
            **flatten_seqs(seqs),
            batch_tokens=batch_tokens,
            max_segments=max_segments,
            share_prefix=share_prefix,
            vocab_size=vocab_size,
            impl="cpp",
        )
    return _plan_python(seqs, batch_tokens, max_segments, share_prefix, vocab_size)


# --------------------------------------------------------------------------------------------
# Helpers for the engine and the benchmark
# --------------------------------------------------------------------------------------------


def branch_bounds(batch: PackedBatch) -> tuple[np.ndarray, np.ndarray]:
    """(start, end) flat indices of every branch j: two int64 arrays [J] (end exclusive).

    branch_offsets[j + 1] is the next branch's start, which for a segment's last branch lies
    past the next segment's prefix: the last branch ends at its segment's end instead.
    """
    bo = np.asarray(batch.branch_offsets, dtype=np.int64)
    end = bo[1:].copy()
    last = np.asarray(batch.seg_seqs, dtype=np.int64)[1:] - 1  # [S] each segment's last branch
    end[last] = np.asarray(batch.seg_offsets, dtype=np.int64)[1:]
    return bo[:-1], end


def seq_segments(batch: PackedBatch) -> np.ndarray:
    """The segment s of every sequence j: int64 [J]."""
    return np.repeat(
        np.arange(batch.n_segments, dtype=np.int64), np.diff(np.asarray(batch.seg_seqs, dtype=np.int64))
    )


def seq_slots(batch: PackedBatch) -> np.ndarray:
    """The slot b of every sequence j inside its record (j = seg_seqs[s] + b): int64 [J]."""
    first = np.asarray(batch.seg_seqs, dtype=np.int64)
    return np.arange(first[-1], dtype=np.int64) - first[seq_segments(batch)]


def gating_rows(batch: PackedBatch, pattern: Sequence[int]) -> np.ndarray:
    """Flat index of each sequence's gating token: int64 [J].

    The gating token of sequence j is the start of the *last* occurrence of `pattern` in its ids
    (ArmoRM's and QRM's `find_token_for_gating`). Position t of sequence j sits at flat index
    seg_offsets[s] + t inside its segment's prefix (t < P), else at branch_start[j] + t - P.
    Raises ValueError naming the record and slot when the pattern does not occur (the official
    forward raises too: the model needs its Llama-3 chat template).
    """
    ids = np.asarray(batch.input_ids)
    starts, ends = branch_bounds(batch)
    want = np.asarray(pattern, dtype=ids.dtype)
    k = len(want)
    out = np.empty(len(starts), dtype=np.int64)
    segs, slots = seq_segments(batch), seq_slots(batch)
    for j in range(len(starts)):
        s = int(segs[j])
        a, p = int(batch.seg_offsets[s]), int(batch.prefix_len[s])
        seq = np.concatenate([ids[a : a + p], ids[starts[j] : ends[j]]])  # [len_j]
        if len(seq) >= k:
            windows = np.lib.stride_tricks.sliding_window_view(seq, k)  # [len_j - k + 1, k]
            hits = np.flatnonzero((windows == want).all(axis=1))
        else:
            hits = np.empty(0, dtype=np.int64)
        if hits.size == 0:
            raise ValueError(
                f"record {int(batch.seq_record[j])} slot {int(slots[j])}: the gating token pattern "
                f"{list(pattern)} does not occur (the head needs its Llama-3 chat template)"
            )
        t = int(hits[-1])
        out[j] = a + t if t < p else int(starts[j]) + t - p
    return out


def seq_lengths(batch: PackedBatch) -> np.ndarray:
    """Unpadded length of every sequence j (prefix + its branch): int64 [J]."""
    start, end = branch_bounds(batch)
    return np.asarray(batch.prefix_len, dtype=np.int64)[seq_segments(batch)] + (end - start)


def plan_stats(batches: Sequence[PackedBatch]) -> dict[str, Any]:
    """Totals over a plan: useful tokens (sum of unpadded sequence lengths), packed tokens,
    prefix savings (useful - packed), batch / segment / sequence / label counts."""
    useful = sum(int(seq_lengths(b).sum()) for b in batches)
    packed = sum(b.n_tokens for b in batches)
    return {
        "n_batches": len(batches),
        "n_segments": sum(b.n_segments for b in batches),
        "n_sequences": sum(len(b.seq_record) for b in batches),
        "n_labels": sum(len(b.label_ids) for b in batches),
        "useful_tokens": useful,
        "packed_tokens": packed,
        "prefix_savings": useful - packed,
        "prefix_savings_frac": (useful - packed) / useful if useful else 0.0,
        "max_batch_tokens": max((b.n_tokens for b in batches), default=0),
    }


def scatter_scores(
    batches: Sequence[PackedBatch],
    per_seq_scores: Sequence[Any],
    n_records: int,
    group_sizes: Sequence[int] | None = None,
) -> np.ndarray:
    """Per-batch per-sequence scores ([J_b] each, sequence order j) -> [n_records, max N] float64,
    record r's slot b in column b (NaN past its own N_r).

    `group_sizes` (N_r per record) defaults to what the batches hold. Raises ValueError unless
    every (record, slot < N_r) gets exactly one score.
    """
    if len(per_seq_scores) != len(batches):
        raise ValueError(f"got scores for {len(per_seq_scores)} batches, planned {len(batches)}")
    if group_sizes is None:
        inferred = np.zeros(n_records, dtype=np.int64)
        for batch in batches:
            rec = np.asarray(batch.seq_record, dtype=np.int64)
            first = np.asarray(batch.seg_seqs, dtype=np.int64)
            if len(rec) and rec.max() >= n_records:
                raise ValueError(f"a batch holds record {int(rec.max())}, but there are {n_records} records")
            inferred[rec[first[:-1]]] = np.diff(first)
        if len(inferred) and inferred.min() == 0:  # a record in no batch (a planned one has N >= 1)
            raise ValueError(f"record {int(np.argmin(inferred))} slot 0 got 0 scores, expected exactly 1")
        group_sizes = inferred.tolist()
    if len(group_sizes) != n_records:
        raise ValueError(f"got {len(group_sizes)} group sizes for {n_records} records")
    sizes = np.asarray(group_sizes, dtype=np.int64)
    width = int(sizes.max()) if len(sizes) else 0
    out = np.full((len(sizes), width), np.nan, dtype=np.float64)
    seen = np.zeros((len(sizes), width), dtype=np.int64)
    for b, (batch, sc) in enumerate(zip(batches, per_seq_scores)):
        sc = np.asarray(sc, dtype=np.float64).reshape(-1)  # [J_b]
        rec = np.asarray(batch.seq_record, dtype=np.int64)
        if len(sc) != len(rec):
            raise ValueError(f"batch {b}: got {len(sc)} scores for {len(rec)} sequences")
        slot = seq_slots(batch)
        if len(rec) and (rec.max() >= len(sizes) or np.any(slot >= sizes[rec])):
            raise ValueError(f"batch {b}: a sequence outside the records' group sizes")
        out[rec, slot] = sc
        np.add.at(seen, (rec, slot), 1)
    want = (np.arange(width)[None, :] < sizes[:, None]).astype(np.int64)
    if not np.array_equal(seen, want):
        r, s = np.argwhere(seen != want)[0]
        raise ValueError(f"record {r} slot {s} got {seen[r, s]} scores, expected exactly 1")
    return out
