"""Metrics (SPEC §2): hand-computed cases, ties, missing domains, and the official formula."""

from __future__ import annotations

import numpy as np
import pytest

from rmbench_fast.benchmarks.rmbench.metrics import accuracies, compute_metrics, style_matrix
from rmbench_fast.records import Record


def _rec(i: int, domain: str) -> Record:
    return Record(i, str(i), domain, "p", ("a", "b", "c"), ("d", "e", "f"), "mem")


def official_accuracy(score_chosen: list[list[float]], score_rejected: list[list[float]]) -> dict[str, float]:
    """RM-Bench's scripts/utils.py compute_accuracy, re-stated with plain loops."""
    m = [[0.0] * 3 for _ in range(3)]
    for sc, sr in zip(score_chosen, score_rejected):
        for i in range(3):
            for j in range(3):
                if sc[i] > sr[j]:
                    m[i][j] += 1
    n = len(score_chosen)
    m = [[x / n for x in row] for row in m]
    hard = (m[0][1] + m[0][2] + m[1][2]) / 3
    normal = (m[0][0] + m[1][1] + m[2][2]) / 3
    easy = (m[1][0] + m[2][0] + m[2][1]) / 3
    return {"hard": hard, "normal": normal, "easy": easy}


def test_hand_computed_single_record() -> None:
    chosen = np.array([[1.0, 2.0, 3.0]])
    rejected = np.array([[0.5, 2.5, 3.0]])
    m = style_matrix(chosen, rejected)
    # chosen 1.0 beats only 0.5; 2.0 beats 0.5; 3.0 beats 0.5 and 2.5, ties 3.0 (a miss).
    assert m.tolist() == [[1, 0, 0], [1, 0, 0], [1, 1, 0]]
    acc = accuracies(m)
    assert acc == {"hard": 0.0, "normal": pytest.approx(1 / 3), "easy": 1.0}


def test_ties_are_misses() -> None:
    s = np.zeros((4, 3))
    assert style_matrix(s, s).sum() == 0.0
    assert style_matrix(s + 1e-12, s).sum() == 9.0


def test_nan_scores_are_misses() -> None:
    c = np.array([[np.nan, 1.0, 1.0]])
    r = np.array([[0.0, np.nan, 0.0]])
    m = style_matrix(c, r)
    assert m[0].tolist() == [0, 0, 0] and m[1].tolist() == [1, 0, 1]


@pytest.mark.parametrize("seed", range(5))
def test_matches_official_formula_on_random_scores(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 200))
    # Coarse scores so that ties really happen.
    chosen = rng.integers(0, 5, size=(n, 3)).astype(float)
    rejected = rng.integers(0, 5, size=(n, 3)).astype(float)
    ours = accuracies(style_matrix(chosen, rejected))
    ref = official_accuracy(chosen.tolist(), rejected.tolist())
    for k in ref:
        assert ours[k] == pytest.approx(ref[k], abs=1e-12)


def test_safety_pooled_and_totals() -> None:
    recs = [_rec(0, "chat"), _rec(1, "safety-refuse"), _rec(2, "safety-response"), _rec(3, "code")]
    scores = np.array(
        [
            [1, 1, 1, 0, 0, 0],  # chat: all 9 wins
            [1, 1, 1, 0, 0, 0],  # safety-refuse: all wins
            [0, 0, 0, 1, 1, 1],  # safety-response: all losses
            [0, 0, 0, 0, 0, 0],  # code: all ties
        ],
        dtype=float,
    )
    out = compute_metrics(recs, scores)
    assert list(out["domains"]) == ["chat", "code", "safety"]
    assert out["domains"]["safety"]["n"] == 2
    # Pooled, not averaged per sub-domain: each cell is 1/2.
    assert np.allclose(out["domains"]["safety"]["matrix"], 0.5)
    assert out["domains"]["chat"]["score"] == 1.0
    assert out["domains"]["code"]["score"] == 0.0
    total = out["total"]
    assert total["overall"] == pytest.approx((1.0 + 0.0 + 0.5) / 3)
    assert total["missing_domains"] == ["math"] and total["complete"] is False
    assert total["domains"] == ["chat", "code", "safety"]


def test_complete_total_overall_is_mean_of_accuracies() -> None:
    rng = np.random.default_rng(7)
    recs = [_rec(i, d) for i, d in enumerate(["chat", "math", "code", "safety-refuse"] * 5)]
    scores = rng.normal(size=(len(recs), 6))
    total = compute_metrics(recs, scores)["total"]
    assert total["complete"] is True
    assert total["overall"] == pytest.approx((total["hard"] + total["normal"] + total["easy"]) / 3)


def test_shape_errors() -> None:
    with pytest.raises(ValueError):
        style_matrix(np.zeros((2, 2)), np.zeros((2, 2)))
    with pytest.raises(ValueError):
        compute_metrics([_rec(0, "chat")], np.zeros((2, 6)))


def test_intervals_sit_beside_each_figure() -> None:
    """metrics.json layout: domains.<d>.ci.{hard,normal,easy,score} and total.ci.{overall,hard,
    normal,easy}, each {"lo", "hi", "level", "method", "resamples", "seed"} around its figure."""
    rng = np.random.default_rng(2)
    recs = [
        _rec(i, d) for i, d in enumerate(["chat", "math", "code", "safety-refuse", "safety-response"] * 12)
    ]
    out = compute_metrics(recs, rng.normal(size=(len(recs), 6)), resamples=400, seed=5)
    for d, m in out["domains"].items():
        assert set(m["ci"]) == {"hard", "normal", "easy", "score"}, d
        for key, ci in m["ci"].items():
            assert ci["lo"] <= m[key] <= ci["hi"] and 0.0 <= ci["lo"] and ci["hi"] <= 1.0
            assert (ci["method"], ci["resamples"], ci["seed"], ci["level"]) == ("bootstrap", 400, 5, 0.95)
    assert set(out["total"]["ci"]) == {"overall", "hard", "normal", "easy"}
    for key, ci in out["total"]["ci"].items():
        assert ci["lo"] <= out["total"][key] <= ci["hi"]
        # a mean over four domains is more precise than a single domain's figure
        col = "score" if key == "overall" else key
        widest = max(m["ci"][col]["hi"] - m["ci"][col]["lo"] for m in out["domains"].values())
        assert ci["hi"] - ci["lo"] < widest
