"""Tests of rmbench_fast/utils/.

- test_distributed: the one "am I rank 0" (`is_main`) and the rank prefix of error lines
- test_threads: `--threads`: the CPU thread count, its default and its record in meta; the CPU's
  model and vector ISA (`cpu_description`)
"""
