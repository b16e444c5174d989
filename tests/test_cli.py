"""The CLI's bad-input contract: exit code 2, one line naming file/record/field, no traceback,
nothing already written lost. Covers the 12 kinds of the foundation issue end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rmbench_fast.cli import main


def _row(i: int, **kw: Any) -> dict[str, Any]:
    row = {"id": i, "prompt": f"q{i}", "chosen": ["a", "bb", "cc"], "rejected": ["x", "yy", "zz"]}
    row.update(kw)
    return row


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    rc = main(["run", "--no-progress", *argv])
    err = capsys.readouterr().err
    return rc, err


def _assert_one_line_error(rc: int, err: str, *needles: str) -> None:
    assert rc == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])


def _weights(path: Path) -> None:
    from safetensors.numpy import save_file

    save_file({"x": np.zeros(1, dtype=np.float32)}, str(path / "model.safetensors"))


def _model_dir(tmp: Path, name: str, arch: str, **cfg: Any) -> Path:
    d = tmp / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"architectures": [arch], "model_type": "llama", **cfg}))
    _weights(d)
    return d


@pytest.fixture
def good_data(tmp_path: Path) -> Path:
    p = tmp_path / "chat_filtered.json"
    p.write_text(json.dumps([_row(1), _row(2)]))
    return p


DATA_CASES = {
    "unparsable_json": ("[{", "invalid JSON"),
    "missing_field": ([{"id": 7, "chosen": ["a"] * 3, "rejected": ["b"] * 3}], "record 0 (id '7')"),
    "two_chosen": ([_row(7, chosen=["a", "b"])], "field 'chosen'"),
    "empty_response": ([_row(7, chosen=["a", "", "c"])], "field 'chosen[1]'"),
    "unknown_domain": ([_row(7, domain="poetry")], "field 'domain'"),
    "non_string_prompt": ([_row(7, prompt=3)], "field 'prompt'"),
}


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_bad_data(tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str) -> None:
    content, needle = DATA_CASES[case]
    p = tmp_path / "chat_filtered.json"
    p.write_text(content if isinstance(content, str) else json.dumps(content))
    rc, err = _run(capsys, "--data", str(p), "--model", str(tmp_path / "unused"))
    _assert_one_line_error(rc, err, str(p), needle)


def test_model_without_config(tmp_path: Path, good_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "m"
    d.mkdir()
    _weights(d)
    rc, err = _run(capsys, "--data", str(good_data), "--model", str(d))
    _assert_one_line_error(rc, err, str(d), "config.json")


def test_pickle_only_weights_refused(
    tmp_path: Path, good_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    (d / "pytorch_model.bin").write_bytes(b"not really a pickle")
    rc, err = _run(capsys, "--data", str(good_data), "--model", str(d))
    _assert_one_line_error(rc, err, str(d), "--allow-pickle")


def test_remote_code_refused(tmp_path: Path, good_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = _model_dir(
        tmp_path,
        "m",
        "CustomRMForSequenceClassification",
        auto_map={"AutoModelForSequenceClassification": "modeling_custom.CustomRMForSequenceClassification"},
    )
    rc, err = _run(capsys, "--data", str(good_data), "--model", str(d))
    _assert_one_line_error(rc, err, str(d), "--trust-remote-code")


def test_ref_model_with_classifier(
    tmp_path: Path, good_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clf = _model_dir(tmp_path, "clf", "LlamaForSequenceClassification", num_labels=1)
    ref = _model_dir(tmp_path, "ref", "LlamaForCausalLM")
    rc, err = _run(capsys, "--data", str(good_data), "--model", str(clf), "--ref-model", str(ref))
    _assert_one_line_error(rc, err, "--ref-model", "classifier")


def _no_template_model(tmp_path: Path, smollm2_dir: Path) -> Path:
    d = tmp_path / "plain"
    shutil.copytree(smollm2_dir, d)
    tc = json.loads((d / "tokenizer_config.json").read_text())
    tc.pop("chat_template", None)
    (d / "tokenizer_config.json").write_text(json.dumps(tc))
    (d / "chat_template.jinja").unlink(missing_ok=True)
    return d


def test_no_chat_template_needs_flag(
    tmp_path: Path, good_data: Path, smollm2_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = _no_template_model(tmp_path, smollm2_dir)
    rc, err = _run(capsys, "--data", str(good_data), "--model", str(d))
    _assert_one_line_error(rc, err, "--chat-template")


def test_unknown_template_name(
    tmp_path: Path, good_data: Path, smollm2_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = _no_template_model(tmp_path, smollm2_dir)
    rc, err = _run(capsys, "--data", str(good_data), "--model", str(d), "--chat-template", "vicuna-9")
    _assert_one_line_error(rc, err, "vicuna-9", "tulu")


def test_failed_run_keeps_earlier_outputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "scores.json").write_text("[1]")
    (out / "metrics.json").write_text("{}")
    bad = tmp_path / "chat_filtered.json"
    bad.write_text(json.dumps([_row(1, chosen=["a", "b"])]))
    rc, err = _run(capsys, "--data", str(bad), "--model", str(tmp_path), "--out", str(out))
    assert rc == 2
    assert (out / "scores.json").read_text() == "[1]"
    assert (out / "metrics.json").read_text() == "{}"


def test_report_missing_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["report", str(tmp_path)])
    err = capsys.readouterr().err
    _assert_one_line_error(rc, err, "metrics.json")


def test_python_m_from_the_repository_root() -> None:
    """`python -m rmbench_fast` in a checkout imports the source tree first (cwd on sys.path);
    the built `_core` and the `kernels/` mapping must still be found."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    code = (
        "import rmbench_fast.kernels, rmbench_fast.logprobs, rmbench_fast.engine.runner;"
        "from rmbench_fast.plan import have_cpp; assert have_cpp(), 'C++ core not importable'"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = subprocess.run(
        [sys.executable, "-m", "rmbench_fast", "run", "--help"],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and "--ref-model" in proc.stdout, proc.stderr[-2000:]
