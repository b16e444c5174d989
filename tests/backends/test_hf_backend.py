"""HFScorer on tiny random models vs plain one-sequence references (SPEC §4/§5)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rmbench_fast.backends.hf import HFScorer, resolve_classifier_pad_id
from rmbench_fast.errors import UsageError
from rmbench_fast.records import TokSeq
from rmbench_fast.scoring.rewards import reward_from_logprobs
from tests.helpers.tiny import make_tiny_model_dir

transformers = pytest.importorskip("transformers")

V, BOS, EOS = 128, 1, 2  # tiny models: pad = eos = 2


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("hf_tiny")
    return {
        "cls": make_tiny_model_dir(base / "cls", kind="classifier", vocab_size=V, seed=1),
        "pol": make_tiny_model_dir(base / "pol", vocab_size=V, seed=2),
        "ref": make_tiny_model_dir(base / "ref", vocab_size=V, seed=3),
    }


def _rand_ids(rng: np.random.Generator, n: int) -> list[int]:
    return [int(x) for x in rng.integers(3, V, size=n)]  # never BOS/EOS


def _classifier_records(n: int, seed: int = 0) -> list[list[TokSeq]]:
    """Odd lengths; text + trailing EOS (= pad) pooled before it; every 3rd with a masked double BOS."""
    rng = np.random.default_rng(seed)
    recs = []
    for r in range(n):
        rec = []
        for j in range(6):
            body = _rand_ids(rng, int(rng.integers(3, 17)))
            double = (r + j) % 3 == 0
            ids = ([BOS, BOS] if double else [BOS]) + body + [EOS]
            rec.append(TokSeq(ids=ids, label_start=len(ids), pool_index=len(ids) - 2, mask_first=double))
        recs.append(rec)
    return recs


def _dpo_records(n: int, seed: int = 0) -> list[list[TokSeq]]:
    rng = np.random.default_rng(seed)
    recs = []
    for _ in range(n):
        prompt = [BOS, *_rand_ids(rng, int(rng.integers(1, 9)))]
        rec = []
        for _j in range(6):
            ids = prompt + _rand_ids(rng, int(rng.integers(1, 13))) + [EOS]
            rec.append(TokSeq(ids=ids, label_start=len(prompt)))
        recs.append(rec)
    return recs


def _load(path: Path, cls: type) -> torch.nn.Module:
    return cls.from_pretrained(str(path), dtype=torch.float64).eval()


def _ref_classifier(path: Path, seq: TokSeq) -> float:
    """Unpadded float64 forward of one sequence; the score head read at pool_index."""
    model = _load(path, transformers.AutoModelForSequenceClassification)
    ids = torch.tensor([seq.ids])
    mask = torch.ones_like(ids)
    if seq.mask_first:
        mask[0, 0] = 0
    with torch.no_grad():
        hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state  # [1, T, H]
        return float(model.score(hidden[0, seq.pool_index]))


def _ref_logprobs(model: torch.nn.Module, seq: TokSeq) -> torch.Tensor:
    """float64 log-probs of ids[label_start:], each from the previous position."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([seq.ids])).logits[0]  # [T, V]
    lp = torch.log_softmax(logits.double(), -1)
    t = torch.arange(seq.label_start, len(seq.ids))
    return lp[t - 1, torch.tensor(seq.ids)[t]]  # [K]


def test_classifier_pooling_trailing_eos_and_mask_first(dirs: dict[str, Path]) -> None:
    recs = _classifier_records(3)
    got = HFScorer(dirs["cls"], kind="classifier", batch_size=4).score(recs)
    want = np.array([[_ref_classifier(dirs["cls"], s) for s in rec] for rec in recs])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # the mask matters: unmasking the duplicated BOS changes the score
    s = recs[0][0]
    assert s.mask_first
    unmasked = TokSeq(ids=s.ids, label_start=s.label_start, pool_index=s.pool_index)
    assert abs(_ref_classifier(dirs["cls"], unmasked) - want[0, 0]) > 1e-6


def test_classifier_pool_index_mismatch_is_caught(dirs: dict[str, Path]) -> None:
    recs = _classifier_records(1)
    bad = recs[0][1]
    recs[0][1] = TokSeq(ids=bad.ids, label_start=bad.label_start, pool_index=len(bad.ids) - 1)
    with pytest.raises(RuntimeError, match="pool position mismatch"):
        HFScorer(dirs["cls"], kind="classifier").score(recs)


def test_classifier_bf16_scores_rounded_unless_fp32(dirs: dict[str, Path]) -> None:
    recs = _classifier_records(2, seed=5)
    bf = HFScorer(dirs["cls"], kind="classifier", dtype="bfloat16").score(recs)
    as_bf16 = torch.tensor(bf).to(torch.bfloat16).double().numpy()
    assert np.array_equal(bf, as_bf16)  # every score is a bf16 value
    keep = HFScorer(dirs["cls"], kind="classifier", dtype="bfloat16", fp32_scores=True).score(recs)
    assert not np.array_equal(keep, torch.tensor(keep).to(torch.bfloat16).double().numpy())
    np.testing.assert_allclose(keep, bf, atol=0.05)


@pytest.mark.parametrize("mode", ["avg", "sum", "norm"])
def test_dpo_ref_free_modes(dirs: dict[str, Path], mode: str) -> None:
    recs = _dpo_records(3)
    got = HFScorer(dirs["pol"], kind="dpo", ref_free_mode=mode, batch_size=5).score(recs)
    model = _load(dirs["pol"], transformers.AutoModelForCausalLM)
    want = np.array(
        [[float(reward_from_logprobs(_ref_logprobs(model, s), mode)) for s in rec] for rec in recs]
    )
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_dpo_with_reference_and_batch_invariance(dirs: dict[str, Path]) -> None:
    recs = _dpo_records(4, seed=1)
    done: list[int] = []
    sc = HFScorer(dirs["pol"], kind="dpo", ref_model_dir=dirs["ref"], batch_size=7)
    got = sc.score(recs, progress=done.append)
    assert sum(done) == 4 and sc.stats["n_sequences"] == 24 and sc.stats["forwards_per_sequence"] == 2
    assert sc.stats["padded_tokens"] >= sc.stats["tokens"] == sum(len(s.ids) for r in recs for s in r)
    pol = _load(dirs["pol"], transformers.AutoModelForCausalLM)
    ref = _load(dirs["ref"], transformers.AutoModelForCausalLM)
    want = np.array(
        [[float(_ref_logprobs(pol, s).sum() - _ref_logprobs(ref, s).sum()) for s in rec] for rec in recs]
    )
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    one = HFScorer(dirs["pol"], kind="dpo", ref_model_dir=dirs["ref"], batch_size=1).score(recs)
    np.testing.assert_allclose(one, got, rtol=1e-5, atol=1e-5)


def test_usage_errors(dirs: dict[str, Path]) -> None:
    with pytest.raises(UsageError):
        HFScorer(dirs["cls"], kind="classifier", ref_model_dir=dirs["ref"])
    with pytest.raises(UsageError):
        HFScorer(dirs["pol"], kind="dpo", ref_free_mode="max")  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        HFScorer(dirs["pol"], kind="dpo", dtype="int8")


def test_resolve_classifier_pad_id() -> None:
    assert resolve_classifier_pad_id(7, 5, 2) == 7  # config wins when the tokenizer has a pad
    assert resolve_classifier_pad_id(None, 5, 2) == 5
    assert resolve_classifier_pad_id(7, None, 2) == 2  # run_rm.py overrides with EOS
