"""`python -m rmbench_fast cache {info,clear}`: the results store's size and entries, or clearing it."""

from __future__ import annotations

import argparse

HELP = "the results store: its size and entries per model, or clear it"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["info", "clear"])
    parser.add_argument("--cache-dir", metavar="PATH", help="the store (default: the user cache)")
    parser.add_argument(
        "--model", metavar="FINGERPRINT", help="clear: only this model (a fingerprint prefix)"
    )


def run(args: argparse.Namespace) -> int:
    from rich.console import Console  # start-up cost: rich loads only when a command runs

    from rmbench_fast.store.admin import cache_command  # start-up cost: the store imports the model readers

    return cache_command(args.action, args.cache_dir, Console(), model=args.model)
