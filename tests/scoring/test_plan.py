"""The batch planner: layout, labels, attention semantics, budgets, C++ == Python, bad input."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rmbench_fast.records import N_SLOTS, PackedBatch, TokSeq
from rmbench_fast.scoring import plan
from rmbench_fast.scoring.plan import (
    branch_bounds,
    flatten_seqs,
    plan_batches,
    plan_batches_flat,
    plan_stats,
    scatter_scores,
    segment_bucket,
)

needs_cpp = pytest.mark.skipif(
    not plan.have_cpp(), reason="rmbench_fast._core has no plan_batches (not built)"
)
IMPLS = ["python", pytest.param("cpp", marks=needs_cpp)]
VOCAB = 5  # a tiny vocabulary makes accidental shared tokens (and identical responses) common

# --------------------------------------------------------------------------------------------
# Random corpora
# --------------------------------------------------------------------------------------------


@st.composite
def record(draw: st.DrawFn, n_slots: int = N_SLOTS) -> list[TokSeq]:
    """`n_slots` sequences (RM-Bench's six by default) sharing a random prompt, sometimes cut
    short (truncation), with random answers, label starts, pool indices and (mostly consistent)
    mask_first flags."""
    prompt = draw(st.lists(st.integers(0, VOCAB - 1), min_size=0, max_size=8))
    classifier = draw(st.booleans())
    mask_all = draw(st.booleans()) if classifier else False
    seqs = []
    for _ in range(n_slots):
        cut = draw(st.integers(0, len(prompt))) if draw(st.integers(0, 4)) == 0 else len(prompt)
        answer = draw(st.lists(st.integers(0, VOCAB - 1), min_size=0, max_size=6))
        ids = prompt[:cut] + answer
        if not ids and draw(st.integers(0, 5)):  # empty sequences are rare but legal
            ids = [draw(st.integers(0, VOCAB - 1))]
        n = len(ids)
        if classifier or n == 0:
            label_start = n
            pool = draw(st.integers(-1, n - 1)) if n else -1
        else:
            label_start = draw(st.integers(1, n))
            pool = -1
        mask_first = mask_all if draw(st.integers(0, 6)) else draw(st.booleans())
        seqs.append(TokSeq(ids, label_start, pool, mask_first and n > 0))
    return seqs


corpora = st.lists(record(), min_size=0, max_size=12)
# A prompt with N completions, N = 1..64 per record (RewardBench 2: 4, more in Ties).
ragged_record = st.one_of(st.integers(1, 9), st.sampled_from([4, 20, 63, 64])).flatmap(lambda n: record(n))
ragged_corpora = st.lists(ragged_record, min_size=0, max_size=10)


def seg_len_of(group: list[TokSeq], p: int) -> int:
    return p + sum(len(s.ids) - p for s in group)


def expected_prefix(group: list[TokSeq], share: bool) -> int:
    """The LCP of the six, or 0 when not sharing or when mask_first disagrees."""
    if not share:
        return 0
    p = min(len(s.ids) for s in group)
    for k in range(p):
        if len({s.ids[k] for s in group}) > 1:
            p = k
            break
    if p and len({s.mask_first for s in group}) > 1:
        return 0
    return p


# --------------------------------------------------------------------------------------------
# The checker: everything a PackedBatch promises, reconstructed independently
# --------------------------------------------------------------------------------------------


def seq_flat_indices(batch: PackedBatch, j: int) -> np.ndarray:
    """Flat index of every token of batch sequence j: the prefix, then its branch."""
    s = int(np.searchsorted(batch.seg_seqs, j, side="right")) - 1
    start, end = branch_bounds(batch)
    p0 = int(batch.seg_offsets[s])
    return np.concatenate([np.arange(p0, p0 + int(batch.prefix_len[s])), np.arange(start[j], end[j])])


def packed_mask(batch: PackedBatch) -> np.ndarray:
    """Dense [T, T] attention mask from the metadata, by the PackedBatch docstring's rule."""
    T = batch.n_tokens
    seg = np.full(T, -1)
    br = np.full(T, -1)  # -1: in a prefix
    start, end = branch_bounds(batch)
    for s in range(batch.n_segments):
        seg[batch.seg_offsets[s] : batch.seg_offsets[s + 1]] = s
    for j in range(len(start)):
        br[start[j] : end[j]] = j
    idx = np.arange(T)
    return (
        (seg[:, None] == seg[None, :])
        & (idx[None, :] <= idx[:, None])
        & ((br[None, :] == -1) | (br[None, :] == br[:, None]))
        & np.asarray(batch.key_valid, dtype=bool)[None, :]
    )


def check_plan(
    seqs: list[list[TokSeq]],
    batches: list[PackedBatch],
    budget: int,
    max_segments: int | None,
    share: bool,
    check_mask: bool = True,
) -> None:
    n = len(seqs)
    prefix = [expected_prefix(g, share) for g in seqs]
    seg_len = [seg_len_of(g, p) for g, p in zip(seqs, prefix)]
    seen = []
    order = []
    for bi, batch in enumerate(batches):
        T, S = batch.n_tokens, batch.n_segments
        assert 0 < S and T <= budget
        assert max_segments is None or S <= max_segments
        for name in ("input_ids", "position_ids", "seg_offsets", "prefix_len", "branch_offsets", "label_pos",
                     "label_ids", "label_seq", "pool_pos", "seq_record", "seg_seqs"):  # fmt: skip
            assert getattr(batch, name).dtype == np.int32, name
        assert batch.key_valid.dtype == np.bool_
        J = int(batch.seg_seqs[-1])
        assert (
            len(batch.seg_seqs) == S + 1 and batch.seg_seqs[0] == 0 and np.all(np.diff(batch.seg_seqs) >= 1)
        )
        assert len(batch.seg_offsets) == S + 1 and len(batch.branch_offsets) == J + 1
        assert batch.seg_offsets[0] == 0 and batch.seg_offsets[-1] == T and batch.branch_offsets[-1] == T
        assert len(batch.pool_pos) == len(batch.seq_record) == J
        np.testing.assert_array_equal(
            batch.branch_offsets[batch.seg_seqs[:-1]], batch.seg_offsets[:-1] + batch.prefix_len
        )
        assert np.all(np.diff(batch.label_seq) >= 0)  # grouped by sequence
        covered = np.zeros(T, dtype=bool)
        expect_mask = np.zeros((T, T), dtype=bool)
        rows_set = np.zeros(T, dtype=bool)
        for s in range(S):
            r = int(batch.seq_record[batch.seg_seqs[s]])
            order.append(r)
            assert int(batch.prefix_len[s]) == prefix[r]
            assert batch.seg_offsets[s + 1] - batch.seg_offsets[s] == seg_len[r]
            assert batch.seg_seqs[s + 1] - batch.seg_seqs[s] == len(seqs[r])
            np.testing.assert_array_equal(
                plan.seq_slots(batch)[batch.seg_seqs[s] : batch.seg_seqs[s + 1]], np.arange(len(seqs[r]))
            )
            for b in range(len(seqs[r])):
                j = int(batch.seg_seqs[s]) + b
                assert batch.seq_record[j] == r
                seen.append((r, b))
                ts = seqs[r][b]
                flat = seq_flat_indices(batch, j)
                covered[flat] = True
                # the sequence, reconstructed through the layout, is the input sequence
                np.testing.assert_array_equal(batch.input_ids[flat], ts.ids)
                np.testing.assert_array_equal(batch.position_ids[flat], np.arange(len(ts.ids)))
                kv = batch.key_valid[flat]
                assert kv[1:].all()
                if len(ts.ids):
                    assert kv[0] == (not ts.mask_first)
                # labels: every answer token exactly once, predicted at the previous token
                mine = batch.label_seq == j
                np.testing.assert_array_equal(batch.label_ids[mine], ts.ids[ts.label_start :])
                np.testing.assert_array_equal(
                    batch.label_pos[mine], flat[ts.label_start - 1 : len(ts.ids) - 1]
                )
                assert batch.pool_pos[j] == (flat[ts.pool_index] if ts.pool_index >= 0 else -1)
                # attention alone: token t sees its own valid tokens 0..t
                for t, q in enumerate(flat):
                    row = np.zeros(T, dtype=bool)
                    keys = flat[: t + 1]
                    row[keys] = True
                    if ts.mask_first:
                        row[flat[0]] = False
                    if rows_set[q]:  # a shared prefix token: all sharers must agree
                        np.testing.assert_array_equal(expect_mask[q], row)
                    expect_mask[q], rows_set[q] = row, True
        assert covered.all(), f"batch {bi}: tokens that belong to no sequence"
        assert len(batch.label_ids) == sum(
            len(seqs[r][b].ids) - seqs[r][b].label_start
            for r in set(batch.seq_record.tolist())
            for b in range(len(seqs[r]))
        )
        if check_mask:
            np.testing.assert_array_equal(packed_mask(batch), expect_mask)
    # scatter map: a bijection onto (record, slot)
    assert sorted(seen) == [(r, b) for r in range(n) for b in range(len(seqs[r]))]
    # deterministic order: bucket descending, record ascending
    assert order == sorted(range(n), key=lambda r: (-segment_bucket(seg_len[r]), r))
    # greedy: no batch could have taken the next batch's first segment
    for a, b in zip(batches, batches[1:]):
        nxt = seg_len[int(b.seq_record[0])]
        assert a.n_tokens + nxt > budget or (max_segments is not None and a.n_segments >= max_segments)


def assert_same_batches(a: list[PackedBatch], b: list[PackedBatch]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for f in dataclasses.fields(PackedBatch):
            u, v = getattr(x, f.name), getattr(y, f.name)
            assert u.dtype == v.dtype, f.name
            np.testing.assert_array_equal(u, v, err_msg=f.name)


# --------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seqs=corpora,
    slack=st.integers(0, 60),
    max_segments=st.one_of(st.none(), st.integers(1, 4)),
    share=st.booleans(),
)
def test_plan_properties(seqs: list[list[TokSeq]], slack: int, max_segments: int | None, share: bool) -> None:
    longest = max((seg_len_of(g, expected_prefix(g, share)) for g in seqs), default=0)
    budget = max(longest, 1) + slack
    ref = plan_batches(
        seqs, batch_tokens=budget, max_segments=max_segments, share_prefix=share, impl="python"
    )
    check_plan(seqs, ref, budget, max_segments, share)
    if plan.have_cpp():
        cpp = plan_batches(
            seqs, batch_tokens=budget, max_segments=max_segments, share_prefix=share, impl="cpp"
        )
        assert_same_batches(ref, cpp)
        auto = plan_batches(seqs, batch_tokens=budget, max_segments=max_segments, share_prefix=share)
        assert_same_batches(ref, auto)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seqs=ragged_corpora,
    slack=st.integers(0, 60),
    max_segments=st.one_of(st.none(), st.integers(1, 4)),
    share=st.booleans(),
)
def test_plan_properties_n_completions(
    seqs: list[list[TokSeq]], slack: int, max_segments: int | None, share: bool
) -> None:
    """A prompt with N completions, N = 1..64 differing between records: the same contract, and
    the C++ planner equals the Python one."""
    longest = max((seg_len_of(g, expected_prefix(g, share)) for g in seqs), default=0)
    budget = max(longest, 1) + slack
    ref = plan_batches(
        seqs, batch_tokens=budget, max_segments=max_segments, share_prefix=share, impl="python"
    )
    check_plan(seqs, ref, budget, max_segments, share, check_mask=sum(map(len, seqs)) < 80)
    if plan.have_cpp():
        cpp = plan_batches(
            seqs, batch_tokens=budget, max_segments=max_segments, share_prefix=share, impl="cpp"
        )
        assert_same_batches(ref, cpp)
        if seqs:
            out = scatter_scores(cpp, [b.seq_record * 100.0 + plan.seq_slots(b) for b in cpp], len(seqs))
            want = np.full((len(seqs), max(map(len, seqs))), np.nan)
            for r, g in enumerate(seqs):
                want[r, : len(g)] = r * 100.0 + np.arange(len(g))
            np.testing.assert_array_equal(out, want)


@needs_cpp
@settings(max_examples=40, deadline=None)
@given(seqs=st.lists(record(), min_size=20, max_size=80), budget_extra=st.integers(0, 200))
def test_cpp_matches_python_larger(seqs: list[list[TokSeq]], budget_extra: int) -> None:
    budget = max(max(seg_len_of(g, expected_prefix(g, True)) for g in seqs), 1) + budget_extra
    ref = plan_batches(seqs, batch_tokens=budget, impl="python")
    cpp = plan_batches(seqs, batch_tokens=budget, impl="cpp")
    assert_same_batches(ref, cpp)
    check_plan(seqs, cpp, budget, None, True, check_mask=False)


@needs_cpp
@settings(max_examples=25, deadline=None)
@given(chunks=st.lists(st.lists(record(), min_size=1, max_size=30), min_size=1, max_size=4))
def test_workspace_reuse_matches_fresh_plans(chunks: list[list[list[TokSeq]]]) -> None:
    """Planning chunk after chunk into one workspace (buffers grown or reused, of any earlier
    size) gives the same batches as fresh planning, chunk by chunk."""
    ws = plan.PlanWorkspace()
    for seqs in chunks:
        budget = max(max(seg_len_of(g, expected_prefix(g, True)) for g in seqs), 1) + 7
        flat = flatten_seqs(seqs)
        fresh = plan_batches_flat(**flat, batch_tokens=budget, impl="cpp")
        reused = plan_batches_flat(**flat, batch_tokens=budget, impl="cpp", workspace=ws)
        assert_same_batches(fresh, reused)
        assert_same_batches(plan_batches(seqs, batch_tokens=budget, impl="python"), reused)
    assert ws.nbytes > 0


@needs_cpp
def test_workspace_semantics() -> None:
    rng = np.random.default_rng(0)
    big = [[TokSeq(rng.integers(0, 50, 40).tolist(), 10) for _ in range(N_SLOTS)] for _ in range(8)]
    small = big[5:7]  # other records than the first plan starts with
    ws = plan.PlanWorkspace()
    first = plan_batches_flat(**flatten_seqs(big), batch_tokens=10_000, impl="cpp", workspace=ws)
    buf = ws.buffers["input_ids"]
    assert len(buf) >= first[0].n_tokens and np.shares_memory(first[0].input_ids, buf)
    snapshot = first[0].input_ids.copy()
    # a smaller plan reuses the same buffer (no reallocation) and overwrites the earlier views
    second = plan_batches_flat(**flatten_seqs(small), batch_tokens=10_000, impl="cpp", workspace=ws)
    assert ws.buffers["input_ids"] is buf and np.shares_memory(second[0].input_ids, buf)
    assert not np.array_equal(first[0].input_ids[: second[0].n_tokens], snapshot[: second[0].n_tokens])
    # unusable entries (wrong dtype, read-only, too small) are replaced, never written through
    ro = np.zeros(10**6, dtype=np.int32)
    ro.flags.writeable = False
    ws.buffers.update(
        position_ids=np.zeros(10**6, dtype=np.int64), label_ids=ro, label_pos=np.zeros(1, np.int32)
    )
    again = plan_batches_flat(**flatten_seqs(big), batch_tokens=10_000, impl="cpp", workspace=ws)
    assert_same_batches(plan_batches(big, batch_tokens=10_000, impl="python"), again)
    assert ws.buffers["position_ids"].dtype == np.int32 and ws.buffers["label_ids"] is not ro
    assert not ro.any()
    with pytest.raises(ValueError, match="workspace needs the C\\+\\+ planner"):
        plan_batches_flat(**flatten_seqs(big), batch_tokens=10_000, impl="python", workspace=ws)
    with pytest.raises(TypeError, match="workspace must be a dict"):
        plan._core.plan_batches(*flatten_seqs(big).values(), batch_tokens=10_000, workspace=[1])


def test_prefix_sharing_is_used_and_saves_tokens() -> None:
    prompt = [3, 1, 4, 1, 5]
    seqs = [[TokSeq(prompt + [b, 9, b], 5) for b in range(6)] for _ in range(3)]
    for impl in ("python", "cpp") if plan.have_cpp() else ("python",):
        shared = plan_batches(seqs, batch_tokens=200, impl=impl)
        flat = plan_batches(seqs, batch_tokens=200, share_prefix=False, impl=impl)
        assert shared[0].prefix_len.tolist() == [5, 5, 5]
        assert flat[0].prefix_len.tolist() == [0, 0, 0]
        st_shared, st_flat = plan_stats(shared), plan_stats(flat)
        assert st_shared["useful_tokens"] == st_flat["useful_tokens"] == 3 * 6 * 8
        assert st_shared["packed_tokens"] == 3 * (5 + 6 * 3)
        assert st_shared["prefix_savings"] == 3 * 5 * 5 and st_flat["prefix_savings"] == 0
        assert st_shared["n_labels"] == 3 * 6 * 3


# --------------------------------------------------------------------------------------------
# Edge cases
# --------------------------------------------------------------------------------------------


def _both(seqs: list[list[TokSeq]], budget: int, **kw: object) -> list[PackedBatch]:
    ref = plan_batches(seqs, batch_tokens=budget, impl="python", **kw)  # type: ignore[arg-type]
    if plan.have_cpp():
        assert_same_batches(ref, plan_batches(seqs, batch_tokens=budget, impl="cpp", **kw))  # type: ignore[arg-type]
    check_plan(seqs, ref, budget, kw.get("max_segments"), kw.get("share_prefix", True))  # type: ignore[arg-type]
    return ref


def test_identical_responses_give_empty_branches() -> None:
    seqs = [[TokSeq([1, 2, 3, 4], 2) for _ in range(6)]]
    (b,) = _both(seqs, 4)
    assert b.n_tokens == 4 and b.prefix_len.tolist() == [4]
    assert b.branch_offsets.tolist() == [4] * 7
    # every label predicted inside the prefix, the same flat positions for all six
    assert b.label_pos.tolist() == [1, 2] * 6


def test_prefix_covering_a_whole_response() -> None:
    seqs = [[TokSeq([1, 2, 3], 2)] + [TokSeq([1, 2, 3, 7, b], 3) for b in range(5)]]
    (b,) = _both(seqs, 100)
    assert b.prefix_len.tolist() == [3]
    start, end = branch_bounds(b)
    assert (end - start).tolist() == [0, 2, 2, 2, 2, 2]
    assert b.label_pos[b.label_seq == 0].tolist() == [1]
    # the first branch label of slot 1 (token 3) is predicted by the last prefix token
    assert b.label_pos[b.label_seq == 1].tolist() == [2, int(start[1])]


def test_empty_answer_after_truncation_and_one_token_prompts() -> None:
    seqs = [
        [
            TokSeq([0, 5, 6], 3),
            TokSeq([0, 5], 1),
            TokSeq([0], 1),
            TokSeq([0, 7], 1),
            TokSeq([0], 1),
            TokSeq([0, 4], 1),
        ],
        [TokSeq([2], 1) for _ in range(6)],
    ]
    batches = _both(seqs, 10)
    assert plan_stats(batches)["n_labels"] == 3


def test_mask_first_consistency() -> None:
    agree = [[TokSeq([9, 9, 1, b], 4, 3, True) for b in range(6)]]
    (b,) = _both(agree, 100)
    assert b.prefix_len.tolist() == [3] and b.key_valid.tolist() == [False] + [True] * 8
    disagree = [[TokSeq([9, 9, 1, b], 4, 3, b == 0) for b in range(6)]]
    (b,) = _both(disagree, 100)
    assert b.prefix_len.tolist() == [0]  # sharing token 0 would be inexact
    start, _ = branch_bounds(b)
    assert b.key_valid[start].tolist() == [False, True, True, True, True, True]


def test_no_records() -> None:
    assert _both([], 1) == []
    assert plan_stats([])["n_batches"] == 0
    assert scatter_scores([], [], 0).shape == (0, 0)  # no records: no slot axis either


def test_budget_and_segment_caps() -> None:
    seqs = [[TokSeq([r, b], 1) for b in range(6)] for r in range(10)]  # 7 tokens per segment
    assert [b.n_segments for b in _both(seqs, 14)] == [2] * 5
    assert [b.n_segments for b in _both(seqs, 1000, max_segments=3)] == [3, 3, 3, 1]


def test_buckets() -> None:
    assert [segment_bucket(n) for n in (0, 1, 2, 3, 4, 5, 6, 8, 11, 12)] == [-1, 0, 2, 3, 4, 4, 5, 6, 6, 7]
    # a long segment goes first, ties in record order
    seqs = [[TokSeq([r] * n, 1) for _ in range(6)] for r, n in enumerate([2, 30, 2, 30])]
    order = [int(b.seq_record[0]) for b in _both(seqs, 30)]
    assert order == [1, 3, 0]


def test_scatter_scores_roundtrip_and_errors() -> None:
    seqs = [[TokSeq([r, b, 1], 2) for b in range(6)] for r in range(7)]
    batches = plan_batches(seqs, batch_tokens=20)
    scores = [b.seq_record * 10.0 + np.arange(len(b.seq_record)) % 6 for b in batches]
    out = scatter_scores(batches, scores, 7)
    np.testing.assert_array_equal(out, np.arange(7)[:, None] * 10.0 + np.arange(6)[None, :])
    with pytest.raises(ValueError, match="record 7 slot 0 got 0 scores"):
        scatter_scores(batches, scores, 8)
    with pytest.raises(ValueError, match="got scores for"):
        scatter_scores(batches, scores[:-1], 7)
    with pytest.raises(ValueError, match="scores for"):
        scatter_scores(batches, [s[:-1] for s in scores], 7)
    with pytest.raises(ValueError, match="got 2 scores"):
        scatter_scores(batches + batches[:1], scores + scores[:1], 7)


# --------------------------------------------------------------------------------------------
# Bad input: same one-line message from both implementations
# --------------------------------------------------------------------------------------------

GOOD = [TokSeq([1, 2, 3], 1) for _ in range(6)]


@pytest.mark.parametrize(
    ("bad", "kw", "message"),
    [
        (TokSeq([1, 2, 3], 0), {}, "record 1 slot 2: label_start 0 out of range [1, 3]"),
        (TokSeq([1, 2, 3], 4), {}, "record 1 slot 2: label_start 4 out of range [1, 3]"),
        (TokSeq([1, 2, 3], 3, 3), {}, "record 1 slot 2: pool_index 3 out of range [0, 3) or -1"),
        (TokSeq([1, 2, 3], 3, -2), {}, "record 1 slot 2: pool_index -2 out of range [0, 3) or -1"),
        (TokSeq([1, -4, 3], 1), {}, "record 1 slot 2: token id -4 out of range [0, None)"),
        (TokSeq([1, 2, 50], 1), {"vocab_size": 50}, "record 1 slot 2: token id 50 out of range [0, 50)"),
        (
            TokSeq([1, 2, 3] * 10, 1),
            {},
            "record 1: its packed segment has 30 tokens, more than batch_tokens=20 (the longest segment has 30 tokens; use batch_tokens >= 30)",
        ),
    ],
)
@pytest.mark.parametrize("impl", IMPLS)
def test_bad_input(bad: TokSeq, kw: dict, message: str, impl: str) -> None:
    seqs = [GOOD, GOOD[:2] + [bad] + GOOD[3:]]
    with pytest.raises(ValueError) as e:
        plan_batches(seqs, batch_tokens=20, impl=impl, **kw)  # type: ignore[arg-type]
    assert str(e.value).startswith(message)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("impl", IMPLS)
def test_bad_budget_and_shape(impl: str) -> None:
    with pytest.raises(ValueError, match="batch_tokens must be >= 1"):
        plan_batches([GOOD], batch_tokens=0, impl=impl)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="record 1: expected 1 to 64 sequences, got 0"):
        plan_batches([GOOD, []], batch_tokens=100, impl=impl)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="record 0: expected 1 to 64 sequences, got 65"):
        plan_batches([GOOD * 10 + GOOD[:5]], batch_tokens=1000, impl=impl)  # type: ignore[arg-type]
    assert plan_batches([GOOD[:5], GOOD[:1]], batch_tokens=100, impl=impl)[0].seg_seqs.tolist() == [0, 5, 6]
    with pytest.raises(ValueError, match="impl must be"):
        plan_batches([GOOD], batch_tokens=100, impl="fast")  # type: ignore[arg-type]


@pytest.mark.parametrize("impl", IMPLS)
def test_flat_rejects_malformed_buffers(impl: str) -> None:
    f = flatten_seqs([GOOD, GOOD])

    def call(**over: object) -> None:
        plan_batches_flat(**{**f, **over}, impl=impl, batch_tokens=100)  # type: ignore[arg-type]

    call()  # the unmodified buffers plan fine
    bad_off = f["offsets"].copy()
    bad_off[3] = bad_off[5]
    with pytest.raises(ValueError, match="non-decreasing"):
        call(offsets=bad_off)
    with pytest.raises(ValueError, match=r"offsets\[-1\] = 36 but ids has 35 tokens"):
        call(ids=f["ids"][:-1])
    with pytest.raises(ValueError, match=r"offsets\[0\] must be 0"):
        call(offsets=f["offsets"] + 1)
    with pytest.raises(ValueError, match=r"label_start must hold one entry per sequence \(11\), got 12"):
        call(offsets=f["offsets"][:-1], ids=f["ids"][: f["offsets"][-2]])
    with pytest.raises(ValueError, match=r"group_offsets must run from 0 to the number of sequences \(12\)"):
        call(group_offsets=np.array([0, 6, 11]))
    with pytest.raises(ValueError, match=r"group_offsets must be non-decreasing \(at 1\)"):
        call(group_offsets=np.array([0, 13, 12]))
    with pytest.raises(ValueError, match="label_start must hold"):
        call(label_start=f["label_start"][:-1])
    with pytest.raises(ValueError, match="mask_first must hold"):
        call(mask_first=f["mask_first"][1:])
    with pytest.raises(ValueError, match="must be 1-D"):
        call(ids=f["ids"].reshape(6, 6))
    bad_ls = f["label_start"].copy()
    bad_ls[7] = 0
    with pytest.raises(ValueError, match=r"record 1 slot 1: label_start 0 out of range \[1, 3\]"):
        call(label_start=bad_ls)


@needs_cpp
def test_core_rejects_lossy_dtypes() -> None:
    """The C++ binding's own dtype rule (the shape / offset checks run for both impls above)."""
    f = flatten_seqs([GOOD, GOOD])

    def call(**over: object) -> None:
        plan_batches_flat(**{**f, **over}, impl="cpp", batch_tokens=100)  # type: ignore[arg-type]

    with pytest.raises(TypeError, match="ids must have dtype int32, got int64"):
        call(ids=f["ids"].astype(np.int64))
    with pytest.raises(TypeError, match="pool_index must have dtype int32, got float64"):
        call(pool_index=f["pool_index"].astype(np.float64))
    with pytest.raises(ValueError, match="max_segments must be >= 0"):
        plan_batches_flat(**f, batch_tokens=100, max_segments=-1, impl="cpp")
    with pytest.raises(ValueError, match="batch_tokens must be < 2\\*\\*31"):
        plan_batches_flat(**f, batch_tokens=2**31, impl="cpp")
    # bool mask_first and int16 ids are safe casts: accepted
    call(mask_first=f["mask_first"].astype(bool), ids=f["ids"].astype(np.int16))


@settings(max_examples=40, deadline=None)
@given(seqs=corpora, share=st.booleans())
def test_segment_lengths_match_plan(seqs: list[list[TokSeq]], share: bool) -> None:
    lens = plan.segment_lengths(seqs, share_prefix=share)
    assert lens.tolist() == [seg_len_of(g, expected_prefix(g, share)) for g in seqs]
    budget = max(int(lens.max()) if len(lens) else 1, 1)
    plan_batches(seqs, batch_tokens=budget, share_prefix=share)  # the max is always a valid budget
