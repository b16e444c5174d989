"""Tests of rmbench_fast/store/.

- test_resume: the store in a run: resume after SIGKILL (tests/workers/kill_run.py), reuse
- test_store: the results store: keys, bit-exact values, concurrency, crash safety
"""
