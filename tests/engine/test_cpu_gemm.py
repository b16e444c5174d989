"""engine/layers/cpu_gemm.py: oneDNN-packed linears against F.linear (the torch reference), the scorer's
choice, and what it records (issue 20).

Tolerances: fp32 |Δ| <= 2e-5 · (1 + |y|) per output (a different summation order over K <= 1536);
bf16 compares against the fp64 product, |Δ| <= 2e-2 · (1 + |y|) (bf16 output rounding).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rmbench_fast.engine.layers import cpu_gemm
from rmbench_fast.engine.layers.cpu_gemm import Linear, gemm, prepack, resolve_cpu_gemm
from rmbench_fast.engine.layers.linear import PackedLinear
from rmbench_fast.engine.layers.mlp import GatedMLP
from rmbench_fast.errors import UsageError

needs_onednn = pytest.mark.skipif(not cpu_gemm.onednn_available(), reason="torch without mkldnn")


def _pack(w: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(w, None)


@needs_onednn
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("T,k,n", [(1, 24, 7), (7, 77, 130), (333, 576, 960), (64, 1536, 576)])
@pytest.mark.parametrize("bias", [False, True])
def test_packed_gemm_matches_reference(dtype: torch.dtype, T: int, k: int, n: int, bias: bool) -> None:
    if not cpu_gemm.onednn_packs(dtype):
        pytest.skip(f"oneDNN cannot pack {dtype} on this CPU (no AVX-512 BW/VL/DQ or AVX-NE-CONVERT)")
    g = torch.Generator().manual_seed(T * 1000 + k)
    x = torch.randn(T, k, generator=g).to(dtype)
    w = (torch.randn(n, k, generator=g) * k**-0.5).to(dtype)
    b = torch.randn(n, generator=g).to(dtype) if bias else None
    got = gemm(x, _pack(w), b)
    assert got.dtype == dtype and got.shape == (T, n)
    exact = x.double() @ w.double().T + (b.double() if b is not None else 0)
    rel = 2e-5 if dtype == torch.float32 else 2e-2
    assert ((got.double() - exact).abs() <= rel * (1 + exact.abs())).all()
    if dtype == torch.float32:  # and next to torch's own fp32 product
        ref = F.linear(x, w, b)
        assert ((got - ref).abs() <= 2e-5 * (1 + ref.abs())).all()


@needs_onednn
def test_packed_gemm_takes_strided_and_3d_inputs() -> None:
    g = torch.Generator().manual_seed(1)
    w = torch.randn(40, 32, generator=g)
    wp = _pack(w)
    wide = torch.randn(9, 64, generator=g)
    x = wide[:, 5:37]  # a strided view, as q/k/v splits are
    torch.testing.assert_close(gemm(x, wp), x @ w.T, rtol=2e-5, atol=2e-5)
    x3 = torch.randn(2, 5, 32, generator=g)
    assert gemm(x3, wp).shape == (2, 5, 40)


@needs_onednn
def test_a_row_does_not_depend_on_the_rest_of_the_batch() -> None:
    """With oneDNN the output of row i is the same whatever rows come with it (so packing more
    or fewer sequences into a batch cannot move a score); checked bit for bit."""
    g = torch.Generator().manual_seed(2)
    w = torch.randn(1536, 576, generator=g)
    wp = _pack(w)
    x = torch.randn(1000, 576, generator=g)
    full = gemm(x, wp)
    for rows in (1, 10, 257):
        assert torch.equal(gemm(x[:rows], wp), full[:rows])


@needs_onednn
def test_prepack_replaces_weights_in_place_and_keeps_counts() -> None:
    torch.manual_seed(0)
    mlp = GatedMLP(32, 48, bias=True)
    qkv = PackedLinear(32, {"q": 32, "k": 16, "v": 16}, bias=False)
    plain = torch.nn.Linear(32, 8)  # not an engine linear: left alone
    model = torch.nn.ModuleDict({"mlp": mlp, "qkv": qkv, "plain": plain})
    for p in model.parameters():
        torch.nn.init.normal_(p)
    x = torch.randn(11, 32)
    before = {"mlp": mlp(x), "qkv": qkv(x)}
    numel = sum(p.numel() for p in model.parameters())
    assert prepack(model) == 3  # gate_up, down, qkv
    assert mlp.down_proj.weight.is_mkldnn and qkv.weight.is_mkldnn and not plain.weight.is_mkldnn
    assert sum(p.numel() for p in model.parameters()) == numel
    for name, y in before.items():
        # fp32 error scales with the magnitude of the sums, not of the output: the MLP's down
        # projection sums terms of about 1e2 that cancel to below 1 (an AVX2 CPU's oneDNN kernel
        # misses an absolute 2e-5 by 1.4x at one such element), so the bound is relative to the
        # largest output.
        torch.testing.assert_close(model[name](x), y, rtol=2e-5, atol=2e-5 * float(y.detach().abs().max()))
    assert prepack(model) == 0  # already packed


def test_resolve_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_cpu_gemm("torch", cpu, torch.float32) == "torch"
    assert resolve_cpu_gemm("auto", cuda, torch.float32) == "torch"  # CUDA: cuBLAS either way
    assert resolve_cpu_gemm("auto", cpu, torch.float16) == "torch"
    with pytest.raises(UsageError, match="--cpu-gemm"):
        resolve_cpu_gemm("mkl", cpu, torch.float32)
    assert resolve_cpu_gemm("auto", cpu, torch.float32) == "torch"  # the measured default
    if cpu_gemm.onednn_available():
        assert resolve_cpu_gemm("onednn", cpu, torch.float32) == "onednn"
        if cpu_gemm.onednn_packs(torch.bfloat16):
            assert resolve_cpu_gemm("onednn", cpu, torch.bfloat16) == "onednn"
        else:  # an AVX2-only CPU: a clear error, not a crash at load
            with pytest.raises(UsageError, match="cannot pack bfloat16"):
                resolve_cpu_gemm("onednn", cpu, torch.bfloat16)
        assert resolve_cpu_gemm("onednn", cpu, torch.float16) == "torch"
    # A build without mkldnn: auto runs torch as always; onednn is an error.
    monkeypatch.setattr(cpu_gemm, "onednn_available", lambda: False)
    assert resolve_cpu_gemm("auto", cpu, torch.float32) == "torch"
    with pytest.raises(UsageError, match="no mkldnn"):
        resolve_cpu_gemm("onednn", cpu, torch.float32)


def test_engine_linear_is_nn_linear() -> None:
    lin = Linear(5, 3)
    x = torch.randn(4, 5)
    torch.testing.assert_close(lin(x), F.linear(x, lin.weight, lin.bias), rtol=0, atol=0)


@needs_onednn
@pytest.mark.parametrize("kind", ["dpo", "classifier"])
def test_scorer_onednn_matches_torch_and_says_what_ran(tmp_path: Path, kind: str) -> None:
    pytest.importorskip("transformers")
    from rmbench_fast.engine import NativeScorer
    from tests.helpers.tiny import make_tiny_model_dir, synthetic_records

    path = make_tiny_model_dir(
        tmp_path / "m", "llama", kind="causal" if kind == "dpo" else "classifier", seed=5
    )
    seqs = synthetic_records(6, vocab_size=32000, kind=kind, seed=4)
    runs = {}
    for choice in ("torch", "onednn"):
        sc = NativeScorer(path, kind=kind, cpu_gemm=choice, batch_tokens=512, log=None)
        runs[choice] = sc.score(seqs)
        assert sc.stats["cpu_gemm"] == choice
        assert sc.value_settings()["cpu_gemm"] == choice  # part of the results store's scope
        assert (sc.stats["packed_linears"] > 0) == (choice == "onednn")
    t, o = runs["torch"], runs["onednn"]
    assert np.isfinite(o).all()
    assert (np.abs(o - t) <= 1e-5 * (1 + np.abs(t))).all()
