"""`--backend native` against `--backend hf` through the whole pipeline, on real RM-Bench records.

fp32 on the CPU, `rmbench_fast.evaluate(...)` for both backends, the first N records of each
shared domain file (chat, code, safety-refuse). Tiny random-init Llama, Mistral, Qwen2 and
Gemma-2 models (2 layers) with SmolLM2's tokenizer and chat template, as causal LMs (reference-free
and with a reference model) and as classifiers, with tied / untied heads, MHA / GQA / MQA.

Checked per model: every per-sample score within |Δ| <= 1e-4 (1 + |s|), and identical style
matrices and accuracies for every domain and the total. The matrices only prove something when
the chosen/rejected comparisons are decided by more than the backends' largest difference, so at
least 95% of them must be decided by 10x that (a near-tie could flip either way).

Default run: 2 records per domain. `pytest -m slow`: the engine issue's 24 per domain.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.helpers.tiny import SMOLLM2_VOCAB, make_tiny_model_dir

pytest.importorskip("transformers")

DOMAIN_FILES = ("chat", "code", "safety-refuse")

# id: (arch, kind, tied, kv_heads)
MODELS: dict[str, tuple[str, str, bool, int]] = {
    "llama-causal-gqa-untied": ("llama", "causal", False, 2),
    "mistral-causal-mqa-tied": ("mistral", "causal", True, 1),
    "qwen2-causal-gqa-untied": ("qwen2", "causal", False, 2),
    "llama-classifier-mha": ("llama", "classifier", False, 4),
    "mistral-classifier-gqa-untied": ("mistral", "classifier", False, 2),
    "qwen2-classifier-gqa-tied": ("qwen2", "classifier", True, 2),
    "gemma2-causal-gqa-tied": ("gemma2", "causal", True, 2),
    "gemma2-classifier-mqa-tied": ("gemma2", "classifier", True, 1),
    "qwen3-causal-gqa-untied": ("qwen3", "causal", False, 2),
    "qwen3-classifier-gqa-tied": ("qwen3", "classifier", True, 2),
}
# (policy, reference) pairs scored as DPO with a reference model
WITH_REF = {"llama-causal+ref-qwen2": ("llama-causal-gqa-untied", "qwen2-causal-gqa-untied")}


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("backend_parity_models")
    return {
        name: make_tiny_model_dir(
            root / name,
            arch,
            kind=kind,
            tie_word_embeddings=tied,
            num_kv_heads=kv,
            vocab_size=SMOLLM2_VOCAB,  # SmolLM2's tokenizer and chat template are copied in
            seed=i,
            initializer_range=0.3,  # wide per-token log-probs: scores far apart, few near-ties
        )
        for i, (name, (arch, kind, tied, kv)) in enumerate(MODELS.items())
    }


def _records_file(data_dir: Path, n: int, dst: Path) -> Path:
    lines = []
    for d in DOMAIN_FILES:
        for rec in json.loads((data_dir / f"{d}_filtered.json").read_text(encoding="utf-8"))[:n]:
            lines.append(json.dumps(dict(rec, domain=rec.get("domain", d))))
    dst.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return dst


def _evaluate(model: Path, data: Path, kind: str, backend: str, ref: Path | None) -> dict[str, Any]:
    from rmbench_fast import evaluate

    return evaluate(
        str(model),
        data=str(data),
        kind="dpo" if kind == "causal" else "classifier",
        ref_model=str(ref) if ref else None,
        ref_free="avg" if kind == "causal" and ref is None else None,
        backend=backend,
        device="cpu",
        dtype="float32",
    )


def _scores(result: dict[str, Any]) -> np.ndarray:
    return np.array([r["score_chosen"] + r["score_rejected"] for r in result["rows"]], dtype=np.float64)


def _decisive_fraction(scores: np.ndarray, margin: float) -> float:
    """Share of chosen_i vs rejected_j comparisons (all records, all 9 style pairs) whose gap
    exceeds `margin`: scores [n, 6] -> float in [0, 1]."""
    return float((np.abs(scores[:, :3, None] - scores[:, None, 3:]) > margin).mean())


def _scored_tokens(model: Path, data: Path) -> np.ndarray:
    """Scored (label) tokens per sequence on the DPO path: [n, 6]."""
    from rmbench_fast.benchmarks.rmbench.data import load_records
    from rmbench_fast.inputs.format import Formatter
    from rmbench_fast.inputs.tokenization import Tokenizer
    from rmbench_fast.pipeline.tokens import tokenize_records

    seqs = tokenize_records(
        load_records(data), Formatter.from_model_dir(model, None), Tokenizer(model), "dpo"
    )
    return np.array([[s.n_labels for s in g] for g in seqs], dtype=np.float64)


def _check_pair(model: Path, data: Path, kind: str, ref: Path | None) -> None:
    hf = _evaluate(model, data, kind, "hf", ref)
    native = _evaluate(model, data, kind, "native", ref)
    assert hf["meta"]["backend"] == "hf" and native["meta"]["backend"] == "native"
    a, b = _scores(hf), _scores(native)
    assert a.shape == b.shape and a.shape[1] == 6
    diff = np.abs(a - b)
    tol = 1e-4 * (1 + np.abs(a))
    if ref is not None:
        # reward = Σ log π - Σ log π_ref: each sum is ~1e4 here and both are fp32, so the
        # difference carries their rounding; allow 5e-6 per scored token on top (as in
        # test_parity_official.py).
        tol = tol + 5e-6 * _scored_tokens(model, data)
    assert np.all(diff <= tol), f"max |Δ| {diff.max():.3e}"
    # the matrix check below is only meaningful if nearly every comparison is decided by far
    # more than the backends' difference (a near-tie could flip either way)
    assert _decisive_fraction(a, 10 * diff.max()) >= 0.95, _decisive_fraction(a, 10 * diff.max())
    assert np.unique(np.round(a, 5)).size > a.size // 2  # scores are not degenerate
    assert set(native["domains"]) == set(hf["domains"]) == {"chat", "code", "safety"}
    for group, want in hf["domains"].items():
        got = native["domains"][group]
        for key in ("matrix", "hard", "normal", "easy", "score", "n"):
            assert got[key] == want[key], (group, key, got[key], want[key])
    for key in ("overall", "hard", "normal", "easy"):
        assert native["total"][key] == hf["total"][key], key


def _run(n: int, tiny_models: dict[str, Path], data_dir: Path, case: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = _records_file(data_dir, n, Path(tmp) / "records.jsonl")
        if case in WITH_REF:
            pol, ref = WITH_REF[case]
            _check_pair(tiny_models[pol], data, "causal", tiny_models[ref])
        else:
            _check_pair(tiny_models[case], data, MODELS[case][1], None)


CASES = [*MODELS, *WITH_REF]


@pytest.mark.parametrize("case", CASES)
def test_native_matches_hf_on_real_records(
    case: str, tiny_models: dict[str, Path], rm_bench_data_dir: Path
) -> None:
    _run(2, tiny_models, rm_bench_data_dir, case)


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_native_matches_hf_24_per_domain(
    case: str, tiny_models: dict[str, Path], rm_bench_data_dir: Path
) -> None:
    _run(24, tiny_models, rm_bench_data_dir, case)


# RoPE scaling cases: id -> (arch, kind, rope_scaling). YaRN with original 2048 of 8192 positions
# (factor 4, as a long-context Qwen2.5 config has it): the correction ramp covers dims 1..4 of 8.
ROPE_MODELS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "qwen2-causal-yarn": (
        "qwen2",
        "causal",
        {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 2048},
    ),
    "qwen3-classifier-yarn": (
        "qwen3",
        "classifier",
        {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 2048},
    ),
    "llama-classifier-dynamic": ("llama", "classifier", {"rope_type": "dynamic", "factor": 2.0}),
}


@pytest.fixture(scope="module")
def rope_models(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("backend_parity_rope_models")
    return {
        name: make_tiny_model_dir(
            root / name,
            arch,
            kind=kind,
            num_kv_heads=2,
            vocab_size=SMOLLM2_VOCAB,
            seed=100 + i,
            rope_scaling=rope,
            initializer_range=0.3,
        )
        for i, (name, (arch, kind, rope)) in enumerate(ROPE_MODELS.items())
    }


@pytest.mark.parametrize("case", list(ROPE_MODELS))
def test_native_matches_hf_with_rope_scaling(
    case: str, rope_models: dict[str, Path], rm_bench_data_dir: Path
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = _records_file(rm_bench_data_dir, 2, Path(tmp) / "records.jsonl")
        _check_pair(rope_models[case], data, ROPE_MODELS[case][1], None)
