"""Shared pytest fixtures, and what a CI run requires.

- `smollm2_dir`: the converted SmolLM2-135M-Instruct demo model directory (session-wide; the
  first run converts the GGUF into the user cache, ~5 s).
- `rm_bench_data_dir`: `../shared/data/rm-bench` next to the repo.

`RMBF_REQUIRE` (comma-separated: shared, smollm2, official, vllm; `.ci/run` sets the first three) turns the
absence of a resource from a skip into a failure: the session stops at its start naming what is
missing, and `missing()` fails instead of skipping. Without it, tests that need an absent
resource skip with the reason. The logic lives in `tests/helpers/require.py`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.paths import RM_BENCH_DATA
from tests.helpers.require import absent, missing, required


def pytest_sessionstart(session: pytest.Session) -> None:
    gone = {r: why for r in sorted(required()) if (why := absent(r)) is not None}
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
