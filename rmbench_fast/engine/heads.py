"""The heads, applied only at the rows a score needs (never [T, V] logits for the whole batch).

DPO (causal LM), per label row k of a batch:
    z_k  = lm_head(hidden[label_pos_k])                 [V], in the model dtype (as HF returns it)
    z_k  = cap · tanh(z_k / cap)                        (Gemma-2 final soft-cap, model dtype)
    lp_k = log_softmax(z_k.float())[label_ids_k]        fp32 (kernel A on CUDA, torch on the CPU)
then per sequence (S, N, Q) in float64 (rewards.sequence_stats). With a reference model on the
same batch, both models' logits go through kernel A together (its fused-ratio mode).
`--lm-head fused` runs kernel B instead: the head inside the kernel, logits in fp32.
Classifier: score_j = model.classify(hidden[pool_pos_j]) in the model dtype (SPEC §4 rounding),
or fp32 with --fp32-scores.
Tensor parallelism (`tp=`, this rank's `parallel.VocabShard`): the weight is this rank's
[ceil(V/K), H] vocabulary rows, the logits of a chunk are this rank's columns only (soft-capped
per shard: the cap is elementwise), and `parallel.vocab_parallel_logprobs` reduces them over
the ranks without ever gathering [k, V]. Classifier heads are replicated: nothing changes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rmbench_fast.engine.layers.parallel import VocabShard, agree_min, vocab_parallel_logprobs
from rmbench_fast.scoring.logprobs import linear_token_logprobs, token_logprobs
from rmbench_fast.scoring.rewards import sequence_stats
from rmbench_fast.utils.phases import phase

# Rows of [rows, V] logits per chunk off the GPU: bounds memory at ~64 MB of fp32.
CPU_LOGIT_CHUNK_ELEMS = 1 << 24
# On CUDA: the share of the free device memory one chunk's logits (and their fp32 copy) may use.
CUDA_LOGIT_MEMORY_SHARE = 0.25


def logit_chunk_rows(
    vocab_size: int, device: torch.device, dtype: torch.dtype, tp: VocabShard | None = None
) -> int:
    """How many label rows one LM-head GEMM takes: a CPU constant, or from free CUDA memory.

    Read once per scorer (`mem_get_info` is a driver query, not a stream sync). Under tensor
    parallelism (`tp`, e.g. `model.vocab_shard()`): rows for this rank's ceil(V/K) columns, the
    minimum over the TP ranks (every rank must cut the same chunks: one collective per chunk).
    """
    if tp is not None:
        return agree_min(logit_chunk_rows(tp.padded, device, dtype), tp.tp)
    if device.type != "cuda":
        return max(1, CPU_LOGIT_CHUNK_ELEMS // vocab_size)
    free, _total = torch.cuda.mem_get_info(device)
    # z in the model dtype plus its fp32 upcast inside the log-softmax.
    per_row = vocab_size * (torch.finfo(dtype).bits // 8 + 4)
    return max(128, int(free * CUDA_LOGIT_MEMORY_SHARE) // per_row)


LM_HEADS: tuple[str, ...] = ("torch", "fused")


def _logits(hidden: torch.Tensor, weight: torch.Tensor, softcap: float | None) -> torch.Tensor:
    """z = cap · tanh(hidden @ weight.T / cap), in the model dtype as HF computes it: [k, V]."""
    z = F.linear(hidden, weight)
    if softcap is not None:
        z = torch.tanh(z / softcap) * softcap
    return z


def lm_head_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    chunk_rows: int,
    softcap: float | None = None,
    *,
    lm_head: str = "torch",
    ref: tuple[torch.Tensor, torch.Tensor, float | None] | None = None,
    tp: VocabShard | None = None,
    ref_tp: VocabShard | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """lp[k] = log_softmax(z[k])[labels[k]], z = hidden[k] @ weight.T, chunked over rows.

    hidden: [K, H], weight: [V, H] (model dtype), labels: [K] (already range-checked by the
    planner) -> ([K] fp32, the reference's [K] fp32 or None).
    lm_head "torch": the logits in the model dtype (module docstring), then kernel A; with
    `ref` = (ref_hidden [K, H], ref_weight [V, H], ref_softcap) both models' logits of a chunk go
    through kernel A in one fused pass (the DPO ratio), each row's log-prob unchanged.
    lm_head "fused": kernel B, the head inside the kernel with fp32 logits (different rounding
    from the official model-dtype logits, so opt-in).
    tp / ref_tp: the vocabulary shards of the weights under tensor parallelism (module docstring).
    """
    if tp is not None:
        return _vocab_parallel_head(hidden, weight, labels, chunk_rows, softcap, lm_head, ref, tp, ref_tp)
    K = hidden.shape[0]
    out = torch.empty(K, dtype=torch.float32, device=hidden.device)
    out_ref = torch.empty_like(out) if ref is not None else None
    for a in range(0, K, chunk_rows):
        rows = slice(a, a + chunk_rows)
        if lm_head == "fused":
            out[rows] = linear_token_logprobs(hidden[rows], weight, labels[rows], softcap, check=False)
            if ref is not None and out_ref is not None:
                rh, rw, rcap = ref
                out_ref[rows] = linear_token_logprobs(rh[rows], rw, labels[rows], rcap, check=False)
            continue
        z = _logits(hidden[rows], weight, softcap)  # [k, V]
        z_ref = _logits(ref[0][rows], ref[1], ref[2]) if ref is not None else None
        lp, lp_ref, _ = token_logprobs(z, labels[rows], z_ref, check=False)
        out[rows] = lp
        if out_ref is not None and lp_ref is not None:
            out_ref[rows] = lp_ref
    return out, out_ref


def _logits_fp32(hidden: torch.Tensor, weight: torch.Tensor, softcap: float | None) -> torch.Tensor:
    """Kernel B's logits: z = cap · tanh(hidden @ weight.T / cap), all in fp32: [k, V]."""
    z = F.linear(hidden.float(), weight.float())
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    return z


def _vocab_parallel_head(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    chunk_rows: int,
    softcap: float | None,
    lm_head: str,
    ref: tuple[torch.Tensor, torch.Tensor, float | None] | None,
    tp: VocabShard,
    ref_tp: VocabShard | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """lm_head_logprobs under tensor parallelism: per chunk this rank's logits [k, Vp] (model
    dtype as `_logits`, or fp32 as kernel B for lm_head "fused"), then the vocab-parallel
    reduction of the policy's and the reference's rows together (two collectives per chunk)."""
    if ref is not None and ref_tp is None:
        raise ValueError("a tensor-parallel reference model needs its vocabulary shard (ref_tp=)")
    logits = _logits_fp32 if lm_head == "fused" else _logits
    K = hidden.shape[0]
    out = torch.empty(K, dtype=torch.float32, device=hidden.device)
    out_ref = torch.empty_like(out) if ref is not None else None
    for a in range(0, K, chunk_rows):
        rows = slice(a, a + chunk_rows)
        z = logits(hidden[rows], weight, softcap)  # [k, Vp]
        z_ref = logits(ref[0][rows], ref[1], ref[2]) if ref is not None else None
        lp, lp_ref = vocab_parallel_logprobs(z, labels[rows], tp, z_ref, ref_tp)
        out[rows] = lp
        if out_ref is not None and lp_ref is not None:
            out_ref[rows] = lp_ref
    return out, out_ref


def dpo_stats(
    hidden: torch.Tensor,
    head_weight: torch.Tensor,
    labels: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    n_seq: int,
    chunk_rows: int,
    softcap: float | None,
    *,
    lm_head: str = "torch",
    ref: tuple[torch.Tensor, torch.Tensor, float | None] | None = None,
    tp: VocabShard | None = None,
    ref_tp: VocabShard | None = None,
) -> torch.Tensor:
    """Per-sequence (S, N, Q) float64 [n_seq, 3] from final hidden states [T, H]; with `ref`
    (the reference's hidden [T, H], head weight, soft-cap) [n_seq, 6]: the policy's, then the
    reference's (S, N, Q). Under tensor parallelism `tp` / `ref_tp` are the models' vocabulary
    shards (`model.vocab_shard()`); the stats are then equal on every rank of the TP group."""
    with phase("lm_head"):
        pos, ids, seq = labels
        ref_rows = None if ref is None else (ref[0].index_select(0, pos), ref[1], ref[2])
        lp, lp_ref = lm_head_logprobs(
            hidden.index_select(0, pos),
            head_weight,
            ids,
            chunk_rows,
            softcap,
            lm_head=lm_head,
            ref=ref_rows,
            tp=tp,
            ref_tp=ref_tp,
        )  # [K]
        stats = sequence_stats(lp, seq, n_seq)
        if lp_ref is None:
            return stats
        return torch.cat([stats, sequence_stats(lp_ref, seq, n_seq)], dim=1)


def classifier_stats(
    model: torch.nn.Module,
    hidden: torch.Tensor,
    pool: torch.Tensor,
    fp32: bool,
    gate: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-sequence (score, NaN, NaN) float64 [n_seq, 3]: the head at the pooled rows [n_seq].
    gate [n_seq] (ArmoRM / QRM): the rows of each sequence's gating token, read by the gate."""
    with phase("classifier_head"):
        gate_h = None if gate is None else hidden.index_select(0, gate)  # [n_seq, H]
        score = model.classify(hidden.index_select(0, pool), fp32, gate_h)  # [n_seq, 1]
        s = score[:, 0].float().double()
        nan = torch.full_like(s, float("nan"))
        return torch.stack([s, nan, nan], dim=-1)
