"""Step 1, the data: where the records come from (a path, a hub dataset id, the HF cache or the
embedded sample), then the records loaded and validated in full before anything else runs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from rmbench_fast.benchmarks.rmbench.data import hf_cached_dataset, load_records, select
from rmbench_fast.errors import UsageError
from rmbench_fast.inputs import hub
from rmbench_fast.inputs.datafiles import data_files, hash_files
from rmbench_fast.pipeline.memo import EvalCache
from rmbench_fast.records import Record
from rmbench_fast.settings import RunConfig


def sample_data_path() -> Path:
    return Path(str(files("rmbench_fast") / "sample" / "rm_bench_sample.jsonl"))


def resolve_data_source(
    data: str | None, *, progress: bool = True, log: Callable[[str], None] = print
) -> tuple[Path, str, hub.HubSnapshot | None]:
    """The data path, where it came from, and the hub snapshot behind a `--data ORG/NAME[@REV]`
    dataset id: a local path of that name first, else the hub (inputs.hub; origin
    "huggingface-hub"); without --data, a cached Hugging Face copy ("huggingface-cache"), else the
    embedded sample ("embedded-sample")."""
    if data is not None:
        path, snap = hub.resolve_dataset(data, progress=progress, log=log)
        return path, ("user" if snap is None else "huggingface-hub"), snap
    cached = hf_cached_dataset()
    if cached is not None:
        return cached, "huggingface-cache", None
    return sample_data_path(), "embedded-sample", None


@dataclass
class LoadedData:
    path: Path
    origin: str
    files: list[Path]
    sha256: str
    records: list[Record]
    key: tuple[Any, ...]
    source: hub.HubSnapshot | None = None  # a dataset id's commit and files


def load_data(cfg: RunConfig, cache: EvalCache) -> LoadedData:
    """Step 1: the records, validated in full before anything else runs."""
    path, origin, source = resolve_data_source(cfg.data, progress=cfg.progress)
    key = ("records", str(path), tuple(cfg.domains or ()), cfg.limit, tuple(cfg.ids or ()))

    def load() -> tuple[list[Path], str, list[Record]]:
        files = data_files(path)
        selected = select(load_records(path), domains=cfg.domains, limit=cfg.limit, ids=cfg.ids)
        return files, hash_files(files), selected

    files, sha, records = cache.get(key, load)
    if not records:
        raise UsageError(f"no records left to score in {path} after --domains/--limit/--ids")
    return LoadedData(path, origin, files, sha, records, key, source)
