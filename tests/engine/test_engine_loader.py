"""Native engine: config mapping, weight loading and refusals, and the packed attention mask."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rmbench_fast.engine import EngineConfig, NativeScorer, load_model, native_supports
from rmbench_fast.engine.layers.attention import PackedLayout
from rmbench_fast.engine.layers.attention.dense import dense_mask
from rmbench_fast.errors import ModelError
from rmbench_fast.scoring.plan import branch_bounds, plan_batches
from tests.helpers.tiny import make_tiny_model_dir, synthetic_records

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_dir(
        tmp_path_factory.mktemp("tiny") / "m", "llama", num_kv_heads=2, vocab_size=1000
    )


def _edit_config(src: Path, dst: Path, **changes: object) -> Path:
    dst.mkdir()
    raw = json.loads((src / "config.json").read_text())
    raw.update(changes)
    (dst / "config.json").write_text(json.dumps(raw))
    return dst


def test_sharded_checkpoint_loads_identically(tiny: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(tiny / "model.safetensors"))
    names = sorted(state)
    shard = tmp_path / "sharded"
    _edit_config(tiny, shard)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for fname, keys in halves.items():
        save_file({k: state[k] for k in keys}, str(shard / fname))
    index = {"weight_map": {k: f for f, keys in halves.items() for k in keys}}
    (shard / "model.safetensors.index.json").write_text(json.dumps(index))
    seqs = synthetic_records(3, vocab_size=1000)
    a = NativeScorer(tiny, kind="dpo").score(seqs)
    b = NativeScorer(shard, kind="dpo").score(seqs)
    assert np.array_equal(a, b)


def test_pickle_weights_refused_unless_allowed(tiny: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    d = _edit_config(tiny, tmp_path / "pkl")
    torch.save(load_file(str(tiny / "model.safetensors")), d / "pytorch_model.bin")
    with pytest.raises(ModelError, match="pickle"):
        load_model(d)
    m = load_model(d, allow_pickle=True)
    assert m.model.embed_tokens.weight.shape == (1000, 64)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"architectures": ["GPTNeoXForCausalLM"]}, "backend hf"),
        ({"rope_parameters": {"rope_type": "longrope", "factor": 4.0, "rope_theta": 1e4}}, "longrope"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"architectures": ["LlamaForSequenceClassification"], "num_labels": 3}, "num_labels"),
    ],
)
def test_unsupported_configs_raise_one_line_errors(
    tiny: Path, tmp_path: Path, changes: dict, match: str
) -> None:
    d = _edit_config(tiny, tmp_path / "bad", **changes)
    with pytest.raises(ModelError, match=match) as exc:
        EngineConfig.from_model_dir(d)
    assert "\n" not in str(exc.value)
    assert native_supports(json.loads((d / "config.json").read_text())) is not None


def test_kind_mismatch_and_missing_weights(tiny: Path, tmp_path: Path) -> None:
    assert native_supports(json.loads((tiny / "config.json").read_text())) is None
    with pytest.raises(ModelError, match="not a sequence classifier"):
        NativeScorer(tiny, kind="classifier")
    d = _edit_config(tiny, tmp_path / "noweights")
    with pytest.raises(ModelError, match="no \\*.safetensors"):
        load_model(d)


def test_old_style_rope_scaling_config() -> None:
    raw = {
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 100,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    }
    cfg = EngineConfig.from_dict(raw)
    assert cfg.rope.type == "llama3" and cfg.rope.factor == 32.0 and cfg.rope.theta == 500000.0
    assert cfg.head_dim == 16 and cfg.layer_windows == (None, None)


def _gemma2_raw(**changes: object) -> dict:
    raw = {
        "architectures": ["Gemma2ForCausalLM"],
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 100,
    }
    return {**raw, **changes}


def test_gemma2_config_defaults_follow_hf() -> None:
    """Fields absent from config.json take HF Gemma2Config's defaults."""
    cfg = EngineConfig.from_dict(_gemma2_raw())
    assert cfg.family == "gemma2" and cfg.head_dim == 256 and cfg.tie_word_embeddings
    assert cfg.attn_scale == 256**-0.5 and cfg.attn_softcap == 50.0 and cfg.final_softcap == 30.0
    assert cfg.hidden_act == "gelu_pytorch_tanh"
    assert cfg.layer_windows == (4096, None, 4096, None)  # even layers slide
    cfg = EngineConfig.from_dict(
        _gemma2_raw(
            head_dim=16,
            query_pre_attn_scalar=144,
            attn_logit_softcapping=None,
            final_logit_softcapping=None,
            sliding_window=8,
            layer_types=["full_attention", "sliding_attention"] * 2,
        )
    )
    assert cfg.attn_scale == 144**-0.5 and cfg.attn_softcap is None and cfg.final_softcap is None
    assert cfg.layer_windows == (None, 8, None, 8) and cfg.head_dim == 16


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"hidden_activation": "gelu"}, "hidden_activation"),
        ({"use_bidirectional_attention": True}, "bidirectional"),
        ({"layer_types": ["full_attention"]}, "layer_types"),
    ],
)
def test_gemma2_unsupported_configs(changes: dict, match: str) -> None:
    with pytest.raises(ModelError, match=match):
        EngineConfig.from_dict(_gemma2_raw(**changes))


def _reference_mask(batch: object) -> np.ndarray:
    """Brute force from the PackedBatch docstring: q sees k iff same sequence, k <= q, key_valid."""
    T = batch.n_tokens  # type: ignore[attr-defined]
    seq_of = [set() for _ in range(T)]  # sequences j each token belongs to
    starts, ends = branch_bounds(batch)  # type: ignore[arg-type]
    for s in range(batch.n_segments):  # type: ignore[attr-defined]
        a, P = int(batch.seg_offsets[s]), int(batch.prefix_len[s])  # type: ignore[attr-defined]
        for j in range(s * 6, s * 6 + 6):
            for t in list(range(a, a + P)) + list(range(starts[j], ends[j])):
                seq_of[t].add(j)
    m = np.zeros((T, T), dtype=bool)
    kv = np.asarray(batch.key_valid)  # type: ignore[attr-defined]
    for q in range(T):
        for k in range(q + 1):
            m[q, k] = bool(seq_of[q] & seq_of[k]) and (kv[k] or k == q)
    return m


def test_mask_mod_dense_and_flex_create_mask_match_reference() -> None:
    from torch.nn.attention.flex_attention import create_mask

    seqs = synthetic_records(4, vocab_size=500, kind="classifier", seed=4)  # includes masked BOS
    batch = plan_batches(seqs, batch_tokens=10_000)[0]
    layout = PackedLayout.from_batch(batch, torch.device("cpu"))
    want = _reference_mask(batch)
    assert np.array_equal(dense_mask(layout, None).numpy(), want)
    flex = create_mask(layout.mask_mod(None), None, None, batch.n_tokens, batch.n_tokens, device="cpu")
    assert np.array_equal(flex[0, 0].numpy(), want)
    # the sliding-window variant only removes pairs farther apart than the window
    pos = np.asarray(batch.position_ids)
    w = dense_mask(layout, 5).numpy()
    assert np.array_equal(w, want & ((pos[:, None] - pos[None, :]) < 5))
