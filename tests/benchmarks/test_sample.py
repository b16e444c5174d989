"""The embedded 10-record sample used by the default `python -m rmbench_fast run`.

It must load through the real data loader, cover every domain, and keep RM-Bench's style
contract (0 = concise, 1 = detailed plain text, 2 = detailed markdown) so the style/substance
matrix of the demo means something.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from importlib.resources import as_file, files
from pathlib import Path

import pytest

from rmbench_fast.benchmarks.rmbench.data import load_records
from rmbench_fast.records import DOMAINS, N_STYLES, Record

PER_DOMAIN = 2

# Markdown markers that must never show up in plain text (style 1) and at least one of which
# must show up in the markdown style (style 2). Line-anchored patterns use re.MULTILINE.
_MD_PATTERNS = {
    "header": re.compile(r"^#{1,6} ", re.MULTILINE),
    "bold": re.compile(r"\*\*\S"),
    "fence": re.compile(r"```"),
    "bullet": re.compile(r"^\s*[-*+] ", re.MULTILINE),
    "numbered": re.compile(r"^\s*\d+\. ", re.MULTILINE),
    "table": re.compile(r"^\|.*\|\s*$", re.MULTILINE),
    "inline code": re.compile(r"`[^`\n]+`"),
}


def _markdown_markers(text: str) -> list[str]:
    """Names of the markdown constructs found in `text` (empty for plain text)."""
    found = [name for name, pat in _MD_PATTERNS.items() if pat.search(text)]
    if "#" in text and "header" not in found:
        found.append("hash")  # any '#' at all is suspicious in the plain style
    return found


@pytest.fixture(scope="module")
def sample_path() -> Iterator[Path]:
    with as_file(files("rmbench_fast") / "sample" / "rm_bench_sample.jsonl") as p:
        yield Path(p)


@pytest.fixture(scope="module")
def records(sample_path: Path) -> list[Record]:
    return load_records(sample_path)


def _styles(rec: Record) -> Iterator[tuple[str, int, str]]:
    for side, texts in (("chosen", rec.chosen), ("rejected", rec.rejected)):
        for style, text in enumerate(texts):
            yield side, style, text


def test_sample_file_is_packaged(sample_path: Path) -> None:
    assert sample_path.is_file(), sample_path
    assert sample_path.suffix == ".jsonl"


def test_raw_lines_have_the_documented_fields(sample_path: Path) -> None:
    lines = [ln for ln in sample_path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    assert len(lines) == PER_DOMAIN * len(DOMAINS)
    for ln in lines:
        row = json.loads(ln)
        assert set(row) == {"id", "domain", "prompt", "chosen", "rejected", "subset"}, row.get("id")
        assert row["subset"] == "rmbench_fast-sample"


def test_ten_records_two_per_domain(records: list[Record]) -> None:
    assert len(records) == PER_DOMAIN * len(DOMAINS)
    assert Counter(r.domain for r in records) == {d: PER_DOMAIN for d in DOMAINS}
    assert [r.index for r in records] == list(range(len(records)))


def test_ids_are_unique_and_named_after_their_domain(records: list[Record]) -> None:
    assert len({r.id for r in records}) == len(records)
    for r in records:
        assert re.fullmatch(rf"sample-{re.escape(r.domain)}-[1-9]\d*", r.id), r.id


def test_prompts_are_distinct_and_nonempty(records: list[Record]) -> None:
    prompts = [r.prompt.strip() for r in records]
    assert all(prompts)
    assert len(set(prompts)) == len(prompts)


def test_all_six_responses_of_a_record_differ(records: list[Record]) -> None:
    for r in records:
        texts = [*r.chosen, *r.rejected]
        assert len(texts) == 2 * N_STYLES
        assert len(set(texts)) == len(texts), r.id
        for style in range(N_STYLES):
            assert r.chosen[style] != r.rejected[style], (r.id, style)


def test_concise_is_shorter_than_detailed(records: list[Record]) -> None:
    for r in records:
        for texts in (r.chosen, r.rejected):
            concise, plain, markdown = texts
            assert len(concise) < len(plain), r.id
            assert len(concise) < len(markdown), r.id


def test_detailed_responses_stay_small(records: list[Record]) -> None:
    # The default demo scores all 60 responses with a 135M model on 2 CPU cores: keep them short.
    for r in records:
        for side, style, text in _styles(r):
            words = len(text.split())
            if style == 0:
                assert words <= 80, (r.id, side, style, words)
            else:
                assert 60 <= words <= 220, (r.id, side, style, words)


def test_plain_style_has_no_markdown(records: list[Record]) -> None:
    for r in records:
        for side, style, text in _styles(r):
            if style in (0, 1):
                assert _markdown_markers(text) == [], (r.id, side, style)


def test_markdown_style_has_markdown(records: list[Record]) -> None:
    for r in records:
        for side, style, text in _styles(r):
            if style == 2:
                markers = _markdown_markers(text)
                # headers or bold in every markdown response: the style must be unmistakable
                assert {"header", "bold"} & set(markers), (r.id, side, markers)


def test_markdown_detector_is_not_vacuous() -> None:
    assert _markdown_markers("plain words, 3 - 1 = 2, and a b*c product") == []
    assert "header" in _markdown_markers("## Title\ntext")
    assert "bold" in _markdown_markers("some **bold** text")
    assert "fence" in _markdown_markers("```python\nx = 1\n```")
    assert "bullet" in _markdown_markers("intro\n- item")
    assert "numbered" in _markdown_markers("intro\n1. item")
    assert "hash" in _markdown_markers("x = 1  # comment")


def test_code_answers_run_and_rejected_ones_are_wrong(records: list[Record]) -> None:
    """The code records' chosen functions are correct and every rejected one is not: the sample
    has to reward substance, not style."""
    checks = {
        "fib": lambda f: [f(k) for k in range(11)] == [0, 1, 1, 2, 3, 5, 8, 13, 21, 34, 55],
        "binary_search": lambda f: (
            (f([7], 7), f([1, 3, 5, 7, 9], 9), f([1, 3, 5], 4), f([], 1)) == (0, 4, -1, -1)
        ),
    }
    code = [r for r in records if r.domain == "code"]
    assert code
    for r in code:
        for side, style, text in _styles(r):
            m = re.search(r"^(def (\w+)\(.*(?:\n(?: {4}.*|\s*$))+)", text, re.MULTILINE)
            assert m, (r.id, side, style)
            ns: dict[str, object] = {}
            exec(m.group(1), ns)  # our own sample text, not user input
            name = m.group(2)
            assert checks[name](ns[name]) is (side == "chosen"), (r.id, side, style)
