"""Tests of the Triton and CUDA kernels (kernels/, rmbench_fast.kernels, rmbench_fast._cuda).

- test_cuda_kernel: CUDA C++ kernel A: argument checks anywhere, numerics on a GPU
- test_fused_kernels: the fused Triton kernels (lse_merge, rmsnorm) against float64
- test_kernels: Triton kernels A and B against float64 references, and the dispatcher
- test_kernels_codegen: the Triton kernels compile for sm_80 and sm_90 with no GPU
"""
