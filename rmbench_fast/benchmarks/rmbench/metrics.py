"""RM-Bench accuracies (SPEC §2): the 3x3 style-substance matrix, hard/normal/easy, totals."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rmbench_fast.records import METRIC_DOMAINS, N_STYLES, Record, domain_groups
from rmbench_fast.results.stats import bootstrap_intervals, record_wins


def style_matrix(chosen: np.ndarray, rejected: np.ndarray) -> np.ndarray:
    """The 3x3 style-substance matrix.

    M[i, j] = (1/N) · #{n : chosen[n, i] > rejected[n, j]}   (strict: a tie is a miss)

    chosen, rejected: [N, 3] scores in style order (concise, detailed, markdown).
    Returns float64 [3, 3]; rows are chosen styles, columns rejected styles.
    """
    chosen = np.asarray(chosen, dtype=np.float64)
    rejected = np.asarray(rejected, dtype=np.float64)
    if chosen.ndim != 2 or chosen.shape[1] != N_STYLES or chosen.shape != rejected.shape:
        raise ValueError(f"expected two [N, {N_STYLES}] arrays, got {chosen.shape} and {rejected.shape}")
    if len(chosen) == 0:
        raise ValueError("no records to score")
    wins = chosen[:, :, None] > rejected[:, None, :]  # [N, 3, 3]
    return wins.sum(axis=0) / len(chosen)


def accuracies(matrix: np.ndarray) -> dict[str, float]:
    """hard = Σ strict upper triangle / 3, normal = mean(diagonal), easy = Σ strict lower triangle / 3.

    Upper triangle: the chosen response has the plainer style than the rejected one (hard).
    """
    n_off = N_STYLES * (N_STYLES - 1) / 2
    return {
        "hard": float(np.triu(matrix, 1).sum() / n_off),
        "normal": float(np.diag(matrix).mean()),
        "easy": float(np.tril(matrix, -1).sum() / n_off),
    }


def domain_metrics(chosen: np.ndarray, rejected: np.ndarray) -> dict[str, Any]:
    """Matrix, accuracies and `score` = mean(hard, normal, easy) for one group of records."""
    return matrix_metrics(style_matrix(chosen, rejected), len(chosen))


def matrix_metrics(m: np.ndarray, n: int) -> dict[str, Any]:
    """A domain's figures from its 3x3 matrix M [3, 3] over n records: hard / normal / easy
    (accuracies) and score = mean(hard, normal, easy). Scalar and generative runs share it."""
    acc = accuracies(m)
    return {
        "matrix": m.tolist(),
        **acc,
        "score": (acc["hard"] + acc["normal"] + acc["easy"]) / 3,
        "n": n,
    }


def leaderboard_total(domains: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The totals over the domains' figures (in `domains`' order): overall = mean of the domain
    scores, hard / normal / easy = means over domains, the domains covered and `complete`."""
    order = list(domains)
    mean = {k: float(np.mean([domains[d][k] for d in order])) for k in ("score", "hard", "normal", "easy")}
    missing = [d for d in METRIC_DOMAINS if d not in domains]
    return {
        "overall": mean["score"],
        "hard": mean["hard"],
        "normal": mean["normal"],
        "easy": mean["easy"],
        "domains": order,
        "missing_domains": missing,
        "complete": not missing,
    }


def compute_metrics(
    records: Sequence[Record], scores: np.ndarray, *, resamples: int = 10000, seed: int = 0
) -> dict[str, Any]:
    """Per-domain metrics, leaderboard totals and their 95% bootstrap intervals.

    records: N records; scores: [N, 6] in slot order (chosen 0..2, rejected 0..2).
    Domains group by prefix: safety-refuse and safety-response are pooled into 'safety'.
    Totals: overall = mean of domain scores; hard/normal/easy = mean over domains. The total
    says which domains it covers and whether it is complete (all four present).

    Intervals (rmbench_fast.results.stats; `resamples=0` leaves them out): records are resampled with
    replacement within each domain (pooled safety as one domain), `resamples` times, from a
    stream keyed by (`seed`, domain); a total's replicate is the mean over domains of their
    independent replicates. Each is a percentile interval widened to contain its point estimate.
    They sit beside the figures they belong to:

        domains.<d>.ci.{hard, normal, easy, score} = {"lo", "hi", "level": 0.95,
                                                      "method": "bootstrap", "resamples", "seed"}
        total.ci.{overall, hard, normal, easy}      = (the same)

    The point estimates do not depend on `resamples` or `seed`.
    """
    if resamples < 0:
        raise ValueError(f"resamples must be >= 0, got {resamples}")
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (len(records), 2 * N_STYLES):
        raise ValueError(f"scores must be [{len(records)}, 6], got {scores.shape}")
    groups = domain_groups(r.domain for r in records)
    domains = {d: domain_metrics(scores[g, :N_STYLES], scores[g, N_STYLES:]) for d, g in groups.items()}
    out_total = leaderboard_total(domains)
    if resamples > 0:
        wins = {d: record_wins(scores[g, :N_STYLES], scores[g, N_STYLES:]) for d, g in groups.items()}
        domain_ci, total_ci = bootstrap_intervals(wins, domains, out_total, resamples=resamples, seed=seed)
        for d in groups:
            domains[d]["ci"] = domain_ci[d]
        out_total["ci"] = total_ci
    return {"domains": domains, "total": out_total}
