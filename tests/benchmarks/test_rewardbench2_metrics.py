"""RewardBench 2 data and metrics against the official scoring functions (the wheel's own code).

The oracle is `tests/helpers/rb2_official.py`: `reroll_and_score_dataset` and `process_single_model`
from the installed `rewardbench` 0.1.4 wheel (= allenai/reward-bench fdc742d, PR 236), run on the
sample of `tests/helpers/rb2_sample.py` and on random score rows with many exact ties.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rmbench_fast.benchmarks.rewardbench2.data import Prompt, load_prompts, select
from rmbench_fast.benchmarks.rewardbench2.metrics import (
    best_of_n_credit,
    compute_metrics,
    ties_components,
)
from rmbench_fast.errors import DataError
from tests.helpers.rb2_sample import sample_rows, score_rows, write_sample
from tests.helpers.require import missing


@pytest.fixture(scope="module")
def official() -> Any:
    try:
        from tests.helpers import rb2_official

        rb2_official.official_functions()
    except ImportError as e:
        missing("official", f"the official RewardBench 2 scoring code is unavailable: {e}")
    return rb2_official


def _matrix(rows: list[list[float]]) -> np.ndarray:
    width = max(len(r) for r in rows)
    out = np.full((len(rows), width), np.nan)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


@pytest.fixture(scope="module")
def prompts(tmp_path_factory: pytest.TempPathFactory) -> list[Prompt]:
    return load_prompts(write_sample(tmp_path_factory.mktemp("rb2") / "sample.json"))


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


@pytest.mark.parametrize("variant", range(10))
def test_sample_matches_official_bit_for_bit(official: Any, prompts: list[Prompt], variant: int) -> None:
    rows = score_rows(variant)
    want_subsets, want_credits = official.official_scores(sample_rows(), rows)
    got = compute_metrics(prompts, _matrix(rows), resamples=0)
    assert got["credits"] == want_credits  # exact, including 1/3 and NaN -> 0
    assert set(got["subsets"]) == set(want_subsets)
    for name, want in want_subsets.items():
        assert _same(got["subsets"][name]["score"], want), (name, got["subsets"][name]["score"], want)


def test_sample_cases_are_the_intended_ones(prompts: list[Prompt]) -> None:
    """The sample hits what it claims: 1/2, 1/3, 1/4 credit, NaN -> 0, no tie on 0.1 + 0.2."""
    credits = [best_of_n_credit(r) for r in score_rows(0)[:10]]
    assert credits == [1.0, 0.5, 1 / 3, 0.25, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0]
    ties = [p for p in prompts if p.subset == "Ties"]
    t = ties_components(ties, score_rows(0)[20:])
    assert (t["n_ref"], t["n_tied"], t["n_pairs"], t["dcm_zero"]) == (4, 4, 3, 1)
    # pairs 1, 2, 5. pair 1: cim 1 == dcm 1, not preferred; pair 2: dcm 0, cim 1, preferred but
    # out of the margin mean, and its ref's cim -1 fails the hard test; pair 5: all pass.
    assert t["correctness_preferred"] == pytest.approx(2 / 3)
    assert t["correctness_preferred_hard"] == pytest.approx(1 / 3)
    assert t["margin"] == pytest.approx(np.mean([math.tanh(1 / 1 - 1), math.tanh(2 / 1 - 1)]))


def _random_rows(rng: np.random.Generator, prompts: list[Prompt]) -> list[list[float]]:
    # Scores on a coarse grid: many exact ties, at the max and among correct answers (dcm 0).
    return [list(np.round(rng.normal(size=len(p.completions)) * 2) / 2) for p in prompts]


@pytest.mark.parametrize("seed", range(25))
def test_random_scores_match_official(official: Any, prompts: list[Prompt], seed: int) -> None:
    rows = _random_rows(np.random.default_rng(seed), prompts)
    want_subsets, want_credits = official.official_scores(sample_rows(), rows)
    got = compute_metrics(prompts, _matrix(rows), resamples=0)
    assert got["credits"] == want_credits
    for name, want in want_subsets.items():
        assert _same(got["subsets"][name]["score"], want), (seed, name)


def _ties_prompts(tmp_path: Path, rows: list[dict[str, Any]]) -> list[Prompt]:
    (tmp_path / "t.json").write_text(json.dumps(rows))
    return load_prompts(tmp_path / "t.json")


def _t(rid: str, n_c: int, n_w: int) -> dict[str, Any]:
    return {
        "id": rid,
        "prompt": "p",
        "chosen": ["c"] * n_c,
        "rejected": ["w"] * n_w,
        "num_correct": n_c,
        "total_completions": n_c + n_w,
        "subset": "Ties",
    }


@pytest.mark.parametrize(
    "recs, rows",
    [
        # a tied prompt with one correct answer (dcm None) in the only pair: pref = mean([]) = NaN
        ([_t("ref:1", 1, 1), _t("tied:1", 1, 2)], [[1.0, 0.0], [2.0, 1.0, 0.0]]),
        # no pair at all: pref, pref_hard, margin = 0
        ([_t("ref:1", 1, 1), _t("tied:2", 2, 1)], [[1.0, 0.0], [2.0, 1.0, 0.0]]),
        # only tied prompts
        ([_t("tied:1", 2, 1), _t("tied:2", 3, 1)], [[2.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]]),
        # NaN scores among correct and incorrect answers (order-dependent max/min)
        (
            [_t("ref:1", 1, 2), _t("tied:1", 3, 2)],
            [[1.0, math.nan, 0.0], [math.nan, 2.0, 1.0, 0.0, math.nan]],
        ),
        # dcm = 0 with cim = 0: ratio 0/0 would be NaN; PR 236 leaves it out of the margin mean
        ([_t("ref:1", 1, 1), _t("tied:1", 2, 1)], [[1.0, 1.0], [1.0, 1.0, 1.0]]),
        # ids with leading zeros are one prompt for the official int() parse
        ([_t("ref:07", 1, 1), _t("tied:7", 2, 1)], [[1.0, 0.0], [3.0, 2.0, 0.0]]),
    ],
)
def test_ties_edge_cases_match_official(
    official: Any, tmp_path: Path, recs: list[dict[str, Any]], rows: list[list[float]]
) -> None:
    ps = _ties_prompts(tmp_path, recs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # np.mean([]) in the official code
        # stand-in containers: a real Dataset turns NaN into None (test_official_ties_crashes_on_nan)
        want, _ = official.official_scores(recs, rows, containers="stand-ins")
    got = compute_metrics(ps, _matrix(rows), resamples=0)
    assert _same(got["subsets"]["Ties"]["score"], want["Ties"]), (got["subsets"]["Ties"], want)


def test_official_ties_crashes_on_nan_through_datasets(official: Any, tmp_path: Path) -> None:
    """The quirk in docs/rewardbench2.md: through a real `datasets.Dataset` a NaN score is stored
    as null and the official Ties code raises on None; we score it (NaN compares False)."""
    import importlib.util

    for module in ("datasets", "pandas"):  # the test extra installs both
        if importlib.util.find_spec(module) is None:
            missing(
                "official",
                f"{module} is not installed: the official flow's containers (pip install -e .[test])",
            )
    recs = [_t("ref:1", 1, 2), _t("tied:1", 3, 2)]
    rows = [[1.0, math.nan, 0.0], [math.nan, 2.0, 1.0, 0.0, math.nan]]
    with pytest.raises(TypeError, match="NoneType"):
        official.official_scores(recs, rows, containers="auto")
    got = compute_metrics(_ties_prompts(tmp_path, recs), _matrix(rows), resamples=0)["subsets"]["Ties"]
    # max([nan, 0.0]) is nan (order matters): neither prompt is accurate, nothing is preferred
    assert (got["ref_accuracy"], got["tied_accuracy"], got["score"]) == (0.0, 0.0, 0.0)


def test_overall_is_the_unweighted_mean_of_subsets(prompts: list[Prompt]) -> None:
    got = compute_metrics(prompts, _matrix(score_rows(3)), resamples=0)
    vals = [e["score"] for e in got["subsets"].values()]
    assert len(vals) == 6 and got["overall"]["n_subsets"] == 6
    assert got["overall"]["score"] == pytest.approx(sum(vals) / 6, abs=0)


def test_bootstrap_intervals(prompts: list[Prompt]) -> None:
    rows = _random_rows(np.random.default_rng(7), prompts)
    a = compute_metrics(prompts, _matrix(rows), resamples=400, seed=3)
    b = compute_metrics(prompts, _matrix(rows), resamples=400, seed=3)
    c = compute_metrics(prompts, _matrix(rows), resamples=400, seed=4)
    assert a == b  # seeded
    assert a["subsets"]["Math"]["ci"] != c["subsets"]["Math"]["ci"]
    for e in [*a["subsets"].values(), a["overall"]]:
        ci = e["ci"]
        assert ci is not None and ci["lo"] <= e["score"] <= ci["hi"] and ci["resamples"] == 400
    # the Ties replicates recompute the composite: a model perfect on Ties has an interval in [1, 1.01]
    perfect = [
        [10.0 - j if j < p.num_correct else -10.0 - j for j in range(len(p.completions))] for p in prompts
    ]
    t = compute_metrics(prompts, _matrix(perfect), resamples=200)["subsets"]["Ties"]
    assert 1.0 <= t["ci"]["lo"] <= t["score"] <= t["ci"]["hi"] <= 1.01


def test_bootstrap_of_one_subset_does_not_depend_on_the_others(prompts: list[Prompt]) -> None:
    rows = _random_rows(np.random.default_rng(1), prompts)
    full = compute_metrics(prompts, _matrix(rows), resamples=300)
    only = [i for i, p in enumerate(prompts) if p.subset == "Math"]
    sub = compute_metrics([prompts[i] for i in only], _matrix([rows[i] for i in only]), resamples=300)
    assert sub["subsets"]["Math"] == full["subsets"]["Math"]


# --------------------------------------------------------------------------------------------
# Loading and validation
# --------------------------------------------------------------------------------------------


def test_formats(tmp_path: Path, prompts: list[Prompt]) -> None:
    rows = sample_rows()
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert [p.id for p in load_prompts(tmp_path / "a.jsonl")] == [p.id for p in prompts]
    (tmp_path / "b.json").write_text(json.dumps({"data": rows}))
    assert load_prompts(tmp_path / "b.json")[3].completions == prompts[3].completions
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "c.parquet")
    got = load_prompts(tmp_path / "c.parquet")
    assert [(p.id, p.subset, p.completions) for p in got] == [
        (p.id, p.subset, p.completions) for p in prompts
    ]


def _bad(tmp_path: Path, **change: Any) -> str:
    rows = sample_rows()
    rows[5] = {**rows[5], **change}
    rows[5] = {k: v for k, v in rows[5].items() if v is not _DROP}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(rows))
    with pytest.raises(DataError) as e:
        load_prompts(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: record 5 (id ") and "\n" not in msg
    return msg


_DROP = object()


@pytest.mark.parametrize(
    "change, field, words",
    [
        ({"chosen": _DROP}, None, "missing field 'chosen'"),
        ({"chosen": "x"}, "chosen", "expected a list"),
        ({"rejected": []}, "rejected", "empty list"),
        ({"rejected": ["a", 3]}, "rejected[1]", "int"),
        ({"num_correct": 2}, "num_correct", "len(chosen) is 1"),
        ({"num_correct": True}, "num_correct", "expected an integer"),
        ({"total_completions": 5}, "total_completions", "is 4"),
        ({"subset": "Chat"}, "subset", "unknown subset"),
        ({"prompt": None}, "prompt", "expected a string"),
        ({"rejected": ["r"] * 64, "total_completions": 65}, "total_completions", "more than the 64"),
    ],
)
def test_bad_record_names_file_record_and_field(
    tmp_path: Path, change: dict[str, Any], field: str | None, words: str
) -> None:
    msg = _bad(tmp_path, **change)
    assert words in msg
    if field is not None:
        assert f"field '{field}'" in msg


def test_bad_ties_ids(tmp_path: Path) -> None:
    rows = sample_rows()
    rows[21]["id"] = "tie:1"
    (tmp_path / "x.json").write_text(json.dumps(rows))
    with pytest.raises(DataError, match=r"record 21 .*field 'id'.*'ref:<int>'"):
        load_prompts(tmp_path / "x.json")
    rows[21]["id"] = "ref:1"  # duplicate of record 20
    (tmp_path / "x.json").write_text(json.dumps(rows))
    with pytest.raises(DataError, match=r"record 21 .*duplicate id in subset 'Ties'.*record 20"):
        load_prompts(tmp_path / "x.json")


def test_select(prompts: list[Prompt]) -> None:
    got = select(prompts, subsets=["Math", "Ties"], limit=2)
    assert [p.id for p in got] == ["mat-0", "mat-1", "ref:1", "tied:1", "ref:2", "tied:2"]
    with pytest.raises(DataError, match="unknown subset"):
        select(prompts, subsets=["Chat"])
