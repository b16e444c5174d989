"""Compile the Triton kernels for NVIDIA GPUs without a GPU, and report what the code looks like.

    python -m rmbench_fast.kernels.codegen            # JSON lines, one per kernel variant
    python -m rmbench_fast.kernels.codegen --cc 90

Triton's compiler and its bundled ptxas / cuobjdump run on any machine, so the launch
configurations the launchers use on a GPU can be compiled to cubin here (sm_80, sm_90) and
inspected: that catches GPU-only compile errors, register spills and codegen regressions
(unvectorized row loads in kernel A; kernel B falling off the tensor cores) where no GPU is lent.
The CUDA C++ kernel A, when the project build compiled it (nvcc found), is reported too: the
resource usage of each template instance in each architecture of its fatbin.

The signatures mirror what `triton.jit` derives at launch for a typical large shape (V = 128256,
H = 4096, T = 4096, contiguous rows, 16-byte aligned tensors): integer arguments equal to 1 become
constants, and pointers / integers divisible by 16 carry Triton's divisibility hint. Must run in a
process where triton was imported *without* TRITON_INTERPRET=1 (the interpreter replaces the
compiler's builtins).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import dpo_logratio, linear_logratio

V_DEFAULT, H_DEFAULT, T_DEFAULT = 128_256, 4_096, 4_096
_PTR_TYPES = {"bf16": "*bf16", "fp16": "*fp16", "fp32": "*fp32", "i64": "*i64"}


@dataclass(frozen=True)
class Ptr:
    """A tensor argument: its element type (a `_PTR_TYPES` key); always 16-byte aligned here."""

    dtype: str


def _constexpr_names(fn: Callable[..., Any]) -> set[str]:
    names = set()
    for p in inspect.signature(fn).parameters.values():
        ann = p.annotation
        if ann is not inspect.Parameter.empty and "constexpr" in (ann if isinstance(ann, str) else repr(ann)):
            names.add(p.name)
    return names


def specialize(
    fn: Callable[..., Any], args: dict[str, Any]
) -> tuple[dict[str, str], dict[str, Any], list[str]]:
    """(signature, constexprs, names with a divisibility-16 hint), as triton.jit would derive
    them for these launch arguments (every parameter of `fn` must be given)."""
    const_names = _constexpr_names(fn)
    sig: dict[str, str] = {}
    consts: dict[str, Any] = {}
    div16: list[str] = []
    for name in inspect.signature(fn).parameters:
        val = args[name]
        if (
            name in const_names
            or val is None
            or (isinstance(val, int) and not isinstance(val, bool) and val == 1)
        ):
            sig[name] = "constexpr"
            consts[name] = val
        elif isinstance(val, Ptr):
            sig[name] = _PTR_TYPES[val.dtype]
            div16.append(name)
        elif isinstance(val, bool):
            sig[name] = "i1"
        elif isinstance(val, int):
            sig[name] = "i32" if -(2**31) <= val < 2**31 else "i64"
            if val % 16 == 0:
                div16.append(name)
        elif isinstance(val, float):
            sig[name] = "fp32"
        else:
            raise TypeError(f"{name}: unsupported launch argument {val!r}")
    return sig, consts, div16


def kernel_a_variants(
    V: int = V_DEFAULT,
) -> Iterator[tuple[str, Callable[..., Any], dict[str, Any], dict[str, int]]]:
    """Kernel A at its GPU launch config: (variant name, fn, args, options)."""
    block_v, num_warps = dpo_logratio.logratio_launch_config(V, interpret=False)
    for dtype, has_ref in (("bf16", True), ("bf16", False), ("fp16", True), ("fp32", True)):
        args = {
            "pol_ptr": Ptr(dtype),
            "ref_ptr": Ptr(dtype),
            "lab_ptr": Ptr("i64"),
            "out_pol_ptr": Ptr("fp32"),
            "out_ref_ptr": Ptr("fp32"),
            "out_diff_ptr": Ptr("fp32"),
            "V": V,
            "stride_pt": V,
            "stride_pv": 1,
            "stride_rt": V,
            "stride_rv": 1,
            "stride_lab": 1,
            "IGNORE": dpo_logratio.IGNORE_INDEX,
            "BLOCK_V": block_v,
            "HAS_REF": has_ref,
        }
        name = f"dpo_logratio[{dtype},{'ref' if has_ref else 'ref-free'}]"
        yield name, dpo_logratio._dpo_logratio_kernel, args, {"num_warps": num_warps}


def kernel_b_variants(
    V: int = V_DEFAULT, H: int = H_DEFAULT, T: int = T_DEFAULT
) -> Iterator[tuple[str, Callable[..., Any], dict[str, Any], dict[str, int]]]:
    """Kernel B at its GPU launch config: (variant name, fn, args, options)."""
    for dtype, softcap in (("bf16", None), ("bf16", 30.0), ("fp32", None)):
        cfg = linear_logratio.linear_launch_config(V, H, interpret=False, fp32=dtype == "fp32")
        tiles = {k: v for k, v in cfg.items() if k.startswith("BLOCK_")}
        opts = {k: v for k, v in cfg.items() if not k.startswith("BLOCK_")}
        args = {
            "h_ptr": Ptr(dtype),
            "w_ptr": Ptr(dtype),
            "lab_ptr": Ptr("i64"),
            "out_ptr": Ptr("fp32"),
            "T": T,
            "V": V,
            "H": H,
            "stride_ht": H,
            "stride_hh": 1,
            "stride_wv": H,
            "stride_wh": 1,
            "stride_lab": 1,
            "softcap": softcap,
            "IGNORE": linear_logratio.IGNORE_INDEX,
            "HAS_SOFTCAP": softcap is not None,
            "IEEE_DOT": dtype == "fp32",
            "UPCAST": False,
            **tiles,
        }
        name = f"linear_logratio[{dtype}{',softcap' if softcap else ''}]"
        yield name, linear_logratio._linear_logprob_kernel, args, opts


def _nvidia_tool(name: str) -> str | None:
    import triton

    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    return str(bundled) if bundled.is_file() else shutil.which(name)


def resource_usage(cubin: bytes) -> dict[str, int]:
    """REG / STACK / SHARED / LOCAL of the cubin's kernel via cuobjdump ({} when unavailable)."""
    tool = _nvidia_tool("cuobjdump")
    if tool is None:
        return {}
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "k.cubin"
        path.write_bytes(cubin)
        res = subprocess.run([tool, "--dump-resource-usage", str(path)], capture_output=True, text=True)
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", res.stdout)
    if m is None:
        return {}
    return dict(zip(("regs", "stack_bytes", "static_shared_bytes", "local_bytes"), map(int, m.groups())))


def compile_variant(
    fn: Callable[..., Any], args: dict[str, Any], options: dict[str, int], cc: int
) -> dict[str, Any]:
    """Compile one variant for sm_<cc>; report its resources and codegen markers."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from ._triton_util import triton_interpreting

    if triton_interpreting():
        raise RuntimeError("triton was imported with TRITON_INTERPRET=1: codegen needs the compiler")
    jit = triton.jit(fn)
    sig, consts, div16 = specialize(fn, args)
    attrs = {(jit.arg_names.index(n),): [["tt.divisibility", 16]] for n in div16}
    compiled = triton.compile(
        ASTSource(jit, sig, consts, attrs), target=GPUTarget("cuda", cc, 32), options=options
    )
    ptx = compiled.asm["ptx"]
    return {
        "cc": cc,
        **options,
        "dynamic_shared_bytes": int(compiled.metadata.shared),
        "vector_loads": sorted(set(re.findall(r"ld\.global(?:\.\w+)*\.v[248]\.\w+", ptx))),
        "tensor_core_ops": sorted(
            {m.split(".")[0] for m in re.findall(r"\b(?:wgmma\.mma_async|mma\.sync)\b", ptx)}
        ),
        **resource_usage(compiled.asm["cubin"]),
    }


def cuda_module_usage() -> list[dict[str, Any]]:
    """Resource usage of every kernel in the built CUDA module (`rmbench_fast._cuda`), per
    architecture in its fatbin: [{"variant", "cc", "regs", "stack_bytes", ...}]; [] when the
    module was not built (no nvcc) or cuobjdump is missing."""
    import importlib.util

    spec = importlib.util.find_spec("rmbench_fast._cuda")
    tool = _nvidia_tool("cuobjdump")
    if spec is None or spec.origin is None or tool is None:
        return []
    res = subprocess.run([tool, "--dump-resource-usage", spec.origin], capture_output=True, text=True)
    rows: list[dict[str, Any]] = []
    cc = 0
    name = ""
    for line in res.stdout.splitlines():
        if m := re.match(r"\s*arch = sm_(\d+)", line):
            cc = int(m.group(1))
        elif m := re.match(r"\s*Function (\S+):", line):
            name = m.group(1)
        elif m := re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", line):
            regs, stack, shared, local = map(int, m.groups())
            rows.append(
                {
                    "variant": f"cuda:{_short_cuda_name(name)}",
                    "cc": cc,
                    "regs": regs,
                    "stack_bytes": stack,
                    "static_shared_bytes": shared,
                    "local_bytes": local,
                }
            )
    return rows


def _short_cuda_name(mangled: str) -> str:
    """dpo_logratio_kernel<bf16, int64>-style name from an Itanium-mangled template kernel."""
    types = {"13__nv_bfloat16": "bf16", "6__half": "fp16", "f": "fp32"}
    labels = {"i": "int32", "l": "int64"}
    m = re.search(r"([a-z_]+_kernel)I(13__nv_bfloat16|6__half|f)([il])E", mangled)
    if m is None:
        return mangled
    return f"{m.group(1)}<{types[m.group(2)]},{labels[m.group(3)]}>"


def report(ccs: tuple[int, ...] = (80, 90)) -> list[dict[str, Any]]:
    """Every kernel variant compiled for every cc in `ccs`."""
    rows = []
    for cc in ccs:
        for name, fn, args, opts in (*kernel_a_variants(), *kernel_b_variants()):
            rows.append({"variant": name, **compile_variant(fn, args, opts, cc)})
    return rows + cuda_module_usage()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--cc", type=int, action="append", help="compute capability, e.g. 90 (default: 80 and 90)"
    )
    args = ap.parse_args(argv)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9 warns when unset
    for row in report(tuple(args.cc or (80, 90))):
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
