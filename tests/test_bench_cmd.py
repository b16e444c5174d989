"""`python -m rmbench_fast bench`: official-style, native (and vLLM) paths on the same records
(issue 13, section 5). One record of the embedded sample on tiny random models with SmolLM2's
tokenizer; the vLLM path runs only with `RMBF_VLLM_PYTHON` (the vLLM environment's python)."""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from rmbench_fast.commands.bench import add_bench_options, main, run_bench
from rmbench_fast.commands.options import add_run_options
from rmbench_fast.errors import UsageError
from rmbench_fast.perf.bench.agreement import decisive_agreement
from rmbench_fast.perf.bench.official import HF_HINT
from rmbench_fast.pipeline.data import sample_data_path
from tests.helpers.require import missing

ONE_RECORD = ["--data", str(sample_data_path()), "--domains", "chat", "--limit", "1", "--device", "cpu"]


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_run_options(p)
    add_bench_options(p)
    return p.parse_args(argv)


def _bench(argv: list[str]) -> tuple[int, str]:
    buf = io.StringIO()
    return run_bench(_parse(argv), Console(file=buf, width=200)), buf.getvalue()


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> dict[str, Path]:
    """head_dim 64: vLLM's CPU attention has no kernel for the default tiny head_dim of 16."""
    pytest.importorskip("transformers")
    from tests.helpers.tiny import make_tiny_model_dir

    base = tmp_path_factory.mktemp("bench_models")
    shape: dict[str, Any] = dict(vocab_size=49152, hidden_size=128, num_attention_heads=2, num_kv_heads=1)
    return {
        "dpo": make_tiny_model_dir(base / "dpo", "llama", head_dim=64, **shape),
        "classifier": make_tiny_model_dir(base / "cls", "llama", kind="classifier", head_dim=64, **shape),
    }


def _check_doc(doc: dict[str, Any], paths: list[str]) -> None:
    assert set(doc["paths"]) == set(paths)
    for p in paths:
        r = doc["paths"][p]
        assert r["phases"]["load_s"] >= 0 and r["phases"]["score_s"] > 0
        assert r["useful_tokens"] > 0 and r["processed_tokens"] > 0 and r["peak_mem_mib"] > 0
    for p in paths:
        if p != "native":
            ratio = doc["ratios"][f"{p}/native"]
            assert ratio["score_s"] > 0 and ratio["load_plus_score_s"] > 0
            assert doc["agreement"][p]["against"] == "native"
    assert doc["n_records"] == 1 and doc["domains"] == ["chat"]
    assert doc["metrics"]["native"]["domains"]["chat"]["n"] == 1


def test_bench_official_native_subprocesses(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    """DPO, each path in its own child process, as the command runs by default."""
    out = tmp_path / "bench.json"
    rc, printed = _bench(
        ["--model", str(tiny_models["dpo"]), *ONE_RECORD, "--paths", "official", "native"]
        + ["--out", str(out), "--threads", "1"]
    )
    assert rc == 0
    doc = json.loads(out.read_text())
    _check_doc(doc, ["official", "native"])
    off, nat = doc["paths"]["official"], doc["paths"]["native"]
    assert off["torch_threads"] == nat["torch_threads"] == 1
    # the official-style batches pad; the native engine shares the prompt prefix
    assert off["processed_tokens"] == off["useful_tokens"] + off["padding_tokens"]
    assert nat["processed_tokens"] == nat["useful_tokens"] - nat["prefix_savings"]
    assert doc["speedup"] == pytest.approx(off["score_s"] / nat["score_s"])
    agree = doc["agreement"]["official"]
    assert agree["matrices_identical"] and agree["max_abs_diff"] < 1e-3
    assert agree["decisive_pairs"]["agreement"] == 1.0 and agree["decisive_pairs"]["pairs"] == 9
    assert nat["mfu"]["mfu"] > 0
    assert "official vs native: matrices identical" in printed


def test_bench_classifier_in_process(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    out = tmp_path / "bench.json"
    rc, _ = _bench(
        ["--model", str(tiny_models["classifier"]), *ONE_RECORD, "--paths", "native", "official"]
        + ["--out", str(out), "--in-process"]
    )
    assert rc == 0
    doc = json.loads(out.read_text())
    _check_doc(doc, ["official", "native"])
    assert doc["kind"] == "classifier"
    assert doc["agreement"]["official"]["matrices_identical"]
    assert doc["agreement"]["official"]["decisive_pairs"]["agreement"] == 1.0


@pytest.mark.parametrize("classifier", [False, True], ids=["dpo", "classifier"])
def test_e2e_on_a_qwen3_random_model(tmp_path: Path, smollm2_dir: Path, classifier: bool) -> None:
    """bench/e2e.py runs a Qwen3 model (make_random_model's Qwen3 shape: q/k norms, no qkv bias)
    as it runs Llama, so the same command times Skywork-Reward-V2-Qwen3 shapes on a GPU."""
    pytest.importorskip("transformers")
    from bench import e2e
    from bench import make_random_model as mrm

    model = mrm.write_random_model(
        "tiny-qwen3", tmp_path / "q3", dtype="float32", device="cpu", classifier=classifier
    )
    out = tmp_path / "bench.json"
    argv = ["--model", str(model), *ONE_RECORD, "--paths", "official", "native", "--in-process"]
    assert e2e.main([*argv, "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    _check_doc(doc, ["official", "native"])
    assert doc["kind"] == ("classifier" if classifier else "dpo")
    assert doc["agreement"]["official"]["matrices_identical"]
    assert doc["agreement"]["official"]["max_abs_diff"] < 1e-3


def test_bench_without_transformers_is_one_line_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "transformers" else real(name, *a)
    )
    rc = main([*ONE_RECORD, "--paths", "official", "native", "--out", "unused.json"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == f"error: {HF_HINT}" and "[hf]" in err and "\n" not in err
    with pytest.raises(UsageError, match=r"\[hf\]"):
        run_bench(_parse([*ONE_RECORD, "--paths", "official8bit"]), Console(file=io.StringIO()))


def test_bench_vllm_needs_its_python(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main([*ONE_RECORD, "--paths", "native", "vllm"]) == 2
    assert "--vllm-python" in capsys.readouterr().err
    assert main([*ONE_RECORD, "--paths", "vllm", "--vllm-python", str(tmp_path / "nope")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main([*ONE_RECORD, "--paths", "native", "--vllm-args", "[1]"]) == 2
    assert "JSON object" in capsys.readouterr().err


def test_decisive_agreement_survives_a_monotone_activation() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0.0, 2.0, size=(50, 6))
    same = decisive_agreement(logits, 1 / (1 + np.exp(-logits)))
    # all agree; a pair or two whose sigmoid margin falls under the tolerance stops being decisive
    assert same["agreement"] == 1.0 and same["pairs"] == 450 and 445 <= same["decisive_both"] <= 450
    flipped = decisive_agreement(logits, -logits)
    assert flipped["agreement"] == 0.0
    # chosen style k ties rejected style k: the diagonal pairs are no longer decisive
    tied = logits.copy()
    tied[:, 3:] = tied[:, :3]
    res = decisive_agreement(logits, tied)
    assert res["decisive_both"] == 450 - 50 * 3 and res["decisive_only_one"] == 150


def test_e2e_script_is_a_wrapper() -> None:
    from bench import e2e
    from rmbench_fast.perf.bench.official import official_style_scores

    assert e2e.official_style_scores is official_style_scores  # bench/gpu_check.py imports it from e2e
    argv = e2e.bench_argv(["--model", "M", "--limit", "4"])
    assert argv[argv.index("--limit") + 1] == "4" and argv.count("--limit") == 1
    assert argv[argv.index("--dtype") + 1] == "float32" and "--domains" in argv


@pytest.mark.parametrize("kind", ["dpo", "classifier"])
def test_bench_vllm_path(tmp_path: Path, tiny_models: dict[str, Path], kind: str) -> None:
    """vLLM in its own environment: prompt_logprobs (DPO) and classify (classifier) agree with native.
    Skips without RMBF_VLLM_PYTHON, or fails when RMBF_REQUIRE names vllm (CI's vLLM step)."""
    if not os.environ.get("RMBF_VLLM_PYTHON"):
        missing("vllm", "RMBF_VLLM_PYTHON (a vLLM environment) not set")
    out = tmp_path / "bench.json"
    rc, _ = _bench(
        ["--model", str(tiny_models[kind]), *ONE_RECORD, "--paths", "native", "vllm", "--in-process"]
        + ["--vllm-python", os.environ["RMBF_VLLM_PYTHON"], "--vllm-timeout", "900", "--out", str(out)]
    )
    assert rc == 0
    doc = json.loads(out.read_text())
    _check_doc(doc, ["native", "vllm"])
    v = doc["paths"]["vllm"]
    assert v["vllm_version"] and v["load_s"] > 0 and v["score_s"] > 0
    agree = doc["agreement"]["vllm"]["decisive_pairs"]
    assert agree["decisive_both"] > 0 and agree["agreement"] == 1.0
