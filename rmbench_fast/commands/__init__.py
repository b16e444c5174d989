"""The command line: `python -m rmbench_fast {run,sweep,report,profile,bench,cache,compare}`.

argparse lives here and nowhere else. Modules, in data-flow order:

- `options`: the options several commands share (`add_run_options`, with the judge and bootstrap
  options), their checks, and the one mapping of parsed options to a config (`run_config`,
  `judge_config`);
- `judge`: `run_judge` (`run --kind generative`) and `python -m rmbench_fast.judge`;
- one module per command, each with `HELP`, `add_arguments(parser)` and `run(args) -> int`:
  `run`, `sweep`, `report`, `profile_cmd` (profile), `bench`, `cache`, `compare`;
- here: `COMMANDS` (the one registry), `build_parser`, and `main`, which turns an error into an
  exit code, once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from types import ModuleType

from rmbench_fast.commands import bench, cache, compare, profile_cmd, report, run, sweep
from rmbench_fast.errors import RMBenchError
from rmbench_fast.utils.distributed import rank_prefix

# name -> module with HELP, add_arguments(parser) and run(args) -> int; in the order `--help` lists them.
COMMANDS: dict[str, ModuleType] = {
    "run": run,
    "sweep": sweep,
    "report": report,
    "profile": profile_cmd,
    "bench": bench,
    "cache": cache,
    "compare": compare,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rmbench_fast", description="Fast, exact RM-Bench evaluation."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        command.add_arguments(sub.add_parser(name, help=command.HELP))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command].run(args)
    except RMBenchError as e:
        print(f"error: {rank_prefix()}{e}", file=sys.stderr)
        return e.exit_code
    except Exception as e:
        if not rank_prefix():
            raise
        # Under torchrun: one line naming the rank; torchrun then stops the other ranks.
        first = (str(e).strip().splitlines() or [""])[0]
        print(f"error: {rank_prefix()}{type(e).__name__}: {first}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
