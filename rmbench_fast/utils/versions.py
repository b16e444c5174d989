"""The versions record written into a run's metadata: this package, Python, and the packages
that decide its numbers (each one present; a package that is not installed is left out)."""

from __future__ import annotations

import platform
from collections.abc import Iterable
from importlib import metadata

from rmbench_fast import __version__


def versions(packages: Iterable[str]) -> dict[str, str]:
    """{"rmbench_fast": ..., "python": ..., then each installed package of `packages`, in order}."""
    out = {"rmbench_fast": __version__, "python": platform.python_version()}
    for pkg in packages:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out
