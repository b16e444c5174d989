"""`python -m rmbench_fast run --benchmark rewardbench2`: score a reward model on RewardBench 2.

Steps: hub ids resolved (`--model`, `--ref-model`, `--data`) -> the prompts loaded and validated
(benchmarks.rewardbench2.data) -> the model and its kind (pipeline.models.choose_models) -> N
token sequences per prompt (benchmarks.rewardbench2.grouping) -> the scores (pipeline.score.score_run,
as for RM-Bench: the native engine with the prompt's tokens stored once per prompt, or the hf
backend; a DPO reference in either reference mode; the results store) -> metrics with intervals
-> scores.json, metrics.json and the per-subset table.

Supported: sequence classifiers, the custom reward heads (modelio.NativeHead), causal-logit
rewards (`--reward causal-logit:<id>`), and DPO policies with `--ref-model` or `--ref-free`
(ours: RewardBench 2 has no DPO script; grouping's docstring gives the tokenization), on
`--backend native`, `hf` or `auto`, with `--device-map` on hf. Generative judges are
judge/ratings.py (`--kind generative`).

It sits in pipeline/ (above the benchmarks it drives) and uses the pipeline's public steps.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rmbench_fast.benchmarks import REWARDBENCH2
from rmbench_fast.benchmarks.rewardbench2.data import HF_DATASET, Prompt, load_prompts, select
from rmbench_fast.benchmarks.rewardbench2.grouping import tokenize_prompts
from rmbench_fast.benchmarks.rewardbench2.metrics import compute_metrics
from rmbench_fast.benchmarks.rewardbench2.report import print_report, score_rows
from rmbench_fast.errors import NonFiniteScoreError, UsageError
from rmbench_fast.inputs import hub
from rmbench_fast.inputs.datafiles import data_files, hash_files
from rmbench_fast.pipeline.memo import EvalCache
from rmbench_fast.pipeline.meta import record_sources
from rmbench_fast.pipeline.models import ModelChoice, choose_models, join_world, resolve_hub_models
from rmbench_fast.pipeline.progress import scoring_bar
from rmbench_fast.pipeline.score import score_run
from rmbench_fast.pipeline.tokens import Tokenized, classifier_pad_id, head_pooling, tokenizer_fingerprint
from rmbench_fast.results.report import check_out_dir, write_outputs
from rmbench_fast.settings import DEFAULT_OUT, RunConfig, check_limit
from rmbench_fast.utils.distributed import is_main
from rmbench_fast.utils.threads import set_threads

SCORED_KINDS = ("classifier", "causal-logit", "dpo")


def _refuse(cfg: RunConfig) -> None:
    """The RM-Bench options that mean nothing here: one line, exit 2."""
    given = {"--domains (use --subsets)": cfg.domains, "--ids": cfg.ids}
    bad = [k for k, v in given.items() if v]
    if bad:
        raise UsageError(f"--benchmark {REWARDBENCH2} takes no {', '.join(bad)}")
    if cfg.kind not in ("auto", *SCORED_KINDS):
        raise UsageError(f"--benchmark {REWARDBENCH2}: --kind {cfg.kind} is not supported here")
    if cfg.data is None:
        raise UsageError(
            f"--benchmark {REWARDBENCH2} needs --data: the dataset id {HF_DATASET}, or its export "
            "(.parquet, .json or .jsonl)"
        )
    if cfg.model is None:
        raise UsageError(f"--benchmark {REWARDBENCH2} needs --model (a reward model directory or ORG/NAME)")


def tokenize_rb2(
    cfg: RunConfig, prompts: Sequence[Prompt], data_key: tuple[Any, ...], model: ModelChoice, cache: EvalCache
) -> Tokenized:
    """Every prompt's N sequences for the model's kind (shared across a sweep by fingerprint)."""
    from rmbench_fast.inputs.format import Formatter  # start-up cost: jinja
    from rmbench_fast.inputs.tokenization import Tokenizer  # start-up cost: tokenizers

    formatter = Formatter.from_model_dir(model.model_dir, cfg.chat_template)
    tok = Tokenizer(model.model_dir)
    # The official classifier script sets add_eos_token = True when there is no chat template.
    add_eos = model.kind == "classifier" and not formatter.uses_chat_template
    pad_id = classifier_pad_id(model.info, tok) if model.kind == "classifier" else None
    head = model.info.native_head if model.kind == "classifier" else None
    lengths = (cfg.max_length, cfg.max_prompt_length)
    fingerprint = tokenizer_fingerprint(model.model_dir)
    key = ("rb2-tokens", data_key, fingerprint, cfg.chat_template, model.kind, add_eos, pad_id, head, lengths)

    def tokenize() -> list[list[Any]]:
        seqs = tokenize_prompts(
            prompts,
            formatter,
            tok,
            kind=model.kind,
            add_eos=add_eos,
            pad_id=pad_id,
            max_length=cfg.max_length,
            max_prompt_length=cfg.max_prompt_length,
        )
        return seqs if head is None else head_pooling(seqs, head, pad_id)

    return Tokenized(formatter, tok, add_eos, pad_id, key, cache.get(key, tokenize), [])


def run_rewardbench2(
    cfg: RunConfig,
    *,
    subsets: Sequence[str] | None = None,
    log: Callable[[str], None] = print,
    progress: Callable[[int], None] | None = None,
    set_total: Callable[[int], None] | None = None,
    cache: EvalCache | None = None,
) -> dict[str, Any]:
    """Score RewardBench 2 with `cfg`. Returns metrics.json's content {"subsets", "overall",
    "meta"} plus "rows" (scores.json) and "scores" [n, N_max]. `progress(k)`: k more prompts
    scored; `cache`: shares the data, tokens and reference sums across a sweep's runs."""
    cache = cache or EvalCache()
    t0 = time.perf_counter()
    _refuse(cfg)
    check_limit(cfg.limit, "limit")
    world = join_world(cfg)
    threads = set_threads(cfg.threads)
    asked = cfg
    cfg, sources = resolve_hub_models(cfg, log)
    path, data_source = hub.resolve_dataset(str(cfg.data), progress=cfg.progress, log=log)
    data_key = ("rb2-prompts", str(path), tuple(subsets or ()), cfg.limit)

    def load() -> tuple[list[Path], str, list[Prompt]]:
        files = data_files(path)
        return files, hash_files(files), select(load_prompts(path), subsets=subsets, limit=cfg.limit)

    files, sha, prompts = cache.get(data_key, load)
    if not prompts:
        raise UsageError(f"no prompts left to score in {path} after --subsets/--limit")
    model = choose_models(cfg, log)
    if model.kind not in SCORED_KINDS:
        raise UsageError(
            f"{model.model_dir} is a {model.kind} model; --benchmark {REWARDBENCH2} scores sequence "
            "classifiers, reward heads, --reward causal-logit:<id> and DPO policies"
        )
    toks = tokenize_rb2(cfg, prompts, data_key, model, cache)
    scored = score_run(cfg, model, toks, cache, log, progress, set_total)
    scores = scored.scores  # [n, N_max], NaN past a prompt's own N
    result = compute_metrics(prompts, scores, resamples=cfg.resamples, seed=cfg.seed)
    credits = result.pop("credits")
    bad = [
        {"id": p.id, "subset": p.subset, "completion": j}
        for i, p in enumerate(prompts)
        for j in range(len(p.completions))
        if not math.isfinite(scores[i, j])
    ]
    seqs = toks.seqs
    head = model.info.native_head if model.kind == "classifier" else None
    settings = {k: v for k, v in asdict(asked).items() if k != "progress"}
    result["meta"] = {
        "benchmark": REWARDBENCH2,
        "model": str(model.model_dir),
        "kind": model.kind,
        "ref_model": cfg.ref_model,
        "ref_free": model.ref_free if model.kind == "dpo" and not cfg.ref_model else None,
        "reference_mode": scored.reference_mode,
        "reference_note": scored.reference_note,
        "native_head": head.name if head is not None else None,
        "backend": scored.backend,
        "device": model.device,
        "dtype": model.dtype,
        "threads": threads,
        "distributed": {"world_size": world.world_size, "tp": world.tp_size, "dp": world.dp_size},
        "data": {
            "path": str(path),
            "files": [str(f) for f in files],
            "sha256": sha,
            "n_prompts": len(prompts),
            "n_completions": int(sum(len(p.completions) for p in prompts)),
            "source": data_source.meta() if data_source is not None else None,
        },
        "chat_template": "model" if toks.formatter.uses_chat_template else toks.formatter.template_name,
        "tokens": {
            "total": sum(len(s.ids) for g in seqs for s in g),
            "max_sequence": max(len(s.ids) for g in seqs for s in g),
            "max_length": cfg.max_length,
        },
        "batch_tokens_raised": scored.budget,
        "scorer_stats": scored.scorer.stats,
        "scoring": "allenai/reward-bench fdc742d (PR 236): best-of-N 1/k tie credit, Ties composite",
        "nonfinite": {"count": len(bad), "scores": bad[:100], "allowed": cfg.allow_nonfinite},
        "settings": settings,
        "seconds": {"total": time.perf_counter() - t0, "scoring": scored.seconds},
    }
    record_sources(result["meta"], asked, sources)
    result["rows"] = score_rows(prompts, scores, credits)
    result["scores"] = scores
    return result


def run_and_report(
    cfg: RunConfig,
    console: Any,
    *,
    subsets: Sequence[str] | None = None,
    cache: EvalCache | None = None,
    tables: bool = True,
) -> dict[str, Any]:
    """Score with a progress bar, write scores.json and metrics.json into cfg.out, print the
    table (`tables=False`: only the closing line; `cache`: a sweep's shared EvalCache); exit 3
    (after writing) on a non-finite score unless --allow-nonfinite."""
    out_dir = Path(cfg.out or DEFAULT_OUT)
    if is_main():  # rank 0 writes the outputs: find out now, not after scoring, that it cannot
        check_out_dir(out_dir)
    with scoring_bar(console, enabled=cfg.progress and is_main(), unit="prompts") as (advance, set_total):
        result = run_rewardbench2(
            cfg, subsets=subsets, log=console.print, progress=advance, set_total=set_total, cache=cache
        )
    rows = result.pop("rows")
    result.pop("scores")
    if not is_main():
        return result
    write_outputs(out_dir, rows, result)
    if tables:
        print_report(result, console)
    meta = result["meta"]
    console.print(
        f"{meta['data']['n_prompts']} prompts ({meta['data']['n_completions']} completions) scored in "
        f"{meta['seconds']['scoring']:.1f} s ({meta['backend']} backend, {meta['device']}, {meta['dtype']}); "
        f"wrote {out_dir / 'scores.json'} and {out_dir / 'metrics.json'}"
    )
    bad = meta["nonfinite"]
    if bad["count"] and not bad["allowed"]:
        raise NonFiniteScoreError(
            f"{bad['count']} completion score(s) are NaN or inf (first: {bad['scores'][0]}); the outputs were "
            "written with null there; --allow-nonfinite keeps going (a NaN gets no credit)"
        )
    return result
