"""Weights: safetensors (single file or sharded) streamed tensor by tensor onto a meta-built model.

The model is built on the meta device (no memory), then each checkpoint tensor is read,
converted to the target device and dtype, and assigned to its parameter, so at most one
tensor is held twice at any moment. Pickle weights (*.bin / *.pt) are refused unless
`allow_pickle=True` (then loaded with `torch.load(weights_only=True)`). Nothing from the
model directory is ever imported or executed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from rmbench_fast.dtypes import model_dtype
from rmbench_fast.engine.config import EngineConfig
from rmbench_fast.engine.gemma2 import Gemma2ForScoring
from rmbench_fast.engine.layers import rope_inv_freq
from rmbench_fast.engine.llama import LlamaForScoring
from rmbench_fast.errors import ModelError


def resolve_dtype(dtype: str | torch.dtype | None, cfg: EngineConfig) -> torch.dtype:
    """'auto'/None -> the config's torch_dtype (fp32 if absent); names or torch dtypes pass through."""
    return model_dtype(dtype, cfg.torch_dtype)


def _checkpoint_tensors(model_dir: Path, allow_pickle: bool) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs from the directory's weights, one tensor in memory at a time."""
    from safetensors import safe_open

    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError) as exc:
            raise ModelError(f"bad safetensors index ({exc})", file=str(index)) from None
        files = sorted(set(weight_map.values()))
    elif (model_dir / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        files = sorted(p.name for p in model_dir.glob("*.safetensors"))
    if files:
        for name in files:
            path = model_dir / name
            if not path.is_file():
                raise ModelError("weight shard listed in the index is missing", file=str(path))
            with safe_open(str(path), framework="pt", device="cpu") as f:
                for key in f.keys():
                    yield key, f.get_tensor(key)
        return
    pickles = sorted(p for p in model_dir.iterdir() if p.suffix in (".bin", ".pt", ".pth"))
    if not pickles:
        raise ModelError("no *.safetensors weights found", file=str(model_dir))
    if not allow_pickle:
        raise ModelError(
            f"only pickle weights ({pickles[0].name}); convert to safetensors or pass allow_pickle",
            file=str(model_dir),
        )
    for path in pickles:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        yield from state.items()
        del state


def _canonical(name: str, cfg: EngineConfig) -> str | None:
    """Checkpoint name -> our parameter name, or None to skip it."""
    if name.endswith("rotary_emb.inv_freq"):
        return None  # recomputed from the config
    if name == "lm_head.weight" and (cfg.head != "causal" or cfg.tie_word_embeddings):
        return None  # tied: HF also uses the embedding
    if not name.startswith(("model.", "lm_head.", "score.")):
        name = "model." + name  # bare base-model checkpoints
    return name


def load_model(
    model_dir: str | Path,
    *,
    dtype: str | torch.dtype | None = "auto",
    device: str | torch.device = "cpu",
    allow_pickle: bool = False,
    cfg: EngineConfig | None = None,
    fuse: bool = True,
) -> LlamaForScoring:
    """Build the model on meta and stream the checkpoint into it; returns it in eval mode.

    fuse: concatenate q/k/v and gate/up weights per layer (one extra weight copy is made
    layer by layer, then the separate ones are freed).
    """
    model_dir = Path(model_dir)
    cfg = cfg or EngineConfig.from_model_dir(model_dir)
    tdtype = resolve_dtype(dtype, cfg)
    device = torch.device(device)
    with torch.device("meta"):
        model = model_class(cfg)(cfg)
    params = dict(model.named_parameters())
    loaded: set[str] = set()
    for raw_name, tensor in _checkpoint_tensors(model_dir, allow_pickle):
        name = _canonical(raw_name, cfg)
        if name is None:
            continue
        if name not in params:
            raise ModelError(
                f"unexpected weight {raw_name!r} for {cfg.architecture}; use --backend hf",
                file=str(model_dir),
            )
        if tuple(tensor.shape) != tuple(params[name].shape):
            raise ModelError(
                f"weight {raw_name!r} has shape {tuple(tensor.shape)}, config says {tuple(params[name].shape)}",
                file=str(model_dir),
            )
        _assign(model, name, tensor.to(device=device, dtype=tdtype))
        loaded.add(name)
    if cfg.head == "causal" and cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
        loaded.add("lm_head.weight")
    missing = sorted(set(params) - loaded)
    if missing:
        raise ModelError(
            f"weights missing from the checkpoint: {', '.join(missing[:3])}", file=str(model_dir)
        )
    model.inv_freq = rope_inv_freq(cfg.rope, cfg.head_dim).to(device)
    if fuse:
        model.fuse()
    return model.eval().requires_grad_(False)


def model_class(cfg: EngineConfig) -> type[LlamaForScoring]:
    """The engine's model class for a config's family (one module per family)."""
    return Gemma2ForScoring if cfg.family == "gemma2" else LlamaForScoring


def _assign(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    owner_name, _, leaf = name.rpartition(".")
    owner = model.get_submodule(owner_name)
    owner._parameters[leaf] = nn.Parameter(tensor, requires_grad=False)
