"""The benchmarks a run can be scored on, one package each.

- rmbench/: RM-Bench (data, metrics, leaderboard).
"""
