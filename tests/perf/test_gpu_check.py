"""bench/gpu_check.sh --dry-run: the GPU script's whole path on tiny shapes on the CPU, so it
cannot rot between GPU runs (issue 9); its build step with a stand-in pip, the JSON after every
stage, and the out-of-memory stage's pieces (issue 21)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from tests.helpers.paths import BENCH, REPO


@pytest.fixture(autouse=True)
def _bench_first_on_the_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """bench/ first on the import path, as `python bench/gpu_check.py` has it: the tests import
    gpu_check, which imports its sibling make_random_model by its bare name (undone after each test)."""
    monkeypatch.syspath_prepend(str(BENCH))


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
    import gpu_check

    assert report["stages_started"] == list(gpu_check.STAGES)
    for stage in gpu_check.STAGES:
        assert "error" not in report[stage], report[stage]
    assert report["build"]["cpp_core"] and report["build"]["cuda_build"] == "skipped"
    for arch in ("llama", "qwen2", "qwen3", "gemma2"):
        assert report["correctness"][arch]["float32"]["within_tol"]
        assert report["correctness"][arch]["bfloat16"]["decisive_pairs"] > 0
    assert all(k["ok"] for k in report["correctness"]["kernels"])
    speed = report["speed"]
    assert speed["native_s"] > 0 and speed["official_s"] > 0 and 0 < speed["mfu"]
    assert speed["decisive_agreement_vs_official"]["agreement"] > 0.9, speed
    cls = report["classifiers"]
    assert cls["llama3_masked_bos"]["masked_bos"] and not cls["qwen3"]["masked_bos"]
    for name in ("llama3_masked_bos", "qwen3"):
        assert cls[name]["float32"]["within_tol"] and cls[name]["float32"]["math_kernel_calls"] == 0
    together = report["together"]["float32"]
    assert together["within_tol"] and together["reference_mode"] == "together"
    assert together["kernel_a"].get("torch:ratio", 0) > 0  # the policy/reference ratio mode ran
    oom = report["oom"]
    assert oom["ok"] and oom["oom_halvings"] >= 1 and oom["completed"] and oom["freed"]
    assert oom["fill_stopped_by"].startswith("OutOfMemoryError")


def test_speed_stage_on_the_qwen3_shape(tmp_path: Path, rm_bench_data_dir: Path, smollm2_dir: Path) -> None:
    """`--shape qwen3-8b` (Skywork-Reward-V2-Qwen3's body) takes the same path, tiny on the CPU."""
    pytest.importorskip("transformers")
    import gpu_check

    data = gpu_check.prepare(tmp_path / "data", per_domain=2)
    speed = gpu_check.stage_speed("cpu", data, 1, True, "qwen3-8b")
    assert speed["shape"] == "tiny qwen3 (dry run)"
    assert speed["native_s"] > 0 and speed["official_s"] > 0
    assert speed["decisive_agreement_vs_official"]["agreement"] > 0.9, speed


# --- the build step (gpu_check.sh, before Python starts) ------------------------------------------
def _fake_pip(tmp_path: Path, cuda_ok: bool) -> Path:
    """A stand-in for `python -m pip` that records its arguments and environment, and fails the
    CUDA build (RMBF_CUDA=ON) unless `cuda_ok`."""
    script = tmp_path / "pip"
    script.write_text(
        "#!/usr/bin/env bash\n"
        f'echo "RMBF_CUDA=$RMBF_CUDA SKBUILD_CMAKE_DEFINE=$SKBUILD_CMAKE_DEFINE $*" >> "{tmp_path}/calls"\n'
        + ("" if cuda_ok else '[ "$RMBF_CUDA" = ON ] && { echo "nvcc fatal: no sm_90" >&2; exit 1; }\n')
        + "exit 0\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


@pytest.mark.parametrize("cuda_ok", [True, False])
def test_build_runs_in_the_shell_and_falls_back_without_cuda(tmp_path: Path, cuda_ok: bool) -> None:
    """gpu_check.sh installs before any Python starts (issue 21: a running interpreter cannot import
    what it installs in editable mode), and builds the core alone when the CUDA build fails."""
    out = tmp_path / "out"
    run = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu_check.sh"), "--build-only", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "RMBF_GPU_CHECK_PIP": str(_fake_pip(tmp_path, cuda_ok))},
    )
    assert run.returncode == 0, run.stderr
    import gpu_check

    status = gpu_check.read_build_status(out / gpu_check.BUILD_STATUS)
    calls = (tmp_path / "calls").read_text().splitlines()
    assert all("install -q --no-build-isolation --no-deps -e ." in c for c in calls)
    assert calls[0].startswith("RMBF_CUDA=ON SKBUILD_CMAKE_DEFINE=CMAKE_CUDA_ARCHITECTURES=90;RMBF_CUDA=ON")
    if cuda_ok:
        assert status["cuda_build"] == "ok" and len(calls) == 1
    else:
        assert status["cuda_build"] == "failed" and status["cpu_build"] == "ok"
        assert calls[1].startswith("RMBF_CUDA=OFF SKBUILD_CMAKE_DEFINE=RMBF_CUDA=OFF")
        assert "nvcc fatal" in (out / "build-cuda.log").read_text()
        info = gpu_check.stage_build(out / gpu_check.BUILD_STATUS)
        assert "nvcc fatal" in info["cuda_build_log_tail"]


def test_build_stage_installs_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Python side only reads what the shell built and checks this interpreter imports it."""
    import subprocess as sp

    import gpu_check

    def no_subprocess(*a: Any, **k: Any) -> None:
        raise AssertionError("gpu_check.py must not install the package itself")

    monkeypatch.setattr(sp, "run", no_subprocess)
    monkeypatch.setattr(sp, "Popen", no_subprocess)
    (tmp_path / "build.env").write_text("cuda_build=ok\ncpu_build=ok (with the CUDA kernel)\n")
    info = gpu_check.stage_build(tmp_path / "build.env")
    assert info["cuda_build"] == "ok" and info["cpp_core"] is True
    assert Path(info["package"]) == REPO / "rmbench_fast"
    assert "nothing" in gpu_check.stage_build(tmp_path / "absent.env")["built_by"]
    (tmp_path / "build.env").write_text("cuda_build=failed\ncpu_build=failed\n")
    with pytest.raises(RuntimeError, match="did not build"):
        gpu_check.stage_build(tmp_path / "build.env")


# --- the JSON after every stage ----------------------------------------------------------------
def test_json_is_written_after_every_stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run killed in a later stage (the device tool's time-out) still leaves the earlier stages'
    numbers on disk (issue 21: the JSON was written only at the end)."""
    import gpu_check

    data = tmp_path / "data"
    data.mkdir()
    (data / gpu_check.DOMAIN_FILES[0]).write_text("[]")
    monkeypatch.setattr(gpu_check, "stage_correctness", lambda *a: {"llama": "ok"})

    def killed(*a: Any) -> None:
        raise KeyboardInterrupt  # not an Exception: nothing after it runs, as under a kill

    monkeypatch.setattr(gpu_check, "stage_classifiers", killed)
    with pytest.raises(KeyboardInterrupt):
        gpu_check.main(
            [
                "--dry-run",
                "--data",
                str(data),
                "--out",
                str(tmp_path),
                "--stages",
                "correctness",
                "classifiers",
            ]
        )
    report = json.loads((tmp_path / "gpu-cpu-dry-run.json").read_text())
    assert report["correctness"] == {"llama": "ok"} and report["stages_started"] == [
        "correctness",
        "classifiers",
    ]
    assert "classifiers" not in report


# --- the out-of-memory stage's pieces ----------------------------------------------------------------
@pytest.mark.parametrize("error", ["oom", "cublas"])
def test_ballast_fills_until_an_allocation_fails(error: str) -> None:
    """The fill stops at torch.OutOfMemoryError and at a cuBLAS-style RuntimeError alike, then
    frees back down to the requested room."""
    import gpu_check
    import torch

    sim = gpu_check.SimulatedDevice(capacity=1000, bytes_per_token=1)
    alloc = sim.alloc
    if error == "cublas":

        def alloc(n: int) -> Any:  # noqa: F811
            if sim.free() < 300:
                raise RuntimeError(
                    "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"
                )
            return sim.alloc(n)

    ballast = gpu_check.Ballast(alloc, sim.free, chunk=100)
    free = ballast.fill(room=250)
    assert free == sim.free() >= 250 and free < 350
    assert ballast.alloc_error.startswith("OutOfMemoryError" if error == "oom" else "RuntimeError")
    guarded = sim.guard(lambda b: "ran")
    assert guarded(SimpleNamespace(n_tokens=free)) == "ran"
    with pytest.raises(torch.OutOfMemoryError):
        guarded(SimpleNamespace(n_tokens=free + 1))
    ballast.release()
    assert sim.used == 0


def test_oom_stage_reports_a_cublas_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cuBLAS allocation failure (RuntimeError) in the constrained run is reported, not raised."""
    import gpu_check

    import rmbench_fast.engine as engine

    class FakeScorer:
        def __init__(self, model_dir: Any, *, batch_tokens: int, log: Any, **kw: Any) -> None:
            self.budget, self.stats = batch_tokens, {"oom_halvings": 0, "batch_tokens": batch_tokens}
            self.schedule = SimpleNamespace(batches=[SimpleNamespace(batch=SimpleNamespace(n_tokens=40))])
            self._score_batch = lambda batch: None

        def score(self, seqs: Any) -> np.ndarray:
            if self.budget > 40:  # the constrained run
                raise RuntimeError(
                    "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"
                )
            return np.zeros((1, 6))

    monkeypatch.setattr(engine, "NativeScorer", FakeScorer)
    monkeypatch.setattr(gpu_check, "load_seqs", lambda *a, **k: ([], [[]]))
    monkeypatch.setattr(gpu_check, "hf_model", lambda *a, **k: None)
    monkeypatch.setattr(gpu_check, "native_from_hf", lambda *a, **k: None)
    res = gpu_check.stage_oom("cpu", tmp_path, 1)
    assert res["completed"] is False and res["cublas_alloc_failure"] is True and res["ok"] is False
    assert res["freed"]  # the ballast is given back even so
