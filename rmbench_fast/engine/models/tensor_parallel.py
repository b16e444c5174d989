"""One rank's shard of an engine model: the tensor-parallel layout applied to a built model, checked.

The layout (Megatron-LM's, as vLLM and nano-vllm run it) and its layers are in
`rmbench_fast.engine.layers.parallel`; here every decoder layer's projections are replaced by
this rank's packed rows and row-parallel layers, the embedding and an untied LM head by
vocab-parallel ones, and the result is checked: every module holding parameters is sharded, a
replicated norm, or in the (replicated) classifier head.
"""

from __future__ import annotations

from torch import nn

from rmbench_fast.engine.config import EngineConfig
from rmbench_fast.engine.layers.linear import PackedLinear
from rmbench_fast.engine.layers.mlp import GatedMLP
from rmbench_fast.engine.layers.norms import OffsetRMSNorm, RMSNorm
from rmbench_fast.engine.layers.parallel import (
    HINT,
    ParallelLMHead,
    RowParallelLinear,
    VocabParallelEmbedding,
    head_layout,
    shard_range,
)
from rmbench_fast.engine.models.llama import Attention
from rmbench_fast.errors import ModelError
from rmbench_fast.utils.distributed import TPInfo

# Families whose layout is written here (their modules are the ones llama.py / gemma2.py /
# qwen3.py build). A new family must be added deliberately, after checking its modules.
TP_FAMILIES: tuple[str, ...] = ("llama", "mistral", "qwen2", "qwen3", "gemma2")


def check_tp(cfg: EngineConfig, tp: TPInfo) -> None:
    """One-line ModelError unless the family's TP layout is written and its shapes split."""
    if cfg.family not in TP_FAMILIES:
        raise ModelError(f"tensor parallelism is not written for the {cfg.family} family; {HINT}")
    head_layout(cfg.num_attention_heads, cfg.num_key_value_heads, tp)
    shard_range(cfg.intermediate_size, tp, "intermediate_size")


def parallelize(model: nn.Module, cfg: EngineConfig, tp: TPInfo) -> None:
    """Turn a (meta-built) engine model into rank `tp.rank`'s shard of it, in place.

    Every decoder layer's q/k/v and gate/up become this rank's packed rows, o_proj and
    down_proj row-parallel layers, the embedding (and an untied LM head) vocab-parallel; the
    attention module's head counts become the local ones. Norms and the classifier head stay
    replicated. Anything else holding parameters raises ModelError: no layout written for it.
    """
    check_tp(cfg, tp)
    heads = head_layout(cfg.num_attention_heads, cfg.num_key_value_heads, tp)
    D, H = cfg.head_dim, cfg.hidden_size
    body = model.model
    for i, layer in enumerate(body.layers):
        attn, mlp = layer.self_attn, layer.mlp
        if not isinstance(attn, Attention) or not isinstance(mlp, GatedMLP):
            raise ModelError(f"layer {i} of {cfg.architecture} has no tensor-parallel layout; {HINT}")
        q_rows, kv_rows = heads.n_q * D, heads.n_kv * D
        attn.qkv_proj = PackedLinear(
            H,
            {"q": q_rows, "k": kv_rows, "v": kv_rows},
            cfg.qkv_bias,
            sources={
                "q": (heads.q_start * D, cfg.num_attention_heads * D),
                "k": (heads.kv_start * D, cfg.num_key_value_heads * D),
                "v": (heads.kv_start * D, cfg.num_key_value_heads * D),
            },
        )
        attn.n_heads, attn.n_kv = heads.n_q, heads.n_kv
        attn.o_proj = RowParallelLinear(cfg.num_attention_heads * D, H, cfg.o_bias, tp, "attn_out")
        inter = cfg.intermediate_size
        start, size = shard_range(inter, tp, "intermediate_size")
        mlp.gate_up_proj = PackedLinear(
            H,
            {"gate": size, "up": size},
            cfg.mlp_bias,
            sources={"gate": (start, inter), "up": (start, inter)},
        )
        mlp.down_proj = RowParallelLinear(inter, H, cfg.mlp_bias, tp, "mlp_out")
    body.embed_tokens = VocabParallelEmbedding(cfg.vocab_size, H, tp)
    if cfg.head == "causal":
        model.lm_head = ParallelLMHead(cfg.vocab_size, H, tp)
        if cfg.tie_word_embeddings:
            model.lm_head.weight = body.embed_tokens.weight
    model.tp = tp
    _check_layout(model)


SHARDED = (RowParallelLinear, VocabParallelEmbedding)
REPLICATED = (RMSNorm, OffsetRMSNorm)


def _check_layout(model: nn.Module) -> None:
    """Every module holding parameters is sharded, a replicated norm, or in the classifier head."""
    head_attrs = {"score"} | ({model.reward_head_attr} if model.reward_head_attr else set())
    for name, module in model.named_modules():
        if not module._parameters or name.split(".")[0] in head_attrs:
            continue
        if isinstance(module, SHARDED) or isinstance(module, REPLICATED):
            continue
        if isinstance(module, PackedLinear) and module.sources:
            continue
        raise ModelError(
            f"no tensor-parallel layout for {name} ({type(module).__name__}) of {model.cfg.architecture}; {HINT}"
        )
