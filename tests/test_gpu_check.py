"""bench/gpu_check.sh --dry-run: the GPU script's whole path on tiny shapes on the CPU, so it
cannot rot between GPU runs (issue 9)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run(tmp_path: Path, rm_bench_data_dir: Path, smollm2_dir: Path) -> None:
    pytest.importorskip("transformers")
    data, out = tmp_path / "data", tmp_path / "out"
    script = [sys.executable, str(REPO / "bench" / "gpu_check.py")]
    prep = subprocess.run(
        [*script, "--prepare", "--data", str(data)], capture_output=True, text=True, timeout=300
    )
    assert prep.returncode == 0, prep.stderr[-3000:]
    assert {p.name for p in data.iterdir()} >= {"chat_filtered.json", "tokenizer"}
    run = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu_check.sh"), "--dry-run", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        env={**__import__("os").environ, "RMBF_GPU_DATA": str(data)},
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads((out / "gpu-cpu-dry-run.json").read_text())
    for stage in ("build", "correctness", "speed"):
        assert "error" not in report[stage], report[stage]
    for arch in ("llama", "qwen2", "qwen3", "gemma2"):
        assert report["correctness"][arch]["float32"]["within_tol"]
        assert report["correctness"][arch]["bfloat16"]["decisive_pairs"] > 0
    assert all(k["ok"] for k in report["correctness"]["kernels"])
    speed = report["speed"]
    assert speed["native_s"] > 0 and speed["official_s"] > 0 and 0 < speed["mfu"]
    assert speed["decisive_agreement_vs_official"]["agreement"] > 0.9, speed


def test_speed_stage_on_the_qwen3_shape(tmp_path: Path, rm_bench_data_dir: Path, smollm2_dir: Path) -> None:
    """`--shape qwen3-8b` (Skywork-Reward-V2-Qwen3's body) takes the same path, tiny on the CPU."""
    pytest.importorskip("transformers")
    sys.path.insert(0, str(REPO / "bench"))
    import gpu_check

    data = gpu_check.prepare(tmp_path / "data", per_domain=2)
    speed = gpu_check.stage_speed("cpu", data, 1, True, "qwen3-8b")
    assert speed["shape"] == "tiny qwen3 (dry run)"
    assert speed["native_s"] > 0 and speed["official_s"] > 0
    assert speed["decisive_agreement_vs_official"]["agreement"] > 0.9
