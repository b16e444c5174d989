"""RewardBench 2 (Malik et al. 2025; allenai/reward-bench-2) on the native engine.

Modules, in data-flow order:
    data      load and validate the JSON / JSONL / parquet export -> `Prompt` records
    grouping  a prompt's N completions (chosen first, then rejected) -> N TokSeqs sharing the
              prompt's tokens (the planner stores the common prefix once)
    metrics   best-of-N credit with 1/k tie credit, the Ties composite (PR 236), per subset and
              overall, bootstrap intervals over prompts
    report    scores.json rows and the per-subset table
    ratings   the official generative ratings mode: prompts, the rating parser, the credit
              (the run is judge/ratings.py)
    compare   paired per-subset differences of two runs
(`python -m rmbench_fast run --benchmark rewardbench2` is pipeline/rewardbench2.py.)

The scoring follows allenai/reward-bench at fdc742d (PR 236) as the `rewardbench` 0.1.4 wheel
holds it; docs/rewardbench2.md gives the formulas, the citations and every quirk.
"""
