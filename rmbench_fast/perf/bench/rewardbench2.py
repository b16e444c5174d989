"""`python -m rmbench_fast bench --benchmark rewardbench2 --paths official native`: RewardBench 2's
classifier path, run_v2.py's flow against the native engine, on the same token sequences.

- `official`: what allenai/reward-bench `scripts/run_v2.py` does with a sequence classifier: every
  completion is its own row (the prompt encoded again in each), rows in file order (a prompt's
  completions together, chosen first), `--batch_size` 64 rows per forward, right-padded to the
  batch's longest, the model pooling at its rightmost non-pad token (transformers,
  AutoModelForSequenceClassification in the run's dtype).
- `native`: the engine (`pipeline.score.score_run`, no results store): a prompt's N completions
  in one packed segment, the common prefix once.

Both paths run in this process, one after the other, each timed from its model load to its last
score. Reported: seconds, tokens (useful; official: processed with padding; native: packed),
the speed-up, max |score difference|, and whether the best-of-N credits and subset scores agree.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from rmbench_fast.benchmarks import REWARDBENCH2
from rmbench_fast.benchmarks.rewardbench2.data import load_prompts, select
from rmbench_fast.benchmarks.rewardbench2.metrics import compute_metrics
from rmbench_fast.errors import UsageError
from rmbench_fast.inputs import hub
from rmbench_fast.inputs.datafiles import data_files, hash_files
from rmbench_fast.pipeline.memo import EvalCache
from rmbench_fast.pipeline.models import choose_models, resolve_hub_models
from rmbench_fast.pipeline.rewardbench2 import tokenize_rb2
from rmbench_fast.pipeline.score import score_run
from rmbench_fast.records import TokSeq
from rmbench_fast.settings import RunConfig
from rmbench_fast.utils.threads import cpu_description, set_threads
from rmbench_fast.utils.versions import versions

RB2_PATHS = ("official", "native")
OFFICIAL_BATCH = 64  # run_v2.py's --batch_size default


def official_rb2_scores(
    model: Any, seqs: Sequence[Sequence[TokSeq]], pad: int, device: str, batch_size: int = OFFICIAL_BATCH
) -> tuple[np.ndarray, dict[str, int]]:
    """run_v2.py's batching (module docstring) over our token sequences.
    -> (scores [n_prompts, N_max] float64, NaN past a prompt's N; {"useful", "processed", "batches"})."""
    import torch  # start-up cost: only the official path needs it here

    model.config.pad_token_id = int(pad)
    flat = [(p, j, s) for p, group in enumerate(seqs) for j, s in enumerate(group)]
    out = np.full((len(seqs), max(len(g) for g in seqs)), np.nan)
    processed = 0
    with torch.no_grad():
        for b0 in range(0, len(flat), batch_size):
            rows = flat[b0 : b0 + batch_size]
            width = max(len(s.ids) for _, _, s in rows)
            ids = torch.full((len(rows), width), int(pad), dtype=torch.long)  # ids: [B, L]
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for i, (_, _, s) in enumerate(rows):
                ids[i, : len(s.ids)] = torch.tensor(s.ids, dtype=torch.long)
                mask[i, : len(s.ids)] = 1
                if s.mask_first:  # a duplicated BOS the official pipeline masks (SPEC §4)
                    mask[i, 0] = 0
            processed += ids.numel()
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits  # [B, 1]
            for (p, j, _), v in zip(rows, logits[:, 0].float().double().cpu().numpy()):
                out[p, j] = v
    useful = sum(len(s.ids) for _, _, s in flat)
    return out, {"useful": useful, "processed": processed, "batches": -(-len(flat) // batch_size)}


def _official(cfg: RunConfig, model_dir: Any, seqs: Any, pad: int, batch_size: int) -> dict[str, Any]:
    import torch  # start-up cost: the official path's transformers load
    import transformers

    t0 = time.perf_counter()
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        model_dir, dtype=getattr(torch, cfg.dtype if cfg.dtype != "auto" else "float32")
    )
    model = model.to(cfg.device).eval()
    load_s = time.perf_counter() - t0
    scores, tokens = official_rb2_scores(model, seqs, pad, cfg.device, batch_size)
    wall = time.perf_counter() - t0
    del model
    gc.collect()
    return {"scores": scores, "seconds": wall, "load_seconds": load_s, "tokens": tokens}


def _native(cfg: RunConfig, choice: Any, toks: Any, log: Callable[[str], None]) -> dict[str, Any]:
    t0 = time.perf_counter()
    scored = score_run(replace(cfg, no_cache=True), choice, toks, EvalCache(), log, None, None)
    wall = time.perf_counter() - t0
    st = scored.scorer.stats
    scores = scored.scores
    del scored
    gc.collect()
    tokens = {
        "useful": st.get("useful_tokens"),
        "packed": st.get("packed_tokens"),
        "batches": st.get("n_batches"),
    }
    return {
        "scores": scores,
        "seconds": wall,
        "tokens": tokens,
        "prefix_savings_frac": st.get("prefix_savings_frac"),
    }


def bench_rb2(
    cfg: RunConfig,
    paths: Sequence[str],
    *,
    subsets: Sequence[str] | None = None,
    batch_size: int = OFFICIAL_BATCH,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Each path of `paths` on the same prompts and token sequences; the bench JSON document."""
    bad = [p for p in paths if p not in RB2_PATHS]
    if bad:
        raise UsageError(f"bench --benchmark {REWARDBENCH2} compares --paths official native, not {bad}")
    if cfg.data is None or cfg.model is None:
        raise UsageError(f"bench --benchmark {REWARDBENCH2} needs --model and --data")
    threads = set_threads(cfg.threads)
    cfg, _sources = resolve_hub_models(cfg, log)
    path, _source = hub.resolve_dataset(str(cfg.data), progress=cfg.progress, log=log)
    prompts = select(load_prompts(path), subsets=subsets, limit=cfg.limit)
    if not prompts:
        raise UsageError(f"no prompts left to score in {path} after --subsets/--limit")
    choice = choose_models(cfg, log)
    if choice.kind != "classifier":
        raise UsageError(
            f"bench --benchmark {REWARDBENCH2} times the classifier path (run_v2.py's); {choice.model_dir} is a "
            f"{choice.kind} model"
        )
    files = data_files(path)
    toks = tokenize_rb2(
        cfg, prompts, ("rb2-prompts", str(path), tuple(subsets or ()), cfg.limit), choice, EvalCache()
    )
    pad = toks.pad_id if toks.pad_id is not None else 0
    runs: dict[str, dict[str, Any]] = {}
    for name in paths:
        log(f"bench: {name} path ...")
        if name == "official":
            runs[name] = _official(cfg, choice.model_dir, toks.seqs, pad, batch_size)
        else:
            runs[name] = _native(cfg, choice, toks, log)
    metrics = {k: compute_metrics(prompts, r["scores"], resamples=0) for k, r in runs.items()}
    doc: dict[str, Any] = {
        "benchmark": REWARDBENCH2,
        "model": str(choice.model_dir),
        "data": {"path": str(path), "sha256": hash_files(files), "n_prompts": len(prompts)},
        "n_completions": int(sum(len(p.completions) for p in prompts)),
        "device": choice.device,
        "dtype": choice.dtype,
        "threads": threads,
        "machine": {"cpu": cpu_description()},
        "official_batch_size": batch_size,
        "paths": {
            k: {
                "seconds": r["seconds"],
                **({"load_seconds": r["load_seconds"]} if "load_seconds" in r else {}),
                "tokens": r["tokens"],
                "subsets": {s: e["score"] for s, e in metrics[k]["subsets"].items()},
                **({"prefix_savings_frac": r["prefix_savings_frac"]} if "prefix_savings_frac" in r else {}),
            }
            for k, r in runs.items()
        },
        "versions": versions(("torch", "transformers", "numpy")),
    }
    if "official" in runs and "native" in runs:
        a, b = runs["official"]["scores"], runs["native"]["scores"]
        finite = np.isfinite(a) & np.isfinite(b)
        ca, cb = metrics["official"]["credits"], metrics["native"]["credits"]
        doc["comparison"] = {
            "speedup_native_vs_official": runs["official"]["seconds"] / runs["native"]["seconds"],
            "max_abs_score_diff": float(np.max(np.abs(a[finite] - b[finite]))) if finite.any() else None,
            "credits_equal": int(sum(x == y for x, y in zip(ca, cb))),
            "n_prompts": len(ca),
            "official_processed_over_native_packed": runs["official"]["tokens"]["processed"]
            / runs["native"]["tokens"]["packed"],
        }
    return doc


def print_bench_rb2(doc: dict[str, Any], console: Any) -> None:
    """One row per path: seconds, tokens, subset scores; then the comparison line."""
    from rich.table import Table  # start-up cost: rich loads only when a report is printed

    t = Table(
        title=f"RewardBench 2 bench: {doc['data']['n_prompts']} prompts, {doc['n_completions']} completions"
    )
    for col in ("path", "seconds", "tokens processed", "useful"):
        t.add_column(col, justify="left" if col == "path" else "right")
    for name, r in doc["paths"].items():
        tok = r["tokens"]
        t.add_row(
            name, f"{r['seconds']:.2f}", str(tok.get("processed", tok.get("packed"))), str(tok["useful"])
        )
    console.print(t)
    c = doc.get("comparison")
    if c:
        console.print(
            f"native is {c['speedup_native_vs_official']:.2f}x the official flow; max |Δscore| "
            f"{c['max_abs_score_diff']:.2e}; best-of-N credits equal on {c['credits_equal']}/{c['n_prompts']} prompts; "
            f"official processes {c['official_processed_over_native_packed']:.2f}x native's packed tokens"
        )
