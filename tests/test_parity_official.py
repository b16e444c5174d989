"""Parity with the official RM-Bench / reward-bench code (fp32, CPU).

Our whole pipeline (`rmbench_fast.evaluate`, i.e. what `python -m rmbench_fast run` computes, with
the hf backend and with the native engine) vs the oracle driver `tests/helpers/official.py`,
which runs the official DPOInference / RewardBenchPipeline the way RM-Bench's run_dpo.py and
run_rm.py do. Every score must agree within |Δ| <= 1e-4·(1 + |s|).

Data: the first N records of each shared domain file (chat, code, safety-refuse): N = 4 by default,
N = 12 in the slow test (the DPO parts alone took ~13 min there on 2 shared cores).
Models:
- default (fast): a 2-layer random Llama with SmolLM2's tokenizer, chat template and token ids
  (`make_tiny_smol_source`); the reference is a perturbed copy, the classifier gets a random
  score head. Tokenization, templating, truncation, pooling and reduction are what is checked
  here, and they do not depend on model size.
- slow: the same checks on the real SmolLM2-135M-Instruct variants (RMBF_PARITY_N records per
  domain, default 3).

Needs `pip install --no-deps rewardbench` (+ `fschat==0.2.36` for the no-template classifier).
"""

from __future__ import annotations

import importlib.util
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.helpers.official import official_dpo_scores, official_rm_scores
from tests.helpers.smol_variants import SmolVariants, make_smol_variants, make_tiny_smol_source

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "rm-bench"
DOMAINS = ("chat", "code", "safety-refuse")
N_FAST = 4  # per domain; the slow test runs the brief's 12 (CPU time: ~3x)
N_FULL = 12
N_SLOW = int(os.environ.get("RMBF_PARITY_N", "3"))

if not all((DATA / f"{d}_filtered.json").is_file() for d in DOMAINS):
    pytest.skip(f"RM-Bench data not found at {DATA} (needs ../shared/data/rm-bench)", allow_module_level=True)
if importlib.util.find_spec("rewardbench") is None:
    pytest.skip("official code missing: pip install --no-deps rewardbench", allow_module_level=True)
pytest.importorskip("transformers")


def _records(n: int) -> list[dict]:
    out = []
    for d in DOMAINS:
        out += [
            dict(r, domain=d)
            for r in json.loads((DATA / f"{d}_filtered.json").read_text(encoding="utf-8"))[:n]
        ]
    return out


def _ours(
    model_dir: Path,
    kind: str,
    records: list[dict],
    *,
    ref: Path | None = None,
    mode: str = "avg",
    template: str = "tulu",
    backend: str = "hf",
) -> tuple[np.ndarray, np.ndarray]:
    """The whole pipeline, as `python -m rmbench_fast run` runs it (fp32, CPU) ->
    (scores [n, 6], scored tokens per sequence [n, 6])."""
    from rmbench_fast import evaluate
    from rmbench_fast.benchmarks.rmbench.data import load_records
    from rmbench_fast.inputs.format import Formatter
    from rmbench_fast.inputs.tokenization import Tokenizer
    from rmbench_fast.pipeline.tokens import tokenize_records

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "records.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        result = evaluate(
            str(model_dir),
            data=str(data),
            kind=kind,
            ref_model=str(ref) if ref else None,
            ref_free=mode if kind == "dpo" and ref is None else None,
            chat_template=template,
            backend=backend,
            device="cpu",
            dtype="float32",
        )
        recs = load_records(data)
    assert result["meta"]["backend"] == backend
    scores = np.array([r["score_chosen"] + r["score_rejected"] for r in result["rows"]], dtype=np.float64)
    seqs = (
        tokenize_records(recs, Formatter.from_model_dir(model_dir, template), Tokenizer(model_dir), "dpo")
        if kind == "dpo"
        else None
    )
    n_labels = (
        np.array([[s.n_labels for s in g] for g in seqs], dtype=np.float64) if seqs else np.zeros_like(scores)
    )
    return scores, n_labels


_OFFICIAL: dict[tuple, Any] = {}


def _cached(fn: Callable[..., Any], model: Path, records: list[dict], **kw: object) -> Any:
    """fn(model, records, **kw) from the official code, computed once for both backends."""
    key = (
        fn.__name__,
        str(model),
        tuple(r["id"] for r in records),
        tuple(sorted((k, str(v)) for k, v in kw.items())),
    )
    if key not in _OFFICIAL:
        _OFFICIAL[key] = fn(model, records, **kw)
    return _OFFICIAL[key]


def _official_dpo(model: Path, records: list[dict], **kw: object) -> np.ndarray:
    return _cached(official_dpo_scores, model, records, **kw)


def _official_rm(model: Path, records: list[dict], **kw: object) -> tuple[np.ndarray, dict]:
    return _cached(official_rm_scores, model, records, **kw)


BACKENDS = pytest.mark.parametrize("backend", ["hf", "native"])


def _assert_close(ours_n: tuple[np.ndarray, np.ndarray], official: np.ndarray, *, ref: bool = False) -> None:
    """|Δ| <= 1e-4·(1+|s|); with a reference model plus 5e-6 per scored token: s = Σπ − Σπ_ref is a
    small difference of two large fp32 sums (|Σ| ~ 10^4 here) whose rounding (~1e-8·|Σ| per
    summation order) both sides have, so the bound must scale with the sums, not with s."""
    ours, n_labels = ours_n
    assert ours.shape == official.shape
    assert np.isfinite(ours).all() and np.isfinite(official).all()
    tol = 1.0 + np.abs(official) + (0.05 * n_labels if ref else 0.0)
    err = np.abs(ours - official) / tol
    worst = np.unravel_index(int(np.argmax(err)), err.shape)
    assert err.max() <= 1e-4, (
        f"record {worst[0]} slot {worst[1]}: ours {ours[worst]} vs official {official[worst]}"
    )
    # The check must be able to fail: in every record the six scores spread wider than the
    # tolerance, so a score read at the wrong slot or token would not pass.
    assert np.ptp(official, axis=1).min() > 3e-4 * (1 + np.abs(official).max())


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> SmolVariants:
    base = tmp_path_factory.mktemp("smol_tiny")
    src = make_tiny_smol_source(base / "policy")
    return make_smol_variants(base, src, ref_noise=0.1)


@pytest.fixture(scope="session")
def records() -> list[dict]:
    return _records(N_FAST)


@BACKENDS
def test_dpo_ref_free_avg(tiny: SmolVariants, records: list[dict], backend: str) -> None:
    _assert_close(_ours(tiny.policy, "dpo", records, backend=backend), _official_dpo(tiny.policy, records))


@BACKENDS
def test_dpo_ref_free_norm_and_sum(tiny: SmolVariants, records: list[dict], backend: str) -> None:
    sub = records[::4]  # the other reductions over the same tokenization: a subset suffices
    for mode in ("norm", "sum"):
        _assert_close(
            _ours(tiny.policy, "dpo", sub, mode=mode, backend=backend),
            _official_dpo(tiny.policy, sub, ref_free_type=mode),
        )


@BACKENDS
def test_dpo_with_reference(tiny: SmolVariants, records: list[dict], backend: str) -> None:
    sub = records[::2]  # 2 per domain: two models per side make this the costliest check
    ours = _ours(tiny.policy, "dpo", sub, ref=tiny.reference, backend=backend)
    _assert_close(ours, _official_dpo(tiny.policy, sub, ref_model_dir=tiny.reference), ref=True)


@BACKENDS
def test_classifier_chat_template(tiny: SmolVariants, records: list[dict], backend: str) -> None:
    official, facts = _official_rm(tiny.classifier, records)
    assert facts["add_eos_token"] is False
    _assert_close(_ours(tiny.classifier, "classifier", records, backend=backend), official)


@BACKENDS
def test_classifier_no_template_tulu(tiny: SmolVariants, records: list[dict], backend: str) -> None:
    pytest.importorskip("fastchat.conversation", reason="pip install --no-deps fschat==0.2.36")
    official, facts = _official_rm(tiny.classifier_nt, records, conv_name="tulu")
    assert facts["add_eos_token"] is True
    _assert_close(
        _ours(tiny.classifier_nt, "classifier", records, template="tulu", backend=backend), official
    )


@pytest.mark.slow
@BACKENDS
def test_tiny_all_uses_12_per_domain(tiny: SmolVariants, backend: str) -> None:
    """The brief's size: first 12 records of each domain (~13 min of CPU on 2 busy cores)."""
    recs = _records(N_FULL)
    _assert_close(_ours(tiny.policy, "dpo", recs, backend=backend), _official_dpo(tiny.policy, recs))
    _assert_close(
        _ours(tiny.policy, "dpo", recs, ref=tiny.reference, backend=backend),
        _official_dpo(tiny.policy, recs, ref_model_dir=tiny.reference),
        ref=True,
    )
    _assert_close(
        _ours(tiny.classifier, "classifier", recs, backend=backend), _official_rm(tiny.classifier, recs)[0]
    )


@pytest.mark.slow
def test_real_smollm2_all_uses(tmp_path_factory: pytest.TempPathFactory) -> None:
    v = make_smol_variants(tmp_path_factory.mktemp("smol_real"))
    recs = _records(N_SLOW)
    _assert_close(_ours(v.policy, "dpo", recs), official_dpo_scores(v.policy, recs))
    _assert_close(
        _ours(v.policy, "dpo", recs, ref=v.reference),
        official_dpo_scores(v.policy, recs, ref_model_dir=v.reference),
    )
    _assert_close(_ours(v.classifier, "classifier", recs), official_rm_scores(v.classifier, recs)[0])


# -- Qwen3 and custom reward heads through the official code ------------------------------------
@pytest.fixture(scope="session")
def qwen3_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen3ForSequenceClassification with SmolLM2's tokenizer and chat template."""
    from tests.helpers.tiny import SMOLLM2_VOCAB, make_tiny_model_dir

    return make_tiny_model_dir(
        tmp_path_factory.mktemp("qwen3_official") / "m",
        "qwen3",
        kind="classifier",
        vocab_size=SMOLLM2_VOCAB,
        seed=3,
        initializer_range=0.3,
    )


@BACKENDS
def test_qwen3_classifier_chat_template(qwen3_classifier: Path, records: list[dict], backend: str) -> None:
    official, facts = _official_rm(qwen3_classifier, records)
    assert facts["add_eos_token"] is False
    _assert_close(_ours(qwen3_classifier, "classifier", records, backend=backend), official)


@pytest.fixture(scope="session")
def head_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny INF-ORM and GRM checkpoints written by the wheel's classes, SmolLM2's tokenizer.
    INF-ORM pads with <|endoftext|> (never in the text) rather than SmolLM2's <|im_end|>, which
    its chat template writes after every turn: the head's forward pools at (first pad - 1), and
    with pad = <|im_end|> it would pool inside the system prompt (all six responses tie)."""
    from tests.helpers.tiny import SMOLLM2_VOCAB, make_tiny_head_dir

    root = tmp_path_factory.mktemp("heads_official")
    return {
        "inform": make_tiny_head_dir(
            root / "inform", "inform", vocab_size=SMOLLM2_VOCAB, seed=4, pad_token="<|endoftext|>"
        ),
        "grm": make_tiny_head_dir(root / "grm", "grm", vocab_size=SMOLLM2_VOCAB, seed=5),
    }


@pytest.mark.parametrize("head", ["inform", "grm"])
def test_custom_head_native_matches_official(
    head_models: dict[str, Path], records: list[dict], head: str
) -> None:
    """reward-bench's own model class and pipeline (INFORMForSequenceClassification +
    RewardBenchPipeline, GRewardModel + GRMPipeline) vs the native engine, which runs the head
    without the model's code (`--backend auto` picks it)."""
    from tests.helpers.official import official_head_rm_scores

    key = ("official_head_rm_scores", str(head_models[head]), tuple(r["id"] for r in records))
    if key not in _OFFICIAL:
        _OFFICIAL[key] = official_head_rm_scores(head_models[head], records, head)
    _assert_close(_ours(head_models[head], "classifier", records, backend="native"), _OFFICIAL[key])
