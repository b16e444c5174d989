"""Load and validate RM-Bench data (SPEC §1).

Accepted inputs for `--data PATH`:
- the official `total_dataset.json` (records carry `domain`);
- per-domain `<domain>_filtered.json` files (the domain comes from the file name);
- a directory of such files (every `*.json`, `*.jsonl` and `*.parquet` in it, sorted by name);
- JSONL (one record per line) and parquet (the Hugging Face export).

Every record is validated; the first bad one raises a `DataError` naming the file, the record
(index and id) and the field.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from rmbench_fast.errors import DataError
from rmbench_fast.inputs.datafiles import DATA_SUFFIXES, data_files, read_rows
from rmbench_fast.records import DOMAINS, N_STYLES, Record

_DOMAIN_FILE = re.compile(r"^(?P<domain>[a-z-]+)_filtered$")
HF_DATASET = "THU-KEG/RM-Bench"


def domain_from_filename(path: Path) -> str | None:
    """`safety-refuse_filtered.json` -> 'safety-refuse'; None when the name says no domain."""
    m = _DOMAIN_FILE.match(path.name.split(".")[0])
    return m.group("domain") if m and m.group("domain") in DOMAINS else None


def _as_rows(data: Any, path: Path) -> list[Any]:
    """A JSON document -> its records: a list, a mapping of id -> record, or one record."""
    if isinstance(data, dict):
        # A mapping of id -> record, or a single record; both are seen in the wild.
        if "prompt" in data:
            data = [data]
        elif data and all(isinstance(v, dict) for v in data.values()):
            data = list(data.values())
        else:
            keys = ", ".join(repr(k) for k in list(data)[:3]) + (", ..." if len(data) > 3 else "")
            raise DataError(
                f"a JSON object (keys {keys or 'none'}), not RM-Bench data: expected a list of records "
                "(total_dataset.json) or the per-domain layout (<domain>_filtered.json files, each a list of records)",
                file=str(path),
            )
    if not isinstance(data, list):
        raise DataError(
            f"a JSON {type(data).__name__}, not RM-Bench data: expected a list of records (total_dataset.json) "
            "or the per-domain layout (<domain>_filtered.json files, each a list of records)",
            file=str(path),
        )
    return data


def _check_responses(row: dict[str, Any], key: str, err: dict[str, Any]) -> tuple[str, str, str]:
    if key not in row:
        raise DataError(f"missing field {key!r}", **err)
    value = row[key]
    if hasattr(value, "tolist"):  # numpy arrays from some parquet readers
        value = value.tolist()
    if not isinstance(value, list | tuple):
        raise DataError(
            f"expected a list of {N_STYLES} strings, got {type(value).__name__}", field=key, **err
        )
    if len(value) != N_STYLES:
        raise DataError(
            f"expected exactly {N_STYLES} responses (concise, detailed, markdown), got {len(value)}",
            field=key,
            **err,
        )
    for i, text in enumerate(value):
        if not isinstance(text, str):
            raise DataError(
                f"response {i} is {type(text).__name__}, expected a string", field=f"{key}[{i}]", **err
            )
        if not text.strip():
            raise DataError(f"response {i} is empty", field=f"{key}[{i}]", **err)
    return (value[0], value[1], value[2])


def validate_record(row: Any, *, index: int, source: str, file_domain: str | None) -> Record:
    """Check one raw row and turn it into a `Record`; raise `DataError` on the first problem."""
    if not isinstance(row, dict):
        raise DataError(f"expected a JSON object, got {type(row).__name__}", file=source, record=index)
    rid = row.get("id", index)
    err: dict[str, Any] = {"file": source, "record": index, "record_id": str(rid)}
    if "prompt" not in row:
        raise DataError("missing field 'prompt'", **err)
    if not isinstance(row["prompt"], str):
        raise DataError(f"expected a string, got {type(row['prompt']).__name__}", field="prompt", **err)
    chosen = _check_responses(row, "chosen", err)
    rejected = _check_responses(row, "rejected", err)
    domain = row.get("domain", file_domain)
    if domain is None:
        raise DataError(
            "no 'domain' field, and the file name does not name one (expected <domain>_filtered.json)",
            field="domain",
            **err,
        )
    if domain not in DOMAINS:
        raise DataError(f"unknown domain {domain!r} (known: {', '.join(DOMAINS)})", field="domain", **err)
    return Record(
        index=index,
        id=str(rid),
        domain=domain,
        prompt=row["prompt"],
        chosen=chosen,
        rejected=rejected,
        source=source,
        raw=row,
    )


def load_file(path: Path) -> list[Record]:
    """All records of one data file, validated."""
    file_domain = domain_from_filename(path)
    rows = read_rows(path, _as_rows)
    return [
        validate_record(r, index=i, source=str(path), file_domain=file_domain) for i, r in enumerate(rows)
    ]


def load_records(path: str | os.PathLike[str]) -> list[Record]:
    """Every record behind `path`, validated, in file order (files sorted by name)."""
    records: list[Record] = []
    for f in data_files(Path(path)):
        records.extend(load_file(f))
    return records


def select(
    records: Sequence[Record],
    *,
    domains: Iterable[str] | None = None,
    limit: int | None = None,
    ids: Iterable[str] | None = None,
) -> list[Record]:
    """Filter records: `domains` (record domains, or 'safety' for both safety sets), `ids`, then
    the first `limit` records of each domain, keeping the input order."""
    out = list(records)
    if domains is not None:
        wanted = set(domains)
        unknown = wanted - set(DOMAINS) - {"safety"}
        if unknown:
            raise DataError(
                f"unknown domain(s) {sorted(unknown)} in --domains (known: {', '.join(DOMAINS)}, safety)"
            )
        out = [r for r in out if r.domain in wanted or ("safety" in wanted and r.domain.startswith("safety"))]
    if ids is not None:
        wanted_ids = {str(i) for i in ids}
        out = [r for r in out if r.id in wanted_ids]
    if limit is not None:
        seen: dict[str, int] = {}
        kept = []
        for r in out:
            if seen.get(r.domain, 0) < limit:
                seen[r.domain] = seen.get(r.domain, 0) + 1
                kept.append(r)
        out = kept
    return out


def hf_cached_dataset() -> Path | None:
    """RM-Bench as downloaded by `datasets` / `huggingface_hub` into the local hub cache, if it is
    there (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else ~/.cache/huggingface/hub). Nothing is
    fetched. Prefers `total_dataset.json`; else a folder of parquet shards; else one JSON file.
    """
    roots = []
    if os.environ.get("HF_HUB_CACHE"):
        roots.append(Path(os.environ["HF_HUB_CACHE"]))
    hf_home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    roots.append(hf_home / "hub")
    for root in roots:
        snap = root / ("datasets--" + HF_DATASET.replace("/", "--")) / "snapshots"
        if not snap.is_dir():
            continue
        for rev in sorted(snap.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True):
            files = sorted(p for p in rev.rglob("*") if p.is_file() and p.suffix in DATA_SUFFIXES)
            total = [p for p in files if p.name == "total_dataset.json"]
            if total:
                return total[0]
            parquet = [p for p in files if p.suffix == ".parquet"]
            if parquet and not any(
                p.suffix != ".parquet" for p in parquet[0].parent.iterdir() if p.suffix in DATA_SUFFIXES
            ):
                return parquet[0].parent
            if files:
                return files[0]
    return None
