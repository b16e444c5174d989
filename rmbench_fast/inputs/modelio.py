"""Inspect a Hugging Face model directory before loading anything heavy.

`inspect_model_dir` reads `config.json` and the file listing only (no weights, no torch), so
every problem with the directory is reported as one `ModelError` line that names it:
missing directory, missing or unparsable config, pickle-only weights without --allow-pickle,
remote code without --trust-remote-code, no weights at all, a classifier head with
`num_labels != 1`.

The model kind is read from `architectures` (SPEC §4/§5):
    *ForSequenceClassification          -> "classifier" (a sequence-classifier reward model)
    *ForCausalLM / *LMHeadModel          -> "dpo" (a policy scored as an implicit reward model)
    a recognised custom reward head      -> "classifier" (see `detect_native_head`)

Custom reward heads (INF-ORM, GRM, QRM, ArmoRM) are published with model code that the official
path runs through `trust_remote_code`. `detect_native_head` recognises them from config.json
(`architectures`, `auto_map` class names, head-specific keys) and from the checkpoint's tensor
names (safetensors headers or the shard index, read as JSON), never by importing anything from
the model directory, so the native engine can run them without executing the repository's code.
"""

from __future__ import annotations

import importlib.util
import json
import struct
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rmbench_fast.errors import ModelError

ModelKind = Literal["classifier", "dpo"]
WeightFormat = Literal["safetensors", "pickle"]

# Files that hold weights, by format. Sharded checkpoints come with an index json.
SAFETENSORS_GLOBS = ("*.safetensors",)
PICKLE_GLOBS = ("pytorch_model*.bin", "*.pt", "*.pth", "*.ckpt")
_CLASSIFIER_SUFFIXES = ("ForSequenceClassification",)
_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "vocab.txt")

NativeHeadName = Literal["inform", "grm", "qrm", "armorm"]
Pooling = Literal["last_non_pad", "first_pad", "last_token"]
# The base decoders a custom head may sit on (config.json `model_type`), i.e. the native families.
HEAD_BASE_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma2")
# Model classes (from `architectures` or an `auto_map` entry) -> the head they carry.
_HEAD_CLASSES: dict[str, NativeHeadName] = {
    "INFORMForSequenceClassification": "inform",  # infly/INF-ORM-Llama3.1-70B
    "GRewardModel": "grm",  # Ray2333/GRM-*
    "LlamaForRewardModelWithGating3": "qrm",  # nicolinho/QRM-Llama3-8B
    "LlamaForRewardModelWithGating31": "qrm",  # nicolinho/QRM-Llama3.1-8B
    "LlamaForRewardModelWithGating": "armorm",  # RLHFlow/ArmoRM-Llama3-8B-v0.1 (QRM if num_quantiles)
}
# Tensor names each head's checkpoint must hold (all of them), besides the base model's.
_HEAD_TENSORS: dict[NativeHeadName, tuple[str, ...]] = {
    "inform": ("score.0.weight", "score.0.bias", "score.2.weight", "score.2.bias"),
    "grm": ("v_head.summary.",),  # prefix: .weight/.bias (linear) or .0.weight ... (mlp)
    "qrm": ("regression_layer.weight", "gating.layers.", "gating.logit_scale"),
    "armorm": ("regression_layer.weight", "gating.layers.", "gating.logit_scale"),
}


@dataclass(frozen=True)
class NativeHead:
    """A custom reward head the native engine implements, and how its official pipeline scores.

    name: "inform" | "grm" | "qrm" | "armorm".
    reason: what recognised it (for the run's metadata).
    pooling: the token whose hidden state the head reads, as the head's own forward picks it:
        "last_non_pad"  the rightmost token != pad_token_id (transformers' current rule);
        "first_pad"     (first position equal to pad_token_id) - 1, modulo the length
                        (the transformers 4.43.4 rule, written into INF-ORM's and QRM's forward);
        "last_token"    the last real token, len(ids) - 1 (GRM: attention_mask.sum - 1).
    mask_double_bos: whether the official pipeline masks a duplicated leading BOS (reward-bench's
        RewardBenchPipeline does; GRMPipeline and ArmoRMPipeline do not).
    gating_pattern: token ids whose last occurrence marks the gating position (QRM / ArmoRM:
        `<|eot_id|><|start_header_id|>assistant<|end_header_id|>\\n\\n` in Llama-3 ids), else None.
    """

    name: NativeHeadName
    reason: str
    pooling: Pooling
    mask_double_bos: bool
    gating_pattern: tuple[int, ...] | None = None


_LLAMA3_ASSISTANT_HEADER = (128009, 128006, 78191, 128007, 271)
_HEAD_PIPELINES: dict[NativeHeadName, tuple[Pooling, bool, tuple[int, ...] | None]] = {
    "inform": ("first_pad", True, None),  # RewardBenchPipeline + INFORMForSequenceClassification
    "grm": ("last_token", False, None),  # GRMPipeline + GRewardModel
    "qrm": ("first_pad", True, _LLAMA3_ASSISTANT_HEADER),  # RewardBenchPipeline + QRM classes
    "armorm": ("first_pad", False, _LLAMA3_ASSISTANT_HEADER),  # ArmoRMPipeline + remote code
}


def _class_names(cfg: dict[str, Any]) -> list[str]:
    """Class names named by `architectures` and by `auto_map` values ("module.Class",
    "repo--module.Class", or a list of them), in that order."""
    names: list[str] = []
    archs = cfg.get("architectures")
    if isinstance(archs, list):
        names += [str(a) for a in archs]
    elif isinstance(archs, str):
        names.append(archs)
    auto_map = cfg.get("auto_map")
    if isinstance(auto_map, dict):
        for value in auto_map.values():
            for ref in value if isinstance(value, list) else [value]:
                if isinstance(ref, str) and ref:
                    names.append(ref.rsplit(".", 1)[-1])
    return names


def _has_tensors(names: Collection[str], required: tuple[str, ...]) -> bool:
    """Every entry of `required` is a tensor name in `names` (an entry ending in '.' is a prefix)."""
    return all(any(n.startswith(r) for n in names) if r.endswith(".") else r in names for r in required)


def detect_native_head(cfg: dict[str, Any], tensor_names: Collection[str] | None = None) -> NativeHead | None:
    """The custom reward head a config.json (and optionally its checkpoint's tensor names) holds.

    Recognised, in order: a known model class in `architectures` / `auto_map`; GRM's `vhead_*`
    keys; the head's tensor names (`v_head.summary.*`, `score.0/score.2`, `regression_layer` +
    `gating.*`). The base decoder (`model_type`) must be a native family. When tensor names are
    given they must hold the head's layout, else the head is not recognised (None). Nothing is
    imported or executed from the model directory.
    """
    if cfg.get("model_type") not in HEAD_BASE_MODEL_TYPES:
        return None
    found: tuple[NativeHeadName, str] | None = None
    for name in _class_names(cfg):
        if name in _HEAD_CLASSES:
            found = (_HEAD_CLASSES[name], f"model class {name}")
            break
    if found is None and any(str(k).startswith("vhead_") for k in cfg):
        found = ("grm", "config.json vhead_* keys")
    if found is None and tensor_names is not None:
        for head in ("grm", "inform", "armorm"):
            if _has_tensors(tensor_names, _HEAD_TENSORS[head]):  # type: ignore[arg-type]
                found = (head, "checkpoint tensor names")  # type: ignore[assignment]
                break
    if found is None:
        return None
    head, reason = found
    if head in ("qrm", "armorm"):
        head = "qrm" if cfg.get("num_quantiles") else "armorm"
    if tensor_names is not None and not _has_tensors(tensor_names, _HEAD_TENSORS[head]):
        return None
    pooling, mask_bos, pattern = _HEAD_PIPELINES[head]
    return NativeHead(
        name=head, reason=reason, pooling=pooling, mask_double_bos=mask_bos, gating_pattern=pattern
    )


def _safetensors_header_names(path: Path) -> list[str] | None:
    """Tensor names from a safetensors file's JSON header (8-byte little-endian length + JSON);
    None when the file is not readable as safetensors (the loader reports that later)."""
    try:
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) != 8:
                return None
            (n,) = struct.unpack("<Q", head)
            if n > 100_000_000:
                return None
            header = json.loads(f.read(n))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return [str(k) for k in header if k != "__metadata__"] if isinstance(header, dict) else None


def checkpoint_tensor_names(path: str | Path) -> list[str] | None:
    """The tensor names of a directory's safetensors checkpoint, read from its shard index or
    the files' JSON headers (no weights read, no torch); None when there is no readable
    safetensors checkpoint."""
    p = Path(path)
    index = p / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            return sorted(str(k) for k in weight_map)
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
            return None
    names: set[str] = set()
    files = sorted(f for f in p.glob("*.safetensors") if f.is_file())
    for f in files:
        got = _safetensors_header_names(f)
        if got is None:
            return None
        names.update(got)
    return sorted(names) if files else None


@dataclass
class ModelInfo:
    """What a model directory holds, as far as config.json and the file names tell."""

    path: Path
    config: dict[str, Any]
    architectures: list[str]
    kind: ModelKind
    model_type: str | None
    num_labels: int | None  # classifier heads only (None for a causal LM)
    weight_format: WeightFormat
    weight_files: list[str]
    has_chat_template: bool
    needs_remote_code: bool
    remote_code_reason: str | None
    dtype: str | None  # config torch_dtype / dtype, e.g. "bfloat16"
    pad_token_id: int | None
    bos_token_id: int | None
    eos_token_id: int | list[int] | None
    vocab_size: int | None
    is_encoder_decoder: bool
    tokenizer_files: list[str] = field(default_factory=list)
    native_head: NativeHead | None = None  # a custom reward head the native engine runs

    def summary(self) -> dict[str, Any]:
        """A JSON-friendly dict for the run metadata."""
        return {
            "path": str(self.path),
            "architectures": self.architectures,
            "kind": self.kind,
            "model_type": self.model_type,
            "num_labels": self.num_labels,
            "weight_format": self.weight_format,
            "has_chat_template": self.has_chat_template,
            "needs_remote_code": self.needs_remote_code,
            "dtype": self.dtype,
            "pad_token_id": self.pad_token_id,
            "native_head": None if self.native_head is None else self.native_head.name,
        }


def _load_config(path: Path) -> dict[str, Any]:
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise ModelError(f"model directory {path} has no config.json")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{cfg_path}: cannot parse config.json ({exc})") from None
    if not isinstance(cfg, dict):
        raise ModelError(f"{cfg_path}: config.json is not a JSON object")
    return cfg


def _glob_all(path: Path, patterns: tuple[str, ...]) -> list[str]:
    return sorted({p.name for pat in patterns for p in path.glob(pat) if p.is_file()})


def pickle_only_message(where: str, files: list[str]) -> str:
    """The one refusal of a checkpoint with only pickle weights (a local directory or a hub repo)."""
    return f"{where} has only pickle weights ({', '.join(files)}); pass --allow-pickle to load them (this runs pickle)"


def _weight_files(path: Path, allow_pickle: bool) -> tuple[WeightFormat, list[str]]:
    """Safetensors win when both are present; pickle-only needs an explicit opt-in (it runs pickle)."""
    st = _glob_all(path, SAFETENSORS_GLOBS)
    if st:
        return "safetensors", st
    pk = _glob_all(path, PICKLE_GLOBS)
    if pk:
        if not allow_pickle:
            raise ModelError(pickle_only_message(f"model directory {path}", pk))
        return "pickle", pk
    raise ModelError(f"model directory {path} has no weights (no *.safetensors, pytorch_model*.bin or *.pt)")


def _detect_kind(path: Path, archs: list[str], model_type: Any, hint: ModelKind | None) -> ModelKind:
    """The kind from `architectures`; a config without them (e.g. one transformers saved after
    loading a GGUF) takes `hint`, the kind the options imply, as the official scripts' Auto
    classes would load it by its model_type."""
    if any(a.endswith(_CLASSIFIER_SUFFIXES) for a in archs):
        return "classifier"
    if any(a.endswith(_CAUSAL_SUFFIXES) for a in archs):
        return "dpo"
    if not archs:
        if hint is not None:
            return hint
        raise ModelError(
            f"model directory {path}: config.json has no architectures (model_type {model_type!r}); "
            "pass --kind classifier or --kind dpo (--ref-model and --ref-free also mean dpo)"
        )
    shown = archs
    raise ModelError(
        f"model directory {path}: config.json architectures {shown} name neither a "
        "...ForSequenceClassification nor a ...ForCausalLM / LMHeadModel class"
    )


# Classes every supported transformers release defines (the native engine's families): asking
# transformers about them would import their modeling module, seconds of start-up per run.
_HF_CLASSES = frozenset(
    f"{family}{head}"
    for family in ("Llama", "Mistral", "Qwen2", "Qwen3", "Gemma2", "Gemma")
    for head in ("ForCausalLM", "ForSequenceClassification")
)


def _known_to_transformers(arch: str) -> bool | None:
    """True/False if transformers is installed and does/doesn't define `arch`; None if it is absent."""
    if importlib.util.find_spec("transformers") is None:
        return None
    if arch in _HF_CLASSES:
        return True
    import transformers  # optional dependency: transformers (the [hf] extra)

    try:
        return hasattr(transformers, arch)
    except Exception:  # a lazy import of that model module failed: treat as unknown
        return False


def _remote_code(cfg: dict[str, Any], archs: list[str]) -> str | None:
    """Why loading would need the repository's own Python code, or None if it doesn't."""
    if cfg.get("auto_map"):
        return "config.json has auto_map"
    unknown = [a for a in archs if _known_to_transformers(a) is False]
    if unknown:
        return f"architecture {unknown[0]} is not part of the installed transformers"
    return None


def _has_chat_template(path: Path) -> bool:
    """A chat template lives in tokenizer_config.json or, since transformers 4.4x, in its own file."""
    if (path / "chat_template.jinja").is_file() or (path / "chat_template.json").is_file():
        return True
    tc = path / "tokenizer_config.json"
    if not tc.is_file():
        return False
    try:
        data = json.loads(tc.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{tc}: cannot parse tokenizer_config.json ({exc})") from None
    return isinstance(data, dict) and bool(data.get("chat_template"))


def _num_labels(cfg: dict[str, Any]) -> int:
    """HF's rule: explicit num_labels, else len(id2label), else the PretrainedConfig default 2."""
    if isinstance(cfg.get("num_labels"), int):
        return int(cfg["num_labels"])
    if isinstance(cfg.get("id2label"), dict):
        return len(cfg["id2label"])
    return 2


def inspect_model_dir(
    path: str | Path,
    *,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    kind: ModelKind | None = None,
    kind_hint: ModelKind | None = None,
) -> ModelInfo:
    """Read `path`'s config.json and file listing; raise ModelError (one line) if it can't be used.

    `kind` overrides the auto-detection from `architectures`; `kind_hint` (what the options
    imply) is used only when config.json has no `architectures`. A recognised custom reward head
    (`detect_native_head`) makes the kind "classifier" and needs no --trust-remote-code, since the
    native engine runs it without the repository's code; `needs_remote_code` still says whether
    the transformers backend would need it.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelError(f"model directory {p} does not exist")
    if not p.is_dir():
        raise ModelError(f"model path {p} is not a directory")
    cfg = _load_config(p)
    archs_raw = cfg.get("architectures") or []
    archs = [str(a) for a in archs_raw] if isinstance(archs_raw, list) else [str(archs_raw)]
    fmt, files = _weight_files(p, allow_pickle)
    head = detect_native_head(cfg, checkpoint_tensor_names(p) if fmt == "safetensors" else None)
    if kind is not None:
        model_kind: ModelKind = kind
    else:
        model_kind = (
            "classifier" if head is not None else _detect_kind(p, archs, cfg.get("model_type"), kind_hint)
        )
    reason = _remote_code(cfg, archs)
    if reason is not None and not trust_remote_code and head is None:
        raise ModelError(
            f"model directory {p} needs remote code ({reason}); pass --trust-remote-code to run it"
        )
    # A native head reduces its outputs to one reward itself (ArmoRM: 19 objectives and a gate).
    num_labels = (1 if head is not None else _num_labels(cfg)) if model_kind == "classifier" else None
    if num_labels is not None and num_labels != 1:
        raise ModelError(
            f"model directory {p}: classifier has num_labels={num_labels}; only a single reward "
            "logit (num_labels=1) is supported"
        )
    text_cfg = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else {}
    return ModelInfo(
        path=p,
        config=cfg,
        architectures=archs,
        kind=model_kind,
        model_type=cfg.get("model_type"),
        num_labels=num_labels,
        weight_format=fmt,
        weight_files=files,
        has_chat_template=_has_chat_template(p),
        needs_remote_code=reason is not None,
        remote_code_reason=reason,
        dtype=cfg.get("torch_dtype") or cfg.get("dtype"),
        pad_token_id=cfg.get("pad_token_id", text_cfg.get("pad_token_id")),
        bos_token_id=cfg.get("bos_token_id", text_cfg.get("bos_token_id")),
        eos_token_id=cfg.get("eos_token_id", text_cfg.get("eos_token_id")),
        vocab_size=cfg.get("vocab_size", text_cfg.get("vocab_size")),
        is_encoder_decoder=bool(cfg.get("is_encoder_decoder", False)),
        tokenizer_files=[f for f in _TOKENIZER_FILES if (p / f).is_file()],
        native_head=head,
    )
