"""RewardBench 2, classifier path: tokens and time, run_v2.py's flow against the native engine.

    python bench/bench_rb2.py [--data reward-bench-2.parquet] [--model DIR] [--limit N] \
        [--batch-size 64] [--threads 2] --out bench/results/rb2-cpu-sample.json

Without --data / --model it uses the hand-written sample of tests/helpers/rb2_sample.py (28 prompts,
117 completions) and a tiny random Llama classifier with the SmolLM2 tokenizer: the numbers
then say how the two flows encode, not how fast a real model scores RewardBench 2.

Tokens. run_v2.py encodes every completion with its prompt, in DataLoader batches of
`--batch-size` rows padded to the batch's longest (file order, chosen then rejected):
    official_useful = sum_i len_i,   official_padded = sum_batches B_b * max_{i in b} len_i.
The native engine packs a prompt's N completions into one segment, the common token prefix once:
    native_packed = sum_p (P_p + sum_j (len_pj - P_p)).
Time: wall seconds, fp32 on the CPU, best of --repeats, each side including its model load:
native = NativeScorer construction + scoring (texts tokenized before), official = the whole
`official_classifier_scores` call (load, templating, tokenizing, scoring). Max |score
difference| between the two. On the sample with a tiny model both are overhead-bound.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as `python bench/bench_rb2.py`: the root holds the tests package


def official_tokens(
    model_dir: Path, rows: list[dict[str, Any]], batch_size: int, max_length: int
) -> dict[str, int]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    texts = [
        tok.apply_chat_template(
            [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": c}], tokenize=False
        )
        for r in rows
        for c in list(r["chosen"]) + list(r["rejected"])
    ]
    lens = [len(tok(t, truncation=True, max_length=max_length)["input_ids"]) for t in texts]
    padded = sum(
        len(lens[i : i + batch_size]) * max(lens[i : i + batch_size]) for i in range(0, len(lens), batch_size)
    )
    return {"sequences": len(lens), "useful": int(sum(lens)), "padded": int(padded)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=None, help="RewardBench 2 export (default: the test sample)")
    ap.add_argument(
        "--model", type=Path, default=None, help="classifier directory (default: a tiny random one)"
    )
    ap.add_argument("--limit", type=int, default=None, help="prompts per subset")
    ap.add_argument("--batch-size", type=int, default=64, help="run_v2.py's --batch_size (default 64)")
    ap.add_argument("--max-length", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import tempfile

    from rmbench_fast.benchmarks.rewardbench2.data import load_prompts, select
    from rmbench_fast.pipeline.rewardbench2 import run_rewardbench2
    from rmbench_fast.settings import RunConfig
    from tests.helpers.rb2_official import official_classifier_scores
    from tests.helpers.rb2_sample import write_sample
    from tests.helpers.tiny import SMOLLM2_VOCAB, make_tiny_model_dir

    tmp = Path(tempfile.mkdtemp(prefix="rb2-bench-"))
    data = args.data or write_sample(tmp / "sample.json")
    model = args.model or make_tiny_model_dir(
        tmp / "cls", "llama", kind="classifier", vocab_size=SMOLLM2_VOCAB, seed=5
    )
    prompts = select(load_prompts(data), limit=args.limit)
    rows = [p.raw for p in prompts]
    cfg = RunConfig(
        model=str(model), data=str(data), limit=args.limit, device="cpu", dtype="float32", resamples=0,
        progress=False, out=None, max_length=args.max_length,
    )  # fmt: skip
    native_s, official_s = [], []
    result: dict[str, Any] = {}
    official: list[list[float]] = []
    for _ in range(args.repeats):
        result = run_rewardbench2(cfg, log=lambda _m: None)
        native_s.append(result["meta"]["seconds"]["scoring"])
        t = time.perf_counter()
        official = official_classifier_scores(
            model, rows, batch_size=args.batch_size, max_length=args.max_length
        )
        official_s.append(time.perf_counter() - t)
    ours = result["scores"]
    diff = max(abs(ours[i, j] - v) for i, r in enumerate(official) for j, v in enumerate(r))
    st = result["meta"]["scorer_stats"]
    toks = official_tokens(model, rows, args.batch_size, args.max_length)
    doc = {
        "what": "RewardBench 2 classifier path: run_v2.py's flow (RewardBenchPipeline) vs the native engine",
        "data": str(data) if args.data else "tests/helpers/rb2_sample.py (hand-written, 28 prompts)",
        "model": str(model)
        if args.model
        else "tiny random Llama classifier, SmolLM2 tokenizer (tests/helpers/tiny.py)",
        "device": "cpu",
        "dtype": "float32",
        "threads": args.threads,
        "n_prompts": len(prompts),
        "official": {**toks, "batch_size": args.batch_size, "seconds": min(official_s)},
        "native": {
            "packed": st["packed_tokens"],
            "useful": st["useful_tokens"],
            "prefix_savings_frac": st["prefix_savings_frac"],
            "n_batches": st["n_batches"],
            "seconds": min(native_s),
        },
        "padded_over_packed": toks["padded"] / st["packed_tokens"],
        "useful_over_packed": toks["useful"] / st["packed_tokens"],
        "max_abs_score_diff": float(diff),
        "speedup": min(official_s) / min(native_s),
        "command": " ".join(["python", *sys.argv]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(doc, indent=1))
    return 0 if np.isfinite(diff) else 1


if __name__ == "__main__":
    raise SystemExit(main())
