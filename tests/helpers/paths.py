"""Where things are: the repository root, its bench/ scripts and the shared RM-Bench data beside it."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench"
SAMPLE = REPO / "rmbench_fast" / "sample" / "rm_bench_sample.jsonl"
RM_BENCH_DATA = REPO.parent / "shared" / "data" / "rm-bench"
