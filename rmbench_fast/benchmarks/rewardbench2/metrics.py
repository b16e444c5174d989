"""RewardBench 2 metrics: best-of-N credit, the Ties composite, per subset and overall, with
bootstrap intervals (docs/rewardbench2.md gives the formulas and their sources).

Scores arrive as one row per prompt, [n_prompts, N_max] float64, completion j of prompt p in
column j (chosen first, then rejected; NaN past the prompt's own N). The point estimates follow
allenai/reward-bench at fdc742d (PR 236) operation for operation, so they are bit-identical to
the official functions (tests/test_rewardbench2_metrics.py):

    credit_p = 1 / #{j : s_pj == max_j s_pj}  if s_p0 == max_j s_pj  else 0      (NaN anywhere -> 0)
    subset   = sum_p credit_p / n                                              (best-of-N subsets)
    Ties     = 0.30 tied_acc + 0.30 ref_acc + 0.20 pref + 0.20 pref_hard + 0.01 margin
    overall  = mean over the subsets present of their scores (the leaderboard's "Average")

Intervals: a percentile bootstrap over prompts within each subset (Ties: over prompt ids, a
ref/tied pair moving together), R replicates from `stats.stream(seed, subset, BOOTSTRAP)`; the
overall's replicate b is the mean of the subsets' replicates b.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rmbench_fast.benchmarks.rewardbench2.data import SUBSETS, TIES, Prompt
from rmbench_fast.stats import BOOTSTRAP, ci_entry, percentile_interval, stream

# The composite's weights, in the official order of addition: tied, ref, pref, pref_hard, margin.
TIES_WEIGHTS = (0.3, 0.3, 0.2, 0.2, 0.01)


def best_of_n_credit(scores: Sequence[float]) -> float:
    """1/k when scores[0] ties k-1 others at the max, 0 when it is not the max (exact float
    equality; a NaN anywhere makes the max NaN and the credit 0, as the official code does)."""
    s = np.asarray(scores, dtype=np.float64)
    top = np.max(s)
    return float(1 / np.sum(s == top)) if s[0] == top else 0.0


@dataclass(frozen=True)
class PromptStats:
    """One Ties prompt's statistics (official `sample_stats`): accurate = min(C) > max(W),
    cim = min(C) - max(W), dcm = max(C) - min(C) (None with one correct answer); with no
    correct or no incorrect completion: (False, 0, None)."""

    accurate: bool
    cim: float
    dcm: float | None


def prompt_stats(scores: Sequence[float], num_correct: int) -> PromptStats:
    # Python's max/min over the completions in order, as the official code takes them (their
    # result with a NaN depends on the order, so the order is kept).
    c = [float(x) for x in scores[:num_correct]]
    w = [float(x) for x in scores[num_correct:]]
    if not c or not w:
        return PromptStats(False, 0.0, None)
    best_c, worst_c, best_w = max(c), min(c), max(w)
    return PromptStats(worst_c > best_w, worst_c - best_w, best_c - worst_c if len(c) > 1 else None)


def _split_ties(
    prompts: Sequence[Prompt], rows: Sequence[Sequence[float]]
) -> tuple[dict[int, PromptStats], dict[int, PromptStats]]:
    """(ref, tied): prompt id -> stats, each dict in order of first appearance (the official
    `results[sample_type][prompt_id]` order)."""
    ref: dict[int, PromptStats] = {}
    tied: dict[int, PromptStats] = {}
    for p, row in zip(prompts, rows):
        kind, pid = p.ties_key  # type: ignore[misc]
        (ref if kind == "ref" else tied)[pid] = prompt_stats(row[: len(p.completions)], p.num_correct)
    return ref, tied


def ties_components(prompts: Sequence[Prompt], rows: Sequence[Sequence[float]]) -> dict[str, Any]:
    """The Ties composite and its parts over `prompts` (all Ties) with their score rows.

    Sets and dicts are built in the official order (prompts in file order, ids by first
    appearance), so every mean sums in the same order and the result is bit-identical."""
    ref, tied = _split_ties(prompts, rows)
    ref_acc = np.mean([s.accurate for s in ref.values()]) if ref else 0
    tied_acc = np.mean([s.accurate for s in tied.values()]) if tied else 0
    both = set(ref.keys()) & set(tied.keys())
    dcm_zero = sum(1 for q in both if tied[q].dcm == 0)
    if both:
        usable = [q for q in both if tied[q].dcm is not None]
        # np.mean([]) is NaN (with a RuntimeWarning) when no tied prompt has two correct answers,
        # and so is the official composite; kept for parity (docs: quirks).
        with np.errstate(invalid="ignore", divide="ignore"):
            pref = _mean([tied[q].cim > tied[q].dcm for q in usable])  # type: ignore[operator]
            pref_hard = _mean([min(ref[q].cim, tied[q].cim) > tied[q].dcm for q in usable])  # type: ignore[operator]
        ratios = [min(ref[q].cim, tied[q].cim) / tied[q].dcm for q in usable if tied[q].dcm > 0]  # type: ignore[operator]
        margin = np.mean([math.tanh(r - 1) for r in ratios]) if ratios else 0
    else:
        pref = pref_hard = margin = 0
    w = TIES_WEIGHTS
    score = w[0] * tied_acc + w[1] * ref_acc + w[2] * pref + w[3] * pref_hard + w[4] * margin
    return {
        "score": float(score),
        "tied_accuracy": float(tied_acc),
        "ref_accuracy": float(ref_acc),
        "correctness_preferred": float(pref),
        "correctness_preferred_hard": float(pref_hard),
        "margin": float(margin),
        "n_ref": len(ref),
        "n_tied": len(tied),
        "n_pairs": len(both),
        "dcm_zero": dcm_zero,  # tied prompts whose correct answers all scored alike (HEAD differs)
    }


def _mean(values: list[bool]) -> float:
    if not values:
        return float("nan")
    return float(np.mean(values))


# --------------------------------------------------------------------------------------------
# Bootstrap
# --------------------------------------------------------------------------------------------


def _weighted(k: np.ndarray, mask: np.ndarray, values: np.ndarray, empty: float) -> np.ndarray:
    """Per replicate, the mean of values over the resampled ids in mask: [R]; `empty` where none."""
    den = k @ mask.astype(np.float64)
    num = k @ (mask * values).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), empty)


def ties_bootstrap(
    prompts: Sequence[Prompt], rows: Sequence[Sequence[float]], resamples: int, rng: np.random.Generator
) -> np.ndarray:
    """R replicates of the Ties composite, resampling prompt ids (a ref/tied pair together):
    replicate b weighs id u by K[b, u], its count in the resample, in every mean of the formula."""
    ref, tied = _split_ties(prompts, rows)
    ids = sorted(set(ref) | set(tied))
    n = len(ids)
    has_r = np.array([u in ref for u in ids])
    has_t = np.array([u in tied for u in ids])
    acc_r = np.array([ref[u].accurate if u in ref else False for u in ids], dtype=np.float64)
    acc_t = np.array([tied[u].accurate if u in tied else False for u in ids], dtype=np.float64)
    both = has_r & has_t
    usable = np.array([bool(b) and tied[u].dcm is not None for u, b in zip(ids, both)])
    pref = np.zeros(n)
    hard = np.zeros(n)
    pos = np.zeros(n, dtype=bool)
    marg = np.zeros(n)
    for i, u in enumerate(ids):
        if usable[i]:
            d, cm = tied[u].dcm, min(ref[u].cim, tied[u].cim)
            pref[i], hard[i] = tied[u].cim > d, cm > d  # type: ignore[operator]
            if d > 0:  # type: ignore[operator]
                pos[i], marg[i] = True, math.tanh(cm / d - 1)  # type: ignore[operator]
    idx = rng.integers(0, n, size=(resamples, n))
    k = np.zeros((resamples, n))
    np.add.at(k, (np.arange(resamples)[:, None], idx), 1.0)
    has_both = (k @ both.astype(np.float64)) > 0
    # As the point estimate: 0 without a ref/tied pair, NaN with pairs but no usable dcm.
    p_pref = np.where(has_both, _weighted(k, usable, pref, np.nan), 0.0)
    p_hard = np.where(has_both, _weighted(k, usable, hard, np.nan), 0.0)
    w = TIES_WEIGHTS
    return (
        w[0] * _weighted(k, has_t, acc_t, 0.0)
        + w[1] * _weighted(k, has_r, acc_r, 0.0)
        + w[2] * p_pref
        + w[3] * p_hard
        + w[4] * np.where(has_both, _weighted(k, pos, marg, 0.0), 0.0)
    )


def credit_bootstrap(credits: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """R replicates of the mean credit over prompts resampled with replacement: [R]."""
    n = len(credits)
    idx = rng.integers(0, n, size=(resamples, n))
    return credits[idx].mean(axis=1)


def _interval(boot: np.ndarray, point: float, resamples: int, seed: int) -> dict[str, Any] | None:
    finite = boot[np.isfinite(boot)]
    if not math.isfinite(point) or len(finite) == 0:
        return None
    return ci_entry(*percentile_interval(finite, point), resamples, seed)


# --------------------------------------------------------------------------------------------
# Everything
# --------------------------------------------------------------------------------------------


def compute_metrics(
    prompts: Sequence[Prompt], scores: np.ndarray, *, resamples: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """{"subsets": {name: {...}}, "overall": {...}, "credits": [n]} for scores [n, N_max].

    Each subset: "score", "n_prompts" and "ci" (None with resamples 0 or a NaN score); Ties
    also its components. "overall": the mean of the subsets present, "n_subsets", "ci".
    `credits` is every prompt's best-of-N credit (computed for Ties too, as run_v2.py does)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] != len(prompts):
        raise ValueError(f"expected scores [{len(prompts)}, N], got {scores.shape}")
    credits = np.array([best_of_n_credit(scores[i, : len(p.completions)]) for i, p in enumerate(prompts)])
    subsets: dict[str, dict[str, Any]] = {}
    boots: list[np.ndarray] = []
    for name in SUBSETS:
        idx = [i for i, p in enumerate(prompts) if p.subset == name]
        if not idx:
            continue
        rng = stream(seed, name, BOOTSTRAP)
        if name == TIES:
            sub = [prompts[i] for i in idx]
            rows = [scores[i] for i in idx]
            entry = ties_components(sub, rows)
            boot = ties_bootstrap(sub, rows, resamples, rng) if resamples else np.zeros(0)
        else:
            # Python's sum in file order, then / n: run_v2.py's sum(results) / len(results).
            entry = {"score": sum(float(credits[i]) for i in idx) / len(idx)}
            boot = credit_bootstrap(credits[idx], resamples, rng) if resamples else np.zeros(0)
        entry["n_prompts"] = len(idx)
        entry["ci"] = _interval(boot, entry["score"], resamples, seed) if resamples else None
        subsets[name] = entry
        boots.append(boot)
    vals = [subsets[s]["score"] for s in subsets]
    overall = {"score": float(sum(vals) / len(vals)) if vals else float("nan"), "n_subsets": len(vals)}
    overall["ci"] = (
        _interval(np.mean(boots, axis=0), overall["score"], resamples, seed) if resamples and boots else None
    )
    return {"subsets": subsets, "overall": overall, "credits": credits.tolist()}
