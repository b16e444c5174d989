"""Tests of rmbench_fast/results/.

- test_compare: `compare`: paired differences, intervals, sign-flip p-values, Holm
- test_leaderboard: `report RUN --leaderboard`: the table of published results
- test_stats: bootstrap intervals: coverage, determinism, point estimates untouched
"""
