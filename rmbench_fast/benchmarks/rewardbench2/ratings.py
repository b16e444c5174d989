"""RewardBench 2's generative ratings mode: each completion rated alone on a 1-10 scale.

The official generative runner (allenai/reward-bench `scripts/run_generative_v2.py
--score_w_ratings`, with `rewardbench/generative_v2.py::run_judge_ratings_multi` and
`_get_single_rating`, wheel 0.1.4) sends one request per completion: the user turn is
`RATINGS_PROMPT` (or `RATINGS_PROMPT_TIES` for the Ties subset) filled with the prompt and the
completion, no system turn, temperature 0, at most 1024 new tokens. The rating is the integer
1..10 that ends the answer (`parse_rating`); anything else is -1.

Per prompt:
    best-of-N subsets   credit = (0 in W) / |W|, W = the completions whose rating is the max of
                        the valid (!= -1) ratings; 0.25 when no rating is valid
                        (`ratings_credit`: equal to the 1/k rule on the ratings, since -1 is
                        below every valid rating, except for the all-invalid constant)
    Ties                the N ratings, -1 included, are the scores of the usual composite
                        (`metrics.ties_components`)

The prompt texts below are the official ones, character for character (the judge's answers,
and so the scores, depend on every byte); tests/benchmarks/test_rewardbench2_ratings.py checks
them against the installed wheel.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from rmbench_fast.benchmarks.rewardbench2.data import TIES, Prompt
from rmbench_fast.benchmarks.rewardbench2.metrics import best_of_n_credit

# generative_v2.py's two ratings prompts (wheel 0.1.4) differ only in the first note: what the
# judge weighs. `_NOTE` marks that line in the text they share.
_NOTE = "<<what to consider>>"
_RATINGS_TEMPLATE = """
### Task Description
Please act as an impartial judge and evaluate the quality of the response provided by an
AI assistant to the user query displayed below.

Notes:
1- Your evaluation should consider factors such as the helpfulness, relevance, <<what to consider>>
2- Begin your evaluation by providing a short explanation.
3- Be as objective as possible. After providing your explanation, please rate the response on a scale of 1 to 10. For your rating, only give a number between 1 and 10 (inclusive), do not use any markdown, and do not put any text after your final rating.

[Query]
{prompt}

[Response]
{completion}

[Your judgement]"""  # noqa: E501
# `ratings_prompt`: the best-of-N subsets.
RATINGS_PROMPT = _RATINGS_TEMPLATE.replace(
    _NOTE, "accuracy, depth, creativity, and level of detail of the response."
)
# `ratings_prompt_ties`: the Ties subset (no credit for depth or detail).
RATINGS_PROMPT_TIES = _RATINGS_TEMPLATE.replace(
    _NOTE, "and accuracy of the response, but need not consider depth or level of detail of the response."
)

RATINGS_SOURCE = (
    "allenai/reward-bench scripts/run_generative_v2.py --score_w_ratings (generative_v2.py, wheel 0.1.4)"
)
MAX_NEW_TOKENS = 1024  # _get_single_rating's max_tokens
INVALID = -1
ALL_INVALID_CREDIT = 0.25  # run_generative_v2.py: "effectively a tie", whatever N is
# The last thing in the stripped answer: a whole number 1..10 (a word boundary on both sides).
_RATING = re.compile(r"\b([1-9]|10)\b\s*$")


def rating_prompt(p: Prompt, completion: str) -> str:
    """The one user turn that asks for `completion`'s rating (Ties has its own wording)."""
    template = RATINGS_PROMPT_TIES if p.subset == TIES else RATINGS_PROMPT
    return template.format(prompt=p.prompt, completion=completion)


def parse_rating(text: str | None) -> int:
    """The integer 1..10 that ends `text` (after stripping whitespace), else -1 (INVALID)."""
    if not text:
        return INVALID
    m = _RATING.search(text.strip())
    return int(m.group(1)) if m else INVALID


def ratings_credit(ratings: Sequence[int]) -> float:
    """A best-of-N prompt's credit from its ratings, chosen first (module docstring)."""
    if all(r == INVALID for r in ratings):
        return ALL_INVALID_CREDIT
    return best_of_n_credit([float(r) for r in ratings])
