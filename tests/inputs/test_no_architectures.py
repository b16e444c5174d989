"""config.json with `"architectures": null` (what transformers 5.x saves after loading a GGUF):
the kind comes from the options (--ref-model / --ref-free mean DPO, else --kind), the family from
`model_type`, as the official scripts' Auto classes load it; without a hint, one line asks for
--kind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from rmbench_fast import evaluate
from rmbench_fast.commands import main
from tests.helpers.tiny import SMOLLM2_VOCAB, make_tiny_model_dir

pytest.importorskip("transformers")

OPTS = dict(device="cpu", dtype="float32", no_cache=True, resamples=0, limit=2)


def _strip_architectures(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["architectures"] = None
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def _scores(result: dict) -> list[list[float]]:  # type: ignore[type-arg]
    return [r["score_chosen"] + r["score_rejected"] for r in result["rows"]]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("noarch")
    out: dict[str, Path] = {}
    for arch, kind in (("llama", "causal"), ("qwen3", "classifier")):
        named = make_tiny_model_dir(
            root / f"{arch}-{kind}", arch, kind=kind, vocab_size=SMOLLM2_VOCAB, seed=5
        )
        out[f"{arch}-{kind}"] = named
        out[f"{arch}-{kind}-null"] = _strip_architectures(named, root / f"{arch}-{kind}-null")
    return out


@pytest.mark.parametrize("backend", ["native", "hf"])
def test_ref_free_means_dpo(dirs: dict[str, Path], rm_bench_data_dir: Path, backend: str) -> None:
    data = str(rm_bench_data_dir / "chat_filtered.json")
    want = evaluate(str(dirs["llama-causal"]), data=data, ref_free="sum", backend=backend, **OPTS)
    got = evaluate(str(dirs["llama-causal-null"]), data=data, ref_free="sum", backend=backend, **OPTS)
    assert got["meta"]["backend"] == backend
    assert _scores(got) == _scores(want)


def test_ref_model_means_dpo(dirs: dict[str, Path], rm_bench_data_dir: Path) -> None:
    data = str(rm_bench_data_dir / "chat_filtered.json")
    null = str(dirs["llama-causal-null"])
    want = evaluate(str(dirs["llama-causal"]), data=data, ref_model=str(dirs["llama-causal"]), **OPTS)
    got = evaluate(null, data=data, ref_model=null, **OPTS)
    assert got["meta"]["backend"] == "native"
    assert _scores(got) == _scores(want)


@pytest.mark.parametrize("backend", ["native", "hf"])
def test_kind_classifier_maps_model_type(
    dirs: dict[str, Path], rm_bench_data_dir: Path, backend: str
) -> None:
    data = str(rm_bench_data_dir / "chat_filtered.json")
    want = evaluate(str(dirs["qwen3-classifier"]), data=data, backend=backend, **OPTS)
    got = evaluate(str(dirs["qwen3-classifier-null"]), data=data, kind="classifier", backend=backend, **OPTS)
    assert got["meta"]["backend"] == backend
    assert _scores(got) == _scores(want)


def test_no_hint_asks_for_kind(
    dirs: dict[str, Path], rm_bench_data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = str(rm_bench_data_dir / "chat_filtered.json")
    rc = main(
        ["run", "--model", str(dirs["llama-causal-null"]), "--data", data, "--limit", "1", "--no-progress"]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1, err
    assert "no architectures" in err and "--kind" in err and "llama-causal-null" in err
