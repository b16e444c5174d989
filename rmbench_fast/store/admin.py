"""`python -m rmbench_fast cache {info,clear}`: the store summarised per model as a table, or cleared."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rmbench_fast.errors import UsageError
from rmbench_fast.store.db import open_store, resolve_store_path


def _human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def cache_command(action: str, path: Path | str | None, console: Any, *, model: str | None = None) -> int:
    """`python -m rmbench_fast cache {info,clear}` on the store at `resolve_store_path(path)`.

    info: size, and per model its names, kinds, settings, scopes, batches and sequences.
    clear: deletes everything, or one model's results (`model`: a fingerprint or unique prefix).
    A missing store is reported, not created. Returns the exit code (0); errors raise StoreError.
    """
    if action not in ("info", "clear"):
        raise UsageError(f"unknown cache action {action!r} (expected info or clear)")
    target = resolve_store_path(path)
    if not target.exists():
        console.print(f"no results store at {target}" + (" (nothing to clear)" if action == "clear" else ""))
        return 0
    with open_store(target) as store:
        if action == "clear":
            nb, ns = store.clear(model)
            what = f"model {model}" if model else "all results"
            console.print(f"cleared {what}: {nb} batches, {ns} sequences from {target}")
            return 0
        info = store.info()
    from rich.table import Table  # start-up cost: rich

    console.print(
        f"results store {info.path}: {_human_size(info.size_bytes)}, schema {info.schema_version}, "
        f"{len(info.scopes)} scopes, {info.batches} batches, {info.seqs} sequences, "
        f"{info.file_hashes} file hashes, {info.judgments} judge answers"
    )
    if not info.scopes:
        return 0
    table = Table(title="entries per model")
    for col in ("model", "name", "kind", "settings", "scopes", "batches", "sequences"):
        table.add_column(col, justify="right" if col in ("scopes", "batches", "sequences") else "left")
    for m in info.models():
        table.add_row(
            m.model[:12],
            ", ".join(m.labels) or "-",
            ", ".join(m.kinds),
            ", ".join(m.settings),
            str(m.scopes),
            str(m.batches),
            str(m.seqs),
        )
    console.print(table)
    return 0
