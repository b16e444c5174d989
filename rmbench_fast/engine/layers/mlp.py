"""The gated MLP of the Llama family and Gemma-2: x [T, H] -> [T, H]."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rmbench_fast.engine.layers.cpu_gemm import Linear
from rmbench_fast.engine.layers.linear import PackedLinear


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


ACT_FNS = {"silu": F.silu, "gelu_pytorch_tanh": _gelu_tanh}


class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)), act = silu (Llama family) or tanh-approximated GELU (Gemma-2).

    gate and up are one packed [2I, H] projection (`gate_up_proj`, shards "gate" and "up").
    """

    def __init__(self, hidden: int, inter: int, bias: bool, act: str = "silu") -> None:
        super().__init__()
        self.act = ACT_FNS[act]
        self.gate_up_proj = PackedLinear(hidden, {"gate": inter, "up": inter}, bias)
        self.down_proj = Linear(inter, hidden, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [T, H] -> [T, H]
        gu = self.gate_up_proj(x)  # [T, 2I]
        inter = gu.shape[-1] // 2
        # Slices, not chunk(): autograd forbids in-place writes to a multi-output view.
        gate, up = gu[..., :inter], gu[..., inter:]  # [T, I] each
        if self.act is F.silu:
            # In place in the gate/up buffer: no [T, I] allocation, which glibc would page-fault in
            # again each layer (the down GEMM reads the strided view as it is; same bits).
            return self.down_proj(F.silu(gate, inplace=True).mul_(up))
        return self.down_proj(self.act(gate).mul_(up))  # act() allocates; multiply in place
