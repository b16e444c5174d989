"""`python -m rmbench_fast sweep MODEL... --ray {local,auto,ADDRESS} [--gpus-per-model K]`.

Each checkpoint runs as a Ray task holding its own GPU(s), so a sweep uses every GPU of a
cluster; the outputs are the local sweep's: OUT/NN-<name>/ (written by the driver, so no shared
filesystem is needed) and OUT/sweep.json, rewritten as each checkpoint finishes.

- Reference: with a shared reference model on the native engine, one task computes its
  Σ log π_ref first (`pipeline.score.prepare_reference`); the result goes into Ray's object store and
  seeds every checkpoint's EvalCache, so each checkpoint replays the same batches and its scores
  are bit-identical to the local sweep's.
- Placement: K = 1 is a task with `num_gpus=1`; K > 1 reserves a STRICT_PACK placement group of K
  one-GPU bundles and runs the checkpoint under torchrun with `--tp K` inside it (the reference
  is then shared through each node's results store instead). Waiting for a placement has a
  timeout and says what could not be placed.
- Failure: a checkpoint that raises is retried once; after that its row in sweep.json carries
  the error and the other checkpoints go on. Ctrl-C cancels the tasks.
Ray is an optional extra (`pip install 'rmbench_fast[ray]'`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from rmbench_fast.errors import RMBenchError, UsageError
from rmbench_fast.inputs.hub import pin
from rmbench_fast.pipeline import run_evaluation
from rmbench_fast.pipeline.memo import EvalCache
from rmbench_fast.pipeline.score import prepare_reference
from rmbench_fast.pipeline.sweep import (
    DEFAULT_SWEEP_OUT,
    SWEEP_FILE,
    check_model,
    print_sweep,
    run_dirs,
    summary_row,
)
from rmbench_fast.results.report import write_outputs
from rmbench_fast.settings import RunConfig
from rmbench_fast.utils.atomic import write_json_atomic

PLACEMENT_TIMEOUT_S = 600.0


def _ray() -> Any:
    if importlib.util.find_spec("ray") is None:
        raise UsageError("--ray needs Ray: pip install 'rmbench_fast[ray]'")
    import ray  # optional dependency: ray

    return ray


def connect(address: str) -> Any:
    """Join (or, for "local", start) a Ray cluster; an already initialised Ray is reused."""
    ray = _ray()
    if not ray.is_initialized():
        try:
            if address == "local":
                ray.init(include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=address, log_to_driver=False)
        except (ConnectionError, RuntimeError) as exc:
            raise UsageError(
                f"cannot reach the Ray cluster at {address!r}: {str(exc).splitlines()[0]}"
            ) from None
    return ray


def _score_checkpoint(cfg_dict: dict[str, Any], seed_entries: dict[tuple[Any, ...], Any]) -> dict[str, Any]:
    """The Ray task: one checkpoint's run, seeded with the shared reference sums."""
    cfg = RunConfig(**cfg_dict)
    cache = EvalCache()
    for key, value in seed_entries.items():
        cache.put(key, value)
    result = run_evaluation(cfg, log=lambda _m: None, cache=cache, sweep=True)

    result["meta"]["ray"] = {
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "node": os.uname().nodename,
        "pid": os.getpid(),
        "cpu_threads": torch.get_num_threads(),  # CPU scores' last bits follow it
    }
    if seed_entries:
        result["meta"]["reference_sums"] = "computed once by the sweep's reference task"
    return result


def _score_checkpoint_tp(cfg_dict: dict[str, Any], tp: int) -> dict[str, Any]:
    """The Ray task for K > 1 GPUs: the checkpoint under torchrun with --tp K, its outputs read back."""
    with tempfile.TemporaryDirectory() as tmp:
        argv = _run_argv(cfg_dict, Path(tmp))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={tp}"]
        cmd += ["-m", "rmbench_fast", "run", *argv, "--tp", str(tp)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError((proc.stderr.strip().splitlines() or ["torchrun failed"])[-1])
        result = json.loads((Path(tmp) / "metrics.json").read_text())
        result["rows"] = json.loads((Path(tmp) / "scores.json").read_text())
    result["meta"]["ray"] = {"cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "tp": tp}
    return result


def _run_argv(cfg: dict[str, Any], out: Path) -> list[str]:
    """`run` options for a RunConfig dict (the K > 1 path)."""
    argv = ["--out", str(out), "--no-progress"]
    flags = {"fp32_scores", "trust_remote_code", "allow_pickle", "no_cache", "allow_nonfinite"}
    skip = {"out", "progress", "domains", "ids"}
    for key, value in cfg.items():
        if key in skip or value is None or value is False:
            continue
        opt = "--" + key.replace("_", "-")
        argv += [opt] if key in flags else [opt, str(value)]
    for key in ("domains", "ids"):
        if cfg.get(key):
            argv += ["--" + key, *map(str, cfg[key])]
    return argv


def _placement(ray: Any, gpus: int, timeout_s: float) -> Any:
    """A STRICT_PACK group of `gpus` one-GPU bundles, ready, or a one-line error."""
    from ray.util.placement_group import placement_group, remove_placement_group  # optional dependency: ray

    pg = placement_group([{"GPU": 1, "CPU": 1}] * gpus, strategy="STRICT_PACK")
    ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
    if not ready:
        remove_placement_group(pg)
        have = ray.cluster_resources().get("GPU", 0)
        raise UsageError(
            f"could not place {gpus} GPUs on one node within {timeout_s:.0f} s (the cluster has {have:g} GPUs); "
            "lower --gpus-per-model or add nodes"
        )
    return pg


def run_ray_sweep(
    models: list[str], base: RunConfig, console: Any, *, address: str, gpus_per_model: int = 1
) -> list[dict[str, Any]]:
    """The sweep over `models` as Ray tasks (module docstring); returns sweep.json's rows."""
    if not models:
        raise UsageError("sweep needs at least one model directory")
    if gpus_per_model < 1:
        raise UsageError(f"--gpus-per-model must be >= 1, got {gpus_per_model}")
    for m in models:  # fail on a bad model or option now, not after hours on the cluster
        check_model(m, base)
    ray = connect(address)
    out = Path(base.out or DEFAULT_SWEEP_OUT)
    dirs = run_dirs(models, out)
    # Hub ids go to the tasks pinned to the commit resolved here: no task resolves a branch again.
    pinned = replace(base, ref_model=pin(base.ref_model)) if base.ref_model else base
    cfgs = {
        i: asdict(replace(pinned, model=pin(m), out=str(d), progress=False))
        for i, (m, d) in enumerate(zip(models, dirs))
    }
    refs: dict[Any, int] = {}
    groups: list[Any] = []
    try:
        if gpus_per_model == 1:
            seed = {}
            if base.ref_model:
                console.print(f"[bold]sweep:[/bold] reference {base.ref_model} (one task, shared)")
                task = ray.remote(num_gpus=1)(
                    lambda d: prepare_reference(RunConfig(**d), log=lambda _m: None)
                )
                seed = ray.get(task.remote(cfgs[0]))
            seed_ref = ray.put(seed)
            remote = ray.remote(num_gpus=1, max_retries=1, retry_exceptions=True)(_score_checkpoint)
            refs = {remote.remote(cfgs[i], seed_ref): i for i in cfgs}
        else:
            # optional dependency: ray
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            remote = ray.remote(num_gpus=1, max_retries=1, retry_exceptions=True)(_score_checkpoint_tp)
            for i in cfgs:
                pg = _placement(ray, gpus_per_model, PLACEMENT_TIMEOUT_S)
                groups.append(pg)
                strategy = PlacementGroupSchedulingStrategy(placement_group=pg)
                refs[remote.options(scheduling_strategy=strategy).remote(cfgs[i], gpus_per_model)] = i
        rows: dict[int, dict[str, Any]] = {}
        pending = list(refs)
        t0 = time.perf_counter()
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            i = refs[done[0]]
            try:
                result = ray.get(done[0])
            except Exception as exc:  # noqa: BLE001 - reported in sweep.json, the others go on
                rows[i] = {"model": models[i], "out": str(dirs[i]), "error": _one_line(exc)}
                console.print(f"[red]sweep: {models[i]} failed:[/red] {rows[i]['error']}")
            else:
                result_rows = result.pop("rows")
                write_outputs(dirs[i], result_rows, result)
                rows[i] = summary_row(models[i], dirs[i], result)
                rows[i]["ray"] = result["meta"].get("ray")
                console.print(
                    f"[bold]sweep {len(rows)}/{len(models)}:[/bold] {models[i]} ({time.perf_counter() - t0:.0f} s)"
                )
            ordered = [rows[k] for k in sorted(rows)]
            write_json_atomic(
                out / SWEEP_FILE,
                {"models": ordered, "ray": {"address": address, "gpus_per_model": gpus_per_model}},
            )
    except KeyboardInterrupt:
        for ref in refs:
            ray.cancel(ref, force=True)
        raise
    finally:
        if groups:
            from ray.util.placement_group import remove_placement_group  # optional dependency: ray

            for pg in groups:
                remove_placement_group(pg)
    final = [rows[k] for k in sorted(rows)]
    print_sweep([r for r in final if "error" not in r], console)
    console.print(f"wrote {out / SWEEP_FILE}")
    return final


def _one_line(exc: BaseException) -> str:
    """The innermost error of a Ray task failure, in one line."""
    cause = getattr(exc, "cause", None) or exc
    if isinstance(cause, RMBenchError):
        return str(cause)
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[-1] if text else ''}"[:400]
