"""The heads, applied only at the rows a score needs (never [T, V] logits for the whole batch).

DPO (causal LM), per label row k of a batch:
    z_k  = lm_head(hidden[label_pos_k])                 [V], in the model dtype (as HF returns it)
    z_k  = cap · tanh(z_k / cap)                        (Gemma-2 final soft-cap, model dtype)
    lp_k = log_softmax(z_k.float())[label_ids_k]        fp32 (kernel A on CUDA, torch on the CPU)
then per sequence (S, N, Q) in float64 (rewards.sequence_stats).
Classifier: score_j = model.classify(hidden[pool_pos_j]) in the model dtype (SPEC §4 rounding),
or fp32 with --fp32-scores.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from rmbench_fast.logprobs import token_logprobs
from rmbench_fast.rewards import sequence_stats
from rmbench_fast.types import PackedBatch

# Rows of [rows, V] logits per chunk off the GPU: bounds memory at ~64 MB of fp32.
CPU_LOGIT_CHUNK_ELEMS = 1 << 24
# On CUDA: the share of the free device memory one chunk's logits (and their fp32 copy) may use.
CUDA_LOGIT_MEMORY_SHARE = 0.25


def logit_chunk_rows(vocab_size: int, device: torch.device, dtype: torch.dtype) -> int:
    """How many label rows one LM-head GEMM takes: a CPU constant, or from free CUDA memory.

    Read once per scorer (`mem_get_info` is a driver query, not a stream sync).
    """
    if device.type != "cuda":
        return max(1, CPU_LOGIT_CHUNK_ELEMS // vocab_size)
    free, _total = torch.cuda.mem_get_info(device)
    # z in the model dtype plus its fp32 upcast inside the log-softmax.
    per_row = vocab_size * (torch.finfo(dtype).bits // 8 + 4)
    return max(128, int(free * CUDA_LOGIT_MEMORY_SHARE) // per_row)


def lm_head_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    chunk_rows: int,
    softcap: float | None = None,
) -> torch.Tensor:
    """lp[k] = log_softmax(z[k])[labels[k]], z = hidden[k] @ weight.T, chunked over rows.

    hidden: [K, H], weight: [V, H] (model dtype), labels: [K] (already range-checked by the
    planner) -> [K] fp32. See the module docstring for the rounding.
    """
    K = hidden.shape[0]
    out = torch.empty(K, dtype=torch.float32, device=hidden.device)
    for a in range(0, K, chunk_rows):
        z = F.linear(hidden[a : a + chunk_rows], weight)  # [k, V] model dtype
        if softcap is not None:
            z = torch.tanh(z / softcap) * softcap
        out[a : a + chunk_rows] = token_logprobs(z, labels[a : a + chunk_rows], check=False)[0]
    return out


def batch_label_tensors(
    batch: PackedBatch, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(label_pos, label_ids, label_seq) [K] int64 each, on `device` (host arrays copied once)."""

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(a, dtype=np.int64)).to(device, non_blocking=True)

    return t(batch.label_pos), t(batch.label_ids), t(batch.label_seq)


def dpo_stats(
    hidden: torch.Tensor,
    head_weight: torch.Tensor,
    labels: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    n_seq: int,
    chunk_rows: int,
    softcap: float | None,
) -> torch.Tensor:
    """Per-sequence (S, N, Q) float64 [n_seq, 3] from final hidden states [T, H]."""
    pos, ids, seq = labels
    lp = lm_head_logprobs(hidden.index_select(0, pos), head_weight, ids, chunk_rows, softcap)  # [K]
    return sequence_stats(lp, seq, n_seq)


def classifier_stats(
    model: torch.nn.Module, hidden: torch.Tensor, pool: torch.Tensor, fp32: bool
) -> torch.Tensor:
    """Per-sequence (score, NaN, NaN) float64 [n_seq, 3]: the head at the pooled rows [n_seq]."""
    score = model.classify(hidden.index_select(0, pool), fp32)  # [n_seq, 1]
    s = score[:, 0].float().double()
    nan = torch.full_like(s, float("nan"))
    return torch.stack([s, nan, nan], dim=-1)
