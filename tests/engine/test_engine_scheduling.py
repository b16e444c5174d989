"""The engine's batch loop on the CPU: no host syncs in a batch, the out-of-memory back-off,
the fused reference mode (both models on one batch, kernel A's ratio) against reference-first,
and the flash decomposition against the dense reference (with a reference varlen_attn)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from rmbench_fast.engine import NativeScorer
from rmbench_fast.engine.layers import attention as attn
from rmbench_fast.engine.layers.attention import flash
from rmbench_fast.engine.layout import PackedLayout
from rmbench_fast.scoring.plan import plan_batches
from rmbench_fast.scoring.rewards import SUM, rewards_from_stats
from tests.helpers.tiny import make_tiny_model_dir, synthetic_records
from tests.helpers.varlen_ref import Aux, make_varlen

pytest.importorskip("transformers")

V = 512


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sched")
    return {
        "policy": make_tiny_model_dir(root / "policy", "llama", vocab_size=V, seed=1),
        "ref": make_tiny_model_dir(root / "ref", "qwen2", vocab_size=V, seed=2),
        "cls": make_tiny_model_dir(root / "cls", "llama", kind="classifier", vocab_size=V, seed=3),
    }


# --- no host syncs -----------------------------------------------------------------------------
_SYNCS = ("item", "tolist", "cpu", "numpy", "nonzero", "__bool__", "__int__", "__float__", "__index__")


@contextlib.contextmanager
def _no_syncs() -> Iterator[list[str]]:
    """Every Tensor method that reads a device value on the host (a sync on CUDA) raises."""
    hits: list[str] = []
    saved = {name: getattr(torch.Tensor, name) for name in _SYNCS}
    saved_nonzero = torch.nonzero

    def trap(name: str) -> Any:
        def f(*_a: Any, **_k: Any) -> Any:
            hits.append(name)
            raise AssertionError(f"host sync: Tensor.{name}")

        return f

    try:
        for name in _SYNCS:
            setattr(torch.Tensor, name, trap(name))
        torch.nonzero = trap("torch.nonzero")  # type: ignore[assignment]
        yield hits
    finally:
        for name, fn in saved.items():
            setattr(torch.Tensor, name, fn)
        torch.nonzero = saved_nonzero  # type: ignore[assignment]


def test_the_sync_trap_catches_a_sync() -> None:
    x = torch.ones(3)
    with _no_syncs() as hits, pytest.raises(AssertionError, match="host sync"):
        float(x.sum())
    assert hits == ["__float__"]


@pytest.mark.parametrize("case", ["dpo", "dpo-ref", "classifier"])
def test_score_batch_has_no_host_sync(models: dict[str, Path], case: str) -> None:
    kind = "classifier" if case == "classifier" else "dpo"
    ref = models["ref"] if case == "dpo-ref" else None
    sc = NativeScorer(
        models["cls" if kind == "classifier" else "policy"], kind=kind, ref_model_dir=ref, log=None
    )
    seqs = synthetic_records(6, vocab_size=V, kind=kind, seed=5)
    batches = plan_batches(seqs, batch_tokens=4096, vocab_size=V)
    with _no_syncs() as hits:
        out = [sc.score_batch(b) for b in batches]
    assert hits == []
    assert all(o.shape[0] == len(b.seq_record) for o, b in zip(out, batches))
    if kind == "classifier":  # the masked-BOS records take the padded sdpa plan: no sync there either
        assert sc.attention_calls["sdpa"] > 0


# --- out-of-memory back-off --------------------------------------------------------------------
def _oom_at(sc: NativeScorer, calls: set[int], error: Exception | None = None) -> list[int]:
    """Make the scorer's batch calls numbered in `calls` raise an out-of-memory error."""
    seen: list[int] = []
    real = sc._score_batch

    def flaky(batch: Any) -> torch.Tensor:
        seen.append(len(seen))
        if seen[-1] in calls:
            raise error or torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real(batch)

    sc._score_batch = flaky  # type: ignore[method-assign]
    return seen


def test_oom_backoff_keeps_scores(models: dict[str, Path]) -> None:
    seqs = synthetic_records(12, vocab_size=V, seed=9)
    clean = NativeScorer(models["policy"], kind="dpo", ref_free_mode="sum", batch_tokens=700, log=None)
    want = clean.score(seqs)
    logs: list[str] = []
    sc = NativeScorer(models["policy"], kind="dpo", ref_free_mode="sum", batch_tokens=700, log=logs.append)
    _oom_at(sc, {1, 2})
    got = sc.score(seqs)
    assert sc.stats["oom_halvings"] == 2 and sc.stats["batch_tokens"] < 700
    assert [m for m in logs if "out of memory" in m] == [
        "native: out of memory; retrying with a token budget of 350"
    ]
    # Every record scored once, and the same values as the uninterrupted run up to fp32 batching.
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # Replaying the interrupted run's batches reproduces it bit for bit.
    again = NativeScorer(models["policy"], kind="dpo", ref_free_mode="sum", batch_tokens=700, log=None)
    assert np.array_equal(again.score(seqs, replay=sc.schedule), got)
    assert again.schedule.same_as(sc.schedule)


def test_oom_backoff_tries_the_longest_record_then_gives_up(models: dict[str, Path]) -> None:
    seqs = synthetic_records(4, vocab_size=V, seed=3)
    sc = NativeScorer(models["policy"], kind="dpo", batch_tokens=100_000, log=None)
    seen = _oom_at(sc, set(range(1000)))
    with pytest.raises(torch.OutOfMemoryError, match="longest record"):
        sc.score(seqs)
    budgets = [100_000 // 2**k for k in range(1, 20)]
    longest = max(sum(len(s.ids) for s in g) for g in seqs)  # an upper bound of the packed length
    assert len(seen) <= len([b for b in budgets if b > longest]) + 2  # halvings, then exactly longest


# --- the fused reference mode --------------------------------------------------------------------
def test_reference_together_equals_reference_first(models: dict[str, Path]) -> None:
    """Both models on each batch, their logits through kernel A's fused ratio, give the same bits
    as the reference's sums first and the policy alone on the same batches."""
    seqs = synthetic_records(10, vocab_size=V, seed=4)
    together = NativeScorer(
        models["policy"], kind="dpo", ref_model_dir=models["ref"], batch_tokens=800, log=None
    )
    got = together.score(seqs)
    assert together.stats["reference_mode"] == "together"
    ref = NativeScorer(models["ref"], kind="dpo", ref_free_mode="sum", batch_tokens=800, log=None)
    ref_sums = ref.score_stats(seqs)[..., SUM]
    pol = NativeScorer(models["policy"], kind="dpo", ref_free_mode="sum", batch_tokens=800, log=None)
    pol_stats = pol.score_stats(seqs, replay=ref.schedule)
    assert np.array_equal(got, rewards_from_stats(pol_stats, "ref", ref_sums))


def test_lm_head_fused_is_close_and_recorded(models: dict[str, Path]) -> None:
    seqs = synthetic_records(4, vocab_size=V, seed=6)
    torch_head = NativeScorer(models["policy"], kind="dpo", ref_free_mode="sum", log=None)
    fused = NativeScorer(models["policy"], kind="dpo", ref_free_mode="sum", lm_head="fused", log=None)
    a, b = torch_head.score(seqs), fused.score(seqs)
    assert fused.stats["lm_head"] == "fused" and torch_head.stats["lm_head"] == "torch"
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)  # fp32 models: the same logits up to order


# --- flash: the decomposition, with a reference varlen_attn --------------------------------------


@pytest.mark.parametrize("api", ["seqused_k+gqa", "gather+expand"])
def test_flash_decomposition_matches_dense(monkeypatch: pytest.MonkeyPatch, api: str) -> None:
    names = frozenset({"return_aux", "scale", "window_size"}) | (
        {"seqused_k", "enable_gqa"} if api == "seqused_k+gqa" else set()
    )
    monkeypatch.setattr(flash, "_varlen", lambda: (make_varlen(names), Aux, names))
    monkeypatch.setattr(attn, "flash_unfit", lambda q, layout, window, softcap, k=None: None)
    g = torch.Generator().manual_seed(0)
    groups = []
    for prompt, lens in [(7, [3, 11, 5, 1, 9, 4]), (0, [6, 6, 2, 13, 1, 8]), (12, [2, 4, 4, 7, 2, 5])]:
        head = torch.randint(3, 90, (prompt,), generator=g).tolist()
        from rmbench_fast.records import TokSeq

        groups.append(
            [
                TokSeq(
                    ids=(ids := head + torch.randint(3, 90, (n,), generator=g).tolist()),
                    label_start=len(ids),
                )
                for n in lens
            ]
        )
    batch = plan_batches(groups, batch_tokens=4096)[0]
    layout = PackedLayout.from_batch(batch, torch.device("cpu"))
    T = batch.n_tokens
    q = torch.randn(T, 4, 16, generator=g)
    k, v = torch.randn(T, 2, 16, generator=g), torch.randn(T, 2, 16, generator=g)
    ref = attn.packed_attention(q.double(), k.double(), v.double(), layout, None, "dense")
    got = attn.packed_attention(q, k, v, layout, None, "flash")
    assert layout.ran["flash"] == 1
    torch.testing.assert_close(got.double(), ref, rtol=2e-5, atol=2e-5)


def test_cublas_allocation_failure_backs_off_like_oom(models: dict[str, Path]) -> None:
    """cuBLAS reports a failed workspace allocation as a RuntimeError, not OutOfMemoryError."""
    seqs = synthetic_records(12, vocab_size=V, seed=9)
    want = NativeScorer(models["policy"], kind="dpo", ref_free_mode="sum", batch_tokens=700, log=None).score(
        seqs
    )
    sc = NativeScorer(models["policy"], kind="dpo", ref_free_mode="sum", batch_tokens=700, log=None)
    cublas = RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`")
    _oom_at(sc, {1}, cublas)
    got = sc.score(seqs)
    assert sc.stats["oom_halvings"] == 1
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # Any other RuntimeError is not swallowed.
    other = NativeScorer(models["policy"], kind="dpo", ref_free_mode="sum", batch_tokens=700, log=None)
    _oom_at(other, {0}, RuntimeError("shape mismatch"))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        other.score(seqs)
