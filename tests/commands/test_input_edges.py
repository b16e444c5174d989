"""Four input edges found by running the CLI as a new user would (issue 22): an unwritable
--out, a negative --limit, a JSON object given as --data, and a --batch-tokens smaller than
one record. Each is one line (exit 2) before any scoring, or one note and a record in meta."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rmbench_fast.commands import main
from tests.helpers.paths import SAMPLE


def _one_line(capsys: pytest.CaptureFixture[str], rc: int, *needles: str) -> str:
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("transformers")
    from tests.helpers.tiny import make_tiny_model_dir

    return make_tiny_model_dir(tmp_path_factory.mktemp("edges") / "m", "llama", vocab_size=128)


@pytest.fixture
def no_scoring(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tripwire: any evaluation reaching the scoring step fails the test."""
    import rmbench_fast.pipeline as pipeline

    def tripped(*_a: object, **_k: object) -> None:
        raise AssertionError("scoring started before the bad input was refused")

    monkeypatch.setattr(pipeline, "run_evaluation", tripped)


@pytest.mark.parametrize("where", ["proc", "file"])
def test_unwritable_out_is_refused_before_scoring(
    where: str, tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], no_scoring: None
) -> None:
    if where == "proc":
        if not Path("/proc").is_dir():
            pytest.skip("no /proc on this system")
        out = "/proc/forbidden"
    else:
        blocker = tmp_path / "a-file"
        blocker.write_text("not a directory")
        out = str(blocker / "out")
    rc = main(["run", "--no-progress", "--model", str(tiny_model), "--chat-template", "tulu", "--out", out])
    _one_line(capsys, rc, f"--out {out}", "cannot write the outputs there")
    rc = main(["sweep", str(tiny_model), "--no-progress", "--chat-template", "tulu", "--out", out])
    _one_line(capsys, rc, f"--out {out}", "cannot write the outputs there")


@pytest.mark.parametrize("limit", ["-3", "0"])
def test_limit_below_one(limit: str, capsys: pytest.CaptureFixture[str], no_scoring: None) -> None:
    rc = main(["run", "--no-progress", "--limit", limit, "--out", "unused"])
    _one_line(capsys, rc, "--limit must be at least 1", f"got {limit}")
    rc = main(["run", "--no-progress", "--kind", "generative", "--judge-engine", "vllm", "--limit", limit])
    _one_line(capsys, rc, "--limit must be at least 1")


@pytest.mark.parametrize("content", [{"a": 1}, {"chat": [1, 2]}, {}, 7])
def test_json_object_data_says_what_was_expected(
    content: object, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from rmbench_fast.benchmarks.rmbench.data import load_records
    from rmbench_fast.errors import DataError

    path = tmp_path / "thing.json"
    path.write_text(json.dumps(content))
    with pytest.raises(DataError) as e:
        load_records(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: a JSON "), msg
    assert "not RM-Bench data" in msg and "a list of records" in msg and "per-domain layout" in msg
    assert "record 0" not in msg
    rc = main(["run", "--no-progress", "--data", str(path), "--out", str(tmp_path / "o")])
    _one_line(
        capsys, rc, str(path), "expected a list of records (total_dataset.json) or the per-domain layout"
    )


def test_id_mapping_and_single_record_still_load(tmp_path: Path) -> None:
    """The two object layouts seen in the wild keep working: {id: record} and one record."""
    from rmbench_fast.benchmarks.rmbench.data import load_records

    rec = json.loads(SAMPLE.read_text().splitlines()[0])
    mapping, single = tmp_path / "m.json", tmp_path / "s.json"
    mapping.write_text(json.dumps({"x": rec, "y": rec}))
    single.write_text(json.dumps(rec))
    assert len(load_records(mapping)) == 2 and len(load_records(single)) == 1


def test_small_batch_tokens_is_raised_once_and_recorded(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--batch-tokens 10 with a reference model (two native passes): one note, and meta says
    what was asked and what ran; the scores equal a run with the budget given right away."""
    out, ref = tmp_path / "o", tmp_path / "ref"
    common = ["run", "--no-progress", "--model", str(tiny_model), "--ref-model", str(tiny_model)]
    common += ["--chat-template", "tulu", "--limit", "1", "--resamples", "0", "--no-cache"]
    common += ["--ref-mode", "reference-first"]
    assert main([*common, "--batch-tokens", "10", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("--batch-tokens 10 is smaller than the longest record") == 1, printed
    assert "native: raising the token budget" not in printed  # the schedulers had nothing to raise
    meta = json.loads((out / "metrics.json").read_text())["meta"]
    used = meta["batch_tokens_raised"]["used"]
    assert meta["batch_tokens_raised"] == {"asked": 10, "used": used} and used > 10
    assert meta["settings"]["batch_tokens"] == 10
    assert meta["scorer_stats"]["batch_tokens"] == used
    assert meta["reference_scorer_stats"]["batch_tokens"] == used
    assert main([*common, "--batch-tokens", str(used), "--out", str(ref)]) == 0
    assert "smaller than the longest record" not in capsys.readouterr().out
    assert json.loads((ref / "metrics.json").read_text())["meta"]["batch_tokens_raised"] is None
    assert (out / "scores.json").read_bytes() == (ref / "scores.json").read_bytes()


@pytest.mark.parametrize("limit", [-3, 0])
def test_evaluate_limit_below_one(limit: int) -> None:
    """The Python API refuses it as the CLI does, naming its own keyword."""
    from rmbench_fast import evaluate
    from rmbench_fast.errors import UsageError

    with pytest.raises(UsageError, match=f"limit must be at least 1 \\(records per domain\\), got {limit}"):
        evaluate(None, limit=limit, progress=False)
