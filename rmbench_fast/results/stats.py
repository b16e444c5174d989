"""Uncertainty for RM-Bench accuracies: bootstrap intervals, paired tests, Holm correction.

Every accuracy of SPEC §2 is a mean over records of a per-record value. For record n with
chosen scores c[n, i] and rejected scores r[n, j], let w[n, i, j] = 1 if c[n, i] > r[n, j]
(strict) else 0. Then, since M[i, j] = (1/N) Σ_n w[n, i, j],

    hard_n   = (w[n,0,1] + w[n,0,2] + w[n,1,2]) / 3
    normal_n = (w[n,0,0] + w[n,1,1] + w[n,2,2]) / 3
    easy_n   = (w[n,1,0] + w[n,2,0] + w[n,2,1]) / 3
    score_n  = (hard_n + normal_n + easy_n) / 3

and hard = (1/N) Σ_n hard_n, and so on: the domain's figures are means over records, so the
bootstrap resamples records (rows). The code carries the integer numerators (`record_wins`:
[N, 3] win counts in the upper triangle, diagonal and lower triangle, each 0..3), which keeps
resampled sums and sign-flip statistics exact; `figures` divides them out.

**Bootstrap interval** (per domain d with N_d records, R resamples): draw R multisets of N_d
record indices with replacement (as counts K[b, n], Σ_n K[b, n] = N_d), take
θ*_b = (1/N_d) Σ_n K[b, n] v[n] for each column, and report the percentile interval
[q_{α/2}(θ*), q_{1-α/2}(θ*)] with α = 1 - level. The interval is then widened, if needed, to
contain the point estimate (lo = min(lo, θ̂), hi = max(hi, θ̂)), so it never excludes it.
Totals (mean over domains) use the same replicate index b across independent per-domain
resamples: total*_b = mean_d θ*_{d,b}.

**Paired comparison** of runs A and B on the same records: per-record differences
δ_n = v_B[n] - v_A[n] (v = record_wins, so δ ∈ {-3..3}^3). The paired-bootstrap interval resamples δ as above. The two-sided
p-value is a sign-flip (paired permutation) test: under H0 (A and B exchangeable within each
record) every δ_n's sign is arbitrary, so T*_b = (1/N) Σ_n s[b, n] δ_n with s = ±1 uniform,
and p = (1 + #{b : |T*_b| ≥ |T_obs|}) / (1 + R). Identical runs give δ = 0 and p = 1.

Random streams are keyed by (seed, domain name, purpose), so a domain's interval does not
depend on which other domains were scored, and the same seed always gives the same numbers.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rmbench_fast.records import N_STYLES

LEVEL = 0.95
METHOD = "bootstrap"
# Columns of `figures`.
RECORD_COLUMNS = ("hard", "normal", "easy", "score")
# Total keys and the record column each is the mean over domains of.
TOTAL_KEYS = {"overall": "score", "hard": "hard", "normal": "normal", "easy": "easy"}
# Resample matrix entries materialised at once ([chunk, N] int32 draws and int64 counts).
CHUNK_ELEMENTS = 1 << 21
# Purposes of the random streams (part of the stream key).
BOOTSTRAP, SIGN_FLIP = 0, 1


def record_wins(chosen: np.ndarray, rejected: np.ndarray) -> np.ndarray:
    """Per-record win counts: [N, 3] int64, columns (upper, diagonal, lower) of w[n], each 0..3.

    chosen, rejected: [N, 3] scores in style order. With S = Σ_n over N records of these rows,
    hard = S[0] / 3N, normal = S[1] / 3N, easy = S[2] / 3N, score = (S[0] + S[1] + S[2]) / 9N
    (see `figures`); integers keep resampled sums and sign-flip statistics exact.
    """
    chosen = np.asarray(chosen, dtype=np.float64)
    rejected = np.asarray(rejected, dtype=np.float64)
    if chosen.ndim != 2 or chosen.shape[1] != N_STYLES or chosen.shape != rejected.shape:
        raise ValueError(f"expected two [N, {N_STYLES}] arrays, got {chosen.shape} and {rejected.shape}")
    w = (chosen[:, :, None] > rejected[:, None, :]).astype(np.int64)  # [N, 3, 3]
    upper = w[:, 0, 1] + w[:, 0, 2] + w[:, 1, 2]
    diag = w[:, 0, 0] + w[:, 1, 1] + w[:, 2, 2]
    lower = w[:, 1, 0] + w[:, 2, 0] + w[:, 2, 1]
    return np.stack([upper, diag, lower], axis=1)


def figures(sums: np.ndarray, n: int) -> np.ndarray:
    """Accuracies from summed win counts: sums [..., 3] over n records -> [..., 4] float64
    (hard, normal, easy, score) = (S0, S1, S2, S0 + S1 + S2) / (3n, 3n, 3n, 9n)."""
    s = np.asarray(sums, dtype=np.float64)
    hne = s / (3 * n)
    return np.concatenate([hne, hne.mean(axis=-1, keepdims=True)], axis=-1)


def stream(seed: int, domain: str, purpose: int) -> np.random.Generator:
    """The random generator for one (seed, domain, purpose): independent across domains and
    purposes, identical across calls."""
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    key = (zlib.crc32(domain.encode("utf-8")), purpose)
    return np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=key))


def bootstrap_sums(values: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Column sums of `resamples` bootstrap resamples of the rows of an integer matrix.

    values: [N, k] integers; returns [resamples, k] int64 with out[b] = Σ_n K[b, n] values[n],
    K[b] ~ Multinomial(N, 1/N) (the counts of N indices drawn uniformly with replacement).
    Divide by N for resampled means.
    """
    v = np.asarray(values)
    if v.ndim != 2 or not np.issubdtype(v.dtype, np.integer):
        raise ValueError(f"expected an [N, k] integer array, got {v.dtype} {v.shape}")
    n = len(v)
    if n == 0:
        raise ValueError("no records to resample")
    v = v.astype(np.int64)
    out = np.empty((resamples, v.shape[1]), dtype=np.int64)
    chunk = max(1, min(resamples, CHUNK_ELEMENTS // n))
    for start in range(0, resamples, chunk):
        b = min(chunk, resamples - start)
        idx = rng.integers(0, n, size=(b, n), dtype=np.int32)
        idx += (np.arange(b, dtype=np.int32) * n)[:, None]  # row r's draws land in [r*n, (r+1)*n)
        counts = np.bincount(idx.ravel(), minlength=b * n).reshape(b, n)
        out[start : start + b] = counts @ v
    return out


def sign_flip_sums(values: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Sign-flipped column sums: out[b] = Σ_n s[b, n] values[n], s uniform on {-1, +1}.

    values: [N, k] integers (per-record paired differences); returns [resamples, k] int64.
    Computed as 2 Σ_n u[b, n] values[n] - Σ_n values[n] with u uniform on {0, 1}.
    """
    v = np.asarray(values)
    if v.ndim != 2 or not np.issubdtype(v.dtype, np.integer):
        raise ValueError(f"expected an [N, k] integer array, got {v.dtype} {v.shape}")
    v = v.astype(np.int64)
    n = max(len(v), 1)
    total = v.sum(axis=0)
    out = np.empty((resamples, v.shape[1]), dtype=np.int64)
    chunk = max(1, min(resamples, CHUNK_ELEMENTS // n))
    for start in range(0, resamples, chunk):
        b = min(chunk, resamples - start)
        u = rng.integers(0, 2, size=(b, len(v)), dtype=np.int8)
        out[start : start + b] = 2 * (u @ v) - total
    return out


def percentile_interval(boot: np.ndarray, point: float, level: float = LEVEL) -> tuple[float, float]:
    """[q_{α/2}, q_{1-α/2}] of boot (shape [R]), α = 1 - level, widened to contain `point`."""
    alpha = 1 - level
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return float(min(lo, point)), float(max(hi, point))


def ci_entry(lo: float, hi: float, resamples: int, seed: int, method: str = METHOD) -> dict[str, Any]:
    """metrics.json's interval record: {"lo", "hi", "level", "method", "resamples", "seed"}."""
    return {"lo": lo, "hi": hi, "level": LEVEL, "method": method, "resamples": resamples, "seed": seed}


def p_value_two_sided(null: np.ndarray, observed: float, atol: float = 1e-12) -> float:
    """p = (1 + #{b : |null_b| ≥ |observed| - atol}) / (1 + R); null: [R].

    Ties count as extreme. `atol` absorbs float rounding in statistics that are sums of
    fractions k/N_d: two distinct such values over a few domains of a few hundred records differ
    by at least 1/Π N_d ≫ 1e-12, while rounding stays near 1e-16.
    """
    return float((1 + np.count_nonzero(np.abs(null) >= abs(observed) - atol)) / (1 + len(null)))


def bootstrap_intervals(
    wins: Mapping[str, np.ndarray],
    domain_points: Mapping[str, Mapping[str, float]],
    total_points: Mapping[str, float],
    *,
    resamples: int,
    seed: int,
) -> tuple[dict[str, dict[str, dict[str, Any]]], dict[str, dict[str, Any]]]:
    """Intervals for every figure of compute_metrics.

    wins: domain -> [N_d, 3] record_wins; domain_points: domain -> {hard, normal, easy, score}
    point estimates; total_points: {overall, hard, normal, easy}.
    Returns ({domain: {hard, normal, easy, score: ci}}, {overall, hard, normal, easy: ci}).
    """
    boots = {
        d: figures(bootstrap_sums(w, resamples, stream(seed, d, BOOTSTRAP)), len(w)) for d, w in wins.items()
    }  # domain -> [R, 4]
    domain_ci = {
        d: {
            key: ci_entry(*percentile_interval(b[:, c], domain_points[d][key]), resamples, seed)
            for c, key in enumerate(RECORD_COLUMNS)
        }
        for d, b in boots.items()
    }
    total = np.mean(np.stack(list(boots.values())), axis=0)  # [R, 4]: replicate b of every domain
    total_ci = {
        key: ci_entry(
            *percentile_interval(total[:, RECORD_COLUMNS.index(col)], total_points[key]), resamples, seed
        )
        for key, col in TOTAL_KEYS.items()
    }
    return domain_ci, total_ci


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values (same order as given).

    With p sorted ascending p_(1) ≤ ... ≤ p_(m): p̃_(i) = max_{j ≤ i} min(1, (m - j + 1) p_(j)).
    Reject H_(i) at level α iff p̃_(i) < α (controls the family-wise error rate).
    """
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    out = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        out[i] = running
    return out
