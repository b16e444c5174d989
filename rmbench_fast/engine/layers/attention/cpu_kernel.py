"""The "cpu_kernel" path (CPU, fp32): a whole layer's packed attention in one C++ call.

The batch is handed to `rmbench_fast._core.packed_attention_f32` (csrc/attention_cpu.cpp) as
pieces: each prompt prefix is a piece with no context, and each answer branch a piece whose
context is its segment's prefix. Query row t of a piece [q0, q1) with context [c0, c1) sees
    keys [c0, c1) (all) and [q0, t] (causal),
which is the packed rule of engine/layout.py when no window bites; a masked key (a duplicated
BOS, `layout.key_valid`) is seen by its own row only, as that rule says. Per
row, one online softmax runs over both key ranges, so there is no log-sum-exp merge, no
padding and no copy of K/V (the kernel reads the strided q/k/v views of the packed projection
in place, and each K/V block serves all grouped query heads of its KV head).

Why it exists: torch's CPU flash kernel runs causal attention through per-head calls with small
query blocks; on one 7,966-token RM-Bench-like batch at SmolLM2's shape this kernel runs 1.70x
faster than the split path over it (119.9 against 70.6 GFLOP/s on a 2-core AVX2 machine,
`python bench/bench_cpu_attention.py`, bench/results/cpu-attention.json). Its sums run in
another order than torch's, so the last bits differ: it is part of the results store's scope
(`kernel_name`).

It applies in fp32 on a CPU with AVX-512F or AVX2 (with FMA), head size 64 or 128, with no
window that bites and no soft-cap; otherwise the caller runs the split or padded SDPA path. The
AVX-512 and AVX2 copies give the same bits (each lane is one query row, and every sum runs in
the same order), so the store's scope names the kernel, not the instruction set.
"""

from __future__ import annotations

import numpy as np
import torch

from rmbench_fast.engine.layout import PackedLayout

try:
    from rmbench_fast import _core
except ImportError:  # a source tree without the built core: the torch paths run
    _core = None  # type: ignore[assignment]


KERNEL = "rmbf-packed-v1"  # bump when the kernel's summation order or exp changes


def kernel_isa() -> str:
    """The instruction set the kernel runs with on this CPU: "avx512", "avx2" or "" (none)."""
    return _core.packed_attention_isa() if _core is not None else ""


def kernel_name(
    head_dim: int, dtype: torch.dtype, device: torch.device, softcap: float | None = None
) -> str | None:
    """The kernel's name when it runs for a model of this head size, dtype, device and attention
    soft-cap (`KERNEL`), else None: the one rule `default_impl`, the dispatch and the store's scope
    share."""
    if device.type != "cpu" or dtype != torch.float32 or softcap is not None or _core is None:
        return None
    return KERNEL if _core.packed_attention_supported(head_dim) else None


def cpu_kernel_applies(
    q: torch.Tensor, layout: PackedLayout, window: int | None, softcap: float | None
) -> bool:
    """Whether this call runs here (module docstring): q [T, Hq, D]; a window that bites does not."""
    return window is None and kernel_name(q.shape[-1], q.dtype, q.device, softcap) is not None


def _pieces(layout: PackedLayout) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(q0, q1, c0, c1), int64 [n] each: the batch's prefixes and branches as pieces."""

    def build() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        rows: list[tuple[int, int, int, int]] = []
        for a, P, branches in layout.segment_spans():
            if P:
                rows.append((a, a + P, a, a))
            rows.extend((s0, s1, a, a + P) for s0, s1 in branches)
        arr = np.asarray(rows, dtype=np.int64).reshape(-1, 4)
        return tuple(np.ascontiguousarray(arr[:, i]) for i in range(4))  # type: ignore[return-value]

    return layout.cached(("cpu_kernel_pieces", None), build)


def cpu_kernel_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: PackedLayout, scale: float | None = None
) -> torch.Tensor:
    """q: [T, Hq, D], k/v: [T, Hk, D] float32 CPU (views with a contiguous last dim) -> [T, Hq, D].

    scale None: D^-0.5. Rows outside every piece (none in a planned batch) are left unwritten."""
    out = torch.empty(q.shape, dtype=q.dtype)
    q0, q1, c0, c1 = _pieces(layout)
    # A masked duplicated BOS is seen by its own row only (layout.py's rule); None: all valid.
    key_valid = None if layout.all_keys_valid else layout.key_valid.numpy().view(np.uint8)
    _core.packed_attention_f32(
        q.numpy(),
        k.numpy(),
        v.numpy(),
        out.numpy(),
        q0,
        q1,
        c0,
        c1,
        scale=q.shape[-1] ** -0.5 if scale is None else float(scale),
        n_threads=torch.get_num_threads(),
        key_valid=key_valid,
    )
    return out
