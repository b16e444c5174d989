"""`python -m rmbench_fast report OUT`: re-print a finished run's or sweep's tables (and plot them)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rmbench_fast.benchmarks import BENCHMARKS, REWARDBENCH2
from rmbench_fast.errors import UsageError

HELP = "re-print the tables of a finished run or sweep"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", help="the --out directory of a run (metrics.json) or a sweep (sweep.json)")
    parser.add_argument(
        "--plot",
        action="store_true",
        help="also write a PNG heatmap per domain (a run) or accuracy against checkpoint (a sweep)",
    )
    parser.add_argument(
        "--leaderboard",
        action="store_true",
        help="place the run among the published RM-Bench results shipped with the package",
    )
    parser.add_argument(
        "--benchmark",
        choices=list(BENCHMARKS),
        default=None,
        help="the run's benchmark (default: what its metrics.json says; rm-bench for older runs)",
    )


def run(args: argparse.Namespace) -> int:
    from rich.console import Console  # start-up cost: rich loads only when a command runs

    from rmbench_fast.pipeline.sweep import SWEEP_FILE  # start-up cost: the pipeline imports torch
    from rmbench_fast.results.report import (  # start-up cost: numpy
        METRICS_FILE,
        plot_matrices,
        print_report,
        read_metrics,
    )

    out = Path(args.out)
    console = Console()
    is_sweep_dir = out.is_dir() and not (out / METRICS_FILE).exists() and (out / SWEEP_FILE).exists()
    if is_sweep_dir or (out.is_file() and out.name == SWEEP_FILE):
        return _report_sweep(args, out if out.is_dir() else out.parent, console)
    metrics = read_metrics(out)
    benchmark = args.benchmark or (metrics.get("meta") or {}).get("benchmark") or "rm-bench"
    if benchmark == REWARDBENCH2:
        # start-up cost: numpy
        from rmbench_fast.benchmarks.rewardbench2.report import print_report as print_rb2

        if args.leaderboard or args.plot:
            raise UsageError("--leaderboard and --plot are RM-Bench's; a rewardbench2 run has its table only")
        if "subsets" not in metrics:
            raise UsageError(f"{out} is not a rewardbench2 run (its metrics.json has no 'subsets')")
        print_rb2(metrics, console)
        return 0
    print_report(metrics, console)
    if args.leaderboard:
        from rmbench_fast.benchmarks.rmbench.leaderboard import (  # start-up cost: only with --leaderboard
            place,
            print_placement,
        )

        console.print()
        print_placement(place(metrics), console)
    if args.plot:
        for path in plot_matrices(metrics, out if out.is_dir() else out.parent):
            console.print(f"wrote {path}", soft_wrap=True)
    return 0


def _report_sweep(args: argparse.Namespace, out: Path, console: Any) -> int:
    from rmbench_fast.pipeline.sweep import (  # start-up cost: the pipeline imports torch
        plot_sweep,
        print_sweep,
        read_sweep,
    )

    if args.leaderboard:
        raise UsageError(
            f"{out} is a sweep; --leaderboard places one run: pass one of its NN-<name>/ directories"
        )
    doc = read_sweep(out)
    print_sweep(doc["models"], console)
    if args.plot:
        console.print(f"wrote {plot_sweep(doc, out)}", soft_wrap=True)
    return 0
