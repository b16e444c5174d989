"""`python -m rmbench_fast run`: score a reward model on RM-Bench (or a generative judge)."""

from __future__ import annotations

import argparse

from rmbench_fast.commands.judge import run_judge
from rmbench_fast.commands.options import add_run_options, check_stats_options, run_config

HELP = "score a reward model on RM-Bench"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_options(parser)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console  # start-up cost: rich loads only when a command runs

    if args.kind == "generative":
        return run_judge(args, Console(stderr=False))
    from rmbench_fast.pipeline import run_and_report  # start-up cost: the pipeline imports torch

    check_stats_options(args, allow_zero=True)
    run_and_report(run_config(args), Console(stderr=False))
    return 0
