"""`python -m rmbench_fast bench [run options] --paths official native [vllm]`: the same records
through the official-style, native and vLLM paths (rmbench_fast.perf.bench does the work).

`main` is also bench/e2e.py's.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rmbench_fast.benchmarks import REWARDBENCH2
from rmbench_fast.commands.options import add_run_options, check_stats_options, run_config
from rmbench_fast.commands.run import add_benchmark_option, add_subsets_option
from rmbench_fast.errors import RMBenchError, UsageError
from rmbench_fast.perf.bench import PATHS, bench, print_bench
from rmbench_fast.perf.bench.official import HF_HINT
from rmbench_fast.perf.profiling import command_line
from rmbench_fast.settings import DEFAULT_OUT
from rmbench_fast.utils.atomic import write_json_atomic

HELP = "the same records through the official-style, native and vLLM paths: times, tokens, memory, agreement"
DESCRIPTION = "`python -m rmbench_fast bench [run options] --paths official native [vllm] --out FILE`."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_options(parser)
    add_bench_options(parser)
    add_benchmark_option(parser)
    add_subsets_option(parser)


def add_bench_options(p: argparse.ArgumentParser) -> None:
    """The bench command's own options (the run options come from `add_run_options`)."""
    p.add_argument(
        "--paths",
        nargs="+",
        default=["official", "native"],
        choices=list(PATHS),
        metavar="PATH",
        help="paths to compare: official (transformers, the official scripts' batching), native, "
        "official8bit (bitsandbytes 8-bit, CUDA), vllm (needs --vllm-python); default: official native",
    )
    p.add_argument(
        "--bench-out",
        metavar="FILE",
        help="the result JSON (default: OUT/bench.json, OUT being --out; --out ending in .json is the file)",
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=0,
        metavar="N",
        help="score the first N records once, untimed, before the timed pass (each path)",
    )
    p.add_argument(
        "--in-process",
        action="store_true",
        help="run the official and native paths in this process (faster to start; peak memory is "
        "then the process's high-water mark, not each path's)",
    )
    vl = p.add_argument_group("vLLM path")
    vl.add_argument("--vllm-python", metavar="PATH", help="the Python of an environment with vLLM installed")
    vl.add_argument(
        "--vllm-args", metavar="JSON", default=None, help="extra vllm.LLM keywords, as a JSON object"
    )
    vl.add_argument(
        "--vllm-timeout",
        type=float,
        default=3600.0,
        metavar="S",
        help="seconds before the vLLM child is stopped",
    )


def bench_file(args: argparse.Namespace) -> Path:
    """Where the result goes: --bench-out, or --out when it names a .json file, else OUT/bench.json."""
    if getattr(args, "bench_out", None):
        return Path(args.bench_out)
    out = Path(args.out or DEFAULT_OUT)
    return out if out.suffix == ".json" else out / "bench.json"


def check_paths(args: argparse.Namespace) -> None:
    """Refuse what cannot run before anything loads (exit 2, one line)."""
    if getattr(args, "kind", None) == "generative":
        raise UsageError(
            "bench compares reward-model scoring paths; for generative judges see bench/bench_judge.py"
        )
    paths = list(dict.fromkeys(args.paths))
    needs_hf = [p for p in paths if p.startswith("official")]
    if needs_hf and importlib.util.find_spec("transformers") is None:
        raise UsageError(HF_HINT)
    if "vllm" in paths:
        if not args.vllm_python:
            raise UsageError("--paths vllm needs --vllm-python PATH (the Python of an environment with vLLM)")
        if not Path(args.vllm_python).exists():
            raise UsageError(f"--vllm-python {args.vllm_python}: no such file")
    if args.vllm_args is not None:
        try:
            if not isinstance(json.loads(args.vllm_args), dict):
                raise ValueError
        except ValueError:
            raise UsageError("--vllm-args must be a JSON object") from None
    if args.warmup < 0:
        raise UsageError(f"--warmup must be >= 0, got {args.warmup}")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console  # start-up cost: rich loads only when a command runs

    return run_bench(args, Console())


def run_bench(args: argparse.Namespace, console: Any) -> int:
    """`python -m rmbench_fast bench`: every path on the same records; writes the JSON."""
    check_stats_options(args, allow_zero=True)
    check_paths(args)
    cfg = run_config(args)
    paths = list(dict.fromkeys(args.paths))
    if getattr(args, "benchmark", None) == REWARDBENCH2:
        return _run_bench_rb2(args, cfg, paths, console)
    if getattr(args, "subsets", None):
        raise UsageError("--subsets applies to --benchmark rewardbench2; RM-Bench selects with --domains")
    doc = bench(
        cfg,
        paths,
        threads=args.threads,
        warmup=args.warmup,
        in_process=args.in_process,
        vllm_python=args.vllm_python,
        vllm_args=json.loads(args.vllm_args) if args.vllm_args else None,
        vllm_timeout=args.vllm_timeout,
        log=console.print,
    )
    doc["command"] = getattr(args, "command_line", None) or command_line("bench")
    out = bench_file(args)
    write_json_atomic(out, doc)
    print_bench(doc, console)
    console.print(f"wrote {out}", soft_wrap=True)
    return 0


def _run_bench_rb2(args: argparse.Namespace, cfg: Any, paths: list[str], console: Any) -> int:
    """`bench --benchmark rewardbench2`: run_v2.py's classifier flow against the engine."""
    from rmbench_fast.perf.bench.rewardbench2 import bench_rb2, print_bench_rb2  # start-up cost: torch

    doc = bench_rb2(cfg, paths, subsets=args.subsets, log=console.print)
    doc["command"] = getattr(args, "command_line", None) or command_line("bench")
    out = bench_file(args)
    write_json_atomic(out, doc)
    print_bench_rb2(doc, console)
    console.print(f"wrote {out}", soft_wrap=True)
    return 0


def main(argv: Sequence[str] | None = None, *, command: str | None = None) -> int:
    """`python -m rmbench_fast bench [run options] [bench options]` for scripts; `command`: the command
    line recorded in the JSON (default: this process's)."""
    from rich.console import Console  # start-up cost: rich loads only when a command runs

    p = argparse.ArgumentParser(prog="python -m rmbench_fast bench", description=DESCRIPTION)
    add_arguments(p)
    args = p.parse_args(sys.argv[1:] if argv is None else list(argv))
    args.command_line = command
    try:
        return run_bench(args, Console())
    except RMBenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
