"""The results store as the scheduler's batch cache: resume, and reuse across runs.

A run replays the planner's deterministic batches; a batch whose values are stored under the
same scope (model content, tokenizer, settings) and the same batch key (its ordered sequences
and budget) is not run again, so a resumed run is bit-identical to an uninterrupted one. A batch
all of whose sequences are stored from *other* batchings (another record set, budget or
`--limit`) is reused too, which is exact only up to the last bits of fp32 batching: the count is
reported (`from_other_batching`). Whatever is computed is committed batch by batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rmbench_fast import __version__
from rmbench_fast.engine.scheduler import ScheduledBatch
from rmbench_fast.records import TokSeq
from rmbench_fast.store.db import ResultStore
from rmbench_fast.store.keys import batch_key, seq_key_of

N_VALUES = 3  # (S, N, Q) or (score, NaN, NaN): what the store keeps per sequence


@dataclass
class StoreBatchCache:
    """`engine.scheduler.BatchCache` over ResultStore scopes (see the module docstring).

    One scope per model whose values a pass produces: [n, 3] for one model, [n, 6] (policy then
    reference) when both models run on each batch.
    """

    store: ResultStore
    scopes: list[str]
    seqs: list[list[TokSeq]]
    share_prefix: bool
    hits: int = 0  # batches found exactly
    other_batching: int = 0  # sequences reused from another batching
    saved: int = 0  # batches written
    _keys: dict[int, list[str]] = field(default_factory=dict)

    def _seq_keys(self, sb: ScheduledBatch) -> list[str]:
        out = []
        for r, b in zip(sb.records, sb.slots):
            r = int(r)
            if r not in self._keys:
                self._keys[r] = [seq_key_of(s) for s in self.seqs[r]]
            out.append(self._keys[r][int(b)])
        return out

    def _batch_key(self, sb: ScheduledBatch, keys: list[str]) -> str:
        return batch_key(keys, {"budget": sb.budget, "share_prefix": self.share_prefix})

    def lookup(self, sb: ScheduledBatch) -> np.ndarray | None:
        keys = self._seq_keys(sb)
        bk = self._batch_key(sb, keys)
        exact = [self.store.get_batch(scope, bk, keys) for scope in self.scopes]
        if all(v is not None for v in exact):
            self.hits += 1
            return np.concatenate(exact, axis=1)  # type: ignore[arg-type]
        parts, other_total = [], 0
        for scope in self.scopes:
            values, found, other = self.store.get_seqs(scope, keys, expected=bk)
            if not found.all():
                return None  # run the batch: its values then all come from one batching
            parts.append(values)
            other_total += int(other.sum())
        self.other_batching += other_total
        return np.concatenate(parts, axis=1)

    def save(self, sb: ScheduledBatch, values: np.ndarray) -> None:
        keys = self._seq_keys(sb)
        bk = self._batch_key(sb, keys)
        wrote = False
        for i, scope in enumerate(self.scopes):
            part = np.ascontiguousarray(values[:, i * N_VALUES : (i + 1) * N_VALUES])
            wrote |= self.store.put_batch(scope, bk, keys, part)
        self.saved += int(wrote)

    def summary(self) -> dict[str, Any]:
        return {
            "batches_found": self.hits,
            "batches_saved": self.saved,
            "sequences_from_other_batching": self.other_batching,
        }


def scope_parts(
    store: ResultStore,
    model_dir: Path,
    *,
    tokenizer: str,
    kind: str,
    dtype: str,
    device: str,
    attention: str,
    lm_head: str,
    fp32_scores: bool,
    share_prefix: bool,
    tp: int = 1,
    cpu_gemm: str = "torch",
    last_layer_rows: bool = False,
    cpu_attention: str | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Everything that decides a stored value besides the token ids (a content hash of the model)."""
    return {
        "model": store.fingerprint_model(model_dir),
        "tokenizer": tokenizer,
        "kind": kind,
        "dtype": dtype,
        "device": device.split(":")[0],
        "attention": attention,
        "lm_head": lm_head,
        "fp32_scores": bool(fp32_scores) and kind == "classifier",
        "share_prefix": share_prefix,
        "tp": tp,  # TP reduces in another order than one process
        "cpu_gemm": cpu_gemm,  # oneDNN and MKL sum in different orders
        "last_layer_rows": last_layer_rows,  # a classifier's last layer at its pooled rows only
        "cpu_attention": cpu_attention,  # the C++ CPU kernel sums in another order than torch's
        "threads": threads,  # CPU: the last bits follow the thread count
        "engine": __version__,
    }
