"""The data files behind `--data PATH`, for any benchmark: which files, and their fingerprint.

A benchmark's loader (benchmarks/<name>/data.py) reads the records; this module only says which
files a path means (a file, or a directory of .json / .jsonl / .parquet files) and hashes them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from rmbench_fast.errors import DataError

DATA_SUFFIXES = (".json", ".jsonl", ".parquet")


def data_files(path: Path) -> list[Path]:
    """The data files behind `--data PATH` (a file, or a directory of files), sorted by name."""
    if not path.exists():
        raise DataError("no such file or directory", file=str(path))
    if path.is_file():
        if path.suffix.lower() not in DATA_SUFFIXES:
            raise DataError(
                f"unsupported data file type {path.suffix!r} (use .json, .jsonl or .parquet)", file=str(path)
            )
        return [path]
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in DATA_SUFFIXES)
    if not files:
        raise DataError("directory holds no .json, .jsonl or .parquet data files", file=str(path))
    return files


def hash_files(files: Sequence[Path]) -> str:
    """sha256 over the data files' names and bytes, in order (the data's fingerprint in meta)."""
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()
