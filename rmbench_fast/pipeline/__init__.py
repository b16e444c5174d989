"""One evaluation run, end to end: data -> format -> tokenize -> score -> metrics -> report.

Everything that can fail on user input (data, model directory, template, options) is checked
before the first forward pass, so a bad input costs seconds, not a scoring run.

Modules, in data-flow order: this one (run_evaluation, run_and_report and evaluate: the steps
below in order, on a RunConfig from rmbench_fast.settings), memo (EvalCache: what runs over the
same data share), data (step 1: resolve and load the records), models (step 2: the model
directories, their kind, the device and the world), tokens (step 3: format, tokenize, the
pooling rules), score (step 4: ScoreSettings, the scorer, the results store, the reference
sums), then the benchmark's metrics, meta (step 5: metrics.json's meta, the non-finite check),
progress (the scoring bar), sweep (many checkpoints in one process, sharing the reference model's sums),
ray_sweep (the sweep as Ray tasks), rewardbench2 (the same steps for RewardBench 2: N completions per
prompt).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rmbench_fast.benchmarks.rmbench.data import HF_DATASET
from rmbench_fast.benchmarks.rmbench.metrics import compute_metrics
from rmbench_fast.errors import UsageError
from rmbench_fast.pipeline.data import load_data
from rmbench_fast.pipeline.memo import EvalCache
from rmbench_fast.pipeline.meta import check_finite, json_safe_rows, record_sources, run_meta
from rmbench_fast.pipeline.models import choose_models, join_world, resolve_hub_models
from rmbench_fast.pipeline.progress import scoring_bar
from rmbench_fast.pipeline.score import score_run
from rmbench_fast.pipeline.tokens import tokenize_run
from rmbench_fast.results.report import check_out_dir, print_report, score_rows, write_outputs
from rmbench_fast.settings import DEFAULT_OUT, RunConfig, check_limit
from rmbench_fast.utils.distributed import is_main
from rmbench_fast.utils.phases import phase
from rmbench_fast.utils.threads import set_threads


def run_evaluation(
    cfg: RunConfig,
    *,
    progress: Callable[[int], None] | None = None,
    set_total: Callable[[int], None] | None = None,
    log: Callable[[str], None] = print,
    cache: EvalCache | None = None,
    sweep: bool = False,
) -> dict[str, Any]:
    """Run RM-Bench on one reward model. Returns {"domains", "total", "meta", "rows"}:
    metrics.json's structure plus the scored records (scores.json's rows).

    `set_total(n_records)` is called once before scoring, `progress(k)` as k more records finish.
    `cache` shares data, tokenization and reference log-probs across runs (see EvalCache).
    """
    cache = cache or EvalCache()
    t0 = time.perf_counter()
    check_limit(cfg.limit, "limit")  # the CLI refused --limit already; evaluate(limit=) arrives here
    if cfg.max_length < 2 or not 0 < cfg.max_prompt_length < cfg.max_length:
        raise UsageError(
            f"--max-length {cfg.max_length} and --max-prompt-length {cfg.max_prompt_length}: need "
            "0 < max-prompt-length < max-length"
        )
    world = join_world(cfg)
    with phase("load"):  # the run's CPU set-up belongs to its start-up
        threads = set_threads(cfg.threads)
    asked = cfg
    with phase("data_tokenize"):
        data = load_data(cfg, cache)
    with phase("load"):
        cfg, sources = resolve_hub_models(cfg, log)
        model = choose_models(cfg, log)
    with phase("data_tokenize"):
        toks = tokenize_run(cfg, data, model, cache, log)
    scored = score_run(cfg, model, toks, cache, log, progress, set_total, sweep=sweep)
    with phase("metrics"):
        result = compute_metrics(data.records, scored.scores, resamples=cfg.resamples, seed=cfg.seed)
    # The run's bookkeeping is its own phase: reading package versions alone takes milliseconds,
    # which on a one-record profile is more than the model's compute.
    with phase("report"):
        result["meta"] = run_meta(cfg, data, model, toks, scored, time.perf_counter() - t0)
        record_sources(result["meta"], asked, sources)
        result["meta"]["distributed"] = {
            "world_size": world.world_size,
            "tp": world.tp_size,
            "dp": world.dp_size,
            "backend": world.backend,
        }
        result["meta"]["threads"] = threads  # the CPU scores' last bits follow it
        result["rows"] = json_safe_rows(score_rows(data.records, scored.scores))
        # Freeing the weights, KV buffers and tokenizer takes milliseconds too (munmap): it is the
        # run's teardown, counted here rather than left to an unmarked return.
        del scored, model, toks, data
    return result


def run_and_report(
    cfg: RunConfig, console: Any, *, cache: EvalCache | None = None, tables: bool = True, sweep: bool = False
) -> dict[str, Any]:
    """`python -m rmbench_fast run`: evaluate with a progress bar, write the outputs, print tables
    (`tables=False`: only the closing line; `cache`: see EvalCache)."""
    if is_main():  # rank 0 writes the outputs: find out now, not after scoring, that it cannot
        check_out_dir(Path(cfg.out or DEFAULT_OUT))
    with scoring_bar(console, enabled=cfg.progress and is_main()) as (advance, set_total):
        result = run_evaluation(
            cfg, progress=advance, set_total=set_total, log=console.print, cache=cache, sweep=sweep
        )
    rows = result.pop("rows")
    out_dir = Path(cfg.out or DEFAULT_OUT)
    if not is_main():  # rank 0 alone writes and reports; every rank has the whole result
        check_finite(result)
        return result
    write_outputs(out_dir, rows, result)
    check_finite(result)
    if tables:
        print_report(result, console)
    meta = result["meta"]
    console.print(
        f"{meta['data']['n_records']} records scored in {meta['seconds']['scoring']:.1f} s "
        f"({meta['backend']} backend, {meta['device']}, {meta['dtype']}); wrote {out_dir / 'scores.json'} "
        f"and {out_dir / 'metrics.json'}"
    )
    if meta["data"]["origin"] == "embedded-sample":
        console.print(
            "[bold]This was the embedded 10-record sample, not RM-Bench.[/bold] For real numbers, run on the hub "
            f"dataset {HF_DATASET} (or github.com/THU-KEG/RM-Bench's data/total_dataset.json, as a path):\n"
            f"  python -m rmbench_fast run --model ORG/NAME --data {HF_DATASET}"
        )
    return result


def evaluate(model: str | None = None, **options: Any) -> dict[str, Any]:
    """Python API: `evaluate(model_dir, ref_model=..., ref_free=..., data=..., limit=..., ...)`.

    Takes the same options as `python -m rmbench_fast run` (see `RunConfig`), writes nothing
    unless `out=` is given, and returns {"domains", "total", "meta", "rows"} (metrics.json's
    structure plus the scored records).
    """
    out = options.pop("out", None)
    options.setdefault("progress", False)
    cfg = RunConfig(model=model, out=out, **options)
    if out is not None:
        check_out_dir(Path(out))
    result = run_evaluation(cfg, log=lambda _msg: None)
    if out is not None:
        rows = result["rows"]
        write_outputs(Path(out), rows, {k: v for k, v in result.items() if k != "rows"})
    check_finite(result)
    return result
