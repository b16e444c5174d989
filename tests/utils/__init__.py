"""Tests of rmbench_fast/utils/.

- test_threads: `--threads`: the CPU thread count, its default and its record in meta
"""
