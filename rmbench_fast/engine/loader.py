"""Weights: safetensors (single file or sharded) streamed tensor by tensor into a meta-built model.

The model is built on the meta device (no memory); every parameter is then allocated once,
uninitialised, on the target device in the target dtype (`materialize`), and each checkpoint
tensor is read and copied straight into its place (`copy_` converts device and dtype). The
packed projections (`qkv_proj` = [q; k; v], `gate_up_proj` = [gate; up]) receive each
checkpoint tensor in their row slice (`PackedLinear.load_shard`, nano-vllm's packed weight
loader), so nothing is concatenated or copied after loading, and at most one checkpoint tensor
is held on the host at a time. Pickle weights (*.bin / *.pt) are refused unless
`allow_pickle=True` (then loaded with `torch.load(weights_only=True)`). Nothing from the model
directory is ever imported or executed.

One loading path: `load_model(dir)` streams the directory's tensors into
`load_model_from_tensors(cfg, pairs)`, which also takes in-memory (HF name, tensor) pairs.
Under tensor parallelism (`tp=`) the meta model is first cut to this rank's shard
(`tensor_parallel.parallelize`); each module that places tensors itself (`linear.ShardLoader`: packed
rows, row-parallel columns, vocabulary rows) says which part of the checkpoint tensor it holds,
and only that part is read (`get_slice`: a rank never reads, or holds, the whole checkpoint).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from rmbench_fast.engine.config import EngineConfig
from rmbench_fast.engine.layers.linear import PackedLinear, ShardLoader
from rmbench_fast.engine.layers.rope import rope_inv_freq
from rmbench_fast.engine.models.gemma2 import Gemma2ForScoring
from rmbench_fast.engine.models.llama import LlamaForScoring
from rmbench_fast.engine.models.qwen3 import Qwen3ForScoring
from rmbench_fast.engine.models.reward_heads import RewardHead
from rmbench_fast.engine.models.tensor_parallel import parallelize
from rmbench_fast.errors import ModelError
from rmbench_fast.utils.distributed import TPInfo
from rmbench_fast.utils.dtypes import model_dtype

# checkpoint module name -> (packed module name, shard), for q/k/v and gate/up
PACKED_SHARDS: dict[str, tuple[str, str]] = {
    "self_attn.q_proj": ("self_attn.qkv_proj", "q"),
    "self_attn.k_proj": ("self_attn.qkv_proj", "k"),
    "self_attn.v_proj": ("self_attn.qkv_proj", "v"),
    "mlp.gate_proj": ("mlp.gate_up_proj", "gate"),
    "mlp.up_proj": ("mlp.gate_up_proj", "up"),
}
WHOLE = ""  # the shard id of a tensor that fills its whole parameter


class TensorSlice(Protocol):
    """A lazily read checkpoint tensor (safetensors' `safe_open(...).get_slice(name)`)."""

    def get_shape(self) -> list[int]: ...

    def __getitem__(self, index: Any) -> torch.Tensor: ...


def resolve_dtype(dtype: str | torch.dtype | None, cfg: EngineConfig) -> torch.dtype:
    """'auto'/None -> the config's torch_dtype (fp32 if absent); names or torch dtypes pass through."""
    return model_dtype(dtype, cfg.torch_dtype)


def _checkpoint_tensors(
    model_dir: Path, allow_pickle: bool, *, lazy: bool = False
) -> Iterator[tuple[str, torch.Tensor | TensorSlice]]:
    """(name, tensor) pairs from the directory's weights, one tensor in memory at a time.

    lazy: safetensors tensors come as `get_slice` handles (nothing read until indexed), so a
    tensor-parallel rank reads only its part; pickle weights are memory-mapped either way."""
    from safetensors import safe_open  # start-up cost: safetensors

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
                    yield key, (f.get_slice(key) if lazy else f.get_tensor(key))
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


def _canonical(name: str, cfg: EngineConfig, head: RewardHead | None = None) -> str | None:
    """Checkpoint name -> the name in our model's naming (before packing), or None to skip it.

    A custom head's tensors keep their names (score.*, v_head.*), or move under the head's
    attribute when the checkpoint keeps them at the top level (ArmoRM / QRM: regression_layer,
    gating, reward_transform_matrix -> gating_head.*).
    """
    if name.endswith("rotary_emb.inv_freq"):
        return None  # recomputed from the config
    if name == "lm_head.weight" and (cfg.head != "causal" or cfg.tie_word_embeddings):
        return None  # tied: HF also uses the embedding
    if head is not None and head.owns(name):
        return name if head.checkpoint_prefix else f"{head.attr}.{name}"
    if not name.startswith(("model.", "lm_head.", "score.")):
        name = "model." + name  # bare base-model checkpoints
    return name


def parameter_target(name: str) -> tuple[str, str]:
    """A checkpoint tensor's (parameter name, shard): q/k/v and gate/up go to a row slice of
    their packed parameter; anything else (including an already packed name) fills its own."""
    module, _, leaf = name.rpartition(".")
    for src, (dst, shard) in PACKED_SHARDS.items():
        if module.endswith("." + src):
            return f"{module[: -len(src)]}{dst}.{leaf}", shard
    return name, WHOLE


def materialize(model: nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Replace every meta Parameter and persistent buffer by an uninitialised tensor on `device`
    in `dtype` (floating ones; others keep their dtype), keeping tied parameters tied (one
    allocation each). Non-persistent buffers (inv_freq) are set by the caller."""

    def empty(t: torch.Tensor) -> torch.Tensor:
        return torch.empty(t.shape, dtype=dtype if t.dtype.is_floating_point else t.dtype, device=device)

    new: dict[int, nn.Parameter] = {}
    for module in model.modules():
        for key, param in list(module._parameters.items()):
            if param is None:
                continue
            if id(param) not in new:
                new[id(param)] = nn.Parameter(empty(param), requires_grad=False)
            module._parameters[key] = new[id(param)]
        for key, buf in list(module._buffers.items()):
            if buf is not None and key not in module._non_persistent_buffers_set:
                module._buffers[key] = empty(buf)


def _shard_shape(model: nn.Module, pname: str, shard: str, param: torch.Tensor) -> tuple[int, ...]:
    """The shape a checkpoint tensor for (parameter, shard) must have (the full checkpoint
    tensor's, also under tensor parallelism)."""
    owner_name, _, leaf = pname.rpartition(".")
    owner = model.get_submodule(owner_name)
    if isinstance(owner, ShardLoader):
        return owner.shard_shape(leaf, shard)
    assert shard == WHOLE
    return tuple(param.shape)


def _shard_slice(model: nn.Module, pname: str, shard: str) -> tuple[int, int, int] | None:
    """The (dim, start, length) part of the checkpoint tensor this rank reads (None: all)."""
    owner_name, _, leaf = pname.rpartition(".")
    owner = model.get_submodule(owner_name)
    return owner.shard_slice(leaf, shard) if isinstance(owner, ShardLoader) else None


def _write(model: nn.Module, pname: str, shard: str, tensor: torch.Tensor) -> None:
    """Copy a checkpoint tensor (or this rank's slice of it) into its parameter, packed row
    slice or tensor-parallel shard."""
    owner_name, _, leaf = pname.rpartition(".")
    owner = model.get_submodule(owner_name)
    if isinstance(owner, ShardLoader):
        owner.load_shard(leaf, tensor, shard)
        return
    target = owner._parameters[leaf] if leaf in owner._parameters else owner._buffers[leaf]
    with torch.no_grad():
        target.copy_(tensor)  # type: ignore[union-attr]


def _targets(model: nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint fills: unique parameters (tied ones once) and persistent buffers."""
    out: dict[str, torch.Tensor] = dict(model.named_parameters())
    for module_name, module in model.named_modules():
        for key, buf in module._buffers.items():
            if buf is not None and key not in module._non_persistent_buffers_set:
                out[f"{module_name}.{key}" if module_name else key] = buf
    return out


def _required_shards(model: nn.Module, targets: dict[str, torch.Tensor]) -> dict[str, set[str]]:
    """Target name -> the shards the checkpoint must provide for it (a BatchNorm's
    num_batches_tracked, unused at inference, may be absent)."""
    need: dict[str, set[str]] = {}
    for name in targets:
        owner_name, _, leaf = name.rpartition(".")
        owner = model.get_submodule(owner_name)
        if leaf == "num_batches_tracked":
            continue
        need[name] = set(owner.shards) if isinstance(owner, PackedLinear) else {WHOLE}
    return need


def load_model(
    model_dir: str | Path,
    *,
    dtype: str | torch.dtype | None = "auto",
    device: str | torch.device = "cpu",
    allow_pickle: bool = False,
    cfg: EngineConfig | None = None,
    tp: TPInfo | None = None,
) -> LlamaForScoring:
    """Build the model on meta, allocate it on `device`, and stream the checkpoint into place;
    returns it in eval mode, without gradients. Every parameter must be written exactly once
    (each packed shard once); unknown, misshapen or missing tensors raise ModelError.

    `tp` (tensor parallelism): this rank's shard of the model (`tensor_parallel.parallelize`); each
    sharded tensor is read as its slice only (`safe_open(...).get_slice`), so a rank never
    holds the whole checkpoint. None: the single-process model, read tensor by tensor.
    """
    model_dir = Path(model_dir)
    cfg = cfg or EngineConfig.from_model_dir(model_dir)
    return load_model_from_tensors(
        cfg,
        _checkpoint_tensors(model_dir, allow_pickle, lazy=tp is not None),
        dtype=dtype,
        device=device,
        tp=tp,
        source=str(model_dir),
    )


def load_model_from_tensors(
    cfg: EngineConfig,
    tensors: Iterable[tuple[str, torch.Tensor | TensorSlice]],
    *,
    dtype: str | torch.dtype | None = "auto",
    device: str | torch.device = "cpu",
    tp: TPInfo | None = None,
    source: str | None = None,
) -> LlamaForScoring:
    """`load_model` from (HF checkpoint name, tensor) pairs instead of a directory, e.g.
    `hf_model.state_dict().items()`: the one loading path (load_model streams its files here).

    Tensors may be torch tensors or lazy slices (`get_shape()` + indexing, as safetensors'
    `get_slice` returns); under `tp` only this rank's part of each is read. `source` names the
    origin in error messages.
    """
    tdtype = resolve_dtype(dtype, cfg)
    device = torch.device(device)
    with torch.device("meta"):
        model = model_class(cfg)(cfg)
        if tp is not None:
            parallelize(model, cfg, tp)
    materialize(model, device, tdtype)
    params = _targets(model)
    need = _required_shards(model, params)
    loaded: dict[str, set[str]] = {name: set() for name in params}
    for raw_name, tensor in tensors:
        name = _canonical(raw_name, cfg, model.reward_head)
        if name is None:
            continue
        pname, shard = parameter_target(name)
        if pname not in params or (shard != WHOLE and shard not in need[pname]):
            raise ModelError(
                f"unexpected weight {raw_name!r} for {cfg.architecture}; use --backend hf", file=source
            )
        if tp is not None and shard == WHOLE and need[pname] != {WHOLE}:
            raise ModelError(
                f"weight {raw_name!r} is stored packed, which tensor parallelism cannot split; "
                "run it with --tp 1",
                file=source,
            )
        want = _shard_shape(model, pname, shard, params[pname])
        shape = _shape_of(tensor)
        if shape != want:
            raise ModelError(f"weight {raw_name!r} has shape {shape}, config says {want}", file=source)
        shards = need.get(pname, {WHOLE}) if shard == WHOLE else {shard}  # a packed tensor may come whole
        if shards & loaded[pname]:
            raise ModelError(f"weight {raw_name!r} appears twice in the checkpoint", file=source)
        _write(model, pname, shard, _read(tensor, _shard_slice(model, pname, shard)))
        loaded[pname] |= shards
    missing = sorted(n for n in need if loaded[n] != need[n])
    if missing:
        raise ModelError(f"weights missing from the checkpoint: {', '.join(missing[:3])}", file=source)
    model.inv_freq = rope_inv_freq(cfg.rope, cfg.head_dim).to(device)
    return model.eval().requires_grad_(False)


def _shape_of(tensor: torch.Tensor | TensorSlice) -> tuple[int, ...]:
    return tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else tuple(tensor.get_shape())


def _read(tensor: torch.Tensor | TensorSlice, part: tuple[int, int, int] | None) -> torch.Tensor:
    """The tensor, or its (dim, start, length) part; a lazy slice reads only that part."""
    if isinstance(tensor, torch.Tensor):
        return tensor if part is None else tensor.narrow(*part)
    if part is None:
        return tensor[:]
    dim, start, length = part
    index = (slice(None),) * dim + (slice(start, start + length),)
    return tensor[index]


def model_class(cfg: EngineConfig) -> type[LlamaForScoring]:
    """The engine's model class for a config's family (one module per family)."""
    return {"gemma2": Gemma2ForScoring, "qwen3": Qwen3ForScoring}.get(cfg.family, LlamaForScoring)


def checkpoint_shapes(cfg: EngineConfig) -> dict[str, tuple[int, ...]]:
    """The HF checkpoint's tensor names -> shapes for a config (q/k/v and gate/up unpacked, a
    tied LM head omitted), from the engine's model built on the meta device."""
    with torch.device("meta"):
        model = model_class(cfg)(cfg)
    out: dict[str, tuple[int, ...]] = {}
    head = model.reward_head
    for name, param in _targets(model).items():
        module, _, leaf = name.rpartition(".")
        owner = model.get_submodule(module)
        if not isinstance(owner, PackedLinear):
            if head is not None and not head.checkpoint_prefix and name.startswith(head.attr + "."):
                name = name[len(head.attr) + 1 :]  # top-level in the checkpoint
            out[name] = tuple(param.shape)
            continue
        for src, (dst, shard) in PACKED_SHARDS.items():
            if module.endswith(dst):
                out[f"{module[: -len(dst)]}{src}.{leaf}"] = owner.shard_shape(leaf, shard)
    return out
