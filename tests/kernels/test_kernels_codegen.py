"""The Triton kernels compile for sm_80 and sm_90 at their GPU launch configs, with no GPU.

Runs `python -m rmbench_fast.kernels.codegen` in a subprocess (the compiler cannot run in a
process where triton was imported with TRITON_INTERPRET=1, as the CPU kernel tests do) and
checks what a GPU run depends on: no register spills, 16-byte vectorized row loads in kernel A
(it is bandwidth bound), tensor-core MMAs for kernel B in bf16 (it is matmul bound), shared
memory within the architecture's limit.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

# Located, not imported: importing triton here (without TRITON_INTERPRET=1) would stop the CPU
# kernel tests of this pytest process from using Triton's interpreter.
_spec = importlib.util.find_spec("triton")
if _spec is None or not _spec.submodule_search_locations:
    pytest.skip("triton is not installed", allow_module_level=True)
if not (Path(next(iter(_spec.submodule_search_locations))) / "backends" / "nvidia").is_dir():
    pytest.skip("triton has no NVIDIA backend in this install", allow_module_level=True)

# Max dynamic shared memory per block (bytes): A100 163 KB, H100 227 KB.
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}


@pytest.fixture(scope="module")
def rows() -> list[dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    res = subprocess.run(
        [sys.executable, "-m", "rmbench_fast.kernels.codegen"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]


def _triton(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if not r["variant"].startswith("cuda:")]


def test_every_variant_compiles_for_both_architectures(rows: list[dict[str, Any]]) -> None:
    triton_rows = _triton(rows)
    assert len({r["variant"] for r in triton_rows}) == 7 and len(triton_rows) == 14
    assert {r["cc"] for r in triton_rows} == {80, 90}
    for r in triton_rows:
        assert r["dynamic_shared_bytes"] <= SHARED_LIMIT[r["cc"]], r


def test_cuda_kernel_instances_build_for_both_architectures_without_spills(
    rows: list[dict[str, Any]],
) -> None:
    cuda = [r for r in rows if r["variant"].startswith("cuda:")]
    if not cuda:
        pytest.skip("rmbench_fast._cuda was not built (no nvcc at build time) or cuobjdump is missing")
    # 3 logits dtypes x 2 label dtypes, each as SASS for sm_80 and sm_90
    assert {(r["variant"], r["cc"]) for r in cuda} == {
        (f"cuda:dpo_logratio_kernel<{t},{lab}>", cc)
        for t in ("bf16", "fp16", "fp32")
        for lab in ("int32", "int64")
        for cc in (80, 90)
    }
    for r in cuda:
        assert r["stack_bytes"] == 0 and r["local_bytes"] == 0 and r["regs"] <= 255, r


def test_no_register_spills(rows: list[dict[str, Any]]) -> None:
    if "regs" not in rows[0]:
        pytest.skip("cuobjdump not found: no resource usage to check")
    for r in rows:
        assert r["stack_bytes"] == 0 and r["local_bytes"] == 0, r
        assert r["regs"] <= 255, r


def test_kernel_a_row_loads_are_16_byte_vectors(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        if r["variant"].startswith("dpo_logratio"):
            assert any(".v4.b32" in op or ".v2.b64" in op for op in r["vector_loads"]), r


def test_kernel_b_uses_tensor_cores_in_bf16(rows: list[dict[str, Any]]) -> None:
    want = {80: ["mma"], 90: ["wgmma"]}
    for r in rows:
        if r["variant"].startswith("linear_logratio[bf16"):
            assert r["tensor_core_ops"] == want[r["cc"]], r
