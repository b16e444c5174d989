"""Data loading and validation (SPEC §1): formats, selection, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rmbench_fast.benchmarks.rmbench.data import load_records, select
from rmbench_fast.errors import DataError
from tests.helpers.paths import RM_BENCH_DATA

SHARED = RM_BENCH_DATA


def _row(i: int, **kw: Any) -> dict[str, Any]:
    row = {"id": i, "prompt": f"q{i}", "chosen": ["a", "bb", "cc"], "rejected": ["x", "yy", "zz"]}
    row.update(kw)
    return row


def _write(path: Path, rows: Any) -> Path:
    path.write_text(json.dumps(rows))
    return path


def test_domain_from_filename(tmp_path: Path) -> None:
    recs = load_records(_write(tmp_path / "code_filtered.json", [_row(1), _row(2)]))
    assert [r.domain for r in recs] == ["code", "code"]
    assert recs[1].id == "2" and recs[1].index == 1


def test_total_format_and_directory(tmp_path: Path) -> None:
    _write(tmp_path / "a.json", [_row(1, domain="chat"), _row(2, domain="safety-response")])
    (tmp_path / "b.jsonl").write_text(json.dumps(_row(3, domain="math")) + "\n\n")
    recs = load_records(tmp_path)
    assert [r.domain for r in recs] == ["chat", "safety-response", "math"]


def test_parquet(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = [_row(1, domain="chat"), _row(2, domain="code")]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "x.parquet")
    recs = load_records(tmp_path / "x.parquet")
    assert [r.chosen for r in recs] == [("a", "bb", "cc")] * 2


def test_select(tmp_path: Path) -> None:
    rows = [_row(i, domain=d) for i, d in enumerate(["chat", "chat", "code", "safety-refuse", "chat"])]
    recs = load_records(_write(tmp_path / "t.json", rows))
    assert [r.id for r in select(recs, limit=1)] == ["0", "2", "3"]
    assert [r.id for r in select(recs, domains=["safety"])] == ["3"]
    assert [r.id for r in select(recs, ids=["4", "2"])] == ["2", "4"]
    with pytest.raises(DataError, match="unknown domain"):
        select(recs, domains=["poetry"])


# The bad-input kinds of the foundation issue that concern data (1-6).
BAD_CASES = {
    "unparsable_json": ("{not json", "invalid JSON"),
    "missing_field": (
        [{"id": 5, "chosen": ["a", "b", "c"], "rejected": ["a", "b", "c"]}],
        "missing field 'prompt'",
    ),
    "two_chosen": ([_row(5, chosen=["a", "b"])], "exactly 3 responses"),
    "empty_response": ([_row(5, rejected=["a", " ", "c"])], "response 1 is empty"),
    "unknown_domain": ([_row(5, domain="poetry")], "unknown domain 'poetry'"),
    "non_string_prompt": ([_row(5, prompt=["q"])], "expected a string, got list"),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_input_one_line_error(tmp_path: Path, case: str) -> None:
    content, expected = BAD_CASES[case]
    path = tmp_path / "bad.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(DataError) as info:
        load_records(path)
    msg = str(info.value)
    assert expected in msg
    assert "\n" not in msg
    assert str(path) in msg
    if case != "unparsable_json":
        assert "record 0 (id '5')" in msg


def test_field_named_in_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"field 'chosen\[2\]'"):
        load_records(_write(tmp_path / "chat_filtered.json", [_row(1), _row(2, chosen=["a", "b", 3])]))


def test_missing_path() -> None:
    with pytest.raises(DataError, match="no such file"):
        load_records("/nonexistent/x.json")


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data/rm-bench is absent (CI provides it)")
def test_real_rm_bench_files_load() -> None:
    recs = load_records(SHARED)
    counts: dict[str, int] = {}
    for r in recs:
        counts[r.domain] = counts.get(r.domain, 0) + 1
    assert counts == {"chat": 129, "code": 228, "safety-refuse": 284}


def test_hf_hub_cache_lookup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rmbench_fast.benchmarks.rmbench.data import hf_cached_dataset
    from rmbench_fast.pipeline.data import resolve_data_source

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "nothing"))
    assert hf_cached_dataset() is None
    assert resolve_data_source(None)[1] == "embedded-sample"
    snap = tmp_path / "datasets--THU-KEG--RM-Bench" / "snapshots" / "abc123"
    (snap / "data").mkdir(parents=True)
    _write(snap / "data" / "total_dataset.json", [_row(1, domain="chat")])
    (snap / "README.md").write_text("x")
    path, origin, _ = resolve_data_source(None)
    assert origin == "huggingface-cache" and path.name == "total_dataset.json"
    assert [r.domain for r in load_records(path)] == ["chat"]
