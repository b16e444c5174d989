"""NativeScorer: RM-Bench scores from our own engine (Llama family, Gemma-2) over packed batches.

Per batch (one PackedBatch from the planner, whole records with their shared prefix once):
  hidden = model(batch)                                   # [T, H], no [T, V] logits
  DPO:        lp_k = log_softmax(lm_head(hidden[label_pos_k]))[label_ids_k]   (fp32)
              per sequence j: S_j = Σ lp, N_j = count, Q_j = Σ lp²  (float64 accumulators)
              reward_j = S_j - S_j^ref | S_j / N_j | S_j | -sqrt(Q_j)   (SPEC §5)
  classifier: reward_j = float(score_head(hidden[pool_pos_j]))  in the model dtype, then
              cast to float (SPEC §4 rounding); fp32_scores=True computes the head in fp32.
Logits are produced in the model dtype (bf16 logits for a bf16 model, as current transformers
returns them); the log-softmax, the gather and the sums run in fp32 / float64.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from rmbench_fast.engine.attention import AttnImpl, PackedLayout
from rmbench_fast.engine.config import EngineConfig
from rmbench_fast.engine.llama import LlamaForScoring
from rmbench_fast.engine.loader import load_model, resolve_dtype
from rmbench_fast.errors import ModelError, UsageError
from rmbench_fast.types import N_SLOTS, PackedBatch, TokSeq

Kind = Literal["dpo", "classifier"]
RefFreeMode = Literal["avg", "sum", "norm"]
LOGIT_CHUNK_ELEMS = 1 << 24  # rows of [rows, V] logits per chunk: bounds memory at ~64 MB fp32


def native_supports(config: dict[str, Any]) -> str | None:
    """None if the native engine can run a model with this config.json dict, else the reason."""
    try:
        EngineConfig.from_dict(config)
    except ModelError as exc:
        return str(exc)
    return None


def label_logprobs_chunked(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, softcap: float | None = None
) -> torch.Tensor:
    """lp[k] = log_softmax(z[k])[labels[k]], z = hidden[k] @ weight.T, chunked over rows.

    hidden: [K, H], weight: [V, H] (model dtype), labels: [K] -> [K] fp32. With a final-logit
    soft-cap (Gemma-2) z = tanh(z / cap) * cap first, in the model dtype as HF computes it.
    z is rounded to the model dtype (what an HF causal LM returns today, SPEC §5); the
    log-softmax and gather run in fp32 through `rmbench_fast.logprobs.label_logprobs`, the
    project's one entry point (torch on the CPU, the fused Triton kernel A on CUDA).
    """
    from rmbench_fast.logprobs import label_logprobs as fused_label_logprobs

    K, V = hidden.shape[0], weight.shape[0]
    out = torch.empty(K, dtype=torch.float32, device=hidden.device)
    step = max(1, LOGIT_CHUNK_ELEMS // V)
    for a in range(0, K, step):
        z = F.linear(hidden[a : a + step], weight)  # [k, V] model dtype
        if softcap is not None:
            z = torch.tanh(z / softcap) * softcap
        out[a : a + step] = fused_label_logprobs(z, labels[a : a + step])
    return out


def sequence_logprob_stats(
    lp: torch.Tensor, label_seq: torch.Tensor, n_seq: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per sequence j: (Σ lp, count, Σ lp²) as float64 [n_seq] each. lp, label_seq: [K]."""
    lp64 = lp.double()
    s = torch.zeros(n_seq, dtype=torch.float64, device=lp.device).index_add_(0, label_seq, lp64)
    q = torch.zeros(n_seq, dtype=torch.float64, device=lp.device).index_add_(0, label_seq, lp64 * lp64)
    c = torch.bincount(label_seq, minlength=n_seq).double()
    return s, c, q


class NativeScorer:
    """Scores RM-Bench records with the native engine (same interface as the hf backend).

    score(seqs) -> [n_records, 6] float64 in slot order. `stats` holds per-run counts and times.
    """

    def __init__(
        self,
        model_dir: str | Path,
        *,
        kind: Kind,
        ref_model_dir: str | Path | None = None,
        ref_free_mode: RefFreeMode = "avg",
        dtype: str | torch.dtype | None = "auto",
        device: str | torch.device = "cpu",
        batch_tokens: int = 8192,
        fp32_scores: bool = False,
        allow_pickle: bool = False,
        share_prefix: bool = True,
        attn_impl: AttnImpl | None = None,
        log: Callable[[str], None] | None = print,
    ) -> None:
        if ref_free_mode not in ("avg", "sum", "norm"):
            raise UsageError(f"unknown reference-free mode {ref_free_mode!r}; use avg, sum or norm")
        if kind == "classifier" and ref_model_dir is not None:
            raise UsageError("a reference model applies to DPO policies only")
        self.kind, self.ref_free_mode, self.fp32_scores = kind, ref_free_mode, fp32_scores
        self.device = torch.device(device)
        self.batch_tokens, self.share_prefix = int(batch_tokens), share_prefix
        self.attn_impl: AttnImpl = attn_impl or ("flex" if self.device.type == "cuda" else "sdpa")
        self.log = log or (lambda _msg: None)
        self.cfg = EngineConfig.from_model_dir(model_dir)
        self.dtype = resolve_dtype(dtype, self.cfg)
        want = "causal" if kind == "dpo" else "classifier"
        if self.cfg.head != want:
            raise ModelError(
                f"{self.cfg.architecture} is not a {'causal LM' if kind == 'dpo' else 'sequence classifier'}",
                file=str(model_dir),
                field="architectures",
            )
        self.model = load_model(
            model_dir, dtype=self.dtype, device=self.device, allow_pickle=allow_pickle, cfg=self.cfg
        )
        self.ref_model: LlamaForScoring | None = None
        if ref_model_dir is not None:
            ref_cfg = EngineConfig.from_model_dir(ref_model_dir)
            if ref_cfg.head != "causal":
                raise ModelError(f"{ref_cfg.architecture} is not a causal LM", file=str(ref_model_dir))
            self.ref_model = load_model(
                ref_model_dir, dtype=self.dtype, device=self.device, allow_pickle=allow_pickle, cfg=ref_cfg
            )
        self.stats: dict[str, Any] = {}
        self.meta: dict[str, Any] = {}

    @property
    def vocab_size(self) -> int:
        sizes = [self.cfg.vocab_size] + (
            [self.ref_model.cfg.vocab_size] if self.ref_model is not None else []
        )
        return min(sizes)

    # ---------------------------------------------------------------------------------------
    def score(self, seqs: list[list[TokSeq]], progress: Callable[[int], None] | None = None) -> np.ndarray:
        """seqs[r]: record r's six TokSeqs (slot order) -> scores [n_records, 6] float64.

        `progress(k)` is called as k more records finish. On CUDA out-of-memory the token
        budget is halved and the unfinished records are re-planned; finished work is kept.
        """
        from rmbench_fast.plan import plan_batches, plan_stats, segment_lengths

        for r, group in enumerate(seqs):
            if len(group) != N_SLOTS:
                raise ValueError(f"record {r}: expected {N_SLOTS} sequences, got {len(group)}")
        out = np.full((len(seqs), N_SLOTS), np.nan, dtype=np.float64)
        # The planner's own lengths (its mask_first rule can turn prefix sharing off).
        seg_len = np.asarray(segment_lengths(seqs, share_prefix=self.share_prefix))
        budget = self.batch_tokens
        longest = int(seg_len.max()) if len(seqs) else 0
        if longest > budget:
            self.log(f"native: raising the token budget from {budget} to {longest} (the longest record)")
            budget = longest
        t0 = time.perf_counter()
        done_batches: list[PackedBatch] = []
        pending = list(range(len(seqs)))
        oom_halvings = 0
        plan_s = 0.0
        while pending:
            t_plan = time.perf_counter()
            batches = plan_batches(
                [seqs[r] for r in pending],
                batch_tokens=budget,
                share_prefix=self.share_prefix,
                vocab_size=self.vocab_size,
            )
            plan_s += time.perf_counter() - t_plan
            restart = False
            for bi, batch in enumerate(batches):
                try:
                    per_seq = self.score_batch(batch)
                except torch.OutOfMemoryError:
                    if self.device.type != "cuda" or budget // 2 < longest:
                        raise
                    torch.cuda.empty_cache()
                    budget //= 2
                    oom_halvings += 1
                    if oom_halvings == 1:
                        self.log(f"native: out of GPU memory; retrying with a token budget of {budget}")
                    left = {pending[int(r)] for b in batches[bi:] for r in np.asarray(b.seq_record)}
                    pending = sorted(left)
                    restart = True
                    break
                recs = np.asarray([pending[int(r)] for r in np.asarray(batch.seq_record)], dtype=np.int64)
                out[recs, np.arange(len(recs)) % N_SLOTS] = per_seq
                done_batches.append(batch)
                if progress is not None:
                    progress(batch.n_segments)
            if not restart:
                pending = []
        self.stats = {
            "backend": "native",
            "n_records": len(seqs),
            **plan_stats(done_batches),
            "batch_tokens": budget,
            "oom_halvings": oom_halvings,
            "forwards_per_sequence": 2 if self.ref_model is not None else 1,
            "share_prefix": self.share_prefix,
            "attention": self._attention_used(),
            "wall_s": time.perf_counter() - t0,
            "plan_s": plan_s,
            "plan_share": plan_s / max(time.perf_counter() - t0, 1e-9),
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
        }
        return out

    def _attention_used(self) -> str:
        from rmbench_fast.engine import attention

        if self.attn_impl == "flex" and attention.flex_fallback_reason is not None:
            return f"sdpa (flex failed to compile: {attention.flex_fallback_reason})"
        return self.attn_impl

    # ---------------------------------------------------------------------------------------
    def score_batch(self, batch: PackedBatch) -> np.ndarray:
        """One PackedBatch -> per-sequence rewards [S*6] float64 (sequence order j)."""
        layout = PackedLayout.from_batch(batch, self.device)
        ids = torch.from_numpy(np.asarray(batch.input_ids, dtype=np.int64)).to(self.device)
        if self.kind == "classifier":
            return self._classifier(batch, layout, ids)
        n_seq = len(batch.seq_record)
        s, c, q = self._dpo_stats(self.model, batch, layout, ids, n_seq)
        if self.ref_model is not None:
            s_ref, _, _ = self._dpo_stats(self.ref_model, batch, layout, ids, n_seq)
            reward = s - s_ref
        elif self.ref_free_mode == "avg":
            reward = s / c
        elif self.ref_free_mode == "sum":
            reward = s
        else:
            reward = -torch.sqrt(q)
        return reward.cpu().numpy()

    def _dpo_stats(
        self, model: LlamaForScoring, batch: PackedBatch, layout: PackedLayout, ids: torch.Tensor, n_seq: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        dev = self.device
        with torch.inference_mode():
            hidden = model.hidden_states(ids, layout, self.attn_impl)  # [T, H]
            pos = torch.from_numpy(np.asarray(batch.label_pos, dtype=np.int64)).to(dev)
            labels = torch.from_numpy(np.asarray(batch.label_ids, dtype=np.int64)).to(dev)
            seq = torch.from_numpy(np.asarray(batch.label_seq, dtype=np.int64)).to(dev)
            lp = label_logprobs(
                hidden.index_select(0, pos), model.head_weight(), labels, model.cfg.final_softcap
            )  # [K] fp32
            return sequence_logprob_stats(lp, seq, n_seq)

    def _classifier(self, batch: PackedBatch, layout: PackedLayout, ids: torch.Tensor) -> np.ndarray:
        pool = np.asarray(batch.pool_pos, dtype=np.int64)
        if (pool < 0).any():
            raise ValueError("classifier batch without pooled positions (pool_pos = -1)")
        with torch.inference_mode():
            hidden = self.model.hidden_states(ids, layout, self.attn_impl)  # [T, H]
            h = hidden.index_select(0, torch.from_numpy(pool).to(self.device))  # [S*6, H]
            score = self.model.classify(h, self.fp32_scores)  # [S*6, 1]
            return score[:, 0].float().double().cpu().numpy()


def label_logprobs(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, softcap: float | None = None
) -> torch.Tensor:
    """The one switch point for the log-prob computation: [K, H] x [V, H] -> [K] fp32.

    Logits in the model dtype, then the fused fp32 log-softmax + gather (label_logprobs_chunked).
    `rmbench_fast.logprobs.linear_label_logprobs` (kernel B: lm_head fused in, logits kept in
    fp32, never materialised) can replace it once validated on a GPU; it changes the rounding
    of the logits (fp32 instead of the model dtype), so it must stay opt-in.
    """
    return label_logprobs_chunked(hidden, weight, labels, softcap)
