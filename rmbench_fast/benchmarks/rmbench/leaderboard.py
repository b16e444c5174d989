"""`python -m rmbench_fast report RUN --leaderboard`: place a run among published RM-Bench results.

The published table ships as package data (`leaderboard.json`): each row is one model as the
public leaderboard lists it (THU-KEG/RM-Bench-Leaderboard, README.md, at a pinned commit), with
its source and the date it was read. Scores are percentages rounded to 0.1 as published.

Placement key:
- a run with all four domains: `overall` (mean of the domain scores), against every row;
- otherwise the mean of the domain scores the run has, x = mean_{d ∈ D} score_d, against the
  rows that publish all of D (their key is the mean of their published D scores), saying so.

rank = 1 + #{rows with key > x}. Where the run's 95% interval [lo, hi] (metrics.json
total.ci.overall, which covers exactly the run's domains) contains a published key, the order
between the run and that model is not resolved by this run's data (the published scores carry
their own sampling error too, which is not included).
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib.resources import files
from typing import Any

from rmbench_fast.errors import DataError

DOMAINS = ("chat", "math", "code", "safety")
# Records per domain in the official total_dataset.json (safety = safety-refuse 284 + safety-response 157).
OFFICIAL_COUNTS = {"chat": 129, "math": 529, "code": 228, "safety": 441}
WINDOW = 4  # published rows shown on each side of the run


@lru_cache(maxsize=1)
def load_leaderboard() -> dict[str, Any]:
    """The shipped table: {"about", "source": {...}, "rows": [{model, type, chat, math, code,
    safety, easy, normal, hard, overall, license, reported_in, source, date_read, ...}]}."""
    return json.loads(
        (files("rmbench_fast.benchmarks.rmbench") / "leaderboard.json").read_text(encoding="utf-8")
    )


def ordinal(n: int) -> str:
    """1 -> '1st', 2 -> '2nd', 11 -> '11th', 23 -> '23rd'."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def place(metrics: dict[str, Any], board: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run's placement among the published rows.

    Returns {"by": "overall" or "mean of <domains>", "complete", "domains", "missing",
    "run": the run's domain scores and hard/normal/easy (percent), "value" (percent), "ci": [lo, hi] percent or None, "rank", "of", "above"/"below" (the
    neighbouring rows or None), "unresolved": [rows whose key lies in the interval],
    "subset_notes": [domains scored on fewer records than the official set], "ranked": [rows
    with their "key", best first, the run not included], "source"}.
    """
    board = board or load_leaderboard()
    doms = metrics.get("domains") or {}
    have = [d for d in DOMAINS if d in doms]
    if not have:
        raise DataError(f"the run has none of RM-Bench's domains ({', '.join(DOMAINS)}); nothing to place")
    complete = len(have) == len(DOMAINS)
    total = metrics["total"]
    total_ci = (total.get("ci") or {}).get("overall")
    covers = list(total.get("domains") or []) == have
    if complete:
        by = "overall"
        value = 100 * total["overall"]
        rows = [dict(r, key=r["overall"]) for r in board["rows"] if r.get("overall") is not None]
    else:
        by = "mean of " + ", ".join(have)
        value = 100 * sum(doms[d]["score"] for d in have) / len(have)
        rows = [
            dict(r, key=sum(r[d] for d in have) / len(have))
            for r in board["rows"]
            if all(r.get(d) is not None for d in have)
        ]
    ci = [100 * total_ci["lo"], 100 * total_ci["hi"]] if total_ci and covers else None
    ranked = sorted(rows, key=lambda r: -r["key"])
    above = [r for r in ranked if r["key"] > value]
    below = [r for r in ranked if r["key"] <= value]
    unresolved = [r for r in ranked if ci is not None and ci[0] <= r["key"] <= ci[1]]
    subset = [
        f"{d}: {doms[d]['n']} of {OFFICIAL_COUNTS[d]} records"
        for d in have
        if doms[d].get("n") is not None and doms[d]["n"] != OFFICIAL_COUNTS[d]
    ]
    run_row = {d: 100 * doms[d]["score"] for d in have} | {
        k: 100 * total[k] for k in ("hard", "normal", "easy")
    }
    return {
        "by": by,
        "complete": complete,
        "run": run_row,
        "domains": have,
        "missing": [d for d in DOMAINS if d not in have],
        "value": value,
        "ci": ci,
        "rank": len(above) + 1,
        "of": len(ranked),
        "above": above[-1] if above else None,
        "below": below[0] if below else None,
        "unresolved": unresolved,
        "subset_notes": subset,
        "ranked": ranked,
        "source": board["source"],
    }


def placement_lines(p: dict[str, Any]) -> list[str]:
    """The placement in words (plain text, one finding per line)."""
    src = p["source"]
    cite = (
        f"{src['repository'].removeprefix('https://github.com/')} {src['file']} at {src['commit'][:7]} "
        f"(committed {src['commit_date']}, read {src['date_read']})"
    )
    ci = f" [{p['ci'][0]:.1f}, {p['ci'][1]:.1f}]" if p["ci"] else ""
    lines = []
    if p["complete"]:
        lines.append(
            f"By overall, the run's {p['value']:.1f}{ci} places {ordinal(p['rank'])} of {p['of'] + 1} "
            f"(the run and {p['of']} published models; {cite})."
        )
    else:
        lines.append(
            f"The run covers {', '.join(p['domains'])} only (no {', '.join(p['missing'])}): it is placed by the "
            f"mean of those domains' scores, not by the leaderboard's overall, among the {p['of']} published "
            f"models that report all of them."
        )
        lines.append(
            f"By that mean, the run's {p['value']:.1f}{ci} places {ordinal(p['rank'])} of {p['of'] + 1} ({cite})."
        )
    if p["subset_notes"]:
        lines.append(
            "Scored on a subset of RM-Bench ("
            + "; ".join(p["subset_notes"])
            + "), so the placement is indicative "
            "only: the published scores use every record."
        )
    if p["ci"] is None:
        lines.append(
            "No interval in metrics.json (a run with --resamples 0, or an older run): the order is unchecked."
        )
    elif p["unresolved"]:
        ranks = [p["ranked"].index(r) + 1 for r in p["unresolved"]]
        names = ", ".join(f"{r['model']} {r['key']:.1f}" for r in p["unresolved"][:6])
        more = f" and {len(p['unresolved']) - 6} more" if len(p["unresolved"]) > 6 else ""
        lines.append(
            f"The order is not resolved: the run's 95% interval contains the published score of "
            f"{len(p['unresolved'])} model(s) (published ranks {min(ranks)}–{max(ranks)}: {names}{more})."
        )
    else:
        nb = [f"{r['model']} {r['key']:.1f}" for r in (p["above"], p["below"]) if r is not None]
        lines.append(
            f"The order is resolved against the neighbours ({'; '.join(nb)}): no published score lies in the "
            "run's 95% interval (the published scores' own sampling error is not included)."
        )
    return lines


def print_placement(p: dict[str, Any], console: Any) -> None:
    """The neighbourhood of the run in the published table (the key and the domains it is the
    mean of), then the placement in words."""
    from rich.markup import escape  # start-up cost: rich
    from rich.table import Table  # start-up cost: rich

    key_col = "overall" if p["complete"] else "mean"
    t = Table(title=f"RM-Bench leaderboard placement (by {p['by']})", title_justify="left")
    t.add_column("#", justify="right")
    t.add_column("", width=1)
    t.add_column("model", overflow="fold", ratio=1)
    for col in (key_col, *p["domains"]):
        t.add_column(col, justify="right", no_wrap=True)
    ranked = p["ranked"]
    pos = p["rank"] - 1  # the run sits before ranked[pos]
    lo, hi = max(0, pos - WINDOW), min(len(ranked), pos + WINDOW)
    unresolved = {id(r) for r in p["unresolved"]}

    def num(v: Any) -> str:
        return "-" if v is None else f"{v:.1f}"

    def row(i: int, r: dict[str, Any]) -> None:
        mark = "~" if id(r) in unresolved else ""
        rank = str(i + 1 if i < pos else i + 2)
        t.add_row(rank, mark, escape(r["model"]), f"{r['key']:.1f}", *[num(r.get(d)) for d in p["domains"]])

    for i in range(lo, pos):
        row(i, ranked[i])
    t.add_row(
        str(p["rank"]),
        "▶",
        "this run" + (f" [{p['ci'][0]:.1f}, {p['ci'][1]:.1f}]" if p["ci"] else ""),
        f"{p['value']:.1f}",
        *[num(p["run"].get(d)) for d in p["domains"]],
        style="bold",
    )
    for i in range(pos, hi):
        row(i, ranked[i])
    console.print(t)
    if p["unresolved"]:
        console.print("~ : published score inside the run's 95% interval [lo, hi] (order not resolved)")
    for line in placement_lines(p):
        console.print(escape(line))
