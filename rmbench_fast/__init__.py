"""rmbench_fast: fast, exact RM-Bench evaluation of reward models.

The package's face is lazy: importing `rmbench_fast` (or any engine module) loads nothing else,
so the lower layers (data, tokenize, plan, engine, rewards) never pull in the pipeline.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def evaluate(model: str | None = None, **options: Any) -> dict[str, Any]:
    """Score a reward model on RM-Bench; see `rmbench_fast.pipeline.evaluate`."""
    from rmbench_fast.pipeline import evaluate as _evaluate  # start-up cost: the pipeline (torch)

    return _evaluate(model, **options)


__all__ = ["__version__", "evaluate"]
