"""The attention paths over one packed batch agree with the dense masked reference, including
the CPU "split" path (prefix and branch parts merged by log-sum-exp) and its fallback."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rmbench_fast.engine.layers import attention
from rmbench_fast.engine.layers.attention import packed_attention, sdpa, split
from rmbench_fast.engine.layout import PackedLayout
from rmbench_fast.records import TokSeq
from rmbench_fast.scoring.plan import plan_batches


def _batch(mask_first: bool = False):  # noqa: ANN202
    g = torch.Generator().manual_seed(0)
    groups = []
    for prompt, lens in [(7, [3, 11, 5, 1, 9, 4]), (1, [6, 6, 2, 13, 1, 8]), (12, [0, 4, 4, 7, 2, 5])]:
        head = torch.randint(3, 90, (prompt,), generator=g).tolist()
        if mask_first:
            head = [1, 1, *head]
        seqs = []
        for n in lens:
            ids = head + torch.randint(3, 90, (n,), generator=g).tolist()
            seqs.append(TokSeq(ids=ids, label_start=len(ids), pool_index=len(ids) - 1, mask_first=mask_first))
        seqs[4] = TokSeq(
            ids=list(seqs[1].ids), label_start=len(seqs[1].ids), pool_index=0, mask_first=mask_first
        )
        groups.append(seqs)
    return plan_batches(groups, batch_tokens=4096)[0]


@pytest.mark.parametrize("n_rep", [1, 3])
@pytest.mark.parametrize("window", [None, 4])
@pytest.mark.parametrize("mask_first", [False, True])
def test_paths_match_dense(n_rep: int, window: int | None, mask_first: bool) -> None:
    batch = _batch(mask_first)
    layout = PackedLayout.from_batch(batch, torch.device("cpu"))
    T, Hk, D = batch.n_tokens, 2, 16
    g = torch.Generator().manual_seed(1)
    q = torch.randn(T, Hk * n_rep, D, generator=g, dtype=torch.float64).float()
    k = torch.randn(T, Hk, D, generator=g, dtype=torch.float64).float()
    v = torch.randn(T, Hk, D, generator=g, dtype=torch.float64).float()
    ref = packed_attention(q.double(), k.double(), v.double(), layout, window, "dense")
    valid = layout.key_valid  # a masked BOS row's own output is never read
    for impl in ("sdpa", "flex"):
        out = packed_attention(q, k, v, layout, window, impl)
        torch.testing.assert_close(out[valid].double(), ref[valid], rtol=2e-5, atol=2e-5)
    # the padded per-segment path, forced, agrees too
    padded = sdpa.sdpa_segments(q, k, v, sdpa.segment_plans(layout, layout.effective_window(window)))
    torch.testing.assert_close(padded[valid].double(), ref[valid], rtol=2e-5, atol=2e-5)


def test_split_path_is_taken_when_plain(monkeypatch: pytest.MonkeyPatch) -> None:
    if split.FLASH_CPU is None:
        pytest.skip("this torch build has no CPU flash-attention op (split path unavailable)")
    calls = []
    orig = attention.sdpa_split
    monkeypatch.setattr(attention, "sdpa_split", lambda *a: calls.append(1) or orig(*a))
    layout = PackedLayout.from_batch(_batch(), torch.device("cpu"))
    x = torch.randn(layout.n_tokens, 2, 8)
    packed_attention(x, x, x, layout, None, "sdpa")
    assert calls == [1]
    layout_masked = PackedLayout.from_batch(_batch(mask_first=True), torch.device("cpu"))
    y = torch.randn(layout_masked.n_tokens, 2, 8)
    packed_attention(y, y, y, layout_masked, None, "sdpa")
    assert calls == [1]  # a masked BOS falls back to the padded path


def _batch_with_unshared_start():  # noqa: ANN202
    """A record whose six answers share no prompt token (prefix length 0) beside usual ones."""
    g = torch.Generator().manual_seed(2)
    groups = []
    for prompt, lens in [(0, [5, 9, 2, 7, 3, 6]), (9, [4, 1, 8, 3, 10, 2])]:
        head = torch.randint(3, 90, (prompt,), generator=g).tolist()
        seqs = []
        for n in lens:
            ids = head + torch.randint(3, 90, (n,), generator=g).tolist()
            seqs.append(TokSeq(ids=ids, label_start=len(ids), pool_index=len(ids) - 1))
        groups.append(seqs)
    return plan_batches(groups, batch_tokens=4096)[0]


@pytest.mark.parametrize(
    ("dtype", "tol"), [(torch.float32, 2e-5), (torch.bfloat16, 2e-2), (torch.float16, 4e-3)]
)
@pytest.mark.parametrize("make", [_batch, _batch_with_unshared_start])
def test_split_path_gqa_in_place_matches_dense(dtype: torch.dtype, tol: float, make) -> None:  # noqa: ANN001
    """The split path reads grouped K/V heads in place (SmolLM2's 9 query heads over 3 KV heads,
    an odd head size) and merges by one fused lerp: it agrees with the fp64 dense reference
    in each dtype, also for a record with no shared prefix."""
    if split.FLASH_CPU is None:
        pytest.skip("this torch build has no CPU flash-attention op (split path unavailable)")
    batch = make()
    layout = PackedLayout.from_batch(batch, torch.device("cpu"))
    T, Hq, Hk, D = batch.n_tokens, 9, 3, 24
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(T, h, D, generator=g, dtype=torch.float64) for h in (Hq, Hk, Hk))
    ref = packed_attention(q, k, v, layout, None, "dense")
    out = split.sdpa_split(q.to(dtype), k.to(dtype), v.to(dtype), layout.segment_spans())
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)
    # the KV-head grouping is HF's repeat_kv (query head h reads KV head h // 3): a wrong grouping fails
    wrong = packed_attention(q, k[:, [1, 2, 0]], v[:, [1, 2, 0]], layout, None, "dense")
    assert (out.double() - wrong).abs().max() > 10 * tol


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("softcap", [None, 5.0])
@pytest.mark.parametrize("window", [None, 4])
@pytest.mark.parametrize("mask_first", [False, True])
def test_rows_attention_matches_dense_at_the_pooled_rows(
    mask_first: bool, window: int | None, softcap: float | None, dtype: torch.dtype
) -> None:
    """The last layer's attention at the pooled rows alone (a classifier's last layer) equals the
    dense masked reference there: pooled rows in a branch and in a prefix (an empty answer), a
    masked BOS, a window that bites, GQA, a soft-cap."""
    from rmbench_fast.engine.layers.attention.rows import rows_attention

    batch = _batch(mask_first)
    layout = PackedLayout.from_batch(batch, torch.device("cpu"))
    rows = np.asarray(batch.pool_pos, dtype=np.int64)
    assert (rows < np.asarray(batch.branch_offsets[:-1])).any()  # one pooled row lies in a prefix
    T, Hk, D = batch.n_tokens, 2, 16
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(T, h, D, generator=g, dtype=torch.float64) for h in (2 * Hk, Hk, Hk))
    ref = packed_attention(q, k, v, layout, window, "dense", softcap=softcap)[torch.from_numpy(rows)]
    got = rows_attention(q[rows].to(dtype), k.to(dtype), v.to(dtype), layout, rows, window, softcap=softcap)
    assert got.dtype == dtype
    tol = 2e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(got.double(), ref, rtol=tol, atol=tol)
    if dtype == torch.float32:  # and it is not trivially so: without the window the rows differ
        other = rows_attention(q[rows].float(), k.float(), v.float(), layout, rows, None if window else 2)
        assert not torch.allclose(other.double(), ref, atol=1e-3)
