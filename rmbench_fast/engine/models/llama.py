"""Llama-family decoder (Llama 2/3/3.1/3.2, Mistral, Qwen2) over a packed flat token stream.

The three families differ only in config flags (EngineConfig): Qwen2 has q/k/v biases,
Mistral and Qwen2 may have sliding-window layers, Llama 3.x uses llama3 RoPE scaling.
Parameter names equal the HF checkpoint names, except the packed projections
(`self_attn.qkv_proj` = rows [q_proj; k_proj; v_proj], `mlp.gate_up_proj` = [gate_proj; up_proj]),
which the loader fills from the checkpoint's separate tensors.

The classes are the building blocks of the other families: a family subclasses the piece it
changes and names it in a class attribute (`LlamaModel.layer_cls` / `norm_cls`,
`DecoderLayer.attention_cls`, `LlamaForScoring.body_cls`), so every constructor runs in full.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rmbench_fast.engine.config import EngineConfig
from rmbench_fast.engine.layers.attention import AttnImpl, PackedLayout, packed_attention
from rmbench_fast.engine.layers.attention.rows import rows_attention
from rmbench_fast.engine.layers.cpu_gemm import Linear
from rmbench_fast.engine.layers.linear import PackedLinear
from rmbench_fast.engine.layers.mlp import GatedMLP
from rmbench_fast.engine.layers.norms import RMSNorm
from rmbench_fast.engine.layers.parallel import VocabShard, vocab_shard
from rmbench_fast.engine.layers.rope import apply_rope, rope_cos_sin, rope_inv_freq
from rmbench_fast.engine.models.reward_heads import RewardHead, build_reward_head
from rmbench_fast.errors import ModelError
from rmbench_fast.utils.distributed import TPInfo


class Attention(nn.Module):
    """o_proj(attention(rope(q), rope(k), v)) with q/k/v from one packed projection.

    x [T, H] -> q [T, Hq, D], k/v [T, Hk, D] -> [T, H]. `qk_transform` (identity here) runs
    on q and k before RoPE: Qwen3 normalises them there.
    """

    def __init__(self, cfg: EngineConfig, window: int | None) -> None:
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        )
        self.window = window
        self.scale, self.softcap = cfg.attn_scale, cfg.attn_softcap
        H, D = cfg.hidden_size, cfg.head_dim
        self.qkv_proj = PackedLinear(
            H, {"q": self.n_heads * D, "k": self.n_kv * D, "v": self.n_kv * D}, cfg.qkv_bias
        )
        self.o_proj = Linear(self.n_heads * D, H, bias=cfg.o_bias)

    def qk_transform(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q [T, Hq, D], k [T, Hk, D] before RoPE; the Llama family leaves them as they are."""
        return q, k

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layout: PackedLayout, impl: AttnImpl
    ) -> torch.Tensor:
        # x: [T, H]
        T, D = x.shape[0], self.head_dim
        qkv = self.qkv_proj(x)  # [T, (Hq + 2 Hk) D]: one GEMM reads x once
        Hq, Hk = self.n_heads, self.n_kv
        v = qkv[:, (Hq + Hk) * D :].reshape(T, Hk, D)  # [T, Hk, D]
        if type(self).qk_transform is Attention.qk_transform:
            # q and k sit side by side in each row: one RoPE pass over [T, Hq + Hk, D]
            qk = apply_rope(qkv[:, : (Hq + Hk) * D].reshape(T, Hq + Hk, D), cos, sin)
            q, k = qk[:, :Hq], qk[:, Hq:]  # [T, Hq, D], [T, Hk, D]
        else:
            q, k = qkv[:, : Hq * D].reshape(T, Hq, D), qkv[:, Hq * D : (Hq + Hk) * D].reshape(T, Hk, D)
            q, k = self.qk_transform(q, k)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        o = packed_attention(
            q, k, v, layout, self.window, impl, scale=self.scale, softcap=self.softcap
        )  # [T, Hq, D]
        return self.o_proj(o.reshape(T, self.n_heads * self.head_dim))

    def forward_rows(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layout: PackedLayout, rows: np.ndarray
    ) -> torch.Tensor:
        """The output at the flat rows `rows` [R] only: x [T, H] -> [R, H].

        K/V are projected at every token (the rows attend to them); q, attention and o_proj run
        at the R rows. The packed q/k/v GEMM still runs whole: slicing its weight would break
        a oneDNN-packed one, and q is 60% of the smallest GEMM of one layer."""
        T, D = x.shape[0], self.head_dim
        idx = torch.from_numpy(rows).to(x.device, non_blocking=True)
        q, k, v = self.qkv_proj(x).split(self.qkv_proj.out_sizes, dim=-1)
        q = q.index_select(0, idx).reshape(len(rows), self.n_heads, D)  # [R, Hq, D]
        k = k.reshape(T, self.n_kv, D)  # [T, Hk, D]
        v = v.reshape(T, self.n_kv, D)
        q, k = self.qk_transform(q, k)
        q = apply_rope(q, cos.index_select(0, idx), sin.index_select(0, idx))
        k = apply_rope(k, cos, sin)
        o = rows_attention(q, k, v, layout, rows, self.window, self.scale, self.softcap)  # [R, Hq, D]
        return self.o_proj(o.reshape(len(rows), self.n_heads * D))


class DecoderLayer(nn.Module):
    """Pre-norm block: x += attn(norm(x)); x += mlp(norm(x))."""

    attention_cls: ClassVar[type[Attention]] = Attention

    def __init__(self, cfg: EngineConfig, window: int | None) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = self.attention_cls(cfg, window)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = GatedMLP(cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias, cfg.hidden_act)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layout: PackedLayout, impl: AttnImpl
    ) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, layout, impl)
        return x + self.mlp(self.post_attention_layernorm(x))

    def forward_rows(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layout: PackedLayout, rows: np.ndarray
    ) -> torch.Tensor:
        """This layer's output at the flat rows `rows` only: x [T, H] -> [R, H] (see
        Attention.forward_rows); the residual stream and the MLP run at those rows."""
        idx = torch.from_numpy(rows).to(x.device, non_blocking=True)
        x = x.index_select(0, idx) + self.self_attn.forward_rows(
            self.input_layernorm(x), cos, sin, layout, rows
        )
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    """embed (* embed_scale) -> layers -> final norm; returns the last hidden states [T, H].

    A family changes its layers (`layer_cls`), its norm (`norm_cls`) or its embedding scale
    (`embedding_scale`) by overriding them; the constructor itself is shared.
    """

    layer_cls: ClassVar[type[nn.Module]] = DecoderLayer
    norm_cls: ClassVar[type[nn.Module]] = RMSNorm

    def __init__(self, cfg: EngineConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(self.layer_cls(cfg, w) for w in cfg.layer_windows)
        self.norm = self.norm_cls(cfg.hidden_size, cfg.rms_norm_eps)
        self.embed_scale: float | None = self.embedding_scale(cfg)

    @staticmethod
    def embedding_scale(cfg: EngineConfig) -> float | None:
        """The factor the embeddings are multiplied by (None: none; Gemma: sqrt(H))."""
        return None

    def forward(
        self,
        input_ids: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        layout: PackedLayout,
        impl: AttnImpl,
        rows: np.ndarray | None = None,
    ) -> torch.Tensor:
        """-> final-norm hidden states [T, H], or [R, H] at the flat rows `rows` (host int64)
        when only those are read: the last layer then runs at them alone (`forward_rows`)."""
        x = self.embed_tokens(input_ids)  # [T, H]
        if self.embed_scale is not None:
            # HF keeps the scale as an fp32 tensor cast to the weight dtype (sqrt(3584) -> 60.0
            # in bf16): the same double rounding here.
            x = x * torch.tensor(self.embed_scale, dtype=torch.float32).to(x.dtype)
        last = len(self.layers) - 1 if rows is not None else len(self.layers)
        for layer in self.layers[:last]:
            x = layer(x, cos, sin, layout, impl)
        if rows is not None:
            x = self.layers[last].forward_rows(x, cos, sin, layout, rows)  # [R, H]
        return self.norm(x)

    def prunes_last_layer(self) -> bool:
        """Whether the last layer can run at the read rows alone (`forward` with `rows`): the
        Llama-family block with its own forward (a subclass that changes the block's structure
        changes forward, and then runs whole)."""
        last = self.layers[-1]
        return isinstance(last, DecoderLayer) and type(last).forward is DecoderLayer.forward


class LlamaForScoring(nn.Module):
    """The decoder plus its head: `lm_head` [V, H] (causal), `score` [1, H] (classifier), or a
    custom reward head (`cfg.reward_head`: INF-ORM, GRM, ..., see reward_heads.py).

    The head is not applied in forward: the runner applies it only at the rows it needs
    (label positions / pooled positions), which is the main saving over full [T, V] logits.
    A tied LM head is the embedding Parameter itself, so `parameters()` counts it once.
    Under tensor parallelism (`tensor_parallel.parallelize`, called by the loader) `tp` is this rank's
    TPInfo and the LM head holds this rank's vocabulary rows (`vocab_shard`).
    """

    body_cls: ClassVar[type[nn.Module]] = LlamaModel
    tp: TPInfo | None = None  # set on the instance by tensor_parallel.parallelize

    def __init__(self, cfg: EngineConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = self.body_cls(cfg)
        self.reward_head_attr: str | None = None
        if cfg.head == "causal":
            self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
            if cfg.tie_word_embeddings:
                self.lm_head.weight = self.model.embed_tokens.weight
        elif cfg.reward_head is None:
            self.score = nn.Linear(cfg.hidden_size, cfg.num_labels, bias=False)
        else:
            head = build_reward_head(cfg)
            self.reward_head_attr = head.attr
            self.add_module(head.attr, head)  # under the checkpoint's own prefix (score, v_head)
        self.register_buffer("inv_freq", rope_inv_freq(cfg.rope, cfg.head_dim), persistent=False)

    @property
    def reward_head(self) -> RewardHead | None:
        """The custom reward head, or None for a causal LM or a plain `score` classifier."""
        if self.reward_head_attr is None:
            return None
        head = getattr(self, self.reward_head_attr)
        assert isinstance(head, RewardHead)
        return head

    def head_weight(self) -> torch.Tensor:
        """The LM head [V, H] (causal; under tensor parallelism this rank's [ceil(V/K), H] rows),
        or the plain classifier's `score` weight [num_labels, H]."""
        if self.cfg.head == "causal":
            return self.lm_head.weight
        if self.reward_head is not None:
            raise ModelError(f"the {self.cfg.reward_head.name} head is not one linear layer")  # type: ignore[union-attr]
        return self.score.weight

    def vocab_shard(self) -> VocabShard | None:
        """This rank's vocabulary slice under tensor parallelism (for heads.dpo_stats(tp=)), else None."""
        return None if self.tp is None else vocab_shard(self.cfg.vocab_size, self.tp)

    def classify(self, h: torch.Tensor, fp32: bool = False, gate: torch.Tensor | None = None) -> torch.Tensor:
        """The classifier head at the pooled rows: h [S, H] -> scores [S, num_labels].

        In the model dtype (SPEC §4 rounding), or in fp32 when `fp32` (--fp32-scores). A custom
        reward head computes its own reward (`RewardHead.forward`, [S, 1]); a gating head
        (ArmoRM, QRM: `reward_head.needs_gate`) also needs `gate`, the hidden states [S, H] at
        each sequence's gating token.
        """
        head = self.reward_head
        if head is not None:
            return head(h, fp32, gate)
        w = self.score.weight  # [num_labels, H]
        return F.linear(h.float(), w.float()) if fp32 else F.linear(h, w)

    def prunes_last_layer(self) -> bool:
        """Whether `hidden_states(rows=...)` may skip the last layer's unread rows: a Llama-family
        block, in one process (under tensor parallelism the rows path is not sharded)."""
        return self.tp is None and self.model.prunes_last_layer()

    @torch.inference_mode()
    def hidden_states(
        self, input_ids: torch.Tensor, layout: PackedLayout, impl: AttnImpl, rows: np.ndarray | None = None
    ) -> torch.Tensor:
        """Final-norm hidden states [T, H] for a packed batch (input_ids: [T]), or [R, H] at the
        flat rows `rows` [R] (host int64; only where `prunes_last_layer()`)."""
        rope = self.cfg.rope
        if rope.type == "dynamic" and layout.max_span + 1 > rope.max_position_embeddings:
            # HF recomputes dynamic-NTK frequencies from the longest sequence of each forward
            # and caches them across calls: no per-sequence answer to reproduce exactly.
            raise ModelError(
                f"dynamic RoPE: a sequence of {layout.max_span + 1} tokens exceeds "
                f"max_position_embeddings = {rope.max_position_embeddings}, where transformers "
                "rescales the frequencies per batch; use --backend hf"
            )
        dtype = self.model.embed_tokens.weight.dtype
        cos, sin = rope_cos_sin(self.inv_freq, layout.positions, dtype, rope.attention_factor)  # [T, D/2]
        return self.model(input_ids, cos, sin, layout, impl, rows)
