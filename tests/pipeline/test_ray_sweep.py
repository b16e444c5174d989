"""Sweeps on a local Ray cluster with 2 declared (fake) GPUs: scores bit-identical to the local
sweep, each task with its own CUDA_VISIBLE_DEVICES, a failing checkpoint reported while the
others finish."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rmbench_fast.commands import main

pytest.importorskip("transformers")
ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def cluster() -> Any:
    """One local cluster for the module (2 CPUs, 2 fake GPUs); every wait below has a timeout."""
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> dict[str, Path]:
    from tests.helpers.smol_variants import copy_tokenizer, make_tiny_smol_source
    from tests.helpers.tiny import SMOLLM2_VOCAB, make_tiny_model_dir

    base = tmp_path_factory.mktemp("ray_models")
    first = make_tiny_smol_source(base / "step-1", smollm2_dir)
    second = make_tiny_model_dir(base / "step-2", "llama", vocab_size=SMOLLM2_VOCAB, seed=11)
    ref = make_tiny_model_dir(base / "ref", "llama", vocab_size=SMOLLM2_VOCAB, seed=12)
    for d in (second, ref):
        copy_tokenizer(first, d)
    return {"step-1": first, "step-2": second, "ref": ref}


def _opts(data: Path, out: Path) -> list[str]:
    return ["--data", str(data / "chat_filtered.json"), "--limit", "2", "--device", "cpu", "--dtype", "float32",
            "--no-cache", "--no-progress", "--out", str(out)]  # fmt: skip


def _scores(run_dir: Path) -> np.ndarray:
    rows = json.loads((run_dir / "scores.json").read_text())
    return np.array([r["score_chosen"] + r["score_rejected"] for r in rows])


def test_ray_sweep_matches_local_sweep(
    cluster: Any, checkpoints: dict[str, Path], rm_bench_data_dir: Path, tmp_path: Path
) -> None:
    import torch

    models = [str(checkpoints["step-1"]), str(checkpoints["step-2"])]
    ref = ["--ref-model", str(checkpoints["ref"])]
    # Ray's workers run one CPU thread each (OMP_NUM_THREADS=1); a CPU GEMM's rounding follows
    # its thread count, so the local sweep runs with one thread too.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["sweep", *models, *ref, *_opts(rm_bench_data_dir, tmp_path / "local")]) == 0
    finally:
        torch.set_num_threads(threads)
    assert main(["sweep", *models, *ref, "--ray", "auto", *_opts(rm_bench_data_dir, tmp_path / "ray")]) == 0
    local = json.loads((tmp_path / "local" / "sweep.json").read_text())["models"]
    remote = json.loads((tmp_path / "ray" / "sweep.json").read_text())["models"]
    assert [r["model"] for r in remote] == models
    for a, b in zip(local, remote):
        name = Path(a["out"]).name
        assert np.array_equal(_scores(tmp_path / "local" / name), _scores(tmp_path / "ray" / name))
        assert a["total"]["overall"] == b["total"]["overall"]
    seen = {r["ray"]["cuda_visible_devices"] for r in remote}
    assert all(v is not None for v in seen)  # Ray gave each task its GPU
    for r in remote:
        assert len(r["ray"]["cuda_visible_devices"].split(",")) == 1


def test_ray_sweep_reports_a_failing_checkpoint(
    cluster: Any, checkpoints: dict[str, Path], rm_bench_data_dir: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(checkpoints["step-2"], broken)
    (broken / "model.safetensors").write_bytes(b"\0" * 64)  # passes the checks, fails to load
    models = [str(checkpoints["step-1"]), str(broken)]
    rc = main(["sweep", *models, "--ray", "auto", *_opts(rm_bench_data_dir, tmp_path / "out")])
    assert rc == 1
    rows = json.loads((tmp_path / "out" / "sweep.json").read_text())["models"]
    assert "error" not in rows[0] and (tmp_path / "out" / Path(rows[0]["out"]).name / "scores.json").is_file()
    assert rows[1]["model"] == str(broken) and rows[1]["error"]
