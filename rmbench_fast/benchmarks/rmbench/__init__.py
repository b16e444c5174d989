"""RM-Bench: its records, its style-substance metrics and its published leaderboard.

Data flow: data (load and validate the RM-Bench files: json, jsonl, parquet, the HF cache) ->
metrics (style-substance matrices, hard / normal / easy accuracies per domain) -> leaderboard
(placement of a run among the published results, `leaderboard.json`).
"""
