"""`python -m rmbench_fast sweep`: many reward models (checkpoints) on the same data, one process.

Every model directory is inspected before the first forward pass. The records are loaded and
validated once; tokenization runs once per distinct tokenizer + template; with a shared
reference model (DPO), its Σ log π_ref runs once for the whole sweep (see `EvalCache`). Each
model's scores.json / metrics.json land in OUT/NN-<name>/ as it finishes, and OUT/sweep.json
(one row per finished model) is rewritten after each, so a failure later in the sweep loses
nothing already computed.

`--benchmark rewardbench2` sweeps RewardBench 2 the same way (pipeline.rewardbench2's runs, one
EvalCache): a row then carries `benchmark`, the overall score and each subset's (`subsets`), each
with its interval, and the table and plot show those instead of hard / normal / easy.
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rmbench_fast.benchmarks import REWARDBENCH2, RM_BENCH
from rmbench_fast.benchmarks.rewardbench2.data import SUBSETS
from rmbench_fast.errors import DataError, UsageError
from rmbench_fast.inputs.modelio import inspect_model_dir
from rmbench_fast.pipeline import run_and_report
from rmbench_fast.pipeline.memo import EvalCache
from rmbench_fast.pipeline.models import check_kind, kind_hint, resolve_hub_models
from rmbench_fast.records import METRIC_DOMAINS
from rmbench_fast.results.report import check_out_dir, import_pyplot
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
    from rmbench_fast.inputs.format import Formatter  # start-up cost: jinja2

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


def rb2_summary_row(model: str, out_dir: Path, result: dict[str, Any]) -> dict[str, Any]:
    """One sweep.json row of a RewardBench 2 sweep: the overall score and each subset's, each
    with metrics.json's `ci` record ({lo, hi, resamples, seed}, or None)."""
    meta = result["meta"]
    return {
        "model": model,
        "model_ref": meta.get("model_ref"),
        "out": str(out_dir),
        "benchmark": REWARDBENCH2,
        "overall": {"score": result["overall"]["score"], "ci": result["overall"].get("ci")},
        "subsets": {k: {"score": v["score"], "ci": v.get("ci")} for k, v in result["subsets"].items()},
        "backend": meta["backend"],
        "seconds": meta["seconds"],
    }


def run_sweep(
    models: list[str],
    base: RunConfig,
    console: Any,
    *,
    benchmark: str = RM_BENCH,
    subsets: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Evaluate each model with `base`'s options on `benchmark`; returns sweep.json's rows."""
    # start-up cost: the RewardBench 2 pipeline loads only for a sweep that runs it
    from rmbench_fast.pipeline import rewardbench2 as rb2

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
        cfg = replace(base, model=model, out=str(out_dir))
        if benchmark == REWARDBENCH2:
            result = rb2.run_and_report(cfg, console, subsets=subsets, cache=cache, tables=False)
            rows.append(rb2_summary_row(model, out_dir, result))
        else:
            # sweep=True: the reference's sums come first, once, and are shared by every checkpoint.
            result = run_and_report(cfg, console, cache=cache, tables=False, sweep=True)
            rows.append(summary_row(model, out_dir, result))
        doc = {"benchmark": benchmark, "models": rows, "cache_reuses": dict(cache.hits)}
        write_json_atomic(out / SWEEP_FILE, doc)
    print_sweep(rows, console)
    console.print(f"wrote {out / SWEEP_FILE}")
    return rows


def read_sweep(out: Path) -> dict[str, Any]:
    """OUT/sweep.json's content ({"models": rows, ...}); exit 2 on a missing or bad file."""
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


def _is_rb2(rows: list[dict[str, Any]]) -> bool:
    return bool(rows) and rows[0].get("benchmark") == REWARDBENCH2


def _groups(row: dict[str, Any]) -> dict[str, Any]:
    """A row's per-group figures: RM-Bench's domains, or RewardBench 2's subsets."""
    return row["subsets"] if row.get("benchmark") == REWARDBENCH2 else row["domains"]


def _domain_order(rows: list[dict[str, Any]]) -> list[str]:
    """The domains (or subsets) of any row, in the benchmark's order, others after."""
    order = SUBSETS if _is_rb2(rows) else METRIC_DOMAINS
    seen = {d for r in rows for d in _groups(r)}
    return [d for d in order if d in seen] + sorted(seen - set(order))


def _metric(row: dict[str, Any], where: str, key: str) -> tuple[float, dict[str, Any] | None] | None:
    """(value, its 95% interval or None) of `key` in the row's total ("total") or one group;
    None when the row has no such group."""
    if row.get("benchmark") == REWARDBENCH2:
        m = row["overall"] if where == "total" else row["subsets"].get(where)
        return None if m is None else (m["score"], m.get("ci"))
    m = row["total"] if where == "total" else row["domains"].get(where)
    return None if m is None else (m[key], (m.get("ci") or {}).get(key))


def _plus_minus(value: float, ci: dict[str, Any] | None) -> str:
    return f" ±{100 * max(ci['hi'] - value, value - ci['lo']):.1f}" if ci else ""


def _checkpoint_label(row: dict[str, Any]) -> str:
    """ORG/NAME@sha7 for a hub id (two revisions of one repo stay apart), else the directory name."""
    ref = row.get("model_ref")
    if ref:
        repo, _, sha = str(ref).partition("@")
        return f"{repo}@{sha[:7]}"
    model = str(row["model"])
    return Path(model).name or model


def print_sweep(rows: list[dict[str, Any]], console: Any) -> None:
    """One line per model: overall ± the larger half of its 95% interval, hard / normal / easy
    (RM-Bench), and each domain's (or RewardBench 2 subset's) score, in percent."""
    from rich.table import Table  # start-up cost: rich

    rb2 = _is_rb2(rows)
    domains = _domain_order(rows)
    levels = () if rb2 else ("hard", "normal", "easy")
    title = "RewardBench 2 sweep" if rb2 else "RM-Bench sweep"
    table = Table(title=title, caption="± : 95% interval, larger side (sweep.json has lo, hi)")
    table.add_column("model", overflow="fold")
    for col in ("overall", *levels, *domains):
        table.add_column(col, justify="right", no_wrap=True)
    for r in rows:
        value, ci = _metric(r, "total", "overall")  # type: ignore[misc]
        cells = [f"{100 * value:.1f}{_plus_minus(value, ci)}"] + [
            f"{100 * r['total'][k]:.1f}" for k in levels
        ]
        cells += [f"{100 * _groups(r)[d]['score']:.1f}" if d in _groups(r) else "-" for d in domains]
        table.add_row(_checkpoint_label(r), *cells)
    console.print(table)


def sweep_figure(rows: list[dict[str, Any]], title: str | None = None) -> Any:
    """Accuracy against checkpoint (in sweep order) with 95% interval bands, as a Figure.

    Panels: overall; the totals' hard / normal / easy (RM-Bench); then each domain's (or
    RewardBench 2 subset's) score. x = position of the checkpoint in the sweep (labels: directory
    names); y = accuracy (%); the band is [ci.lo, ci.hi] where the rows have intervals.
    """
    plt = import_pyplot()
    x = np.arange(len(rows))
    labels = [_checkpoint_label(r) for r in rows]
    domains = _domain_order(rows)
    rb2 = _is_rb2(rows)
    panels: list[tuple[str, list[tuple[str, str, str]]]] = [("overall", [("overall", "total", "overall")])]
    if not rb2:
        panels.append(("hard / normal / easy (total)", [(k, "total", k) for k in ("hard", "normal", "easy")]))
    panels += [(f"{d} score", [(d, d, "score")]) for d in domains]
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
            found = _metric(r, where, key)
            if found is None:
                continue
            y[i] = 100 * found[0]
            ci = found[1]
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
    cis = [found[1] for r in rows if (found := _metric(r, "total", "overall")) is not None]
    ci = next((c for c in cis if c), None)
    band = (
        f"bands: 95% bootstrap intervals ({ci['resamples']} resamples, seed {ci['seed']})"
        if ci
        else "no intervals"
    )
    # wrapped to the figure's width (≈ 30 characters per panel column at this size), so nothing is cut
    head = textwrap.fill(title or ("RewardBench 2 sweep" if rb2 else "RM-Bench sweep"), width=30 * ncols)
    fig.suptitle(f"{head}\naccuracy by checkpoint, in sweep order; {band}", fontsize=10)
    return fig


def plot_sweep(doc: dict[str, Any], out_dir: Path, title: str | None = None) -> Path:
    """Write OUT/sweep_plot.png (see sweep_figure); returns its path."""
    plt = import_pyplot()
    fig = sweep_figure(doc["models"], title)
    path = out_dir / "sweep_plot.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
