"""`report RUN --leaderboard`: the shipped table of published results, placement of a fixture run
(by overall, or by the domains it has, saying so) and the not-resolved wording."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rmbench_fast.benchmarks.rmbench.leaderboard import (
    DOMAINS,
    load_leaderboard,
    ordinal,
    place,
    placement_lines,
)
from rmbench_fast.commands import main


def _ci(lo: float, hi: float) -> dict[str, Any]:
    return {"lo": lo, "hi": hi, "level": 0.95, "method": "bootstrap", "resamples": 10000, "seed": 0}


def _metrics(scores: dict[str, float], n: dict[str, int], ci: tuple[float, float] | None) -> dict[str, Any]:
    """A metrics.json with the given domain scores (fractions) and total interval."""
    doms = {
        d: {"score": s, "hard": s - 0.1, "normal": s, "easy": s + 0.1, "n": n[d]} for d, s in scores.items()
    }
    overall = sum(scores.values()) / len(scores)
    total: dict[str, Any] = {
        "overall": overall,
        "hard": overall - 0.1,
        "normal": overall,
        "easy": overall + 0.1,
        "domains": list(scores),
        "missing_domains": [d for d in DOMAINS if d not in scores],
        "complete": len(scores) == 4,
    }
    if ci is not None:
        total["ci"] = {"overall": _ci(*ci)}
    return {"domains": doms, "total": total}


FULL_N = {"chat": 129, "math": 529, "code": 228, "safety": 441}


def test_shipped_table_is_sourced_and_consistent() -> None:
    board = load_leaderboard()
    src = board["source"]
    assert src["repository"] == "https://github.com/THU-KEG/RM-Bench-Leaderboard"
    assert len(src["commit"]) == 40 and src["date_read"]
    rows = board["rows"]
    assert len(rows) >= 40 and len({r["model"] for r in rows}) == len(rows)
    for r in rows:
        assert r["source"] and r["date_read"] and r["reported_in"].startswith("http"), r["model"]
        assert r["overall"] is not None and 0 < r["overall"] <= 100
        for k in (*DOMAINS, "easy", "normal", "hard"):
            assert r[k] is None or 0 < r[k] <= 100, (r["model"], k)
        # a shifted column would break this: rows the leaderboard does not flag have overall ≈ mean of domains
        doms = [r[d] for d in DOMAINS]
        if None not in doms and r["score_mismatch_flag"] is False:
            assert abs(sum(doms) / 4 - r["overall"]) <= 0.5, r["model"]
    # spot checks against the leaderboard README at the pinned commit
    by = {r["model"]: r for r in rows}
    sky = by["Skywork-Reward-Llama-3.1-8B"]
    assert [sky[k] for k in (*DOMAINS, "easy", "normal", "hard", "overall")] == [
        69.5, 60.6, 54.5, 95.7, 89.0, 74.7, 46.6, 70.1
    ]  # fmt: skip
    assert by["Nemotron-340B-Reward"]["overall"] == 69.5 and by["ArmoRM-Llama3-8B-v0.1"]["safety"] == 92.4


def test_placement_by_overall_on_a_fixture_run() -> None:
    rows = load_leaderboard()["rows"]
    m = _metrics({"chat": 0.70, "math": 0.60, "code": 0.55, "safety": 0.90}, FULL_N, (0.686, 0.689))
    p = place(m)
    assert p["by"] == "overall" and p["complete"] and p["value"] == pytest.approx(68.75)
    assert p["rank"] == 1 + sum(r["overall"] > 68.75 for r in rows)
    assert p["of"] == len(rows)
    assert p["above"]["overall"] > 68.75 >= p["below"]["overall"]
    assert p["unresolved"] == []  # no published overall in [68.6, 68.9]
    lines = placement_lines(p)
    assert lines[0].startswith(f"By overall, the run's 68.8 [68.6, 68.9] places {ordinal(p['rank'])} of")
    assert any("order is resolved" in ln for ln in lines)
    assert not any("subset" in ln for ln in lines)


def test_overlapping_interval_says_the_order_is_not_resolved() -> None:
    rows = load_leaderboard()["rows"]
    m = _metrics({"chat": 0.70, "math": 0.60, "code": 0.55, "safety": 0.90}, FULL_N, (0.66, 0.71))
    p = place(m)
    inside = [r["model"] for r in rows if 66.0 <= r["overall"] <= 71.0]
    assert len(inside) >= 2 and sorted(r["model"] for r in p["unresolved"]) == sorted(inside)
    text = " ".join(placement_lines(p))
    assert "order is not resolved" in text and f"{len(inside)} model(s)" in text


def test_incomplete_run_is_placed_by_its_domains_and_says_so() -> None:
    rows = load_leaderboard()["rows"]
    m = _metrics(
        {"chat": 0.70, "code": 0.55, "safety": 0.90}, {"chat": 129, "code": 228, "safety": 284}, None
    )
    p = place(m)
    assert not p["complete"] and p["domains"] == ["chat", "code", "safety"] and p["missing"] == ["math"]
    assert p["by"] == "mean of chat, code, safety"
    eligible = [r for r in rows if all(r[d] is not None for d in ("chat", "code", "safety"))]
    assert p["of"] == len(eligible) < len(rows)  # rows without per-domain scores are left out
    value = 100 * (0.70 + 0.55 + 0.90) / 3
    assert p["rank"] == 1 + sum((r["chat"] + r["code"] + r["safety"]) / 3 > value for r in eligible)
    lines = placement_lines(p)
    assert lines[0].startswith("The run covers chat, code, safety only (no math)")
    assert "not by the leaderboard's overall" in lines[0]
    assert any("safety: 284 of 441 records" in ln for ln in lines)  # safety-refuse only
    assert any("No interval" in ln for ln in lines)


def test_report_leaderboard_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = _metrics({"chat": 0.70, "code": 0.55}, {"chat": 24, "code": 24}, (0.58, 0.66))
    for d in m["domains"].values():
        d["matrix"] = [[0.5] * 3] * 3
    (tmp_path / "metrics.json").write_text(json.dumps(m))
    assert main(["report", str(tmp_path), "--leaderboard"]) == 0
    out = capsys.readouterr().out
    assert "RM-Bench leaderboard placement (by mean of chat, code)" in out
    assert "covers chat, code only (no math, safety)" in " ".join(out.split())
    assert "this run" in out


def test_leaderboard_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rmbench_fast.errors import DataError

    with pytest.raises(DataError, match="nothing to place"):
        place({"domains": {}, "total": {"overall": 0.5, "domains": []}})
    # a sweep directory holds many runs: --leaderboard asks for one of them
    (tmp_path / "sweep.json").write_text(json.dumps({"models": [{"model": "m", "total": {}, "domains": {}}]}))
    assert main(["report", str(tmp_path), "--leaderboard"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and "is a sweep" in err
