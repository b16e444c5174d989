"""The results store in a run: resume after SIGKILL with byte-identical outputs, reuse across
runs and reward modes, the model fingerprint in the key, and non-finite scores (exit 3)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rmbench_fast import evaluate
from rmbench_fast.commands import main
from tests.helpers.paths import REPO
from tests.helpers.tiny import SMOLLM2_VOCAB, make_tiny_model_dir

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("resume")
    return {
        "policy": make_tiny_model_dir(root / "policy", "llama", vocab_size=SMOLLM2_VOCAB, seed=1),
        "policy2": make_tiny_model_dir(root / "policy2", "llama", vocab_size=SMOLLM2_VOCAB, seed=5),
        "ref": make_tiny_model_dir(root / "ref", "llama", vocab_size=SMOLLM2_VOCAB, seed=2),
    }


def _run(
    model: Path, data: Path, out: Path, store: Path, point: str = "none"
) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "tests.workers.kill_run", str(model), str(data), str(out), str(store), point]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)


def _meta(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())["meta"]


@pytest.fixture(scope="module")
def cold(tiny: dict[str, Path], rm_bench_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run's output directory (shared by the kill points)."""
    root = tmp_path_factory.mktemp("cold")
    run = _run(tiny["policy"], rm_bench_data_dir, root / "out", root / "cold.sqlite")
    assert run.returncode == 0, run.stderr[-2000:]
    n_batches = _meta(root / "out")["scorer_stats"]["n_batches"]
    assert n_batches >= 6 and _meta(root / "out")["data"]["n_records"] >= 12
    return root / "out"


@pytest.mark.parametrize("point", ["load", "after_batch:3", "in_txn:4"])
def test_sigkill_then_rerun_is_byte_identical(
    tiny: dict[str, Path], rm_bench_data_dir: Path, tmp_path: Path, point: str, cold: Path
) -> None:

    store = tmp_path / "store.sqlite"
    killed = _run(tiny["policy"], rm_bench_data_dir, tmp_path / "warm", store, point)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (tmp_path / "warm" / "scores.json").exists()
    again = _run(tiny["policy"], rm_bench_data_dir, tmp_path / "warm", store)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (tmp_path / "warm" / "scores.json").read_bytes() == (cold / "scores.json").read_bytes()
    found = _meta(tmp_path / "warm")["scorer_stats"]["store"]["batches_found"]
    want = {"load": 0, "after_batch:3": 3, "in_txn:4": 3}[point]  # the batch in flight is not kept
    assert found == want


def test_cold_warm_and_no_cache_are_byte_identical(
    tiny: dict[str, Path], rm_bench_data_dir: Path, tmp_path: Path
) -> None:
    common = dict(data=str(rm_bench_data_dir), limit=2, device="cpu", dtype="float32", batch_tokens=600)
    store = tmp_path / "s.sqlite"
    outs = {}
    for name, extra in [
        ("cold", {"cache_dir": str(store)}),
        ("warm", {"cache_dir": str(store)}),
        ("none", {"no_cache": True}),
    ]:
        r = evaluate(str(tiny["policy"]), out=str(tmp_path / name), **common, **extra)  # type: ignore[arg-type]
        outs[name] = (tmp_path / name / "scores.json").read_bytes()
        st = r["meta"]["scorer_stats"]
        if name == "warm":
            assert (
                st["batches_from_cache"] == st["n_batches"]
                and st["store"]["batches_found"] == st["n_batches"]
            )
        if name == "none":
            assert st["store"] is None
    assert outs["cold"] == outs["warm"] == outs["none"]


def test_reward_modes_and_reference_reuse_the_store(
    tiny: dict[str, Path], rm_bench_data_dir: Path, tmp_path: Path
) -> None:
    common = dict(
        data=str(rm_bench_data_dir), limit=2, device="cpu", dtype="float32", cache_dir=str(tmp_path / "s")
    )
    (tmp_path / "s").mkdir()
    runs = {m: evaluate(str(tiny["policy"]), ref_free=m, **common) for m in ("avg", "sum", "norm")}  # type: ignore[arg-type]
    assert runs["avg"]["meta"]["scorer_stats"]["batches_from_cache"] == 0
    for m in ("sum", "norm"):
        st = runs[m]["meta"]["scorer_stats"]
        assert st["batches_from_cache"] == st["n_batches"] > 0  # no forward pass at all
    # The same values as a run without the store, mode by mode.
    for m, r in runs.items():
        fresh = evaluate(str(tiny["policy"]), ref_free=m, **{**common, "cache_dir": None, "no_cache": True})  # type: ignore[arg-type]
        assert [x["score_chosen"] for x in r["rows"]] == [x["score_chosen"] for x in fresh["rows"]]

    a = evaluate(str(tiny["policy"]), ref_model=str(tiny["ref"]), ref_mode="reference-first", **common)  # type: ignore[arg-type]
    b = evaluate(str(tiny["policy2"]), ref_model=str(tiny["ref"]), ref_mode="reference-first", **common)  # type: ignore[arg-type]
    ref_a, ref_b = a["meta"]["reference_scorer_stats"], b["meta"]["reference_scorer_stats"]
    assert ref_a["batches_from_cache"] == 0 and ref_b["batches_from_cache"] == ref_b["n_batches"]
    alone = evaluate(
        str(tiny["policy2"]),
        ref_model=str(tiny["ref"]),
        no_cache=True,
        **{k: v for k, v in common.items() if k != "cache_dir"},
    )  # type: ignore[arg-type]
    assert [x["score_chosen"] for x in b["rows"]] == [x["score_chosen"] for x in alone["rows"]]


def test_a_changed_weight_is_a_different_model(
    tiny: dict[str, Path], rm_bench_data_dir: Path, tmp_path: Path
) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    copy = tmp_path / "copy"
    shutil.copytree(tiny["policy"], copy)
    common = dict(
        data=str(rm_bench_data_dir),
        limit=1,
        device="cpu",
        dtype="float32",
        cache_dir=str(tmp_path / "s.sqlite"),
    )
    evaluate(str(copy), **common)  # type: ignore[arg-type]
    assert evaluate(str(copy), **common)["meta"]["scorer_stats"]["batches_from_cache"] > 0  # type: ignore[arg-type]
    tensors = load_file(copy / "model.safetensors")
    name = next(n for n in tensors if n.endswith("mlp.down_proj.weight"))
    tensors[name][0, 0] += 1.0
    save_file(tensors, copy / "model.safetensors", metadata={"format": "pt"})
    assert evaluate(str(copy), **common)["meta"]["scorer_stats"]["batches_from_cache"] == 0  # type: ignore[arg-type]
    assert (
        evaluate(str(copy), **{**common, "dtype": "bfloat16"})["meta"]["scorer_stats"]["batches_from_cache"]
        == 0
    )  # type: ignore[arg-type]


def test_nonfinite_scores_exit_3_and_keep_the_outputs(
    tiny: dict[str, Path], rm_bench_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(tiny["policy"], broken)
    tensors = load_file(broken / "model.safetensors")
    name = next(n for n in tensors if n.endswith("layers.1.mlp.down_proj.weight"))
    tensors[name][3, 5] = float("nan")
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
    out = tmp_path / "out"
    argv = [
        "run",
        "--model",
        str(broken),
        "--data",
        str(rm_bench_data_dir / "chat_filtered.json"),
        "--limit",
        "3",
    ]
    rc = main([*argv, "--device", "cpu", "--dtype", "float32", "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 3 and len(err) == 1 and "NaN or inf" in err[0] and "--allow-nonfinite" in err[0]
    rows = json.loads((out / "scores.json").read_text())  # valid JSON: null, not NaN
    assert any(x is None for r in rows for x in r["score_chosen"] + r["score_rejected"])
    meta = json.loads((out / "metrics.json").read_text())["meta"]
    assert meta["nonfinite"]["count"] > 0 and meta["nonfinite"]["scores"][0]["id"] in err[0]
    result = evaluate(
        str(broken),
        data=str(rm_bench_data_dir / "chat_filtered.json"),
        limit=3,
        device="cpu",
        dtype="float32",
        allow_nonfinite=True,
    )
    assert result["meta"]["nonfinite"]["allowed"] and np.isfinite(result["total"]["overall"])
