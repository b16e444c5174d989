"""`python -m rmbench_fast sweep`: many reward models (checkpoints) on the same data, one process.

Every model directory is inspected before the first forward pass. The records are loaded and
validated once; tokenization runs once per distinct tokenizer + template; with a shared
reference model (DPO), its Σ log π_ref runs once for the whole sweep (see `EvalCache`). Each
model's scores.json / metrics.json land in OUT/NN-<name>/ as it finishes, and OUT/sweep.json
(one row per finished model) is rewritten after each, so a failure later in the sweep loses
nothing already computed.
"""

from __future__ import annotations

import textwrap
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rmbench_fast.errors import UsageError
from rmbench_fast.results.report import check_out_dir
from rmbench_fast.utils.atomic import write_json_atomic

if TYPE_CHECKING:  # pipeline pulls in torch; `report SWEEP_OUT` does not need it
    from rmbench_fast.settings import RunConfig

SWEEP_FILE = "sweep.json"
DEFAULT_SWEEP_OUT = "rmbench_sweep"


def run_dirs(models: list[str], out: Path) -> list[Path]:
    """OUT/NN-<model dir name>: ordered, and unique even when two checkpoints share a name."""
    return [out / f"{i:02d}-{Path(m).resolve().name or 'model'}" for i, m in enumerate(models)]


def check_model(model: str, base: RunConfig) -> None:
    """The per-model checks a run makes before scoring: the directory (config, weights, remote
    code), the kind against the reward options, and the chat template."""
    from rmbench_fast.inputs.format import Formatter
    from rmbench_fast.inputs.modelio import inspect_model_dir
    from rmbench_fast.pipeline.models import check_kind, kind_hint, resolve_hub_models

    # A hub id resolves to its commit here, once: the run below gets the same commit.
    cfg, _sources = resolve_hub_models(replace(base, model=model), print)
    model = str(cfg.model)
    info = inspect_model_dir(
        Path(model),
        trust_remote_code=cfg.trust_remote_code,
        allow_pickle=cfg.allow_pickle,
        kind_hint=kind_hint(cfg),
    )
    check_kind(cfg, info)
    Formatter.from_model_dir(Path(model), cfg.chat_template)


def summary_row(model: str, out_dir: Path, result: dict[str, Any]) -> dict[str, Any]:
    """One sweep.json row. `total` and each `domains.<d>` carry their figures and, when the run
    computed them, the same `ci` records as metrics.json (total.ci.overall, domains.<d>.ci.score, ...)."""
    meta = result["meta"]

    def pick(m: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
        row = {k: m[k] for k in keys}
        if m.get("ci"):
            row["ci"] = {k: m["ci"][k] for k in keys}
        return row

    return {
        "model": model,
        "model_ref": meta.get("model_ref"),  # ORG/NAME@sha for a hub id, else None
        "out": str(out_dir),
        "total": pick(result["total"], ("overall", "hard", "normal", "easy")),
        "domains": {d: pick(m, ("score", "hard", "normal", "easy")) for d, m in result["domains"].items()},
        "backend": meta["backend"],
        "reference_sums": meta.get("reference_sums"),
        "seconds": meta["seconds"],
    }


def run_sweep(models: list[str], base: RunConfig, console: Any) -> list[dict[str, Any]]:
    """Evaluate each model with `base`'s options; returns sweep.json's rows."""
    from rmbench_fast.pipeline import run_and_report
    from rmbench_fast.pipeline.memo import EvalCache

    if not models:
        raise UsageError("sweep needs at least one model directory")
    for m in models:  # fail on a bad model or option now, not after hours of scoring
        check_model(m, base)
    out = Path(base.out or DEFAULT_SWEEP_OUT)
    check_out_dir(out)
    cache = EvalCache()
    rows: list[dict[str, Any]] = []
    for i, (model, out_dir) in enumerate(zip(models, run_dirs(models, out))):
        console.print(f"[bold]sweep {i + 1}/{len(models)}:[/bold] {model}")
        # sweep=True: the reference's sums come first, once, and are shared by every checkpoint.
        result = run_and_report(
            replace(base, model=model, out=str(out_dir)), console, cache=cache, tables=False, sweep=True
        )
        rows.append(summary_row(model, out_dir, result))
        write_json_atomic(out / SWEEP_FILE, {"models": rows, "cache_reuses": dict(cache.hits)})
    print_sweep(rows, console)
    console.print(f"wrote {out / SWEEP_FILE}")
    return rows


def read_sweep(out: Path) -> dict[str, Any]:
    """OUT/sweep.json's content ({"models": rows, ...}); exit 2 on a missing or bad file."""
    import json

    from rmbench_fast.errors import DataError

    path = out / SWEEP_FILE if out.is_dir() else out
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError("no sweep.json here; pass the --out directory of a sweep", file=str(path)) from None
    except json.JSONDecodeError as e:
        raise DataError(f"invalid JSON: {e.msg} (line {e.lineno})", file=str(path)) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("models"), list) or not doc["models"]:
        raise DataError('expected {"models": [...]} with at least one row', file=str(path))
    return doc


def _domain_order(rows: list[dict[str, Any]]) -> list[str]:
    """The domains of any row, in RM-Bench's order (chat, math, code, safety), others after."""
    from rmbench_fast.records import METRIC_DOMAINS

    seen = {d for r in rows for d in r["domains"]}
    return [d for d in METRIC_DOMAINS if d in seen] + sorted(seen - set(METRIC_DOMAINS))


def _checkpoint_label(row: dict[str, Any]) -> str:
    """ORG/NAME@sha7 for a hub id (two revisions of one repo stay apart), else the directory name."""
    ref = row.get("model_ref")
    if ref:
        repo, _, sha = str(ref).partition("@")
        return f"{repo}@{sha[:7]}"
    model = str(row["model"])
    return Path(model).name or model


def print_sweep(rows: list[dict[str, Any]], console: Any) -> None:
    """One line per model: overall ± the larger half of its 95% interval, hard / normal / easy,
    and each domain's score (percent)."""
    from rich.table import Table

    domains = _domain_order(rows)
    table = Table(title="RM-Bench sweep", caption="± : 95% interval, larger side (sweep.json has lo, hi)")
    table.add_column("model", overflow="fold")
    for col in ("overall", "hard", "normal", "easy", *domains):
        table.add_column(col, justify="right", no_wrap=True)
    for r in rows:
        t = r["total"]
        ci = (t.get("ci") or {}).get("overall")
        half = f" ±{100 * max(ci['hi'] - t['overall'], t['overall'] - ci['lo']):.1f}" if ci else ""
        cells = [f"{100 * t['overall']:.1f}{half}"] + [
            f"{100 * t[k]:.1f}" for k in ("hard", "normal", "easy")
        ]
        cells += [f"{100 * r['domains'][d]['score']:.1f}" if d in r["domains"] else "-" for d in domains]
        table.add_row(_checkpoint_label(r), *cells)
    console.print(table)


def sweep_figure(rows: list[dict[str, Any]], title: str | None = None) -> Any:
    """Accuracy against checkpoint (in sweep order) with 95% interval bands, as a Figure.

    Panels: overall; the totals' hard / normal / easy; then each domain's score. x = position
    of the checkpoint in the sweep (labels: directory names); y = accuracy (%); the band is
    [ci.lo, ci.hi] where the rows have intervals.
    """
    import numpy as np

    from rmbench_fast.results.report import import_pyplot

    plt = import_pyplot()
    x = np.arange(len(rows))
    labels = [_checkpoint_label(r) for r in rows]
    domains = _domain_order(rows)
    panels: list[tuple[str, list[tuple[str, str, str | None]]]] = [
        ("overall", [("overall", "total", "overall")]),
        ("hard / normal / easy (total)", [(k, "total", k) for k in ("hard", "normal", "easy")]),
    ] + [(f"{d} score", [(d, d, "score")]) for d in domains]
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(4.2 * ncols, 3.3 * nrows), sharex=True, squeeze=False, layout="constrained"
    )
    colors = {
        "overall": "black",
        "hard": "tab:red",
        "normal": "tab:blue",
        "easy": "tab:green",
        "chat": "tab:purple",
        "math": "tab:brown",
        "code": "tab:cyan",
        "safety": "tab:olive",
    }

    def series(where: str, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        y, lo, hi = (np.full(len(rows), np.nan) for _ in range(3))
        for i, r in enumerate(rows):
            m = r["total"] if where == "total" else r["domains"].get(where)
            if m is None:
                continue
            y[i] = 100 * m[key]
            ci = (m.get("ci") or {}).get(key)
            if ci:
                lo[i], hi[i] = 100 * ci["lo"], 100 * ci["hi"]
        return y, lo, hi

    for ax, (name, lines) in zip(axes.flat, panels):
        for label, where, key in lines:
            y, lo, hi = series(where, key)
            color = colors.get(label, "tab:gray")
            ax.plot(x, y, marker="o", ms=4, color=color, label=label)
            if np.isfinite(lo).any():
                ax.fill_between(x, lo, hi, color=color, alpha=0.18, linewidth=0)
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
        if len(lines) > 1:
            ax.legend(fontsize=8, loc="best")
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy (%)")
    for ax in axes[-1, :]:
        ax.set_xlabel("checkpoint (sweep order)")
    for ax in axes.flat:
        ax.set_xticks(
            x, labels, rotation=30 if len(rows) > 3 or max(map(len, labels)) > 10 else 0, ha="right"
        )
        ax.tick_params(axis="x", labelbottom=True, labelsize=8)
    cis = [(r["total"].get("ci") or {}).get("overall") for r in rows]
    ci = next((c for c in cis if c), None)
    band = (
        f"bands: 95% bootstrap intervals ({ci['resamples']} resamples, seed {ci['seed']})"
        if ci
        else "no intervals"
    )
    # wrapped to the figure's width (≈ 30 characters per panel column at this size), so nothing is cut
    head = textwrap.fill(title or "RM-Bench sweep", width=30 * ncols)
    fig.suptitle(f"{head}\naccuracy by checkpoint, in sweep order; {band}", fontsize=10)
    return fig


def plot_sweep(doc: dict[str, Any], out_dir: Path, title: str | None = None) -> Path:
    """Write OUT/sweep_plot.png (see sweep_figure); returns its path."""
    from rmbench_fast.results.report import import_pyplot

    plt = import_pyplot()
    fig = sweep_figure(doc["models"], title)
    path = out_dir / "sweep_plot.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
