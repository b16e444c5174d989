"""Packed linear layers: q/k/v (and gate/up) as one registered Parameter each.

The loader writes each checkpoint tensor straight into its row slice (`PackedLinear.load_shard`,
nano-vllm's packed `weight_loader`), so one GEMM reads x once and `model.parameters()` counts
every weight once. Under tensor parallelism a packed block is this rank's rows of its checkpoint
tensor (`PackedLinear(sources=...)`, built by engine/models/tensor_parallel.py); `ShardLoader`
is the interface the loader uses for every module that places checkpoint tensors itself.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import nn

from rmbench_fast.engine.layers.cpu_gemm import gemm


@runtime_checkable
class ShardLoader(Protocol):
    """A module that places checkpoint tensors itself (packed rows, tensor-parallel slices).

    shard_shape: the checkpoint tensor's full shape for parameter `leaf` and shard id `shard`;
    shard_slice: the (dim, start, length) part of it this module reads (None: all of it);
    load_shard: copy that part (any dtype/device) into place.
    """

    def shard_shape(self, leaf: str, shard: str) -> tuple[int, ...]: ...

    def shard_slice(self, leaf: str, shard: str) -> tuple[int, int, int] | None: ...

    def load_shard(self, leaf: str, tensor: torch.Tensor, shard: str) -> None: ...


class PackedLinear(nn.Module):
    """y = x Wᵀ + b with W = [W_a; W_b; ...] packed by rows: x [T, in] -> y [T, Σ out_s].

    `shards` names the row blocks in order with their sizes, e.g. {"q": Hq·D, "k": Hk·D, "v": Hk·D}.
    The checkpoint's separate tensors (q_proj, k_proj, v_proj) are written into their row
    slices by `load_shard`; the layer holds one weight (and one bias) Parameter. Same GEMM as
    x @ cat(W_a, W_b, ...)ᵀ, so the same numbers as concatenating after loading.

    `sources` (tensor parallelism, engine/models/tensor_parallel.py): per shard (start, full), meaning this
    rank's block is rows [start, start + size) of a checkpoint tensor of `full` rows. Without
    it each block is a whole checkpoint tensor. The shard id "" is the whole packed tensor (a
    checkpoint that stores qkv_proj already packed; not with `sources`).
    """

    packable_weight = True  # cpu_gemm.prepack may pack it for oneDNN

    def __init__(
        self,
        in_features: int,
        shards: dict[str, int],
        bias: bool,
        *,
        sources: dict[str, tuple[int, int]] | None = None,
    ) -> None:
        super().__init__()
        self.shards: dict[str, tuple[int, int]] = {}
        offset = 0
        for name, size in shards.items():
            self.shards[name] = (offset, size)
            offset += size
        self.out_sizes = list(shards.values())
        self.sources = dict(sources or {})
        self.weight = nn.Parameter(torch.empty(offset, in_features))
        self.bias = nn.Parameter(torch.empty(offset)) if bias else None

    def shard_shape(self, leaf: str, shard: str) -> tuple[int, ...]:
        """The checkpoint tensor's shape for parameter `leaf` ("weight" | "bias") and `shard`."""
        if shard == "":
            param = self.weight if leaf == "weight" else self.bias
            assert param is not None
            return tuple(param.shape)
        size = self.sources[shard][1] if shard in self.sources else self.shards[shard][1]
        return (size, self.weight.shape[1]) if leaf == "weight" else (size,)

    def shard_slice(self, leaf: str, shard: str) -> tuple[int, int, int] | None:
        """(0, start, size): the checkpoint rows this rank's block holds (None: the whole tensor)."""
        if shard not in self.sources:
            return None
        start, full = self.sources[shard]
        size = self.shards[shard][1]
        return None if (start, size) == (0, full) else (0, start, size)

    def load_shard(self, leaf: str, tensor: torch.Tensor, shard: str) -> None:
        """Copy a checkpoint tensor (any dtype/device; its `shard_slice` part under tensor
        parallelism) into rows [offset, offset + size) of `leaf` ("" = the whole parameter)."""
        param = self.weight if leaf == "weight" else self.bias
        assert param is not None
        with torch.no_grad():
            if shard == "":
                param.copy_(tensor)
                return
            offset, size = self.shards[shard]
            param.narrow(0, offset, size).copy_(tensor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gemm(x, self.weight, self.bias)
