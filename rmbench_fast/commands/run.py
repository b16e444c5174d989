"""`python -m rmbench_fast run`: score a reward model on RM-Bench or RewardBench 2 (or a
generative judge on RM-Bench)."""

from __future__ import annotations

import argparse

from rmbench_fast.benchmarks import BENCHMARKS, DEFAULT_BENCHMARK, REWARDBENCH2
from rmbench_fast.commands.judge import run_judge
from rmbench_fast.commands.options import add_run_options, check_stats_options, run_config
from rmbench_fast.errors import UsageError

HELP = "score a reward model on RM-Bench (or RewardBench 2 with --benchmark rewardbench2)"


def add_benchmark_option(parser: argparse.ArgumentParser) -> None:
    """--benchmark, from the one registry (rmbench_fast.benchmarks.BENCHMARKS)."""
    parser.add_argument(
        "--benchmark",
        choices=list(BENCHMARKS),
        default=DEFAULT_BENCHMARK,
        help="; ".join(f"{k}: {v}" for k, v in BENCHMARKS.items()) + f" (default {DEFAULT_BENCHMARK})",
    )


def add_subsets_option(parser: argparse.ArgumentParser) -> None:
    """--subsets: RewardBench 2's selection (RM-Bench's is --domains)."""
    parser.add_argument(
        "--subsets",
        nargs="+",
        metavar="SUBSET",
        help="rewardbench2: subsets to score (Factuality, 'Precise IF', Math, Safety, Focus, Ties; default all)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_options(parser)
    add_benchmark_option(parser)
    add_subsets_option(parser)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console  # start-up cost: rich loads only when a command runs

    if args.benchmark == REWARDBENCH2:
        if args.kind == "generative":
            return run_judge(args, Console(stderr=False), subsets=args.subsets)
        from rmbench_fast.pipeline.rewardbench2 import run_and_report as run_rb2  # start-up cost: torch

        check_stats_options(args, allow_zero=True)
        run_rb2(run_config(args), Console(stderr=False), subsets=args.subsets)
        return 0
    if args.subsets:
        raise UsageError("--subsets applies to --benchmark rewardbench2; RM-Bench selects with --domains")
    if args.kind == "generative":
        return run_judge(args, Console(stderr=False))
    from rmbench_fast.pipeline import run_and_report  # start-up cost: the pipeline imports torch

    check_stats_options(args, allow_zero=True)
    run_and_report(run_config(args), Console(stderr=False))
    return 0
