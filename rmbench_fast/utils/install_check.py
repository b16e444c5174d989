"""Is this package importable as built? A source checkout that was never installed is not.

The built pieces live only in an installed package: the C++ core (`_core`) and the kernels
(the top-level `kernels/` folder, placed at `rmbench_fast/kernels` by the wheel's package map).
`python -m rmbench_fast` run inside the repository imports the source tree first; with an
editable install (`pip install -e .`) the installer's import redirect supplies both pieces,
with a regular install or none it cannot, and this module says so in one line.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path


def uninstalled_checkout_message() -> str | None:
    """None when `rmbench_fast.kernels` and `rmbench_fast._core` import; else how to fix it."""
    missing = [
        m for m in ("rmbench_fast.kernels", "rmbench_fast._core") if importlib.util.find_spec(m) is None
    ]
    if not missing:
        return None
    here = Path(__file__).resolve().parents[1]  # the package folder (this file is in utils/)
    root = here.parent
    if (root / "pyproject.toml").is_file() and (root / "kernels").is_dir():
        return (
            f"rmbench_fast is imported from the source checkout {root}, which is not installed "
            f"({', '.join(missing)} missing); install it with `pip install -e {root}` "
            "(editable, so the checkout itself runs), or run from outside the checkout"
        )
    return f"rmbench_fast at {here} is incomplete ({', '.join(missing)} missing); reinstall it"
