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
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rmbench_fast.engine.config import EngineConfig
from rmbench_fast.engine.heads import LM_HEADS, classifier_stats, dpo_stats, logit_chunk_rows
from rmbench_fast.engine.layers.attention import ATTN_IMPLS, FlexCompileError, PackedLayout, default_impl
from rmbench_fast.engine.layers.attention.cpu_kernel import kernel_isa, kernel_name
from rmbench_fast.engine.layers.cpu_gemm import prepack, resolve_cpu_gemm
from rmbench_fast.engine.layers.parallel import vocab_parallel_token_logit
from rmbench_fast.engine.loader import load_model, resolve_dtype
from rmbench_fast.engine.scheduler import BatchCache, BatchScheduler, DataShard, Progress, Schedule
from rmbench_fast.errors import ModelError, UsageError
from rmbench_fast.records import PackedBatch, TokSeq
from rmbench_fast.scoring.plan import gating_rows
from rmbench_fast.scoring.rewards import SUM, check_ref_free_mode, rewards_from_stats
from rmbench_fast.settings import ScoreSettings
from rmbench_fast.utils import distributed
from rmbench_fast.utils.phases import phase
from rmbench_fast.utils.threads import retain_freed_memory


def native_supports(config: dict[str, Any], head_hint: str | None = None) -> str | None:
    """None if the native engine can run a model with this config.json dict, else the reason.
    head_hint ("causal" / "classifier"): the head for a config without `architectures`."""
    try:
        EngineConfig.from_dict(config, head_hint=head_hint)  # type: ignore[arg-type]
    except ModelError as exc:
        return str(exc)
    return None


def causal_logit_stats(
    model: torch.nn.Module, hidden: torch.Tensor, pool: torch.Tensor, token: int
) -> torch.Tensor:
    """(z_token, NaN, NaN) float64 [n_seq, 3]: one LM-head row at the pooled rows, in the model
    dtype, with the final soft-cap where the model has one (what HF's logits[..., token] holds)."""
    with phase("lm_head"):
        if not 0 <= token < model.cfg.vocab_size:
            raise UsageError(
                f"--reward causal-logit:{token}: the vocabulary has {model.cfg.vocab_size} tokens"
            )
        rows, w, cap = hidden.index_select(0, pool), model.head_weight(), model.cfg.final_softcap
        shard = model.vocab_shard()
        if shard is not None:  # the row lives on one rank's vocabulary shard
            z = vocab_parallel_token_logit(rows, w, token, shard, cap)  # [n_seq, 1]
        else:
            z = torch.nn.functional.linear(rows, w[token : token + 1])  # [n_seq, 1]
            if cap is not None:
                z = torch.tanh(z / cap) * cap
        s = z[:, 0].float().double()
        nan = torch.full_like(s, float("nan"))
        return torch.stack([s, nan, nan], dim=-1)


class NativeScorer:
    """Scores RM-Bench records with the native engine (same interface as the hf backend).

    `NativeScorer(model_dir, settings, ref_model_dir=...)`, or settings fields as keywords
    (`kind="dpo", attn_impl="dense", ...`) on top of the defaults. score(seqs) -> rewards
    [n_records, 6] float64 in slot order; `stats` holds per-run counts and times.
    """

    def __init__(
        self,
        model_dir: str | Path | None,
        settings: ScoreSettings | None = None,
        *,
        ref_model_dir: str | Path | None = None,
        log: Callable[[str], None] | None = print,
        model: torch.nn.Module | None = None,
        **overrides: Any,
    ) -> None:
        """`model`: an engine model already built and loaded on the device (benchmarks with
        weights made in memory); `model_dir` is then None and the settings' dtype is ignored."""
        s = ScoreSettings.resolve(settings, overrides)
        if s.kind == "dpo":
            check_ref_free_mode(s.ref_free_mode)
        if s.kind == "classifier" and ref_model_dir is not None:
            raise UsageError("a reference model applies to DPO policies only")
        if s.attn_impl not in (None, "auto", *ATTN_IMPLS):
            raise UsageError(
                f"unknown attention implementation {s.attn_impl!r}; use auto or one of {ATTN_IMPLS}"
            )
        self.settings = s
        self.kind, self.ref_free_mode, self.fp32_scores = s.kind, s.ref_free_mode, s.fp32_scores
        self.device = torch.device(s.device)
        self.batch_tokens, self.share_prefix = int(s.batch_tokens), s.share_prefix
        self.flex_failure: str | None = None  # set when flex failed to compile for this model
        self.log = log or (lambda _msg: None)
        want = "causal" if (s.kind == "dpo" or s.causal_logit_token is not None) else "classifier"
        if model is not None:
            self.cfg = model.cfg
            self.dtype = next(model.parameters()).dtype
        else:
            if model_dir is None:
                raise ValueError("NativeScorer needs a model directory or a loaded model")
            self.cfg = EngineConfig.from_model_dir(model_dir, head_hint=want)
            self.dtype = resolve_dtype(s.dtype, self.cfg)
        auto = s.attn_impl in (None, "auto")
        self.attn_impl = (
            default_impl(self.device, self.cfg.attn_softcap, self.cfg.head_dim, self.dtype)
            if auto
            else s.attn_impl
        )
        self.attention_calls: Counter[str] = Counter()  # per backend that actually ran
        self.causal_logit_token = s.causal_logit_token
        if self.cfg.head != want:
            raise ModelError(
                f"{self.cfg.architecture} is not a {'causal LM' if s.kind == 'dpo' else 'sequence classifier'}",
                file=str(model_dir),
                field="architectures",
            )
        # Tensor parallelism under torchrun (--tp K): this rank holds 1/K of each layer.
        self.tp = distributed.tp_info() if s.tp_size > 1 else None
        self.model = model if model is not None else self._load(model_dir, self.cfg)  # type: ignore[arg-type]
        self.ref_model: torch.nn.Module | None = None
        if ref_model_dir is not None:
            ref_cfg = EngineConfig.from_model_dir(ref_model_dir, head_hint="causal")
            if ref_cfg.head != "causal":
                raise ModelError(f"{ref_cfg.architecture} is not a causal LM", file=str(ref_model_dir))
            self.ref_model = self._load(ref_model_dir, ref_cfg)
        # Linears on the CPU: oneDNN with weights packed once (engine/layers/cpu_gemm.py), or F.linear.
        self.cpu_gemm = resolve_cpu_gemm(s.cpu_gemm, self.device, self.dtype)
        self.packed_linears = 0
        # CPU: large freed blocks stay in the heap for the next layer (threads.retain_freed_memory).
        with phase("load"):
            self.heap_retained = retain_freed_memory() if self.device.type == "cpu" else False
        if self.cpu_gemm == "onednn":
            with phase("load"):  # part of loading: the packed weight replaces the plain one
                self.packed_linears = sum(prepack(m) for m in (self.model, self.ref_model) if m is not None)
        # A head that reads only the pooled rows lets the last layer run at those rows alone
        # (LlamaModel.forward(rows=)): about 1/L of a classifier's work. Not with a gating head,
        # which also reads each sequence's gating-token row.
        spec = self.cfg.reward_head
        self.last_layer_rows = bool(
            self.kind == "classifier"
            and (spec is None or spec.gating_pattern is None)
            and getattr(self.model, "prunes_last_layer", lambda: False)()
        )
        self.chunk_rows = logit_chunk_rows(
            self.vocab_size, self.device, self.dtype, tp=self.model.vocab_shard()
        )
        if s.lm_head not in ("auto", *LM_HEADS):
            raise UsageError(f"unknown LM head {s.lm_head!r}; use auto, torch or fused")
        # auto = torch: kernel B's fp32 logits round differently from the official ones.
        self.lm_head = "torch" if s.lm_head == "auto" else s.lm_head
        self.stats: dict[str, Any] = {}
        self.meta: dict[str, Any] = {}
        self.schedule = Schedule()
        # Data parallelism under torchrun: this replica's share of the batches (None: all of them).
        self.shard: DataShard | None = None

    def _load(self, model_dir: str | Path, cfg: EngineConfig) -> torch.nn.Module:
        s = self.settings
        with phase("load"):
            return load_model(
                model_dir,
                dtype=self.dtype,
                device=self.device,
                allow_pickle=s.allow_pickle,
                cfg=cfg,
                tp=self.tp,
            )

    @property
    def vocab_size(self) -> int:
        sizes = [self.cfg.vocab_size] + (
            [self.ref_model.cfg.vocab_size] if self.ref_model is not None else []
        )
        return min(sizes)

    # ---------------------------------------------------------------------------------------
    def score(
        self,
        seqs: list[list[TokSeq]],
        progress: Progress | None = None,
        replay: Schedule | None = None,
        cache: BatchCache | None = None,
    ) -> np.ndarray:
        """seqs[r]: record r's six TokSeqs (slot order) -> rewards [n_records, 6] float64.

        `progress(k)` is called as k more records finish; `replay` runs another pass's batches.
        """
        stats = self.score_stats(seqs, progress, replay, cache)
        if self.kind == "classifier":
            return stats[..., 0]
        if self.ref_model is not None:  # (S, N, Q) of the policy, then of the reference
            return rewards_from_stats(stats[..., :3], "ref", stats[..., 3 + SUM])
        return rewards_from_stats(stats, self.ref_free_mode)  # type: ignore[arg-type]

    def score_stats(
        self,
        seqs: list[list[TokSeq]],
        progress: Progress | None = None,
        replay: Schedule | None = None,
        cache: BatchCache | None = None,
        shard: DataShard | None = None,
    ) -> np.ndarray:
        """Per-sequence stats [n_records, 6, k] float64: DPO (S, N, Q), then the reference's
        (S, N, Q) when it is loaded too; classifier (score, NaN, NaN). The batches run are kept
        in `self.schedule`; `cache` (the results store) supplies stored batches."""
        t0 = time.perf_counter()
        sched = BatchScheduler(
            seqs,
            batch_tokens=self.batch_tokens,
            share_prefix=self.share_prefix,
            vocab_size=self.vocab_size,
            device=self.device,
            log=self.log,
        )
        out = sched.run(self.score_batch, progress, replay, cache, shard or self.shard)
        self.schedule = sched.schedule
        wall = time.perf_counter() - t0
        self.stats = {
            "backend": "native",
            "n_records": len(seqs),
            **sched.stats(),
            "forwards_per_sequence": 2 if self.ref_model is not None else 1,
            "share_prefix": self.share_prefix,
            "attention": self.attention_used(),
            "attention_calls": dict(self.attention_calls),
            "lm_head": self.lm_head,
            "reference_mode": "together" if self.ref_model is not None else None,
            "wall_s": wall,
            "plan_share": sched.plan_s / max(wall, 1e-9),
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
            "cpu_gemm": self.cpu_gemm,
            "cpu_attention": (cpu_kernel := self.cpu_attention_kernel()),
            "cpu_attention_isa": kernel_isa() if cpu_kernel else None,
            "last_layer_rows": self.last_layer_rows,
            "packed_linears": self.packed_linears,
            "cpu_heap_retained": self.heap_retained,
            "threads": torch.get_num_threads(),
        }
        return out

    def value_settings(self) -> dict[str, Any]:
        """The resolved settings that decide the values (the results store's scope)."""
        return {
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
            "attention": self.attn_impl,
            "lm_head": self.lm_head,
            "fp32_scores": self.fp32_scores,
            "share_prefix": self.share_prefix,
            "tp": self.tp.size if self.tp is not None else 1,  # TP rounds differently from one process
            "cpu_gemm": self.cpu_gemm,  # oneDNN and MKL sum in different orders
            "last_layer_rows": self.last_layer_rows,  # the pooled rows' last layer sums in another order
            # the C++ CPU attention kernel sums in another order than torch's flash op
            "cpu_attention": self.cpu_attention_kernel(),
            # CPU kernels split their sums by thread count, so the last bits follow it.
            "threads": torch.get_num_threads() if self.device.type == "cpu" else None,
        }

    def cpu_attention_kernel(self) -> str | None:
        """The C++ CPU attention kernel's name when this model's "cpu" calls can take it."""
        if self.attn_impl != "cpu":
            return None
        return kernel_name(self.model.cfg.head_dim, self.dtype, self.device, self.model.cfg.attn_softcap)

    def attention_used(self) -> str:
        if self.flex_failure is not None:
            return f"sdpa (flex failed to compile: {self.flex_failure})"
        return self.attn_impl

    # ---------------------------------------------------------------------------------------
    def score_batch(self, batch: PackedBatch) -> torch.Tensor:
        """One PackedBatch -> per-sequence stats [S*6, k] float64 on the device (sequence order j).

        No device->host sync: the scheduler copies the result back asynchronously."""
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

    def _score_batch(self, batch: PackedBatch) -> torch.Tensor:
        layout = PackedLayout.from_batch(batch, self.device)
        try:
            return self._forward(batch, layout)
        finally:
            self.attention_calls.update(layout.ran)

    def _gating_rows(self, batch: PackedBatch) -> torch.Tensor | None:
        """[n_seq] int64 on the device: each sequence's gating-token row (ArmoRM / QRM), found
        on the host arrays (no sync), or None for a head without a gate."""
        spec = self.cfg.reward_head
        if spec is None or spec.gating_pattern is None:
            return None
        try:
            rows = gating_rows(batch, spec.gating_pattern)
        except ValueError as exc:
            raise ModelError(str(exc)) from None
        return torch.from_numpy(rows).to(self.device, non_blocking=True)

    def _forward(self, batch: PackedBatch, layout: PackedLayout) -> torch.Tensor:
        ids, n_seq = layout.input_ids, len(batch.seq_record)
        with torch.inference_mode():
            if self.kind == "classifier":
                if (np.asarray(batch.pool_pos) < 0).any():  # host arrays: no sync
                    raise ValueError("classifier batch without pooled positions (pool_pos = -1)")
                pool = layout.pool_pos
                if self.last_layer_rows:  # hidden at the pooled rows only: [n_seq, H], in sequence order
                    rows = np.asarray(batch.pool_pos, dtype=np.int64)
                    hidden = self.model.hidden_states(ids, layout, self.attn_impl, rows)
                    pool = torch.arange(n_seq, device=hidden.device)
                else:
                    hidden = self.model.hidden_states(ids, layout, self.attn_impl)  # [T, H]
                if self.causal_logit_token is not None:
                    return causal_logit_stats(self.model, hidden, pool, self.causal_logit_token)
                gate = self._gating_rows(batch)
                return classifier_stats(self.model, hidden, pool, self.fp32_scores, gate)
            labels = (layout.label_pos, layout.label_ids, layout.label_seq)
            hidden = self.model.hidden_states(ids, layout, self.attn_impl)  # [T, H]
            ref, ref_tp = None, None
            if self.ref_model is not None:  # the same batch through the reference, one fused head pass
                ref_hidden = self.ref_model.hidden_states(ids, layout, self.attn_impl)  # [T, H]
                ref = (ref_hidden, self.ref_model.head_weight(), self.ref_model.cfg.final_softcap)
                ref_tp = self.ref_model.vocab_shard()
            return dpo_stats(
                hidden,
                self.model.head_weight(),
                labels,
                n_seq,
                self.chunk_rows,
                self.model.cfg.final_softcap,
                lm_head=self.lm_head,
                ref=ref,
                tp=self.model.vocab_shard(),
                ref_tp=ref_tp,
            )
