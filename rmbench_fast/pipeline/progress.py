"""The scoring progress bar that `run` and `run --benchmark rewardbench2` show.

`scoring_bar(console, enabled=..., unit=...)` yields (advance, set_total): the callbacks a run's
steps take (`progress(k)` as k more records or prompts finish, `set_total(n)` once before
scoring). Disabled (`--no-progress`, or a rank other than 0), it draws nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def scoring_bar(
    console: Any, *, enabled: bool, unit: str = "records"
) -> Iterator[tuple[Callable[[int], None], Callable[[int], None]]]:
    """A transient rich bar: scoring, done/total `unit`, elapsed and remaining time."""
    from rich.progress import (  # start-up cost: rich's progress widgets load only when a run scores
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("scoring"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled,
        transient=True,
    ) as bar:
        task = bar.add_task("scoring", total=None)
        yield (lambda n: bar.advance(task, n)), (lambda n: bar.update(task, total=n))
