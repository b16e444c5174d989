"""`python -m rmbench_fast profile`: the phase breakdown of one run (issue 13, section 4).

The end-to-end tests profile one record of the embedded sample on tiny random models with
SmolLM2's tokenizer; the attribution itself is checked on synthetic profiler events."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from rich.console import Console

from rmbench_fast.commands.options import add_run_options
from rmbench_fast.commands.profile_cmd import add_profile_options, run_profile
from rmbench_fast.perf.profiling import PROFILE_FILE, attribute
from rmbench_fast.pipeline.data import sample_data_path
from rmbench_fast.utils.phases import PREFIX


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_run_options(p)
    add_profile_options(p)
    return p.parse_args(argv)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> dict[str, Path]:
    pytest.importorskip("transformers")
    from tests.helpers.tiny import make_tiny_model_dir

    base = tmp_path_factory.mktemp("profile_models")
    return {
        "dpo": make_tiny_model_dir(base / "dpo", "llama", vocab_size=49152),
        "classifier": make_tiny_model_dir(base / "cls", "llama", kind="classifier", vocab_size=49152),
    }


def _profile(tmp_path: Path, model: Path, *extra: str) -> tuple[dict[str, Any], str]:
    out = tmp_path / "out"
    args = _parse(
        ["--model", str(model), "--data", str(sample_data_path()), "--domains", "chat", "--limit", "1"]
        + ["--device", "cpu", "--out", str(out), "--resamples", "200", *extra]
    )
    buf = io.StringIO()
    assert run_profile(args, Console(file=buf, width=200)) == 0
    return json.loads((out / PROFILE_FILE).read_text()), buf.getvalue()


def _check_sums(doc: dict[str, Any]) -> dict[str, float]:
    phases = {r["phase"]: r["host_s"] for r in doc["phases"]}
    wall = doc["wall_s"]
    # Every interval of the run goes to exactly one phase or to "unattributed".
    assert sum(phases.values()) == pytest.approx(wall, rel=1e-6)
    # The marked phases cover the run: within 10% of the wall time measured with perf_counter
    # around run_evaluation, and what no mark covers is below 10% of it.
    assert doc["phases_sum_s"] == pytest.approx(doc["wall_perf_counter_s"], rel=0.10)
    assert doc["unattributed_s"] < 0.10 * doc["wall_perf_counter_s"], doc["phases"]
    assert all(v >= -1e-6 for v in phases.values()), phases
    return phases


def test_profile_dpo_phases_sum_to_wall_and_trace(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    trace = tmp_path / "trace.json"
    doc, printed = _profile(tmp_path, tiny_models["dpo"], "--trace", str(trace))
    phases = _check_sums(doc)
    marked = ("load", "data_tokenize", "attention", "attn_proj", "mlp", "model_other", "lm_head", "metrics")
    for name in marked:
        assert phases.get(name, 0.0) > 0, (name, phases)
    assert "classifier_head" not in phases
    assert doc["kind"] == "dpo" and doc["backend"] == "native" and doc["n_records"] == 1
    t = doc["tokens"]
    assert t["useful"] >= t["processed"] > 0 and t["labels"] > 0 and t["useful_per_s"] > 0
    assert doc["flops"]["total"] > 0 and doc["mfu"]["matmul"]["flops_per_s"] > 0 and doc["mfu"]["mfu"] > 0
    peak = doc["mfu"]["peak"]  # MFU is against the fastest candidate measured here, not torch.mm alone
    assert peak["flops_per_s"] == max(peak["candidates_flops_per_s"].values())
    assert "torch.mm" in peak["candidates_flops_per_s"]
    assert doc["memory"]["mib"] > 0
    assert doc["results_store"].startswith("off")
    mlp = next(r for r in doc["phases"] if r["phase"] == "mlp")
    assert any(op["op"] in ("aten::mm", "aten::linear", "aten::addmm", "aten::silu") for op in mlp["top_ops"])
    assert "where the time goes" in printed and "MFU" in printed
    events = json.loads(trace.read_text())["traceEvents"]
    names = {e.get("name") for e in events}
    assert {PREFIX + "run", PREFIX + "mlp", PREFIX + "attention", PREFIX + "lm_head"} <= names


def test_profile_classifier(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    doc, _ = _profile(tmp_path, tiny_models["classifier"])
    phases = _check_sums(doc)
    assert phases.get("classifier_head", 0.0) > 0 and "lm_head" not in phases
    assert doc["kind"] == "classifier" and doc["trace"] is None


# --- the attribution on synthetic events -----------------------------------------------------------
class _Range:
    def __init__(self, start: float, end: float) -> None:
        self.start, self.end = start, end

    def elapsed_us(self) -> float:
        return self.end - self.start


def _ev(name: str, start: float, end: float, parent: Any = None, self_cpu: float = 0.0) -> Any:
    return SimpleNamespace(
        name=name,
        device_type="DeviceType.CPU",
        thread=1,
        time_range=_Range(start, end),
        cpu_parent=parent,
        self_cpu_time_total=self_cpu,
        device_time_total=0.0,
    )


def test_attribute_innermost_range_wins() -> None:
    run = _ev(PREFIX + "run", 0, 100)
    body = _ev(PREFIX + "model_other", 10, 60, run)
    attn = _ev(PREFIX + "attention", 20, 30, body)
    mlp = _ev(PREFIX + "mlp", 35, 55, body)
    inner_mlp = _ev(PREFIX + "mlp", 40, 50, mlp)  # a nested mark of the same phase counts once
    metrics = _ev(PREFIX + "metrics", 70, 90, run)
    mm = _ev("aten::mm", 41, 49, inner_mlp, self_cpu=8)
    stray = _ev("aten::add", 62, 64, run, self_cpu=2)
    other_thread = _ev(PREFIX + "load", 0, 100)
    other_thread.thread = 2
    parts = attribute([run, body, attn, mlp, inner_mlp, metrics, mm, stray, other_thread], device=False)
    host = parts["host_us"]
    assert parts["wall_us"] == 100
    assert host["attention"] == 10 and host["mlp"] == 20 and host["model_other"] == 20
    assert host["metrics"] == 20 and host["unattributed"] == 30 and "load" not in host
    assert sum(host.values()) == 100
    assert parts["ops"]["mlp"]["top"][0] == {"op": "aten::mm", "self_cpu_s": 8e-6, "calls": 1}
    assert parts["ops"]["unattributed"]["op_self_cpu_us"] == 2


def test_attribute_needs_the_run_range() -> None:
    with pytest.raises(RuntimeError, match="rmbf::run"):
        attribute([_ev(PREFIX + "mlp", 0, 1)], device=False)


def test_prefix_matches_the_phase_marks() -> None:
    """profile.py keeps its own copy of the prefix (so the CLI parser does not import torch)."""
    from rmbench_fast.perf import profiling as profile
    from rmbench_fast.utils import phases

    assert profile.PREFIX == phases.PREFIX
    assert {"load", "data_tokenize", "planning", "attention", "mlp", "lm_head", "metrics"} <= set(
        phases.PHASES
    )
    assert {name for name, _ in profile.ROWS} >= set(phases.PHASES)
