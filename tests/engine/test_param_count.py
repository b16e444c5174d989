"""Packed projections are registered Parameters: the model's own parameter count is the published
one, and the loader writes each checkpoint tensor straight into its row slice (no copy after)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from bench import make_random_model as mrm
from rmbench_fast.engine.config import EngineConfig
from rmbench_fast.engine.loader import checkpoint_shapes, load_model, model_class


@pytest.mark.parametrize(
    ("shape", "billions"), [("llama-3.1-8b", 8.03), ("qwen2-7b", 7.62), ("gemma-2-9b", 9.24)]
)
def test_parameters_count_the_published_size(shape: str, billions: float) -> None:
    """sum(p.numel() for p in model.parameters()) on the meta device = the model card's count
    (Gemma-2's tied LM head once), and every packed weight is a registered Parameter."""
    cfg = EngineConfig.from_dict(mrm.SHAPES[shape])
    with torch.device("meta"):
        model = model_class(cfg)(cfg)
    n = sum(p.numel() for p in model.parameters())
    assert round(n / 1e9, 2) == billions
    names = dict(model.named_parameters())
    assert (
        "model.layers.0.self_attn.qkv_proj.weight" in names
        and "model.layers.0.mlp.gate_up_proj.weight" in names
    )
    assert not any(k.endswith(("q_proj.weight", "gate_proj.weight")) for k in names)
    # the HF checkpoint layout (q/k/v, gate/up separate) holds exactly the same numbers
    assert sum(math.prod(s) for s in checkpoint_shapes(cfg).values()) == n
    assert set(model.state_dict()) >= set(names)


def test_loader_writes_packed_shards_in_place(tmp_path: Path) -> None:
    """The packed weight is [q; k; v] (and [gate; up]) bit for bit, and it is the only copy."""
    pytest.importorskip("transformers")
    from safetensors.torch import load_file

    from tests.helpers.tiny import make_tiny_model_dir

    d = make_tiny_model_dir(tmp_path / "m", "qwen2", num_kv_heads=2, vocab_size=500)
    state = load_file(str(d / "model.safetensors"))
    model = load_model(d)
    attn, mlp = model.model.layers[1].self_attn, model.model.layers[1].mlp
    p = "model.layers.1."
    want_qkv = torch.cat([state[f"{p}self_attn.{x}_proj.weight"] for x in "qkv"])
    want_bias = torch.cat([state[f"{p}self_attn.{x}_proj.bias"] for x in "qkv"])
    want_gate_up = torch.cat([state[f"{p}mlp.{x}_proj.weight"] for x in ("gate", "up")])
    assert torch.equal(attn.qkv_proj.weight, want_qkv) and torch.equal(attn.qkv_proj.bias, want_bias)
    assert torch.equal(mlp.gate_up_proj.weight, want_gate_up)
    assert not any(hasattr(m, "q_proj") or hasattr(m, "gate_proj") for m in model.modules())
    ptrs = [q.data_ptr() for q in model.parameters()]
    assert len(ptrs) == len(set(ptrs))  # one storage per parameter, nothing duplicated


def test_packed_checkpoint_names_load_too(tmp_path: Path) -> None:
    """A checkpoint saved from the engine's own names (qkv_proj / gate_up_proj whole) loads to
    the same weights as the HF layout."""
    pytest.importorskip("transformers")
    import json

    from safetensors.torch import save_file

    from tests.helpers.tiny import make_tiny_model_dir

    d = make_tiny_model_dir(tmp_path / "hf", "llama", num_kv_heads=2, vocab_size=500)
    a = load_model(d)
    packed = tmp_path / "packed"
    packed.mkdir()
    (packed / "config.json").write_text((d / "config.json").read_text())
    save_file({k: v.contiguous() for k, v in a.state_dict().items()}, str(packed / "model.safetensors"))
    b = load_model(packed)
    assert json.loads((packed / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)
