"""`python -m rmbench_fast compare RUN_A RUN_B [RUN_C ...]`: paired comparison of finished runs.

The runs are paired record by record, so the comparison removes the variance that comes from
which records RM-Bench happens to contain (both runs saw the same ones). For runs A and B, per
domain d with N_d records and win counts v[n] = record_wins (stats.py, [N_d, 3], each 0..3):

    δ_n = v_B[n] - v_A[n]                      per-record paired difference, [N_d, 3]
    Δ_d = figures(Σ_n δ_n, N_d)                 difference of hard, normal, easy, score
    Δ_total = mean_d Δ_d                        overall (from the scores), hard, normal, easy

The 95% interval is a paired bootstrap (the same resampled records for both runs, within each
domain; totals from independent per-domain resamples), widened to contain Δ. The two-sided
`p_value` is a sign-flip test: T* = Σ_n s_n δ_n with s_n = ±1 uniform (per domain, and
T*_total = Σ_d T*_d / N_d for the totals), p = (1 + #{|T*| ≥ |T_obs|}) / (1 + R).

With more than two runs, the runs are ranked by overall and each adjacent pair is compared;
the adjacent pairs' overall p-values are Holm-corrected together, and a pair whose corrected
p-value is ≥ 0.05 is flagged as not significant (its order is not resolved).

Runs that were scored on different data (meta.data.sha256) or on different records (the
(domain, id) sets of scores.json) are refused with exit code 2 and one line.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rmbench_fast.errors import DataError, UsageError
from rmbench_fast.inputs.hub import source_label
from rmbench_fast.records import METRIC_DOMAINS, N_STYLES, domain_groups
from rmbench_fast.results.report import METRICS_FILE, SCORES_FILE, read_metrics
from rmbench_fast.results.stats import (
    BOOTSTRAP,
    LEVEL,
    RECORD_COLUMNS,
    SIGN_FLIP,
    TOTAL_KEYS,
    bootstrap_sums,
    ci_entry,
    figures,
    holm,
    p_value_two_sided,
    percentile_interval,
    record_wins,
    sign_flip_sums,
    stream,
)

ALPHA = 0.05
METHOD = "paired bootstrap"
TEST = "sign-flip (paired permutation)"
# A scores.json whose recomputed figures differ from its metrics.json by more than this is refused.
_CONSISTENCY_TOL = 1e-9

RecordKey = tuple[str, str, int]  # (record domain, id, occurrence of that (domain, id))


@dataclass
class RunData:
    """One finished run, its records in canonical (sorted key) order.

    keys: [N] record keys; domain_rows: metric domain -> row indices into keys (ascending);
    wins: [N, 3] int64 record_wins; metrics: metrics.json's content.
    """

    name: str
    path: Path
    metrics: dict[str, Any]
    keys: list[RecordKey]
    domain_rows: dict[str, np.ndarray]
    wins: np.ndarray

    @property
    def sha256(self) -> str | None:
        return ((self.metrics.get("meta") or {}).get("data") or {}).get("sha256")

    def domain_wins(self, domain: str) -> np.ndarray:
        return self.wins[self.domain_rows[domain]]


def _score_triple(row: dict[str, Any], field: str, path: Path, i: int) -> list[float]:
    v = row.get(field)
    rid = str(row.get("id"))
    if not isinstance(v, list) or len(v) != N_STYLES:
        raise DataError(
            f"expected a list of {N_STYLES} scores", file=str(path), record=i, record_id=rid, field=field
        )
    try:
        return [float(x) for x in v]
    except (TypeError, ValueError):
        raise DataError(
            "scores must be numbers", file=str(path), record=i, record_id=rid, field=field
        ) from None


def load_run(path: Path, name: str | None = None) -> RunData:
    """Read a run's --out directory (scores.json and metrics.json)."""
    if not path.is_dir():
        raise DataError("not a run directory; pass the --out directory of a run", file=str(path))
    metrics = read_metrics(path)
    scores_path = path / SCORES_FILE
    try:
        rows = json.loads(scores_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(
            "no scores.json here; pass the --out directory of a run", file=str(scores_path)
        ) from None
    except json.JSONDecodeError as e:
        raise DataError(f"invalid JSON: {e.msg} (line {e.lineno})", file=str(scores_path)) from None
    if not isinstance(rows, list) or not rows:
        raise DataError("expected a non-empty list of scored records", file=str(scores_path))
    seen: Counter[tuple[str, str]] = Counter()
    keyed: list[tuple[RecordKey, list[float]]] = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError("expected an object", file=str(scores_path), record=i)
        domain = row.get("domain")
        if not isinstance(domain, str):
            raise DataError(
                "missing domain",
                file=str(scores_path),
                record=i,
                record_id=str(row.get("id")),
                field="domain",
            )
        base = (domain, str(row.get("id")))
        key = (*base, seen[base])
        seen[base] += 1
        s = _score_triple(row, "score_chosen", scores_path, i) + _score_triple(
            row, "score_rejected", scores_path, i
        )
        keyed.append((key, s))
    keyed.sort(key=lambda t: t[0])
    keys = [k for k, _ in keyed]
    scores = np.array([s for _, s in keyed], dtype=np.float64)  # [N, 6]
    wins = record_wins(scores[:, :N_STYLES], scores[:, N_STYLES:])
    groups = domain_groups(k[0] for k in keys)
    run = RunData(
        name=name or path.name,
        path=path,
        metrics=metrics,
        keys=keys,
        domain_rows={d: np.asarray(g, dtype=np.int64) for d, g in groups.items()},
        wins=wins,
    )
    _check_consistent(run)
    return run


def _check_consistent(run: RunData) -> None:
    """The figures recomputed from scores.json must be metrics.json's (same run, untouched files)."""
    doms = run.metrics.get("domains")
    if not isinstance(doms, dict) or set(doms) != set(run.domain_rows):
        raise DataError(
            f"scores.json has domains {sorted(run.domain_rows)} but metrics.json has {sorted(doms or {})}",
            file=str(run.path / METRICS_FILE),
        )
    total = run.metrics.get("total")
    if not isinstance(total, dict) or not all(isinstance(total.get(k), (int, float)) for k in TOTAL_KEYS):
        raise DataError(
            f"metrics.json needs total.{{{', '.join(TOTAL_KEYS)}}}", file=str(run.path / METRICS_FILE)
        )
    for d, rows in run.domain_rows.items():
        got = figures(run.wins[rows].sum(axis=0), len(rows))
        for c, key in enumerate(RECORD_COLUMNS):
            want = doms[d].get(key)
            if not isinstance(want, (int, float)) or abs(got[c] - want) > _CONSISTENCY_TOL:
                raise DataError(
                    f"scores.json gives {d} {key} = {got[c]:.6f} but metrics.json says {want}; "
                    "the two files are not from the same run",
                    file=str(run.path / METRICS_FILE),
                )


def _short(sha: str | None) -> str:
    return "none" if sha is None else sha[:12]


def check_paired(a: RunData, b: RunData) -> None:
    """Refuse runs that cannot be paired: different data hash or different record ids."""
    if a.sha256 is not None and b.sha256 is not None and a.sha256 != b.sha256:
        raise DataError(
            f"cannot pair {a.name} and {b.name}: scored on different data "
            f"(meta.data.sha256 {_short(a.sha256)}… vs {_short(b.sha256)}…)"
        )
    if a.keys != b.keys:
        only_a = sorted(set(a.keys) - set(b.keys))
        only_b = sorted(set(b.keys) - set(a.keys))

        def first(ks: list[RecordKey]) -> str:
            return f" (first: {ks[0][0]} id {ks[0][1]})" if ks else ""

        raise DataError(
            f"cannot pair {a.name} and {b.name}: different records: {len(only_a)} only in {a.name}{first(only_a)}, "
            f"{len(only_b)} only in {b.name}{first(only_b)}"
        )


def _entry(
    a: float, b: float, diff: float, boot: np.ndarray, p: float, resamples: int, seed: int
) -> dict[str, Any]:
    lo, hi = percentile_interval(boot, diff)
    return {"a": a, "b": b, "diff": diff, "ci": ci_entry(lo, hi, resamples, seed, METHOD), "p_value": p}


def paired_comparison(a: RunData, b: RunData, *, resamples: int = 10000, seed: int = 0) -> dict[str, Any]:
    """B − A for every figure: {"a", "b", "domains": {d: {hard, normal, easy, score: entry}},
    "total": {overall, hard, normal, easy: entry}} with entry = {"a", "b", "diff", "ci", "p_value"}.

    "a"/"b" are the runs' own figures from metrics.json; "diff" is computed from the paired
    per-record win counts (it equals b − a up to float rounding).
    """
    if resamples < 1:
        raise UsageError(f"--resamples must be >= 1 for compare, got {resamples}")
    check_paired(a, b)
    out_domains: dict[str, dict[str, Any]] = {}
    boot_figs, flip_stats, obs_figs, obs_stats = [], [], [], []
    for d in a.domain_rows:
        delta = b.domain_wins(d) - a.domain_wins(d)  # [N_d, 3] in -3..3
        n = len(delta)
        # integer statistics for the test: columns hard, normal, easy, score (sum of the three)
        obs_sum = delta.sum(axis=0)
        obs_int = np.append(obs_sum, obs_sum.sum())
        flips = sign_flip_sums(delta, resamples, stream(seed, d, SIGN_FLIP))  # [R, 3]
        flips4 = np.concatenate([flips, flips.sum(axis=1, keepdims=True)], axis=1)
        boot = figures(bootstrap_sums(delta, resamples, stream(seed, d, BOOTSTRAP)), n)  # [R, 4]
        obs = figures(obs_sum, n)
        am, bm = a.metrics["domains"][d], b.metrics["domains"][d]
        out_domains[d] = {
            key: _entry(
                am[key],
                bm[key],
                float(obs[c]),
                boot[:, c],
                p_value_two_sided(flips4[:, c], float(obs_int[c]), atol=0.0),
                resamples,
                seed,
            )
            for c, key in enumerate(RECORD_COLUMNS)
        }
        boot_figs.append(boot)
        obs_figs.append(obs)
        flip_stats.append(flips4 / n)  # Σ_d T*_d / N_d for the totals (a positive multiple of Δ)
        obs_stats.append(obs_int / n)
    boot_total = np.mean(np.stack(boot_figs), axis=0)
    obs_total = np.mean(np.stack(obs_figs), axis=0)
    flip_total = np.sum(np.stack(flip_stats), axis=0)
    stat_total = np.sum(np.stack(obs_stats), axis=0)
    at, bt = a.metrics["total"], b.metrics["total"]
    total = {}
    for key, col in TOTAL_KEYS.items():
        c = RECORD_COLUMNS.index(col)
        total[key] = _entry(
            at[key],
            bt[key],
            float(obs_total[c]),
            boot_total[:, c],
            p_value_two_sided(flip_total[:, c], float(stat_total[c])),
            resamples,
            seed,
        )
    return {"a": a.name, "b": b.name, "domains": out_domains, "total": total}


def _unique_names(paths: Sequence[Path]) -> list[str]:
    names = [p.name or str(p) for p in paths]
    dup = {n for n in names if names.count(n) > 1}
    return [str(p) if n in dup else n for p, n in zip(paths, names)]


def model_label(meta: dict[str, Any]) -> str | None:
    """A run's model as compare prints it: ORG/NAME@sha7 for a hub id, else the directory."""
    return source_label(meta.get("model_source")) or meta.get("model")


def compare_runs(paths: Sequence[Path], *, resamples: int = 10000, seed: int = 0) -> dict[str, Any]:
    """compare's result (the --json content).

    {"runs": [{"name", "path", "model", "overall", "ci"}], "data": {"sha256", "n_records",
     "domains"}, "settings": {...}, "comparisons": [paired_comparison + "p_holm", "significant"],
     "ranking": [names by overall, best first] (more than two runs)}.
    Two runs: one comparison, B − A. More: adjacent pairs of the ranking, (higher) − (lower).
    """
    if len(paths) < 2:
        raise UsageError("compare needs at least two run directories")
    runs = [load_run(Path(p), n) for p, n in zip(paths, _unique_names([Path(p) for p in paths]))]
    for r in runs[1:]:
        check_paired(runs[0], r)
    if len(runs) == 2:
        pairs = [(runs[0], runs[1])]
        ranking = None
    else:
        ranked = sorted(runs, key=lambda r: -r.metrics["total"]["overall"])  # stable: ties keep input order
        pairs = [(ranked[k + 1], ranked[k]) for k in range(len(ranked) - 1)]
        ranking = [r.name for r in ranked]
    comparisons = [paired_comparison(a, b, resamples=resamples, seed=seed) for a, b in pairs]
    adjusted = holm([c["total"]["overall"]["p_value"] for c in comparisons])
    for c, p in zip(comparisons, adjusted):
        c["p_holm"] = p
        c["significant"] = p < ALPHA
    first = runs[0]
    out: dict[str, Any] = {
        "runs": [
            {
                "name": r.name,
                "path": str(r.path),
                "model": model_label(r.metrics.get("meta") or {}),
                "overall": r.metrics["total"]["overall"],
                "ci": (r.metrics["total"].get("ci") or {}).get("overall"),
            }
            for r in runs
        ],
        "data": {
            "sha256": first.sha256,
            "n_records": len(first.keys),
            "domains": {d: len(rows) for d, rows in first.domain_rows.items()},
            "complete": all(d in first.domain_rows for d in METRIC_DOMAINS),
        },
        "settings": {
            "level": LEVEL,
            "interval": METHOD,
            "test": TEST,
            "resamples": resamples,
            "seed": seed,
            "alpha": ALPHA,
            "correction": "holm over the overall p-values of the comparisons shown",
        },
        "comparisons": comparisons,
    }
    if ranking is not None:
        out["ranking"] = ranking
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _signed(x: float) -> str:
    v = round(100 * x, 1)
    return f"{v if v != 0 else 0.0:+.1f}"  # no "-0.0" from a rounding-level negative


def _p(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _ci(e: dict[str, Any]) -> str:
    return f"[{_signed(e['ci']['lo'])}, {_signed(e['ci']['hi'])}]"


def _p_eq(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def print_comparison(result: dict[str, Any], console: Any) -> None:
    """Two runs: every figure with B − A, its interval and p. More: the ranking table."""
    from rich.markup import escape  # start-up cost: rich
    from rich.table import Table  # start-up cost: rich

    comps = result["comparisons"]
    data = result["data"]
    settings = result["settings"]
    models = [f"{r['name']}: {r['model']}" for r in result["runs"] if r.get("model")]
    if models:
        console.print(escape("runs: " + "; ".join(models)), soft_wrap=True)
    scope = "" if data["complete"] else f" ({'+'.join(data['domains'])} only)"
    how = f"sign-flip test, {settings['resamples']} resamples, seed {settings['seed']}"
    if "ranking" not in result:
        c = comps[0]
        a, b = escape(c["a"]), escape(c["b"])
        t = Table(title=f"{b} − {a}, paired over {data['n_records']} records{scope}", title_justify="left")
        for col in ("", "", f"{a} %", f"{b} %", "Δ", "95% CI of Δ", "p"):
            t.add_column(col, justify="left" if col == "" else "right")
        for d, figs in c["domains"].items():
            for key, e in figs.items():
                t.add_row(
                    d if key == "hard" else "",
                    key,
                    _pct(e["a"]),
                    _pct(e["b"]),
                    _signed(e["diff"]),
                    _ci(e),
                    _p(e["p_value"]),
                )
            t.add_section()
        for key, e in c["total"].items():
            t.add_row(
                "total" if key == "overall" else "",
                key,
                _pct(e["a"]),
                _pct(e["b"]),
                _signed(e["diff"]),
                _ci(e),
                _p(e["p_value"]),
                style="bold" if key == "overall" else "",
            )
        console.print(t)
        o = c["total"]["overall"]
        verdict = "significant" if c["significant"] else "not significant"
        console.print(
            f"overall: {b} {_signed(o['diff'])} points vs {a}, {_p_eq(o['p_value'])} ({verdict} at {ALPHA}; {how})"
        )
        return
    by_name = {r["name"]: r for r in result["runs"]}
    below = {c["b"]: c for c in comps}  # each run's comparison with the run ranked just below it
    t = Table(
        title=f"Ranked by overall, paired over {data['n_records']} records{scope}", title_justify="left"
    )
    for col in ("#", "run", "overall % [95% CI]", "Δ to next [95% CI]", "p Holm", ""):
        t.add_column(col, justify="left" if col in ("run", "") else "right")
    flagged = False
    for k, name in enumerate(result["ranking"]):
        r = by_name[name]
        ci = f" [{_pct(r['ci']['lo'])}, {_pct(r['ci']['hi'])}]" if r.get("ci") else ""
        c = below.get(name)
        if c is None:
            t.add_row(str(k + 1), escape(name), _pct(r["overall"]) + ci, "", "", "")
            continue
        o = c["total"]["overall"]
        flagged |= not c["significant"]
        t.add_row(
            str(k + 1),
            escape(name),
            _pct(r["overall"]) + ci,
            f"{_signed(o['diff'])} {_ci(o)}",
            _p(c["p_holm"]),
            "" if c["significant"] else "[yellow]n.s.[/yellow]",
        )
    console.print(t)
    if flagged:
        console.print(
            f"n.s.: not significant at {ALPHA} after Holm correction: the order of that run and the next is "
            "not resolved."
        )
    console.print(
        f"Δ to next: the run minus the one ranked below it; p: {how}, on overall, Holm-corrected over the "
        f"{len(comps)} adjacent pairs."
    )
