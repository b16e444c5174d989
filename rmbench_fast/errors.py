"""User-facing errors: one line naming the file, the record and the field; exit code 2."""

from __future__ import annotations


class RMBenchError(Exception):
    """An error in the user's input. The CLI prints `error: <message>` and exits with code 2.

    The message is one line. Where they apply, it names the file, the record (index and id)
    and the field, so the user can find the problem without a traceback.
    """

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        record: int | None = None,
        record_id: str | None = None,
        field: str | None = None,
    ) -> None:
        self.file, self.record, self.record_id, self.field = file, record, record_id, field
        where = []
        if file is not None:
            where.append(str(file))
        if record is not None:
            rid = f" (id {record_id!r})" if record_id is not None else ""
            where.append(f"record {record}{rid}")
        if field is not None:
            where.append(f"field {field!r}")
        prefix = ": ".join(where)
        text = f"{prefix}: {message}" if prefix else message
        super().__init__(" ".join(text.split("\n")))


class DataError(RMBenchError):
    """Bad benchmark data: unparsable file, missing or malformed field, unknown domain."""


class ModelError(RMBenchError):
    """A model directory that cannot be used as asked (missing config, pickle weights, remote code...)."""


class TemplateError(RMBenchError):
    """No usable chat template, or an unknown template name."""


class UsageError(RMBenchError):
    """Options that contradict each other (e.g. --ref-model with a classifier)."""


class NonFiniteScoreError(RMBenchError):
    """A score came out NaN or inf (dtype overflow, broken weights): exit code 3.

    Raised after the outputs are written (the non-finite values as JSON null), so nothing
    computed is lost; `--allow-nonfinite` keeps going instead.
    """

    exit_code = 3


def nonfinite_message(nonfinite: dict) -> str:
    """One line: how many records, the first few ids, the likely cause."""
    bad = nonfinite["scores"]
    ids = list(dict.fromkeys(str(b["id"]) for b in bad))
    shown = ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "")
    return (
        f"{nonfinite['count']} score(s) are NaN or inf in {len(ids)}+ record(s) (ids {shown}); likely a dtype "
        "overflow (try --dtype float32 or bfloat16) or broken weights. The outputs were written with null "
        "there (metrics.json meta.nonfinite); --allow-nonfinite counts them as losses instead"
    )
