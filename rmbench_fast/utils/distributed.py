"""The process world under torchrun: ranks, the tensor-parallel and data-parallel groups.

`torchrun --nproc-per-node N` starts N processes and sets RANK, WORLD_SIZE and LOCAL_RANK (and
the rendezvous address) in each one's environment. `init(tp_size=K)` joins that world (NCCL on
GPUs, gloo on the CPU) and splits its N = DP × TP ranks into groups:

    TP group d = ranks [d·K, d·K + K)           consecutive ranks (one node's GPUs for K <= 8)
    DP group t = ranks {t, t + K, t + 2K, ...}  the ranks that hold the same model slice t

so rank r has tp_rank = r mod K and dp_rank = r div K. The tensor-parallel layers
(engine/layers/parallel.py) communicate only inside their TP group; data parallelism splits work over
the DP replicas. Without torchrun (no WORLD_SIZE in the environment) everything here describes
one process: world 1, TP 1, DP 1, no process group, and `tp_info()` is None.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from rmbench_fast.errors import UsageError


@dataclass(frozen=True)
class TPInfo:
    """One rank's place in its tensor-parallel group: `size` ranks, this one is `rank`.

    group: the torch.distributed ProcessGroup of the TP ranks. None means a single-process dry
    run that communicates nothing (every collective is skipped, so values are wrong but every
    shape and every collective call is the real one): `bench/tp_comm.py` counts bytes that way.
    counter: optional `parallel.CommCounter` that records every collective's payload.
    """

    size: int
    rank: int
    group: Any = None
    counter: Any = None

    def __post_init__(self) -> None:
        if self.size < 1 or not 0 <= self.rank < self.size:
            raise ValueError(f"bad tensor-parallel rank {self.rank} of {self.size}")


@dataclass(frozen=True)
class World:
    """This process's place in the world: rank r of `world_size` = dp_size × tp_size."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    tp_size: int = 1
    backend: str | None = None  # "gloo" | "nccl"; None when not distributed
    tp_group: Any = None
    dp_group: Any = None

    @property
    def tp_rank(self) -> int:
        return self.rank % self.tp_size

    @property
    def dp_rank(self) -> int:
        return self.rank // self.tp_size

    @property
    def dp_size(self) -> int:
        return self.world_size // self.tp_size


_WORLD = World()


def launched() -> bool:
    """True when this process was started by torchrun (or another launcher setting WORLD_SIZE)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def env_ranks() -> tuple[int, int, int]:
    """(RANK, WORLD_SIZE, LOCAL_RANK) from the environment torchrun sets; (0, 1, 0) without it."""

    def read(key: str, default: int) -> int:
        value = os.environ.get(key)
        if value is None:
            return default
        try:
            return int(value)
        except ValueError:
            raise UsageError(f"environment variable {key}={value!r} is not an integer") from None

    return read("RANK", 0), read("WORLD_SIZE", 1), read("LOCAL_RANK", 0)


def default_backend(device: str | torch.device | None = None) -> str:
    """NCCL for CUDA devices (or, without a device, when CUDA is available), gloo otherwise."""
    if device is not None:
        return "nccl" if torch.device(device).type == "cuda" else "gloo"
    return "nccl" if torch.cuda.is_available() else "gloo"


def init(
    tp_size: int = 1,
    *,
    backend: str | None = None,
    device: str | torch.device | None = None,
    timeout_s: float = 600.0,
) -> World:
    """Join torchrun's world and build the TP and DP groups (module docstring); returns World.

    Not launched by torchrun: a one-process World (tp_size must then be 1). Called twice with
    the same tp_size, the second call returns the first's World. On NCCL the current CUDA
    device is set to LOCAL_RANK first, as NCCL needs.
    """
    global _WORLD
    rank, world_size, local_rank = env_ranks()
    if tp_size < 1:
        raise UsageError(f"--tp must be >= 1, got {tp_size}")
    if world_size % tp_size:
        raise UsageError(f"world size {world_size} is not a multiple of --tp {tp_size}")
    if world_size == 1:
        _WORLD = World(tp_size=1)
        return _WORLD
    if _WORLD.backend is not None:
        if _WORLD.tp_size != tp_size:
            raise UsageError(f"distributed world already set up with --tp {_WORLD.tp_size}, not {tp_size}")
        return _WORLD

    backend = backend or default_backend(device)
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend, rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout_s)
        )
    dp_size = world_size // tp_size
    tp_group = dp_group = None
    # Every rank creates every group, in the same order (torch.distributed's rule).
    for d in range(dp_size if tp_size > 1 else 0):  # TP 1: no TP group (tp_info() is None)
        ranks = list(range(d * tp_size, (d + 1) * tp_size))
        group = dist.new_group(ranks) if tp_size < world_size else dist.group.WORLD
        if rank in ranks:
            tp_group = group
    for t in range(tp_size):
        ranks = list(range(t, world_size, tp_size))
        group = dist.new_group(ranks) if dp_size < world_size else dist.group.WORLD
        if rank in ranks:
            dp_group = group
    _WORLD = World(
        rank=rank,
        world_size=world_size,
        local_rank=local_rank,
        tp_size=tp_size,
        backend=backend,
        tp_group=tp_group,
        dp_group=dp_group,
    )
    return _WORLD


def shutdown() -> None:
    """Leave the process group (if one was joined) and go back to the one-process World."""
    global _WORLD

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _WORLD = World()


def world() -> World:
    """The World `init` built (a one-process World before, or without, torchrun)."""
    return _WORLD


def tp_group() -> Any:
    """The TP ProcessGroup of this rank (None in one process)."""
    return _WORLD.tp_group


def dp_group() -> Any:
    """The DP ProcessGroup of this rank: the ranks holding the same model slice (None in one process)."""
    return _WORLD.dp_group


def tp_rank() -> int:
    return _WORLD.tp_rank


def tp_size() -> int:
    return _WORLD.tp_size


def dp_rank() -> int:
    return _WORLD.dp_rank


def dp_size() -> int:
    return _WORLD.dp_size


def is_main() -> bool:
    """Rank 0: the one that writes outputs and shows progress. Of the joined world once `init`
    ran; before that, of the launcher's environment (RANK), so the answer is the same before and
    after the process group is joined (the output-directory check, progress bars)."""
    if _WORLD.backend is not None:
        return _WORLD.rank == 0
    return env_ranks()[0] == 0


def rank_prefix() -> str:
    """ "rank N: " under a launcher with several processes, else "" (error lines name their rank)."""
    try:
        rank, world, _ = env_ranks()
    except UsageError:  # a malformed RANK/WORLD_SIZE is reported elsewhere; never fail an error line
        return ""
    return f"rank {rank}: " if world > 1 else ""


def tp_info() -> TPInfo | None:
    """This rank's TPInfo for `load_model(..., tp=)`; None when tp_size is 1 (the plain engine)."""
    if _WORLD.tp_size == 1:
        return None
    return TPInfo(size=_WORLD.tp_size, rank=_WORLD.tp_rank, group=_WORLD.tp_group)


def local_device(device: str | torch.device) -> torch.device:
    """The device this rank computes on: cuda:LOCAL_RANK for a CUDA device under torchrun
    (one GPU per process), else `device` unchanged."""
    dev = torch.device(device)
    if dev.type == "cuda" and _WORLD.world_size > 1:
        return torch.device("cuda", _WORLD.local_rank)
    return dev
