"""pytest-benchmark: label log-prob kernels vs torch baselines.

    /work/venv/bin/pytest bench/bench_kernels.py --benchmark-only            # CPU: tiny shapes
On a GPU the real shapes run (Llama-3 / Qwen2 / Llama-2 vocabularies, T = 4k, 16k, 64k), plus
torch.compile, our Triton kernels A and B, and cut-cross-entropy / Liger if importable.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch


def _load_shapes() -> Any:
    """bench/conftest.py by path under a unique name: a bare `import conftest` could pick up another
    directory's conftest module already in sys.modules (e.g. tests/conftest.py under pytest)."""
    name = "rmbf_bench_shapes"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent / "conftest.py")
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


_shapes = _load_shapes()
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
    """Name -> fn(inputs) for everything runnable on this device."""
    impls: dict[str, Callable[[dict[str, torch.Tensor]], torch.Tensor]] = {
        "torch_logits": lambda x: torch_label_logprobs(x["logits"], x["labels"]),
        "torch_linear": lambda x: torch_linear_logprobs(x["hidden"], x["weight"], x["labels"]),
    }
    if DEVICE != "cuda":
        return impls
    from rmbench_fast.kernels.dpo_logratio import dpo_logratio_triton
    from rmbench_fast.kernels.linear_logratio import linear_logratio_triton

    compiled = torch.compile(torch_label_logprobs)
    impls["compile_logits"] = lambda x: compiled(x["logits"], x["labels"])
    impls["triton_logits"] = lambda x: dpo_logratio_triton(x["logits"], None, x["labels"])[0]
    impls["triton_linear"] = lambda x: linear_logratio_triton(x["hidden"], x["weight"], x["labels"])
    try:
        from rmbench_fast import _cuda  # noqa: F401
        from rmbench_fast.logprobs import cuda_dpo_logratio

        impls["cuda_logits"] = lambda x: cuda_dpo_logratio(x["logits"], None, x["labels"])[0]
    except ImportError:
        pass
    try:
        from cut_cross_entropy import linear_cross_entropy

        impls["cce_linear"] = lambda x: -linear_cross_entropy(x["hidden"], x["weight"], x["labels"], reduction="none")
    except ImportError:
        pass
    try:
        from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss

        liger = LigerFusedLinearCrossEntropyLoss(reduction="none")
        impls["liger_linear"] = lambda x: -liger(x["weight"], x["hidden"], x["labels"])
    except ImportError:
        pass
    return impls


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
