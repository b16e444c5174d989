"""GPU benchmark of the label log-prob kernels, with the device's own ceilings measured in the same run.

    python bench/gpu_kernels.py                 # on a GPU: all shapes, writes bench/results/kernels-<device>.json
    python bench/gpu_kernels.py --models llama3 --tokens 4096 16384
    python bench/gpu_kernels.py --dry-run       # CPU: tiny shapes, torch paths only, prints the JSON

For every (shape, implementation): median time (triton.testing.do_bench), peak extra memory,
achieved bandwidth (logits kernels: bytes of logits read / time) and FLOP/s (fused linear kernels:
2·T·V·H / time), each also as a fraction of the ceilings measured at the start (bf16 matmul rate
from an 8192³ GEMM; memory bandwidth from a large device copy).
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kernel_setup as _shapes  # noqa: E402
import torch

GPU_TOKENS, MODELS, Case = _shapes.GPU_TOKENS, _shapes.MODELS, _shapes.Case
cases, make_inputs = _shapes.cases, _shapes.make_inputs
torch_label_logprobs, torch_linear_logprobs = _shapes.torch_label_logprobs, _shapes.torch_linear_logprobs

Impl = _shapes.Impl


def bench_ms(fn: Callable[[], Any], device: str) -> float:
    """Median milliseconds: do_bench on GPU, a perf_counter loop on CPU (dry run)."""
    if device == "cuda":
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))
    fn()
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def measure_ceilings(device: str) -> dict[str, float]:
    """bf16 matmul FLOP/s and copy bandwidth (bytes read + written per second) of this device."""
    n, nbytes = (8192, 2 << 30) if device == "cuda" else (256, 16 << 20)
    a = torch.randn(n, n, device=device).to(torch.bfloat16 if device == "cuda" else torch.float32)
    ms = bench_ms(lambda: a @ a, device)
    flops = 2 * n**3 / (ms * 1e-3)
    src = torch.empty(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    ms_copy = bench_ms(lambda: dst.copy_(src), device)
    return {"matmul_flops": flops, "mem_bytes_per_s": 2 * nbytes / (ms_copy * 1e-3)}


def run_one(case: Case, name: str, fn: Impl, ceilings: dict[str, float]) -> dict[str, Any]:
    """Time one implementation on one shape; OOM is recorded, not fatal."""
    linear = name.endswith("_linear")
    row: dict[str, Any] = {"case": case.id, "impl": name, "T": case.T, "V": case.V, "H": case.H}
    row["dtype"] = str(case.dtype).replace("torch.", "")
    cuda = case.device == "cuda"
    try:
        inputs = make_inputs(case, logits=not linear, hidden=linear)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        out = fn(inputs)  # warm-up / compile, and the memory probe
        if cuda:
            torch.cuda.synchronize()
            row["peak_extra_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
        row["finite"] = bool(torch.isfinite(out).all())
        ms = bench_ms(lambda: fn(inputs), case.device)
    except torch.cuda.OutOfMemoryError:
        row["error"] = "out of memory"
        return row
    finally:
        if cuda:
            torch.cuda.empty_cache()
    row["ms"] = ms
    if linear:
        flops = 2 * case.T * case.V * case.H / (ms * 1e-3)
        row["tflops"] = flops / 1e12
        row["frac_matmul_ceiling"] = flops / ceilings["matmul_flops"]
    else:
        nbytes = case.T * case.V * inputs["logits"].element_size()
        row["gbps"] = nbytes / (ms * 1e-3) / 1e9
        row["frac_bw_ceiling"] = nbytes / (ms * 1e-3) / ceilings["mem_bytes_per_s"]
    return row


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, torch paths; print JSON only")
    p.add_argument("--models", nargs="+", choices=sorted(MODELS), default=None)
    p.add_argument("--tokens", nargs="+", type=int, default=list(GPU_TOKENS))
    p.add_argument("--impls", nargs="+", default=None, help="subset of implementation names")
    p.add_argument(
        "--out", type=Path, default=None, help="JSON path (default bench/results/kernels-<device>.json)"
    )
    args = p.parse_args(argv)

    device = "cpu" if args.dry_run or not torch.cuda.is_available() else "cuda"
    if device == "cpu" and not args.dry_run:
        p.error("no CUDA device: this benchmark needs a GPU (use --dry-run to check it on CPU)")
    dev_name = torch.cuda.get_device_name() if device == "cuda" else f"cpu-{platform.machine()}"
    ceilings = measure_ceilings(device)
    impls = _shapes.implementations(device)
    if args.impls:
        impls = {k: v for k, v in impls.items() if k in args.impls}
    rows = []
    for case in cases(device, tuple(args.tokens), tuple(args.models) if args.models else None):
        for name, fn in impls.items():
            row = run_one(case, name, fn, ceilings)
            rows.append(row)
            print(json.dumps(row), flush=True)
    result = {
        "device": dev_name,
        "command": shlex.join([sys.executable, *sys.argv])
        if argv is None
        else shlex.join(["gpu_kernels.py", *argv]),
        "torch": torch.__version__,
        "ceilings": ceilings,
        "results": rows,
    }
    if args.dry_run and args.out is None:
        return result
    slug = re.sub(r"[^A-Za-z0-9]+", "-", dev_name).strip("-").lower()
    out = args.out or Path(__file__).resolve().parent / "results" / f"kernels-{slug}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
