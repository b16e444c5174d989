"""rmbench_fast: fast, exact RM-Bench evaluation of reward models."""

__version__ = "0.1.0"


def evaluate(model: str | None = None, **options: object) -> dict:
    """Score a reward model on RM-Bench; see `rmbench_fast.pipeline.evaluate`."""
    from .pipeline import evaluate as _evaluate

    return _evaluate(model, **options)


__all__ = ["evaluate", "__version__"]
