"""rmbench_fast: fast, exact RM-Bench evaluation of reward models."""

__version__ = "0.1.0"
