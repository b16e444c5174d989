"""The append-only response log (``OUT/judge_log.jsonl``): every answer, stored as it arrives.

One JSON object per line: the request's key (`requests.request_key`), where it belongs (record
id, i, j, order), the judge's identity and the response (`JudgeResponse.to_json`). Lines are
flushed and fsynced one by one, so a killed run loses at most the line being written; a torn
or unreadable line is skipped on reading (and counted). On resume the last good answer for a
key is reused; answers that are request errors are not (the rerun asks again).

The run also puts every answer in the results store (`runner.StoredAnswers`), which outlives
`--out`; this log is the run's own record, read first.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, Any

from rmbench_fast.judge.requests import JudgeRequest, JudgeResponse

LOG_FILE = "judge_log.jsonl"


def read_log(path: Path) -> tuple[dict[str, JudgeResponse], int]:
    """(key -> response, number of unreadable lines). A missing file is an empty log."""
    found: dict[str, JudgeResponse] = {}
    bad = 0
    try:
        fh = open(path, encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return found, 0
    with fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                key = obj["key"]
                resp = JudgeResponse.from_json(obj)
            except (ValueError, KeyError, TypeError):
                bad += 1
                continue
            if resp.error is None and isinstance(key, str):
                found[key] = resp
    return found, bad


class LogWriter:
    """Appends one line per answer; use as a context manager."""

    def __init__(self, path: Path, judge: str) -> None:
        self.path = path
        self.judge = judge
        self._fh: IO[str] | None = None

    def __enter__(self) -> LogWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        torn = False
        if self.path.exists() and self.path.stat().st_size > 0:
            with open(self.path, "rb") as fh:
                fh.seek(-1, os.SEEK_END)
                torn = fh.read(1) != b"\n"
        self._fh = open(self.path, "a", encoding="utf-8")
        if torn:  # a line cut by a crash: end it, so the next one starts clean
            self._fh.write("\n")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def append(self, req: JudgeRequest, resp: JudgeResponse) -> None:
        assert self._fh is not None, "LogWriter used outside its context"
        obj = {
            "key": req.key,
            "record_id": req.record_id,
            "i": req.i,
            "j": req.j,
            "order": req.order,
            "judge": self.judge,
            **resp.to_json(),
        }
        self._fh.write(json.dumps(obj, ensure_ascii=False) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
