"""Tests of rmbench_fast/scoring/ and the C++ core.

- test_core_prefix: _core.common_prefix_lengths against numpy and plain Python
- test_plan: the batch planner: layout, labels, attention semantics, budgets, C++ == Python
"""
