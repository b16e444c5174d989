"""`python -m rmbench_fast sweep`: many models (checkpoints) on the same data, locally or on Ray."""

from __future__ import annotations

import argparse

from rmbench_fast.benchmarks import REWARDBENCH2
from rmbench_fast.commands.options import add_run_options, check_stats_options, run_config
from rmbench_fast.commands.run import add_benchmark_option, add_subsets_option
from rmbench_fast.errors import UsageError

HELP = (
    "score many models (checkpoints) on the same data, sharing data, tokenization and "
    "the reference model's log-probs"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_options(parser, sweep=True)
    add_benchmark_option(parser)
    add_subsets_option(parser)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console  # start-up cost: rich loads only when a command runs

    from rmbench_fast.pipeline.sweep import run_sweep  # start-up cost: the pipeline imports torch

    check_stats_options(args, allow_zero=True)
    if args.subsets and args.benchmark != REWARDBENCH2:
        raise UsageError("--subsets applies to --benchmark rewardbench2; RM-Bench selects with --domains")
    if args.ray:
        if args.benchmark == REWARDBENCH2:
            raise UsageError("--ray sweeps RM-Bench; run a RewardBench 2 sweep without --ray (one process)")
        from rmbench_fast.pipeline.ray_sweep import run_ray_sweep  # optional dependency: ray

        rows = run_ray_sweep(
            list(args.models),
            run_config(args),
            Console(stderr=False),
            address=args.ray,
            gpus_per_model=args.gpus_per_model,
        )
        return 0 if all("error" not in r for r in rows) else 1
    run_sweep(
        list(args.models),
        run_config(args),
        Console(stderr=False),
        benchmark=args.benchmark,
        subsets=args.subsets,
    )
    return 0
