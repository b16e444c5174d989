"""Scripts the tests run in subprocesses, as modules from the repository root
(`python -m tests.workers.<name>`, or `torchrun ... -m tests.workers.<name>`).

- dp_worker: `rmbench_fast run` under torchrun, optionally failing on one rank (tests/pipeline/test_dp.py)
- tp_worker: tensor-parallel engine runs under torchrun (tests/engine/test_tp.py)
- kill_run: a run that SIGKILLs itself at a chosen point (tests/store/test_resume.py)
"""
