"""Shared setup factory for the kernel benchmarks (bench_kernels.py and gpu_kernels.py).

Real model shapes (vocabulary V, hidden size H) times token counts T. On CPU only tiny stand-ins
run, so the benchmarks (and gpu_kernels.py --dry-run) stay quick there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

MODELS: dict[str, tuple[int, int]] = {  # name -> (V, H)
    "llama3": (128256, 4096),
    "qwen2": (151936, 3584),
    "llama2": (32000, 5120),
}
GPU_TOKENS = (4096, 16384, 65536)
CPU_CASES = (("tiny-llama2", 256, 32000, 64), ("tiny-1k", 512, 1000, 64))


@dataclass(frozen=True)
class Case:
    """One benchmark shape: T tokens, vocabulary V, hidden size H, input dtype, device."""

    name: str
    T: int
    V: int
    H: int
    dtype: torch.dtype
    device: str

    @property
    def id(self) -> str:
        return f"{self.name}-T{self.T}"


def cases(
    device: str, tokens: tuple[int, ...] = GPU_TOKENS, models: tuple[str, ...] | None = None
) -> list[Case]:
    """The benchmark grid: real shapes in bf16 on CUDA, tiny fp32 stand-ins on CPU."""
    if device != "cuda":
        return [Case(n, T, V, H, torch.float32, device) for n, T, V, H in CPU_CASES]
    names = models or tuple(MODELS)
    return [Case(n, T, *MODELS[n], torch.bfloat16, device) for n in names for T in tokens]


def make_inputs(
    case: Case, *, logits: bool = True, hidden: bool = True, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Random inputs for `case`: labels [T] (1/8 ignored), and logits [T, V] and/or hidden [T, H] +
    weight [V, H]. Scales keep the softmax non-degenerate (logit std about 2-4)."""
    gen = torch.Generator(device=case.device).manual_seed(seed)
    kw = dict(device=case.device, generator=gen)
    out: dict[str, torch.Tensor] = {}
    labels = torch.randint(0, case.V, (case.T,), **kw)
    labels[::8] = -100
    out["labels"] = labels
    if logits:
        out["logits"] = torch.randn(case.T, case.V, **kw).mul_(3).to(case.dtype)
    if hidden:
        out["hidden"] = torch.randn(case.T, case.H, **kw).to(case.dtype)
        out["weight"] = torch.randn(case.V, case.H, **kw).mul_(2.5 / case.H**0.5).to(case.dtype)
    return out


def torch_label_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Baseline: fp32 log_softmax + gather (what the official code does, in fp32) -> [T]."""
    valid = labels != -100
    lp = torch.log_softmax(logits.float(), -1).gather(-1, torch.where(valid, labels, 0)[:, None])[:, 0]
    return torch.where(valid, lp, 0.0)


def torch_linear_logprobs(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Baseline: lm_head matmul in the input dtype, then fp32 log_softmax + gather -> [T]."""
    return torch_label_logprobs(hidden @ weight.T, labels)


Impl = Callable[[dict[str, torch.Tensor]], torch.Tensor]


def implementations(device: str) -> dict[str, Impl]:
    """Everything that runs on `device`: torch baselines always; compiled/Triton/CUDA/CCE/Liger on GPU."""
    impls: dict[str, Impl] = {
        "torch_logits": lambda x: torch_label_logprobs(x["logits"], x["labels"]),
        "torch_linear": lambda x: torch_linear_logprobs(x["hidden"], x["weight"], x["labels"]),
    }
    if device != "cuda":
        return impls
    from rmbench_fast.kernels.dpo_logratio import dpo_logratio_triton
    from rmbench_fast.kernels.linear_logratio import linear_logratio_triton

    compiled = torch.compile(torch_label_logprobs)
    impls["compile_logits"] = lambda x: compiled(x["logits"], x["labels"])
    impls["triton_logits"] = lambda x: dpo_logratio_triton(x["logits"], None, x["labels"])[0]
    impls["triton_linear"] = lambda x: linear_logratio_triton(x["hidden"], x["weight"], x["labels"])
    try:
        from rmbench_fast import _cuda  # noqa: F401
        from rmbench_fast.scoring.logprobs import cuda_dpo_logratio

        impls["cuda_logits"] = lambda x: cuda_dpo_logratio(x["logits"], None, x["labels"])[0]
    except ImportError:
        pass
    try:
        from cut_cross_entropy import linear_cross_entropy

        impls["cce_linear"] = lambda x: (
            -linear_cross_entropy(x["hidden"], x["weight"], x["labels"], reduction="none")
        )
    except ImportError:
        pass
    try:
        from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss

        liger = LigerFusedLinearCrossEntropyLoss(reduction="none")
        impls["liger_linear"] = lambda x: -liger(x["weight"], x["hidden"], x["labels"])
    except ImportError:
        pass
    return impls
