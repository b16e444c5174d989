"""The benchmarks: each one a loader, a grouping of N completions per prompt, metrics and tables.

Modules, in data-flow order:
    rmbench/        RM-Bench: data -> metrics -> leaderboard (its report tables: results/report)
    rewardbench2/   RewardBench 2 (allenai/reward-bench-2): data -> grouping -> metrics -> report
                    (its run step is pipeline/rewardbench2.py); docs/rewardbench2.md

`BENCHMARKS` is the one registry of `--benchmark` names. The engine, the planner and the
results store below know only "a prompt and N completions", never which benchmark.
"""

from __future__ import annotations

RM_BENCH = "rm-bench"
REWARDBENCH2 = "rewardbench2"
# name -> one line for --help
BENCHMARKS: dict[str, str] = {
    RM_BENCH: "RM-Bench (THU-KEG): 3 chosen x 3 rejected styles per prompt, hard/normal/easy accuracies",
    REWARDBENCH2: "RewardBench 2 (allenai): best-of-4 with tie credit, the Ties composite, per subset",
}
DEFAULT_BENCHMARK = RM_BENCH
