"""`python -m rmbench_fast sweep`: many reward models (checkpoints) on the same data, one process.

Every model directory is inspected before the first forward pass. The records are loaded and
validated once; tokenization runs once per distinct tokenizer + template; with a shared
reference model (DPO), its Σ log π_ref runs once for the whole sweep (see `EvalCache`). Each
model's scores.json / metrics.json land in OUT/NN-<name>/ as it finishes, and OUT/sweep.json
(one row per finished model) is rewritten after each, so a failure later in the sweep loses
nothing already computed.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from .errors import UsageError
from .pipeline import EvalCache, RunConfig, run_and_report
from .report import write_json_atomic

SWEEP_FILE = "sweep.json"
DEFAULT_SWEEP_OUT = "rmbench_sweep"


def run_dirs(models: list[str], out: Path) -> list[Path]:
    """OUT/NN-<model dir name>: ordered, and unique even when two checkpoints share a name."""
    return [out / f"{i:02d}-{Path(m).resolve().name or 'model'}" for i, m in enumerate(models)]


def check_model(model: str, base: RunConfig) -> None:
    """The per-model checks a run makes before scoring: the directory (config, weights, remote
    code), the kind against the reward options, and the chat template."""
    from .format import Formatter
    from .modelio import inspect_model_dir
    from .pipeline import _check_kind

    cfg = replace(base, model=model)
    info = inspect_model_dir(
        Path(model), trust_remote_code=cfg.trust_remote_code, allow_pickle=cfg.allow_pickle
    )
    _check_kind(cfg, info)
    Formatter.from_model_dir(Path(model), cfg.chat_template)


def _summary_row(model: str, out_dir: Path, result: dict[str, Any]) -> dict[str, Any]:
    meta = result["meta"]
    return {
        "model": model,
        "out": str(out_dir),
        "total": {k: result["total"][k] for k in ("overall", "hard", "normal", "easy")},
        "domains": {
            d: {k: m[k] for k in ("score", "hard", "normal", "easy")} for d, m in result["domains"].items()
        },
        "backend": meta["backend"],
        "reference_sums": meta.get("reference_sums"),
        "seconds": meta["seconds"],
    }


def run_sweep(models: list[str], base: RunConfig, console: Any) -> list[dict[str, Any]]:
    """Evaluate each model with `base`'s options; returns sweep.json's rows."""
    if not models:
        raise UsageError("sweep needs at least one model directory")
    for m in models:  # fail on a bad model or option now, not after hours of scoring
        check_model(m, base)
    out = Path(base.out or DEFAULT_SWEEP_OUT)
    cache = EvalCache()
    rows: list[dict[str, Any]] = []
    for i, (model, out_dir) in enumerate(zip(models, run_dirs(models, out))):
        console.print(f"[bold]sweep {i + 1}/{len(models)}:[/bold] {model}")
        result = run_and_report(
            replace(base, model=model, out=str(out_dir)), console, cache=cache, tables=False
        )
        rows.append(_summary_row(model, out_dir, result))
        write_json_atomic(out / SWEEP_FILE, {"models": rows, "cache_reuses": dict(cache.hits)})
    print_sweep(rows, console)
    console.print(f"wrote {out / SWEEP_FILE}")
    return rows


def print_sweep(rows: list[dict[str, Any]], console: Any) -> None:
    """One line per model: overall, hard / normal / easy, and each domain's score (percent)."""
    from rich.table import Table

    domains = sorted({d for r in rows for d in r["domains"]})
    table = Table(title="RM-Bench sweep")
    for col in ("model", "overall", "hard", "normal", "easy", *domains):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in rows:
        t = r["total"]
        cells = [f"{100 * t[k]:.1f}" for k in ("overall", "hard", "normal", "easy")]
        cells += [f"{100 * r['domains'][d]['score']:.1f}" if d in r["domains"] else "-" for d in domains]
        table.add_row(Path(r["model"]).name, *cells)
    console.print(table)
