"""Sweep vs separate runs: K checkpoints of one policy, DPO with a shared reference model.

    python bench/bench_sweep.py [--model DIR] [--checkpoints 3] [--limit 4] --out bench/results/sweep-cpu.json \
        [--keep DIR] [--plot docs/sweep_plot.png]

The checkpoints are seeded perturbed copies of --model (default: the SmolLM2-135M-Instruct demo),
the reference another one. Timed in the same process, same data: (a) `evaluate(...)` once per
checkpoint, as a loop of `python -m rmbench_fast run` calls would do (minus process start-up and
model-independent imports, which favours the loop), (b) one `run_sweep(...)`. The sweep runs the
reference once instead of K times and tokenizes once; its scores must equal (a)'s bit for bit.
Both run without the results store (`no_cache`), which would otherwise serve (b) from (a).
`--keep DIR` keeps the sweep's output (sweep.json and each checkpoint's files); `--plot FILE` writes
the sweep's accuracy-by-checkpoint plot with its interval bands (`report DIR --plot`) to FILE.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "rm-bench"


def perturbed_copy(src: Path, dst: Path, seed: int, rel: float = 0.02) -> Path:
    """src's weights + N(0, (rel·std(w))²) per tensor, with src's config and tokenizer files."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and not f.name.endswith(".safetensors") and not f.name.endswith(".index.json"):
            shutil.copy(f, dst / f.name)
    gen = torch.Generator().manual_seed(seed)
    weights = {}
    for name, w in sorted(load_file(str(src / "model.safetensors")).items()):
        w = w.float()
        weights[name] = (w + torch.randn(w.shape, generator=gen) * rel * float(w.std())).contiguous()
    save_file(weights, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def _plot_title(args: argparse.Namespace) -> str:
    return (
        f"bench/bench_sweep.py: {args.checkpoints} perturbed checkpoints of {Path(args.model).name} (DPO with a "
        f"reference), {args.limit} records per domain"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--model", type=Path, default=None, help="single-file safetensors causal LM (default: demo)"
    )
    ap.add_argument("--checkpoints", type=int, default=3)
    ap.add_argument("--limit", type=int, default=4, help="records per domain")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--domains", nargs="+", default=["chat", "code", "safety-refuse"])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--keep", type=Path, default=None, help="copy the sweep's output directory here")
    ap.add_argument("--plot", type=Path, default=None, help="write the sweep plot (PNG) here")
    args = ap.parse_args(argv)

    from rich.console import Console

    from rmbench_fast import evaluate
    from rmbench_fast.pipeline.sweep import run_sweep
    from rmbench_fast.settings import RunConfig

    if args.model is None:
        from rmbench_fast.inputs.demo import ensure_smollm2

        args.model = Path(ensure_smollm2())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ckpts = [
            str(perturbed_copy(args.model, root / f"step-{i}", seed=i + 1)) for i in range(args.checkpoints)
        ]
        ref = str(perturbed_copy(args.model, root / "ref", seed=100))
        opts: dict[str, Any] = dict(
            ref_model=ref,
            data=str(args.data),
            domains=args.domains,
            limit=args.limit,
            device="cpu",
            dtype="float32",
            # Both arms compute everything: with the results store on, the separate runs would
            # share the reference through it, and the sweep would find every score stored.
            no_cache=True,
        )
        t0 = time.perf_counter()
        separate = [evaluate(c, **opts) for c in ckpts]
        separate_s = time.perf_counter() - t0
        cfg = RunConfig(**opts, out=str(root / "sweep"), progress=False)
        t0 = time.perf_counter()
        rows = run_sweep(ckpts, cfg, Console(file=io.StringIO()))
        sweep_s = time.perf_counter() - t0
        identical = all(
            np.array_equal(
                np.array(
                    [
                        r["score_chosen"] + r["score_rejected"]
                        for r in json.loads((Path(row["out"]) / "scores.json").read_text())
                    ]
                ),
                np.array([r["score_chosen"] + r["score_rejected"] for r in sep["rows"]]),
            )
            for row, sep in zip(rows, separate)
        )
        if args.keep is not None:
            shutil.copytree(root / "sweep", args.keep, dirs_exist_ok=True)
        if args.plot is not None:
            from rmbench_fast.pipeline.sweep import plot_sweep, read_sweep

            png = plot_sweep(read_sweep(root / "sweep"), root / "sweep", title=_plot_title(args))
            args.plot.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(png, args.plot)
    result = {
        "benchmark": "sweep vs separate runs (DPO with a shared reference, native engine)",
        "command": shlex.join(
            ["python", "bench/bench_sweep.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "model": str(args.model),
        "checkpoints": args.checkpoints,
        "records": separate[0]["meta"]["data"]["n_records"],
        "separate_s": separate_s,
        "sweep_s": sweep_s,
        "speedup": separate_s / sweep_s,
        "scores_bit_identical": identical,
        "threads": torch.get_num_threads(),
        "machine": f"{platform.processor() or platform.machine()}, {platform.platform()}",
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
