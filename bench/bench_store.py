"""What the results store saves: a second run with the same reference model and another policy.

    python bench/bench_store.py [--limit 4] [--out bench/results/store-cpu.json]

Run 1 scores policy A against the reference (SmolLM2-135M-Instruct) with an empty store; run 2
scores policy B against the same reference: the reference's Σ log π_ref come from the store, so
run 2 does one model's forward passes instead of two. The policies are SmolLM2 with perturbed
weights (1% relative noise, different seeds). Same process, same records, timed back to back.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data" / "rm-bench"


def perturbed_copy(src: Path, dst: Path, seed: int, rel: float = 0.01) -> Path:
    """A copy of a model directory with every weight multiplied by (1 + rel * N(0, 1))."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    for f in dst.glob("*.safetensors"):
        g = torch.Generator().manual_seed(seed)
        tensors = load_file(str(f))
        out = {
            k: (v.float() * (1 + rel * torch.randn(v.shape, generator=g))).to(v.dtype)
            for k, v in tensors.items()
        }
        save_file(out, str(f), metadata={"format": "pt"})
    return dst


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--limit", type=int, default=4, help="records per domain")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "store-cpu.json")
    args = ap.parse_args(argv)
    from rmbench_fast import evaluate
    from rmbench_fast.inputs.demo import ensure_smollm2

    ref = ensure_smollm2()
    with tempfile.TemporaryDirectory() as tmp:
        a = perturbed_copy(ref, Path(tmp) / "policy-a", seed=1)
        b = perturbed_copy(ref, Path(tmp) / "policy-b", seed=2)
        store = Path(tmp) / "store.sqlite"
        common = dict(
            ref_model=str(ref), data=str(DATA), limit=args.limit, device="cpu", dtype="float32",
            cache_dir=str(store), ref_mode="reference-first", resamples=0,
        )  # fmt: skip
        runs = {}
        for name, policy in (("first", a), ("second", b)):
            t0 = time.perf_counter()
            result = evaluate(str(policy), **common)  # type: ignore[arg-type]
            wall = time.perf_counter() - t0
            ref_stats = result["meta"]["reference_scorer_stats"]
            runs[name] = {
                "policy": policy.name,
                "wall_s": wall,
                "reference_batches": ref_stats["n_batches"],
                "reference_batches_from_store": ref_stats["batches_from_cache"],
                "overall": result["total"]["overall"],
            }
            print(
                f"{name}: {wall:.1f} s, reference batches from the store: {ref_stats['batches_from_cache']}/{ref_stats['n_batches']}",
                flush=True,
            )
    report = {
        "command": "python bench/bench_store.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "what": "second run with the same reference and another policy, against the first (cold store)",
        "model": "SmolLM2-135M-Instruct (reference) and two perturbed copies (policies), float32, CPU",
        "records": runs["first"] and args.limit * 3,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "load_average_end": os.getloadavg(),
        "runs": runs,
        "speedup": runs["first"]["wall_s"] / runs["second"]["wall_s"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"speedup {report['speedup']:.2f}x; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
