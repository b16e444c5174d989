"""The test suite (`pytest -q` from the repository root).

Test folders mirror the package's layers (utils, inputs, scoring, backends, engine, kernels,
store, results, benchmarks, pipeline, judge, perf, commands); cross-cutting tests (layering,
install checks, end to end, parity with the official code, bench and real-vLLM commands) sit here.
Shared helpers are in `tests.helpers`, subprocess scripts in `tests.workers`.
"""
