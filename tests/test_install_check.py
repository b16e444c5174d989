"""A source checkout that was never installed says so in one line, with the install command."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# `python -m rmbench_fast` with any editable-install import redirect switched off, so the
# package is the copied source tree in the working directory.
RUN = (
    "import runpy, sys; "
    "sys.meta_path[:] = [f for f in sys.meta_path if 'Redirect' not in type(f).__name__]; "
    "runpy.run_module('rmbench_fast', run_name='__main__', alter_sys=True)"
)


def test_uninstalled_checkout_gives_one_line(tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"
    shutil.copytree(REPO / "rmbench_fast", checkout / "rmbench_fast", ignore=shutil.ignore_patterns("*.so"))
    shutil.copytree(REPO / "kernels", checkout / "kernels", ignore=shutil.ignore_patterns("cuda"))
    shutil.copy2(REPO / "pyproject.toml", checkout / "pyproject.toml")
    proc = subprocess.run(
        [sys.executable, "-c", RUN, "run", "--help"],
        cwd=checkout,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(checkout)},
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "not installed" in lines[0] and f"pip install -e {checkout}" in lines[0]
    assert "rmbench_fast.kernels" in lines[0]
