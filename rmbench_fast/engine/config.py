"""Model configuration: HF `config.json` mapped field by field into one dataclass.

Only what the native engine implements is accepted; anything else raises a one-line
`ModelError` that suggests `--backend hf`, so an unsupported feature can never be silently
ignored (which would change scores).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rmbench_fast.errors import ModelError

Family = Literal["llama", "mistral", "qwen2", "gemma2"]
Head = Literal["causal", "classifier"]

# architectures string -> (family, head)
ARCHITECTURES: dict[str, tuple[Family, Head]] = {
    "LlamaForCausalLM": ("llama", "causal"),
    "MistralForCausalLM": ("mistral", "causal"),
    "Qwen2ForCausalLM": ("qwen2", "causal"),
    "LlamaForSequenceClassification": ("llama", "classifier"),
    "MistralForSequenceClassification": ("mistral", "classifier"),
    "Qwen2ForSequenceClassification": ("qwen2", "classifier"),
    "Gemma2ForCausalLM": ("gemma2", "causal"),
    "Gemma2ForSequenceClassification": ("gemma2", "classifier"),
}
# The activation each family's MLP accepts (HF: hidden_act, Gemma-2: hidden_activation).
ACTIVATIONS = {"llama": ("silu",), "mistral": ("silu",), "qwen2": ("silu",), "gemma2": ("gelu_pytorch_tanh",)}
SUPPORTED_ROPE = ("default", "linear", "llama3")
HINT = "use --backend hf"


@dataclass(frozen=True)
class RopeConfig:
    """RoPE parameters. type: 'default' | 'linear' (factor) | 'llama3' (factor, low/high, orig)."""

    theta: float = 10000.0
    type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass(frozen=True)
class EngineConfig:
    """Everything the engine needs from a model's config.json (defaults = HF Llama defaults)."""

    family: Family
    head: Head
    architecture: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    rms_norm_eps: float = 1e-6
    rope: RopeConfig = RopeConfig()
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    qkv_bias: bool = False  # q/k/v projections have a bias (Qwen2; Llama attention_bias)
    o_bias: bool = False  # o_proj has a bias (Llama attention_bias only)
    mlp_bias: bool = False
    # Per layer: None = full causal attention, else key k is visible to query q only when
    # pos(q) - pos(k) < window (HF's sliding_window_overlay).
    layer_windows: tuple[int | None, ...] = ()
    hidden_act: str = "silu"  # "silu" | "gelu_pytorch_tanh" (Gemma-2)
    # Gemma-2: q·k scaled by query_pre_attn_scalar^-0.5 instead of head_dim^-0.5; tanh
    # soft-capping of attention scores and of the final logits (cap * tanh(x / cap)); RMSNorm
    # weights stored as offsets (x * (1 + w)); four norms per layer; embeddings * sqrt(H).
    attn_scale: float | None = None  # None: head_dim^-0.5
    attn_softcap: float | None = None
    final_softcap: float | None = None
    num_labels: int = 1
    pad_token_id: int | None = None
    torch_dtype: str | None = None

    @classmethod
    def from_model_dir(cls, model_dir: str | Path) -> EngineConfig:
        path = Path(model_dir) / "config.json"
        if not path.is_file():
            raise ModelError("no config.json in the model directory", file=str(model_dir))
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot parse config.json ({exc})", file=str(path)) from None
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, source: str = "config.json") -> EngineConfig:
        """Map an HF config dict; raise ModelError for anything the engine does not implement."""

        def fail(msg: str, field: str | None = None) -> ModelError:
            return ModelError(f"{msg}; {HINT}", file=source, field=field)

        archs = raw.get("architectures") or []
        arch = next((a for a in archs if a in ARCHITECTURES), None)
        if arch is None:
            raise fail(f"architecture {archs!r} is not supported by the native engine", "architectures")
        family, head = ARCHITECTURES[arch]
        for key in (
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "vocab_size",
        ):
            if not isinstance(raw.get(key), int):
                raise ModelError(f"missing or non-integer {key}", file=source, field=key)
        act_key = "hidden_activation" if family == "gemma2" and "hidden_activation" in raw else "hidden_act"
        act = raw.get(act_key) or ACTIVATIONS[family][0]
        if act not in ACTIVATIONS[family]:
            raise fail(f"{act_key} {act!r} is not supported for {family}", act_key)
        if raw.get("use_bidirectional_attention"):
            raise fail("bidirectional attention is not supported", "use_bidirectional_attention")
        if raw.get("pretraining_tp", 1) not in (1, None):
            raise fail("pretraining_tp != 1 is not supported", "pretraining_tp")
        n_heads = raw["num_attention_heads"]
        n_kv = raw.get("num_key_value_heads") or n_heads
        if n_heads % n_kv:
            raise ModelError("num_attention_heads is not a multiple of num_key_value_heads", file=source)
        head_dim = raw.get("head_dim") or (256 if family == "gemma2" else raw["hidden_size"] // n_heads)
        n_labels = int(raw.get("num_labels", len(raw.get("id2label") or {}) or 1))
        if head == "classifier" and n_labels != 1:
            raise ModelError(
                f"num_labels = {n_labels}: only single-score classifiers (num_labels = 1) are supported",
                file=source,
                field="num_labels",
            )
        qkv_bias = family == "qwen2" or bool(raw.get("attention_bias", False))
        gemma = family == "gemma2"
        return cls(
            family=family,
            head=head,
            architecture=arch,
            hidden_size=raw["hidden_size"],
            intermediate_size=raw["intermediate_size"],
            num_hidden_layers=raw["num_hidden_layers"],
            num_attention_heads=n_heads,
            num_key_value_heads=n_kv,
            head_dim=head_dim,
            vocab_size=raw["vocab_size"],
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            rope=_rope(raw, fail),
            max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", gemma)),
            qkv_bias=qkv_bias,
            o_bias=family in ("llama", "gemma2") and bool(raw.get("attention_bias", False)),
            mlp_bias=family == "llama" and bool(raw.get("mlp_bias", False)),
            layer_windows=_windows(raw, family, fail),
            hidden_act=act,
            attn_scale=float(raw.get("query_pre_attn_scalar", 256)) ** -0.5 if gemma else None,
            attn_softcap=_opt_float(raw, "attn_logit_softcapping", 50.0) if gemma else None,
            final_softcap=_opt_float(raw, "final_logit_softcapping", 30.0) if gemma else None,
            num_labels=n_labels,
            pad_token_id=_first_int(raw.get("pad_token_id")),
            torch_dtype=raw.get("torch_dtype") or raw.get("dtype"),
        )


def _opt_float(raw: dict[str, Any], key: str, default: float) -> float | None:
    """raw[key] as a float (HF's default when absent); None or 0 -> None (the feature is off)."""
    value = raw.get(key, default)
    return float(value) if value else None


def _first_int(value: Any) -> int | None:
    if isinstance(value, list):
        value = value[0] if value else None
    return int(value) if isinstance(value, int) else None


def _rope(raw: dict[str, Any], fail: Any) -> RopeConfig:
    """Old style (rope_theta + rope_scaling) and transformers>=5 style (rope_parameters)."""
    params = dict(raw.get("rope_parameters") or {})
    if "rope_theta" in params and isinstance(params.get("rope_theta"), dict):
        raise fail("per-layer rope_parameters are not supported", "rope_parameters")
    scaling = raw.get("rope_scaling") or {}
    params = {**scaling, **params}
    theta = float(params.get("rope_theta", raw.get("rope_theta", 10000.0)))
    rtype = params.get("rope_type", params.get("type", "default")) or "default"
    if rtype not in SUPPORTED_ROPE:
        raise fail(
            f"rope scaling type {rtype!r} is not supported (only {', '.join(SUPPORTED_ROPE)})", "rope_scaling"
        )
    if params.get("partial_rotary_factor", 1.0) != 1.0:
        raise fail("partial_rotary_factor != 1 is not supported", "rope_scaling")
    if rtype == "default":
        return RopeConfig(theta=theta)
    if "factor" not in params:
        raise ModelError("rope scaling without a factor", field="rope_scaling")
    if rtype == "linear":
        return RopeConfig(theta=theta, type="linear", factor=float(params["factor"]))
    return RopeConfig(
        theta=theta,
        type="llama3",
        factor=float(params["factor"]),
        low_freq_factor=float(params.get("low_freq_factor", 1.0)),
        high_freq_factor=float(params.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=int(params.get("original_max_position_embeddings", 8192)),
    )


def _windows(raw: dict[str, Any], family: Family, fail: Any) -> tuple[int | None, ...]:
    """Per-layer sliding window, following each HF family's rule for when it is active."""
    n = raw["num_hidden_layers"]
    window = raw.get("sliding_window", 4096 if family == "gemma2" else None)
    if family == "llama" or window is None:
        return (None,) * n
    if family == "mistral":
        return (int(window),) * n
    if family == "gemma2":
        # always active; HF's default alternates: even layers slide, odd layers see everything
        types = raw.get("layer_types") or [
            "sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(n)
        ]
        if len(types) != n or any(t not in ("full_attention", "sliding_attention") for t in types):
            raise fail("unsupported layer_types", "layer_types")
        return tuple(int(window) if t == "sliding_attention" else None for t in types)
    # qwen2: only with use_sliding_window, and only from layer max_window_layers on
    types = raw.get("layer_types")
    if types is None:
        if not raw.get("use_sliding_window", False):
            return (None,) * n
        first = int(raw.get("max_window_layers", n))
        types = ["sliding_attention" if i >= first else "full_attention" for i in range(n)]
    if len(types) != n or any(t not in ("full_attention", "sliding_attention") for t in types):
        raise fail("unsupported layer_types", "layer_types")
    if not raw.get("use_sliding_window", False):
        return (None,) * n
    return tuple(int(window) if t == "sliding_attention" else None for t in types)
