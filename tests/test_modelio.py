"""inspect_model_dir: kind detection and one-line ModelError for every unusable directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rmbench_fast.errors import ModelError
from rmbench_fast.modelio import inspect_model_dir


def _model_dir(
    tmp_path: Path,
    arch: str = "LlamaForCausalLM",
    weights: tuple[str, ...] = ("model.safetensors",),
    **cfg: object,
) -> Path:
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"architectures": [arch], "model_type": "llama", **cfg}))
    for w in weights:
        (d / w).write_bytes(b"x")
    return d


def _one_line_naming(err: pytest.ExceptionInfo[ModelError], d: Path) -> str:
    msg = str(err.value)
    assert "\n" not in msg and str(d) in msg
    return msg


def test_causal_lm_is_dpo(tmp_path: Path) -> None:
    d = _model_dir(tmp_path, pad_token_id=2, dtype="bfloat16")
    info = inspect_model_dir(d)
    assert info.kind == "dpo" and info.num_labels is None and info.weight_format == "safetensors"
    assert info.pad_token_id == 2 and info.dtype == "bfloat16" and not info.needs_remote_code
    assert not info.has_chat_template


def test_classifier_detected_with_one_label(tmp_path: Path) -> None:
    d = _model_dir(tmp_path, "LlamaForSequenceClassification", id2label={"0": "LABEL_0"})
    (d / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    info = inspect_model_dir(d)
    assert info.kind == "classifier" and info.num_labels == 1 and info.has_chat_template


def test_gpt2_lm_head_model_is_dpo_and_chat_template_file(tmp_path: Path) -> None:
    d = _model_dir(tmp_path, "GPT2LMHeadModel")
    (d / "chat_template.jinja").write_text("{{ messages }}")
    info = inspect_model_dir(d)
    assert info.kind == "dpo" and info.has_chat_template


def test_classifier_with_two_labels_refused(tmp_path: Path) -> None:
    d = _model_dir(tmp_path, "LlamaForSequenceClassification")  # HF default: 2 labels
    with pytest.raises(ModelError) as e:
        inspect_model_dir(d)
    assert "num_labels=2" in _one_line_naming(e, d)


def test_missing_directory(tmp_path: Path) -> None:
    d = tmp_path / "nope"
    with pytest.raises(ModelError) as e:
        inspect_model_dir(d)
    assert "does not exist" in _one_line_naming(e, d)


def test_no_config(tmp_path: Path) -> None:
    d = tmp_path / "m"
    d.mkdir()
    with pytest.raises(ModelError) as e:
        inspect_model_dir(d)
    assert "no config.json" in _one_line_naming(e, d)


def test_unparsable_config(tmp_path: Path) -> None:
    d = _model_dir(tmp_path)
    (d / "config.json").write_text("{not json")
    with pytest.raises(ModelError) as e:
        inspect_model_dir(d)
    assert "cannot parse config.json" in _one_line_naming(e, d)


@pytest.mark.parametrize("weight", ["pytorch_model.bin", "model.pt"])
def test_pickle_only_refused_unless_allowed(tmp_path: Path, weight: str) -> None:
    d = _model_dir(tmp_path, weights=(weight,))
    with pytest.raises(ModelError) as e:
        inspect_model_dir(d)
    msg = _one_line_naming(e, d)
    assert f"only pickle weights ({weight})" in msg and "--allow-pickle" in msg
    assert inspect_model_dir(d, allow_pickle=True).weight_format == "pickle"


def test_safetensors_preferred_over_pickle(tmp_path: Path) -> None:
    d = _model_dir(tmp_path, weights=("pytorch_model.bin", "model-00001-of-00002.safetensors"))
    info = inspect_model_dir(d)
    assert info.weight_format == "safetensors" and info.weight_files == ["model-00001-of-00002.safetensors"]


def test_no_weights(tmp_path: Path) -> None:
    d = _model_dir(tmp_path, weights=())
    with pytest.raises(ModelError) as e:
        inspect_model_dir(d)
    assert "has no weights" in _one_line_naming(e, d)


def test_auto_map_needs_trust_remote_code(tmp_path: Path) -> None:
    d = _model_dir(tmp_path, auto_map={"AutoModelForCausalLM": "modeling_x.XForCausalLM"})
    with pytest.raises(ModelError) as e:
        inspect_model_dir(d)
    assert "--trust-remote-code" in _one_line_naming(e, d)
    info = inspect_model_dir(d, trust_remote_code=True)
    assert info.needs_remote_code and "auto_map" in (info.remote_code_reason or "")


def test_unknown_architecture_needs_remote_code(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    d = _model_dir(tmp_path, "FrobnicatorForCausalLM")
    with pytest.raises(ModelError) as e:
        inspect_model_dir(d)
    assert "FrobnicatorForCausalLM" in _one_line_naming(e, d)


def test_unknown_kind(tmp_path: Path) -> None:
    d = _model_dir(tmp_path, "LlamaModel")
    with pytest.raises(ModelError) as e:
        inspect_model_dir(d)
    _one_line_naming(e, d)
    assert inspect_model_dir(d, kind="dpo").kind == "dpo"  # explicit override
