"""The batches of a run and the out-of-memory back-off.

The planner packs whole records (a prompt and its N completions, N = 1..64 per record) into
batches of at most `batch_tokens` tokens. The scheduler feeds them to a `score_batch` function
(one PackedBatch -> per-sequence values [J, k]) and scatters the values back to
[n_records, N_max, k] in slot order (NaN past a record's own N).

Out of memory: the token budget is halved (never below the longest record, which is tried
exactly before giving up), and the records not yet scored are re-planned; finished batches are
kept. The memory is freed outside the `except` block, once the traceback (which holds the
failed batch's activations) is gone.

A `Schedule` is the list of batches actually run, with the global record of each sequence.
Replaying one reproduces the batching exactly, so two models scored on the same schedule see
identical batches (the reference model's sums are computed once and reused this way).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist

from rmbench_fast.records import PackedBatch, TokSeq
from rmbench_fast.scoring.plan import MAX_GROUP, plan_batches, plan_stats, segment_lengths, seq_slots
from rmbench_fast.utils.phases import phase

ScoreBatch = Callable[[PackedBatch], torch.Tensor]  # -> values [J, k] on the device
Progress = Callable[[int], None]


# How an allocation failure reads when it is not torch.OutOfMemoryError: cuBLAS and cuDNN
# allocate their own workspaces and report a failure as a RuntimeError with their status name.
_ALLOC_FAILURES = (
    "CUBLAS_STATUS_ALLOC_FAILED",
    "CUDNN_STATUS_ALLOC_FAILED",
    "CUDA out of memory",
    "out of memory",
)


def is_allocation_failure(exc: BaseException) -> bool:
    """Whether `exc` (not a torch.OutOfMemoryError) is a device allocation failure, which the
    scheduler backs off from like an out-of-memory error."""
    return isinstance(exc, RuntimeError) and any(s in str(exc) for s in _ALLOC_FAILURES)


@dataclass(frozen=True)
class ScheduledBatch:
    batch: PackedBatch
    records: np.ndarray  # [J] int64: global record index of each sequence j
    budget: int  # the token budget it was planned under
    slots: np.ndarray  # [J] int64: slot of each sequence j inside its record


@dataclass
class Schedule:
    """The batches a pass actually ran, in order (see the module docstring)."""

    batches: list[ScheduledBatch] = field(default_factory=list)

    @property
    def budgets(self) -> list[int]:
        return sorted({b.budget for b in self.batches}, reverse=True)

    def same_as(self, other: Schedule) -> bool:
        """Same batches in the same order (so per-sequence sums are bit-comparable)."""
        return len(self.batches) == len(other.batches) and all(
            a.budget == b.budget and np.array_equal(a.records, b.records)
            for a, b in zip(self.batches, other.batches)
        )


@dataclass(frozen=True)
class DataShard:
    """This process's replica among `size` data-parallel replicas (a torch.distributed group)."""

    rank: int
    size: int
    group: Any = None

    def merge(self, out: np.ndarray, schedule: Schedule) -> np.ndarray:
        """Every replica's values for the sequences it scored, gathered into one [n, N_max, k]."""
        recs = [b.records for b in schedule.batches]
        records = np.concatenate(recs) if recs else np.zeros(0, dtype=np.int64)  # [M]
        slots = np.concatenate([b.slots for b in schedule.batches]) if recs else records
        mine = (records, slots, out[records, slots])  # values [M, k]
        parts: list[Any] = [None] * self.size
        dist.all_gather_object(parts, mine, group=self.group)
        width = (
            max(p[2].shape[1] for p in parts if len(p[0])) if any(len(p[0]) for p in parts) else out.shape[2]
        )
        merged = np.full((out.shape[0], out.shape[1], width), np.nan)
        for r, j, values in parts:
            merged[r, j] = values
        return merged


class BatchCache(Protocol):
    """Stored per-batch values (the results store): a hit skips the batch's forward pass."""

    def lookup(self, sb: ScheduledBatch) -> np.ndarray | None: ...

    def save(self, sb: ScheduledBatch, values: np.ndarray) -> None: ...


class _Collector:
    """Scatters per-sequence values into [n_records, width, k]; device values are copied back
    non-blocking and read one batch later, so batch k's copy overlaps batch k+1's compute."""

    def __init__(
        self, n_records: int, width: int, progress: Progress | None, cache: BatchCache | None
    ) -> None:
        self.n, self.width, self.progress, self.cache = n_records, width, progress, cache
        self.out: np.ndarray | None = None
        self.inflight: list[tuple[ScheduledBatch, torch.Tensor, torch.cuda.Event | None]] = []

    def add_device(self, sb: ScheduledBatch, values: torch.Tensor) -> None:
        if values.device.type == "cuda":
            with phase("host_copies"):
                host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
                host.copy_(values, non_blocking=True)
                event = torch.cuda.Event()
                event.record()
        else:
            host, event = values, None
        self.drain()  # the previous batch's copy finished while this batch was queued
        self.inflight.append((sb, host, event))

    def add_host(self, sb: ScheduledBatch, values: np.ndarray) -> None:
        self.drain()
        self._store(sb, values, from_cache=True)

    def drain(self) -> None:
        for sb, host, event in self.inflight:
            if event is not None:
                with phase("host_copies"):
                    event.synchronize()
            self._store(sb, host.numpy(), from_cache=False)
        self.inflight = []

    def _store(self, sb: ScheduledBatch, values: np.ndarray, *, from_cache: bool) -> None:
        values = np.asarray(values, dtype=np.float64).reshape(len(sb.records), -1)
        if self.out is None:
            self.out = np.full((self.n, self.width, values.shape[1]), np.nan)
        self.out[sb.records, sb.slots] = values
        if self.cache is not None and not from_cache:
            self.cache.save(sb, values)
        if self.progress is not None:
            self.progress(sb.batch.n_segments)

    def finish(self) -> np.ndarray:
        self.drain()
        return self.out if self.out is not None else np.full((self.n, self.width, 1), np.nan)


def free_device_memory(device: torch.device) -> None:
    """Return cached blocks to the device after an out-of-memory error."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


class BatchScheduler:
    """Plans `seqs` (N_r TokSeqs per record r, 1 <= N_r <= 64) and runs every batch through
    `score_batch`."""

    def __init__(
        self,
        seqs: Sequence[Sequence[TokSeq]],
        *,
        batch_tokens: int,
        share_prefix: bool,
        vocab_size: int | None,
        device: torch.device,
        log: Callable[[str], None],
    ) -> None:
        for r, group in enumerate(seqs):
            if not 1 <= len(group) <= MAX_GROUP:
                raise ValueError(f"record {r}: expected 1 to {MAX_GROUP} sequences, got {len(group)}")
        self.width = max((len(g) for g in seqs), default=0)  # the output's slot axis
        self.seqs, self.share_prefix, self.vocab_size = seqs, share_prefix, vocab_size
        self.device, self.log = device, log
        # The planner's own lengths (its mask_first rule can turn prefix sharing off).
        seg_len = np.asarray(segment_lengths(seqs, share_prefix=share_prefix))
        self.longest = int(seg_len.max()) if len(seqs) else 0
        self.budget = int(batch_tokens)
        if self.longest > self.budget:
            log(f"native: raising the token budget from {self.budget} to {self.longest} (the longest record)")
            self.budget = self.longest
        self.oom_halvings = 0
        self.from_cache = 0  # batches whose values came from the cache instead of a forward pass
        self.plan_s = 0.0
        self.schedule = Schedule()

    def _plan(self, pending: list[int]) -> list[ScheduledBatch]:
        t = time.perf_counter()
        with phase("planning"):
            batches = plan_batches(
                [self.seqs[r] for r in pending],
                batch_tokens=self.budget,
                share_prefix=self.share_prefix,
                vocab_size=self.vocab_size,
            )
        self.plan_s += time.perf_counter() - t
        idx = np.asarray(pending, dtype=np.int64)
        return [
            ScheduledBatch(b, idx[np.asarray(b.seq_record, dtype=np.int64)], self.budget, seq_slots(b))
            for b in batches
        ]

    def _back_off(self) -> None:
        """Halve the budget after an out-of-memory error, down to exactly the longest record."""
        if self.budget <= self.longest:
            raise torch.OutOfMemoryError(
                f"out of memory even with a token budget of {self.budget} (the longest record); "
                "use a smaller --dtype, a device with more memory, or --backend hf --device-map auto"
            )
        free_device_memory(self.device)
        self.budget = max(self.budget // 2, self.longest)
        self.oom_halvings += 1
        if self.oom_halvings == 1:
            self.log(f"native: out of memory; retrying with a token budget of {self.budget}")

    def run(
        self,
        score_batch: ScoreBatch,
        progress: Progress | None = None,
        replay: Schedule | None = None,
        cache: BatchCache | None = None,
        shard: DataShard | None = None,
    ) -> np.ndarray:
        """Values [n_records, N_max, k] float64 (NaN where nothing was scored, and past a
        record's own N).

        `score_batch` returns the batch's values on the device, [J, k]; they are copied back
        asynchronously (pinned memory on CUDA) while the next batch runs, so the steady state
        has no device->host sync. `replay`: run exactly these batches first (another pass's
        schedule); an out-of-memory error while replaying re-plans the rest as usual, and
        `self.schedule` then differs. `cache`: batches whose values are stored are not run.
        `shard` (data parallelism): this replica runs the planned batches i with
        i mod size == rank (a replayed schedule is already this replica's own), then the
        replicas exchange values, so every rank returns the whole array and each batch is
        computed exactly as in one process.
        """
        collector = _Collector(len(self.seqs), self.width, progress, cache)
        if replay is not None:
            queue = list(replay.batches)
        else:
            queue = self._plan(list(range(len(self.seqs))))
            if shard is not None:
                queue = queue[shard.rank :: shard.size]
        while queue:
            failed_at: int | None = None
            for i, sb in enumerate(queue):
                stored = cache.lookup(sb) if cache is not None else None
                if stored is not None:
                    self.from_cache += 1
                    collector.add_host(sb, stored)
                else:
                    try:
                        values = score_batch(sb.batch)
                    except torch.OutOfMemoryError:
                        failed_at = i
                        break
                    except RuntimeError as exc:  # cuBLAS/cuDNN workspaces fail as RuntimeError
                        if not is_allocation_failure(exc):
                            raise
                        failed_at = i
                        break
                    collector.add_device(sb, values)
                self.schedule.batches.append(sb)
            if failed_at is None:
                break
            self._back_off()  # outside the except block: the failed batch's tensors are gone
            left = {int(r) for sb in queue[failed_at:] for r in sb.records}
            queue = self._plan(sorted(left))
        out = collector.finish()
        return out if shard is None else shard.merge(out, self.schedule)

    def stats(self) -> dict[str, object]:
        return {
            **plan_stats([b.batch for b in self.schedule.batches]),
            "batch_tokens": self.budget,
            "oom_halvings": self.oom_halvings,
            "batches_from_cache": self.from_cache,
            "plan_s": self.plan_s,
        }
