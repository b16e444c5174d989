"""Custom reward heads, natively: the published heads of INF-ORM, GRM, QRM and ArmoRM without
their remote code.

Each head maps the pooled final hidden states h [S, H] (the final-norm output of the decoder,
at the token the head's own forward pools) to one reward per sequence, [S, 1]:

    INF-ORM (infly/INF-ORM-Llama3.1-70B, reward-bench `INFORMForSequenceClassification`):
        r = W2 · relu(W1 h + b1) + b2            score.0 = (W1 [H, H], b1), score.2 = (W2 [1, H], b2)
    GRM (Ray2333/GRM-*, reward-bench `GRewardModel` + `ValueHead`):
        linear:  r = W h + b                     v_head.summary = (W [1, H], b)
        mlp:     r = W_L · relu(... relu(W_1 h + b_1) ...) + b_L
                 v_head.summary.{0, 2, ..., 2n} (n = vhead_num_layers hidden layers of
                 vhead_num_neurons, then one output)
    ArmoRM (RLHFlow/ArmoRM-Llama3-8B-v0.1, its modeling_custom.py) and QRM (nicolinho/QRM-*,
    reward-bench `LlamaForRewardModelWithGating3/31`), with g = gate(h_gate), the hidden state
    at the gating token (the start of the last `<|eot_id|><|start_header_id|>assistant...`):
        gate(x)  = softmax(MLP(x) / temperature) · logit_scale           [S, O]
                   ArmoRM MLP: n x (Linear + ReLU), Linear; QRM: n x (Linear no bias, ReLU,
                   BatchNorm1d), Linear
        ArmoRM:  r = Σ_o g_o · (W h @ T)_o                W = regression_layer [O, H]
        QRM:     r = Σ_o g_o · (mean_q R(h) @ T)_o        R(h) = regression_layer(h) [O, Q]
                   (QRM in fp32, as its forward casts)

Each head is registered on the model under its checkpoint prefix (`attr`: "score", "v_head"),
so its parameter names are the checkpoint's; the gating heads' tensors sit at the checkpoint's
top level (regression_layer, gating, reward_transform_matrix) and live under `gating_head.`
here (`checkpoint_prefix` = ""; the loader maps the names). In the model dtype, every op is the one the
official module runs (nn.Linear = F.linear with bias, nn.ReLU = relu), so the rounding matches;
`fp32=True` (--fp32-scores) runs the head in fp32 instead.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from rmbench_fast.engine.config import EngineConfig
from rmbench_fast.errors import ModelError


def _linear(x: torch.Tensor, layer: nn.Linear, fp32: bool) -> torch.Tensor:
    """layer(x) in the weight dtype, or in fp32 (x, W and b cast) when `fp32`."""
    if not fp32:
        return F.linear(x.to(layer.weight.dtype), layer.weight, layer.bias)
    bias = None if layer.bias is None else layer.bias.float()
    return F.linear(x.float(), layer.weight.float(), bias)


class RewardHead(nn.Module):
    """Base class: h [S, H] (and the gating rows, for gating heads) -> rewards [S, 1].

    attr: the attribute it is registered under on the model. checkpoint_prefix: what the
    checkpoint's tensor names start with for it (attr + ".", or "" for top-level tensors).
    needs_gate: forward needs `gate`, the hidden states at the gating token [S, H].
    """

    attr: ClassVar[str]
    needs_gate: ClassVar[bool] = False

    @property
    def checkpoint_prefix(self) -> str:
        return self.attr + "."

    def owns(self, checkpoint_name: str) -> bool:
        """Whether a checkpoint tensor name belongs to this head."""
        if self.checkpoint_prefix:
            return checkpoint_name.startswith(self.checkpoint_prefix)
        top = checkpoint_name.split(".", 1)[0]
        return top in self._modules or top in self._parameters

    def forward(
        self, h: torch.Tensor, fp32: bool = False, gate: torch.Tensor | None = None
    ) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class InformHead(RewardHead):
    """INF-ORM: r = W2 relu(W1 h + b1) + b2; children named 0 / 1 / 2 like its nn.Sequential."""

    attr = "score"

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.add_module("0", nn.Linear(hidden, hidden, bias=True))
        self.add_module("1", nn.ReLU())
        self.add_module("2", nn.Linear(hidden, 1, bias=True))

    def forward(self, h: torch.Tensor, fp32: bool = False, gate: torch.Tensor | None = None) -> torch.Tensor:
        first, last = getattr(self, "0"), getattr(self, "2")
        return _linear(F.relu(_linear(h, first, fp32)), last, fp32)  # [S, 1]


class GRMValueHead(RewardHead):
    """GRM's ValueHead: `summary` is one Linear(H, 1) ("linear"), or n x (Linear + ReLU) then
    Linear(neurons, 1) ("mlp"). Dropout is the identity at inference."""

    attr = "v_head"

    def __init__(self, hidden: int, layer_type: str, num_neurons: int, num_layers: int) -> None:
        super().__init__()
        if layer_type == "linear":
            self.summary: nn.Module = nn.Linear(hidden, 1)
        else:
            mods: list[nn.Module] = []
            width = hidden
            for _ in range(num_layers):
                mods += [nn.Linear(width, num_neurons), nn.ReLU()]
                width = num_neurons
            mods.append(nn.Linear(width, 1))
            self.summary = nn.Sequential(*mods)

    def forward(self, h: torch.Tensor, fp32: bool = False, gate: torch.Tensor | None = None) -> torch.Tensor:
        if isinstance(self.summary, nn.Linear):
            return _linear(h, self.summary, fp32)
        x = h
        for mod in self.summary:
            x = _linear(x, mod, fp32) if isinstance(mod, nn.Linear) else F.relu(x)
        return x  # [S, 1]


class GatingNetwork(nn.Module):
    """x [S, H] -> softmax(MLP(x) / temperature) · logit_scale, [S, O].

    ArmoRM: layers = n x Linear(·, hidden_dim) (ReLU after each), then Linear(hidden_dim, O).
    QRM (`batch_norm`): n x [Linear(·, hidden_dim, no bias), ReLU, BatchNorm1d(hidden_dim)],
    then Linear(hidden_dim, O); BatchNorm at inference uses its running statistics.
    """

    def __init__(
        self, hidden: int, n_out: int, hidden_dim: int, n_hidden: int, temperature: float, batch_norm: bool
    ) -> None:
        super().__init__()
        self.temperature = temperature
        self.logit_scale = nn.Parameter(torch.ones(1))
        mods: list[nn.Module] = []
        width = hidden
        for _ in range(n_hidden):
            if batch_norm:
                mods += [nn.Linear(width, hidden_dim, bias=False), nn.ReLU(), nn.BatchNorm1d(hidden_dim)]
            else:
                mods.append(nn.Linear(width, hidden_dim))
            width = hidden_dim
        mods.append(nn.Linear(width, n_out, bias=True))
        self.layers = nn.ModuleList(mods)
        self.batch_norm = batch_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [S, H] -> [S, O]; the weights are used in x's dtype (cast on the fly if they differ)."""

        def cast(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(x.dtype)

        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            if isinstance(layer, nn.BatchNorm1d):
                x = F.batch_norm(
                    x,
                    cast(layer.running_mean),
                    cast(layer.running_var),
                    cast(layer.weight),
                    cast(layer.bias),
                    False,
                    0.0,
                    layer.eps,
                )
            elif isinstance(layer, nn.ReLU):
                x = F.relu(x)
            else:
                assert isinstance(layer, nn.Linear)
                x = F.linear(x, layer.weight.to(x.dtype), cast(layer.bias))
                if not self.batch_norm and i < last:
                    x = F.relu(x)
        return F.softmax(x / self.temperature, dim=1) * self.logit_scale[0].to(x.dtype)


class GatingHead(RewardHead):
    """ArmoRM / QRM: objective rewards from the pooled row, mixed by a gate over the gating row.

    ArmoRM (model dtype):  r = Σ_o g_o (W h @ T)_o,        W [O, H]
    QRM (fp32):            r = Σ_o g_o (mean_q R h @ T)_o,  R [O·Q, H] viewed [O, Q]
    T = reward_transform_matrix [O, O] (identity unless the checkpoint says otherwise).
    """

    attr = "gating_head"
    needs_gate = True

    def __init__(
        self,
        hidden: int,
        n_objectives: int,
        n_quantiles: int,
        hidden_dim: int,
        n_hidden: int,
        temperature: float,
    ) -> None:
        super().__init__()
        self.n_objectives, self.n_quantiles = n_objectives, n_quantiles
        self.regression_layer = nn.Linear(hidden, n_objectives * max(n_quantiles, 1), bias=False)
        self.reward_transform_matrix = nn.Parameter(torch.eye(n_objectives))
        self.gating = GatingNetwork(hidden, n_objectives, hidden_dim, n_hidden, temperature, n_quantiles > 0)

    @property
    def checkpoint_prefix(self) -> str:
        return ""

    def forward(self, h: torch.Tensor, fp32: bool = False, gate: torch.Tensor | None = None) -> torch.Tensor:
        if gate is None:
            raise ModelError("this reward head needs the hidden state at its gating token (gate=)")
        qrm = self.n_quantiles > 0
        dtype = torch.float32 if (fp32 or qrm) else self.regression_layer.weight.dtype
        w = self.regression_layer.weight.to(dtype)
        t = self.reward_transform_matrix.to(dtype)
        rewards = F.linear(h.to(dtype), w)  # [S, O·Q] or [S, O]
        if qrm:
            rewards = rewards.reshape(-1, self.n_objectives, self.n_quantiles).mean(dim=2)  # [S, O]
        g = self.gating(gate.to(dtype))  # [S, O]
        return torch.sum(g * (rewards @ t), dim=1, keepdim=True)  # [S, 1]


def build_reward_head(cfg: EngineConfig) -> RewardHead:
    """The head module for `cfg.reward_head` (built on whatever device is current, e.g. meta)."""
    spec = cfg.reward_head
    if spec is None:
        raise ModelError("no custom reward head in this config")
    if spec.name == "inform":
        return InformHead(cfg.hidden_size)
    if spec.name == "grm":
        return GRMValueHead(
            cfg.hidden_size, spec.vhead_layer_type, spec.vhead_num_neurons, spec.vhead_num_layers
        )
    return GatingHead(
        cfg.hidden_size,
        spec.num_objectives,
        spec.num_quantiles if spec.name == "qrm" else 0,
        spec.gating_hidden_dim,
        spec.gating_n_hidden,
        spec.gating_temperature,
    )
