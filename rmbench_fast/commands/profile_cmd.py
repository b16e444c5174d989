"""`python -m rmbench_fast profile [run options] [--trace FILE]`: where the time of a run goes.

(Named `profile_cmd`, not `profile`: no module here is named like a standard-library module.)
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rmbench_fast.commands.options import add_run_options, check_stats_options, run_config
from rmbench_fast.perf.profiling import PROFILE_FILE, command_line, print_profile, profile_run
from rmbench_fast.settings import DEFAULT_OUT
from rmbench_fast.utils.atomic import write_json_atomic

HELP = "where the time of a run goes, by phase (torch.profiler); writes OUT/profile.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_options(parser)
    add_profile_options(parser)


def add_profile_options(p: argparse.ArgumentParser) -> None:
    """The profile command's own options (the run options come from `add_run_options`)."""
    p.add_argument(
        "--trace",
        metavar="FILE",
        help="also write a Chrome/Perfetto trace (torch.profiler; on CUDA the phases are NVTX ranges too)",
    )
    p.add_argument("--top-ops", type=int, default=3, metavar="N", help="ops listed per phase (default 3)")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console  # start-up cost: rich loads only when a command runs

    return run_profile(args, Console())


def run_profile(args: argparse.Namespace, console: Any) -> int:
    """`python -m rmbench_fast profile`: profile one run, print the table, write OUT/profile.json."""
    check_stats_options(args, allow_zero=True)
    cfg = run_config(args)
    trace = Path(args.trace) if getattr(args, "trace", None) else None
    doc = profile_run(cfg, trace=trace, top_ops=getattr(args, "top_ops", 3), log=console.print)
    doc["command"] = command_line("profile")
    out = Path(cfg.out or DEFAULT_OUT) / PROFILE_FILE
    write_json_atomic(out, doc)
    print_profile(doc, console)
    console.print(f"wrote {out}" + (f" and {trace}" if trace else ""), soft_wrap=True)
    return 0
