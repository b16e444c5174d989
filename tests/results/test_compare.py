"""`python -m rmbench_fast compare`: paired differences, intervals and sign-flip p-values over run
directories (scores.json + metrics.json), ranking with Holm correction, and refusing runs that
cannot be paired."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rmbench_fast.benchmarks.rmbench.metrics import compute_metrics
from rmbench_fast.commands import main
from rmbench_fast.records import Record
from rmbench_fast.results.compare import compare_runs
from rmbench_fast.results.report import score_rows, write_outputs

DOMAIN_COUNTS = {"chat": 60, "math": 90, "code": 70, "safety-refuse": 50, "safety-response": 30}  # 300


def _records(counts: dict[str, int]) -> list[Record]:
    return [
        Record(
            i, f"{d}-{i}", d, "p", ("a", "b", "c"), ("d", "e", "f"), "mem", {"id": f"{d}-{i}", "prompt": "p"}
        )
        for d, n in counts.items()
        for i in range(n)
    ]


def make_run(out: Path, records: list[Record], scores: np.ndarray, *, sha: str = "a" * 64) -> Path:
    """A run directory as `run` writes it, without a model."""
    metrics = compute_metrics(records, scores, resamples=200)
    metrics["meta"] = {"model": out.name, "data": {"path": "mem", "sha256": sha, "n_records": len(records)}}
    write_outputs(out, score_rows(records, scores), metrics)
    return out


def _one_line_error(rc: int, err: str, *needles: str) -> None:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), (rc, err)
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])


def _planted(rng: np.random.Generator, n: int, gain: int) -> tuple[np.ndarray, np.ndarray]:
    """A: random scores. B: A's scores plus noise that flips individual comparisons both ways,
    and `gain` records that A gets all wrong and B all right (+gain/n on every figure)."""
    a = rng.normal(size=(n, 6))
    a[:, :3] += 0.3
    b = a + rng.normal(scale=0.15, size=a.shape)
    pick = rng.choice(n, size=gain, replace=False)
    a[pick, :3], a[pick, 3:] = -10.0, 10.0
    b[pick, :3], b[pick, 3:] = 10.0, -10.0
    return a, b


def test_identical_runs_give_zero_difference_and_p_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recs = _records(DOMAIN_COUNTS)
    scores = np.random.default_rng(0).normal(size=(len(recs), 6))
    a = make_run(tmp_path / "a", recs, scores)
    b = make_run(tmp_path / "b", recs, scores)
    out = tmp_path / "cmp.json"
    assert main(["compare", str(a), str(b), "--json", str(out), "--resamples", "2000"]) == 0
    printed = capsys.readouterr().out
    assert "b − a" in printed and "overall" in printed
    result = json.loads(out.read_text())
    (c,) = result["comparisons"]
    entries = [e for d in c["domains"].values() for e in d.values()] + list(c["total"].values())
    assert len(entries) == 4 * 4 + 4
    for e in entries:
        assert e["diff"] == 0.0 and e["p_value"] == 1.0
        assert e["ci"]["lo"] == 0.0 == e["ci"]["hi"]
        assert e["a"] == e["b"]
    assert c["p_holm"] == 1.0 and c["significant"] is False
    assert result["settings"]["resamples"] == 2000 and result["data"]["n_records"] == 300


def test_planted_ten_point_difference_is_detected(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    n = 300
    recs = _records({"chat": n})
    a_scores, b_scores = _planted(rng, n, gain=30)  # 30 of 300 records: +10 points
    a = make_run(tmp_path / "a", recs, a_scores)
    b = make_run(tmp_path / "b", recs, b_scores)
    result = compare_runs([a, b], resamples=10000, seed=0)
    (c,) = result["comparisons"]
    o = c["total"]["overall"]
    assert o["diff"] == pytest.approx(0.10, abs=0.02)
    assert o["diff"] == pytest.approx(o["b"] - o["a"], abs=1e-12)
    assert o["p_value"] < 0.01
    assert o["ci"]["lo"] > 0 and o["ci"]["lo"] <= o["diff"] <= o["ci"]["hi"]
    assert c["domains"]["chat"]["score"]["p_value"] < 0.01 and c["significant"] is True
    # the other direction: the difference flips sign, the test does not change
    back = compare_runs([b, a], resamples=10000, seed=0)["comparisons"][0]["total"]["overall"]
    assert back["diff"] == pytest.approx(-o["diff"], abs=1e-15)
    assert back["p_value"] == o["p_value"]


def test_small_noise_difference_is_not_significant(tmp_path: Path) -> None:
    """Two runs that differ by noise only (a few comparisons flipped at random, both ways)."""
    rng = np.random.default_rng(11)
    recs = _records(DOMAIN_COUNTS)
    a_scores = rng.normal(size=(len(recs), 6))
    b_scores = a_scores.copy()
    flip = rng.choice(len(recs), size=20, replace=False)
    b_scores[flip] = b_scores[flip][:, [3, 4, 5, 0, 1, 2]]  # chosen <-> rejected on 20 records
    result = compare_runs(
        [make_run(tmp_path / "a", recs, a_scores), make_run(tmp_path / "b", recs, b_scores)], resamples=5000
    )
    o = result["comparisons"][0]["total"]["overall"]
    assert abs(o["diff"]) < 0.05
    assert o["p_value"] > 0.05 and o["ci"]["lo"] < 0 < o["ci"]["hi"]


def test_more_than_two_runs_ranked_with_holm(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(3)
    n = 300
    recs = _records({"chat": n})
    base, better = _planted(rng, n, gain=45)
    tie = base.copy()
    swap = rng.choice(n, size=4, replace=False)
    tie[swap] = tie[swap][:, [3, 4, 5, 0, 1, 2]]
    runs = [
        make_run(tmp_path / "base", recs, base),
        make_run(tmp_path / "better", recs, better),
        make_run(tmp_path / "almost-base", recs, tie),
    ]
    out = tmp_path / "rank.json"
    assert main(["compare", *map(str, runs), "--json", str(out), "--resamples", "5000"]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["ranking"][0] == "better"
    first, second = result["comparisons"]
    assert (first["b"], first["a"]) == ("better", result["ranking"][1])
    assert first["significant"] is True and second["significant"] is False
    # Holm: never below the raw p-value, and the larger raw p-value is at least doubled or 1
    for c in result["comparisons"]:
        assert c["p_holm"] >= c["total"]["overall"]["p_value"]
    ps = sorted(c["total"]["overall"]["p_value"] for c in result["comparisons"])
    assert min(c["p_holm"] for c in result["comparisons"]) == pytest.approx(min(1.0, 2 * ps[0]))
    assert "n.s." in printed and "not resolved" in printed and "Holm" in printed


def test_different_data_hash_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recs = _records({"chat": 20})
    scores = np.random.default_rng(0).normal(size=(20, 6))
    a = make_run(tmp_path / "a", recs, scores, sha="1" * 64)
    b = make_run(tmp_path / "b", recs, scores, sha="2" * 64)
    rc = main(["compare", str(a), str(b)])
    _one_line_error(rc, capsys.readouterr().err, "different data", "111111111111", "222222222222")


def test_different_records_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recs = _records({"chat": 20, "code": 10})
    scores = np.random.default_rng(0).normal(size=(30, 6))
    a = make_run(tmp_path / "a", recs, scores)
    b = make_run(tmp_path / "b", recs[:25], scores[:25])  # same data file, fewer records (--limit)
    rc = main(["compare", str(a), str(b)])
    _one_line_error(
        rc, capsys.readouterr().err, "different records", "5 only in a", "0 only in b", "code id code-5"
    )


def test_records_paired_by_id_not_position(tmp_path: Path) -> None:
    """A run whose scores.json lists the same records in another order pairs record by record."""
    recs = _records({"chat": 40})
    scores = np.random.default_rng(2).normal(size=(40, 6))
    a = make_run(tmp_path / "a", recs, scores)
    order = np.random.default_rng(3).permutation(40)
    b = make_run(tmp_path / "b", [recs[i] for i in order], scores[order])
    (c,) = compare_runs([a, b], resamples=500)["comparisons"]
    assert c["total"]["overall"]["diff"] == 0.0 and c["total"]["overall"]["p_value"] == 1.0


def test_bad_inputs_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recs = _records({"chat": 10})
    scores = np.random.default_rng(0).normal(size=(10, 6))
    a = make_run(tmp_path / "a", recs, scores)
    _one_line_error(main(["compare", str(a)]), capsys.readouterr().err, "at least two")
    _one_line_error(main(["compare", str(a), str(tmp_path / "nope")]), capsys.readouterr().err, "nope")
    _one_line_error(
        main(["compare", str(a), str(a), "--resamples", "0"]),
        capsys.readouterr().err,
        "--resamples must be >= 1",
    )
    # metrics.json that does not belong to scores.json
    b = make_run(tmp_path / "b", recs, scores)
    m = json.loads((b / "metrics.json").read_text())
    m["domains"]["chat"]["hard"] += 0.1
    (b / "metrics.json").write_text(json.dumps(m))
    _one_line_error(main(["compare", str(a), str(b)]), capsys.readouterr().err, "not from the same run")
    # a malformed scores.json row
    c = make_run(tmp_path / "c", recs, scores)
    rows = json.loads((c / "scores.json").read_text())
    rows[3]["score_chosen"] = [1.0, 2.0]
    (c / "scores.json").write_text(json.dumps(rows))
    _one_line_error(main(["compare", str(a), str(c)]), capsys.readouterr().err, "record 3", "score_chosen")
