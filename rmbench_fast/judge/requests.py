"""The 18 comparisons of a record, in prefix order, and what a judge answered to each.

For chosen style i and rejected style j (i, j in 0..2) a record is judged in both orders:
``chosen_first`` (assistant A = chosen i, B = rejected j) and ``rejected_first`` (A = rejected
j, B = chosen i): 9 pairs x 2 orders = 18 requests.

**Prefix order.** A prompt is template head + question + answer A + answer B, so requests with
the same record and the same answer A share everything up to answer B. `build_requests` lists
a record's 18 requests together, grouped by answer A: chosen 0 against rejected 0, 1, 2, then
chosen 1 ..., then rejected 0 against chosen 0, 1, 2, and so on. Sent in this order, the
server's prefix cache holds each shared prefix while the requests that reuse it run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rmbench_fast.judge.prompt import Template
from rmbench_fast.records import N_STYLES, Record

ORDERS = ("chosen_first", "rejected_first")
REQUESTS_PER_RECORD = 2 * N_STYLES * N_STYLES


@dataclass(frozen=True)
class JudgeRequest:
    """One comparison: record `record` (position in the run), chosen style `i` against rejected
    style `j`, in `order`; `prompt` is the user message and `key` identifies the request (with
    the judge and its decoding settings) in the response log."""

    index: int
    record: int
    record_id: str
    domain: str
    i: int
    j: int
    order: str
    prompt: str
    key: str

    @property
    def chosen_is_a(self) -> bool:
        return self.order == "chosen_first"

    def messages(self) -> list[dict[str, str]]:
        """The chat-completions messages: the rendered template as the one user turn."""
        return [{"role": "user", "content": self.prompt}]


@dataclass
class JudgeResponse:
    """What the judge answered to one request (or why it could not)."""

    text: str
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    retries: int = 0
    seconds: float = 0.0
    error: str | None = None  # a request the server refused (e.g. too long); not reused on resume

    def to_json(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "finish_reason": self.finish_reason,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
            "retries": self.retries,
            "seconds": self.seconds,
            "error": self.error,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> JudgeResponse:
        return cls(
            text=str(obj.get("text") or ""),
            finish_reason=obj.get("finish_reason"),
            prompt_tokens=obj.get("prompt_tokens"),
            completion_tokens=obj.get("completion_tokens"),
            cached_tokens=obj.get("cached_tokens"),
            retries=int(obj.get("retries") or 0),
            seconds=float(obj.get("seconds") or 0.0),
            error=obj.get("error"),
        )


def request_key(judge: str, messages: Sequence[Mapping[str, str]], sampling: Mapping[str, Any]) -> str:
    """sha256 over what decides an answer: the judge's identity (served model name, or the
    in-process model directory and dtype), the messages and the decoding settings. The
    endpoint's address is not part of it, so a rerun against another port (or none) resumes."""
    blob = json.dumps(
        {"judge": judge, "messages": list(messages), "sampling": dict(sampling)},
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def record_requests(
    n: int, rec: Record, template: Template, judge: str, sampling: Mapping[str, Any], start: int
) -> list[JudgeRequest]:
    """The 18 requests of record `rec` (run position `n`), indices from `start`, prefix order."""
    out: list[JudgeRequest] = []

    def add(i: int, j: int, order: str) -> None:
        chosen, rejected = rec.chosen[i], rec.rejected[j]
        a, b = (chosen, rejected) if order == "chosen_first" else (rejected, chosen)
        prompt = template.render(rec.prompt, a, b)
        key = request_key(judge, [{"role": "user", "content": prompt}], sampling)
        out.append(JudgeRequest(start + len(out), n, rec.id, rec.domain, i, j, order, prompt, key))

    for i in range(N_STYLES):  # A = chosen i
        for j in range(N_STYLES):
            add(i, j, "chosen_first")
    for j in range(N_STYLES):  # A = rejected j
        for i in range(N_STYLES):
            add(i, j, "rejected_first")
    return out


def build_requests(
    records: Sequence[Record], template: Template, judge: str, sampling: Mapping[str, Any]
) -> list[JudgeRequest]:
    """Every record's 18 requests, record after record, each record's in prefix order."""
    out: list[JudgeRequest] = []
    for n, rec in enumerate(records):
        out.extend(record_requests(n, rec, template, judge, sampling, len(out)))
    return out
