"""rmbench_fast: fast, exact RM-Bench evaluation of reward models."""

from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"


def _source_checkout_path() -> list[str]:
    """Extra package dirs when this package is imported from a source checkout.

    `python -m rmbench_fast` run in the repository root imports this directory, not the
    installed copy, and the built pieces are not here: the C++ `_core` (and `_cuda`) sit in
    the installed package, and `rmbench_fast.kernels` is the top-level `kernels/` folder,
    mapped into the package at install time. Appending the installed package dir (for the
    built modules) and the repository root (for `kernels/`) to `__path__` makes both importable;
    modules present here still win, since this directory stays first.
    """
    here = Path(__file__).resolve().parent
    extra = []
    try:
        from importlib.metadata import PackageNotFoundError, distribution

        installed = Path(str(distribution("rmbench_fast").locate_file("rmbench_fast"))).resolve()
        if installed != here and installed.is_dir():
            extra.append(str(installed))
    except (PackageNotFoundError, OSError):
        pass
    if (here.parent / "kernels" / "__init__.py").is_file() and not (here / "kernels").exists():
        extra.append(str(here.parent))
    return extra


__path__ += [p for p in _source_checkout_path() if p not in __path__]


def evaluate(model: str | None = None, **options: object) -> dict:
    """Score a reward model on RM-Bench; see `rmbench_fast.pipeline.evaluate`."""
    from .pipeline import evaluate as _evaluate

    return _evaluate(model, **options)


__all__ = ["evaluate", "__version__"]
