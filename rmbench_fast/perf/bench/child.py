"""One official or native path in a child process of its own (its own peak memory): the spec it
is given, and the child's side (`python -m rmbench_fast.perf.bench --child SPEC OUT`)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rmbench_fast.perf.bench.native import run_native
from rmbench_fast.perf.bench.official import run_official
from rmbench_fast.perf.bench.prepared import Prepared, prepare
from rmbench_fast.settings import RunConfig


def _cfg_doc(cfg: Any) -> dict[str, Any]:
    d = asdict(cfg)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


def _cfg_from_doc(doc: dict[str, Any]) -> Any:
    return RunConfig(**doc)


def run_path(
    prep: Prepared,
    path: str,
    *,
    threads: int | None,
    warmup: int,
    in_process: bool,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """One official/native path, in a child process (its own peak memory) unless `in_process`."""
    if in_process:
        return _run_path_here(prep, path, warmup)
    with tempfile.TemporaryDirectory(prefix="rmbf_bench_") as tmp:
        spec = Path(tmp) / "spec.json"
        out = Path(tmp) / "out.json"
        spec.write_text(
            json.dumps(
                {
                    "cfg": _cfg_doc(prep.cfg),
                    "path": path,
                    "threads": threads,
                    "warmup": warmup,
                    "data_sha256": prep.data_sha256,
                }
            )
        )
        proc = subprocess.run(
            [sys.executable, "-m", "rmbench_fast.perf.bench", "--child", str(spec), str(out)],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0 or not out.is_file():
            tail = " | ".join((proc.stderr or "").strip().splitlines()[-3:])
            raise RuntimeError(f"the {path} path failed (exit {proc.returncode}): {tail}")
        return json.loads(out.read_text())


def _run_path_here(prep: Prepared, path: str, warmup: int) -> dict[str, Any]:
    if path == "native":
        return run_native(prep, warmup)
    return run_official(prep, path == "official8bit", warmup)


def child_main(spec_path: str, out_path: str) -> int:
    """The child process of one path: prepare the same records, run the path, write its JSON."""
    import torch  # start-up cost: torch

    spec = json.loads(Path(spec_path).read_text())
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    prep = prepare(_cfg_from_doc(spec["cfg"]), log=lambda _m: None)
    if prep.data_sha256 != spec["data_sha256"]:
        raise RuntimeError("the data changed between the parent and the child process")
    res = _run_path_here(prep, spec["path"], int(spec.get("warmup") or 0))
    res["torch_threads"] = torch.get_num_threads()
    Path(out_path).write_text(json.dumps(res))
    return 0
