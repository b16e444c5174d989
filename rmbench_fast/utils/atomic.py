"""Files written whole or not at all: through a temp file in the same folder, then a rename.

An interrupted run never leaves a torn file and never clobbers the previous good one: the
temp file `.NAME.XXXX.tmp` sits beside the target (the same filesystem, so `os.replace` is
atomic) and is removed when writing fails.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any


def write_atomic(path: Path, write: Callable[[IO[str]], None]) -> None:
    """Call `write(fh)` on a UTF-8 temp file beside `path`, then rename it to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, obj: Any) -> None:
    """`obj` as JSON (indent 1, UTF-8 as is, a final newline)."""

    def write(fh: IO[str]) -> None:
        json.dump(obj, fh, indent=1, ensure_ascii=False)
        fh.write("\n")

    write_atomic(path, write)


def write_jsonl_atomic(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """One JSON object per line (UTF-8 as is)."""

    def write(fh: IO[str]) -> None:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")

    write_atomic(path, write)
