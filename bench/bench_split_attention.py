"""The CPU split attention path against its version at another git revision, interleaved.

    python bench/bench_split_attention.py [--baseline-rev 0434c1a] [--repeats 7] [--threads 2]

One packed batch of RM-Bench-like records (prompts of 60-300 tokens, six answers of 20-400
tokens each, an 8192-token budget) at SmolLM2-135M's attention shape (9 query heads over 3 KV
heads, head size 64), fp32. Both versions run the same inputs in the same process, alternately,
so machine load hits them alike; the best of `--repeats` is reported per version, with their
ratio and the largest difference between their outputs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from rmbench_fast.engine.layers.attention import split
from rmbench_fast.engine.layout import PackedLayout
from rmbench_fast.records import TokSeq
from rmbench_fast.scoring.plan import plan_batches

REPO = Path(__file__).resolve().parent.parent
SPLIT = "rmbench_fast/engine/layers/attention/split.py"


def load_revision(rev: str):  # noqa: ANN201
    """The split module as it was at git revision `rev`, imported from a temporary file."""
    src = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{rev}:{SPLIT}"], check=True, capture_output=True, text=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / "split_baseline.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("split_baseline", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def rmbench_like_batch(seed: int = 0) -> PackedLayout:
    g = torch.Generator().manual_seed(seed)
    groups = []
    for _ in range(12):
        prompt = int(torch.randint(60, 300, (1,), generator=g))
        head = torch.randint(3, 40000, (prompt,), generator=g).tolist()
        seqs = []
        for _ in range(6):
            n = int(torch.randint(20, 400, (1,), generator=g))
            ids = head + torch.randint(3, 40000, (n,), generator=g).tolist()
            seqs.append(TokSeq(ids=ids, label_start=prompt, pool_index=len(ids) - 1))
        groups.append(seqs)
    return PackedLayout.from_batch(plan_batches(groups, batch_tokens=8192)[0], torch.device("cpu"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline-rev", default="0434c1a")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    base = load_revision(args.baseline_rev)
    layout = rmbench_like_batch()
    spans = layout.segment_spans()
    T, Hq, Hk, D = layout.n_tokens, 9, 3, 64
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(T, h, D, generator=g) for h in (Hq, Hk, Hk))
    impls = {"baseline": base.sdpa_split, "current": split.sdpa_split}
    outs = {name: f(q, k, v, spans) for name, f in impls.items()}  # warm-up
    best = dict.fromkeys(impls, float("inf"))
    for _ in range(args.repeats):
        for name, f in impls.items():
            t0 = time.perf_counter()
            f(q, k, v, spans)
            best[name] = min(best[name], time.perf_counter() - t0)
    res = {
        "shape": {"tokens": T, "q_heads": Hq, "kv_heads": Hk, "head_dim": D, "dtype": "float32"},
        "threads": args.threads,
        "baseline_rev": args.baseline_rev,
        "best_s": {k_: round(v_, 5) for k_, v_ in best.items()},
        "speedup": round(best["baseline"] / best["current"], 3),
        "max_abs_diff": float((outs["baseline"] - outs["current"]).abs().max()),
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
    }
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
