"""Comparing paths: each path's RM-Bench matrices, and against a base path the max |Δ| of the
scores and the agreement on decisive chosen-vs-rejected pairs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from rmbench_fast.benchmarks.rmbench.metrics import compute_metrics

DECISIVE_REL_TOL = 1e-4  # a pair is decisive when |chosen - rejected| > tol * (1 + |chosen| + |rejected|)


def decisive_agreement(a: np.ndarray, b: np.ndarray, rel_tol: float = DECISIVE_REL_TOL) -> dict[str, Any]:
    """Agreement of two paths' chosen-vs-rejected outcomes over the 9 pairs of each record.

    A pair (chosen style i, rejected style j) is decisive for a path when
    |c_i − r_j| > rel_tol · (1 + |c_i| + |r_j|); the agreement is the share of pairs decisive in
    both whose winner is the same."""

    def margins(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c, r = s[:, :3, None], s[:, None, 3:]
        return c - r, rel_tol * (1 + np.abs(c) + np.abs(r))

    da, ta = margins(a)
    db, tb = margins(b)
    dec_a, dec_b = np.abs(da) > ta, np.abs(db) > tb
    both = dec_a & dec_b
    same = (np.sign(da) == np.sign(db)) & both
    n_both = int(both.sum())
    return {
        "pairs": int(da.size),
        "decisive_both": n_both,
        "decisive_only_one": int((dec_a ^ dec_b).sum()),
        "agree": int(same.sum()),
        "agreement": float(same.sum() / n_both) if n_both else None,
        "rel_tol": rel_tol,
    }


def compare_paths(
    records: Sequence[Any], scores: dict[str, np.ndarray], base: str, activated: Sequence[str] = ()
) -> dict[str, Any]:
    """Each path's metrics, and against `base`: max |Δ|, identical matrices, decisive agreement.
    `activated`: paths whose scores went through a monotone activation (no |Δ| for them)."""
    metrics = {p: compute_metrics(records, s, resamples=0) for p, s in scores.items()}
    out: dict[str, Any] = {"metrics": {}, "versus": {}}
    for p, m in metrics.items():
        out["metrics"][p] = {
            "domains": {
                d: {k: v[k] for k in ("matrix", "hard", "normal", "easy", "score", "n")}
                for d, v in m["domains"].items()
            },
            "total": {k: m["total"].get(k) for k in ("overall", "hard", "normal", "easy")},
        }
    if base not in scores:
        return out
    mb = metrics[base]
    for p, s in scores.items():
        if p == base:
            continue
        mp = metrics[p]
        same = set(mp["domains"]) == set(mb["domains"]) and all(
            mp["domains"][d][k] == mb["domains"][d][k] for d in mb["domains"] for k in ("matrix",)
        )
        diff = np.abs(s - scores[base])
        row: dict[str, Any] = {
            "against": base,
            "matrices_identical": bool(same),
            "max_abs_diff": float(diff.max()),
            "max_rel_diff": float((diff / (1 + np.abs(scores[base]))).max()),
            "decisive_pairs": decisive_agreement(scores[base], s),
        }
        if p in activated:  # vLLM's classify: sigmoid(logit), rankings compare, values do not
            row.update(max_abs_diff=None, max_rel_diff=None, values="activation of the logit: not comparable")
        out["versus"][p] = row
    return out
