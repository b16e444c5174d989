"""RewardBench 2 with a generative judge (the official ratings mode), against the wheel's code.

The oracle is `tests.helpers.rb2_official.official_ratings_scores`: the wheel's own prompts and
rating functions (`generative_v2.py`), and run_generative_v2.py's scoring after them. Our run
goes through the real CLI and HTTP client to a fake OpenAI-compatible server on loopback whose
answer to a completion is a fixed function of the completion's text, so the oracle gets the
same answers by calling that function directly.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import pytest

from rmbench_fast.benchmarks.rewardbench2.ratings import (
    RATINGS_PROMPT,
    RATINGS_PROMPT_TIES,
    parse_rating,
    ratings_credit,
)
from rmbench_fast.commands import main
from tests.helpers.rb2_sample import sample_rows
from tests.helpers.require import absent, missing
from tests.judge.test_judge_fake_server import FakeServer

# What the fake judge may answer, and the rating each one parses to under the official rule.
ANSWERS = [
    ("Clear and correct.\n\n9", 9),
    ("Rating: 10", 10),
    ("Decent, some gaps. 7/10", 10),  # the last integer 1..10 is what counts: 10
    ("Mediocre.\n3\n", 3),
    ("Off topic. 11", -1),  # 11 is not 1..10, and "1" inside "11" has no word boundary
    ("Fine. **8**", -1),  # markdown after the number
    ("I would give it a 5.", -1),  # text (a full stop) after the number
    ("No rating.", -1),
    ("Solid: 6", 6),
    ("Weak\n\n 2 ", 2),
]


def _completion(prompt: str) -> str:
    return prompt.split("[Response]\n", 1)[1].rsplit("\n\n[Your judgement]", 1)[0]


def judge_answer(prompt: str) -> str:
    """The fake judge: UNRATEABLE -> no rating, EIGHT -> 8 (ties at the max), else by hash."""
    c = _completion(prompt)
    if "UNRATEABLE" in c:
        return "I cannot rate this."
    if "EIGHT" in c:
        return "Good.\n8"
    return ANSWERS[hashlib.sha256(c.encode()).digest()[0] % len(ANSWERS)][0]


def _rows() -> list[dict[str, Any]]:
    rows = sample_rows()
    extra = {
        "prompt": "Say hi.",
        "num_correct": 1,
        "total_completions": 4,
        "subset": "Focus",
    }
    rows.append({**extra, "id": "all-invalid", "chosen": ["UNRATEABLE a"], "rejected": ["UNRATEABLE b"] * 3})
    rows.append({**extra, "id": "tie-3", "chosen": ["EIGHT a"], "rejected": ["EIGHT b", "EIGHT c", "low"]})
    rows.append({**extra, "id": "tie-lost", "chosen": ["UNRATEABLE c"], "rejected": ["EIGHT d", "x", "y"]})
    return rows


def _server_hook(n: int, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, dict[str, str], Any]:
    text = judge_answer(body["messages"][0]["content"])
    return (
        200,
        {},
        {
            "id": f"c{n}",
            "object": "chat.completion",
            "model": body["model"],
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 100, "completion_tokens": 5, "total_tokens": 105},
        },
    )


def test_prompts_and_parser_are_the_wheels() -> None:
    why = absent("official")
    if why:
        missing("official", why)
    from tests.helpers.rb2_official import official_ratings

    ns = official_ratings(lambda m, t, temp: "")
    assert RATINGS_PROMPT == ns["ratings_prompt"]
    assert RATINGS_PROMPT_TIES == ns["ratings_prompt_ties"]
    assert ns["_get_single_rating"]("q", "a", "fake-judge", None, False)[0] == -1  # an empty answer
    for text, want in ANSWERS:
        ns_one = official_ratings(lambda m, t, temp, text=text: text)
        official = ns_one["_get_single_rating"]("q", "a", "fake-judge", None, False)[0]
        assert parse_rating(text) == official == want, text
    assert parse_rating("") == parse_rating(None) == -1


def test_ratings_credit_rule() -> None:
    assert ratings_credit([9, 3, 2, 1]) == 1.0
    assert ratings_credit([8, 8, 8, 1]) == pytest.approx(1 / 3)
    assert ratings_credit([-1, 8, 2, 1]) == 0.0
    assert ratings_credit([-1, -1, -1, -1]) == 0.25
    assert ratings_credit([-1, -1]) == 0.25  # the official constant, whatever N is
    assert ratings_credit([5, -1, -1, -1]) == 1.0


def test_rb2_judge_run_matches_the_official_ratings_mode(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    why = absent("official")
    if why:
        missing("official", why)
    from tests.helpers.rb2_official import official_ratings_scores

    rows = _rows()
    data = tmp_path / "rb2.json"
    data.write_text(json.dumps(rows))
    want, want_results, want_ratings = official_ratings_scores(
        rows, lambda messages, max_tokens, temperature: judge_answer(messages[0]["content"])
    )
    out = tmp_path / "out"
    argv = [
        "run", "--benchmark", "rewardbench2", "--kind", "generative", "--data", str(data),
        "--out", str(out), "--judge-model", "fake-judge", "--no-progress", "--no-cache",
        "--resamples", "50", "--retry-backoff", "0.01",
    ]  # fmt: skip
    with FakeServer(hook=_server_hook) as server:
        rc = main([*argv, "--judge-endpoint", server.url])
        err = capsys.readouterr().err
        assert rc == 0, err
        sent = list(server.chat)
    n_completions = sum(r["total_completions"] for r in rows)
    assert len(sent) == n_completions
    # The official request: one user turn, greedy, at most 1024 new tokens.
    assert {b["max_tokens"] for b in sent} == {1024} and {b["temperature"] for b in sent} == {0.0}
    assert all(len(b["messages"]) == 1 and b["messages"][0]["role"] == "user" for b in sent)
    ties_prompts = [
        b["messages"][0]["content"] for b in sent if "need not consider depth" in b["messages"][0]["content"]
    ]
    assert len(ties_prompts) == sum(r["total_completions"] for r in rows if r["subset"] == "Ties")

    metrics = json.loads((out / "metrics.json").read_text())
    for subset, score in want.items():
        got = metrics["subsets"][subset]["score"]
        assert (math.isnan(got) and math.isnan(score)) or got == score, (subset, got, score)
    assert metrics["overall"]["n_subsets"] == 6
    scores = json.loads((out / "scores.json").read_text())
    assert [r["scores"] for r in scores] == [[float(x) for x in r] for r in want_ratings]
    for r, res in zip(scores, want_results):
        if r["subset"] != "Ties":
            assert r["credit"] == res, r
    by_id = {r["id"]: r for r in scores}
    assert by_id["all-invalid"]["credit"] == 0.25 and by_id["tie-3"]["credit"] == pytest.approx(1 / 3)
    assert by_id["tie-lost"]["credit"] == 0.0
    meta = metrics["meta"]
    assert meta["benchmark"] == "rewardbench2" and meta["kind"] == "generative"
    assert meta["judgments"]["prompts_without_a_valid_rating"] == 1
    assert meta["judgments"]["parse_failures"] == sum(1 for r in want_ratings for v in r if v == -1)
    lines = (out / "judgments.jsonl").read_text().splitlines()
    assert len(lines) == n_completions

    # A rerun with the server gone answers everything from the run's log, with the same outputs.
    before = (out / "scores.json").read_bytes()
    rc = main([*argv, "--judge-endpoint", "http://127.0.0.1:9"])
    assert rc == 0, capsys.readouterr().err
    assert (out / "scores.json").read_bytes() == before


def test_rb2_judge_refuses_what_does_not_apply(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "rb2.json"
    data.write_text(json.dumps(sample_rows()))
    base = ["run", "--benchmark", "rewardbench2", "--kind", "generative", "--data", str(data),
            "--judge-endpoint", "http://127.0.0.1:9", "--judge-model", "m", "--out", str(tmp_path / "o")]  # fmt: skip
    for extra, needle in (
        (["--judge-template", str(data)], "--judge-template"),
        (["--domains", "chat"], "--domains"),
    ):
        rc = main([*base, *extra])
        err = capsys.readouterr().err
        assert rc == 2 and len(err.strip().splitlines()) == 1 and needle in err, err
