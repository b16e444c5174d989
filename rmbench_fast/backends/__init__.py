"""Scoring backends. Each exposes a scorer with `score(seqs, progress=None) -> np.ndarray [n_records, 6]`.

- "hf": transformers forwards (the reference / oracle), `rmbench_fast.backends.hf.HFScorer`.
- "native": the fast engine (`NativeScorer`, elsewhere in the package).

Backends are imported lazily: `hf` needs transformers, which the native path does not.
"""

from __future__ import annotations

from typing import Any

from rmbench_fast.errors import UsageError

BACKENDS = ("hf",)


def get_backend(name: str) -> Any:
    """The scorer class of backend `name` (imported on demand)."""
    if name == "hf":
        from rmbench_fast.backends.hf import HFScorer  # start-up cost: torch (backends.hf)

        return HFScorer

    raise UsageError(f"unknown backend {name!r}; use one of {', '.join(BACKENDS)}")
