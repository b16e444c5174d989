"""Per-sequence log-prob sums -> DPO implicit rewards (SPEC §5): the one place this happens.

Every backend reduces its per-token answer log-probs lp_t = log π(y_t | y_<t) (fp32) to three
per-sequence statistics, then to the reward of the run's mode:
    S = Σ_t lp_t          N = #{t}          Q = Σ_t lp_t²
    "ref":  r = S − S_ref          (β omitted: rank-invariant; S_ref from the reference model)
    "avg":  r = S / N              (NaN when N == 0, as the official average_log_prob)
    "sum":  r = S
    "norm": r = −sqrt(Q) = −‖lp‖₂
Two arithmetics exist, both named here:
  * `sequence_stats` / `rewards_from_stats`: the native engine's, S, N, Q accumulated in float64
    per sequence, so the order of additions (packing, GPU atomics) does not show at fp32 scale.
    The stats are also what the results store keeps: every mode follows from them.
  * `reward_from_logprobs`: the official scripts' own, a reduction of the lp tensor in its dtype
    (reward-bench's get_batch_logps), used by the transformers backend and the official-style
    benchmark path.
"""

from __future__ import annotations

from typing import Literal, TypeVar

import numpy as np
import torch

from rmbench_fast.errors import UsageError

RewardMode = Literal["ref", "avg", "sum", "norm"]
RefFreeMode = Literal["avg", "sum", "norm"]
REF_FREE_MODES: tuple[str, ...] = ("avg", "sum", "norm")
# Columns of a per-sequence stats array [..., 3].
SUM, COUNT, SUMSQ = 0, 1, 2

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


def check_ref_free_mode(mode: str) -> RefFreeMode:
    """The mode, or a one-line usage error naming the valid ones."""
    if mode not in REF_FREE_MODES:
        raise UsageError(f"unknown reference-free mode {mode!r}; use avg, sum or norm")
    return mode  # type: ignore[return-value]


def sequence_stats(
    lp: torch.Tensor, seq: torch.Tensor, n_seq: int, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-sequence (S, N, Q) in float64: lp [K] fp32, seq [K] int64 in [0, n_seq) -> [n_seq, 3].

    `valid` [K] bool (optional) drops tokens (an ignored label): they add nothing anywhere.
    No device sync: everything runs on the tokens' device.
    """
    lp64 = lp.double()
    if valid is not None:
        lp64 = torch.where(valid, lp64, 0.0)
        seq = torch.where(valid, seq, 0)
    zeros = torch.zeros(n_seq, dtype=torch.float64, device=lp.device)
    s = zeros.clone().index_add_(0, seq, lp64)
    q = zeros.clone().index_add_(0, seq, lp64 * lp64)
    # Counts by index_add_ of ones (exact integers in float64), not bincount: on CUDA bincount
    # reads the largest index back to the host to size its output, a sync per batch.
    ones = torch.ones_like(lp64) if valid is None else valid.double()
    c = zeros.clone().index_add_(0, seq, ones)
    return torch.stack([s, c, q], dim=-1)


def rewards_from_stats(stats: ArrayT, mode: RewardMode, ref_sum: ArrayT | None = None) -> ArrayT:
    """The reward of `mode` (module docstring) from stats [..., 3] float64 -> [...] float64.

    numpy arrays or torch tensors; "ref" needs `ref_sum` [...] (the reference model's S).
    """
    s = stats[..., SUM]
    if mode == "ref":
        if ref_sum is None:
            raise ValueError("mode 'ref' needs the reference model's sums")
        return s - ref_sum
    if mode == "avg":
        return s / stats[..., COUNT]
    if mode == "sum":
        return s
    if mode == "norm":
        q = stats[..., SUMSQ]
        return -(torch.sqrt(q) if isinstance(q, torch.Tensor) else np.sqrt(q))
    raise ValueError(f"mode must be 'ref', 'avg', 'sum' or 'norm', got {mode!r}")


def reward_from_logprobs(
    lp: torch.Tensor, mode: RefFreeMode, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """The official reduction over the last dim, in lp's dtype: lp [..., L] -> [...].

    `mask` [..., L] (optional) marks the scored tokens of a padded batch; lp must already be 0
    elsewhere (get_batch_logps multiplies by the mask). Without it every entry is scored.
        sum: Σ lp     avg: Σ lp / N     norm: −‖lp‖₂
    """
    if mode == "sum":
        return lp.sum(-1)
    if mode == "avg":
        return lp.sum(-1) / (lp.shape[-1] if mask is None else mask.sum(-1))
    if mode == "norm":
        return -torch.linalg.vector_norm(lp, ord=2, dim=-1)
    raise UsageError(f"unknown reference-free mode {mode!r}; use avg, sum or norm")
