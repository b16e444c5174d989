"""Inspect a Hugging Face model directory before loading anything heavy.

`inspect_model_dir` reads `config.json` and the file listing only (no weights, no torch), so
every problem with the directory is reported as one `ModelError` line that names it:
missing directory, missing or unparsable config, pickle-only weights without --allow-pickle,
remote code without --trust-remote-code, no weights at all, a classifier head with
`num_labels != 1`.

The model kind is read from `architectures` (SPEC §4/§5):
    *ForSequenceClassification          -> "classifier" (a sequence-classifier reward model)
    *ForCausalLM / *LMHeadModel          -> "dpo" (a policy scored as an implicit reward model)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import ModelError

ModelKind = Literal["classifier", "dpo"]
WeightFormat = Literal["safetensors", "pickle"]

# Files that hold weights, by format. Sharded checkpoints come with an index json.
_SAFETENSORS_GLOBS = ("*.safetensors",)
_PICKLE_GLOBS = ("pytorch_model*.bin", "*.pt", "*.pth", "*.ckpt")
_CLASSIFIER_SUFFIXES = ("ForSequenceClassification",)
_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "vocab.txt")


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


def _weight_files(path: Path, allow_pickle: bool) -> tuple[WeightFormat, list[str]]:
    """Safetensors win when both are present; pickle-only needs an explicit opt-in (it runs pickle)."""
    st = _glob_all(path, _SAFETENSORS_GLOBS)
    if st:
        return "safetensors", st
    pk = _glob_all(path, _PICKLE_GLOBS)
    if pk:
        if not allow_pickle:
            raise ModelError(
                f"model directory {path} has only pickle weights ({', '.join(pk)}); "
                "pass --allow-pickle to load them (this runs pickle)"
            )
        return "pickle", pk
    raise ModelError(f"model directory {path} has no weights (no *.safetensors, pytorch_model*.bin or *.pt)")


def _detect_kind(path: Path, archs: list[str]) -> ModelKind:
    if any(a.endswith(_CLASSIFIER_SUFFIXES) for a in archs):
        return "classifier"
    if any(a.endswith(_CAUSAL_SUFFIXES) for a in archs):
        return "dpo"
    shown = archs if archs else "none"
    raise ModelError(
        f"model directory {path}: config.json architectures {shown} name neither a "
        "...ForSequenceClassification nor a ...ForCausalLM / LMHeadModel class"
    )


def _known_to_transformers(arch: str) -> bool | None:
    """True/False if transformers is installed and does/doesn't define `arch`; None if it is absent."""
    try:
        import transformers
    except ImportError:
        return None
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
) -> ModelInfo:
    """Read `path`'s config.json and file listing; raise ModelError (one line) if it can't be used.

    `kind` overrides the auto-detection from `architectures`.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelError(f"model directory {p} does not exist")
    if not p.is_dir():
        raise ModelError(f"model path {p} is not a directory")
    cfg = _load_config(p)
    archs_raw = cfg.get("architectures") or []
    archs = [str(a) for a in archs_raw] if isinstance(archs_raw, list) else [str(archs_raw)]
    model_kind: ModelKind = kind if kind is not None else _detect_kind(p, archs)
    fmt, files = _weight_files(p, allow_pickle)
    reason = _remote_code(cfg, archs)
    if reason is not None and not trust_remote_code:
        raise ModelError(
            f"model directory {p} needs remote code ({reason}); pass --trust-remote-code to run it"
        )
    num_labels = _num_labels(cfg) if model_kind == "classifier" else None
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
    )
