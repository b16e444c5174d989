"""--device-map auto: the hf backend loads through accelerate's device map (here: all on the
CPU) and scores as without it; it does not combine with --backend native."""

from __future__ import annotations

from pathlib import Path

import pytest

from rmbench_fast import evaluate
from rmbench_fast.commands import main
from tests.helpers.tiny import SMOLLM2_VOCAB, make_tiny_model_dir

pytest.importorskip("transformers")
pytest.importorskip("accelerate")


def test_device_map_auto_scores_as_without(
    tmp_path: Path, smollm2_dir: Path, rm_bench_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformers

    model = make_tiny_model_dir(tmp_path / "m", "llama", vocab_size=SMOLLM2_VOCAB, seed=4)
    seen: list[object] = []
    real = transformers.AutoModelForCausalLM.from_pretrained

    def spy(*a: object, **k: object) -> object:
        seen.append(k.get("device_map"))
        return real(*a, **k)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    common = dict(data=str(rm_bench_data_dir / "chat_filtered.json"), limit=2, device="cpu", dtype="float32",
                  backend="hf", resamples=0)  # fmt: skip
    mapped = evaluate(str(model), device_map="auto", **common)  # type: ignore[arg-type]
    plain = evaluate(str(model), **common)  # type: ignore[arg-type]
    assert seen == ["auto", None]
    assert [r["score_chosen"] for r in mapped["rows"]] == [r["score_chosen"] for r in plain["rows"]]
    argv = ["run", "--model", str(model), "--device-map", "auto", "--backend", "native", "--no-progress"]
    assert main(argv) == 2
