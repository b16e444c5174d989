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


def test_checkout_kernels_dir_does_not_shadow_an_installed_kernels_package(tmp_path: Path) -> None:
    """Run from the repo root (`python -m` puts the cwd first on sys.path), an installed top-level
    `kernels` package (Hugging Face's, which transformers >= 5.25 requires and imports) must win over
    our `kernels/` source folder. That folder is therefore a namespace portion (no __init__.py): a
    regular package anywhere on sys.path takes precedence over it (PEP 420)."""
    site = tmp_path / "site"
    (site / "kernels").mkdir(parents=True)
    (site / "kernels" / "__init__.py").write_text("MARK = 'installed'\n")
    proc = subprocess.run(
        [sys.executable, "-c", "import kernels; print(kernels.MARK); import rmbench_fast.kernels.reference"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": f"{REPO}:{site}"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "installed"
    assert not (REPO / "kernels" / "__init__.py").exists()


def test_transformers_hub_kernels_imports_from_the_repo_root() -> None:
    """The failure CI hit once transformers 5.25 pulled in `kernels`: `import transformers.integrations.hub_kernels`
    from the checkout's root imported our folder and failed on `CUDAProperties`."""
    proc = subprocess.run(
        [sys.executable, "-c", "import transformers.integrations.hub_kernels"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
