"""Paired comparison of RewardBench 2 runs on the same prompts: differences, intervals, p-values.

For runs A (the first) and B, per subset the difference Δ = score_B - score_A:
- best-of-N subsets: Δ = mean_p δ_p with δ_p = credit_B(p) - credit_A(p). The paired bootstrap
  resamples prompts; the two-sided p-value is a sign-flip test, T*_b = mean_p s_bp δ_p with
  s = ±1 uniform (under H0 the two runs are exchangeable on each prompt);
- Ties: Δ = Ties(B) - Ties(A), the composite recomputed. The paired bootstrap resamples prompt
  ids (the same K[b, u] for both runs); the p-value is a paired permutation test that swaps the
  two runs' scores on each prompt id (its ref and tied prompts together) with probability 1/2
  and recomputes Δ, since the composite is not a mean of per-prompt terms.
- overall: Δ = mean over subsets of Δ_s; replicate b is the mean of the subsets' replicates b.
p = (1 + #{b : |T*_b| >= |Δ| - atol}) / (1 + R) (stats.p_value_two_sided); Holm over the
subsets of each pair. Identical runs give Δ = 0 and p = 1. Streams: stats.stream(seed, subset,
purpose), so a subset's numbers do not depend on the others.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rmbench_fast.benchmarks.rewardbench2.data import SUBSETS, TIES, Prompt
from rmbench_fast.benchmarks.rewardbench2.metrics import (
    best_of_n_credit,
    resample_counts,
    ties_components,
    ties_ids,
    ties_replicates,
    ties_table,
)
from rmbench_fast.errors import DataError
from rmbench_fast.results.stats import (
    BOOTSTRAP,
    SIGN_FLIP,
    ci_entry,
    holm,
    p_value_two_sided,
    percentile_interval,
    stream,
)


def load_run(path: Path) -> dict[str, Any]:
    """A rewardbench2 run directory (or its metrics.json): {"name", "path", "meta", "rows"}."""
    d = path if path.is_dir() else path.parent
    try:
        metrics = json.loads((d / "metrics.json").read_text(encoding="utf-8"))
        rows = json.loads((d / "scores.json").read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise DataError(
            "not a run directory (needs metrics.json and scores.json)", file=str(e.filename)
        ) from None
    except json.JSONDecodeError as e:
        raise DataError(f"invalid JSON: {e.msg}", file=str(d)) from None
    if (metrics.get("meta") or {}).get("benchmark") != "rewardbench2":
        raise DataError("not a rewardbench2 run (metrics.json meta.benchmark)", file=str(d / "metrics.json"))
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or not {"id", "subset", "num_correct", "scores"} <= set(r):
            raise DataError(
                "expected id, subset, num_correct and scores", file=str(d / "scores.json"), record=i
            )
    return {"name": d.name, "path": str(d), "meta": metrics["meta"], "rows": rows}


def _prompts(run: dict[str, Any]) -> tuple[list[Prompt], list[list[float]]]:
    """Minimal Prompt records (the scoring needs id, subset, num_correct, N) and score rows;
    a null score (non-finite) reads as NaN, which gets no credit."""
    ps, rows = [], []
    for i, r in enumerate(run["rows"]):
        n, k = len(r["scores"]), int(r["num_correct"])
        ps.append(Prompt(i, str(r["id"]), r["subset"], "", ("",) * k, ("",) * (n - k), run["path"]))
        rows.append([np.nan if x is None else float(x) for x in r["scores"]])
    return ps, rows


def _check_paired(a: dict[str, Any], b: dict[str, Any]) -> None:
    key = [(r["id"], r["subset"], r["num_correct"], len(r["scores"])) for r in a["rows"]]
    if key != [(r["id"], r["subset"], r["num_correct"], len(r["scores"])) for r in b["rows"]]:
        raise DataError(
            f"runs {a['name']} and {b['name']} scored different prompts (ids, subsets or completions differ)",
            file=b["path"],
        )
    sa, sb = a["meta"]["data"].get("sha256"), b["meta"]["data"].get("sha256")
    if sa != sb:
        raise DataError(
            f"runs {a['name']} and {b['name']} read different data (sha256 differs)", file=b["path"]
        )


def _credits(rows: Sequence[Sequence[float]]) -> np.ndarray:
    return np.array([best_of_n_credit(r) for r in rows])


def _entry(delta: float, boot: np.ndarray, null: np.ndarray, resamples: int, seed: int) -> dict[str, Any]:
    ok = boot[np.isfinite(boot)]
    ci = (
        ci_entry(*percentile_interval(ok, delta), resamples, seed) if len(ok) and np.isfinite(delta) else None
    )
    return {"delta": delta, "ci": ci, "p": p_value_two_sided(null[np.isfinite(null)], delta)}


def paired(a: dict[str, Any], b: dict[str, Any], *, resamples: int = 10000, seed: int = 0) -> dict[str, Any]:
    """Per subset and overall: {"a", "b", "delta", "ci", "p", "p_holm"} for B - A."""
    _check_paired(a, b)
    pa, ra = _prompts(a)
    _, rb = _prompts(b)
    ca, cb = _credits(ra), _credits(rb)
    out: dict[str, Any] = {}
    boots, nulls = [], []
    for name in SUBSETS:
        idx = [i for i, p in enumerate(pa) if p.subset == name]
        if not idx:
            continue
        if name == TIES:
            sub = [pa[i] for i in idx]
            xa, xb = [ra[i] for i in idx], [rb[i] for i in idx]
            va, vb = ties_components(sub, xa)["score"], ties_components(sub, xb)["score"]
            ids = ties_ids(sub)
            ta, tb = ties_table(sub, xa, ids), ties_table(sub, xb, ids)
            k = resample_counts(len(ids), resamples, stream(seed, name, BOOTSTRAP))
            boot = ties_replicates(tb, k) - ties_replicates(ta, k)
            swap = stream(seed, name, SIGN_FLIP).integers(0, 2, size=(resamples, len(ids))).astype(bool)
            ones = np.ones((resamples, len(ids)))
            null = ties_replicates(ta.select(tb, swap), ones) - ties_replicates(tb.select(ta, swap), ones)
        else:
            # sum / n in file order, as the subset score itself (metrics.compute_metrics)
            va = sum(float(ca[i]) for i in idx) / len(idx)
            vb = sum(float(cb[i]) for i in idx) / len(idx)
            d = cb[idx] - ca[idx]
            draws = stream(seed, name, BOOTSTRAP).integers(0, len(d), size=(resamples, len(d)))
            boot = d[draws].mean(axis=1)
            signs = stream(seed, name, SIGN_FLIP).integers(0, 2, size=(resamples, len(d))) * 2 - 1
            null = (signs * d).mean(axis=1)
        out[name] = {"a": va, "b": vb, **_entry(vb - va, boot, null, resamples, seed), "n_prompts": len(idx)}
        boots.append(boot)
        nulls.append(null)
    for name, p in zip(out, holm([e["p"] for e in out.values()])):
        out[name]["p_holm"] = p
    va = sum(e["a"] for e in out.values()) / len(out)
    vb = sum(e["b"] for e in out.values()) / len(out)
    overall = {
        "a": va,
        "b": vb,
        **_entry(vb - va, np.mean(boots, axis=0), np.mean(nulls, axis=0), resamples, seed),
    }
    return {"a": a["name"], "b": b["name"], "subsets": out, "overall": overall}


def compare_runs(paths: Sequence[Path], *, resamples: int = 10000, seed: int = 0) -> dict[str, Any]:
    """Every run against the first: {"benchmark", "baseline", "pairs": [paired(...)]}."""
    runs = [load_run(Path(p)) for p in paths]
    return {
        "benchmark": "rewardbench2",
        "baseline": runs[0]["name"],
        "resamples": resamples,
        "seed": seed,
        "pairs": [paired(runs[0], r, resamples=resamples, seed=seed) for r in runs[1:]],
    }


def print_comparison(result: dict[str, Any], console: Any) -> None:
    """One table per pair: subset, A, B, Δ with its 95% interval, p and Holm's p (percent points)."""
    from rich.table import Table  # start-up cost: rich loads only when a table is printed

    def pct(x: float) -> str:
        return "nan" if not np.isfinite(x) else f"{100 * x:.1f}"

    for pair in result["pairs"]:
        t = Table(title=f"RewardBench 2: {pair['b']} - {pair['a']}")
        for col in ("subset", pair["a"], pair["b"], "Δ", "95% CI", "p", "p (Holm)"):
            t.add_column(col, justify="left" if col == "subset" else "right")
        for name, e in [*pair["subsets"].items(), ("Overall", pair["overall"])]:
            ci = e["ci"]
            t.add_row(
                name,
                pct(e["a"]),
                pct(e["b"]),
                f"{100 * e['delta']:+.1f}" if np.isfinite(e["delta"]) else "nan",
                "" if ci is None else f"[{100 * ci['lo']:+.1f}, {100 * ci['hi']:+.1f}]",
                f"{e['p']:.3g}",
                f"{e['p_holm']:.3g}" if "p_holm" in e else "",
            )
        console.print(t)
