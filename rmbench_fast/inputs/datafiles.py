"""The data files behind `--data PATH`, for any benchmark: which files, their raw rows, and
their fingerprint.

A benchmark's loader (benchmarks/<name>/data.py) validates the records; this module says which
files a path means (a file, or a directory of .json / .jsonl / .parquet files), reads each into
raw rows (`read_rows`: the benchmark says what a top-level JSON document means) and hashes them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

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


def read_parquet(path: Path) -> list[Any]:
    """The rows of a parquet file (the Hugging Face export) as dicts; needs pyarrow."""
    try:
        import pyarrow.parquet as pq  # optional dependency: the [parquet] extra
    except ImportError:
        raise DataError("reading parquet needs pyarrow: pip install pyarrow", file=str(path)) from None
    try:
        return pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises many types for a corrupt file
        raise DataError(f"cannot read parquet: {e}", file=str(path)) from None


def read_rows(path: Path, as_rows: Callable[[Any, Path], list[Any]]) -> list[Any]:
    """Raw rows of one data file, in file order: parquet rows, JSONL lines, or a JSON document
    turned into a list by `as_rows(document, path)` (the benchmark's reading of a top-level
    object, raising DataError for one it does not take)."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return read_parquet(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read file: {e}", file=str(path)) from None
    if suffix == ".jsonl":
        rows = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(
                    f"invalid JSON on line {lineno}: {e.msg} (column {e.colno})", file=str(path)
                ) from None
        return rows
    try:
        document = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(
            f"invalid JSON: {e.msg} (line {e.lineno}, column {e.colno})", file=str(path)
        ) from None
    return as_rows(document, path)
