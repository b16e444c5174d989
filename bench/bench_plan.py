"""Planner throughput: C++ core vs the Python reference on an RM-Bench-like synthetic corpus.

    python bench/bench_plan.py                       # 250k records C++, 2k records Python
    python bench/bench_plan.py --records 1000000 --chunk 250000
    pytest bench/bench_plan.py                       # small pytest-benchmark variant

Corpus: per record a prompt of ~55 tokens (lognormal, median 50, clipped to [4, 400]) and six
answers of ~300 tokens (lognormal, median 260, clipped to [1, 1900]); every sequence is
BOS + prompt + answer (label_start = 1 + prompt length), as on the DPO path (SPEC §5). In 10% of
records one style pair's prompt loses its last token (boundary merge / truncation), so the
shared prefix is shorter there. Throughput counts *useful* tokens (sum of unpadded sequence
lengths) per second of planning; the C++ time includes slicing into PackedBatch objects.
`tokens_per_s` is the streaming-sweep path: chunks planned into one reused `PlanWorkspace`;
the fresh-allocation rate (new output arrays on every call) is reported beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from rmbench_fast.records import N_SLOTS, TokSeq
from rmbench_fast.scoring import plan

VOCAB = 32000


def synth_corpus(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Flat planner inputs (see plan.flatten_seqs) for n synthetic records."""
    rng = np.random.default_rng(seed)
    plen = np.clip(rng.lognormal(np.log(50), 0.5, n), 4, 400).astype(np.int64)  # [n]
    alen = np.clip(rng.lognormal(np.log(260), 0.55, (n, N_SLOTS)), 1, 1900).astype(np.int64)  # [n, 6]
    # per-sequence prompt length: BOS + prompt, one token shorter for one pair in 10% of records
    seq_plen = np.repeat(plen + 1, N_SLOTS).reshape(n, N_SLOTS)
    cut = rng.random(n) < 0.1
    pair = rng.integers(0, 3, n)
    rows = np.nonzero(cut)[0]
    seq_plen[rows, pair[rows]] -= 1
    seq_plen[rows, pair[rows] + 3] -= 1
    seq_plen = seq_plen.reshape(-1)  # [n*6]
    lens = seq_plen + alen.reshape(-1)
    offsets = np.zeros(n * N_SLOTS + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    ids = rng.integers(1, VOCAB, int(offsets[-1]), dtype=np.int32)  # answers: random tokens
    # prompts: one random prompt per record (BOS = 0 first), copied into its six sequences
    p_off = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(plen + 1, out=p_off[1:])
    prompts = rng.integers(1, VOCAB, int(p_off[-1]), dtype=np.int32)
    prompts[p_off[:-1]] = 0
    k = np.arange(int(seq_plen.sum())) - np.repeat(np.cumsum(seq_plen) - seq_plen, seq_plen)
    rec = np.repeat(np.arange(n), N_SLOTS)
    ids[np.repeat(offsets[:-1], seq_plen) + k] = prompts[np.repeat(p_off[rec], seq_plen) + k]
    del k
    return {
        "ids": ids,
        "offsets": offsets,
        "label_start": seq_plen.astype(np.int32),
        "pool_index": np.full(n * N_SLOTS, -1, dtype=np.int32),
        "mask_first": np.zeros(n * N_SLOTS, dtype=np.uint8),
        "group_offsets": np.arange(n + 1, dtype=np.int64) * N_SLOTS,
    }


def to_tokseqs(flat: dict[str, np.ndarray]) -> list[list[TokSeq]]:
    off = flat["offsets"]
    ids = flat["ids"]
    seqs = [
        TokSeq(ids[off[i] : off[i + 1]].tolist(), int(flat["label_start"][i])) for i in range(len(off) - 1)
    ]
    return [seqs[i : i + N_SLOTS] for i in range(0, len(seqs), N_SLOTS)]


def budget_for(flat: dict[str, np.ndarray], floor: int) -> int:
    pre = np.asarray(plan.common_prefix_lengths(flat["ids"], flat["offsets"], N_SLOTS), dtype=np.int64)
    lens = np.diff(flat["offsets"]).reshape(-1, N_SLOTS)
    seg = pre + (lens - pre[:, None]).sum(1)
    return max(floor, int(seg.max()))


def machine() -> str:
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{model}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def time_cpp(
    n: int, chunk: int, floor: int, repeats: int, reuse: bool
) -> tuple[float, float, dict[str, Any]]:
    """Best wall and CPU time to plan n synthetic records, in chunks of `chunk` records (each
    chunk is generated untimed, planned in one timed call, then freed: memory is one chunk's).

    reuse=True plans every chunk into one `PlanWorkspace`, created fresh for each repeat, so the
    first chunk's page faults are part of the time (the streaming-sweep path); reuse=False
    allocates fresh output arrays in every call."""
    best = best_cpu = float("inf")
    stats: dict[str, Any] = {}
    for _ in range(repeats):
        ws = plan.PlanWorkspace() if reuse else None
        elapsed = cpu = 0.0
        agg = {"n_batches": 0, "useful_tokens": 0, "packed_tokens": 0, "n_labels": 0, "max_batch_tokens": 0}
        for i, r0 in enumerate(range(0, n, chunk)):
            part = synth_corpus(min(chunk, n - r0), seed=i)
            budget = budget_for(part, floor)
            t, c = time.perf_counter(), time.process_time()
            batches = plan.plan_batches_flat(
                **part, batch_tokens=budget, vocab_size=VOCAB, impl="cpp", workspace=ws
            )
            elapsed += time.perf_counter() - t
            cpu += time.process_time() - c
            s = plan.plan_stats(batches)
            for k in agg:
                agg[k] = max(agg[k], s[k]) if k == "max_batch_tokens" else agg[k] + s[k]
            del batches, part
        del ws
        best, best_cpu = min(best, elapsed), min(best_cpu, cpu)
        stats = agg
    return best, best_cpu, stats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=250_000, help="records planned by C++")
    ap.add_argument(
        "--chunk", type=int, default=0, help="plan C++ in chunks of this many records (0: one call)"
    )
    ap.add_argument("--py-records", type=int, default=2_000, help="records planned by the Python reference")
    ap.add_argument("--batch-tokens", type=int, default=65_536)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "plan-cpu.json")
    args = ap.parse_args(argv)
    if not plan.have_cpp():
        print("rmbench_fast._core has no plan_batches: build the package first", file=sys.stderr)
        return 1

    chunk = args.chunk or args.records
    load_before = os.getloadavg()
    cpp_s, cpp_cpu_s, cpp_stats = time_cpp(args.records, chunk, args.batch_tokens, args.repeats, reuse=True)
    cpp_tps = cpp_stats["useful_tokens"] / cpp_s
    print(
        f"C++, reused workspace: {cpp_stats['useful_tokens'] / 1e6:.1f}M tokens in {cpp_s:.3f}s"
        f" = {cpp_tps / 1e6:.1f}M tokens/s"
    )
    fresh_s, fresh_cpu_s, _ = time_cpp(args.records, chunk, args.batch_tokens, args.repeats, reuse=False)
    fresh_tps = cpp_stats["useful_tokens"] / fresh_s
    print(f"C++, fresh outputs each call: {fresh_s:.3f}s = {fresh_tps / 1e6:.1f}M tokens/s")

    # Python reference (and the C++ path from the same TokSeq lists, conversion included)
    small = synth_corpus(args.py_records, seed=1)
    seqs = to_tokseqs(small)
    py_budget = budget_for(small, args.batch_tokens)
    del small
    t, c = time.perf_counter(), time.process_time()
    ref = plan.plan_batches(seqs, batch_tokens=py_budget, vocab_size=VOCAB, impl="python")
    py_s, py_cpu_s = time.perf_counter() - t, time.process_time() - c
    py_tokens = plan.plan_stats(ref)["useful_tokens"]
    py_tps = py_tokens / py_s
    e2e_s = float("inf")
    for _ in range(args.repeats):
        t = time.perf_counter()
        plan.plan_batches(seqs, batch_tokens=py_budget, vocab_size=VOCAB, impl="cpp")
        e2e_s = min(e2e_s, time.perf_counter() - t)
    e2e_tps = py_tokens / e2e_s
    print(f"Python: {py_tokens / 1e6:.1f}M tokens in {py_s:.3f}s = {py_tps / 1e6:.2f}M tokens/s")
    print(f"C++ from TokSeq lists (flatten included): {e2e_tps / 1e6:.1f}M tokens/s")
    print(
        f"ratio C++ / Python: {cpp_tps / py_tps:.0f}x (fresh outputs: {fresh_tps / py_tps:.0f}x,"
        f" from TokSeq lists: {e2e_tps / py_tps:.0f}x)"
    )

    result = {
        "benchmark": "plan_batches",
        "tokens_per_s": cpp_tps,
        "python_tokens_per_s": py_tps,
        "ratio": cpp_tps / py_tps,
        "cpp_mode": "chunks planned into one reused PlanWorkspace (new per repeat, first-touch included)",
        "cpp_fresh_outputs_tokens_per_s": fresh_tps,
        "ratio_fresh_outputs": fresh_tps / py_tps,
        "cpp_fresh_outputs_seconds": fresh_s,
        "cpp_fresh_outputs_cpu_time_tokens_per_s": cpp_stats["useful_tokens"] / fresh_cpu_s,
        "cpp_from_tokseq_tokens_per_s": e2e_tps,
        "ratio_from_tokseq": e2e_tps / py_tps,
        "n_records": args.records,
        "chunk_records": chunk,
        "python_n_records": args.py_records,
        "cpp_seconds": cpp_s,
        "python_seconds": py_s,
        # CPU-time rates: less sensitive to other processes on a shared machine
        "cpu_time_tokens_per_s": cpp_stats["useful_tokens"] / cpp_cpu_s,
        "python_cpu_time_tokens_per_s": py_tokens / py_cpu_s,
        "cpu_time_ratio": (cpp_stats["useful_tokens"] / cpp_cpu_s) / (py_tokens / py_cpu_s),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "batch_tokens": args.batch_tokens,
        "cpp_plan": cpp_stats,
        "threads": 1,
        "machine": machine(),
        "command": " ".join(
            ["python", "bench/bench_plan.py", *map(shlex.quote, argv if argv is not None else sys.argv[1:])]
        ),
        "corpus": "synthetic RM-Bench-like: prompt ~lognormal(median 50)+BOS, 6 answers ~lognormal(median 260), "
        "10% records with one pair's prompt 1 token shorter",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


def test_bench_plan_cpp(benchmark: Any) -> None:
    """pytest-benchmark: C++ planning of 2k synthetic records (flat inputs)."""
    if not plan.have_cpp():
        import pytest

        pytest.skip("C++ planner not built")
    flat = synth_corpus(2_000)
    budget = budget_for(flat, 65_536)
    batches = benchmark(lambda: plan.plan_batches_flat(**flat, batch_tokens=budget, impl="cpp"))
    assert plan.plan_stats(batches)["useful_tokens"] == len(flat["ids"])


if __name__ == "__main__":
    raise SystemExit(main())
