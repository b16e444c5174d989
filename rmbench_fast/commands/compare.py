"""`python -m rmbench_fast compare RUN RUN ...`: paired comparison of runs on the same records."""

from __future__ import annotations

import argparse
from pathlib import Path

from rmbench_fast.commands.options import add_stats_options, check_stats_options
from rmbench_fast.errors import UsageError
from rmbench_fast.utils.atomic import write_json_atomic

HELP = "paired comparison of runs on the same records: differences, 95%% intervals, p-values"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN", help="two or more --out directories of runs")
    parser.add_argument("--json", metavar="OUT", help="also write the full comparison as JSON to this file")
    add_stats_options(parser, allow_zero=False)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console  # start-up cost: rich loads only when a command runs

    from rmbench_fast.results.compare import compare_runs, print_comparison  # start-up cost: numpy

    check_stats_options(args, allow_zero=False)
    if len(args.runs) < 2:
        raise UsageError("compare needs at least two run directories")
    result = compare_runs([Path(r) for r in args.runs], resamples=args.resamples, seed=args.seed)
    console = Console()
    print_comparison(result, console)
    if args.json:
        write_json_atomic(Path(args.json), result)
        console.print(f"wrote {args.json}", soft_wrap=True)
    return 0
