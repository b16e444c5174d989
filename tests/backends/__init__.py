"""Tests of rmbench_fast/backends/.

- test_device_map: --device-map auto through accelerate (hf backend)
- test_hf_backend: HFScorer on tiny random models vs one-sequence references
"""
