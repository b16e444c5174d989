"""bench/make_random_model.py: real shapes (parameter counts of the published models) and a
loadable directory (the tiny shape, through the engine's own loader)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from bench import make_random_model as mrm


@pytest.mark.parametrize(
    ("shape", "billions", "classifier"),
    [
        ("llama-3.1-8b", 8.03, False),
        ("qwen2-7b", 7.62, False),
        ("gemma-2-9b", 9.24, False),
        ("qwen3-8b", 8.19, False),
        ("qwen3-8b", 7.57, True),  # Skywork-Reward-V2-Qwen3-8B: no LM head, a [1, H] score
    ],
)
def test_shapes_match_the_published_parameter_counts(shape: str, billions: float, classifier: bool) -> None:
    shapes = mrm.tensor_shapes(mrm.shape_config(shape, classifier=classifier))
    n = sum(math.prod(s) for s in shapes.values())
    assert round(n / 1e9, 2) == billions


def test_tiny_model_writes_and_loads(tmp_path: Path, smollm2_dir: Path) -> None:
    from rmbench_fast.engine import load_model

    out = mrm.write_random_model(
        "tiny", tmp_path / "tiny", dtype="float32", device="cpu", shard_bytes=1 << 20
    )
    assert len(list(out.glob("*.safetensors"))) > 1  # sharded, with an index
    model = load_model(out)
    assert model.model.embed_tokens.weight.shape == (49152, 64)
    assert (out / "tokenizer.json").is_file()
