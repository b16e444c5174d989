"""Write a RewardBench 2-shaped file from real RM-Bench texts, for timing the RB2 path on real lengths.

    python bench/rb2_from_rmbench.py --data ../shared/data/rm-bench --per-domain 16 --out /tmp/rb2-rmbench.json

The real RewardBench 2 data is not in this sandbox. This builds prompts of its shapes from the
shared RM-Bench files (the texts stay outside the project: write the file to /tmp): per RM-Bench
record, a best-of-4 prompt (chosen = its concise chosen answer, rejected = its three rejected
answers) in a subset named after the domain (chat -> Focus, code -> Precise IF, safety -> Safety,
math -> Math), and for every second record a Ties pair: `ref:k` (one correct answer, the three
rejected) and `tied:k` (its three chosen answers correct, the three rejected). Scores on it mean
nothing; tokens and seconds do.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

SUBSET = {
    "chat": "Focus",
    "code": "Precise IF",
    "math": "Math",
    "safety-refuse": "Safety",
    "safety-response": "Safety",
}


def rows_from(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for k, r in enumerate(records):
        chosen, rejected = list(r["chosen"]), list(r["rejected"])
        out.append(
            {
                "id": f"{r['domain']}-{r['id']}",
                "prompt": r["prompt"],
                "chosen": chosen[:1],
                "rejected": rejected,
                "num_correct": 1,
                "total_completions": 1 + len(rejected),
                "subset": SUBSET.get(r["domain"], "Focus"),
            }
        )
        if k % 2 == 0:
            for kind, correct in (("ref", chosen[:1]), ("tied", chosen)):
                out.append(
                    {
                        "id": f"{kind}:{k}",
                        "prompt": r["prompt"],
                        "chosen": correct,
                        "rejected": rejected,
                        "num_correct": len(correct),
                        "total_completions": len(correct) + len(rejected),
                        "subset": "Ties",
                    }
                )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--data", type=Path, required=True, help="the RM-Bench folder (<domain>_filtered.json files)"
    )
    ap.add_argument("--per-domain", type=int, default=16, help="records taken from each domain file")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    records: list[dict[str, Any]] = []
    for f in sorted(args.data.glob("*_filtered.json")):
        domain = f.name.removesuffix("_filtered.json")
        rows = json.loads(f.read_text())[: args.per_domain]
        records += [{**r, "domain": r.get("domain", domain)} for r in rows]
    rows = rows_from(records)
    args.out.write_text(json.dumps(rows))
    print(
        f"wrote {len(rows)} prompts ({sum(r['total_completions'] for r in rows)} completions) to {args.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
