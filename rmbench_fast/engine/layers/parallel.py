"""Tensor parallelism (Megatron-LM's layout, as vLLM and nano-vllm run it) and vocab-parallel log-probs.

K ranks of one TP group each hold 1/K of every large weight; the residual stream x [T, H] is
replicated (identical on every rank) between blocks. Per decoder layer, with x replicated:

    attention:  [q; k; v]_r = x W_qkv,rᵀ           column-parallel (this rank's heads)
                o_r = attention(q_r, k_r, v_r)       local: heads never mix in attention
                y = Σ_r o_r W_o,rᵀ  (+ b_o)          row-parallel: ONE all-reduce of [T, H]
    MLP:        [g; u]_r = x W_gu,rᵀ                column-parallel (rows of I)
                y = Σ_r (act(g_r) ⊙ u_r) W_d,rᵀ (+ b_d)   row-parallel: ONE all-reduce of [T, H]

so a layer costs two all-reduces of [T, H] in the model dtype, and norms, RoPE and residual adds
run replicated. Heads: rank r holds query heads [r·Hq/K, (r+1)·Hq/K). KV heads: with K <= Hk,
rank r holds kv heads [r·Hk/K, (r+1)·Hk/K); with K > Hk (K a multiple of Hk) each kv head is
replicated on K/Hk consecutive ranks and rank r holds kv head r div (K/Hk), which is the one its
query heads read (vLLM's rule).

Vocabulary: Vp = ceil(V/K) rows per rank, rank r owns token ids [r·Vp, r·Vp + n_r) with
n_r = clamp(V − r·Vp, 0, Vp); rows n_r..Vp of its shard are zero padding. The embedding
looks its own ids up, zeroes the others and all-reduces ([T, H], exact: one term is nonzero).
The LM head's logits z_r = h W_lm,rᵀ [k, Vp] are cut to their n_r valid columns, so padding
never enters a softmax, and are never gathered: per label row (Megatron's vocab-parallel
cross-entropy, forward only)

    m   = max_r max_v z_r[v]                         all-reduce MAX   [k]
    s   = Σ_r Σ_v exp(z_r[v] − m)                   all-reduce SUM   [k]  } one call, [2, k]
    z_y = Σ_r (z_r[y − r·Vp] if rank r owns y else 0)  all-reduce SUM [k]  }
    log p(y) = z_y − m − log s

in fp32, the arithmetic of log_softmax (x − max − log Σ exp(x − max)), so fp32 results equal the
single-process engine's to rounding. Gemma-2's final soft-cap is elementwise and applies per
shard. Classifier heads (`score`, custom reward heads) are replicated on the full hidden state.

Every collective goes through `all_reduce`, which a `CommCounter` on the TPInfo can count.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from rmbench_fast.engine.layers.cpu_gemm import gemm
from rmbench_fast.errors import ModelError
from rmbench_fast.utils.distributed import TPInfo

IGNORE_INDEX = -100
HINT = "run it with --tp 1"


# --------------------------------------------------------------------------------------------
# Collectives
# --------------------------------------------------------------------------------------------


@dataclass
class CommCounter:
    """Every collective a rank issues: per tag, the number of calls and the payload bytes.

    payload = numel · element size of the reduced tensor. A ring all-reduce of n bytes over K
    ranks sends 2(K−1)/K · n bytes from each rank (reduce-scatter, then all-gather): `sent`.
    """

    calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    payload: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def add(self, tag: str, t: torch.Tensor) -> None:
        self.calls[tag] += 1
        self.payload[tag] += t.numel() * t.element_size()

    def sent(self, k: int) -> dict[str, float]:
        """Bytes each rank sends per tag under a ring all-reduce over k ranks."""
        return {tag: 2 * (k - 1) / k * n for tag, n in self.payload.items()}

    def clear(self) -> None:
        self.calls.clear()
        self.payload.clear()


def all_reduce(t: torch.Tensor, tp: TPInfo, op: str = "sum", tag: str = "") -> torch.Tensor:
    """In-place all-reduce of `t` over the TP group (op "sum" | "max"); returns `t`.

    With `tp.group` None (a single-process dry run) nothing is sent and `t` is unchanged.
    """
    if tp.counter is not None:
        tp.counter.add(tag or "other", t)
    if tp.group is not None:
        dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM, group=tp.group)
    return t


def agree_min(value: int, tp: TPInfo | None) -> int:
    """The minimum of an int over the TP ranks (e.g. a chunk size read from free memory, which
    must be the same everywhere so every rank issues the same collectives). One host sync."""
    if tp is None or tp.group is None:
        return value
    t = torch.tensor([-value], dtype=torch.int64)
    if _group_backend(tp) == "nccl":
        t = t.cuda()
    all_reduce(t, tp, "max", tag="agree")
    return -int(t.item())


def _group_backend(tp: TPInfo) -> str:
    return str(dist.get_backend(tp.group))


# --------------------------------------------------------------------------------------------
# Layout arithmetic
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeadLayout:
    """This rank's heads: query heads [q_start, q_start + n_q), kv heads [kv_start, kv_start + n_kv)."""

    n_q: int
    q_start: int
    n_kv: int
    kv_start: int


def head_layout(n_heads: int, n_kv: int, tp: TPInfo) -> HeadLayout:
    """Split Hq query heads and Hk kv heads over K ranks (module docstring); ModelError if they do not split."""
    K, r = tp.size, tp.rank
    if n_heads % K:
        raise ModelError(f"{n_heads} attention heads do not split over --tp {K}; {HINT}")
    n_q = n_heads // K
    if K <= n_kv:
        if n_kv % K:
            raise ModelError(f"{n_kv} key/value heads do not split over --tp {K}; {HINT}")
        return HeadLayout(n_q, r * n_q, n_kv // K, r * (n_kv // K))
    if K % n_kv:
        raise ModelError(f"--tp {K} is not a multiple of the {n_kv} key/value heads; {HINT}")
    return HeadLayout(n_q, r * n_q, 1, r // (K // n_kv))


@dataclass(frozen=True)
class VocabShard:
    """This rank's slice of a vocabulary of V ids: ids [start, start + n_valid), stored in a
    [padded, H] shard whose rows n_valid.. are zeros (padded = ceil(V/K) on every rank)."""

    tp: TPInfo
    vocab_size: int
    start: int
    n_valid: int
    padded: int


def vocab_shard(vocab_size: int, tp: TPInfo) -> VocabShard:
    """Vp = ceil(V/K); rank r owns [r·Vp, r·Vp + clamp(V − r·Vp, 0, Vp))."""
    padded = -(-vocab_size // tp.size)
    start = tp.rank * padded
    return VocabShard(tp, vocab_size, start, max(0, min(padded, vocab_size - start)), padded)


def shard_range(n: int, tp: TPInfo, what: str) -> tuple[int, int]:
    """(start, size) of this rank's 1/K of n rows or columns; ModelError if n % K."""
    if n % tp.size:
        raise ModelError(f"{what} = {n} does not split over --tp {tp.size}; {HINT}")
    size = n // tp.size
    return tp.rank * size, size


# --------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------


class RowParallelLinear(nn.Module):
    """y = Σ_r x_r W_rᵀ + b: this rank's input columns [start, start + in/K) of W [out, in].

    x_r [T, in/K] (the output of a column-parallel layer) -> y [T, out], replicated: one
    all-reduce in x's dtype, then the (replicated) bias.
    """

    packable_weight = True  # cpu_gemm.prepack may pack it for oneDNN

    def __init__(self, in_features: int, out_features: int, bias: bool, tp: TPInfo, tag: str) -> None:
        super().__init__()
        self.tp, self.tag = tp, tag
        self.in_features = in_features
        self.start, size = shard_range(in_features, tp, "the input width of a row-parallel layer")
        self.weight = nn.Parameter(torch.empty(out_features, size))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None

    def shard_shape(self, leaf: str, shard: str) -> tuple[int, ...]:
        """The checkpoint tensor's full shape: weight [out, in], bias [out]."""
        out = self.weight.shape[0]
        return (out, self.in_features) if leaf == "weight" else (out,)

    def shard_slice(self, leaf: str, shard: str) -> tuple[int, int, int] | None:
        """(dim, start, length) of the checkpoint tensor this rank reads; the bias is whole."""
        return (1, self.start, self.weight.shape[1]) if leaf == "weight" else None

    def load_shard(self, leaf: str, tensor: torch.Tensor, shard: str) -> None:
        param = self.weight if leaf == "weight" else self.bias
        assert param is not None
        with torch.no_grad():
            param.copy_(tensor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [T, in/K] -> [T, out]
        y = all_reduce(gemm(x, self.weight), self.tp, "sum", self.tag)
        return y if self.bias is None else y + self.bias


class VocabParallelEmbedding(nn.Module):
    """Token embedding over a vocabulary split by rows (module docstring): ids [T] -> [T, H].

    Also the LM head's weight holder (`ParallelLMHead`): both hold this rank's [Vp, H] rows.
    """

    def __init__(self, vocab_size: int, hidden: int, tp: TPInfo) -> None:
        super().__init__()
        self.tp = tp
        self.shard = vocab_shard(vocab_size, tp)
        self.weight = nn.Parameter(torch.empty(self.shard.padded, hidden))

    def shard_shape(self, leaf: str, shard: str) -> tuple[int, ...]:
        return (self.shard.vocab_size, self.weight.shape[1])

    def shard_slice(self, leaf: str, shard: str) -> tuple[int, int, int] | None:
        return (0, self.shard.start, self.shard.n_valid)

    def load_shard(self, leaf: str, tensor: torch.Tensor, shard: str) -> None:
        """Rows [0, n_valid) from the checkpoint slice, the padding rows zero."""
        n = self.shard.n_valid
        with torch.no_grad():
            self.weight[:n].copy_(tensor)
            self.weight[n:].zero_()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # input_ids: [T] -> [T, H]
        local = input_ids - self.shard.start
        own = (local >= 0) & (local < self.shard.n_valid)  # [T]
        x = F.embedding(torch.where(own, local, 0), self.weight)  # [T, H]
        x = x.masked_fill(~own[:, None], 0.0)
        return all_reduce(x, self.tp, "sum", "embed")


class ParallelLMHead(VocabParallelEmbedding):
    """The LM head's [Vp, H] rows of this rank (applied by heads.py at the label rows only)."""

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:  # pragma: no cover - never called
        raise RuntimeError("the LM head is applied by heads.dpo_stats, not called")


# --------------------------------------------------------------------------------------------
# Vocab-parallel log-probs
# --------------------------------------------------------------------------------------------


def _local_stats(
    z: torch.Tensor, labels: torch.Tensor, shard: VocabShard
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """This rank's part of one model's log-probs: (zf [k, n] fp32 valid columns, local max [k],
    target logit [k], 0 where another rank owns the label)."""
    zf = z[:, : shard.n_valid].float()  # [k, n_r]: the padding columns are cut off
    if shard.n_valid:
        m = zf.amax(dim=-1)  # [k]
    else:
        m = torch.full(z.shape[:1], -math.inf, dtype=torch.float32, device=z.device)
    local = labels - shard.start  # [k]
    own = (local >= 0) & (local < shard.n_valid)
    if shard.n_valid:
        target = zf.gather(1, torch.where(own, local, 0)[:, None])[:, 0]
        target = torch.where(own, target, 0.0)
    else:
        target = torch.zeros_like(m)
    return zf, m, target


def vocab_parallel_logprobs(
    logits: torch.Tensor,
    labels: torch.Tensor,
    shard: VocabShard,
    ref_logits: torch.Tensor | None = None,
    ref_shard: VocabShard | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log_softmax over the full vocabulary at `labels`, from this rank's logit shard.

    logits: [k, Vp] (model dtype, or fp32), this rank's columns (the first n_valid are real);
    labels: [k] global ids in [0, V). Returns (lp [k] fp32, the reference's [k] or None), equal
    on every rank; 0.0 where labels == -100. Two collectives per call whatever the number of
    models: all-reduce MAX of the row maxima [n, k], then all-reduce SUM of [sum exp; target] [n, 2, k].
    """
    zs = [(logits, shard)] + ([(ref_logits, ref_shard or shard)] if ref_logits is not None else [])
    parts = [_local_stats(z, labels, s) for z, s in zs]
    m = torch.stack([p[1] for p in parts])  # [n, k]
    all_reduce(m, shard.tp, "max", "logprob_max")
    sums = torch.stack(
        [torch.stack([torch.exp(zf - m[i][:, None]).sum(dim=-1), t]) for i, (zf, _, t) in enumerate(parts)]
    )  # [n, 2, k]
    all_reduce(sums, shard.tp, "sum", "logprob_sum")
    lp = sums[:, 1] - m - torch.log(sums[:, 0])  # [n, k]
    lp = torch.where(labels[None, :] != IGNORE_INDEX, lp, 0.0)
    return lp[0], (lp[1] if ref_logits is not None else None)


def vocab_parallel_token_logit(
    hidden: torch.Tensor, weight: torch.Tensor, token: int, shard: VocabShard, softcap: float | None
) -> torch.Tensor:
    """z_token = cap · tanh(h · W[token] / cap) at rows hidden [n, H], from this rank's shard
    weight [Vp, H]: the owning rank computes it in the model dtype, the others give 0, and one
    all-reduce SUM (exact: one nonzero term) makes it [n, 1] on every rank."""
    local = token - shard.start
    if 0 <= local < shard.n_valid:
        z = F.linear(hidden, weight[local : local + 1])  # [n, 1]
        if softcap is not None:
            z = torch.tanh(z / softcap) * softcap
    else:
        z = hidden.new_zeros(hidden.shape[0], 1)
    return all_reduce(z.contiguous(), shard.tp, "sum", "token_logit")
