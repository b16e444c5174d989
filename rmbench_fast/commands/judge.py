"""Generative judges on the command line: `run --kind generative`, and `python -m rmbench_fast.judge`.

`run_judge(args, console)` does a whole generative run with the parsed options (the options and
their checks are in `options`: `add_judge_options`, `judge_config`). `python -m rmbench_fast.judge`
is the same run as a stand-alone command (the run options plus the judge options), usable from an
environment that has vLLM but not the built package (the judge needs no C++ core).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from rmbench_fast.benchmarks import DEFAULT_BENCHMARK, REWARDBENCH2
from rmbench_fast.commands.options import add_run_options, judge_config
from rmbench_fast.errors import RMBenchError


def run_judge(args: argparse.Namespace, console: Any, *, subsets: Sequence[str] | None = None) -> int:
    """`run --kind generative`: the whole run (outputs written, tables printed); returns 0.
    RM-Bench: pairwise verdicts; `--benchmark rewardbench2`: the official ratings mode.
    Raises RMBenchError (one line, exit 2) for bad options, data, endpoints or models."""
    if getattr(args, "benchmark", DEFAULT_BENCHMARK) == REWARDBENCH2:
        from rmbench_fast.judge.ratings import run_ratings  # start-up cost: the judge runner and its report

        run_ratings(judge_config(args), console, subsets=subsets)
        return 0
    from rmbench_fast.judge.runner import run_generative  # start-up cost: the judge runner and its report

    run_generative(judge_config(args), console)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """`python -m rmbench_fast.judge`: the main CLI's run options (the judge options among them)."""
    p = argparse.ArgumentParser(
        prog="python -m rmbench_fast.judge",
        description="RM-Bench with a generative pairwise judge (run --kind generative).",
    )
    add_run_options(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point; exit 2 with one line on bad input, 130 on Ctrl-C."""
    from rich.console import Console  # start-up cost: rich loads only when a command runs

    args = build_parser().parse_args(argv)
    try:
        return run_judge(args, Console(stderr=False))
    except RMBenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
