"""`python -m rmbench_fast compare RUN RUN ...`: paired comparison of runs on the same records."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rmbench_fast.benchmarks import BENCHMARKS, REWARDBENCH2
from rmbench_fast.commands.options import add_stats_options, check_stats_options
from rmbench_fast.errors import UsageError
from rmbench_fast.utils.atomic import write_json_atomic

HELP = "paired comparison of runs on the same records: differences, 95%% intervals, p-values"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN", help="two or more --out directories of runs")
    parser.add_argument("--json", metavar="OUT", help="also write the full comparison as JSON to this file")
    add_stats_options(parser, allow_zero=False)
    parser.add_argument(
        "--benchmark",
        choices=list(BENCHMARKS),
        default=None,
        help="the runs' benchmark (default: what the first run's metrics.json says; rm-bench for older runs)",
    )


def _benchmark(args: argparse.Namespace) -> str:
    if args.benchmark is not None:
        return str(args.benchmark)

    first = Path(args.runs[0])
    path = first / "metrics.json" if first.is_dir() else first
    try:
        meta = json.loads(path.read_text(encoding="utf-8")).get("meta") or {}
    except (OSError, ValueError, AttributeError):
        return "rm-bench"  # the RM-Bench loader reports the problem with the file
    return str(meta.get("benchmark") or "rm-bench")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console  # start-up cost: rich loads only when a command runs

    from rmbench_fast.results.compare import compare_runs, print_comparison  # start-up cost: numpy

    check_stats_options(args, allow_zero=False)
    if len(args.runs) < 2:
        raise UsageError("compare needs at least two run directories")
    if _benchmark(args) == REWARDBENCH2:
        from rmbench_fast.benchmarks.rewardbench2 import compare as rb2  # start-up cost: numpy

        result = rb2.compare_runs([Path(r) for r in args.runs], resamples=args.resamples, seed=args.seed)
        console = Console()
        rb2.print_comparison(result, console)
        if args.json:
            write_json_atomic(Path(args.json), result)
            console.print(f"wrote {args.json}", soft_wrap=True)
        return 0
    result = compare_runs([Path(r) for r in args.runs], resamples=args.resamples, seed=args.seed)
    console = Console()
    print_comparison(result, console)
    if args.json:
        write_json_atomic(Path(args.json), result)
        console.print(f"wrote {args.json}", soft_wrap=True)
    return 0
