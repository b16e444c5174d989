"""What each path measures the same way: CPU seconds, a device sync, peak memory."""

from __future__ import annotations

import resource


def cpu_s() -> float:
    """User + system CPU seconds of this process (robust to other load on a shared machine)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def sync(device: str) -> None:
    import torch  # start-up cost: torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_mem(device: str) -> tuple[float, str]:
    """Peak memory in MiB and what it is: CUDA max_memory_allocated, else this process's peak RSS."""
    import torch  # start-up cost: torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20, "cuda max_memory_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process peak RSS"
