"""`python -m rmbench_fast {run,sweep,report,compare,cache,profile,bench}`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import RMBenchError, UsageError
from .types import DOMAINS

if TYPE_CHECKING:
    from .pipeline import RunConfig

DEFAULT_OUT = "rmbench_out"


def _add_run_args(p: argparse.ArgumentParser, *, sweep: bool = False) -> None:
    if sweep:
        p.add_argument("models", nargs="+", metavar="MODEL", help="model directories (e.g. checkpoints)")
        p.add_argument(
            "--ray",
            metavar="ADDRESS",
            help="run each checkpoint as a Ray task: local (start a cluster here), auto (join the running one) "
            "or a cluster address; needs the [ray] extra",
        )
        p.add_argument(
            "--gpus-per-model",
            type=int,
            default=1,
            metavar="K",
            help="with --ray: GPUs per checkpoint (default 1)",
        )
    else:
        p.add_argument("--model", help="model directory (default: the embedded SmolLM2-135M-Instruct demo)")
    ref = p.add_mutually_exclusive_group()
    ref.add_argument("--ref-model", help="reference model directory (DPO with a reference)")
    ref.add_argument(
        "--ref-free",
        choices=["avg", "sum", "norm"],
        help="reference-free DPO reward: mean, sum or -L2 norm of the answer log-probs (default avg)",
    )
    p.add_argument(
        "--kind",
        choices=["auto", "classifier", "dpo", "generative"],
        default="auto",
        help="default: from config.json; generative: a judge model reached through --judge-endpoint or --judge-engine",
    )
    p.add_argument(
        "--data",
        help="RM-Bench data: total_dataset.json, <domain>_filtered.json, a directory, .jsonl or .parquet",
    )
    p.add_argument("--limit", type=int, help="score only the first N records of each domain")
    p.add_argument(
        "--domains", nargs="+", metavar="DOMAIN", help=f"domains to score: {', '.join(DOMAINS)}, safety"
    )
    p.add_argument("--ids", nargs="+", metavar="ID", help="score only these record ids")
    p.add_argument(
        "--chat-template",
        metavar="NAME",
        help="named template for tokenizers without a chat template: tulu (official default), zephyr, llama-2, "
        "mistral, chatml, llama-3",
    )
    p.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="auto: float32 on CPU, bfloat16 on GPU",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N (default: cuda if available)")
    p.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "native", "hf"],
        help="native engine or Hugging Face transformers reference (auto: native where supported)",
    )
    p.add_argument("--batch-tokens", type=int, default=None, help="token budget per packed batch (native)")
    p.add_argument("--batch-size", type=int, default=8, help="pairs per batch (hf backend)")
    p.add_argument(
        "--device-map",
        choices=["auto"],
        help="hf backend: spread the model's layers over the visible GPUs with accelerate (the slow path "
        "for architectures the native engine does not cover)",
    )
    out = "rmbench_sweep" if sweep else DEFAULT_OUT
    p.add_argument("--out", default=out, help=f"output directory (default ./{out})")
    p.add_argument(
        "--fp32-scores",
        action="store_true",
        help="classifier: keep fp32 scores instead of rounding to the model dtype (not official)",
    )
    p.add_argument(
        "--trust-remote-code", action="store_true", help="allow executing code from the model directory"
    )
    p.add_argument("--allow-pickle", action="store_true", help="allow loading pickle (.bin/.pt) weights")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    eng = p.add_argument_group("native engine")
    eng.add_argument(
        "--attn",
        default="auto",
        choices=["auto", "flash", "flex", "sdpa", "dense"],
        help="attention backend (auto: flash on CUDA, flex for Gemma-2's soft-cap, sdpa on the CPU)",
    )
    eng.add_argument(
        "--lm-head",
        default="auto",
        choices=["auto", "torch", "fused"],
        help="DPO log-probs: torch (logits in the model dtype, official) or fused (kernel B, fp32 logits); auto = torch",
    )
    eng.add_argument(
        "--ref-mode",
        default="auto",
        choices=["auto", "together", "reference-first"],
        help="with --ref-model: both models on each batch (fused ratio) or the reference's pass first "
        "(one model in memory); auto: together when both fit on the GPU, and never in a sweep",
    )
    store = p.add_argument_group("results store (resume, reuse across runs)")
    store.add_argument(
        "--cache-dir",
        metavar="PATH",
        help="the results store: a directory or a .sqlite file (default ~/.cache/rmbench_fast/results.sqlite)",
    )
    store.add_argument("--no-cache", action="store_true", help="do not read or write the results store")
    p.add_argument(
        "--reward",
        metavar="causal-logit:ID",
        help="score a causal LM by one logit: token ID's logit after the prompt and response (the chat template "
        "with its generation prompt), as Llama-3.1-Nemotron-70B-Reward-HF defines its reward",
    )
    p.add_argument(
        "--max-length",
        type=int,
        default=2048,
        metavar="N",
        help="truncate sequences to N tokens (official: 2048; another value is marked official: false)",
    )
    p.add_argument(
        "--max-prompt-length",
        type=int,
        default=128,
        metavar="N",
        help="DPO: prompts cut to their last N tokens when a pair is too long (official: 128)",
    )
    p.add_argument(
        "--tp",
        type=int,
        default=1,
        metavar="K",
        help="tensor-parallel size under torchrun (torchrun --nproc-per-node N: N/K data-parallel replicas)",
    )
    p.add_argument(
        "--allow-nonfinite",
        action="store_true",
        help="exit 0 even when a score is NaN or inf (it loses every comparison); default: exit 3",
    )
    _add_stats_args(p, allow_zero=True)
    if not sweep:
        from .judge.cli import add_judge_args

        add_judge_args(p)


def _add_stats_args(p: argparse.ArgumentParser, *, allow_zero: bool) -> None:
    off = "; 0 leaves the intervals out" if allow_zero else ""
    p.add_argument(
        "--resamples",
        type=int,
        default=10000,
        metavar="R",
        help=f"bootstrap resamples for the 95%% intervals (default 10000{off})",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the resampling (default 0)")


def _check_stats_args(args: argparse.Namespace, *, allow_zero: bool) -> None:
    least = 0 if allow_zero else 1
    if args.resamples < least:
        raise UsageError(f"--resamples must be >= {least}, got {args.resamples}")
    if args.seed < 0:
        raise UsageError(f"--seed must be >= 0, got {args.seed}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rmbench_fast", description="Fast, exact RM-Bench evaluation."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="score a reward model on RM-Bench")
    _add_run_args(run)
    sw = sub.add_parser(
        "sweep",
        help="score many models (checkpoints) on the same data, sharing data, tokenization and "
        "the reference model's log-probs",
    )
    _add_run_args(sw, sweep=True)
    rep = sub.add_parser("report", help="re-print the tables of a finished run or sweep")
    rep.add_argument("out", help="the --out directory of a run (metrics.json) or a sweep (sweep.json)")
    rep.add_argument(
        "--plot",
        action="store_true",
        help="also write a PNG heatmap per domain (a run) or accuracy against checkpoint (a sweep)",
    )
    rep.add_argument(
        "--leaderboard",
        action="store_true",
        help="place the run among the published RM-Bench results shipped with the package",
    )
    from .benchmark import add_bench_args
    from .profile import add_profile_args

    prof = sub.add_parser(
        "profile", help="where the time of a run goes, by phase (torch.profiler); writes OUT/profile.json"
    )
    _add_run_args(prof)
    add_profile_args(prof)
    bench = sub.add_parser(
        "bench",
        help="the same records through the official-style, native and vLLM paths: times, tokens, memory, agreement",
    )
    _add_run_args(bench)
    add_bench_args(bench)
    cache = sub.add_parser("cache", help="the results store: its size and entries per model, or clear it")
    cache.add_argument("action", choices=["info", "clear"])
    cache.add_argument("--cache-dir", metavar="PATH", help="the store (default: the user cache)")
    cache.add_argument("--model", metavar="FINGERPRINT", help="clear: only this model (a fingerprint prefix)")
    cmp = sub.add_parser(
        "compare",
        help="paired comparison of runs on the same records: differences, 95%% intervals, p-values",
    )
    cmp.add_argument("runs", nargs="+", metavar="RUN", help="two or more --out directories of runs")
    cmp.add_argument("--json", metavar="OUT", help="also write the full comparison as JSON to this file")
    _add_stats_args(cmp, allow_zero=False)
    return parser


def _config(args: argparse.Namespace) -> RunConfig:
    from .pipeline import RunConfig

    return RunConfig(
        model=getattr(args, "model", None),
        ref_model=args.ref_model,
        ref_free=args.ref_free,
        kind=args.kind,
        data=args.data,
        limit=args.limit,
        domains=args.domains,
        ids=args.ids,
        chat_template=args.chat_template,
        dtype=args.dtype,
        device=args.device,
        backend=args.backend,
        batch_tokens=args.batch_tokens,
        batch_size=args.batch_size,
        out=args.out,
        fp32_scores=args.fp32_scores,
        trust_remote_code=args.trust_remote_code,
        allow_pickle=args.allow_pickle,
        progress=not args.no_progress,
        resamples=args.resamples,
        seed=args.seed,
        attn=args.attn,
        lm_head=args.lm_head,
        ref_mode=args.ref_mode,
        cache_dir=args.cache_dir,
        no_cache=args.no_cache,
        allow_nonfinite=args.allow_nonfinite,
        device_map=args.device_map,
        tp=getattr(args, "tp", 1),
        max_length=args.max_length,
        max_prompt_length=args.max_prompt_length,
        reward=args.reward,
    )


def _run(args: argparse.Namespace) -> int:
    from rich.console import Console

    if args.kind == "generative":
        from .judge.cli import run_judge

        return run_judge(args, Console(stderr=False))
    from .pipeline import run_and_report

    _check_stats_args(args, allow_zero=True)
    run_and_report(_config(args), Console(stderr=False))
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from rich.console import Console

    from .sweep import run_sweep

    _check_stats_args(args, allow_zero=True)
    if args.ray:
        from .ray_sweep import run_ray_sweep

        rows = run_ray_sweep(
            list(args.models),
            _config(args),
            Console(stderr=False),
            address=args.ray,
            gpus_per_model=args.gpus_per_model,
        )
        return 0 if all("error" not in r for r in rows) else 1
    run_sweep(list(args.models), _config(args), Console(stderr=False))
    return 0


def _report(args: argparse.Namespace) -> int:
    from rich.console import Console

    from .report import METRICS_FILE, plot_matrices, print_report, read_metrics
    from .sweep import SWEEP_FILE

    out = Path(args.out)
    console = Console()
    is_sweep_dir = out.is_dir() and not (out / METRICS_FILE).exists() and (out / SWEEP_FILE).exists()
    if is_sweep_dir or (out.is_file() and out.name == SWEEP_FILE):
        return _report_sweep(args, out if out.is_dir() else out.parent, console)
    metrics = read_metrics(out)
    print_report(metrics, console)
    if args.leaderboard:
        from .leaderboard import place, print_placement

        console.print()
        print_placement(place(metrics), console)
    if args.plot:
        for path in plot_matrices(metrics, out if out.is_dir() else out.parent):
            console.print(f"wrote {path}", soft_wrap=True)
    return 0


def _report_sweep(args: argparse.Namespace, out: Path, console: Any) -> int:
    from .sweep import plot_sweep, print_sweep, read_sweep

    if args.leaderboard:
        raise UsageError(
            f"{out} is a sweep; --leaderboard places one run: pass one of its NN-<name>/ directories"
        )
    doc = read_sweep(out)
    print_sweep(doc["models"], console)
    if args.plot:
        console.print(f"wrote {plot_sweep(doc, out)}", soft_wrap=True)
    return 0


def _compare(args: argparse.Namespace) -> int:
    from rich.console import Console

    from .compare import compare_runs, print_comparison
    from .report import write_json_atomic

    _check_stats_args(args, allow_zero=False)
    if len(args.runs) < 2:
        raise UsageError("compare needs at least two run directories")
    result = compare_runs([Path(r) for r in args.runs], resamples=args.resamples, seed=args.seed)
    console = Console()
    print_comparison(result, console)
    if args.json:
        write_json_atomic(Path(args.json), result)
        console.print(f"wrote {args.json}", soft_wrap=True)
    return 0


def _cache(args: argparse.Namespace) -> int:
    from rich.console import Console

    from .store import cache_command

    return cache_command(args.action, args.cache_dir, Console(), model=args.model)


def _rank_prefix() -> str:
    """ "rank N: " under torchrun with several processes, else ""."""
    import os

    return f"rank {os.environ['RANK']}: " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "sweep":
            return _sweep(args)
        if args.command == "compare":
            return _compare(args)
        if args.command == "cache":
            return _cache(args)
        if args.command in ("profile", "bench"):
            from rich.console import Console

            if args.command == "profile":
                from .profile import run_profile

                return run_profile(args, Console())
            from .benchmark import run_bench

            return run_bench(args, Console())
        return _report(args)
    except RMBenchError as e:
        print(f"error: {_rank_prefix()}{e}", file=sys.stderr)
        return e.exit_code
    except Exception as e:
        if not _rank_prefix():
            raise
        # Under torchrun: one line naming the rank; torchrun then stops the other ranks.
        first = (str(e).strip().splitlines() or [""])[0]
        print(f"error: {_rank_prefix()}{type(e).__name__}: {first}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
