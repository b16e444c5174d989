"""Bootstrap intervals (rmbench_fast.results.stats, metrics.json `ci`): coverage on synthetic data with a
known accuracy, agreement with an exact binomial interval, determinism, never excluding the point
estimate, and point estimates untouched."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from rmbench_fast.benchmarks.rmbench.metrics import accuracies, compute_metrics, style_matrix
from rmbench_fast.records import Record
from rmbench_fast.results import stats

OFFICIAL_COUNTS = {"chat": 129, "math": 529, "code": 228, "safety-refuse": 284, "safety-response": 157}


def _records(counts: dict[str, int]) -> list[Record]:
    return [
        Record(i, f"{d}-{i}", d, "p", ("a", "b", "c"), ("d", "e", "f"), "mem")
        for d, n in counts.items()
        for i in range(n)
    ]


def _phi(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def _gaussian_scores(
    rng: np.random.Generator, n: int, mu: np.ndarray, nu: np.ndarray
) -> tuple[np.ndarray, dict[str, float]]:
    """Scores chosen[i] ~ N(mu_i, 1), rejected[j] ~ N(nu_j, 1), independent; the true accuracies
    follow from P(chosen_i > rejected_j) = Φ((mu_i - nu_j) / √2)."""
    p = np.array([[_phi((mu[i] - nu[j]) / math.sqrt(2)) for j in range(3)] for i in range(3)])
    truth = accuracies(p)
    truth["score"] = (truth["hard"] + truth["normal"] + truth["easy"]) / 3
    scores = np.concatenate([rng.normal(mu, 1, size=(n, 3)), rng.normal(nu, 1, size=(n, 3))], axis=1)
    return scores, truth


def test_record_wins_reproduce_the_official_figures() -> None:
    rng = np.random.default_rng(3)
    chosen = rng.integers(0, 4, size=(97, 3)).astype(float)  # coarse: ties happen
    rejected = rng.integers(0, 4, size=(97, 3)).astype(float)
    wins = stats.record_wins(chosen, rejected)
    assert wins.dtype == np.int64 and wins.min() >= 0 and wins.max() <= 3
    got = stats.figures(wins.sum(axis=0), len(wins))
    want = accuracies(style_matrix(chosen, rejected))
    for c, key in enumerate(("hard", "normal", "easy")):
        assert got[c] == pytest.approx(want[key], abs=1e-15)
    assert got[3] == pytest.approx((want["hard"] + want["normal"] + want["easy"]) / 3, abs=1e-15)


def test_coverage_on_synthetic_data_with_known_accuracy() -> None:
    """400 seeded simulated benchmarks: the nominal 95% interval covers the true accuracy in
    93-97% of them, for a domain's figures and for the total over two domains."""
    rng = np.random.default_rng(2024)
    mu = np.array([0.6, 0.9, 1.2])  # chosen; longer/markdown styles score higher (style bias)
    nu = np.array([0.0, 0.4, 0.8])  # rejected
    counts = {"chat": 129, "code": 150}
    recs = _records(counts)
    hits = {k: 0 for k in ("hard", "normal", "easy", "score", "overall")}
    runs = 400
    for r in range(runs):
        parts, truths = [], []
        for n in counts.values():
            s, t = _gaussian_scores(rng, n, mu, nu)
            parts.append(s)
            truths.append(t)
        m = compute_metrics(recs, np.concatenate(parts), resamples=2000, seed=r)
        chat = m["domains"]["chat"]
        for key in ("hard", "normal", "easy", "score"):
            ci = chat["ci"][key]
            hits[key] += ci["lo"] <= truths[0][key] <= ci["hi"]
        overall = m["total"]["ci"]["overall"]
        hits["overall"] += overall["lo"] <= (truths[0]["score"] + truths[1]["score"]) / 2 <= overall["hi"]
    coverage = {k: v / runs for k, v in hits.items()}
    for key, c in coverage.items():
        assert 0.93 <= c <= 0.97, (key, coverage)


def _clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact binomial interval by bisection on the binomial tails (no scipy needed)."""
    alpha = 1 - level

    def tail_ge(p: float) -> float:  # P(X >= k)
        return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))

    def tail_le(p: float) -> float:  # P(X <= k)
        return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(0, k + 1))

    def solve(f: object, increasing: bool) -> float:
        lo, hi = 0.0, 1.0
        for _ in range(60):
            mid = (lo + hi) / 2
            if (f(mid) < alpha / 2) == increasing:  # type: ignore[operator]
                lo = mid
            else:
                hi = mid
        return (lo + hi) / 2

    return (0.0 if k == 0 else solve(tail_ge, True)), (1.0 if k == n else solve(tail_le, False))


@pytest.mark.parametrize(("n", "k"), [(129, 80), (129, 120), (228, 114), (284, 250)])
def test_single_cell_matches_exact_binomial(n: int, k: int) -> None:
    """One matrix cell is a binomial proportion: its bootstrap interval is close to Clopper-Pearson
    (which is exact and conservative, so at least as wide)."""
    wins = np.zeros((n, 1), dtype=np.int64)
    wins[:k] = 1
    boot = stats.bootstrap_sums(wins, 10000, stats.stream(0, "chat", stats.BOOTSTRAP))[:, 0] / n
    lo, hi = stats.percentile_interval(boot, k / n)
    cp_lo, cp_hi = _clopper_pearson(k, n)
    assert abs(lo - cp_lo) < 0.02 and abs(hi - cp_hi) < 0.02, (lo, hi, cp_lo, cp_hi)
    assert hi - lo <= (cp_hi - cp_lo) + 0.005
    assert hi - lo >= 0.75 * (cp_hi - cp_lo)


def test_matrix_cell_through_compute_metrics_matches_binomial() -> None:
    """A record whose six scores make exactly cell (0, 0) vary: the domain's `normal` is that
    cell / 3 + constants, so its interval is the cell's interval scaled, close to Clopper-Pearson."""
    n, k = 129, 90
    recs = _records({"chat": n})
    scores = np.zeros((n, 6))
    scores[:, :3] = [0.0, 5.0, 5.0]  # detailed/markdown chosen beat every rejected answer
    scores[:, 3:] = [1.0, 1.0, 1.0]
    scores[:k, 0] = 2.0  # concise chosen beats the rejected answers in k records
    m = compute_metrics(recs, scores)["domains"]["chat"]
    assert m["matrix"][0] == [k / n] * 3 and m["matrix"][1] == [1.0] * 3
    # normal = (M00 + 1 + 1) / 3, so normal's interval maps back to M00's.
    lo, hi = (3 * m["ci"]["normal"][b] - 2 for b in ("lo", "hi"))
    cp_lo, cp_hi = _clopper_pearson(k, n)
    assert abs(lo - cp_lo) < 0.02 and abs(hi - cp_hi) < 0.02, (lo, hi, cp_lo, cp_hi)


def test_same_seed_same_interval_and_domains_independent() -> None:
    rng = np.random.default_rng(5)
    recs = _records({"chat": 60, "code": 80})
    scores = rng.normal(size=(len(recs), 6))
    a = compute_metrics(recs, scores, resamples=3000, seed=11)
    b = compute_metrics(recs, scores, resamples=3000, seed=11)
    c = compute_metrics(recs, scores, resamples=3000, seed=12)
    assert a == b
    assert a["domains"]["chat"]["ci"] != c["domains"]["chat"]["ci"]
    # chat's interval does not depend on which other domains were scored
    alone = compute_metrics(recs[:60], scores[:60], resamples=3000, seed=11)
    assert alone["domains"]["chat"]["ci"] == a["domains"]["chat"]["ci"]
    ci = a["total"]["ci"]["overall"]
    assert (
        ci["method"] == "bootstrap" and ci["resamples"] == 3000 and ci["seed"] == 11 and ci["level"] == 0.95
    )


def test_intervals_never_exclude_the_point_estimate() -> None:
    """With very few resamples the raw percentile interval can miss the point estimate; the
    reported one is widened to contain it. Degenerate data gives a zero-width interval."""
    rng = np.random.default_rng(9)
    recs = _records({"chat": 40, "math": 25, "safety-refuse": 30})
    raw_missed = 0
    for seed in range(40):
        scores = rng.normal(size=(len(recs), 6)) + rng.normal(size=6)
        m = compute_metrics(recs, scores, resamples=2, seed=seed)
        for d in m["domains"].values():
            for key, ci in d["ci"].items():
                assert ci["lo"] <= d[key] <= ci["hi"], (key, ci, d[key])
        for key, ci in m["total"]["ci"].items():
            assert ci["lo"] <= m["total"][key] <= ci["hi"]
        # how often the unwidened interval would have excluded the point (the test's power)
        wins = stats.record_wins(scores[:40, :3], scores[:40, 3:])
        boot = stats.figures(stats.bootstrap_sums(wins, 2, stats.stream(seed, "chat", stats.BOOTSTRAP)), 40)
        q = np.quantile(boot[:, 3], [0.025, 0.975])
        raw_missed += not (q[0] <= m["domains"]["chat"]["score"] <= q[1])
    assert raw_missed > 0
    # every record the same: all resamples equal the point
    same = np.tile([1.0, 2.0, 3.0, 0.0, 2.5, 2.0], (50, 1))
    m = compute_metrics(_records({"code": 50}), same)
    for key, ci in m["domains"]["code"]["ci"].items():
        assert ci["lo"] == ci["hi"] == pytest.approx(m["domains"]["code"][key])


def test_point_estimates_do_not_depend_on_the_intervals() -> None:
    rng = np.random.default_rng(1)
    recs = _records({"chat": 30, "safety-response": 20, "safety-refuse": 10})
    scores = rng.normal(size=(len(recs), 6))
    plain = compute_metrics(recs, scores, resamples=0)
    with_ci = compute_metrics(recs, scores, resamples=500, seed=3)
    assert "ci" not in plain["total"] and all("ci" not in d for d in plain["domains"].values())
    for d, m in plain["domains"].items():
        assert {k: v for k, v in with_ci["domains"][d].items() if k != "ci"} == m
    assert {k: v for k, v in with_ci["total"].items() if k != "ci"} == plain["total"]
    assert set(with_ci["domains"]["safety"]["ci"]) == {"hard", "normal", "easy", "score"}
    assert set(with_ci["total"]["ci"]) == {"overall", "hard", "normal", "easy"}
    with pytest.raises(ValueError):
        compute_metrics(recs, scores, resamples=-1)


def test_pooled_safety_is_resampled_as_one_domain() -> None:
    """Refuse and response records are one domain: the interval equals that of one file holding
    both (same records, same stream), not an average of two separate resamples."""
    rng = np.random.default_rng(4)
    mixed = _records({"safety-refuse": 30, "safety-response": 20})
    scores = rng.normal(size=(50, 6))
    a = compute_metrics(mixed, scores, resamples=1000)["domains"]["safety"]["ci"]
    one = compute_metrics(_records({"safety-refuse": 50}), scores, resamples=1000)["domains"]["safety"]["ci"]
    assert a == one


def test_full_benchmark_size_is_fast() -> None:
    """10,000 resamples over the full benchmark's 1,327 records: vectorised, well under a second
    on an idle core (the bound leaves room for a busy CI machine)."""
    recs = _records(OFFICIAL_COUNTS)
    scores = np.random.default_rng(0).normal(size=(len(recs), 6))
    compute_metrics(recs[:20], scores[:20])  # warm-up
    t0 = time.perf_counter()
    m = compute_metrics(recs, scores)
    elapsed = time.perf_counter() - t0
    assert m["total"]["ci"]["overall"]["resamples"] == 10000
    assert elapsed < 2.0, elapsed


def test_holm_and_sign_flip() -> None:
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm([0.5]) == [0.5]
    assert stats.holm([0.2, 0.9]) == pytest.approx([0.4, 0.9])
    zeros = np.zeros((30, 3), dtype=np.int64)
    null = stats.sign_flip_sums(zeros, 500, stats.stream(0, "chat", stats.SIGN_FLIP))
    assert stats.p_value_two_sided(null[:, 0], 0.0) == 1.0
    ones = np.ones((30, 3), dtype=np.int64)  # every record favours B by one comparison
    null = stats.sign_flip_sums(ones, 9999, stats.stream(0, "chat", stats.SIGN_FLIP))
    assert np.all(np.abs(null) <= 30) and abs(null.mean()) < 1.0
    assert stats.p_value_two_sided(null[:, 0], 30.0) < 0.001
    with pytest.raises(ValueError):
        stats.stream(-1, "chat", 0)
