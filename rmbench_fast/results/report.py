"""Outputs of a run: scores.json (RM-Bench result format), metrics.json, terminal tables, plots."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rmbench_fast.errors import DataError, UsageError
from rmbench_fast.inputs.hub import source_label
from rmbench_fast.records import N_STYLES, Record
from rmbench_fast.utils.atomic import write_json_atomic

SCORES_FILE = "scores.json"
METRICS_FILE = "metrics.json"


def check_out_dir(out_dir: Path) -> None:
    """Make sure the outputs can be written to `out_dir` (created if missing), before any scoring:
    a temporary file is created in it and removed. UsageError (one line, exit 2) if not."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".rmbench-write-check.", suffix=".tmp")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        why = e.strerror or type(e).__name__
        raise UsageError(f"--out {out_dir}: cannot write the outputs there ({why})") from None


def input_labels(meta: dict[str, Any]) -> list[str]:
    """`model ORG/NAME@sha7`-style lines for the inputs that came from the hub (metrics.json meta)."""
    out = []
    for key, name in (("model_source", "model"), ("ref_model_source", "reference")):
        label = source_label(meta.get(key))
        if label:
            out.append(f"{name} {label} (revision {meta[key].get('revision')})")
    label = source_label((meta.get("data") or {}).get("source"))
    if label:
        out.append(f"data {label} (revision {meta['data']['source'].get('revision')})")
    return out


def score_rows(records: Sequence[Record], scores: np.ndarray) -> list[dict[str, Any]]:
    """The official result format: each input record plus `score_chosen` / `score_rejected`
    (three floats each, style order), and `domain` when the input had none."""
    rows = []
    for rec, s in zip(records, np.asarray(scores, dtype=np.float64)):
        row = dict(rec.raw)
        row.setdefault("domain", rec.domain)
        row["score_chosen"] = [float(x) for x in s[:N_STYLES]]
        row["score_rejected"] = [float(x) for x in s[N_STYLES:]]
        rows.append(row)
    return rows


def write_outputs(out_dir: Path, rows: list[dict[str, Any]], metrics: dict[str, Any]) -> None:
    write_json_atomic(out_dir / SCORES_FILE, rows)
    write_json_atomic(out_dir / METRICS_FILE, metrics)


def read_metrics(out_dir: Path) -> dict[str, Any]:
    path = out_dir / METRICS_FILE if out_dir.is_dir() else out_dir
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError("no metrics.json here; pass the --out directory of a run", file=str(path)) from None
    except json.JSONDecodeError as e:
        raise DataError(f"invalid JSON: {e.msg} (line {e.lineno})", file=str(path)) from None


SHORT_STYLES = ("concise", "detailed", "markdown")  # STYLES without the "detailed_" prefixes


def interval(ci: dict[str, Any]) -> str:
    """`[58.1, 64.3]`: an interval record (fractions) in percent."""
    return f"[{100 * ci['lo']:.1f}, {100 * ci['hi']:.1f}]"


def fmt_pct(value: float, ci: dict[str, Any] | None = None, digits: int = 2) -> str:
    """`61.24 [58.1, 64.3]`: a fraction as percent, with its interval (percent, 1 decimal) if any."""
    text = f"{100 * value:.{digits}f}"
    return f"{text} {interval(ci)}" if ci else text


def ci_note(metrics: dict[str, Any]) -> str | None:
    """One line saying what the bracketed intervals are, or None when the run has none."""
    ci = (metrics.get("total", {}).get("ci") or {}).get("overall")
    if not ci:
        return None
    return (
        f"[lo, hi] = {100 * ci.get('level', 0.95):.0f}% {ci['method']} CI "
        f"({ci['resamples']} record resamples per domain, seed {ci['seed']})"
    )


def print_report(metrics: dict[str, Any], console: Any | None = None) -> None:
    """The 3x3 matrices and accuracies as rich tables, with intervals where metrics.json has them."""
    from rich.console import Console  # start-up cost: rich
    from rich.markup import escape  # start-up cost: rich
    from rich.table import Table  # start-up cost: rich

    console = console or Console()
    for name, d in metrics["domains"].items():
        t = Table(title=f"{name} (n={d['n']}): rows chosen, cols rejected", title_justify="left")
        t.add_column("")
        for s in SHORT_STYLES:
            t.add_column(s, justify="right")
        for i, row in enumerate(d["matrix"]):
            t.add_row(SHORT_STYLES[i], *[f"{100 * x:.1f}" for x in row])
        console.print(t)
        ci = d.get("ci") or {}
        parts = [f"{k} {escape(fmt_pct(d[k], ci.get(k)))}" for k in ("hard", "normal", "easy")]
        console.print("  " + "  ".join(parts))
        console.print(f"  [bold]score {escape(fmt_pct(d['score'], ci.get('score')))}[/bold]\n")
    total = metrics["total"]
    t = Table(title="RM-Bench accuracy (%)", title_justify="left")
    for col in ("domain", "hard", "normal", "easy", "score"):
        t.add_column(col, justify="right" if col != "domain" else "left")

    def cell(value: float, ci: dict[str, Any] | None) -> str:
        # the interval on a second line keeps the table inside 80 columns
        return f"{100 * value:.2f}" + (f"\n[dim]{escape(interval(ci))}[/dim]" if ci else "")

    for name, d in metrics["domains"].items():
        ci = d.get("ci") or {}
        t.add_row(name, *[cell(d[k], ci.get(k)) for k in ("hard", "normal", "easy", "score")])
    label = "total" if total.get("complete") else f"total\n(no {', '.join(total['missing_domains'])})"
    tci = total.get("ci") or {}
    t.add_row(
        f"[bold]{label}[/bold]",
        *[f"[bold]{cell(total[k], tci.get(k))}[/bold]" for k in ("hard", "normal", "easy", "overall")],
    )
    console.print(t)
    labels = input_labels(metrics.get("meta") or {})
    if labels:
        console.print(escape("; ".join(labels)))
    note = ci_note(metrics)
    if note:
        console.print(escape(note))
    settings = (metrics.get("meta") or {}).get("settings") or {}
    if settings.get("official") is False:
        console.print(
            f"[yellow]note:[/yellow] truncation differs from the official scripts' (max length "
            f"{settings.get('max_length')}, prompt {settings.get('max_prompt_length')}; official 2048 and 128): "
            "not leaderboard-comparable."
        )
    if not total.get("complete"):
        console.print(
            f"[yellow]note:[/yellow] the total covers {', '.join(total['domains'])}; missing "
            f"{', '.join(total['missing_domains'])}, so it is not comparable with the full leaderboard."
        )


def import_pyplot() -> Any:
    try:
        import matplotlib  # optional dependency: matplotlib (the [plot] extra)

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # optional dependency: matplotlib (the [plot] extra)
    except ImportError:
        raise DataError("--plot needs matplotlib: pip install matplotlib") from None
    return plt


def matrix_figure(name: str, d: dict[str, Any]) -> Any:
    """The heatmap of one domain's matrix as a matplotlib Figure (the caller saves and closes it).

    Constrained layout (nothing overlaps or is cut), short style names, and the accuracies (with
    their intervals when metrics.json has them) in a two-line figure title.
    """
    plt = import_pyplot()
    m = np.asarray(d["matrix"]) * 100
    fig, ax = plt.subplots(figsize=(6.0, 4.9), layout="constrained")
    im = ax.imshow(m, vmin=0, vmax=100, cmap="viridis")
    ax.set_xticks(range(N_STYLES), SHORT_STYLES)
    ax.set_yticks(range(N_STYLES), SHORT_STYLES)
    ax.set_xlabel("rejected response style")
    ax.set_ylabel("chosen response style")
    for i in range(N_STYLES):
        for j in range(N_STYLES):
            ax.text(j, i, f"{m[i, j]:.1f}", ha="center", va="center", color="w" if m[i, j] < 60 else "k")
    ci = d.get("ci") or {}
    parts = [f"{k} {fmt_pct(d[k], ci.get(k), 1)}" for k in ("hard", "normal", "easy")]
    acc = "  ·  ".join(parts)
    if len(acc) > 66:  # three-digit figures and bounds: a line would overrun the figure's width
        acc = "  ·  ".join(parts[:2]) + "\n" + parts[2]
    # a figure-level title: constrained layout reserves its height over the axes and the colorbar
    fig.suptitle(f"{name} (n={d['n']}): score {fmt_pct(d['score'], ci.get('score'), 1)}\n{acc}", fontsize=9.5)
    cbar = fig.colorbar(im, ax=ax, shrink=0.85)
    cbar.set_label("chosen beats rejected (%)")
    return fig


def plot_matrices(metrics: dict[str, Any], out_dir: Path) -> list[Path]:
    """One PNG heatmap per domain (OUT/matrix_<domain>.png, see matrix_figure); returns the paths."""
    plt = import_pyplot()
    paths = []
    for name, d in metrics["domains"].items():
        fig = matrix_figure(name, d)
        path = out_dir / f"matrix_{name}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths
