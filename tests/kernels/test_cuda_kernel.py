"""CUDA C++ kernel A (rmbench_fast._cuda): argument checks on any machine, numerics on a GPU."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from rmbench_fast.kernels.reference import dpo_logratio_ref

from rmbench_fast.scoring import logprobs

try:
    from rmbench_fast import _cuda
except ImportError as e:  # built only where nvcc was found
    _cuda = None
    _WHY = f"rmbench_fast._cuda is not built ({e})"
else:
    _WHY = ""

needs_module = pytest.mark.skipif(_cuda is None, reason=_WHY or "built")
needs_gpu = pytest.mark.skipif(
    _cuda is None or not torch.cuda.is_available(), reason=_WHY or "needs a CUDA GPU"
)

# A valid argument set (fake but non-null pointers): T=4, V=10, contiguous, with a reference.
GOOD: dict[str, Any] = dict(
    pol=0x1000, ref=0x2000, labels=0x3000, out_pol=0x4000, out_ref=0x5000, out_diff=0x6000,
    dtype=0, label_dtype=0, T=4, V=10, T_ref=4, V_ref=10, n_labels=4,
    stride_pt=10, stride_pv=1, stride_rt=10, stride_rv=1, stride_lab=1, ignore_index=-100, stream=0,
)  # fmt: skip


def _args(**change: Any) -> list[Any]:
    return list({**GOOD, **change}.values())


@needs_module
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"dtype": 7}, "bad logits dtype code 7"),
        ({"label_dtype": 3}, "bad labels dtype code 3"),
        ({"V": 0, "V_ref": 0}, "V > 0"),
        ({"V_ref": 11}, "ref logits shape [4, 11] != policy logits shape [4, 10]"),
        ({"n_labels": 5}, "labels length 5 != T = 4"),
        ({"stride_pv": -1}, "negative strides"),
        ({"pol": 0}, "policy logits pointer is null"),
        ({"labels": 0}, "labels pointer is null"),
        ({"out_diff": 0}, "all given or all null"),
        ({"T": 2**31, "T_ref": 2**31, "n_labels": 2**31}, "grid limit"),
    ],
)
def test_binding_rejects_bad_arguments_before_any_cuda_call(change: dict[str, Any], message: str) -> None:
    assert _cuda.check_args(*_args()) == ""
    assert message in _cuda.check_args(*_args(**change))
    # The launcher runs the same host checks first: ValueError, no CUDA call, even without a GPU.
    with pytest.raises(ValueError, match="dpo_logratio: "):
        _cuda.dpo_logratio(*_args(**change))


@needs_module
def test_no_ref_and_empty_batch_are_valid() -> None:
    assert _cuda.check_args(*_args(ref=0, out_ref=0, out_diff=0, T_ref=0, V_ref=0)) == ""
    assert _cuda.check_args(*_args(T=0, n_labels=0, T_ref=0, pol=0, labels=0, out_pol=0)) == ""
    _cuda.dpo_logratio(*_args(T=0, n_labels=0, T_ref=0))  # nothing to launch: returns quietly


@needs_module
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error path")
def test_call_without_gpu_fails_clearly() -> None:
    with pytest.raises(RuntimeError, match="rmbench_fast._cuda"):
        _cuda.dpo_logratio(*_args())
    with pytest.raises(RuntimeError, match="rmbench_fast._cuda"):
        logprobs.cuda_dpo_logratio(torch.randn(3, 5), None, torch.tensor([1, 2, 3]))


@needs_module
def test_python_side_rejects_unsupported_dtype() -> None:
    with pytest.raises(ValueError, match="unsupported dtypes"):
        logprobs.cuda_dpo_logratio(torch.randn(3, 5).double(), None, torch.tensor([1, 2, 3]))


@needs_gpu
def test_host_pointer_rejected_on_gpu_machine() -> None:
    with pytest.raises(ValueError, match="not a CUDA device pointer"):
        logprobs.cuda_dpo_logratio(torch.randn(3, 5), None, torch.tensor([1, 2, 3]))


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("V", [1000, 32003, 128256])
def test_cuda_kernel_vs_float64(dtype: torch.dtype, V: int) -> None:
    gen = torch.Generator(device="cuda").manual_seed(V)
    T = 37
    big = torch.randn(T, V + 5, device="cuda", generator=gen).mul(4).to(dtype)
    pol = big[:, 2 : V + 2]  # row stride V + 5
    ref = torch.randn(V, T, device="cuda", generator=gen).mul(4).to(dtype).t()  # column stride T
    lab = torch.randint(0, V, (T,), device="cuda", generator=gen)
    lab[::6] = -100
    for labels in (lab, lab.int()):
        lp, lpr, diff = logprobs.cuda_dpo_logratio(pol, ref, labels)
        torch.cuda.synchronize()
        want, want_r, _ = dpo_logratio_ref(pol.double(), ref.double(), lab)
        assert lpr is not None and diff is not None
        assert (lp.double() - want).abs().max().item() < 1e-4
        assert (lpr.double() - want_r).abs().max().item() < 1e-4
        assert torch.all(lp[lab == -100] == 0) and torch.all(diff[lab == -100] == 0)
    lp, lp_ref, diff = logprobs.token_logprobs(pol, lab, backend="cuda")
    assert lp_ref is None and diff is None and int((lp != 0).sum()) == int((lab != -100).sum())
