"""Shared helpers for the Triton kernels.

`triton.jit` decides at *decoration* time, and Triton's own standard library (tl.sum, tl.max,
tl.zeros...) at *triton import* time, whether kernels are compiled or interpreted. So the CPU path
(Triton's interpreter) works only when TRITON_INTERPRET=1 was set before triton was first
imported. The kernel modules therefore keep plain Python kernel functions and wrap them lazily
here; a CPU launch in a process where triton was imported without the variable raises a clear
error instead of Triton's "Cannot call @triton.jit'd outside of the scope of a kernel".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

_CACHE: dict[int, Any] = {}


def triton_interpreting() -> bool:
    """True if this process imported triton in interpreter mode (TRITON_INTERPRET=1 at import)."""
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(tl.standard.zeros, InterpretedFunction)


def build_kernel(
    fn: Callable[..., None], *, device: torch.device, heuristics: dict[str, Callable[[dict[str, Any]], Any]]
) -> Any:
    """The launchable kernel for `fn` (jit + heuristics), cached per function.

    CPU tensors need the interpreter; raise a clear RuntimeError when it is not active.
    """
    if device.type != "cuda" and not triton_interpreting():
        raise RuntimeError(
            "Triton kernels on CPU tensors need Triton's interpreter: set TRITON_INTERPRET=1 "
            "before triton is first imported (or use backend='torch')"
        )
    key = id(fn)
    if key not in _CACHE:
        import triton

        base = triton.jit(fn)
        _CACHE[key] = triton.heuristics(heuristics)(base) if heuristics else base
    return _CACHE[key]


def next_pow2(n: int) -> int:
    """Smallest power of two >= n (>= 1)."""
    return 1 << max(0, (int(n) - 1).bit_length())


def check_same_device(name: str, t: torch.Tensor, device: torch.device) -> None:
    """Raise ValueError if `t` is not on `device` (kernels never move data implicitly)."""
    if t.device != device:
        raise ValueError(f"{name} is on {t.device}, expected {device}")


def is_float_dtype(dtype: torch.dtype) -> bool:
    """The logits / hidden dtypes the kernels accept."""
    return dtype in (torch.float32, torch.float16, torch.bfloat16)
