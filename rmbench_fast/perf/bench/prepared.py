"""The run's records and token sequences, prepared once with the pipeline's own steps; every path
scores these."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class Prepared:
    """The run's records and token sequences, as the `run` pipeline makes them."""

    cfg: Any  # RunConfig
    records: list[Any]
    seqs: list[list[Any]]
    model: Any  # pipeline.models.ModelChoice
    pad_id: int | None
    data_sha256: str
    data_path: str


def prepare(cfg: Any, log: Callable[[str], None] = print) -> Prepared:
    """Load, validate and tokenize with the pipeline's own steps (no model weights loaded)."""
    from rmbench_fast.pipeline.data import load_data  # start-up cost: the pipeline (torch)
    from rmbench_fast.pipeline.memo import EvalCache  # start-up cost: the pipeline (torch)

    # start-up cost: the pipeline (torch)
    from rmbench_fast.pipeline.models import choose_models, resolve_hub_models
    from rmbench_fast.pipeline.tokens import tokenize_run  # start-up cost: the pipeline (torch)

    cache = EvalCache()
    cfg, _sources = resolve_hub_models(cfg, log)  # hub ids -> their snapshot directories
    data = load_data(cfg, cache)
    model = choose_models(cfg, log)
    toks = tokenize_run(cfg, data, model, cache, log)
    return Prepared(cfg, data.records, toks.seqs, model, toks.pad_id, data.sha256, str(data.path))
