"""`python -m rmbench_fast run --benchmark rewardbench2`: score a reward model on RewardBench 2.

Steps: load and validate the prompts (data) -> the model and its kind (pipeline.models.choose_models)
-> N token sequences per prompt (grouping) -> the native engine scores every completion, the
prompt's tokens stored once per prompt -> metrics with intervals -> scores.json, metrics.json
and the per-subset table.

Supported: scalar rewards the native engine runs: sequence classifiers, the custom reward heads
(modelio.NativeHead) and causal-logit rewards (`--reward causal-logit:<id>`). RewardBench 2
reports classifiers and generative judges only; DPO policies are refused (the data has no
reference-model convention), generative judges are not wired yet.

It sits in pipeline/ (above the benchmarks it drives) and uses the pipeline's public steps.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rmbench_fast.benchmarks import REWARDBENCH2
from rmbench_fast.benchmarks.rewardbench2.data import load_prompts, select
from rmbench_fast.benchmarks.rewardbench2.grouping import tokenize_prompts
from rmbench_fast.benchmarks.rewardbench2.metrics import compute_metrics
from rmbench_fast.benchmarks.rewardbench2.report import print_report, score_rows
from rmbench_fast.errors import ModelError, NonFiniteScoreError, UsageError
from rmbench_fast.inputs.datafiles import data_files, hash_files
from rmbench_fast.results.report import write_outputs
from rmbench_fast.settings import DEFAULT_OUT


def _refuse(cfg: Any) -> None:
    """The RM-Bench options that mean nothing here: one line, exit 2."""
    given = {
        "--ref-model": cfg.ref_model,
        "--ref-free": cfg.ref_free,
        "--domains (use --subsets)": cfg.domains,
        "--ids": cfg.ids,
        "--device-map": cfg.device_map,
    }
    bad = [k for k, v in given.items() if v]
    if bad:
        raise UsageError(f"--benchmark {REWARDBENCH2} takes no {', '.join(bad)}")
    if cfg.kind not in ("auto", "classifier"):
        raise UsageError(
            f"--benchmark {REWARDBENCH2} scores scalar rewards (sequence classifiers, reward heads, "
            f"--reward causal-logit:<id>); --kind {cfg.kind} is not supported"
        )
    if cfg.backend == "hf":
        raise UsageError(f"--benchmark {REWARDBENCH2} runs on the native engine (--backend native or auto)")
    if cfg.data is None:
        raise UsageError(
            f"--benchmark {REWARDBENCH2} needs --data: the allenai/reward-bench-2 export (.parquet, .json or .jsonl)"
        )
    if cfg.model is None:
        raise UsageError(f"--benchmark {REWARDBENCH2} needs --model (a reward model directory)")


def run_rewardbench2(
    cfg: Any,
    *,
    subsets: Sequence[str] | None = None,
    log: Callable[[str], None] = print,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Score RewardBench 2 with `cfg` (a settings.RunConfig). Returns metrics.json's content
    {"subsets", "overall", "meta"} plus "rows" (scores.json) and "scores" [n, N_max]."""
    from rmbench_fast.engine.scorer import NativeScorer, native_supports
    from rmbench_fast.inputs.format import Formatter
    from rmbench_fast.inputs.tokenization import Tokenizer
    from rmbench_fast.pipeline.models import choose_models, data_shard  # start-up cost: torch
    from rmbench_fast.pipeline.score import score_settings  # start-up cost: torch
    from rmbench_fast.pipeline.tokens import classifier_pad_id, head_pooling  # start-up cost: torch

    t0 = time.perf_counter()
    _refuse(cfg)
    path = Path(cfg.data)
    files = data_files(path)
    prompts = select(load_prompts(path), subsets=subsets, limit=cfg.limit)
    if not prompts:
        raise UsageError(f"no prompts left to score in {path} after --subsets/--limit")
    model = choose_models(cfg, log)
    if model.kind not in ("classifier", "causal-logit"):
        raise UsageError(
            f"{model.model_dir} is a {model.kind} model; --benchmark {REWARDBENCH2} scores sequence "
            "classifiers, reward heads and --reward causal-logit:<id>"
        )
    reason = native_supports(model.info.config, "causal" if model.kind == "causal-logit" else "classifier")
    if reason is not None:
        raise ModelError(
            f"the native engine does not support this model: {reason}", file=str(model.model_dir)
        )
    formatter = Formatter.from_model_dir(model.model_dir, cfg.chat_template)
    tok = Tokenizer(model.model_dir)
    add_eos = model.kind == "classifier" and not formatter.uses_chat_template
    pad_id = classifier_pad_id(model.info, tok) if model.kind == "classifier" else None
    seqs = tokenize_prompts(
        prompts, formatter, tok, kind=model.kind, add_eos=add_eos, pad_id=pad_id, max_length=cfg.max_length
    )
    head = model.info.native_head if model.kind == "classifier" else None
    if head is not None:
        seqs = head_pooling(seqs, head, pad_id)
    settings = score_settings(cfg, model.kind, None, model.device, model.dtype, pad_id)
    t1 = time.perf_counter()
    scorer = NativeScorer(model.model_dir, settings, log=log)
    scorer.shard = data_shard()
    scores = np.asarray(scorer.score(seqs, progress=progress), dtype=np.float64)  # [n, N_max]
    scoring_s = time.perf_counter() - t1
    result = compute_metrics(prompts, scores, resamples=cfg.resamples, seed=cfg.seed)
    credits = result.pop("credits")
    bad = [
        {"id": p.id, "subset": p.subset, "completion": j}
        for i, p in enumerate(prompts)
        for j in range(len(p.completions))
        if not math.isfinite(scores[i, j])
    ]
    result["meta"] = {
        "benchmark": REWARDBENCH2,
        "model": str(model.model_dir),
        "kind": model.kind,
        "native_head": head.name if head is not None else None,
        "backend": "native",
        "device": model.device,
        "dtype": model.dtype,
        "data": {
            "path": str(path),
            "files": [str(f) for f in files],
            "sha256": hash_files(files),
            "n_prompts": len(prompts),
            "n_completions": int(sum(len(p.completions) for p in prompts)),
        },
        "chat_template": "model" if formatter.uses_chat_template else formatter.template_name,
        "tokens": {
            "total": sum(len(s.ids) for g in seqs for s in g),
            "max_sequence": max(len(s.ids) for g in seqs for s in g),
            "max_length": cfg.max_length,
        },
        "scorer_stats": scorer.stats,
        "scoring": "allenai/reward-bench fdc742d (PR 236): best-of-N 1/k tie credit, Ties composite",
        "nonfinite": {"count": len(bad), "scores": bad[:100], "allowed": cfg.allow_nonfinite},
        "seconds": {"total": time.perf_counter() - t0, "scoring": scoring_s},
    }
    result["rows"] = score_rows(prompts, scores, credits)
    result["scores"] = scores
    return result


def run_and_report(cfg: Any, console: Any, *, subsets: Sequence[str] | None = None) -> dict[str, Any]:
    """Score, write scores.json and metrics.json into cfg.out, print the table; exit 3 (after
    writing) on a non-finite score unless --allow-nonfinite."""
    from rmbench_fast.utils.distributed import is_main  # start-up cost: torch.distributed

    result = run_rewardbench2(cfg, subsets=subsets, log=console.print)
    rows = result.pop("rows")
    result.pop("scores")
    if not is_main():
        return result
    out_dir = Path(cfg.out or DEFAULT_OUT)
    write_outputs(out_dir, rows, result)
    print_report(result, console)
    meta = result["meta"]
    console.print(
        f"{meta['data']['n_prompts']} prompts ({meta['data']['n_completions']} completions) scored in "
        f"{meta['seconds']['scoring']:.1f} s (native engine, {meta['device']}, {meta['dtype']}); wrote "
        f"{out_dir / 'scores.json'} and {out_dir / 'metrics.json'}"
    )
    bad = meta["nonfinite"]
    if bad["count"] and not bad["allowed"]:
        raise NonFiniteScoreError(
            f"{bad['count']} completion score(s) are NaN or inf (first: {bad['scores'][0]}); the outputs were "
            "written with null there; --allow-nonfinite keeps going (a NaN gets no credit)"
        )
    return result
