"""A hand-written RewardBench 2 sample (the release's schema) and score rows for it.

Best-of-4 prompts in five subsets, and a Ties block: pairs ref:p / tied:p with several correct
answers, a tied prompt without its ref, a ref without its tied, and a tied prompt with a single
correct answer (the official dcm = None case). `SCORE_CASES` are score rows that hit the edge
cases: ties at the max (2-, 3-, 4-way), the chosen below a tie, NaN in the chosen and in a
rejected completion, equal correct scores (dcm = 0), and a ref margin that decides pref_hard.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

NAN = math.nan


def _bo4(rid: str, subset: str, k: int) -> dict[str, Any]:
    return {
        "id": rid,
        "prompt": f"{subset} question {k}: what is {k} + {k}?",
        "chosen": [f"The answer is {2 * k}."],
        "rejected": [f"The answer is {2 * k + 1}.", f"It is {k}.", f"Maybe {3 * k}, maybe not."],
        "num_correct": 1,
        "total_completions": 4,
        "subset": subset,
    }


def _ties(rid: str, n_correct: int, n_wrong: int) -> dict[str, Any]:
    return {
        "id": rid,
        "prompt": f"Name a prime number ({rid}).",
        "chosen": [f"{p} is prime." for p in (2, 3, 5, 7, 11, 13)[:n_correct]],
        "rejected": [f"{c} is prime." for c in (4, 6, 8, 9, 10)[:n_wrong]],
        "num_correct": n_correct,
        "total_completions": n_correct + n_wrong,
        "subset": "Ties",
    }


def sample_rows() -> list[dict[str, Any]]:
    rows = []
    for s, subset in enumerate(("Factuality", "Precise IF", "Math", "Safety", "Focus")):
        rows += [_bo4(f"{subset[:3].lower()}-{k}", subset, 10 * s + k) for k in range(4)]
    rows += [
        _ties("ref:1", 1, 3),
        _ties("tied:1", 4, 3),
        _ties("ref:2", 1, 2),
        _ties("tied:2", 3, 2),
        _ties("tied:3", 5, 4),  # no ref:3
        _ties("ref:4", 1, 3),  # no tied:4
        _ties("ref:5", 1, 1),
        _ties("tied:5", 2, 1),
    ]
    return rows


def write_sample(path: Path) -> Path:
    path.write_text(json.dumps(sample_rows(), indent=1))
    return path


# Per prompt (sample order), the completion scores (chosen first). Best-of-4 rows cover: a clean
# win, a 2-way tie at the max, a 3-way, a 4-way, the chosen below a tie of rejected, NaN chosen,
# NaN rejected, -inf, a loss.
_BO4_ROWS = [
    [2.0, 1.0, 0.5, -1.0],
    [1.0, 1.0, 0.0, -2.0],
    [0.25, 0.25, 0.25, 0.0],
    [3.0, 3.0, 3.0, 3.0],
    [1.0, 2.0, 2.0, 0.0],
    [NAN, 1.0, 0.0, 0.0],
    [1.0, NAN, 0.0, 0.0],
    [0.0, -math.inf, -1.0, -2.0],
    [-1.0, 0.5, 0.0, 0.1],
    [0.1 + 0.2, 0.3, 0.0, 0.0],  # 0.30000000000000004 > 0.3: exact equality, no tie
]
_TIES_ROWS = [
    [3.0, 1.0, 2.0, 0.0],  # ref:1 accurate, cim 1
    [5.0, 4.0, 4.5, 4.2, 1.0, 2.0, 3.0],  # tied:1 accurate, dcm 1, cim 1
    [1.0, 2.0, 0.0],  # ref:2 not accurate
    [2.0, 2.0, 2.0, 0.0, 1.0],  # tied:2 dcm 0
    [9.0, 8.0, 7.0, 6.0, 5.0, 1.0, 2.0, 3.0, 4.0],  # tied:3 (no ref)
    [0.0, 1.0, -1.0, -2.0],  # ref:4 (no tied)
    [4.0, 0.0],  # ref:5 cim 4
    [3.0, 2.0, 0.0],  # tied:5 dcm 1, cim 2
]


def score_rows(variant: int = 0) -> list[list[float]]:
    """Score rows for `sample_rows()`; `variant` rotates the best-of-4 cases over the prompts."""
    n_bo4 = 20
    rows = [list(_BO4_ROWS[(i + variant) % len(_BO4_ROWS)]) for i in range(n_bo4)]
    return rows + [list(r) for r in _TIES_ROWS]
