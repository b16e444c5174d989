"""The C++ CPU attention kernel against the torch paths it replaces, interleaved in one process.

    python bench/bench_cpu_attention.py [--repeats 7] [--threads 2] [--head-dim 64] [--json F]

One packed batch of RM-Bench-like records (bench_split_attention.rmbench_like_batch: prompts of
60-300 tokens, six answers of 20-400 tokens, an 8192-token budget) at SmolLM2-135M's attention
shape (9 query heads over 3 KV heads, head size 64; `--head-dim 128 --heads 32 8` for an 8B
shape), fp32. The paths run the same inputs alternately, so machine load hits them alike:
    split       torch's CPU flash op per prefix and branch, merged by log-sum-exp (split.py)
    cpu_kernel  one C++ call for the whole batch (cpu_kernel.py; AVX-512 or AVX2)
Reported per path: the best of `--repeats`, the attention FLOP rate (4 D Hq per visible
query-key pair, the work every exact path must do) and the largest difference from the fp64
dense reference; and, measured in the same run, the machine's best GEMM rate (the peak MFU
figures use), so the kernel's rate reads as a fraction of it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from bench_split_attention import rmbench_like_batch

from rmbench_fast.engine.layers.attention import packed_attention
from rmbench_fast.engine.layers.attention.cpu_kernel import cpu_kernel_attention, kernel_isa
from rmbench_fast.engine.layers.attention.split import sdpa_split
from rmbench_fast.engine.layers.cpu_gemm import peak_gemm_rate
from rmbench_fast.engine.layout import PackedLayout
from rmbench_fast.utils.threads import cpu_description


def visible_pairs(layout: PackedLayout) -> int:
    """Query-key pairs the packed rule makes visible: a prefix of P sees P(P+1)/2, a branch of n
    rows after a prefix of P sees nP + n(n+1)/2."""
    total = 0
    for _, P, branches in layout.segment_spans():
        total += P * (P + 1) // 2
        total += sum((s1 - s0) * P + (s1 - s0) * (s1 - s0 + 1) // 2 for s0, s1 in branches)
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=64, choices=(64, 128))
    ap.add_argument("--heads", type=int, nargs=2, default=(9, 3), metavar=("HQ", "HK"))
    ap.add_argument("--json", type=Path, help="also write the result here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    layout = rmbench_like_batch()
    spans = layout.segment_spans()
    (Hq, Hk), D, T = args.heads, args.head_dim, layout.n_tokens
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(T, h, D, generator=g) for h in (Hq, Hk, Hk))
    impls = {
        "split": lambda: sdpa_split(q, k, v, spans),
        "cpu_kernel": lambda: cpu_kernel_attention(q, k, v, layout),
    }
    ref = packed_attention(q.double(), k.double(), v.double(), layout, None, "dense")
    diffs = {name: float((f().double() - ref).abs().max()) for name, f in impls.items()}  # + warm-up
    best = dict.fromkeys(impls, float("inf"))
    for _ in range(args.repeats):
        for name, f in impls.items():
            t0 = time.perf_counter()
            f()
            best[name] = min(best[name], time.perf_counter() - t0)
    flops = 4.0 * D * Hq * visible_pairs(layout)
    peak = peak_gemm_rate("cpu", torch.float32)
    res = {
        "shape": {"tokens": T, "q_heads": Hq, "kv_heads": Hk, "head_dim": D, "dtype": "float32"},
        "threads": args.threads,
        "cpu": cpu_description(),
        "isa": kernel_isa(),
        "attention_flops": flops,
        "best_s": {n: round(t, 5) for n, t in best.items()},
        "gflops_per_s": {n: round(flops / t / 1e9, 1) for n, t in best.items()},
        "speedup_kernel_vs_split": round(best["split"] / best["cpu_kernel"], 3),
        "max_abs_diff_vs_fp64": diffs,
        "gemm_peak_gflops_per_s": round(peak["flops_per_s"] / 1e9, 1),
        "kernel_fraction_of_gemm_peak": round(flops / best["cpu_kernel"] / peak["flops_per_s"], 3),
        "command": " ".join(["python", Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
    }
    print(json.dumps(res, indent=1))
    if args.json:
        args.json.write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
