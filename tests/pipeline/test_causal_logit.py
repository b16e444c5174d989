"""--reward causal-logit:<id>: a causal LM's logit of one token after the prompt and response
(the chat template with its generation prompt), as Llama-3.1-Nemotron-70B-Reward-HF defines it,
against transformers computing the model card's recipe independently."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rmbench_fast import evaluate
from rmbench_fast.benchmarks.rmbench.data import load_records, select
from rmbench_fast.benchmarks.rmbench.metrics import style_matrix
from rmbench_fast.commands import main
from tests.helpers.tiny import SMOLLM2_VOCAB, make_tiny_model_dir

transformers = pytest.importorskip("transformers")

TOKEN = 0


def _card_reference(model_dir: Path, records: list) -> np.ndarray:  # type: ignore[type-arg]
    """The model card's way: apply_chat_template(..., add_generation_prompt=True, tokenize=True),
    one forward, logits[0, -1, TOKEN]."""
    import torch

    tok = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    out = np.zeros((len(records), 6))
    with torch.no_grad():
        for r, rec in enumerate(records):
            for j in range(6):
                msgs = [
                    {"role": "user", "content": rec.prompt},
                    {"role": "assistant", "content": rec.response(j)},
                ]
                ids = tok.apply_chat_template(
                    msgs, add_generation_prompt=True, tokenize=True, return_dict=True
                )
                x = torch.tensor([ids["input_ids"]])
                out[r, j] = float(model(input_ids=x).logits[0, -1, TOKEN])
    return out


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> Path:
    return make_tiny_model_dir(
        tmp_path_factory.mktemp("cl") / "m", "llama", vocab_size=SMOLLM2_VOCAB, seed=21
    )


@pytest.mark.parametrize("backend", ["native", "hf"])
def test_causal_logit_matches_the_model_card(model_dir: Path, rm_bench_data_dir: Path, backend: str) -> None:
    data = rm_bench_data_dir / "chat_filtered.json"
    records = select(load_records(data), limit=3)
    want = _card_reference(model_dir, records)
    got = evaluate(
        str(model_dir), data=str(data), limit=3, reward=f"causal-logit:{TOKEN}", backend=backend,
        device="cpu", dtype="float32", no_cache=True, resamples=0,
    )  # fmt: skip
    scores = np.array([r["score_chosen"] + r["score_rejected"] for r in got["rows"]])
    assert np.all(np.abs(scores - want) <= 1e-4 * (1 + np.abs(want)))
    assert np.array_equal(style_matrix(scores[:, :3], scores[:, 3:]), style_matrix(want[:, :3], want[:, 3:]))
    assert got["meta"]["reward"] == f"causal-logit:{TOKEN}" and got["meta"]["backend"] == backend
    # Another token id is another reward: the test could fail if the id were ignored.
    other = evaluate(
        str(model_dir), data=str(data), limit=3, reward="causal-logit:5", backend=backend,
        device="cpu", dtype="float32", no_cache=True, resamples=0,
    )  # fmt: skip
    assert [r["score_chosen"] for r in other["rows"]] != [r["score_chosen"] for r in got["rows"]]


def test_causal_logit_rejects_bad_use(
    model_dir: Path, rm_bench_data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = [
        "run",
        "--model",
        str(model_dir),
        "--data",
        str(rm_bench_data_dir / "chat_filtered.json"),
        "--limit",
        "1",
    ]
    assert main([*base, "--reward", "causal-logit:x", "--no-progress"]) == 2
    assert "causal-logit:<token_id>" in capsys.readouterr().err
    assert main([*base, "--reward", "causal-logit:0", "--ref-free", "sum", "--no-progress"]) == 2
    assert "takes no --ref-model or --ref-free" in capsys.readouterr().err
