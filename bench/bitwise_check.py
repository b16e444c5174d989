"""Bit-identical scores across two commits: run the same jobs on both and compare scores.json.

    python bench/bitwise_check.py --before 55297a7 --after HEAD [--limit 3] [--out DIR]

Each commit is checked out into a temporary git worktree and run as `python -m rmbench_fast run`
from that tree (PYTHONPATH), with this environment's installed C++ core copied in (the script
refuses when the C++ core's sources differ between the commits, since the core would then have to be rebuilt).
Jobs: the demo model (SmolLM2-135M-Instruct) in each reference-free mode and as DPO with a
reference, tiny random Llama / Qwen2 / Gemma-2 models (classifier, DPO with reference, sliding
window), and the transformers backend, all on the shared RM-Bench files. Exit 0 only when every
job's scores.json is byte-identical between the commits.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data" / "rm-bench"


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], check=True, capture_output=True, text=True).stdout


def _installed_core() -> list[Path]:
    import rmbench_fast

    for d in map(Path, rmbench_fast.__path__):
        found = sorted(d.glob("_core*.so")) + sorted(d.glob("_cuda*.so"))
        if found:
            return found
    raise SystemExit("no built rmbench_fast._core found; pip install -e . first")


def _worktree(ref: str, root: Path) -> Path:
    tree = root / ref.replace("/", "_")
    _git("worktree", "add", "--detach", str(tree), ref)
    for so in _installed_core():
        shutil.copy2(so, tree / "rmbench_fast" / so.name)
    kernels = tree / "rmbench_fast" / "kernels"
    if not kernels.exists():
        kernels.symlink_to(tree / "kernels", target_is_directory=True)
    return tree


def _tiny_models(root: Path) -> dict[str, Path]:
    sys.path.insert(0, str(REPO))  # run as `python bench/bitwise_check.py`: the root holds the tests package
    from tests.helpers.tiny import SMOLLM2_VOCAB, make_tiny_model_dir

    v = SMOLLM2_VOCAB  # the SmolLM2 tokenizer, so the real records tokenize for real
    return {
        "llama-cls": make_tiny_model_dir(root / "llama-cls", "llama", kind="classifier", vocab_size=v),
        "qwen2-policy": make_tiny_model_dir(root / "qwen2-policy", "qwen2", vocab_size=v, seed=1),
        "qwen2-ref": make_tiny_model_dir(root / "qwen2-ref", "qwen2", vocab_size=v, seed=2),
        "gemma2-policy": make_tiny_model_dir(
            root / "gemma2-policy", "gemma2", vocab_size=v, sliding_window=64, seed=3
        ),
        "mistral-window": make_tiny_model_dir(
            root / "mistral-window", "mistral", vocab_size=v, num_kv_heads=1, sliding_window=48, seed=4
        ),
    }


def _jobs(models: dict[str, Path], smol: Path) -> dict[str, list[str]]:
    data = ["--data", str(DATA)]
    return {
        "smol-avg": ["--model", str(smol), "--ref-free", "avg", *data],
        "smol-sum": ["--model", str(smol), "--ref-free", "sum", *data],
        "smol-norm": ["--model", str(smol), "--ref-free", "norm", *data],
        "smol-ref-qwen2": ["--model", str(smol), "--ref-model", str(smol), *data, "--domains", "chat"],
        "llama-cls": ["--model", str(models["llama-cls"]), *data],
        "llama-cls-fp32": ["--model", str(models["llama-cls"]), "--fp32-scores", *data],
        "qwen2-dpo-ref": [
            "--model",
            str(models["qwen2-policy"]),
            "--ref-model",
            str(models["qwen2-ref"]),
            *data,
        ],
        "gemma2-norm": ["--model", str(models["gemma2-policy"]), "--ref-free", "norm", *data],
        "mistral-window-avg": ["--model", str(models["mistral-window"]), *data, "--batch-tokens", "700"],
        "hf-qwen2-ref": [
            "--model",
            str(models["qwen2-policy"]),
            "--ref-model",
            str(models["qwen2-ref"]),
            "--backend",
            "hf",
            *data,
        ],  # fmt: skip
        "hf-llama-cls": ["--model", str(models["llama-cls"]), "--backend", "hf", *data],
    }


# `python -m rmbench_fast` with an editable install's import redirect switched off, so the
# package comes from PYTHONPATH (the worktree) and not from this checkout.
_RUN_FROM_TREE = (
    "import runpy, sys; "
    "sys.meta_path[:] = [f for f in sys.meta_path if 'Redirect' not in type(f).__name__]; "
    "runpy.run_module('rmbench_fast', run_name='__main__', alter_sys=True)"
)


def _run(tree: Path, args: list[str], out: Path, limit: int) -> None:
    # A fresh results store per job (commits that have one): no reuse between the jobs.
    env = {
        **os.environ,
        "PYTHONPATH": str(tree),
        "RMBENCH_FAST_STORE": str(out.parent / f".{out.name}.sqlite"),
    }
    cmd = [sys.executable, "-c", _RUN_FROM_TREE, "run", *args, "--limit", str(limit), "--device", "cpu"]
    cmd += ["--dtype", "float32", "--out", str(out), "--no-progress"]
    proc = subprocess.run(cmd, cwd=out.parent, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise SystemExit(f"{tree.name}: {' '.join(args)} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", required=True)
    ap.add_argument("--after", default="HEAD")
    ap.add_argument("--limit", type=int, default=3, help="records per domain")
    ap.add_argument("--out", type=Path, default=None, help="keep outputs here (default: a temp dir)")
    ap.add_argument("--jobs", nargs="+", default=None, help="only these jobs (default: all)")
    args = ap.parse_args()
    core = [
        "csrc/core_bindings.cpp",
        "csrc/planner.cpp",
        "csrc/planner.h",
        "csrc/prefix.cpp",
        "csrc/prefix.h",
    ]
    if _git("diff", "--stat", args.before, args.after, "--", *core):
        raise SystemExit("the C++ core differs between the commits: build each one instead of sharing it")
    from rmbench_fast.inputs.demo import ensure_smollm2

    root = Path(tempfile.mkdtemp(prefix="rmbf-bitwise-")) if args.out is None else args.out
    root.mkdir(parents=True, exist_ok=True)
    trees = [_worktree(ref, root / "trees") for ref in (args.before, args.after)]
    try:
        models = _tiny_models(root / "models")
        jobs = _jobs(models, ensure_smollm2())
        if args.jobs:
            unknown = set(args.jobs) - set(jobs)
            if unknown:
                raise SystemExit(f"unknown jobs {sorted(unknown)}; known: {sorted(jobs)}")
            jobs = {k: v for k, v in jobs.items() if k in args.jobs}
        report: dict[str, bool] = {}
        for name, job in jobs.items():
            outs = []
            for tree in trees:
                out = root / "runs" / tree.name / name
                out.parent.mkdir(parents=True, exist_ok=True)
                _run(tree, job, out, args.limit)
                outs.append(out / "scores.json")
            report[name] = filecmp.cmp(outs[0], outs[1], shallow=False)
            print(f"{name:22s} {'identical' if report[name] else 'DIFFERENT'}", flush=True)
    finally:
        for tree in trees:
            _git("worktree", "remove", "--force", str(tree))
    print(json.dumps({"before": args.before, "after": args.after, "limit": args.limit, "identical": report}))
    return 0 if all(report.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
