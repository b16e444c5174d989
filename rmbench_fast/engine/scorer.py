"""NativeScorer: RM-Bench scores from the native engine over planner batches.

Per batch (one PackedBatch, whole records with their shared prefix once):
    hidden = model(batch)                                       # [T, H], no [T, V] logits
    DPO:        per sequence j: (S_j, N_j, Q_j) of the answer log-probs (heads.dpo_stats)
    classifier: per sequence j: the pooled head score (heads.classifier_stats)
and the rewards follow from those stats (rewards.rewards_from_stats, SPEC §5).
With a reference model loaded next to the policy, each batch runs both models and the reward is
S_j − S_j^ref. The pipeline's default for a reference is instead "reference first": the
reference's sums in their own pass (`score_stats`), then the policy alone on the same schedule,
one model in memory at a time; both give bit-identical scores.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rmbench_fast.engine.attention import ATTN_IMPLS, FlexCompileError, PackedLayout, default_impl
from rmbench_fast.engine.config import EngineConfig
from rmbench_fast.engine.heads import batch_label_tensors, classifier_stats, dpo_stats, logit_chunk_rows
from rmbench_fast.engine.loader import load_model, resolve_dtype
from rmbench_fast.engine.scheduler import BatchScheduler, Progress, Schedule
from rmbench_fast.errors import ModelError, UsageError
from rmbench_fast.rewards import SUM, check_ref_free_mode, rewards_from_stats
from rmbench_fast.settings import ScoreSettings
from rmbench_fast.types import PackedBatch, TokSeq


def native_supports(config: dict[str, Any]) -> str | None:
    """None if the native engine can run a model with this config.json dict, else the reason."""
    try:
        EngineConfig.from_dict(config)
    except ModelError as exc:
        return str(exc)
    return None


class NativeScorer:
    """Scores RM-Bench records with the native engine (same interface as the hf backend).

    `NativeScorer(model_dir, settings, ref_model_dir=...)`, or settings fields as keywords
    (`kind="dpo", attn_impl="dense", ...`) on top of the defaults. score(seqs) -> rewards
    [n_records, 6] float64 in slot order; `stats` holds per-run counts and times.
    """

    def __init__(
        self,
        model_dir: str | Path,
        settings: ScoreSettings | None = None,
        *,
        ref_model_dir: str | Path | None = None,
        log: Callable[[str], None] | None = print,
        **overrides: Any,
    ) -> None:
        s = ScoreSettings.resolve(settings, overrides)
        if s.kind == "dpo":
            check_ref_free_mode(s.ref_free_mode)
        if s.kind == "classifier" and ref_model_dir is not None:
            raise UsageError("a reference model applies to DPO policies only")
        if s.attn_impl is not None and s.attn_impl not in ATTN_IMPLS:
            raise UsageError(f"unknown attention implementation {s.attn_impl!r}; use one of {ATTN_IMPLS}")
        self.settings = s
        self.kind, self.ref_free_mode, self.fp32_scores = s.kind, s.ref_free_mode, s.fp32_scores
        self.device = torch.device(s.device)
        self.batch_tokens, self.share_prefix = int(s.batch_tokens), s.share_prefix
        self.attn_impl = s.attn_impl or default_impl(self.device)
        self.flex_failure: str | None = None  # set when flex failed to compile for this model
        self.log = log or (lambda _msg: None)
        self.cfg = EngineConfig.from_model_dir(model_dir)
        self.dtype = resolve_dtype(s.dtype, self.cfg)
        want = "causal" if s.kind == "dpo" else "classifier"
        if self.cfg.head != want:
            raise ModelError(
                f"{self.cfg.architecture} is not a {'causal LM' if s.kind == 'dpo' else 'sequence classifier'}",
                file=str(model_dir),
                field="architectures",
            )
        self.model = self._load(model_dir, self.cfg)
        self.ref_model: torch.nn.Module | None = None
        if ref_model_dir is not None:
            ref_cfg = EngineConfig.from_model_dir(ref_model_dir)
            if ref_cfg.head != "causal":
                raise ModelError(f"{ref_cfg.architecture} is not a causal LM", file=str(ref_model_dir))
            self.ref_model = self._load(ref_model_dir, ref_cfg)
        self.chunk_rows = logit_chunk_rows(self.vocab_size, self.device, self.dtype)
        self.stats: dict[str, Any] = {}
        self.meta: dict[str, Any] = {}
        self.schedule = Schedule()

    def _load(self, model_dir: str | Path, cfg: EngineConfig) -> torch.nn.Module:
        s = self.settings
        return load_model(
            model_dir, dtype=self.dtype, device=self.device, allow_pickle=s.allow_pickle, cfg=cfg
        )

    @property
    def vocab_size(self) -> int:
        sizes = [self.cfg.vocab_size] + (
            [self.ref_model.cfg.vocab_size] if self.ref_model is not None else []
        )
        return min(sizes)

    # ---------------------------------------------------------------------------------------
    def score(
        self, seqs: list[list[TokSeq]], progress: Progress | None = None, replay: Schedule | None = None
    ) -> np.ndarray:
        """seqs[r]: record r's six TokSeqs (slot order) -> rewards [n_records, 6] float64.

        `progress(k)` is called as k more records finish; `replay` runs another pass's batches.
        """
        stats = self.score_stats(seqs, progress, replay)
        if self.kind == "classifier":
            return stats[..., 0]
        if self.ref_model is not None:
            return rewards_from_stats(stats[..., :3], "ref", stats[..., 3])
        return rewards_from_stats(stats, self.ref_free_mode)  # type: ignore[arg-type]

    def score_stats(
        self, seqs: list[list[TokSeq]], progress: Progress | None = None, replay: Schedule | None = None
    ) -> np.ndarray:
        """Per-sequence stats [n_records, 6, k] float64: DPO (S, N, Q[, S_ref]), classifier
        (score, NaN, NaN). The batches run are kept in `self.schedule`."""
        t0 = time.perf_counter()
        sched = BatchScheduler(
            seqs,
            batch_tokens=self.batch_tokens,
            share_prefix=self.share_prefix,
            vocab_size=self.vocab_size,
            device=self.device,
            log=self.log,
        )
        out = sched.run(self.score_batch, progress, replay)
        self.schedule = sched.schedule
        wall = time.perf_counter() - t0
        self.stats = {
            "backend": "native",
            "n_records": len(seqs),
            **sched.stats(),
            "forwards_per_sequence": 2 if self.ref_model is not None else 1,
            "share_prefix": self.share_prefix,
            "attention": self.attention_used(),
            "wall_s": wall,
            "plan_share": sched.plan_s / max(wall, 1e-9),
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
        }
        return out

    def attention_used(self) -> str:
        if self.flex_failure is not None:
            return f"sdpa (flex failed to compile: {self.flex_failure})"
        return self.attn_impl

    # ---------------------------------------------------------------------------------------
    def score_batch(self, batch: PackedBatch) -> np.ndarray:
        """One PackedBatch -> per-sequence stats [S*6, k] float64 (sequence order j)."""
        try:
            return self._score_batch(batch)
        except FlexCompileError as exc:
            if self.attn_impl != "flex":
                raise
            self.flex_failure = str(exc)
            self.attn_impl = "sdpa"
            warnings.warn(
                f"FlexAttention failed to compile ({self.flex_failure}); this model runs on the "
                "per-segment SDPA path instead (same scores, slower)",
                RuntimeWarning,
                stacklevel=2,
            )
        return self._score_batch(batch)

    def _score_batch(self, batch: PackedBatch) -> np.ndarray:
        layout = PackedLayout.from_batch(batch, self.device)
        ids = torch.from_numpy(np.asarray(batch.input_ids, dtype=np.int64)).to(self.device)
        n_seq = len(batch.seq_record)
        with torch.inference_mode():
            if self.kind == "classifier":
                pool = np.asarray(batch.pool_pos, dtype=np.int64)
                if (pool < 0).any():
                    raise ValueError("classifier batch without pooled positions (pool_pos = -1)")
                hidden = self.model.hidden_states(ids, layout, self.attn_impl)  # [T, H]
                pool_t = torch.from_numpy(pool).to(self.device)
                stats = classifier_stats(self.model, hidden, pool_t, self.fp32_scores)
            else:
                labels = batch_label_tensors(batch, self.device)
                stats = self._dpo(self.model, ids, layout, labels, n_seq)
                if self.ref_model is not None:
                    ref = self._dpo(self.ref_model, ids, layout, labels, n_seq)
                    stats = torch.cat([stats, ref[:, SUM : SUM + 1]], dim=1)
        return stats.cpu().numpy()

    def _dpo(
        self,
        model: torch.nn.Module,
        ids: torch.Tensor,
        layout: PackedLayout,
        labels: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        n_seq: int,
    ) -> torch.Tensor:
        hidden = model.hidden_states(ids, layout, self.attn_impl)  # [T, H]
        return dpo_stats(hidden, model.head_weight(), labels, n_seq, self.chunk_rows, model.cfg.final_softcap)
