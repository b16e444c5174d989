"""The CPU thread count of a run: the machine's physical cores unless `--threads N` says otherwise.

CPU kernels split their sums by thread (GEMM blocks, attention rows), so the last bits of a CPU
score follow the count: it is recorded in `meta` and in the results store's scope.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from rmbench_fast.errors import UsageError


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads counted once); 1 at least.

    Reads /proc/cpuinfo's (physical id, core id) pairs on Linux, restricted to the CPUs in the
    process's affinity mask; elsewhere the usable logical CPU count."""
    usable = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    logical = len(usable) if usable is not None else (os.cpu_count() or 1)
    info = Path("/proc/cpuinfo")
    if not info.exists():
        return max(1, logical)
    cores: set[tuple[str, str]] = set()
    cpu, phys, core = None, "0", None
    for line in info.read_text().splitlines() + [""]:
        key, _, value = (part.strip() for part in line.partition(":"))
        if key == "processor":
            cpu = int(value)
        elif key == "physical id":
            phys = value
        elif key == "core id":
            core = value
        elif not line.strip() and cpu is not None:
            if usable is None or cpu in usable:
                cores.add((phys, core if core is not None else str(cpu)))
            cpu, phys, core = None, "0", None
    return max(1, min(len(cores) or logical, logical))


def set_threads(n: int | None) -> int:
    """Set torch's intra-op threads to `n` (None: physical cores) and return the count."""
    if n is not None and n < 1:
        raise UsageError(f"--threads must be at least 1, got {n}")
    count = physical_cores() if n is None else n
    torch.set_num_threads(count)
    return count


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers (malloc.h)
_retained = False


def retain_freed_memory() -> bool:
    """Keep large freed CPU blocks in the process heap for reuse (glibc only; once per process).

    torch's CPU allocator has no cache: each layer's [T, 2I] gate/up output, its activation and
    the attention buffers are fresh allocations of tens of MB, which glibc serves with mmap and
    returns on free, so every layer of every batch page-faults them in again. Raising the mmap
    and trim thresholds lets the next allocation of that size reuse the freed pages: 10 MLP
    layers at T = 8192 ran 17-20% faster on the 2-core test machine (1.96-2.08 s -> 1.58-1.74 s).
    The numbers are untouched (only where memory comes from). The price: the heap keeps its high
    water mark after the run instead of handing it back (the peak itself does not grow).
    Returns whether the setting was applied (False off glibc)."""
    global _retained
    if _retained:
        return True
    try:
        import ctypes  # start-up cost: only the CPU engine needs it

        libc = ctypes.CDLL("libc.so.6")
        ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30)) and bool(
            libc.mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1)
        )
    except (OSError, AttributeError):
        return False
    _retained = ok
    return ok


# The vector-ISA flags that decide which CPU kernels run (GEMM paths, the attention kernel's copy)
_ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")


def cpu_description(info: Path = Path("/proc/cpuinfo")) -> dict[str, object]:
    """The CPU's model name and the vector-ISA flags it has, from /proc/cpuinfo (Linux); empty
    elsewhere. Benchmarks record it: CPU figures from an AVX-512/AMX machine and an AVX2-only one
    are not comparable (this project has been measured on both)."""
    if not info.exists():
        return {}
    model, flags = "", set()
    for line in info.read_text().splitlines():
        key, _, value = (part.strip() for part in line.partition(":"))
        if key == "model name" and not model:
            model = value
        elif key == "flags" and not flags:
            flags = set(value.split())
    return {"model": model, "isa": [f for f in _ISA_FLAGS if f in flags]}
