"""Step 2, the models: hub ids resolved to snapshots, the model directories inspected, their kind
checked against the reward options, and where they run (the device, torchrun's world, this
rank's data shard)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from rmbench_fast.errors import UsageError
from rmbench_fast.inputs import hub
from rmbench_fast.inputs.demo import ensure_smollm2
from rmbench_fast.inputs.modelio import inspect_model_dir
from rmbench_fast.settings import RunConfig
from rmbench_fast.utils import distributed
from rmbench_fast.utils.distributed import local_device
from rmbench_fast.utils.dtypes import run_dtype


def resolve_hub_models(
    cfg: RunConfig, log: Callable[[str], None] = print
) -> tuple[RunConfig, dict[str, hub.HubSnapshot]]:
    """`--model` / `--ref-model` given as `ORG/NAME[@REV]` -> the config with their snapshot
    directories (a local directory of that name wins), and the snapshots by option name. A
    branch or tag resolves once per process, so a second call (a sweep's next checkpoint, its
    checks before scoring) gets the same commit."""
    sources: dict[str, hub.HubSnapshot] = {}
    paths: dict[str, str] = {}
    for name in ("model", "ref_model"):
        value = getattr(cfg, name)
        if value is None:
            continue
        path, snap = hub.resolve_model(
            value,
            allow_pickle=cfg.allow_pickle,
            trust_remote_code=cfg.trust_remote_code,
            progress=cfg.progress,
            log=log,
        )
        if snap is not None:
            sources[name], paths[name] = snap, str(path)
    return (replace(cfg, **paths) if paths else cfg), sources


def resolve_device(device: str) -> str:
    """The run's device; under torchrun a CUDA device is this rank's own GPU (cuda:LOCAL_RANK)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device} asked for, but torch sees no CUDA device (use --device cpu)")
    return str(local_device(device))


def join_world(cfg: RunConfig) -> Any:
    """torchrun's world (DP x TP ranks), or one process; --tp > 1 needs torchrun."""
    if not distributed.launched():
        if cfg.tp != 1:
            raise UsageError(
                f"--tp {cfg.tp} needs torchrun: torchrun --nproc-per-node {cfg.tp} -m rmbench_fast run ..."
            )
        return distributed.world()
    device = "cuda" if (cfg.device in ("auto", "cuda") or cfg.device.startswith("cuda")) else cfg.device

    if device == "cuda" and not torch.cuda.is_available():
        device = "cpu"
    return distributed.init(tp_size=cfg.tp, device=device)


def data_shard() -> Any:
    """This rank's data-parallel replica for the engine's scheduler, or None in one replica."""
    from rmbench_fast.engine.scheduler import DataShard  # start-up cost: the engine

    w = distributed.world()
    return DataShard(w.dp_rank, w.dp_size, w.dp_group) if w.dp_size > 1 else None


def causal_logit_token(cfg: RunConfig) -> int | None:
    """The token id of `--reward causal-logit:<id>`, or None for the kind's usual reward."""
    if cfg.reward is None:
        return None
    name, _, tid = cfg.reward.partition(":")
    if name != "causal-logit" or not tid.isdigit():
        raise UsageError(f"unknown --reward {cfg.reward!r}; use causal-logit:<token_id>")
    return int(tid)


def check_kind(cfg: RunConfig, info: Any) -> tuple[str, str | None]:
    """The model kind and the reference-free mode, with the option conflicts rejected.

    "causal-logit": a causal LM scored by one logit (`--reward causal-logit:<id>`)."""
    if causal_logit_token(cfg) is not None:
        if info.kind != "dpo":
            raise UsageError(f"--reward causal-logit needs a causal LM, but {info.path} is a {info.kind}")
        if cfg.ref_model or cfg.ref_free:
            raise UsageError("--reward causal-logit takes no --ref-model or --ref-free")
        return "causal-logit", None
    kind = info.kind if cfg.kind == "auto" else cfg.kind
    if kind == "classifier":
        if cfg.ref_model:
            raise UsageError(
                f"--ref-model was given, but {info.path} is a sequence classifier (kind classifier); "
                "a reference model applies to DPO policies only"
            )
        if cfg.ref_free:
            raise UsageError(
                "--ref-free applies to DPO policies only, but the model is a sequence classifier"
            )
        return kind, None
    return kind, (None if cfg.ref_model else (cfg.ref_free or "avg"))


def kind_hint(cfg: RunConfig) -> str | None:
    """The kind the options imply, for a config.json without `architectures`: --kind, else DPO
    when --ref-model, --ref-free or --reward causal-logit is given, else None (ask for --kind)."""
    if cfg.kind != "auto":
        return cfg.kind
    if cfg.ref_model or cfg.ref_free or causal_logit_token(cfg) is not None:
        return "dpo"
    return None


@dataclass
class ModelChoice:
    model_dir: Path
    demo: bool
    info: Any  # modelio.ModelInfo
    ref_info: Any | None
    kind: str
    ref_free: str | None
    device: str
    dtype: str


def choose_models(cfg: RunConfig, log: Callable[[str], None]) -> ModelChoice:
    """Step 2: the model directories, their kind, and the device and dtype."""
    demo = cfg.model is None
    if demo:
        log("no --model given: using the embedded demo policy SmolLM2-135M-Instruct (reference-free DPO)")
        model_dir = ensure_smollm2()
    else:
        model_dir = Path(cfg.model)  # type: ignore[arg-type]
    trust, pickle_ok = cfg.trust_remote_code, cfg.allow_pickle
    hint = kind_hint(cfg)
    info = inspect_model_dir(model_dir, trust_remote_code=trust, allow_pickle=pickle_ok, kind_hint=hint)
    kind, ref_free = check_kind(cfg, info)
    ref_info = None
    if cfg.ref_model:
        ref_dir = Path(cfg.ref_model)
        ref_info = inspect_model_dir(
            ref_dir, trust_remote_code=trust, allow_pickle=pickle_ok, kind_hint="dpo"
        )
    device = resolve_device(cfg.device)
    return ModelChoice(model_dir, demo, info, ref_info, kind, ref_free, device, run_dtype(cfg.dtype, device))
