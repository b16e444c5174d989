"""Outputs of a run: scores.json (RM-Bench result format), metrics.json, terminal tables, plots."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError
from .types import N_STYLES, STYLES, Record

SCORES_FILE = "scores.json"
METRICS_FILE = "metrics.json"


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON through a temp file + rename, so an interrupted run never leaves a torn file
    and never clobbers the previous good one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=1, ensure_ascii=False)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


def print_report(metrics: dict[str, Any], console: Any | None = None) -> None:
    """The 3x3 matrices and accuracies as rich tables."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    short = ["concise", "detailed", "markdown"]
    for name, d in metrics["domains"].items():
        t = Table(title=f"{name} (n={d['n']}): rows chosen, cols rejected", title_justify="left")
        t.add_column("")
        for s in short:
            t.add_column(s, justify="right")
        for i, row in enumerate(d["matrix"]):
            t.add_row(short[i], *[f"{100 * x:.1f}" for x in row])
        console.print(t)
        console.print(
            f"  hard {100 * d['hard']:.2f}   normal {100 * d['normal']:.2f}   easy {100 * d['easy']:.2f}"
            f"   [bold]score {100 * d['score']:.2f}[/bold]\n"
        )
    total = metrics["total"]
    t = Table(title="RM-Bench accuracy (%)", title_justify="left")
    for col in ("domain", "hard", "normal", "easy", "score"):
        t.add_column(col, justify="right" if col != "domain" else "left")
    for name, d in metrics["domains"].items():
        t.add_row(name, *[f"{100 * d[k]:.2f}" for k in ("hard", "normal", "easy", "score")])
    label = "total" if total.get("complete") else f"total ({'+'.join(total['domains'])} only)"
    t.add_row(
        f"[bold]{label}[/bold]",
        *[f"[bold]{100 * total[k]:.2f}[/bold]" for k in ("hard", "normal", "easy", "overall")],
    )
    console.print(t)
    if not total.get("complete"):
        console.print(
            f"[yellow]note:[/yellow] the total covers {', '.join(total['domains'])}; missing "
            f"{', '.join(total['missing_domains'])}, so it is not comparable with the full leaderboard."
        )


def plot_matrices(metrics: dict[str, Any], out_dir: Path) -> list[Path]:
    """One PNG heatmap per domain; returns the paths written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise DataError("--plot needs matplotlib: pip install matplotlib") from None
    paths = []
    for name, d in metrics["domains"].items():
        m = np.asarray(d["matrix"]) * 100
        fig, ax = plt.subplots(figsize=(4.2, 3.6))
        im = ax.imshow(m, vmin=0, vmax=100, cmap="viridis")
        ax.set_xticks(range(N_STYLES), STYLES, rotation=20)
        ax.set_yticks(range(N_STYLES), STYLES)
        ax.set_xlabel("rejected style")
        ax.set_ylabel("chosen style")
        for i in range(N_STYLES):
            for j in range(N_STYLES):
                ax.text(j, i, f"{m[i, j]:.1f}", ha="center", va="center", color="w" if m[i, j] < 60 else "k")
        ax.set_title(
            f"{name}: hard {100 * d['hard']:.1f} / normal {100 * d['normal']:.1f} / easy {100 * d['easy']:.1f}"
        )
        fig.colorbar(im, ax=ax)
        fig.tight_layout()
        path = out_dir / f"matrix_{name}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths
