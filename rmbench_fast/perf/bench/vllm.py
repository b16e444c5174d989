"""The vLLM path: the prepared sequences scored by rmbench_fast/perf/vllm_path.py in the vLLM
environment's own Python (DPO from `prompt_logprobs`, classifiers from `classify`), reduced to scores."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from rmbench_fast.perf.bench.prepared import Prepared

VLLM_ENV_DEFAULTS = {
    # On a CPU, vLLM keeps one core for an API server by default; none runs here.
    "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
    # The engine in this process (not a worker process): its peak RSS is the child's own.
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
}


def vllm_spec(prep: Prepared, engine_args: dict[str, Any] | None) -> dict[str, Any]:
    """What the vLLM child scores: every sequence's token ids (classifiers: cut after the pooled
    token, so vLLM's last-token pooling reads the position the official pipeline pools)."""
    m, cfg = prep.model, prep.cfg
    flat = [s for g in prep.seqs for s in g]
    spec: dict[str, Any] = {
        "kind": m.kind,
        "dtype": m.dtype,
        "models": [str(m.model_dir)] + ([str(cfg.ref_model)] if cfg.ref_model else []),
        "engine_args": engine_args or {},
    }
    if m.kind == "dpo":
        spec["prompts"] = [list(s.ids) for s in flat]
        spec["label_start"] = [s.label_start for s in flat]
    else:
        pools = [s.pool_index if s.pool_index >= 0 else len(s.ids) + s.pool_index for s in flat]
        spec["prompts"] = [list(s.ids[: p + 1]) for s, p in zip(flat, pools)]
        spec["cut_after_pool"] = sum(int(p + 1 < len(s.ids)) for s, p in zip(flat, pools))
        spec["masked_first"] = sum(int(s.mask_first) for s in flat)
    return spec


def run_vllm(
    prep: Prepared,
    python: str,
    engine_args: dict[str, Any] | None,
    threads: int | None,
    timeout: float,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run rmbench_fast/perf/vllm_path.py in `python` (the vLLM environment) and reduce its output."""
    import torch  # start-up cost: torch

    from rmbench_fast.scoring.rewards import reward_from_logprobs  # start-up cost: torch

    spec = vllm_spec(prep, engine_args)
    env = dict(os.environ)
    for k, v in VLLM_ENV_DEFAULTS.items():
        env.setdefault(k, v)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    env.pop("PYTHONPATH", None)  # the vLLM environment's own packages only
    script = Path(__file__).parent.with_name("vllm_path.py")
    with tempfile.TemporaryDirectory(prefix="rmbf_vllm_") as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_path.write_text(json.dumps(spec))
        # Run a copy from the temp dir: a script's own directory goes first on sys.path, and
        # rmbench_fast/ holds modules (tokenize.py, profile.py) that would shadow the standard library's.
        child = Path(tmp) / "rmbf_vllm_path.py"
        shutil.copy2(script, child)
        log(f"vllm: {len(spec['prompts'])} sequences in {python} (timeout {timeout:.0f} s)")
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(
                [python, str(child), str(spec_path), str(out_path)],
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"the vLLM child ran past --vllm-timeout {timeout:.0f} s") from None
        child_wall = time.perf_counter() - t0
        doc = json.loads(out_path.read_text()) if out_path.is_file() else {}
        if proc.returncode != 0 or "error" in doc:
            tail = (proc.stderr or "").strip().splitlines()[-5:]
            raise RuntimeError(f"the vLLM child failed ({doc.get('error') or ' | '.join(tail)})")
    n = len(prep.seqs)
    models = doc["models"]
    if prep.model.kind == "dpo":
        sums = []
        for row in models:
            per = [torch.tensor(lp, dtype=torch.float32) for lp in row["logprobs"]]
            if prep.cfg.ref_model:
                sums.append(np.array([float(p.sum()) for p in per]))
            else:
                mode = prep.model.ref_free or "avg"
                sums.append(np.array([float(reward_from_logprobs(p, mode)) for p in per]))  # type: ignore[arg-type]
        flat = sums[0] - sums[1] if len(sums) == 2 else sums[0]
    else:
        flat = np.array(models[0]["scores"], dtype=np.float64)
    tokens = sum(len(p) for p in spec["prompts"]) * len(models)
    res: dict[str, Any] = {
        "scores": flat.reshape(n, 6).tolist(),
        "load_s": sum(r["load_s"] for r in models),
        "score_s": sum(r["score_s"] for r in models),
        "cpu_s": sum(r.get("cpu_s", 0.0) for r in models)
        if env.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0"
        else None,
        "child_wall_s": child_wall,
        "useful_tokens": tokens,
        "processed_tokens": tokens,
        "padding_tokens": 0,
        "prefix_savings": 0,
        "peak_mem_mib": max(doc.get("peak_rss_mib", 0.0), doc.get("peak_rss_children_mib", 0.0)),
        "peak_mem_kind": "peak RSS of the vLLM child (engine in-process)"
        if env.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0"
        else "peak RSS of the vLLM child or its largest worker",
        "vllm_version": doc.get("vllm_version"),
        "engine_args": [r["engine_args"] for r in models],
        "prefix_caching": [r.get("prefix_caching") for r in models],
        "torch_threads": doc.get("torch_threads"),
        "env": {k: env[k] for k in (*VLLM_ENV_DEFAULTS, "OMP_NUM_THREADS") if k in env},
        "per_model": [{"model": r["model"], "load_s": r["load_s"], "score_s": r["score_s"]} for r in models],
        "how": "vLLM: prompt_logprobs (DPO)" if prep.model.kind == "dpo" else "vLLM: pooling runner classify",
    }
    if prep.model.kind == "classifier":
        res["sequences_cut_after_pool"] = spec["cut_after_pool"]
        res["sequences_with_masked_first_token"] = spec["masked_first"]
        res["activation"] = "vLLM's classify output (sigmoid of the logit for one label)"
    return res
