"""Generative scoring: request order, pair scores, M[i][j] and the metrics.json structure."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from rmbench_fast.benchmarks.rmbench.metrics import compute_metrics
from rmbench_fast.judge.prompt import DEFAULT_TEMPLATE, VERDICTS
from rmbench_fast.judge.requests import REQUESTS_PER_RECORD, build_requests
from rmbench_fast.judge.scoring import generative_metrics, judge_rows, judge_stats, quarter_matrices
from rmbench_fast.records import Record

SAMPLING = {"max_tokens": 16, "temperature": 0.0, "top_p": 1.0}


def _records(domains: list[str]) -> list[Record]:
    return [
        Record(
            index=n,
            id=str(n),
            domain=d,
            prompt=f"question {n}",
            chosen=(f"c0-{n}", f"c1-{n}", f"c2-{n}"),
            rejected=(f"r0-{n}", f"r1-{n}", f"r2-{n}"),
            source="mem",
            raw={"id": n, "prompt": f"question {n}"},
        )
        for n, d in enumerate(domains)
    ]


def test_eighteen_requests_in_prefix_order() -> None:
    recs = _records(["chat", "code"])
    reqs = build_requests(recs, DEFAULT_TEMPLATE, "server:m", SAMPLING)
    assert len(reqs) == 2 * REQUESTS_PER_RECORD == 36
    assert [r.index for r in reqs] == list(range(36))
    for n in range(2):
        mine = reqs[18 * n : 18 * (n + 1)]
        assert {r.record for r in mine} == {n}
        assert {(r.i, r.j, r.order) for r in mine} == {
            (i, j, o) for i in range(3) for j in range(3) for o in ("chosen_first", "rejected_first")
        }
        # Grouped by answer A: three consecutive requests share question + answer A.
        for g in range(6):
            group = mine[3 * g : 3 * g + 3]
            heads = {r.prompt.split("<|The Start of Assistant B's Answer|>")[0] for r in group}
            assert len(heads) == 1
    first = reqs[0]
    assert "\nc0-0\n<|The End of Assistant A's Answer|>" in first.prompt and first.chosen_is_a
    swapped = next(r for r in reqs if r.order == "rejected_first" and r.i == 2 and r.j == 1 and r.record == 0)
    assert (
        "Assistant A's Answer|>\nr1-0\n" in swapped.prompt
        and "Assistant B's Answer|>\nc2-0\n" in swapped.prompt
    )
    # Keys depend on the judge and the decoding settings, not only on the prompt.
    other = build_requests(recs, DEFAULT_TEMPLATE, "server:other", SAMPLING)
    longer = build_requests(recs, DEFAULT_TEMPLATE, "server:m", {**SAMPLING, "max_tokens": 17})
    assert len({r.key for r in reqs}) == 36
    assert not {r.key for r in reqs} & {r.key for r in other}
    assert not {r.key for r in reqs} & {r.key for r in longer}


def _independent_matrix(n: int, reqs: list, verdicts: list) -> np.ndarray:
    """M recomputed from scratch: per (record, i, j), the mean of the two orders' scores."""
    per: dict[tuple[int, int, int], list[float]] = {}
    for r, v in zip(reqs, verdicts):
        chosen_letter = "A" if r.order == "chosen_first" else "B"
        if v is None:
            s = 0.0
        elif v == "A=B":
            s = 0.5
        else:
            s = 1.0 if v[0] == chosen_letter else 0.0
        per.setdefault((r.record, r.i, r.j), []).append(s)
    m = np.zeros((3, 3))
    for (_, i, j), scores in per.items():
        assert len(scores) == 2
        m[i, j] += sum(scores) / 2 / n
    return m


def test_matrix_from_random_verdicts() -> None:
    rng = np.random.default_rng(3)
    recs = _records(["chat"] * 7)
    reqs = build_requests(recs, DEFAULT_TEMPLATE, "server:m", SAMPLING)
    choices = [*VERDICTS, None]
    verdicts = [choices[k] for k in rng.integers(0, len(choices), len(reqs))]
    q = quarter_matrices(len(recs), reqs, verdicts)
    result = generative_metrics(recs, q, resamples=0)
    np.testing.assert_allclose(result["domains"]["chat"]["matrix"], _independent_matrix(7, reqs, verdicts))
    m = np.asarray(result["domains"]["chat"]["matrix"])
    assert result["domains"]["chat"]["hard"] == pytest.approx((m[0, 1] + m[0, 2] + m[1, 2]) / 3)
    assert result["domains"]["chat"]["normal"] == pytest.approx(np.trace(m) / 3)
    assert result["domains"]["chat"]["easy"] == pytest.approx((m[1, 0] + m[2, 0] + m[2, 1]) / 3)
    rows = judge_rows(recs, q)
    assert rows[0]["judge_matrix"] == (q[0] / 4).tolist() and rows[0]["domain"] == "chat"


def test_decisive_consistent_judge_equals_scalar_metrics() -> None:
    """A judge that always prefers the higher of some scalar scores (never ties, both orders
    agree) gets exactly compute_metrics' figures and intervals for those scores."""
    rng = np.random.default_rng(0)
    recs = _records(["chat"] * 5 + ["code"] * 4 + ["safety-refuse"] * 3 + ["safety-response"] * 2)
    scores = rng.permuted(np.tile(np.arange(6.0), (len(recs), 1)), axis=1)  # distinct per record
    reqs = build_requests(recs, DEFAULT_TEMPLATE, "server:m", SAMPLING)
    verdicts = []
    for r in reqs:
        c, x = scores[r.record, r.i], scores[r.record, 3 + r.j]
        a_wins = (c > x) == r.chosen_is_a
        verdicts.append("A>B" if a_wins else "B>>A")
    got = generative_metrics(recs, quarter_matrices(len(recs), reqs, verdicts), resamples=500, seed=4)
    want = compute_metrics(recs, scores, resamples=500, seed=4)
    assert got == want


def test_structure_matches_scalar_runs() -> None:
    recs = _records(["chat", "safety-refuse", "safety-response"])
    reqs = build_requests(recs, DEFAULT_TEMPLATE, "server:m", SAMPLING)
    verdicts = ["A=B"] * len(reqs)
    got = generative_metrics(recs, quarter_matrices(len(recs), reqs, verdicts), resamples=100)
    assert list(got["domains"]) == ["chat", "safety"]  # safety pooled
    assert got["domains"]["safety"]["n"] == 2
    assert got["domains"]["chat"]["matrix"] == [[0.5] * 3] * 3
    assert got["total"]["missing_domains"] == ["math", "code"] and got["total"]["complete"] is False
    want = compute_metrics(recs, np.zeros((3, 6)), resamples=100)
    assert set(got["domains"]["chat"]) == set(want["domains"]["chat"])
    assert set(got["total"]) == set(want["total"])


def test_missing_or_duplicate_verdicts_are_refused() -> None:
    recs = _records(["chat"])
    reqs = build_requests(recs, DEFAULT_TEMPLATE, "server:m", SAMPLING)
    with pytest.raises(ValueError):
        quarter_matrices(1, reqs[:-1] + [reqs[0]], ["A>B"] * 18)


def test_judge_stats() -> None:
    recs = _records(["chat"])
    reqs = build_requests(recs, DEFAULT_TEMPLATE, "server:m", SAMPLING)
    verdicts: list[str | None] = []
    for r in reqs:  # pair (0, 0): both orders chosen wins; (0, 1): one unparseable; others: ties
        if (r.i, r.j) == (0, 0):
            verdicts.append("A>B" if r.chosen_is_a else "B>A")
        elif (r.i, r.j) == (0, 1):
            verdicts.append(None if r.chosen_is_a else "B>>A")
        elif (r.i, r.j) == (1, 1):
            verdicts.append("A>B")  # A wins in both orders: position bias, inconsistent
        else:
            verdicts.append("A=B")
    texts = [f"t{k}" for k in range(18)]
    stats = judge_stats(reqs, verdicts, texts, [None] * 18, keep_failures=3)
    assert stats["requests"] == 18 and stats["pairs"] == 9
    assert stats["parse_failures"] == 1 and stats["parse_failure_rate"] == pytest.approx(1 / 18)
    assert stats["tie_rate"] == pytest.approx(12 / 18)
    assert stats["position_consistency"] == pytest.approx(7 / 9)  # (0,0) + six tie pairs
    assert stats["position_consistency_parsed"] == pytest.approx(7 / 8)
    assert stats["first_parse_failures"][0]["i"] == 0 and stats["first_parse_failures"][0]["j"] == 1
    assert sum(stats["verdicts"].values()) == 18


def test_all_verdict_combinations_are_scored() -> None:
    recs = _records(["chat"])
    reqs = build_requests(recs, DEFAULT_TEMPLATE, "server:m", SAMPLING)
    for a, b in itertools.product([*VERDICTS, None], repeat=2):
        verdicts = [a if r.chosen_is_a else b for r in reqs]
        q = quarter_matrices(1, reqs, verdicts)
        np.testing.assert_allclose(q[0] / 4, _independent_matrix(1, reqs, verdicts))
