"""Tensor parallelism in the native engine (engine/layers/parallel.py, engine/models/tensor_parallel.py), CPU.

Under `torchrun --nproc-per-node 2` with gloo (tests/workers/tp_worker.py, one launch for all cases):
tiny random Llama, Qwen2, Qwen3, Mistral and Gemma-2 models, with query/kv heads that split
over 2 ranks and with one kv head (replicated on both ranks), odd vocabularies (padded shards),
tied and untied heads, q/k/v, o and MLP biases, a reference model, kernel B's fp32 logits, and
classifier heads (plain `score` and INF-ORM's MLP head, replicated). TP scores equal the
single-process engine's within |Δ| <= 1e-5 (1 + |s|) in fp32, the style matrices are identical,
both ranks agree bitwise, each rank reads only its slices of the checkpoint, and the counted
collectives are exactly the ones the layout predicts (bench/tp_comm.py relies on that count).
In-process: shards are exact slices of the full weights, and layouts that cannot split fail
with one line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from rmbench_fast.benchmarks.rmbench.metrics import style_matrix
from rmbench_fast.engine.config import EngineConfig
from rmbench_fast.engine.layers.parallel import CommCounter, head_layout, vocab_shard
from rmbench_fast.engine.loader import load_model, load_model_from_tensors
from rmbench_fast.engine.models.tensor_parallel import check_tp
from rmbench_fast.errors import ModelError
from rmbench_fast.utils.distributed import TPInfo
from tests.helpers.paths import REPO
from tests.helpers.tiny import make_tiny_model_dir

pytest.importorskip("transformers")
if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 16}  # fmt: skip
BIASES = {"attention_bias": True, "mlp_bias": True}

# name: (arch, kind, kv heads, vocab, tied, window, mode, lm_head, ref case, extra config)
CASES: dict[str, tuple[Any, ...]] = {
    "llama-gqa-oddvocab-avg": ("llama", "causal", 2, 32001, False, None, "avg", "torch", None, {"rope_scaling": LLAMA3}),
    "llama-mqa-tied-ref": ("llama", "causal", 1, 32000, True, None, "ref", "torch", "llama-gqa-oddvocab-avg", {}),
    "qwen2-mqa-oddvocab-window-sum": ("qwen2", "causal", 1, 32001, True, 8, "sum", "torch", None, {}),
    "qwen3-gqa-oddvocab-norm": ("qwen3", "causal", 2, 32001, False, None, "norm", "torch", None, {}),
    "gemma2-tied-oddvocab-window-norm": ("gemma2", "causal", 2, 32001, True, 8, "norm", "torch", None, {}),
    "gemma2-mqa-fused-avg": ("gemma2", "causal", 1, 32000, False, 8, "avg", "fused", None, {}),
    "llama-mqa-biases-classifier": ("llama", "classifier", 1, 32001, False, None, None, "torch", None, BIASES),
    "mistral-mqa-window-classifier": ("mistral", "classifier", 1, 32000, False, 8, None, "torch", None, {}),
    "qwen3-mqa-classifier": ("qwen3", "classifier", 1, 32001, False, None, None, "torch", None, {}),
    "gemma2-classifier": ("gemma2", "classifier", 2, 32001, True, 8, None, "torch", None, {}),
    "llama-inform-classifier": ("llama", "inform", 2, 32001, False, None, None, "torch", None, {}),
}  # fmt: skip
N_RECORDS = 6
TIMEOUT_S = 240


def _make(root: Path, name: str) -> Path:
    arch, kind, kv, vocab, tied, window, _, _, _, extra = CASES[name]
    path = make_tiny_model_dir(
        root / name,
        arch,
        kind="causal" if kind == "causal" else "classifier",
        tie_word_embeddings=tied,
        num_kv_heads=kv,
        vocab_size=vocab,
        seed=len(name),
        sliding_window=window,
        **extra,
    )
    if kind == "inform":
        _to_inform(path, seed=len(name))
    return path


def _to_inform(path: Path, seed: int) -> None:
    """Turn a Llama classifier directory into INF-ORM's layout: score = Linear(H, H), ReLU,
    Linear(H, 1), both with biases, under architectures INFORMForSequenceClassification."""
    from safetensors.torch import load_file, save_file

    f = path / "model.safetensors"
    state = load_file(str(f))
    H = state.pop("score.weight").shape[1]
    g = torch.Generator().manual_seed(seed)
    state |= {
        "score.0.weight": torch.randn(H, H, generator=g) / H**0.5,
        "score.0.bias": torch.randn(H, generator=g) * 0.1,
        "score.2.weight": torch.randn(1, H, generator=g) * 1.5 / H**0.5,
        "score.2.bias": torch.randn(1, generator=g) * 0.5,
    }
    save_file(state, str(f), metadata={"format": "pt"})
    cfg = json.loads((path / "config.json").read_text())
    cfg["architectures"] = ["INFORMForSequenceClassification"]
    (path / "config.json").write_text(json.dumps(cfg))


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tp_models")
    return {name: _make(root, name) for name in CASES}


@pytest.fixture(scope="module")
def results(dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One torchrun launch (2 ranks, gloo) scoring every case."""
    work = tmp_path_factory.mktemp("tp_run")
    cases = []
    for name, (_, kind, _, vocab, _, _, mode, lm_head, ref, _) in CASES.items():
        cases.append(
            {
                "name": name,
                "model": str(dirs[name]),
                "kind": "dpo" if kind == "causal" else "classifier",
                "mode": mode,
                "ref": str(dirs[ref]) if ref else None,
                "lm_head": lm_head,
                "vocab": min(vocab, CASES[ref][3]) if ref else vocab,
                "n_records": N_RECORDS,
                "seed": 3,
                "batch_tokens": 256,
            }
        )
    spec, out = work / "spec.json", work / "out.json"
    spec.write_text(json.dumps({"cases": cases}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += ["-m", "tests.workers.tp_worker", str(spec), str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, env=env, cwd=REPO)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"torchrun did not finish in {TIMEOUT_S} s: {str(exc.stderr)[-2000:]}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


def _matrices(s: np.ndarray) -> np.ndarray:
    return style_matrix(s[:, :3], s[:, 3:])


@pytest.mark.parametrize("case", list(CASES))
def test_tp2_matches_one_process(case: str, results: dict[str, Any]) -> None:
    r = results[case]
    single = np.array(r["single"])
    tp0, tp1 = (np.array(x) for x in r["tp"])
    assert np.all(np.isfinite(single)) and np.unique(np.round(single, 6)).size > single.size // 2
    assert np.array_equal(tp0, tp1), "the two ranks disagree"
    assert np.all(np.abs(tp0 - single) <= 1e-5 * (1 + np.abs(single))), np.abs(tp0 - single).max()
    assert np.array_equal(_matrices(tp0), _matrices(single))


@pytest.mark.parametrize("case", list(CASES))
def test_each_rank_reads_only_its_slices(case: str, results: dict[str, Any]) -> None:
    """A rank reads about half the checkpoint (replicated norms and heads are whole) and never
    more than it holds; the shards' padding rows are the only bytes held but not read."""
    r = results[case]
    for read, held in zip(r["read_bytes"], r["param_bytes"]):
        assert read <= held < 0.62 * r["ckpt_bytes"]


def test_collectives_are_the_layouts(results: dict[str, Any], dirs: dict[str, Path]) -> None:
    """Per forward: one embedding all-reduce and two per layer of [T, H]; per label row one MAX
    of [n] and one SUM of [n, 2] fp32 (n = 1, or 2 with a reference). The bench counts these."""
    from rmbench_fast.scoring.plan import plan_batches
    from tests.helpers.tiny import synthetic_records

    for case in ("llama-gqa-oddvocab-avg", "llama-mqa-tied-ref"):
        cfg = EngineConfig.from_model_dir(dirs[case])
        n_models = 2 if CASES[case][8] else 1
        seqs = synthetic_records(N_RECORDS, vocab_size=32000 if n_models == 2 else 32001, seed=3)
        batches = plan_batches(seqs, batch_tokens=256, vocab_size=32000 if n_models == 2 else 32001)
        T = sum(b.n_tokens for b in batches)
        K = sum(len(b.label_ids) for b in batches)
        H, L = cfg.hidden_size, cfg.num_hidden_layers
        for comm in results[case]["comm"]:
            assert comm["embed"] == n_models * T * H * 4
            assert comm["attn_out"] == comm["mlp_out"] == n_models * L * T * H * 4
            assert comm["logprob_max"] == n_models * K * 4
            assert comm["logprob_sum"] == n_models * 2 * K * 4


# --- in process -----------------------------------------------------------------------------


def _cfg(dirs: dict[str, Path], case: str) -> EngineConfig:
    return EngineConfig.from_model_dir(dirs[case])


@pytest.mark.parametrize("case", ["llama-gqa-oddvocab-avg", "qwen2-mqa-oddvocab-window-sum"])
def test_shards_are_slices_of_the_full_weights(case: str, dirs: dict[str, Path]) -> None:
    """Rank shards (dry-run TPInfo, no communication) reassemble the single-process weights:
    q/k/v and gate/up by rows, o/down by columns, embeddings by vocabulary rows + zero padding;
    with one kv head both ranks hold it whole. The in-memory loader gives the same shards."""
    from safetensors.torch import load_file

    full = load_model(dirs[case], dtype="float32")
    cfg = full.cfg
    ranks = [load_model(dirs[case], dtype="float32", tp=TPInfo(size=2, rank=r)) for r in range(2)]
    pairs = list(load_file(str(dirs[case] / "model.safetensors")).items())
    mem = load_model_from_tensors(cfg, pairs, dtype="float32", tp=TPInfo(size=2, rank=1))
    for a, b in zip(ranks[1].state_dict().values(), mem.state_dict().values()):
        assert torch.equal(a, b)
    D, nq, nkv = cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
    fa, parts = full.model.layers[0], [m.model.layers[0] for m in ranks]
    q, k, v = fa.self_attn.qkv_proj.weight.split([nq * D, nkv * D, nkv * D])
    local = [p.self_attn.qkv_proj.weight.split(p.self_attn.qkv_proj.out_sizes) for p in parts]
    assert torch.equal(torch.cat([lq for lq, _, _ in local]), q)
    if nkv >= 2:
        assert torch.equal(torch.cat([lk for _, lk, _ in local]), k)
    else:  # replicated
        assert all(torch.equal(lk, k) and torch.equal(lv, v) for _, lk, lv in local)
    if cfg.qkv_bias:
        bq = fa.self_attn.qkv_proj.bias[: nq * D]
        assert torch.equal(torch.cat([p.self_attn.qkv_proj.bias[: nq * D // 2] for p in parts]), bq)
    assert torch.equal(
        torch.cat([p.self_attn.o_proj.weight for p in parts], dim=1), fa.self_attn.o_proj.weight
    )
    assert torch.equal(torch.cat([p.mlp.down_proj.weight for p in parts], dim=1), fa.mlp.down_proj.weight)
    g, u = fa.mlp.gate_up_proj.weight.chunk(2)
    assert torch.equal(torch.cat([p.mlp.gate_up_proj.weight.chunk(2)[0] for p in parts]), g)
    assert torch.equal(torch.cat([p.mlp.gate_up_proj.weight.chunk(2)[1] for p in parts]), u)
    V = cfg.vocab_size
    emb = torch.cat([m.model.embed_tokens.weight for m in ranks])
    assert torch.equal(emb[:V], full.model.embed_tokens.weight) and not emb[V:].any()
    assert ranks[0].head_weight().shape[0] == ranks[1].head_weight().shape[0] == -(-V // 2)
    if cfg.tie_word_embeddings:
        assert ranks[1].head_weight() is ranks[1].model.embed_tokens.weight


def test_head_and_vocab_layouts() -> None:
    """vLLM's kv replication rule and the padded vocabulary split."""
    hl = head_layout(64, 8, TPInfo(8, 5))
    assert (hl.n_q, hl.q_start, hl.n_kv, hl.kv_start) == (8, 40, 1, 5)
    hl = head_layout(32, 2, TPInfo(8, 5))  # 4 ranks per kv head
    assert (hl.n_q, hl.q_start, hl.n_kv, hl.kv_start) == (4, 20, 1, 1)
    hl = head_layout(32, 8, TPInfo(2, 1))
    assert (hl.n_q, hl.q_start, hl.n_kv, hl.kv_start) == (16, 16, 4, 4)
    shards = [vocab_shard(10, TPInfo(4, r)) for r in range(4)]
    assert [(s.start, s.n_valid, s.padded) for s in shards] == [(0, 3, 3), (3, 3, 3), (6, 3, 3), (9, 1, 3)]


def test_vocab_parallel_logprobs_dry_run_counts() -> None:
    """A dry-run TPInfo (group None) sends nothing and counts every collective."""
    from rmbench_fast.engine.layers.parallel import vocab_parallel_logprobs

    counter = CommCounter()
    tp = TPInfo(size=2, rank=0, counter=counter)
    z = torch.randn(5, 8)
    lp, lp_ref = vocab_parallel_logprobs(
        z, torch.tensor([0, 1, 2, 3, 4]), vocab_shard(15, tp), z, vocab_shard(15, tp)
    )
    assert lp_ref is not None and torch.equal(lp, lp_ref)
    # alone (nothing reduced) this is log_softmax over this rank's 8 columns
    assert torch.allclose(lp, torch.log_softmax(z, -1).gather(1, torch.arange(5)[:, None])[:, 0])
    assert dict(counter.calls) == {"logprob_max": 1, "logprob_sum": 1}
    assert dict(counter.payload) == {"logprob_max": 2 * 5 * 4, "logprob_sum": 2 * 2 * 5 * 4}
    assert counter.sent(2)["logprob_sum"] == 80.0


def test_token_logit_is_computed_by_its_owner_only() -> None:
    """One vocabulary row's logit (--reward causal-logit): the owning rank's value, 0 elsewhere."""
    from rmbench_fast.engine.layers.parallel import vocab_parallel_token_logit

    h, w = torch.randn(3, 4), torch.randn(6, 4)  # a shard of ceil(11 / 2) = 6 rows
    own, other = (vocab_shard(11, TPInfo(size=2, rank=r)) for r in range(2))
    z = vocab_parallel_token_logit(h, w, 2, own, 8.0)
    assert torch.equal(z, torch.tanh(h @ w[2:3].T / 8.0) * 8.0)
    assert not vocab_parallel_token_logit(h, w, 2, other, 8.0).any()
    assert torch.equal(vocab_parallel_token_logit(h, w, 8, other, None), h @ w[2:3].T)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"num_attention_heads": 3, "num_key_value_heads": 3}, "3 attention heads do not split over --tp 2"),
        ({"num_key_value_heads": 3, "num_attention_heads": 6}, "3 key/value heads do not split"),
        ({"intermediate_size": 95}, "intermediate_size = 95 does not split"),
        ({"family": "phi3"}, "not written for the phi3 family"),
    ],
)
def test_layouts_that_cannot_split_fail_in_one_line(
    change: dict[str, Any], match: str, dirs: dict[str, Path]
) -> None:
    cfg = replace(_cfg(dirs, "llama-gqa-oddvocab-avg"), **change)
    with pytest.raises(ModelError, match=match) as exc:
        check_tp(cfg, TPInfo(size=2, rank=0))
    assert "\n" not in str(exc.value) and "--tp 1" in str(exc.value)


def test_tp1_is_the_plain_model(dirs: dict[str, Path]) -> None:
    """tp=None builds exactly today's modules (no TP layer anywhere)."""
    from rmbench_fast.engine.models.tensor_parallel import SHARDED

    model = load_model(dirs["gemma2-classifier"], dtype="float32")
    assert model.tp is None and model.vocab_shard() is None
    assert not any(isinstance(m, SHARDED) for m in model.modules())
