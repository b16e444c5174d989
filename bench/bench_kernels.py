"""pytest-benchmark: label log-prob kernels vs torch baselines.

    /work/venv/bin/pytest bench/bench_kernels.py --benchmark-only            # CPU: tiny shapes
On a GPU the real shapes run (Llama-3 / Qwen2 / Llama-2 vocabularies, T = 4k, 16k, 64k), plus
torch.compile, our Triton kernels A and B, and cut-cross-entropy / Liger if importable.
"""

from __future__ import annotations

from collections.abc import Callable

import kernel_setup as _shapes  # noqa: E402
import pytest
import torch

Case, cases, make_inputs = _shapes.Case, _shapes.cases, _shapes.make_inputs
torch_label_logprobs, torch_linear_logprobs = _shapes.torch_label_logprobs, _shapes.torch_linear_logprobs

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CASES = cases(DEVICE)


def _sync_call(fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
    def run() -> torch.Tensor:
        out = fn()
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        return out

    return run


def _impls(case: Case) -> dict[str, Callable[[dict[str, torch.Tensor]], torch.Tensor]]:
    """Name -> fn(inputs) for everything runnable on this device (the shared factory)."""
    return _shapes.implementations(DEVICE)


PARAMS = [(c, name) for c in CASES for name in _impls(c)]


@pytest.mark.parametrize(("case", "impl"), PARAMS, ids=[f"{c.id}-{n}" for c, n in PARAMS])
def test_label_logprobs(benchmark, case: Case, impl: str) -> None:  # noqa: ANN001
    inputs = make_inputs(case, logits="logits" in impl, hidden="linear" in impl)
    fn = _impls(case)[impl]
    benchmark.extra_info.update(T=case.T, V=case.V, H=case.H, dtype=str(case.dtype), device=DEVICE)
    try:
        out = benchmark(_sync_call(lambda: fn(inputs)))
    except torch.cuda.OutOfMemoryError:
        pytest.skip(f"{impl} runs out of GPU memory at {case.id}")
    assert out.shape == (case.T,)
    assert torch.isfinite(out).all()
