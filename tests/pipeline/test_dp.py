"""Data parallelism under torchrun (gloo, 2 processes): scores bit-identical to one process,
rank 0 alone writes, and a failing rank fails the job with one line naming it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rmbench_fast import _core
from rmbench_fast.commands import main
from tests.helpers.paths import REPO
from tests.helpers.tiny import SMOLLM2_VOCAB, make_tiny_model_dir

pytest.importorskip("transformers")


def _torchrun(args: list[str], out: Path, fail_rank: int | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += ["-m", "tests.workers.dp_worker"] + (
        ["--fail-rank", str(fail_rank)] if fail_rank is not None else []
    )
    cmd += ["--", *args, "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=REPO)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("dp") / "m", "llama", vocab_size=SMOLLM2_VOCAB, seed=3)


@pytest.fixture(scope="module")
def model_d64(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> Path:
    """Head size 64, so the C++ CPU attention kernel takes the attention calls under DP too."""
    return make_tiny_model_dir(
        tmp_path_factory.mktemp("dp64") / "m", "llama", vocab_size=SMOLLM2_VOCAB, seed=3, head_dim=64
    )


def _args(model: Path, data: Path) -> list[str]:
    return ["--model", str(model), "--data", str(data), "--limit", "3", "--device", "cpu", "--dtype", "float32",
            "--batch-tokens", "700", "--no-cache", "--no-progress", "--resamples", "0"]  # fmt: skip


def test_dp2_is_bit_identical_to_one_process(
    model_d64: Path, rm_bench_data_dir: Path, tmp_path: Path
) -> None:
    model = model_d64
    assert main(["run", *_args(model, rm_bench_data_dir), "--out", str(tmp_path / "one")]) == 0
    proc = _torchrun(_args(model, rm_bench_data_dir), tmp_path / "dp")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "dp" / "scores.json").read_bytes() == (tmp_path / "one" / "scores.json").read_bytes()
    meta = json.loads((tmp_path / "dp" / "metrics.json").read_text())["meta"]
    assert meta["distributed"] == {"world_size": 2, "tp": 1, "dp": 2, "backend": "gloo"}
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    dp = json.loads((tmp_path / "dp" / "metrics.json").read_text())
    assert one["domains"] == dp["domains"] and one["total"] == dp["total"]
    if _core.packed_attention_supported(64):  # the kernel took the attention calls
        assert one["meta"]["scorer_stats"]["attention_calls"].get("cpu_kernel", 0) > 0


def test_tp2_through_the_cli_matches_one_process(
    model: Path, rm_bench_data_dir: Path, tmp_path: Path
) -> None:
    """`torchrun --nproc-per-node 2 ... run --tp 2`: one TP group of 2 ranks, fp32 scores within
    1e-5 of one process (TP reduces in another order) and the same matrices."""
    import numpy as np

    assert main(["run", *_args(model, rm_bench_data_dir), "--out", str(tmp_path / "one")]) == 0
    proc = _torchrun([*_args(model, rm_bench_data_dir), "--tp", "2"], tmp_path / "tp")
    assert proc.returncode == 0, proc.stderr[-3000:]

    def scores(d: Path) -> np.ndarray:
        rows = json.loads((d / "scores.json").read_text())
        return np.array([r["score_chosen"] + r["score_rejected"] for r in rows])

    a, b = scores(tmp_path / "one"), scores(tmp_path / "tp")
    assert np.all(np.abs(a - b) <= 1e-5 * (1 + np.abs(a)))
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    tp = json.loads((tmp_path / "tp" / "metrics.json").read_text())
    assert [one["domains"][d]["matrix"] for d in one["domains"]] == [
        tp["domains"][d]["matrix"] for d in tp["domains"]
    ]
    assert tp["meta"]["distributed"] == {"world_size": 2, "tp": 2, "dp": 1, "backend": "gloo"}


def test_a_failing_rank_fails_the_job_in_one_line(
    model: Path, rm_bench_data_dir: Path, tmp_path: Path
) -> None:
    proc = _torchrun(_args(model, rm_bench_data_dir), tmp_path / "out", fail_rank=1)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: rank")]
    assert lines == ["error: rank 1: RuntimeError: injected failure in a batch"], proc.stderr[-3000:]
    assert not (tmp_path / "out" / "scores.json").exists()
