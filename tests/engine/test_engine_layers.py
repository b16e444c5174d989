"""Shared layers: the fused fp32 RMSNorm equals HF's arithmetic bit for bit."""

from __future__ import annotations

import pytest
import torch

from rmbench_fast.engine.layers.norms import RMSNorm


def hf_rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' LlamaRMSNorm: normalise in fp32, cast back, then scale."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return w * h.to(x.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 8), (37, 576), (5, 4096)])
def test_rms_norm_matches_hf(dtype: torch.dtype, shape: tuple[int, int]) -> None:
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=g) * 3).to(dtype)
    norm = RMSNorm(shape[1], 1e-6).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(shape[1], generator=g))
        out = norm(x)
    ref = hf_rms_norm(x, norm.weight.detach(), 1e-6)
    assert out.dtype == ref.dtype
    # fp32: the fused kernel computes the same thing in the same precision; bf16 keeps HF's path.
    torch.testing.assert_close(
        out, ref, rtol=2e-7 if dtype == torch.float32 else 0, atol=1e-6 if dtype == torch.float32 else 0
    )


ROPE_CONFIGS = [
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768},
    {
        "rope_type": "yarn",
        "factor": 8.0,
        "original_max_position_embeddings": 4096,
        "beta_fast": 16,
        "beta_slow": 2,
    },
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096, "truncate": False},
    {
        "rope_type": "yarn",
        "factor": 40.0,
        "original_max_position_embeddings": 4096,
        "mscale": 1.0,
        "mscale_all_dim": 0.5,
    },
    {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 8192, "attention_factor": 0.9},
    {"rope_type": "dynamic", "factor": 2.0},
    {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
    {"rope_type": "linear", "factor": 4.0},
]


@pytest.mark.parametrize("rope", ROPE_CONFIGS, ids=lambda r: "-".join(f"{v}" for v in r.values()))
@pytest.mark.parametrize("head_dim", [64, 128])
def test_rope_frequencies_equal_transformers(rope: dict, head_dim: int) -> None:
    """inv_freq and the cos/sin scaling equal transformers' ROPE_INIT_FUNCTIONS bit for bit."""
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from rmbench_fast.engine.config import EngineConfig
    from rmbench_fast.engine.layers.rope import rope_inv_freq

    raw = {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": 8 * head_dim,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 8,
        "num_key_value_heads": 8,
        "vocab_size": 100,
        "max_position_embeddings": 131072,
        "rope_theta": 1e6,
        "rope_scaling": rope,
    }
    hf = transformers.Qwen2Config(**{k: v for k, v in raw.items() if k != "architectures"})
    want, want_scale = ROPE_INIT_FUNCTIONS[rope["rope_type"]](hf, "cpu")
    cfg = EngineConfig.from_dict(raw)
    assert cfg.rope.type == rope["rope_type"]
    assert torch.equal(rope_inv_freq(cfg.rope, cfg.head_dim), want)
    assert cfg.rope.attention_factor == want_scale


def test_packed_linear_is_the_concatenated_linear() -> None:
    """Shards loaded into their row slices: the packed GEMM is x @ cat(W_q, W_k, W_v)ᵀ + cat(b)."""
    from rmbench_fast.engine.layers.linear import PackedLinear

    g = torch.Generator().manual_seed(0)
    layer = PackedLinear(32, {"q": 64, "k": 16, "v": 16}, bias=True)
    ws = {s: torch.randn(n, 32, generator=g) for s, n in (("q", 64), ("k", 16), ("v", 16))}
    bs = {s: torch.randn(w.shape[0], generator=g) for s, w in ws.items()}
    for s in ("v", "q", "k"):  # any order
        layer.load_shard("weight", ws[s].bfloat16().float(), s)
        layer.load_shard("bias", bs[s], s)
    w = torch.cat([ws[s].bfloat16().float() for s in "qkv"])
    b = torch.cat([bs[s] for s in "qkv"])
    x = torch.randn(5, 32, generator=g)
    assert torch.equal(layer.weight.detach(), w) and torch.equal(
        layer(x), torch.nn.functional.linear(x, w, b)
    )
    assert layer.shard_shape("weight", "k") == (16, 32) and layer.shard_shape("bias", "q") == (64,)
