"""Model configuration: HF `config.json` mapped field by field into one dataclass.

Only what the native engine implements is accepted; anything else raises a one-line
`ModelError` that suggests `--backend hf`, so an unsupported feature can never be silently
ignored (which would change scores).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from rmbench_fast.errors import ModelError
from rmbench_fast.inputs.modelio import NativeHeadName, checkpoint_tensor_names, detect_native_head

Family = Literal["llama", "mistral", "qwen2", "qwen3", "gemma2"]
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
    "Qwen3ForCausalLM": ("qwen3", "causal"),
    "Qwen3ForSequenceClassification": ("qwen3", "classifier"),
}
# config.json model_type -> family, for custom reward heads whose class is not an HF one.
MODEL_TYPES: dict[str, Family] = {
    "llama": "llama",
    "mistral": "mistral",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "gemma2": "gemma2",
}
# The activation each family's MLP accepts (HF: hidden_act, Gemma-2: hidden_activation).
ACTIVATIONS = {
    "llama": ("silu",),
    "mistral": ("silu",),
    "qwen2": ("silu",),
    "qwen3": ("silu",),
    "gemma2": ("gelu_pytorch_tanh",),
}
# Custom reward heads the scorer runs natively (engine/models/reward_heads.py). The gating heads also
# read a second row per sequence, the hidden state at the gating token (plan.gating_rows).
GATING_HEADS: tuple[NativeHeadName, ...] = ("qrm", "armorm")
NATIVE_HEADS: tuple[NativeHeadName, ...] = ("inform", "grm", *GATING_HEADS)
SUPPORTED_ROPE = ("default", "linear", "llama3", "yarn", "dynamic")
HINT = "use --backend hf"


@dataclass(frozen=True)
class RopeConfig:
    """RoPE parameters, as transformers' `rope_parameters` (or old-style `rope_scaling`) give them.

    type: 'default' | 'linear' (factor) | 'llama3' (factor, low/high freq factors, orig) |
    'yarn' (factor, orig, beta_fast/beta_slow, truncate; cos/sin scaled by attention_factor) |
    'dynamic' (NTK: factor and max_position_embeddings; HF's frequencies at load time, which
    hold for sequences up to max_position_embeddings).
    """

    theta: float = 10000.0
    type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192
    # yarn: cos and sin are multiplied by this (HF's attention_scaling); 1.0 for the others
    attention_factor: float = 1.0
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    truncate: bool = True
    # dynamic: the frequencies change beyond this many positions (HF's max_seq_len_cached)
    max_position_embeddings: int = 2048


@dataclass(frozen=True)
class RewardHeadConfig:
    """A custom reward head (no remote code), from config.json with HF's defaults.

    inform:  score = W2 relu(W1 h + b1) + b2, W1 [H, H], W2 [1, H]   (`score.0`, `score.2`)
    grm:     v_head.summary: linear (W [1, H], b) or an MLP of `vhead_num_layers` x
             (Linear(·, vhead_num_neurons) + ReLU) then Linear(vhead_num_neurons, 1)
    qrm:     regression_layer [O*Q, H] (no bias) -> rewards [O, Q]; gating over the gating token's
             hidden state -> weights g [O]; score = Σ_o g_o · mean_q(rewards) @ T
    armorm:  regression_layer [O, H]; score = Σ_o g_o · (rewards @ T)_o
    """

    name: NativeHeadName
    vhead_layer_type: str = "mlp"
    vhead_num_neurons: int = 1024
    vhead_num_layers: int = 1
    num_objectives: int = 19
    num_quantiles: int = 0
    gating_hidden_dim: int = 1024
    gating_n_hidden: int = 3
    gating_temperature: float = 10.0
    # qrm / armorm: the token ids whose last occurrence in a sequence is its gating position
    gating_pattern: tuple[int, ...] | None = None


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
    reward_head: RewardHeadConfig | None = None  # a custom classifier head (INF-ORM, GRM, ...)

    @classmethod
    def from_model_dir(cls, model_dir: str | Path, *, head_hint: Head | None = None) -> EngineConfig:
        """config.json of `model_dir`; the checkpoint's tensor names (read from the safetensors
        headers, no weights) also let a custom reward head be recognised by its layout.
        head_hint: the head a config without `architectures` gets (see `from_dict`)."""
        path = Path(model_dir) / "config.json"
        if not path.is_file():
            raise ModelError("no config.json in the model directory", file=str(model_dir))
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot parse config.json ({exc})", file=str(path)) from None
        names = checkpoint_tensor_names(model_dir)
        return cls.from_dict(raw, source=str(path), tensor_names=names, head_hint=head_hint)

    @classmethod
    def from_dict(
        cls,
        raw: dict[str, Any],
        *,
        source: str = "config.json",
        tensor_names: list[str] | None = None,
        heads: tuple[NativeHeadName, ...] = NATIVE_HEADS,
        head_hint: Head | None = None,
    ) -> EngineConfig:
        """Map an HF config dict; raise ModelError for anything the engine does not implement.

        tensor_names (optional): the checkpoint's tensor names, to recognise a custom reward head
        by its weights when config.json does not name it. heads: the custom heads to accept
        (default: those the scorer runs). head_hint: for a config whose `architectures` is null
        or empty (transformers saves one after loading a GGUF), the head the run asks for; the
        family then comes from `model_type`, as the Auto classes of the official scripts do it.
        """

        def fail(msg: str, field: str | None = None) -> ModelError:
            return ModelError(f"{msg}; {HINT}", file=source, field=field)

        archs = raw.get("architectures") or []
        arch = next((a for a in archs if a in ARCHITECTURES), None)
        native_head = detect_native_head(raw, tensor_names)
        reward_head = None
        if native_head is not None and native_head.name in heads:
            family, head = MODEL_TYPES[raw["model_type"]], "classifier"
            arch = next((a for a in archs if a not in ARCHITECTURES), None) or native_head.name
            reward_head = replace(
                _reward_head(raw, native_head.name), gating_pattern=native_head.gating_pattern
            )
        elif native_head is not None:
            raise fail(f"the {native_head.name} reward head is not accepted here", "architectures")
        elif not archs and raw.get("model_type") in MODEL_TYPES and head_hint is not None:
            family, head = MODEL_TYPES[raw["model_type"]], head_hint
            arch = next(a for a, fh in ARCHITECTURES.items() if fh == (family, head))
        elif not archs and head_hint is None:
            raise ModelError(
                "config.json has no architectures; pass --kind classifier or --kind dpo",
                file=source,
                field="architectures",
            )
        elif arch is None:
            shown = archs or f"none (model_type {raw.get('model_type')!r})"
            raise fail(f"architecture {shown!r} is not supported by the native engine", "architectures")
        else:
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
        default_head_dim = {"gemma2": 256, "qwen3": 128}.get(family, raw["hidden_size"] // n_heads)
        head_dim = raw.get("head_dim") or default_head_dim
        n_labels = int(raw.get("num_labels", len(raw.get("id2label") or {}) or 1))
        if reward_head is not None:
            n_labels = 1  # the head reduces to one reward itself
        if head == "classifier" and n_labels != 1:
            raise ModelError(
                f"num_labels = {n_labels}: only single-score classifiers (num_labels = 1) are supported",
                file=source,
                field="num_labels",
            )
        qkv_bias = family == "qwen2" or bool(raw.get("attention_bias", False))
        gemma = family == "gemma2"
        max_pos = int(raw.get("max_position_embeddings", 2048))
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
            max_position_embeddings=max_pos,
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", gemma)),
            qkv_bias=qkv_bias,
            o_bias=family in ("llama", "gemma2", "qwen3") and bool(raw.get("attention_bias", False)),
            mlp_bias=family == "llama" and bool(raw.get("mlp_bias", False)),
            layer_windows=_windows(raw, family, fail),
            hidden_act=act,
            attn_scale=float(raw.get("query_pre_attn_scalar", 256)) ** -0.5 if gemma else None,
            attn_softcap=_opt_float(raw, "attn_logit_softcapping", 50.0) if gemma else None,
            final_softcap=_opt_float(raw, "final_logit_softcapping", 30.0) if gemma else None,
            num_labels=n_labels,
            pad_token_id=_first_int(raw.get("pad_token_id")),
            torch_dtype=raw.get("torch_dtype") or raw.get("dtype"),
            reward_head=reward_head,
        )


def _reward_head(raw: dict[str, Any], name: NativeHeadName) -> RewardHeadConfig:
    """The head's shape fields from config.json, with the defaults of its official code."""
    if name == "grm":
        layer_type = str(raw.get("vhead_layer_type", "mlp"))
        return RewardHeadConfig(
            name=name,
            vhead_layer_type="linear" if layer_type == "linear" else "mlp",
            vhead_num_neurons=int(raw.get("vhead_num_neurons", 1024)),
            vhead_num_layers=int(raw.get("vhead_num_layers", 1)),
        )
    if name in ("qrm", "armorm"):
        return RewardHeadConfig(
            name=name,
            num_objectives=int(raw.get("num_objectives", 19)),
            num_quantiles=int(raw.get("num_quantiles", 0)) if name == "qrm" else 0,
            gating_hidden_dim=int(raw.get("gating_hidden_dim", 1024)),
            gating_n_hidden=int(raw.get("gating_n_hidden", 3)),
            gating_temperature=float(raw.get("gating_temperature", 10)),
        )
    return RewardHeadConfig(name=name)


def _opt_float(raw: dict[str, Any], key: str, default: float) -> float | None:
    """raw[key] as a float (HF's default when absent); None or 0 -> None (the feature is off)."""
    value = raw.get(key, default)
    return float(value) if value else None


def _first_int(value: Any) -> int | None:
    if isinstance(value, list):
        value = value[0] if value else None
    return int(value) if isinstance(value, int) else None


def _rope(raw: dict[str, Any], fail: Any) -> RopeConfig:
    """Old style (rope_theta + rope_scaling) and transformers>=5 style (rope_parameters), read
    as transformers' `standardize_rope_params` reads them."""
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
    max_pos = int(raw.get("max_position_embeddings", 2048))
    if rtype == "dynamic":
        return RopeConfig(
            theta=theta, type="dynamic", factor=float(params["factor"]), max_position_embeddings=max_pos
        )
    if rtype == "yarn":
        # HF: a top-level original_max_position_embeddings wins, else the rope dict's, else max_pos
        orig = int(
            raw.get("original_max_position_embeddings")
            or params.get("original_max_position_embeddings")
            or max_pos
        )
        factor = params["factor"]
        factor = float(max_pos / orig if factor is None else factor)
        return RopeConfig(
            theta=theta,
            type="yarn",
            factor=factor,
            original_max_position_embeddings=orig,
            attention_factor=_yarn_attention_factor(params, factor),
            beta_fast=float(params.get("beta_fast") or 32),
            beta_slow=float(params.get("beta_slow") or 1),
            truncate=bool(params.get("truncate", True)),
            max_position_embeddings=max_pos,
        )
    return RopeConfig(
        theta=theta,
        type="llama3",
        factor=float(params["factor"]),
        low_freq_factor=float(params.get("low_freq_factor", 1.0)),
        high_freq_factor=float(params.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=int(params.get("original_max_position_embeddings", 8192)),
    )


def _yarn_attention_factor(params: dict[str, Any], factor: float) -> float:
    """HF's yarn attention_factor: given, or 0.1 ln(factor) + 1 (mscale-adjusted), 1 for factor <= 1."""
    if params.get("attention_factor") is not None:
        return float(params["attention_factor"])

    def get_mscale(scale: float, mscale: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0

    mscale, mscale_all_dim = params.get("mscale"), params.get("mscale_all_dim")
    if mscale and mscale_all_dim:
        return float(get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim))
    return get_mscale(factor)


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
    # qwen2 / qwen3: only with use_sliding_window, and only from layer max_window_layers on
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
