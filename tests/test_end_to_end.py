"""End to end through the public entry points: the CLI on the embedded sample, and the native
engine against the hf reference backend through `evaluate()` on real RM-Bench records."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rmbench_fast import evaluate
from rmbench_fast.commands import main


def test_cli_run_writes_outputs(
    tmp_path: Path, smollm2_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    rc = main(
        [
            "run",
            "--model",
            str(smollm2_dir),
            "--limit",
            "1",
            "--domains",
            "chat",
            "code",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    rows = json.loads((out / "scores.json").read_text())
    assert [r["domain"] for r in rows] == ["chat", "code"]
    for r in rows:
        assert len(r["score_chosen"]) == 3 and len(r["score_rejected"]) == 3
        assert all(np.isfinite(r["score_chosen"] + r["score_rejected"]))
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["domains"]) == {"chat", "code"}
    assert metrics["total"]["missing_domains"] == ["math", "safety"]
    assert metrics["meta"]["reward"] == "avg" and metrics["meta"]["data"]["origin"] == "embedded-sample"
    assert np.array(metrics["domains"]["chat"]["matrix"]).shape == (3, 3)
    printed = capsys.readouterr().out
    assert "RM-Bench accuracy" in printed and "embedded 10-record sample" in printed
    # `report` re-prints from the files alone.
    assert main(["report", str(out)]) == 0
    assert "RM-Bench accuracy" in capsys.readouterr().out


def test_native_matches_hf_backend_on_real_records(smollm2_dir: Path, rm_bench_data_dir: Path) -> None:
    common = dict(
        data=str(rm_bench_data_dir),
        limit=1,
        domains=["chat", "code"],
        ref_free="norm",
        device="cpu",
        dtype="float32",
    )
    native = evaluate(str(smollm2_dir), backend="native", **common)
    hf = evaluate(str(smollm2_dir), backend="hf", **common)
    assert native["meta"]["backend"] == "native" and hf["meta"]["backend"] == "hf"
    s_native = np.array([r["score_chosen"] + r["score_rejected"] for r in native["rows"]])
    s_hf = np.array([r["score_chosen"] + r["score_rejected"] for r in hf["rows"]])
    assert s_native.shape == (2, 6)
    np.testing.assert_allclose(s_native, s_hf, rtol=1e-4, atol=1e-4)
    for d in native["domains"]:
        assert native["domains"][d]["matrix"] == hf["domains"][d]["matrix"]


@pytest.fixture(scope="module")
def tiny_variants(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path):  # noqa: ANN201
    from tests.helpers.smol_variants import make_smol_variants, make_tiny_smol_source

    base = tmp_path_factory.mktemp("tiny_e2e")
    src = make_tiny_smol_source(base / "src", smollm2_dir)
    return make_smol_variants(base / "variants", src)


@pytest.mark.parametrize("use", ["classifier", "classifier_nt", "ref"])
def test_pipeline_native_vs_hf_all_kinds(tiny_variants, rm_bench_data_dir: Path, use: str) -> None:  # noqa: ANN001
    """Classifier (chat template; tulu + add_eos) and DPO with a reference, through evaluate()."""
    common: dict = dict(data=str(rm_bench_data_dir), limit=1, device="cpu", dtype="float32")
    if use == "ref":
        model, common["ref_model"] = tiny_variants.policy, str(tiny_variants.reference)
    else:
        model = getattr(tiny_variants, use)
        if use == "classifier_nt":
            common["chat_template"] = "tulu"
    native = evaluate(str(model), backend="native", **common)
    hf = evaluate(str(model), backend="hf", **common)
    s_native = np.array([r["score_chosen"] + r["score_rejected"] for r in native["rows"]])
    s_hf = np.array([r["score_chosen"] + r["score_rejected"] for r in hf["rows"]])
    assert s_native.shape == (3, 6) and len(np.unique(s_native)) > 6
    np.testing.assert_allclose(s_native, s_hf, rtol=1e-4, atol=1e-4 if use != "ref" else 5e-3)
    meta = native["meta"]
    assert meta["kind"] == ("dpo" if use == "ref" else "classifier")
    if use == "classifier_nt":
        assert meta["chat_template"] == "tulu" and "EOS appended" in meta["classifier_add_eos"]
