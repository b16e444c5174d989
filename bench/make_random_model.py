"""Write a random-weight model directory at a real model's shape, for GPU benchmarks.

    python bench/make_random_model.py --shape {llama-3.1-8b,qwen2-7b,qwen3-8b,gemma-2-9b,tiny,tiny-qwen3} \
        --out DIR [--dtype bfloat16] [--classifier] \
        [--tokenizer-from DIR]   # a dir with tokenizer.json + tokenizer_config.json

Random weights time the same as trained ones. The config follows the real model's config.json
field by field; the weights are drawn tensor by tensor and written in shards of ~2 GB, so
memory stays at one shard. The tokenizer (and chat template) is the SmolLM2 demo's: its ids
(< 49152) are valid in any of these vocabularies, and RM-Bench text tokenizes to realistic
lengths with it. No transformers needed.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

import torch

# Real configs (the fields the engine reads), from the models' published config.json files.
SHAPES: dict[str, dict[str, Any]] = {
    "llama-3.1-8b": {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        "max_position_embeddings": 131072,
        "vocab_size": 128256,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "mlp_bias": False,
        "hidden_act": "silu",
        "bos_token_id": 128000,
        "eos_token_id": 128009,
    },
    "qwen2-7b": {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "max_position_embeddings": 32768,
        "vocab_size": 152064,
        "tie_word_embeddings": False,
        "use_sliding_window": False,
        "sliding_window": 131072,
        "max_window_layers": 28,
        "hidden_act": "silu",
        "bos_token_id": 151643,
        "eos_token_id": 151645,
    },
    "gemma-2-9b": {
        "architectures": ["Gemma2ForCausalLM"],
        "model_type": "gemma2",
        "hidden_size": 3584,
        "intermediate_size": 14336,
        "num_hidden_layers": 42,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 256,
        "query_pre_attn_scalar": 256,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "max_position_embeddings": 8192,
        "vocab_size": 256000,
        "tie_word_embeddings": True,
        "sliding_window": 4096,
        "attn_logit_softcapping": 50.0,
        "final_logit_softcapping": 30.0,
        "hidden_activation": "gelu_pytorch_tanh",
        "hidden_act": "gelu_pytorch_tanh",
        "bos_token_id": 2,
        "eos_token_id": 1,
    },
    # Qwen3-8B, the base of Skywork-Reward-V2-Qwen3-8B (per-head q/k RMSNorm, no qkv bias).
    "qwen3-8b": {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "hidden_size": 4096,
        "intermediate_size": 12288,
        "num_hidden_layers": 36,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "max_position_embeddings": 40960,
        "vocab_size": 151936,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "use_sliding_window": False,
        "sliding_window": None,
        "max_window_layers": 36,
        "hidden_act": "silu",
        "bos_token_id": 151643,
        "eos_token_id": 151645,
    },
    # A few-MB stand-in with the same code path, to test this script on a CPU.
    "tiny": {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "max_position_embeddings": 4096,
        "vocab_size": 49152,
        "tie_word_embeddings": False,
        "hidden_act": "silu",
        "bos_token_id": 1,
        "eos_token_id": 2,
    },
}
# The Qwen3 code path at a few MB (q/k norms included), for CPU tests of Qwen3 benchmarks.
SHAPES["tiny-qwen3"] = dict(
    SHAPES["qwen3-8b"],
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_window_layers=2,
    vocab_size=49152,
    bos_token_id=1,
    eos_token_id=2,
)


def shape_config(shape: str, *, classifier: bool = False) -> dict[str, Any]:
    """The config.json of a shape; `classifier` makes it the ...ForSequenceClassification of the
    same body with one reward logit (as Skywork-Reward-V2 ships its Qwen3 and Llama models)."""
    cfg = dict(SHAPES[shape])
    if classifier:
        cfg["architectures"] = [cfg["architectures"][0].replace("ForCausalLM", "ForSequenceClassification")]
        cfg["num_labels"] = 1
        cfg["pad_token_id"] = cfg["eos_token_id"]
    return cfg


def tensor_shapes(cfg: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Checkpoint tensor names -> shapes (HF names: q/k/v and gate/up separate, a tied LM head
    omitted), from the engine's own model built on the meta device, so every family the engine
    supports is covered."""
    from rmbench_fast.engine.config import EngineConfig
    from rmbench_fast.engine.loader import checkpoint_shapes

    return checkpoint_shapes(EngineConfig.from_dict(cfg))


def write_random_model(
    shape: str,
    out: Path,
    *,
    dtype: str = "bfloat16",
    seed: int = 0,
    shard_bytes: int = 2 << 30,
    device: str | None = None,
    tokenizer_from: Path | None = None,
    classifier: bool = False,
) -> Path:
    from safetensors.torch import save_file

    cfg = dict(shape_config(shape, classifier=classifier), torch_dtype=dtype)
    tdtype = getattr(torch, dtype)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    gen = torch.Generator(device=device).manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, shp in tensor_shapes(cfg).items():
        if name.endswith("norm.weight"):
            # a unit norm scale: Gemma stores it as an offset from 1
            t = (torch.zeros if cfg["model_type"] == "gemma2" else torch.ones)(shp, dtype=tdtype)
        else:
            fan_in = shp[-1]
            t = (torch.randn(shp, generator=gen, device=device) / fan_in**0.5).to(tdtype).cpu()
        nbytes = t.numel() * t.element_size()
        if size and size + nbytes > shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    weight_map = {}
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out / fname), metadata={"format": "pt"})
        weight_map |= {k: fname for k in shard}
        shard.clear()
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (out / "config.json").write_text(json.dumps(cfg, indent=1))
    if tokenizer_from is None:
        from rmbench_fast.inputs.demo import ensure_smollm2

        tokenizer_from = ensure_smollm2()
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_from / f, out / f)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--tokenizer-from",
        type=Path,
        default=None,
        help="a directory with tokenizer.json + tokenizer_config.json (default: the SmolLM2 demo's)",
    )
    ap.add_argument(
        "--classifier", action="store_true", help="a sequence classifier (one reward logit) on the same body"
    )
    args = ap.parse_args()
    path = write_random_model(
        args.shape,
        args.out,
        dtype=args.dtype,
        seed=args.seed,
        tokenizer_from=args.tokenizer_from,
        classifier=args.classifier,
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
