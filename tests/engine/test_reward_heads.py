"""Custom reward heads natively (INF-ORM, GRM, QRM, ArmoRM) against the official model classes
(ArmoRM: its published forward written out), fp32 CPU.

The oracle is the rewardbench wheel's own code: `INFORMForSequenceClassification` (Linear-ReLU-
Linear score head) and `GRewardModel` (GRM's value head, MLP or linear), which also write the
tiny checkpoints here (`make_tiny_head_dir`), so the weights are in the heads' real layout. Each
TokSeq runs through the official model alone; the engine scores the same records packed with
shared prefixes. Tolerance |Δ| <= 1e-4 (1 + |s|); the head's MLP switched off must move the
scores beyond it. Also: `--backend auto` picks the native engine for these heads, and scoring a
head whose directory ships a `modeling_*.py` never imports that file.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from rmbench_fast.engine import EngineConfig, NativeScorer, native_supports
from rmbench_fast.engine.models import reward_heads
from rmbench_fast.errors import ModelError
from rmbench_fast.inputs.modelio import inspect_model_dir
from rmbench_fast.records import TokSeq
from tests.helpers.official import official_head_model
from tests.helpers.paths import SAMPLE
from tests.helpers.require import missing
from tests.helpers.tiny import hf_reference_scores, make_tiny_head_dir, synthetic_records

pytest.importorskip("transformers")
if importlib.util.find_spec("rewardbench") is None:
    missing("official", "official code missing: pip install --no-deps rewardbench", allow_module_level=True)

# id: (head, base family, kv heads)
CASES: dict[str, tuple[str, str, int]] = {
    "inform-llama": ("inform", "llama", 2),
    "grm-llama-mlp": ("grm", "llama", 2),
    "grm-gemma2-linear": ("grm-linear", "gemma2", 1),
    "grm-qwen3-mlp": ("grm", "qwen3", 2),
}
VOCAB = 32000


def _tol(s: np.ndarray, rel: float) -> np.ndarray:
    return rel * (1.0 + np.abs(s))


@pytest.fixture(scope="module")
def heads(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("reward_heads")
    return {
        name: make_tiny_head_dir(root / name, head, base, num_kv_heads=kv, vocab_size=VOCAB, seed=i)
        for i, (name, (head, base, kv)) in enumerate(CASES.items())
    }


def _records(head: str) -> list[list[TokSeq]]:
    """Classifier records; GRM's pipeline pools at the last token and never masks a BOS."""
    seqs = synthetic_records(8, vocab_size=VOCAB, kind="classifier", seed=3)
    if head == "inform":
        return seqs
    return [[dataclasses.replace(s, pool_index=len(s.ids) - 1, mask_first=False) for s in g] for g in seqs]


def _official(model_dir: Path, head: str, seqs: list[list[TokSeq]]) -> np.ndarray:
    """The official model on each sequence alone -> [n, 6]."""
    model = official_head_model(model_dir, "inform" if head == "inform" else "grm")
    if head == "inform":  # a SequenceClassifierOutput: the same reference as any classifier
        return hf_reference_scores(model, seqs, "classifier")
    with torch.no_grad():
        return np.array(
            [
                [
                    float(
                        model(
                            input_ids=torch.tensor([s.ids]),
                            attention_mask=torch.ones(1, len(s.ids), dtype=torch.long),
                        )[0]
                    )
                    for s in g
                ]
                for g in seqs
            ]
        )


@pytest.mark.parametrize("case", list(CASES))
def test_head_matches_official_class_and_sharing_is_exact(case: str, heads: dict[str, Path]) -> None:
    head = CASES[case][0]
    seqs = _records(head)
    want = _official(heads[case], head, seqs)
    shared = NativeScorer(heads[case], kind="classifier", batch_tokens=256)
    got = shared.score(seqs)
    assert shared.stats["prefix_savings"] > 0 and shared.stats["n_batches"] > 1
    assert np.all(np.abs(got - want) <= _tol(want, 1e-4)), np.abs(got - want).max()
    plain = NativeScorer(heads[case], kind="classifier", batch_tokens=256, share_prefix=False).score(seqs)
    assert np.all(np.abs(got - plain) <= _tol(plain, 1e-5))
    assert np.unique(np.round(got, 6)).size > got.size // 2  # not degenerate


@pytest.mark.parametrize("case", ["inform-llama", "grm-llama-mlp"])
def test_head_mlp_switched_off_moves_the_scores(
    case: str, heads: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The head as a plain affine map (its linear layers without the ReLU in between) moves the
    scores beyond the tolerance: the parity above could fail if the MLP were mis-computed."""
    head = CASES[case][0]
    seqs = _records(head)
    want = NativeScorer(heads[case], kind="classifier").score(seqs)

    def without_relu(self: Any, h: torch.Tensor, fp32: bool = False, gate: Any = None) -> torch.Tensor:
        for layer in [m for m in self.modules() if isinstance(m, torch.nn.Linear)]:
            h = torch.nn.functional.linear(h, layer.weight, layer.bias)
        return h

    cls = reward_heads.InformHead if head == "inform" else reward_heads.GRMValueHead
    monkeypatch.setattr(cls, "forward", without_relu)
    off = NativeScorer(heads[case], kind="classifier").score(seqs)
    assert np.mean(np.abs(off - want) > _tol(want, 1e-4)) > 0.9


def test_fp32_scores_flag_runs_the_head_in_fp32(heads: dict[str, Path]) -> None:
    """bf16 weights: the default rounds the head's output to bf16 (SPEC §4); --fp32-scores not."""
    seqs = _records("inform")
    b16 = NativeScorer(heads["inform-llama"], kind="classifier", dtype="bfloat16").score(seqs)
    f32 = NativeScorer(heads["inform-llama"], kind="classifier", dtype="bfloat16", fp32_scores=True).score(
        seqs
    )
    assert np.array_equal(torch.tensor(b16).bfloat16().double().numpy(), b16)
    assert not np.array_equal(torch.tensor(f32).bfloat16().double().numpy(), f32)
    assert np.abs(b16 - f32).max() <= 0.05 * (1 + np.abs(f32).max())


@pytest.mark.parametrize("case", list(CASES))
def test_auto_backend_picks_native(case: str, heads: dict[str, Path]) -> None:
    raw = json.loads((heads[case] / "config.json").read_text())
    assert native_supports(raw) is None
    info = inspect_model_dir(heads[case])  # no --trust-remote-code needed
    assert info.kind == "classifier" and info.native_head is not None
    assert info.native_head.name == ("inform" if case.startswith("inform") else "grm")
    assert info.needs_remote_code  # the hf backend still would need the model's code
    cfg = EngineConfig.from_model_dir(heads[case])
    assert cfg.head == "classifier" and cfg.reward_head is not None and cfg.family == CASES[case][1]


def test_remote_code_in_the_directory_is_never_imported(heads: dict[str, Path], tmp_path: Path) -> None:
    """A custom-head directory with a `modeling_*.py` (named by auto_map) that writes a file when
    imported: the whole native run, from inspection to scores, never imports it."""
    import shutil

    from rmbench_fast import evaluate

    d = tmp_path / "inform-remote"
    shutil.copytree(heads["inform-llama"], d)
    sentinel = tmp_path / "IMPORTED"
    (d / "modeling_inform.py").write_text(
        f"from pathlib import Path\nPath({str(sentinel)!r}).write_text('imported')\n"
        "class INFORMForSequenceClassification:\n    pass\n"
    )
    raw = json.loads((d / "config.json").read_text())
    raw["auto_map"] = {
        "AutoModelForSequenceClassification": "modeling_inform.INFORMForSequenceClassification"
    }
    (d / "config.json").write_text(json.dumps(raw))
    sample = SAMPLE
    result = evaluate(
        str(d), data=str(sample), limit=1, chat_template="tulu", backend="auto", device="cpu", dtype="float32"
    )
    assert result["meta"]["backend"] == "native"
    assert all(np.isfinite(r["score_chosen"]).all() for r in result["rows"])
    assert not sentinel.exists()
    assert "modeling_inform" not in sys.modules
    # control: importing the file does write the sentinel, so the check above can fail
    spec = importlib.util.spec_from_file_location("_remote_code_control", d / "modeling_inform.py")
    assert spec is not None and spec.loader is not None
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    assert sentinel.read_text() == "imported"


# -- gating heads (ArmoRM, QRM): the gate reads the hidden state at the gating token ---------------
PATTERN = [128009, 128006, 78191, 128007, 271]  # <|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n
GATE_VOCAB = 128256
N_OBJ = N_Q = (
    4  # QRM's forward (its quantile output) needs num_quantiles == num_objectives, as in its configs (19)
)
GATING = {"num_objectives": N_OBJ, "gating_hidden_dim": 32, "gating_n_hidden": 2, "gating_temperature": 2.0}


def _gating_records(n: int, seed: int = 0) -> tuple[list[list[TokSeq]], list[list[int]]]:
    """Records whose prompt ends with the Llama-3 assistant header (the gating pattern; every
    third record has an earlier occurrence too, so the *last* one must be found), answers end
    in EOS (= pad 2, pooled just before). -> (seqs, gating position of each sequence)."""
    rng = np.random.default_rng(seed)

    def toks(k: int) -> list[int]:
        return [int(x) for x in rng.integers(3, 128000, size=k)]

    seqs, gates = [], []
    for r in range(n):
        prompt = [1] + toks(int(rng.integers(3, 12))) + (PATTERN + toks(3) if r % 3 == 0 else []) + PATTERN
        group = [
            TokSeq(
                ids=(ids := prompt + toks(int(rng.integers(1, 12))) + [2]),
                label_start=len(ids),
                pool_index=len(ids) - 2,
            )
            for _ in range(6)
        ]
        seqs.append(group)
        gates.append([len(prompt) - len(PATTERN)] * 6)
    return seqs, gates


def _base_llama_config(**extra: Any) -> Any:
    import transformers

    return transformers.LlamaConfig(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        vocab_size=GATE_VOCAB,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        initializer_range=0.08,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        **extra,
    )


def _randomise_gating(model: Any, gen: torch.Generator) -> None:
    """Wide random head weights (and BatchNorm statistics), so rewards and gates spread."""
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if not name.startswith(("regression_layer", "gating", "reward_transform_matrix")):
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            elif name == "reward_transform_matrix":
                t.copy_(torch.eye(t.shape[0]) + 0.2 * torch.randn(t.shape, generator=gen))
            elif name == "gating.logit_scale":
                t.fill_(1.7)
            elif t.is_floating_point():
                fan = t.shape[-1] if t.dim() > 1 else 4
                t.copy_(torch.randn(t.shape, generator=gen) * 2.0 / fan**0.5)


@pytest.fixture(scope="module")
def gating_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """QRM written by reward-bench's class; ArmoRM in its published layout (the wheel has only
    its pipeline): a Llama body + regression_layer [O, H], gating.layers.{0..n} (Linear + bias),
    gating.logit_scale, reward_transform_matrix."""
    import transformers
    from safetensors.torch import save_file

    from tests.helpers.official import official_qrm_class

    root = tmp_path_factory.mktemp("gating_heads")
    gen = torch.Generator().manual_seed(0)
    out = {}
    torch.manual_seed(0)
    cfg = _base_llama_config(num_quantiles=N_Q, **GATING)
    qrm = official_qrm_class()(cfg).float().eval()
    _randomise_gating(qrm, gen)
    out["qrm"] = root / "qrm"
    cfg.architectures = ["LlamaForRewardModelWithGating31"]
    cfg.save_pretrained(out["qrm"])
    save_file({k: v.contiguous() for k, v in qrm.state_dict().items()}, str(out["qrm"] / "model.safetensors"))

    torch.manual_seed(1)
    cfg = _base_llama_config(**GATING)
    body = transformers.LlamaModel(cfg).eval()
    state = {f"model.{k}": v for k, v in body.state_dict().items()}
    head = reward_heads.GatingHead(64, N_OBJ, 0, 32, 2, 2.0)
    _randomise_gating(head, gen)
    state.update(head.state_dict())
    out["armorm"] = root / "armorm"
    cfg.architectures = ["LlamaForRewardModelWithGating"]
    cfg.auto_map = {"AutoModelForSequenceClassification": "modeling_custom.LlamaForRewardModelWithGating"}
    cfg.save_pretrained(out["armorm"])
    save_file({k: v.contiguous() for k, v in state.items()}, str(out["armorm"] / "model.safetensors"))
    return out


def _armorm_reference(model_dir: Path, seqs: list[list[TokSeq]], gates: list[list[int]]) -> np.ndarray:
    """ArmoRM's published forward written out: h = body(ids)[pool], x = body(ids)[gate];
    g = softmax(L_n(relu(... relu(L_0 x))) / T) * scale; score = Σ g * (W h @ M)."""
    import transformers
    from safetensors.torch import load_file

    state = load_file(str(model_dir / "model.safetensors"))
    body = transformers.LlamaModel.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    layers = sorted({int(k.split(".")[2]) for k in state if k.startswith("gating.layers.")})
    out = np.zeros((len(seqs), 6))
    with torch.no_grad():
        for r, group in enumerate(seqs):
            for j, s in enumerate(group):
                hs = body(input_ids=torch.tensor([s.ids])).last_hidden_state[0]
                x = hs[gates[r][j]][None]
                for i in layers:
                    x = x @ state[f"gating.layers.{i}.weight"].T + state[f"gating.layers.{i}.bias"]
                    x = torch.relu(x) if i != layers[-1] else x
                g = torch.softmax(x / GATING["gating_temperature"], dim=1) * state["gating.logit_scale"][0]
                rewards = hs[s.pool_index][None] @ state["regression_layer.weight"].T
                out[r, j] = float((g * (rewards @ state["reward_transform_matrix"])).sum())
    return out


def _qrm_reference(model_dir: Path, seqs: list[list[TokSeq]]) -> np.ndarray:
    from safetensors.torch import load_file
    from transformers import AutoConfig

    from tests.helpers.official import official_qrm_class

    model = official_qrm_class()(AutoConfig.from_pretrained(str(model_dir)))
    model.load_state_dict(load_file(str(model_dir / "model.safetensors")), strict=True)
    model = model.float().eval()
    with torch.no_grad():
        return np.array(
            [
                [
                    float(
                        model(
                            input_ids=torch.tensor([s.ids]),
                            attention_mask=torch.ones(1, len(s.ids), dtype=torch.long),
                        ).score[0, 0]
                    )
                    for s in g
                ]
                for g in seqs
            ]
        )


def _native_gating_scores(
    model_dir: Path, seqs: list[list[TokSeq]], gates: list[list[int]], *, uniform_gate: bool = False
) -> np.ndarray:
    """The engine's model over packed shared-prefix batches, with the gating rows looked up the
    way the scorer would: sequence j's position p is flat index seg_offsets[s] + p inside the
    prefix, else branch_start[j] + (p - prefix_len[s])."""
    from rmbench_fast.engine.config import GATING_HEADS
    from rmbench_fast.engine.layers.attention import PackedLayout
    from rmbench_fast.engine.loader import load_model
    from rmbench_fast.inputs.modelio import checkpoint_tensor_names
    from rmbench_fast.scoring.plan import branch_bounds, plan_batches

    raw = json.loads((model_dir / "config.json").read_text())
    cfg = EngineConfig.from_dict(raw, tensor_names=checkpoint_tensor_names(model_dir), heads=GATING_HEADS)
    model = load_model(model_dir, dtype="float32", cfg=cfg)
    out = np.full((len(seqs), 6), np.nan)
    batches = plan_batches(seqs, batch_tokens=200)
    assert len(batches) > 1 and any(int(p) > len(PATTERN) for b in batches for p in b.prefix_len)
    for batch in batches:
        layout = PackedLayout.from_batch(batch, torch.device("cpu"))
        ids = torch.from_numpy(np.asarray(batch.input_ids, dtype=np.int64))
        hidden = model.hidden_states(ids, layout, "sdpa")
        starts, _ = branch_bounds(batch)
        recs = np.asarray(batch.seq_record)
        gate_rows = []
        for j, r in enumerate(recs):
            s, p = j // 6, gates[int(r)][j % 6]
            P, a = int(batch.prefix_len[s]), int(batch.seg_offsets[s])
            gate_rows.append(a + p if p < P else int(starts[j]) + p - P)
        gate = hidden[torch.tensor(gate_rows)]
        if uniform_gate:
            gate = torch.zeros_like(gate)
        h = hidden[torch.from_numpy(np.asarray(batch.pool_pos, dtype=np.int64))]
        score = model.classify(h, False, gate=gate)[:, 0].double().numpy()
        out[recs, np.arange(len(recs)) % 6] = score
    return out


@pytest.mark.parametrize("head", ["qrm", "armorm"])
def test_gating_head_matches_reference(head: str, gating_dirs: dict[str, Path]) -> None:
    seqs, gates = _gating_records(6)
    want = (
        _qrm_reference(gating_dirs[head], seqs)
        if head == "qrm"
        else _armorm_reference(gating_dirs[head], seqs, gates)
    )
    got = _native_gating_scores(gating_dirs[head], seqs, gates)
    assert np.all(np.abs(got - want) <= _tol(want, 1e-4)), np.abs(got - want).max()
    assert np.unique(np.round(got, 6)).size > got.size // 2
    # the gate matters: a constant gating input moves the scores beyond the tolerance
    off = _native_gating_scores(gating_dirs[head], seqs, gates, uniform_gate=True)
    assert np.mean(np.abs(off - want) > _tol(want, 1e-4)) > 0.9


@pytest.mark.parametrize("head", ["qrm", "armorm"])
def test_scorer_runs_gating_heads(head: str, gating_dirs: dict[str, Path]) -> None:
    """`--backend auto` picks the native engine, and NativeScorer finds each sequence's gating
    row itself (the last pattern occurrence; every third record has two) over packed batches."""
    info = inspect_model_dir(gating_dirs[head])  # no --trust-remote-code
    assert info.native_head is not None and info.native_head.name == head
    assert info.native_head.gating_pattern == tuple(PATTERN)
    assert native_supports(json.loads((gating_dirs[head] / "config.json").read_text())) is None
    seqs, gates = _gating_records(7, seed=3)
    want = (
        _qrm_reference(gating_dirs[head], seqs)
        if head == "qrm"
        else _armorm_reference(gating_dirs[head], seqs, gates)
    )
    scorer = NativeScorer(gating_dirs[head], kind="classifier", dtype="float32", batch_tokens=200)
    got = scorer.score(seqs)
    assert len(scorer.schedule.batches) > 1
    assert np.all(np.abs(got - want) <= _tol(want, 1e-4)), np.abs(got - want).max()
    # the first occurrence instead of the last would move the two-pattern records
    first = [[g[0] - 3 - len(PATTERN)] * 6 if r % 3 == 0 else g for r, g in enumerate(gates)]
    if head == "armorm":
        moved = _armorm_reference(gating_dirs[head], seqs, first)
        assert np.all(np.abs(moved[::3] - want[::3]) > _tol(want[::3], 1e-4))


def test_gating_pattern_missing_is_one_line(gating_dirs: dict[str, Path]) -> None:
    seqs, _ = _gating_records(2)
    bad = [TokSeq(ids=[1, 5, 6, 7, 2], label_start=5, pool_index=3)] * 6
    scorer = NativeScorer(gating_dirs["armorm"], kind="classifier", dtype="float32")
    with pytest.raises(ModelError, match=r"record 1 slot 0: the gating token pattern .* does not occur"):
        scorer.score([seqs[0], bad])
