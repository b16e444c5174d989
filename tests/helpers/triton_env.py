"""The Triton set-up the kernel tests share (tests/kernels/test_kernels.py, test_fused_kernels.py).

On CPU the kernels run in Triton's interpreter, which must be chosen before triton is first
imported (TRITON_INTERPRET=1; see kernels/_triton_util.py). Importing this module sets it when it
is the first to import triton, so a test module imports it before any kernel module. If another
module imported triton earlier in this pytest process, `needs_kernels` skips the in-process
kernel tests and the module's `test_rerun_in_interpreter_subprocess` runs its file in a fresh
interpreter-mode process instead. On a GPU machine the kernels run compiled on CUDA tensors.
Without triton, importing this module skips the importing test module.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA and "triton" not in sys.modules:
    os.environ.setdefault("TRITON_INTERPRET", "1")

triton = pytest.importorskip("triton")


def _interpreting() -> bool:
    """Whether triton runs in its interpreter (imported here, after the set-up above)."""
    from rmbench_fast.kernels._triton_util import triton_interpreting

    return triton_interpreting()


INTERP = _interpreting()
DEVICE = "cuda" if HAS_CUDA else "cpu"
RUNNABLE = HAS_CUDA or INTERP
needs_kernels = pytest.mark.skipif(
    not RUNNABLE,
    reason="triton was imported without TRITON_INTERPRET=1 earlier in this process; "
    "test_rerun_in_interpreter_subprocess runs these checks in a fresh process",
)


def rerun_in_interpreter(test_file: str) -> None:
    """Run `test_file`'s tests in a fresh pytest process with TRITON_INTERPRET=1, and fail with its
    output if they fail (the module's in-process kernel tests skipped: see the docstring)."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_file],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
