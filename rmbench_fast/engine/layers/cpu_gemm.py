"""The CPU GEMM kernel of the engine's linears: oneDNN with weights packed once, or torch's F.linear.

    y = x Wᵀ + b,  x: [..., in], W: [out, in], b: [out] -> y: [..., out]

`gemm(x, W, b)` is the one call every body linear makes (packed q/k/v and gate/up, o, down, the
row-parallel layers of tensor parallelism). When W is a oneDNN-packed tensor (`W.is_mkldnn`,
made by `prepack`), it runs torch.ops.mkldnn._linear_pointwise, the path vLLM's CPU backend,
IPEX and Inductor's weight prepacking take; otherwise F.linear (MKL sgemm in the x86 wheels).

Why it is there, and why it is not the default: F.linear re-reads W in its plain layout on every
call, and oneDNN reorders W once into its blocked layout. On the 2-core AVX-512/AMX machine this
project is measured on, that bought nothing at SmolLM2's shapes (bench/bench_gemm_cpu.py,
bench/results/gemm-cpu.json): both reach 280-300 GFLOP/s in fp32 at T = 1024-8192 rows, MKL loses
only at one shape (o at T = 1024: 87 against 251), and in bf16 both reach about 2 TFLOP/s (F.linear
already runs oneDNN there). So `auto` is torch, and `onednn` is an opt-in for CPUs where the
benchmark says otherwise. The packed tensor replaces the plain Parameter (same numel): memory does
not grow.

Rounding: oneDNN sums in another order than MKL, so the last bits of the scores follow the choice
(it is part of the results store's scope, `NativeScorer.value_settings`). A row's output does not
depend on the other rows of the batch with oneDNN (checked in tests/engine/test_cpu_gemm.py), as it
does with MKL; so batching cannot change a score either way beyond the choice itself.

Choices (`--cpu-gemm`): `torch` (= `auto`, measured above); `onednn` on a CPU device, float32 or
bfloat16 (an error if this torch build has no mkldnn, or for bfloat16 on a CPU whose oneDNN cannot
pack it, `onednn_packs`; other dtypes and devices run torch). The LM head and the classifier and
custom heads stay on F.linear: a tied LM head is also the embedding table, which a packed tensor
cannot index, and a second, packed copy would add its size to the peak memory.
"""

from __future__ import annotations

import functools
import time

import torch
import torch.nn.functional as F
from torch import nn

from rmbench_fast.errors import UsageError

CPU_GEMMS = ("auto", "onednn", "torch")
_PACKABLE_DTYPES = (torch.float32, torch.bfloat16)


def onednn_available() -> bool:
    """Whether this torch build has the mkldnn linear ops (x86 and most ARM wheels do)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


@functools.cache
def onednn_packs(dtype: torch.dtype) -> bool:
    """Whether oneDNN packs `dtype` weights on this CPU (probed once on a tiny weight).

    fp32 packs everywhere mkldnn exists; bf16 needs AVX-512 BW/VL/DQ or AVX-NE-CONVERT, which
    AVX2-only CPUs (AMD Zen 3, many cloud VMs) lack: there the reorder raises."""
    if not onednn_available() or dtype not in _PACKABLE_DTYPES:
        return False
    try:
        torch.ops.mkldnn._reorder_linear_weight(torch.zeros(16, 16, dtype=dtype), None)
    except RuntimeError:
        return False
    return True


def resolve_cpu_gemm(choice: str, device: torch.device, dtype: torch.dtype) -> str:
    """The kernel that runs: "onednn" or "torch" ("torch" off the CPU, where the choice is moot)."""
    if choice not in CPU_GEMMS:
        raise UsageError(f"unknown --cpu-gemm {choice!r}; use one of {', '.join(CPU_GEMMS)}")
    if device.type != "cpu" or choice in ("torch", "auto"):  # auto: measured, see the docstring
        return "torch"
    if not onednn_available():
        raise UsageError("--cpu-gemm onednn: this torch build has no mkldnn (oneDNN) support")
    if dtype not in _PACKABLE_DTYPES:
        return "torch"  # oneDNN's fp16 linear is not faster on CPUs without AMX-FP16
    if not onednn_packs(dtype):
        raise UsageError(
            f"--cpu-gemm onednn: oneDNN cannot pack {str(dtype).removeprefix('torch.')} weights on this CPU "
            "(bf16 needs AVX-512 BW/VL/DQ or AVX-NE-CONVERT); use --cpu-gemm torch"
        )
    return "onednn"


def gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """y = x Wᵀ + b: x [..., in], W [out, in] (plain or oneDNN-packed), b [out] -> [..., out]."""
    if weight.is_mkldnn:
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """nn.Linear whose product runs through `gemm`, so `prepack` can pack its weight."""

    packable_weight = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gemm(x, self.weight, self.bias)


def prepack(model: nn.Module) -> int:
    """Pack every body linear's weight for oneDNN in place; returns how many were packed.

    A module takes part when it says so with `packable_weight = True` (engine Linear,
    PackedLinear, RowParallelLinear) and holds a float32/bfloat16 CPU weight. The packed tensor
    replaces the Parameter (same shape and numel, so parameter counts and FLOP figures stay)."""
    n = 0
    for module in model.modules():
        w = getattr(module, "weight", None)
        if not getattr(module, "packable_weight", False) or w is None or w.is_mkldnn:
            continue
        if w.device.type != "cpu" or not onednn_packs(w.dtype):
            continue
        packed = torch.ops.mkldnn._reorder_linear_weight(w.detach(), None)
        module.weight = nn.Parameter(packed, requires_grad=False)
        n += 1
    return n


def peak_gemm_rate(device: str, dtype: torch.dtype, n: int = 0, budget_s: float = 1.0) -> dict[str, object]:
    """The best GEMM rate measured here and now: each candidate on a large square product
    (n x n x n; default 2048 on the CPU, 8192 on CUDA), best of its repeats within `budget_s`.

    The candidates: torch's mm, and on the CPU also oneDNN with the weight packed (when
    available). MFU figures are fractions of the fastest, never of torch.mm alone, which on some
    CPUs reaches under half of what the machine does (issue 20)."""
    cuda = device.startswith("cuda")
    n = n or (8192 if cuda else 2048)
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    calls = {"torch.mm": lambda: torch.mm(a, b)}
    if not cuda and onednn_packs(dtype):
        bp = torch.ops.mkldnn._reorder_linear_weight(b.T.contiguous(), None)  # W [out, in] = bᵀ
        calls["onednn"] = lambda: gemm(a, bp)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    rates: dict[str, float] = {}
    for name, call in calls.items():
        call()  # warm-up (first-touch page faults, oneDNN's JIT)
        call()
        sync()
        best, spent, reps = float("inf"), 0.0, 0
        # At least 5 timed calls: with 3 (a 0.3 s budget on a 2-core AVX2 machine) one bench
        # read a peak below the run's own matmul rate (bench/results/vllm-cpu.json, avx2_machine).
        while (spent < budget_s or reps < 5) and reps < 30:
            t0 = time.perf_counter()
            call()
            sync()
            dt = time.perf_counter() - t0
            best, spent, reps = min(best, dt), spent + dt, reps + 1
        rates[name] = 2.0 * n**3 / best
    fastest = max(rates, key=lambda k: rates[k])
    return {
        "shape": [n, n, n],
        "dtype": str(dtype).removeprefix("torch."),
        "candidates_flops_per_s": rates,
        "fastest": fastest,
        "flops_per_s": rates[fastest],
    }
