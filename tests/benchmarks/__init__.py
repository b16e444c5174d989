"""Tests of rmbench_fast/benchmarks/: RM-Bench and RewardBench 2.

- test_data: RM-Bench data loading and validation
- test_metrics: RM-Bench metrics: hand-computed cases, ties, the official formula
- test_rewardbench2_e2e: `run --benchmark rewardbench2` end to end vs the official flow
- test_rewardbench2_metrics: RewardBench 2 data and metrics vs the official functions
- test_sample: the embedded 10-record sample
"""
