"""The fused Triton kernels of issue 21 against their torch versions: the flash backend's LSE merge
(kernels/lse_merge.py) and RMSNorm (kernels/rmsnorm.py), at Llama-3.1-8B shapes on a GPU.

    python bench/bench_fused.py [--tokens 16384] [--reps 50]   # CUDA: compiled kernels
    TRITON_INTERPRET=1 python bench/bench_fused.py --dry-run  # CPU: tiny shapes, the same code

Prints one JSON object: per op and dtype, the torch and Triton times (median of `reps`
synchronized runs, after a warm-up), their ratio, the bytes each must move at least, and the
Triton kernel's achieved bandwidth.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from rmbench_fast.kernels.lse_merge import lse_merge_ref, lse_merge_triton  # noqa: E402
from rmbench_fast.kernels.rmsnorm import rmsnorm_ref, rmsnorm_triton  # noqa: E402


def timed(fn: Callable[[], Any], reps: int, cuda: bool) -> float:
    """Median seconds of `reps` synchronized calls, after two warm-ups."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(reps):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_dtype(
    dtype: torch.dtype, tokens: int, heads: int, head_dim: int, hidden: int, reps: int, device: str
) -> dict[str, Any]:
    """Both ops in one dtype -> {op: times, ratio, bytes, bandwidth}."""
    cuda = device == "cuda"
    g = torch.Generator(device=device).manual_seed(0)
    o_a, o_b = (torch.randn(tokens, heads, head_dim, device=device, generator=g).to(dtype) for _ in range(2))
    l_a = torch.randn(heads, tokens, device=device, generator=g).t()  # varlen's transposed LSE
    l_b = torch.randn(heads, tokens, device=device, generator=g).t()
    rows = torch.rand(tokens, device=device, generator=g) > 0.2
    x = torch.randn(tokens, hidden, device=device, generator=g).to(dtype)
    w = torch.randn(hidden, device=device, generator=g).to(dtype)
    esz = torch.finfo(dtype).bits // 8
    cases = {
        "lse_merge": (
            lambda: lse_merge_ref(o_a, l_a, o_b, l_b, rows[:, None]),
            lambda: lse_merge_triton(o_a, l_a, o_b, l_b, rows),
            3 * o_a.numel() * esz + 2 * l_a.numel() * 4,
        ),
        "rmsnorm": (lambda: rmsnorm_ref(x, w, 1e-5), lambda: rmsnorm_triton(x, w, 1e-5), 2 * x.numel() * esz),
    }
    out: dict[str, Any] = {}
    for op, (ref, fused, nbytes) in cases.items():
        t_ref, t_fused = timed(ref, reps, cuda), timed(fused, reps, cuda)
        out[op] = {
            "torch_us": t_ref * 1e6,
            "triton_us": t_fused * 1e6,
            "speedup": t_ref / t_fused,
            "min_bytes": nbytes,
            "triton_gb_s": nbytes / t_fused / 1e9,
        }
    return out


def run(tokens: int, heads: int, head_dim: int, hidden: int, reps: int, device: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu (interpreter)"
    }
    for dtype in (torch.bfloat16, torch.float16):
        name = str(dtype).removeprefix("torch.")
        for op, res in bench_dtype(dtype, tokens, heads, head_dim, hidden, reps, device).items():
            out[f"{op}/{name}"] = res
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU (Triton's interpreter)")
    args = ap.parse_args(argv)
    if args.dry_run:
        res = run(tokens=8, heads=2, head_dim=16, hidden=64, reps=1, device="cpu")
    elif not torch.cuda.is_available():
        print("error: no CUDA device (use --dry-run with TRITON_INTERPRET=1)", file=sys.stderr)
        return 2
    else:  # Llama-3.1-8B: 32 query heads of 128, hidden 4096
        res = run(tokens=args.tokens, heads=32, head_dim=128, hidden=4096, reps=args.reps, device="cuda")
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
