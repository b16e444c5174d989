"""The CLI's bad-input contract: exit code 2, one line naming file/record/field, no traceback,
nothing already written lost. Covers the 12 kinds of the foundation issue end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rmbench_fast.commands import main
from tests.helpers.paths import REPO


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
    the built `_core` and the `kernels/` mapping must still be found (editable install)."""
    import subprocess
    import sys

    repo = REPO
    code = (
        "import rmbench_fast.kernels, rmbench_fast.scoring.logprobs, rmbench_fast.engine.scorer;"
        "from rmbench_fast.scoring.plan import have_cpp; assert have_cpp(), 'C++ core not importable'"
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


def test_resamples_and_seed_options_reach_the_run_config() -> None:
    from rmbench_fast.commands import build_parser
    from rmbench_fast.commands.options import run_config as _config

    args = build_parser().parse_args(["run", "--resamples", "500", "--seed", "7"])
    cfg = _config(args)
    assert (cfg.resamples, cfg.seed) == (500, 7)
    args = build_parser().parse_args(["sweep", "m1", "m2", "--resamples", "0"])
    assert (_config(args).resamples, _config(args).seed) == (0, 0)
    defaults = _config(build_parser().parse_args(["run"]))
    assert (defaults.resamples, defaults.seed) == (10000, 0)


@pytest.mark.parametrize(("flag", "value"), [("--resamples", "-1"), ("--seed", "-3")])
def test_bad_resamples_or_seed(
    tmp_path: Path, good_data: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str
) -> None:
    rc, err = _run(capsys, "--data", str(good_data), "--model", str(tmp_path / "unused"), flag, value)
    _assert_one_line_error(rc, err, flag)


def _fixture_metrics(tmp_path: Path) -> Path:
    """A run directory with metrics.json computed from synthetic scores (no model)."""
    from rmbench_fast.benchmarks.rmbench.metrics import compute_metrics
    from rmbench_fast.records import Record
    from rmbench_fast.results.report import score_rows, write_outputs

    recs = [
        Record(i, str(i), d, "p", ("a", "b", "c"), ("d", "e", "f"), "mem")
        for d, n in {"chat": 40, "code": 50, "safety-response": 30}.items()
        for i in range(n)
    ]
    scores = np.random.default_rng(0).normal(size=(len(recs), 6))
    out = tmp_path / "run"
    write_outputs(out, score_rows(recs, scores), compute_metrics(recs, scores, resamples=1000))
    return out


def test_report_prints_intervals_and_writes_heatmaps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib")
    out = _fixture_metrics(tmp_path)
    m = json.loads((out / "metrics.json").read_text())
    assert main(["report", str(out), "--plot"]) == 0
    printed = capsys.readouterr().out
    ci = m["domains"]["chat"]["ci"]["score"]
    assert f"[{100 * ci['lo']:.1f}, {100 * ci['hi']:.1f}]" in printed
    assert "1000 record resamples per domain, seed 0" in printed
    assert "(no math)" in printed
    for d in ("chat", "code", "safety"):
        png = out / f"matrix_{d}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _boxes_overlap(a: Any, b: Any) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_heatmap_layout_nothing_overlaps_or_is_cut(tmp_path: Path) -> None:
    """Every text lies inside the figure; the title clears the matrix and the colorbar; tick
    labels clear the colorbar (the cramped layout cut 'easy 83' and ran a tick label into it)."""
    pytest.importorskip("matplotlib")

    from rmbench_fast.results.report import matrix_figure

    out = _fixture_metrics(tmp_path)
    m = json.loads((out / "metrics.json").read_text())
    d = m["domains"]["safety"]
    d["n"] = 441
    for case in ("as computed", "widest"):
        if case == "widest":  # every figure and bound at 100.0: the longest title there can be
            for k in ("hard", "normal", "easy", "score"):
                d[k] = 1.0
                d["ci"][k].update(lo=1.0, hi=1.0)
        _check_heatmap_layout(matrix_figure("safety", d))


def _check_heatmap_layout(fig: Any) -> None:
    import matplotlib.pyplot as plt

    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    ax, cax = fig.axes
    fig_box = fig.bbox
    texts = [t for t in fig.findobj(lambda a: type(a).__name__ == "Text") if t.get_text() and t.get_visible()]
    for t in texts:
        b = t.get_window_extent(r)
        assert fig_box.x0 <= b.x0 and b.x1 <= fig_box.x1 and fig_box.y0 <= b.y0 and b.y1 <= fig_box.y1, (
            t.get_text()
        )
    title = fig._suptitle.get_window_extent(r)
    assert "easy" in fig._suptitle.get_text() and "[" in fig._suptitle.get_text()
    assert not _boxes_overlap(title, ax.get_window_extent(r))
    assert not _boxes_overlap(title, cax.get_tightbbox(r))
    for t in ax.get_xticklabels() + ax.get_yticklabels():
        assert not _boxes_overlap(t.get_window_extent(r), cax.get_tightbbox(r)), t.get_text()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["concise", "detailed", "markdown"]
    plt.close(fig)


def _fixture_sweep(tmp_path: Path, n_models: int = 3) -> Path:
    from rmbench_fast.benchmarks.rmbench.metrics import compute_metrics
    from rmbench_fast.pipeline.sweep import SWEEP_FILE, summary_row
    from rmbench_fast.records import Record
    from rmbench_fast.utils.atomic import write_json_atomic

    recs = [
        Record(i, str(i), d, "p", ("a", "b", "c"), ("d", "e", "f"), "mem")
        for d, n in {"chat": 30, "math": 30, "code": 30, "safety-refuse": 30}.items()
        for i in range(n)
    ]
    rng = np.random.default_rng(0)
    rows = []
    for k in range(n_models):
        scores = rng.normal(size=(len(recs), 6))
        scores[:, :3] += 0.2 * k  # later checkpoints get better
        result = compute_metrics(recs, scores, resamples=500)
        result["meta"] = {"backend": "native", "seconds": {"total": 1.0}}
        rows.append(summary_row(f"ckpt/step-{100 * (k + 1)}", tmp_path / f"{k:02d}", result))
    out = tmp_path / "sweep"
    write_json_atomic(out / SWEEP_FILE, {"models": rows, "cache_reuses": {}})
    return out


def test_report_on_a_sweep_prints_and_plots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    out = _fixture_sweep(tmp_path)
    assert main(["report", str(out), "--plot"]) == 0
    printed = capsys.readouterr().out
    assert (
        "RM-Bench sweep" in printed
        and "step-300" in printed
        and "95% interval" in printed
        and " ±" in printed
    )
    png = out / "sweep_plot.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_bad_sweep_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "sweep.json").write_text('{"models": []}')
    rc = main(["report", str(tmp_path)])
    _assert_one_line_error(rc, capsys.readouterr().err, "sweep.json", "at least one row")
