"""inspect_model_dir: kind detection and one-line ModelError for every unusable directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rmbench_fast.errors import ModelError
from rmbench_fast.inputs.modelio import inspect_model_dir


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


# -- custom reward heads: recognised from config.json and tensor names, nothing imported ---------
def _safetensors_header(path: Path, names: list[str]) -> None:
    """A file with a valid safetensors header naming `names` (the loader is not involved)."""
    import struct

    header = {
        n: {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]} for i, n in enumerate(names)
    }
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + b"\0" * (4 * len(names)))


BODY = ["model.embed_tokens.weight", "model.norm.weight"]


@pytest.mark.parametrize(
    ("cfg", "tensors", "head"),
    [
        (
            {"architectures": ["INFORMForSequenceClassification"]},
            ["score.0.weight", "score.0.bias", "score.2.weight", "score.2.bias"],
            "inform",
        ),
        ({"architectures": ["GRewardModel"]}, ["v_head.summary.0.weight"], "grm"),
        (
            {"architectures": ["LlamaForCausalLM"], "vhead_layer_type": "linear"},
            ["v_head.summary.weight"],
            "grm",
        ),
        ({"architectures": ["LlamaForCausalLM"]}, ["v_head.summary.weight", "v_head.summary.bias"], "grm"),
        (
            {
                "architectures": ["X"],
                "auto_map": {"AutoModelForSequenceClassification": "modeling_custom.GRewardModel"},
            },
            ["v_head.summary.weight"],
            "grm",
        ),
        (
            {"architectures": ["LlamaForRewardModelWithGating"]},
            ["regression_layer.weight", "gating.layers.0.weight", "gating.logit_scale"],
            "armorm",
        ),
        (
            {"architectures": ["LlamaForRewardModelWithGating31"], "num_quantiles": 5},
            ["regression_layer.weight", "gating.layers.0.weight", "gating.logit_scale"],
            "qrm",
        ),
    ],
)
def test_native_head_detected_without_remote_code(
    tmp_path: Path, cfg: dict, tensors: list[str], head: str
) -> None:
    from rmbench_fast.inputs.modelio import detect_native_head

    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "num_labels": 19, **cfg}))
    _safetensors_header(d / "model.safetensors", BODY + tensors)
    info = inspect_model_dir(d)  # no --trust-remote-code, although transformers lacks the class
    assert info.native_head is not None and info.native_head.name == head
    assert info.kind == "classifier" and info.num_labels == 1
    assert info.summary()["native_head"] == head
    assert detect_native_head({"model_type": "llama", **cfg}, BODY + tensors) == info.native_head


def test_head_pipelines_are_recorded() -> None:
    from rmbench_fast.inputs.modelio import detect_native_head

    grm = detect_native_head({"model_type": "gemma2", "architectures": ["GRewardModel"]})
    inform = detect_native_head({"model_type": "llama", "architectures": ["INFORMForSequenceClassification"]})
    assert grm is not None and (grm.pooling, grm.mask_double_bos) == ("last_token", False)
    assert inform is not None and (inform.pooling, inform.mask_double_bos) == ("first_pad", True)


@pytest.mark.parametrize(
    ("cfg", "tensors"),
    [
        # the config names the head, the checkpoint does not hold it
        ({"model_type": "llama", "architectures": ["INFORMForSequenceClassification"]}, ["score.weight"]),
        # a base the engine has no family for
        ({"model_type": "gpt2", "architectures": ["GRewardModel"]}, ["v_head.summary.weight"]),
        # a plain classifier
        ({"model_type": "llama", "architectures": ["LlamaForSequenceClassification"]}, ["score.weight"]),
    ],
)
def test_native_head_not_recognised(cfg: dict, tensors: list[str]) -> None:
    from rmbench_fast.inputs.modelio import detect_native_head

    assert detect_native_head(cfg, BODY + tensors) is None


def test_unrecognised_remote_code_still_needs_the_flag(tmp_path: Path) -> None:
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text(
        json.dumps(
            {
                "model_type": "llama",
                "architectures": ["LlamaForSequenceClassification"],
                "auto_map": {"AutoModelForSequenceClassification": "modeling_grm.GRewardModel"},
            }
        )
    )
    _safetensors_header(d / "model.safetensors", BODY + ["score.weight"])  # no value head
    with pytest.raises(ModelError, match="--trust-remote-code"):
        inspect_model_dir(d)


def test_checkpoint_tensor_names_from_index_and_headers(tmp_path: Path) -> None:
    from rmbench_fast.inputs.modelio import checkpoint_tensor_names

    _safetensors_header(tmp_path / "a.safetensors", ["x", "y"])
    _safetensors_header(tmp_path / "b.safetensors", ["z"])
    assert checkpoint_tensor_names(tmp_path) == ["x", "y", "z"]
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"q": "a", "p": "b"}}))
    assert checkpoint_tensor_names(tmp_path) == ["p", "q"]
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "model.safetensors").write_bytes(b"x")  # unreadable: None, not an error
    assert checkpoint_tensor_names(tmp_path / "c") is None
