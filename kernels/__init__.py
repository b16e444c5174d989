"""Triton and torch reference kernels (installed as rmbench_fast.kernels)."""
