"""RewardBench 2 outputs: scores.json rows and the per-subset table.

scores.json: one row per prompt, {"id", "subset", "num_correct", "scores" [N] (chosen first,
null for a non-finite score), "credit"} in file order. metrics.json: `compute_metrics`' "subsets"
and "overall" plus the run's "meta".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from rmbench_fast.benchmarks.rewardbench2.data import TIES, Prompt


def score_rows(
    prompts: Sequence[Prompt], scores: np.ndarray, credits: Sequence[float]
) -> list[dict[str, Any]]:
    """scores.json's rows (module docstring)."""
    rows = []
    for p, s, c in zip(prompts, np.asarray(scores, dtype=np.float64), credits):
        vals = [float(x) if math.isfinite(x) else None for x in s[: len(p.completions)]]
        rows.append(
            {"id": p.id, "subset": p.subset, "num_correct": p.num_correct, "scores": vals, "credit": c}
        )
    return rows


def _pct(x: float) -> str:
    return "nan" if not math.isfinite(x) else f"{100 * x:.1f}"


def _ci(entry: dict[str, Any]) -> str:
    ci = entry.get("ci")
    return "" if not ci else f"[{_pct(ci['lo'])}, {_pct(ci['hi'])}]"


def table_rows(result: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(subset, prompts, score %, 95% interval %) per subset, then the overall row."""
    out = []
    for name, e in result["subsets"].items():
        out.append((name, str(e["n_prompts"]), _pct(e["score"]), _ci(e)))
    ov = result["overall"]
    out.append((f"Overall (mean of {ov['n_subsets']})", "", _pct(ov["score"]), _ci(ov)))
    return out


def print_report(result: dict[str, Any], console: Any) -> None:
    """The per-subset table, and the Ties components under it."""
    from rich.table import Table  # start-up cost: rich loads only when a report is printed

    t = Table(title="RewardBench 2")
    for col in ("subset", "prompts", "score", "95% CI"):
        t.add_column(col, justify="left" if col == "subset" else "right")
    for row in table_rows(result):
        t.add_row(*row)
    console.print(t)
    ties = result["subsets"].get(TIES)
    if ties is not None:
        console.print(
            f"Ties: tied acc {_pct(ties['tied_accuracy'])}, ref acc {_pct(ties['ref_accuracy'])}, "
            f"correctness preferred {_pct(ties['correctness_preferred'])} (hard "
            f"{_pct(ties['correctness_preferred_hard'])}), margin term {ties['margin']:.4f}; "
            f"{ties['n_pairs']} ref/tied pairs, {ties['dcm_zero']} with equal correct scores"
        )
