"""Pure-torch references of the Triton/CUDA kernels (no triton import: safe anywhere).

These are the `backend="torch"` paths and the test oracles' fp32 counterparts. They materialize
[T, V] fp32 logits, so they are for CPU / small shapes; the kernels avoid that.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100


def _label_logprobs(x: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """log_softmax(x.float())[t, labels[t]] for x [T, V], labels [T]; 0.0 where ignored -> [T] fp32."""
    valid = labels != ignore_index  # [T]
    safe = torch.where(valid, labels, 0).long()  # [T]
    lp = torch.log_softmax(x.float(), dim=-1).gather(-1, safe[:, None]).squeeze(-1)  # [T]
    return torch.where(valid, lp, 0.0)


def dpo_logratio_ref(
    policy_logits: torch.Tensor,
    ref_logits: torch.Tensor | None,
    labels: torch.Tensor,
    *,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Per-token (log π, log π_ref, log π − log π_ref), each [T] fp32 (last two None without ref).

    logits [T, V] (any float dtype) are upcast to fp32 before log_softmax, exactly as the kernels
    upcast on load; labels [T]; ignored rows (label == ignore_index) give 0.0.
    """
    lp = _label_logprobs(policy_logits, labels, ignore_index)
    if ref_logits is None:
        return lp, None, None
    lpr = _label_logprobs(ref_logits, labels, ignore_index)
    return lp, lpr, lp - lpr


def linear_logratio_ref(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    softcap: float | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Per-token label log-prob from hidden states: [T] fp32, 0.0 where ignored.

    logits = hidden.float() @ weight.float().T          # hidden [T, H], weight [V, H] -> [T, V] fp32
    logits = cap * tanh(logits / cap)                   # if softcap (Gemma-2 final soft-cap)
    out[t] = log_softmax(logits)[t, labels[t]]
    fp32 throughout, like the fused kernel's fp32 accumulation.
    """
    logits = hidden.float() @ weight.float().T  # [T, V]
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    return _label_logprobs(logits, labels, ignore_index)
