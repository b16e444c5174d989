"""The pairwise judge prompt and the verdict parser.

**The default prompt** is the pairwise comparison template that the RM-Bench README publishes
("The prompt template used for comparision"), transcribed character for character below. It is
shown there as a Python ``str.format`` template written as a string literal: ``{{`` / ``}}``
are literal braces and ``\\\\`` is one backslash, so the rendered prompt asks for
``\\boxed{A>>B}`` ... ``\\boxed{B>>A}``. A ``--judge-template FILE`` is a ``str.format``
template too, with the placeholders ``{question}``, ``{answer_1}`` (assistant A) and
``{answer_2}`` (assistant B); its text is used as is (write ``{{`` for a literal brace, and a
single backslash for a backslash).

**The verdict rule** (`parse_verdict`):

1. Text that the judge copied from the prompt's answer blocks, i.e. everything from a
   ``<|The Start of Assistant A's Answer|>`` (or B) marker to the matching end marker (or to
   the end of the output when the block is not closed), is ignored: a verdict inside a quoted
   answer is the answer's text, not the judge's decision.
2. In what remains, every ``\\boxed{...}`` is found (also written ``\\\\boxed``, ``boxed``
   without a backslash, with spaces before the brace, inside ``$...$``, with doubled braces
   ``\\boxed{{A>B}}``, or with the verdict wrapped in ``\\text{}`` / ``\\mathrm{}`` /
   ``\\textbf{}``). Its content, with all whitespace removed and upper-cased, is a verdict when
   it is one of ``A>>B``, ``A>B``, ``A=B``, ``B>A``, ``B>>A``. Boxes with any other content
   (``\\boxed{42}``) are not verdicts and are skipped.
3. The **last** verdict box wins (a judge that changes its mind ends with its final answer).
4. No verdict box: the output is unparseable (scored 0, counted in the run's meta).
"""

from __future__ import annotations

import hashlib
import re
import string
from dataclasses import dataclass
from pathlib import Path

from rmbench_fast.errors import UsageError

# Source: THU-KEG/RM-Bench, README.md ("The prompt template used for comparision"), commit
# 73c52d7b27b361621361ec959ac6c0eb9bb7a689 (2025-07-18). Transcribed exactly: this string
# literal's text is the README's code block, character for character (the README shows it as a
# Python format string, so `\\boxed{{A>>B}}` renders as `\boxed{A>>B}`).
RM_BENCH_TEMPLATE = (
    "You will be shown a user prompt followed by two responses from different assistants. "
    "Your task is to decide which response is better. You may consider any criteria you find "
    "appropriate. Try your best and think carefully, deeply analyze the responses, and provide a "
    "final verdict.\n"
    "Ensure in the end that you should include the final verdict in the specified format as follows:\n"
    "\n"
    "1. Assistant A is significantly better: \\boxed{{A>>B}}\n"
    "2. Assistant A is slightly better: \\boxed{{A>B}}\n"
    "3. Tie, relatively the same: \\boxed{{A=B}}\n"
    "4. Assistant B is slightly better: \\boxed{{B>A}}\n"
    "5. Assistant B is significantly better: \\boxed{{B>>A}}\n"
    "\n"
    "<|User Prompt|>\n"
    "{question}\n"
    "\n"
    "<|The Start of Assistant A's Answer|>\n"
    "{answer_1}\n"
    "<|The End of Assistant A's Answer|>\n"
    "\n"
    "<|The Start of Assistant B's Answer|>\n"
    "{answer_2}\n"
    "<|The End of Assistant B's Answer|>"
)
RM_BENCH_TEMPLATE_SOURCE = "THU-KEG/RM-Bench README.md @ 73c52d7b27b361621361ec959ac6c0eb9bb7a689"
PLACEHOLDERS = ("question", "answer_1", "answer_2")

VERDICTS = ("A>>B", "A>B", "A=B", "B>A", "B>>A")
# Who the verdict prefers: "A", "B" or "tie". The strength (>> vs >) is kept in the judgments
# but does not change the score.
WINNER = {"A>>B": "A", "A>B": "A", "A=B": "tie", "B>A": "B", "B>>A": "B"}

# `\boxed{...}` with up to two levels of nested braces inside; the backslash is optional.
_BOX = re.compile(r"\\*boxed\s*\{((?:[^{}]|\{(?:[^{}]|\{[^{}]*\})*\})*)\}")
_WRAPPERS = re.compile(r"\\(?:text|mathrm|textbf|mathbf|textrm|mbox)\s*\{([^{}]*)\}")
_ANSWER_BLOCK = re.compile(
    r"<\|The Start of Assistant (?P<who>[AB])'s Answer\|>.*?(?:<\|The End of Assistant (?P=who)'s Answer\|>|\Z)",
    re.DOTALL,
)


@dataclass(frozen=True)
class Template:
    """A judge prompt: a `str.format` template with {question}, {answer_1}, {answer_2}."""

    text: str
    name: str  # "rm-bench" or the file path

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    def render(self, question: str, answer_a: str, answer_b: str) -> str:
        """The user message for one comparison (assistant A's answer first)."""
        return self.text.format(question=question, answer_1=answer_a, answer_2=answer_b)


DEFAULT_TEMPLATE = Template(RM_BENCH_TEMPLATE, "rm-bench")


def check_template(text: str, name: str) -> Template:
    """A Template from its text; UsageError (one line) for a placeholder set other than
    {question}, {answer_1}, {answer_2} or a malformed format string."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(text) if f is not None]
    except ValueError as e:
        raise UsageError(f"--judge-template {name}: not a str.format template: {e}") from None
    unknown = sorted({f for f in fields if f not in PLACEHOLDERS})
    if unknown:
        raise UsageError(
            f"--judge-template {name}: unknown placeholder(s) {unknown}; use {{question}}, {{answer_1}}, "
            "{answer_2} (write {{ and }} for literal braces)"
        )
    missing = [p for p in PLACEHOLDERS if p not in fields]
    if missing:
        raise UsageError(f"--judge-template {name}: missing placeholder(s) {missing}")
    return Template(text, name)


def load_template(path: str | None) -> Template:
    """The RM-Bench README template, or the one in `path`."""
    if path is None:
        return DEFAULT_TEMPLATE
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"--judge-template {path}: cannot read: {e}") from None
    return check_template(text, str(path))


def _normalize(content: str) -> str:
    text = content
    for _ in range(3):
        text = _WRAPPERS.sub(r"\1", text)
    text = re.sub(r"\s+", "", text).replace("$", "")
    while text.startswith("{") and text.endswith("}"):
        text = text[1:-1]
    return text.upper()


def parse_verdict(output: str) -> str | None:
    """The judge's verdict (one of VERDICTS) in `output`, or None; see the module docstring."""
    visible = _ANSWER_BLOCK.sub(" ", output)
    verdict = None
    for m in _BOX.finditer(visible):
        v = _normalize(m.group(1))
        if v in WINNER:
            verdict = v
    return verdict


def order_score(verdict: str | None, chosen_is_a: bool) -> float:
    """One order's score for the chosen answer: 1 when it wins, ½ for a tie, 0 for a loss or an
    unparseable verdict."""
    if verdict is None:
        return 0.0
    winner = WINNER[verdict]
    if winner == "tie":
        return 0.5
    return 1.0 if (winner == "A") == chosen_is_a else 0.0
