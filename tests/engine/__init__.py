"""Tests of rmbench_fast/engine/: the native engine.

- test_attention_api: version-branched attention calls bind against torch's signatures
- test_attention_cuda_path: the CUDA attention path on the CPU, with stand-in kernels
- test_cpu_attention_kernel: the C++ CPU attention kernel against the fp64 dense reference
- test_cpu_gemm: oneDNN-packed linears against F.linear, and the scorer's choice
- test_engine_attention: the attention paths over one packed batch vs the dense reference
- test_engine_layers: shared layers: the fused fp32 RMSNorm equals HF's bit for bit
- test_engine_loader: config mapping, weight loading and refusals, the packed mask
- test_engine_parity: native engine vs HF transformers on tiny random models
- test_engine_scheduling: the batch loop: no host syncs, OOM back-off, fused reference mode
- test_engine_smollm2: native engine vs HF transformers on the real SmolLM2-135M
- test_param_count: packed projections: parameter counts and in-place loading
- test_reward_heads: custom reward heads (INF-ORM, GRM, QRM, ArmoRM) vs the official classes
- test_tp: tensor parallelism under torchrun (tests/workers/tp_worker.py)
"""
