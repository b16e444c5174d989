"""Native engine vs HF transformers, fp32 CPU, on tiny random-init models (SPEC §4, §5, §7).

Each TokSeq is run through HF alone (no padding, no sharing) and scored with the SPEC
formula; the engine scores the same records packed with shared prefixes. Tolerance:
|Δ| <= 1e-4 (1 + |s|) against HF; shared-prefix vs no-sharing: |Δ| <= 1e-5 (1 + |s|).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rmbench_fast.engine import NativeScorer
from tests.helpers.tiny import hf_reference_scores, make_tiny_model_dir, synthetic_records

pytest.importorskip("transformers")

LLAMA3 = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}
LINEAR = {"rope_type": "linear", "factor": 2.0}
# orig 16 puts the YaRN correction range at dims 0..1 of 8: most dims are interpolated
YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}
DYNAMIC = {"rope_type": "dynamic", "factor": 4.0}

# id: (arch, kind, tied, kv_heads, vocab, rope_scaling, sliding_window, reward mode)
CASES: dict[str, tuple[Any, ...]] = {
    "llama3-gqa-untied-avg": ("llama", "causal", False, 2, 32000, LLAMA3, None, "avg"),
    "llama-mha-tied-sum": ("llama", "causal", True, 4, 49152, None, None, "sum"),
    "mistral-mqa-window-norm": ("mistral", "causal", False, 1, 32000, None, 8, "norm"),
    "qwen2-tied-window-avg": ("qwen2", "causal", True, 2, 151936, None, 8, "avg"),
    "llama-linear-classifier": ("llama", "classifier", False, 2, 32000, LINEAR, None, None),
    "mistral-classifier": ("mistral", "classifier", False, 1, 32000, None, None, None),
    "qwen2-classifier": ("qwen2", "classifier", True, 2, 151936, None, None, None),
    "gemma2-tied-window-avg": ("gemma2", "causal", True, 2, 32000, None, 8, "avg"),
    "gemma2-untied-mqa-norm": ("gemma2", "causal", False, 1, 32000, None, 8, "norm"),
    "gemma2-classifier": ("gemma2", "classifier", True, 2, 32000, None, 8, None),
    "qwen3-gqa-untied-avg": ("qwen3", "causal", False, 2, 32000, None, None, "avg"),
    "qwen3-tied-window-norm": ("qwen3", "causal", True, 1, 151936, None, 8, "norm"),
    "qwen3-classifier": ("qwen3", "classifier", False, 2, 32000, None, None, None),
    "qwen2-yarn-sum": ("qwen2", "causal", False, 2, 32000, YARN, None, "sum"),
    "llama-yarn-classifier": ("llama", "classifier", False, 2, 32000, YARN, None, None),
    "llama-dynamic-avg": ("llama", "causal", False, 2, 32000, DYNAMIC, None, "avg"),
}
# Extra config.json fields per case (YaRN: max_position_embeddings = factor x original, as real
# configs have it and transformers expects)
EXTRA: dict[str, dict[str, Any]] = {
    "qwen2-yarn-sum": {"max_position_embeddings": 64},
    "llama-yarn-classifier": {"max_position_embeddings": 64},
}


def _tol(s: np.ndarray, rel: float) -> np.ndarray:
    return rel * (1.0 + np.abs(s))


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("engine_models")
    out = {}
    for name, (arch, kind, tied, kv, vocab, rope, window, _) in CASES.items():
        out[name] = make_tiny_model_dir(
            root / name,
            arch,
            kind=kind,
            tie_word_embeddings=tied,
            num_kv_heads=kv,
            vocab_size=vocab,
            seed=len(name),
            rope_scaling=rope,
            sliding_window=window,
            **EXTRA.get(name, {}),
        )
    out["ref"] = make_tiny_model_dir(
        root / "ref", "llama", kind="causal", num_kv_heads=2, vocab_size=32000, seed=99, rope_scaling=LLAMA3
    )
    return out


def _hf(path: Path, kind: str) -> Any:
    import transformers

    cls = (
        transformers.AutoModelForCausalLM
        if kind == "causal"
        else transformers.AutoModelForSequenceClassification
    )
    return cls.from_pretrained(path).eval()


@pytest.mark.parametrize("case", list(CASES))
def test_matches_hf_and_sharing_is_exact(case: str, models: dict[str, Path]) -> None:
    arch, kind, _, _, vocab, _, window, mode = CASES[case]
    engine_kind = "dpo" if kind == "causal" else "classifier"
    seqs = synthetic_records(8, vocab_size=vocab, kind=engine_kind, seed=3)
    if window is not None:  # the window must actually bite
        assert max(len(s.ids) for g in seqs for s in g) > 2 * window
    want = hf_reference_scores(_hf(models[case], kind), seqs, engine_kind, mode or "avg")
    shared = NativeScorer(models[case], kind=engine_kind, ref_free_mode=mode or "avg", batch_tokens=256)
    got = shared.score(seqs)
    assert shared.stats["prefix_savings"] > 0 and shared.stats["n_batches"] > 1
    assert np.all(np.abs(got - want) <= _tol(want, 1e-4)), np.abs(got - want).max()
    plain = NativeScorer(
        models[case], kind=engine_kind, ref_free_mode=mode or "avg", batch_tokens=256, share_prefix=False
    )
    got_plain = plain.score(seqs)
    assert plain.stats["prefix_savings"] == 0
    assert np.all(np.abs(got - got_plain) <= _tol(got_plain, 1e-5))
    # sanity: the scores are not degenerate (distinct across slots)
    assert np.unique(np.round(got, 6)).size > got.size // 2
    if engine_kind == "classifier":  # the last layer ran at the pooled rows only; whole, the same
        assert (
            shared.last_layer_rows == (arch != "gemma2")
            and shared.stats["last_layer_rows"] is shared.last_layer_rows
        )
        whole = NativeScorer(models[case], kind=engine_kind, batch_tokens=256)
        whole.last_layer_rows = False
        got_whole = whole.score(seqs)
        assert np.all(np.abs(got - got_whole) <= _tol(got_whole, 1e-5)), np.abs(got - got_whole).max()


def test_reference_model_reward(models: dict[str, Path]) -> None:
    """With a reference model: reward = Σ log π - Σ log π_ref (ref-free mode ignored)."""
    seqs = synthetic_records(6, vocab_size=32000, seed=5)
    pol = _hf(models["llama3-gqa-untied-avg"], "causal")
    want = hf_reference_scores(pol, seqs, "dpo", ref_model=_hf(models["ref"], "causal"))
    sc = NativeScorer(
        models["llama3-gqa-untied-avg"],
        kind="dpo",
        ref_model_dir=models["ref"],
        ref_free_mode="norm",
        batch_tokens=300,
    )
    got = sc.score(seqs)
    assert sc.stats["forwards_per_sequence"] == 2
    assert np.all(np.abs(got - want) <= _tol(want, 1e-4))


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("case", ["mistral-mqa-window-norm", "gemma2-untied-mqa-norm"])
def test_attention_impls_agree(models: dict[str, Path], case: str) -> None:
    """dense (reference), per-segment sdpa and FlexAttention (eager on CPU) give one answer
    (Gemma-2: the soft-capped math path and flex's score_mod)."""
    seqs = synthetic_records(5, vocab_size=32000, seed=7)
    outs = [
        NativeScorer(
            models[case],
            kind="dpo",
            ref_free_mode="norm",
            attn_impl=impl,
            batch_tokens=400,
        ).score(seqs)
        for impl in ("dense", "sdpa", "flex")
    ]
    for o in outs[1:]:
        assert np.all(np.abs(o - outs[0]) <= _tol(outs[0], 1e-5))


def test_progress_and_budget_raise(models: dict[str, Path]) -> None:
    seqs = synthetic_records(4, vocab_size=32000, seed=9)
    logs: list[str] = []
    done: list[int] = []
    sc = NativeScorer(models["llama3-gqa-untied-avg"], kind="dpo", batch_tokens=8, log=logs.append)
    got = sc.score(seqs, progress=done.append)
    assert sum(done) == 4 and len(logs) == 1 and "raising the token budget" in logs[0]
    assert sc.stats["batch_tokens"] == max(sc.stats["max_batch_tokens"], 8) > 8
    ref = NativeScorer(models["llama3-gqa-untied-avg"], kind="dpo", batch_tokens=4096).score(seqs)
    assert np.all(np.abs(got - ref) <= _tol(ref, 1e-5))


def test_bf16_close_to_fp32(models: dict[str, Path]) -> None:
    """bf16 runs and stays near fp32 (loose: bf16 has ~3 significant digits)."""
    seqs = synthetic_records(3, vocab_size=32000, kind="classifier", seed=2)
    f32 = NativeScorer(models["mistral-classifier"], kind="classifier", dtype="float32").score(seqs)
    b16 = NativeScorer(models["mistral-classifier"], kind="classifier", dtype="bfloat16").score(seqs)
    assert np.all(np.isfinite(b16))
    assert np.abs(b16 - f32).max() <= 0.02 * (1 + np.abs(f32).max())
    # the default reproduces bf16 rounding of the score (SPEC §4): values are bf16-representable
    import torch

    assert np.array_equal(torch.tensor(b16).bfloat16().double().numpy(), b16)


def test_flex_compile_failure_falls_back_to_sdpa(
    models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A FlexAttention build failure (CUDA) warns once, then the run goes on, exactly, on the
    per-segment SDPA plan; the stats say so."""
    from rmbench_fast.engine.layers import attention

    calls: list[int] = []

    def broken_flex(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        raise attention.FlexCompileError("LoweringException: unbacked_bindings")

    monkeypatch.setattr(attention, "flex_attention", broken_flex)  # what packed_attention calls
    seqs = synthetic_records(5, vocab_size=32000, seed=7)
    case = "gemma2-untied-mqa-norm"
    want = NativeScorer(models[case], kind="dpo", ref_free_mode="norm", attn_impl="dense").score(seqs)
    sc = NativeScorer(models[case], kind="dpo", ref_free_mode="norm", attn_impl="flex", batch_tokens=400)
    with pytest.warns(RuntimeWarning, match="FlexAttention failed to compile"):
        got = sc.score(seqs)
    assert len(calls) == 1  # never retried after the first failure
    assert sc.stats["attention"].startswith("sdpa (flex failed to compile:")
    assert "unbacked_bindings" in sc.stats["attention"]
    assert np.all(np.abs(got - want) <= _tol(want, 1e-5))


@pytest.mark.slow
@pytest.mark.parametrize(
    "case", ["llama3-gqa-untied-avg", "mistral-mqa-window-norm", "gemma2-untied-mqa-norm"]
)
def test_compiled_flex_on_cpu_is_exact_and_compiles_for_llama(
    models: dict[str, Path], monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """torch.compile(flex_attention, dynamic=True), as on CUDA, run on the CPU: the packed
    mask_mod (and Gemma-2's soft-cap score_mod) go through dynamo and inductor for real. Where
    inductor cannot build it, the run must fall back and stay exact: with torch 2.13 the CPU
    flex template emits C++ with undeclared variables (`cur_kvSplitSize7`) for the windowed
    models here, a CPU-template bug (the CUDA template is Triton, a different code generator)."""
    import warnings

    from rmbench_fast.engine.layers import attention

    monkeypatch.setattr(attention.flex, "COMPILE_ON_CPU", True)
    mode = CASES[case][7]
    seqs = synthetic_records(5, vocab_size=CASES[case][4], seed=7)
    want = NativeScorer(models[case], kind="dpo", ref_free_mode=mode, attn_impl="dense").score(seqs)
    sc = NativeScorer(models[case], kind="dpo", ref_free_mode=mode, attn_impl="flex", batch_tokens=400)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = sc.score(seqs)
    assert np.all(np.abs(got - want) <= _tol(want, 1e-5))
    if case.startswith("llama3"):
        # The Llama mask compiles: the run must really have used compiled flex, not the fallback.
        assert sc.stats["attention"] == "flex" and sc.stats["attention_calls"].get("flex", 0) > 0
    else:
        assert sc.stats["attention"] in ("flex",) or sc.stats["attention"].startswith("sdpa (flex failed")


def _default_rope(src: Path, dst: Path) -> Path:
    """A copy of a model directory with plain RoPE (same theta, no scaling; same weights)."""
    import json
    import shutil

    shutil.copytree(src, dst)
    raw = json.loads((dst / "config.json").read_text())
    params = {**(raw.pop("rope_scaling", None) or {}), **(raw.get("rope_parameters") or {})}
    theta = params.get("rope_theta", raw.get("rope_theta", 10000.0))
    raw["rope_parameters"] = {"rope_type": "default", "rope_theta": theta}
    (dst / "config.json").write_text(json.dumps(raw))
    return dst


def _moved(got: np.ndarray, want: np.ndarray) -> float:
    """Share of scores that differ from `want` by more than the parity tolerance."""
    return float(np.mean(np.abs(got - want) > _tol(want, 1e-4)))


@pytest.mark.parametrize("case", ["qwen3-gqa-untied-avg", "qwen3-classifier"])
def test_qwen3_qk_norm_switched_off_moves_the_scores(
    case: str, models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Qwen3 without its q/k RMSNorm leaves the tolerance: the parity above can fail on it."""
    from rmbench_fast.engine.models.llama import Attention
    from rmbench_fast.engine.models.qwen3 import Qwen3Attention

    kind = "dpo" if CASES[case][1] == "causal" else "classifier"
    seqs = synthetic_records(6, vocab_size=CASES[case][4], kind=kind, seed=3)
    want = NativeScorer(models[case], kind=kind).score(seqs)
    monkeypatch.setattr(Qwen3Attention, "qk_transform", Attention.qk_transform)
    assert _moved(NativeScorer(models[case], kind=kind).score(seqs), want) > 0.9


@pytest.mark.parametrize("case", ["qwen2-yarn-sum", "llama-yarn-classifier"])
def test_yarn_switched_off_moves_the_scores(
    case: str, models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same weights with default RoPE (same theta) score outside the tolerance, and
    so does YaRN's frequency blend without its attention factor (cos/sin scaling)."""
    from rmbench_fast.engine.models import llama

    kind = "dpo" if CASES[case][1] == "causal" else "classifier"
    mode = CASES[case][7] or "avg"
    seqs = synthetic_records(6, vocab_size=32000, kind=kind, seed=3)
    want = NativeScorer(models[case], kind=kind, ref_free_mode=mode).score(seqs)
    plain = _default_rope(models[case], tmp_path / "plain")
    assert _moved(NativeScorer(plain, kind=kind, ref_free_mode=mode).score(seqs), want) > 0.9
    sc = NativeScorer(models[case], kind=kind, ref_free_mode=mode)
    assert sc.cfg.rope.type == "yarn" and sc.cfg.rope.attention_factor > 1.1
    real = llama.rope_cos_sin
    monkeypatch.setattr(llama, "rope_cos_sin", lambda f, p, d, a=1.0: real(f, p, d))
    assert _moved(sc.score(seqs), want) > 0.9


def test_dynamic_rope_equals_default_within_max_positions_and_refuses_beyond(
    models: dict[str, Path], tmp_path: Path
) -> None:
    """Dynamic NTK: transformers keeps its load-time frequencies (= default RoPE) up to
    max_position_embeddings, so the engine matches it there (parity case above); past it HF
    rescales per forward from the longest sequence, which the engine refuses in one line."""
    import json
    import shutil

    from rmbench_fast.errors import ModelError

    case = "llama-dynamic-avg"
    seqs = synthetic_records(6, vocab_size=32000, seed=3)
    got = NativeScorer(models[case], kind="dpo").score(seqs)
    plain = _default_rope(models[case], tmp_path / "plain")
    assert np.array_equal(got, NativeScorer(plain, kind="dpo").score(seqs))
    short = tmp_path / "short"
    shutil.copytree(models[case], short)
    raw = json.loads((short / "config.json").read_text())
    raw["max_position_embeddings"] = 16
    (short / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ModelError, match="dynamic RoPE") as exc:
        NativeScorer(short, kind="dpo").score(seqs)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("case", ["llama3-gqa-untied-avg", "gemma2-tied-window-avg", "qwen2-classifier"])
def test_loading_from_in_memory_tensors_is_loading_from_the_directory(
    case: str, models: dict[str, Path]
) -> None:
    """load_model_from_tensors(cfg, hf_model.state_dict().items()) (bench/gpu_check.py's path)
    builds the same parameters as load_model(dir): one loading path."""
    import torch

    from rmbench_fast.engine.config import EngineConfig
    from rmbench_fast.engine.loader import load_model, load_model_from_tensors

    path = models[case]
    want = load_model(path, dtype="float32")
    hf = _hf(path, CASES[case][1])
    got = load_model_from_tensors(EngineConfig.from_model_dir(path), hf.state_dict().items(), dtype="float32")
    a, b = want.state_dict(), got.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
