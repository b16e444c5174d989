"""Tests of rmbench_fast/perf/ and the bench/ scripts.

- test_gpu_check: bench/gpu_check.sh --dry-run and its stages on the CPU
- test_gpu_estimate: bench/gpu_estimate.py: the paper estimate of full RM-Bench on a GPU
- test_make_random_model: bench/make_random_model.py: real shapes and a loadable directory
- test_profile: `profile`: the phase breakdown of one run
"""
