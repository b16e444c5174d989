"""Named phases of a run, for `python -m rmbench_fast profile`.

`phase(name)` marks a region as a profiler range `rmbf::<name>` (torch.profiler's
record_function; NVTX too under emit_nvtx on CUDA). Outside a profiler it costs about a
microsecond, so the engine keeps the marks on.
"""

from __future__ import annotations

from typing import Any

import torch

PREFIX = "rmbf::"
# In the order a run goes through them (the profile table's rows).
PHASES: tuple[str, ...] = (
    "load",
    "data_tokenize",
    "planning",
    "host_copies",
    "attention",
    "mlp",
    "lm_head",
    "classifier_head",
    "metrics",
    "report",
)


def phase(name: str) -> Any:
    """A context manager marking `name` (one of PHASES)."""
    return torch.profiler.record_function(PREFIX + name)
