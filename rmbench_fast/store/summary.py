"""What `ResultStore.info()` reports: each scope, each model's scopes summed, the whole store."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ScopeInfo:
    """One stored scope: its key, model fingerprint, kind, settings and how much it holds."""

    key: str
    model: str
    kind: str
    parts: dict[str, Any]
    label: str | None
    batches: int
    seqs: int
    created: float
    used: float


@dataclass(frozen=True)
class ModelSummary:
    """All scopes of one model fingerprint."""

    model: str
    labels: tuple[str, ...]
    kinds: tuple[str, ...]
    scopes: int
    batches: int
    seqs: int
    settings: tuple[str, ...]  # distinct "dtype/device" of its scopes


@dataclass(frozen=True)
class StoreInfo:
    """What `ResultStore.info()` reports."""

    path: Path
    size_bytes: int  # the database file with its -wal and -shm files
    schema_version: int
    file_hashes: int
    scopes: tuple[ScopeInfo, ...] = field(default_factory=tuple)
    judgments: int = 0  # generative judges' stored answers

    @property
    def batches(self) -> int:
        return sum(s.batches for s in self.scopes)

    @property
    def seqs(self) -> int:
        return sum(s.seqs for s in self.scopes)

    def models(self) -> list[ModelSummary]:
        """One summary per model fingerprint, most sequences first."""
        groups: dict[str, list[ScopeInfo]] = {}
        for s in self.scopes:
            groups.setdefault(s.model, []).append(s)
        out = []
        for model, scopes in groups.items():
            settings = sorted({f"{s.parts.get('dtype', '?')}/{s.parts.get('device', '?')}" for s in scopes})
            out.append(
                ModelSummary(
                    model=model,
                    labels=tuple(sorted({s.label for s in scopes if s.label})),
                    kinds=tuple(sorted({s.kind for s in scopes})),
                    scopes=len(scopes),
                    batches=sum(s.batches for s in scopes),
                    seqs=sum(s.seqs for s in scopes),
                    settings=tuple(settings),
                )
            )
        out.sort(key=lambda m: (-m.seqs, m.model))
        return out
