"""Tests of rmbench_fast/pipeline/: runs, sweeps, parallel runs.

- test_causal_logit: --reward causal-logit:<id> against transformers
- test_dp: data parallelism under torchrun (tests/workers/dp_worker.py)
- test_head_pooling: a custom reward head's pooled token and BOS masking
- test_ray_sweep: sweeps on a local Ray cluster, bit-identical to the local sweep
- test_sweep: `sweep`: several checkpoints in one process, identical to separate runs
"""
