"""End-to-end benchmark, official-style vs native: a thin wrapper around `python -m rmbench_fast bench`.

    python bench/e2e.py --model DIR [--ref-free avg] [--domains chat code safety-refuse] \
        [--limit 24] [--dtype float32] [--device cpu] [--threads 2] [--paths official native] \
        --out bench/results/e2e-cpu.json

is `python -m rmbench_fast bench` with this script's historical defaults (the shared RM-Bench
data, 3 domains x 24 records, float32 on the CPU, 2 threads, a 4096-token budget, reference-free
avg); every other option of the command is passed through. The implementation, including
`official_style_scores` (reward-bench's DPOInference batching, which bench/gpu_check.py imports
from here), lives in rmbench_fast.perf.bench (`official_style_scores` in its `official` module).
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from rmbench_fast.commands.bench import main as bench_main
from rmbench_fast.perf.bench.official import official_style_scores

__all__ = ["DEFAULTS", "bench_argv", "main", "official_style_scores"]

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "rm-bench"
# option -> default value(s) this script has always used; any of them given on the command line wins
DEFAULTS: dict[str, list[str]] = {
    "--data": [str(DEFAULT_DATA)],
    "--domains": ["chat", "code", "safety-refuse"],
    "--limit": ["24"],
    "--dtype": ["float32"],
    "--device": ["cpu"],
    "--threads": ["2"],
    "--batch-tokens": ["4096"],
}


def bench_argv(argv: Sequence[str]) -> list[str]:
    """`argv` plus the defaults it does not set (DPO without a reference is reference-free avg)."""
    given = {a.split("=", 1)[0] for a in argv if a.startswith("--")}
    out = list(argv)
    for opt, value in DEFAULTS.items():
        if opt not in given:
            out += [opt, *value]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run the bench command with this script's defaults."""
    given = list(sys.argv[1:] if argv is None else argv)
    full = bench_argv(given)
    command = f"python bench/e2e.py {shlex.join(given)} (= python -m rmbench_fast bench {shlex.join(full)})"
    return bench_main(full, command=command)


if __name__ == "__main__":
    sys.exit(main())
