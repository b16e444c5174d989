"""Load and validate RewardBench 2 data (docs/rewardbench2.md, "Data schema").

Accepted inputs for `--data PATH`: a `.json` file (a list of records, or {"data": [...]}), a
`.jsonl` file (one record per line), a `.parquet` file (the Hugging Face export; needs pyarrow),
or a directory of such files (sorted by name). Every record is checked before anything runs;
the first bad one raises a `DataError` (exit 2) naming the file, the record (index and id) and
the field.

A record: `id`, `prompt` (str), `chosen` / `rejected` (non-empty lists of strings),
`num_correct` == len(chosen), `total_completions` == len(chosen) + len(rejected) <= 64, and
`subset` one of SUBSETS. Ties ids are `ref:<int>` or `tied:<int>`; ids are unique per subset.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rmbench_fast.errors import DataError
from rmbench_fast.inputs.datafiles import data_files, read_rows

SUBSETS = ("Factuality", "Precise IF", "Math", "Safety", "Focus", "Ties")
TIES = "Ties"
MAX_COMPLETIONS = 64  # the planner's per-record limit
HF_DATASET = "allenai/reward-bench-2"
# `ref:<p>` / `tied:<p>`: the official code reads `int(id.split(":")[1])`
_TIES_ID = re.compile(r"^(?P<kind>ref|tied):(?P<pid>[0-9]+)$")


@dataclass(frozen=True)
class Prompt:
    """One RewardBench 2 prompt and its completions, chosen (correct) first."""

    index: int  # position in its source file (0-based)
    id: str
    subset: str  # one of SUBSETS
    prompt: str
    chosen: tuple[str, ...]
    rejected: tuple[str, ...]
    source: str
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def completions(self) -> tuple[str, ...]:
        """All completions in the official unrolling order: chosen, then rejected."""
        return self.chosen + self.rejected

    @property
    def num_correct(self) -> int:
        return len(self.chosen)

    @property
    def ties_key(self) -> tuple[str, int] | None:
        """("ref" | "tied", prompt id) for a Ties prompt, else None."""
        if self.subset != TIES:
            return None
        m = _TIES_ID.match(self.id)
        assert m is not None  # validated on load
        return m.group("kind"), int(m.group("pid"))


def _as_rows(data: Any, path: Path) -> list[Any]:
    """A JSON document -> its rows: a list, or {"data": [...]} (the datasets-server export)."""
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(f"expected a JSON list of records, got {type(data).__name__}", file=str(path))
    return data


def _texts(row: dict[str, Any], key: str, err: dict[str, Any]) -> tuple[str, ...]:
    if key not in row:
        raise DataError(f"missing field {key!r}", **err)
    value = row[key]
    if hasattr(value, "tolist"):  # numpy arrays from some parquet readers
        value = value.tolist()
    if not isinstance(value, list | tuple):
        raise DataError(f"expected a list of strings, got {type(value).__name__}", field=key, **err)
    if not value:
        raise DataError("empty list: every prompt needs a chosen and a rejected completion", field=key, **err)
    for i, text in enumerate(value):
        if not isinstance(text, str):
            raise DataError(
                f"completion {i} is {type(text).__name__}, expected a string", field=f"{key}[{i}]", **err
            )
    return tuple(value)


def _count(row: dict[str, Any], key: str, want: int, what: str, err: dict[str, Any]) -> None:
    if key not in row:
        raise DataError(f"missing field {key!r}", **err)
    v = row[key]
    if isinstance(v, bool) or not isinstance(v, int):
        raise DataError(f"expected an integer, got {type(v).__name__}", field=key, **err)
    if v != want:
        raise DataError(f"{key} is {v} but {what} is {want}", field=key, **err)


def validate_prompt(row: Any, *, index: int, source: str) -> Prompt:
    """Check one raw row and turn it into a `Prompt`; raise `DataError` on the first problem."""
    if not isinstance(row, dict):
        raise DataError(f"expected a JSON object, got {type(row).__name__}", file=source, record=index)
    err: dict[str, Any] = {"file": source, "record": index, "record_id": str(row.get("id", index))}
    if "id" not in row:
        raise DataError("missing field 'id'", **err)
    if not isinstance(row["id"], str | int) or isinstance(row["id"], bool):
        raise DataError(f"expected a string, got {type(row['id']).__name__}", field="id", **err)
    if "prompt" not in row:
        raise DataError("missing field 'prompt'", **err)
    if not isinstance(row["prompt"], str):
        raise DataError(f"expected a string, got {type(row['prompt']).__name__}", field="prompt", **err)
    chosen, rejected = _texts(row, "chosen", err), _texts(row, "rejected", err)
    _count(row, "num_correct", len(chosen), "len(chosen)", err)
    _count(row, "total_completions", len(chosen) + len(rejected), "len(chosen) + len(rejected)", err)
    if len(chosen) + len(rejected) > MAX_COMPLETIONS:
        raise DataError(
            f"{len(chosen) + len(rejected)} completions, more than the {MAX_COMPLETIONS} the planner takes",
            field="total_completions",
            **err,
        )
    subset = row.get("subset")
    if subset not in SUBSETS:
        raise DataError(f"unknown subset {subset!r} (known: {', '.join(SUBSETS)})", field="subset", **err)
    rid = str(row["id"])
    if subset == TIES and not _TIES_ID.match(rid):
        raise DataError(f"a Ties id must be 'ref:<int>' or 'tied:<int>', got {rid!r}", field="id", **err)
    return Prompt(index, rid, subset, row["prompt"], chosen, rejected, source, row)


def load_prompts(path: str | os.PathLike[str]) -> list[Prompt]:
    """Every prompt behind `path`, validated, in file order; ids unique within a subset."""
    out: list[Prompt] = []
    seen: dict[tuple[str, str], Prompt] = {}
    for f in data_files(Path(path)):
        for i, row in enumerate(read_rows(f, _as_rows)):
            p = validate_prompt(row, index=i, source=str(f))
            # The official Ties code would merge two records with one id score by score.
            first = seen.setdefault((p.subset, p.id), p)
            if first is not p:
                raise DataError(
                    f"duplicate id in subset {p.subset!r} (first at {first.source} record {first.index})",
                    file=p.source,
                    record=p.index,
                    record_id=p.id,
                    field="id",
                )
            out.append(p)
    return out


def select(
    prompts: Sequence[Prompt], *, subsets: Iterable[str] | None = None, limit: int | None = None
) -> list[Prompt]:
    """Filter: `subsets` (names from SUBSETS), then the first `limit` prompts of each subset,
    keeping file order. For Ties, `limit` counts prompt ids, so a ref/tied pair stays whole."""
    out = list(prompts)
    if subsets is not None:
        wanted = set(subsets)
        unknown = wanted - set(SUBSETS)
        if unknown:
            raise DataError(f"unknown subset(s) {sorted(unknown)} (known: {', '.join(SUBSETS)})")
        out = [p for p in out if p.subset in wanted]
    if limit is not None:
        kept_ids: dict[str, list[Any]] = {}
        res = []
        for p in out:
            key: Any = p.ties_key[1] if p.ties_key is not None else p.id
            ids = kept_ids.setdefault(p.subset, [])
            if key not in ids and len(ids) >= limit:
                continue
            if key not in ids:
                ids.append(key)
            res.append(p)
        out = res
    return out
