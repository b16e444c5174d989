"""What consecutive evaluations over the same data share (`python -m rmbench_fast sweep`): EvalCache."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any


class EvalCache:
    """What consecutive evaluations over the same data can share (`python -m rmbench_fast sweep`).

    Memoizes by key: the validated records, the tokenized sequences (per tokenizer and template
    fingerprint), and, for DPO with a reference model on the native engine, the reference
    model's per-sequence Σ log π_ref. The reference is the same for every checkpoint of a sweep,
    so its forward passes run once instead of once per checkpoint. `hits` counts reuses by kind.
    """

    def __init__(self) -> None:
        self._store: dict[tuple[Any, ...], Any] = {}
        self.hits: Counter[str] = Counter()

    def __contains__(self, key: tuple[Any, ...]) -> bool:
        return key in self._store

    def put(self, key: tuple[Any, ...], value: Any) -> None:
        self._store[key] = value

    def get(self, key: tuple[Any, ...], compute: Callable[[], Any]) -> Any:
        if key in self._store:
            self.hits[str(key[0])] += 1
            return self._store[key]
        value = compute()
        self._store[key] = value
        return value
