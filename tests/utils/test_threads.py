"""`--threads` (issue 20): the CPU thread count, its default (physical cores), and its record in meta."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from rmbench_fast.commands import main
from rmbench_fast.errors import UsageError
from rmbench_fast.utils import threads
from rmbench_fast.utils.threads import physical_cores, set_threads


@pytest.fixture
def keep_threads() -> Iterator[None]:
    """The run sets torch's process-wide thread count: restore it for the other tests."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_physical_cores_is_within_the_usable_cpus() -> None:
    import os

    n = physical_cores()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert 1 <= n <= (usable or 1)


def test_set_threads(keep_threads: None) -> None:
    assert set_threads(1) == 1 and torch.get_num_threads() == 1
    assert set_threads(None) == physical_cores() == torch.get_num_threads()
    with pytest.raises(UsageError, match="--threads must be at least 1"):
        set_threads(0)


def test_run_records_threads_and_the_gemm_kernel(
    tmp_path: Path, smollm2_dir: Path, keep_threads: None, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    argv = ["run", "--model", str(smollm2_dir), "--limit", "1", "--domains", "chat", "--out", str(out)]
    rc = main([*argv, "--no-progress", "--no-cache", "--threads", "1"])
    assert rc == 0, capsys.readouterr().err
    meta = json.loads((out / "metrics.json").read_text())["meta"]
    assert meta["threads"] == 1 and meta["scorer_stats"]["threads"] == 1
    assert meta["scorer_stats"]["cpu_gemm"] == "torch"  # auto, as measured
    assert meta["scorer_stats"]["cpu_heap_retained"] is True


def test_threads_below_one_is_a_usage_error(smollm2_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["run", "--model", str(smollm2_dir), "--limit", "1", "--threads", "0", "--no-progress"])
    assert rc == 2
    assert "--threads must be at least 1" in capsys.readouterr().err


def test_retain_freed_memory_on_glibc() -> None:
    import platform

    from rmbench_fast.utils.threads import retain_freed_memory

    applied = retain_freed_memory()
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert applied and retain_freed_memory()  # idempotent
    # Allocation still works, and values are untouched by where the memory came from.
    a = torch.arange(1 << 22, dtype=torch.float32)
    del a
    b = torch.arange(1 << 22, dtype=torch.float32)
    assert float(b[-1]) == (1 << 22) - 1


def test_cpu_description_reads_model_and_isa(tmp_path: Path) -> None:
    """The first CPU's model name and, of its flags, the vector ISAs that pick CPU kernels."""
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse2 avx2 fma avx512f amx_tile\n\n"
        "processor\t: 1\nmodel name\t: Other\nflags\t\t: fpu\n"
    )
    assert threads.cpu_description(info) == {
        "model": "Some CPU",
        "isa": ["avx2", "fma", "avx512f", "amx_tile"],
    }
    assert threads.cpu_description(tmp_path / "missing") == {}
