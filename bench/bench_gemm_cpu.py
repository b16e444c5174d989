"""The CPU GEMM candidates at a model's linear shapes: which kernel the engine should run (issue 20).

    python bench/bench_gemm_cpu.py [--model-shape smollm2-135m] [--tokens 1024 4096 8192] [--threads 2]
                                   [--out bench/results/gemm-cpu.json]

For each linear of one decoder layer (packed q/k/v, o, packed gate/up, down) and the LM head at
answer rows, and for each row count T, it times y = x Wᵀ (x: [T, in], W: [out, in], fp32) with:
- `torch`:  F.linear (MKL sgemm in the x86 wheels);
- `onednn`: the weight packed once by torch.ops.mkldnn._reorder_linear_weight, then
            torch.ops.mkldnn._linear_pointwise (the path vLLM-CPU, IPEX and Inductor's prepacking take);
and, as the machine's reference only (never run by the engine), `numpy` (OpenBLAS sgemm).
Each figure is the best of `--repeats` timed calls after a warm-up, as GFLOP/s = 2·T·in·out / s.
`peak` is the fastest candidate at a large square shape, measured in the same run: the rate the
profile's MFU is reported against.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

# name: (hidden, intermediate, q heads, kv heads, head dim, vocab)
SHAPES = {
    "smollm2-135m": (576, 1536, 9, 3, 64, 49152),
    "llama-3.2-1b": (2048, 8192, 32, 8, 64, 128256),
}


def linears(shape: str) -> dict[str, tuple[int, int]]:
    """{name: (in_features, out_features)} of one layer's linears and the LM head."""
    h, inter, hq, hk, d, vocab = SHAPES[shape]
    return {
        "qkv": (h, (hq + 2 * hk) * d),
        "o": (hq * d, h),
        "gate_up": (h, 2 * inter),
        "down": (inter, h),
        "lm_head": (h, vocab),
    }


def best_time(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up: first-call allocation and oneDNN primitive creation
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def candidates(x: torch.Tensor, w: torch.Tensor) -> dict[str, Callable[[], Any]]:
    """The kernels computing x @ w.T, each a zero-argument call (packing done beforehand)."""
    out: dict[str, Callable[[], Any]] = {"torch": lambda: F.linear(x, w)}
    if torch.backends.mkldnn.is_available():
        wp = torch.ops.mkldnn._reorder_linear_weight(w, None)
        out["onednn"] = lambda: torch.ops.mkldnn._linear_pointwise(x, wp, None, "none", [], "")
    xn, wtn = x.numpy(), np.ascontiguousarray(w.numpy().T)
    out["numpy"] = lambda: xn @ wtn
    return out


def measure(shape: str, tokens: list[int], repeats: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    g = torch.Generator().manual_seed(0)
    rows = []
    for T in tokens:
        for name, (k, n) in linears(shape).items():
            x = torch.randn(T, k, generator=g)
            w = torch.randn(n, k, generator=g) * k**-0.5
            flops = 2 * T * k * n
            rates = {c: flops / best_time(fn, repeats) / 1e9 for c, fn in candidates(x, w).items()}
            engine = {c: r for c, r in rates.items() if c != "numpy"}
            rows.append(
                {
                    "T": T,
                    "linear": name,
                    "in": k,
                    "out": n,
                    "gflops": {c: round(r, 1) for c, r in rates.items()},
                    "fastest_engine_candidate": max(engine, key=lambda c: engine[c]),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    n = 2048
    x, w = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    square = {c: 2 * n**3 / best_time(fn, repeats) / 1e9 for c, fn in candidates(x, w).items()}
    peak_name = max((c for c in square if c != "numpy"), key=lambda c: square[c])
    peak = {
        "shape": f"{n}x{n}x{n}",
        "gflops": {c: round(r, 1) for c, r in square.items()},
        "peak_engine_gflops": round(square[peak_name], 1),
        "peak_candidate": peak_name,
    }
    return rows, peak


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-shape", default="smollm2-135m", choices=sorted(SHAPES))
    ap.add_argument("--tokens", type=int, nargs="+", default=[1024, 4096, 8192])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows, peak = measure(args.model_shape, args.tokens, args.repeats)
    wins: dict[str, int] = {}
    for r in rows:
        wins[r["fastest_engine_candidate"]] = wins.get(r["fastest_engine_candidate"], 0) + 1
    report = {
        "what": "fp32 GEMM candidates at a model's linear shapes (bench/bench_gemm_cpu.py docstring)",
        "command": "python bench/bench_gemm_cpu.py " + " ".join(sys.argv[1:]),
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "threads": args.threads,
            "torch": torch.__version__,
            "mkldnn": torch.backends.mkldnn.is_available(),
            "openblas_env": {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")},
        },
        "model_shape": args.model_shape,
        "rows": rows,
        "peak": peak,
        "fastest_engine_candidate_count": wins,
    }
    print(json.dumps(peak))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
