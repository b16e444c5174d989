"""The fused Triton kernels of issue 21 (kernels/lse_merge.py, kernels/rmsnorm.py) against float64
and their torch references, over dtypes and odd shapes.

On CPU the kernels run in Triton's interpreter (TRITON_INTERPRET=1 before triton is first
imported; see kernels/_triton_util.py), set by tests/helpers/triton_env.py (imported before the
kernels) when it is the first to import triton;
otherwise the in-process checks skip and `test_rerun_in_interpreter_subprocess` runs this file
in a fresh interpreter-mode process. On a GPU machine they run compiled on CUDA tensors.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers.triton_env import DEVICE, HAS_CUDA, RUNNABLE, needs_kernels, rerun_in_interpreter

# isort: split
from rmbench_fast.kernels.lse_merge import lse_merge_ref, lse_merge_triton
from rmbench_fast.kernels.rmsnorm import rmsnorm_ref, rmsnorm_triton

from rmbench_fast.engine.layers.attention import flash

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# One rounding of the fp32 result to the dtype (half an ulp), plus fp32 slack.
TOL = {torch.float32: 1e-5, torch.bfloat16: 8e-3, torch.float16: 1e-3}


def _merge_inputs(T: int, H: int, D: int, dtype: torch.dtype, seed: int = 0):  # noqa: ANN202
    g = torch.Generator().manual_seed(seed)
    o_a = torch.randn(T, H, D, generator=g).to(dtype)
    o_b = torch.randn(T, H, D, generator=g).to(dtype)
    l_a = torch.randn(T, H, generator=g) * 4
    l_b = torch.randn(T, H, generator=g) * 4
    rows = torch.rand(T, generator=g) > 0.3
    # FlashAttention's empty rows outside the merge: o_B = 0, l_B = +inf; inside, l_B = -inf rows.
    l_b[~rows] = torch.inf
    o_b[~rows] = 0
    if T > 2:
        l_b[rows.nonzero()[0, 0], 0] = -torch.inf
        o_b[rows.nonzero()[0, 0], 0] = torch.nan  # must not be read where w_B = 0
    # varlen_attn's LSE comes transposed: [Hq, Tq] viewed as [Tq, Hq] (strides (1, T))
    l_a = l_a.t().contiguous().t()
    return [x.to(DEVICE) for x in (o_a, l_a, o_b, l_b, rows)]


def _merge_exact(o_a, l_a, o_b, l_b, rows) -> torch.Tensor:  # noqa: ANN001
    """The merge in float64: sigmoid form, o_B's NaN ignored where l_B = -inf."""
    r = rows.reshape(-1, 1)
    lb = torch.where(r, l_b.double(), -torch.inf)
    w = torch.sigmoid(l_a.double() - lb)[..., None]
    ob = torch.where(torch.isfinite(lb)[..., None], o_b.double(), 0.0)
    return torch.where(r[..., None], w * o_a.double() + (1 - w) * ob, o_a.double())


@needs_kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("T", "H", "D"), [(1, 1, 8), (37, 3, 24), (64, 8, 128), (5, 2, 80), (9, 4, 7)])
def test_lse_merge_kernel_vs_float64(dtype: torch.dtype, T: int, H: int, D: int) -> None:
    args = _merge_inputs(T, H, D, dtype)
    exact = _merge_exact(*args)
    got = lse_merge_triton(*args)
    ref = lse_merge_ref(*args)
    assert got.dtype == dtype and got.shape == (T, H, D) and torch.isfinite(got).all()
    scale = 1 + exact.abs()
    assert ((got.double() - exact).abs() / scale).max() <= TOL[dtype]
    assert ((ref.double() - exact).abs() / scale).max() <= TOL[dtype]
    # rows outside the merge are o_A bit for bit
    keep = ~args[4]
    assert torch.equal(got[keep], args[0][keep])


@needs_kernels
def test_lse_merge_matches_the_flash_merge() -> None:
    """The kernel computes what flash.lse_merge (the CUDA path's torch merge) computes."""
    o_a, l_a, o_b, l_b, rows = _merge_inputs(50, 4, 32, torch.bfloat16, seed=3)
    want = flash.lse_merge(o_a, l_a, o_b, l_b, rows[:, None])
    got = lse_merge_triton(o_a, l_a, o_b, l_b, rows)
    assert (got.float() - want.float()).abs().max() <= 2 * 2**-8 * (1 + want.float().abs().max())


@needs_kernels
def test_lse_merge_rejects_bad_input() -> None:
    o_a, l_a, o_b, l_b, rows = _merge_inputs(4, 2, 8, torch.float32)
    with pytest.raises(ValueError, match="\\[T, H, D\\]"):
        lse_merge_triton(o_a[0], l_a, o_b, l_b, rows)
    with pytest.raises(ValueError, match="float32"):
        lse_merge_triton(o_a, l_a.half(), o_b, l_b, rows)
    with pytest.raises(ValueError, match="T = 4"):
        lse_merge_triton(o_a, l_a, o_b, l_b, rows[:3])
    assert lse_merge_triton(o_a[:0], l_a[:0], o_b[:0], l_b[:0], rows[:0]).shape == (0, 2, 8)


@needs_kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("offset", [False, True])
@pytest.mark.parametrize(("T", "H"), [(1, 1), (7, 64), (33, 100), (3, 1000), (16, 4096)])
def test_rmsnorm_kernel_vs_float64(dtype: torch.dtype, offset: bool, T: int, H: int) -> None:
    g = torch.Generator().manual_seed(T * H)
    x = (torch.randn(T, H, generator=g) * 3).to(dtype).to(DEVICE)
    w = (torch.randn(H, generator=g) * 0.1 + (0.0 if offset else 1.0)).to(dtype).to(DEVICE)
    eps = 1e-6
    xd = x.double()
    n = xd * torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + eps)
    exact = n * (1 + w.double()) if offset else n * w.double()
    got = rmsnorm_triton(x, w, eps, offset=offset)
    ref = rmsnorm_ref(x, w, eps, offset=offset)
    assert got.dtype == dtype and got.shape == (T, H)
    scale = 1 + exact.abs()
    # Llama's form rounds twice in half precision (the normalised x, then the product).
    tol = TOL[dtype] * (1 if offset or dtype == torch.float32 else 2)
    assert ((got.double() - exact).abs() / scale).max() <= tol
    assert ((ref.double() - exact).abs() / scale).max() <= tol
    assert ((got.double() - ref.double()).abs() / scale).max() <= tol


@needs_kernels
def test_rmsnorm_strided_rows_and_bad_input() -> None:
    g = torch.Generator().manual_seed(0)
    big = torch.randn(6, 40, generator=g).to(DEVICE)
    x = big[::2, 3:35]  # row stride 80, unit column stride
    w = torch.randn(32, generator=g).to(DEVICE)
    torch.testing.assert_close(rmsnorm_triton(x, w, 1e-5), rmsnorm_ref(x, w, 1e-5), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="unit column stride"):
        rmsnorm_triton(big.t(), torch.ones(6, device=DEVICE), 1e-5)
    with pytest.raises(ValueError, match=r"\[T, H\]"):
        rmsnorm_triton(x, w[:5], 1e-5)


@pytest.mark.skipif(RUNNABLE, reason="kernels already ran in this process")
def test_rerun_in_interpreter_subprocess() -> None:
    rerun_in_interpreter(str(Path(__file__)))


@needs_kernels
def test_bench_fused_dry_run(capsys: pytest.CaptureFixture[str]) -> None:
    """bench/bench_fused.py's code path on tiny shapes (its GPU run times the same calls)."""
    if HAS_CUDA:
        pytest.skip("the dry run is the CPU form")
    from bench import bench_fused

    assert bench_fused.main(["--dry-run"]) == 0
    import json

    res = json.loads(capsys.readouterr().out)
    assert {"lse_merge/bfloat16", "rmsnorm/float16"} <= set(res)
    assert all(v["triton_us"] > 0 for k, v in res.items() if "/" in k)
