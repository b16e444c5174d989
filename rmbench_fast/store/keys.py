"""The keys a stored value is found by (scope, sequence, batch, judge request), and the
values' layout. Only hashlib and numpy: nothing here opens the store.

Identity
--------
A stored value is keyed by everything that determines it:

- **scope** (`scope_key(**parts)`): sha256 of the canonical JSON of a dict the caller builds with
  every setting that decides a result besides the token ids: the model fingerprint
  (`fingerprint_model`, a content hash, never a path), the tokenizer / template fingerprint, the
  kind ("dpo" or "classifier"), dtype, device type, attention implementation, kernel choice,
  `fp32_scores`, ... The store hashes the dict, and keeps it as JSON for `cache info`.
  `ResultStore.scope(parts, label=...)` registers it; `parts` must hold `model` (the fingerprint)
  and `kind`. `label` (e.g. the model path) is shown by `cache info` and is not part of the key.
- **sequence** (`seq_key(ids, label_start, pool_index=..., mask_first=...)`): sha256 of the token
  ids (any int array or list; hashed as int64) and the label span / pooled position
  (the fields of `rmbench_fast.records.TokSeq`; `seq_key_of(seq)` takes one).
- **batch** (`batch_key(seq_keys, layout)`): sha256 of the ordered sequence keys and a layout
  descriptor the caller passes (whatever else decides the batch's shapes: packing, prefix
  sharing, padding, ...). A sequence's value can change in its last bits with the batch it was
  computed in (matmul blocking follows the batch shape), so bit-identical resume works on
  whole batches.

Values
------
Each sequence stores three float64, kept as a 24-byte little-endian BLOB so they round-trip
bit-exactly (NaN payloads and -0.0 included; SQLite's REAL would turn NaN into NULL):

- DPO: (Σ log p, count, Σ (log p)²) over the answer tokens: enough for every reward mode
  (avg = Σ/count, sum, norm = -sqrt(Σ²), and the difference to a reference model's Σ);
- classifier: (score, NaN, NaN) (`classifier_values(scores)` builds the rows).
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

_KEY_HEX_LEN = 64


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace; only JSON types (tuples become lists)."""

    def check(value: Any, where: str) -> None:
        if value is None or isinstance(value, (str, bool, int)):
            return
        if isinstance(value, float):
            if not math.isfinite(value):
                raise ValueError(f"scope part {where} is {value!r}; only finite numbers can be hashed")
            return
        if isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                check(item, f"{where}[{i}]")
            return
        if isinstance(value, Mapping):
            for k, item in value.items():
                if not isinstance(k, str):
                    raise TypeError(f"scope part {where} has a non-string key {k!r}")
                check(item, f"{where}.{k}")
            return
        raise TypeError(
            f"scope part {where} is a {type(value).__name__}; pass JSON types (str, int, float, bool, "
            "None, lists, dicts) so the key is canonical"
        )

    check(obj, "parts")
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def scope_key(**parts: Any) -> str:
    """sha256 (hex) of the canonical JSON of `parts`: every setting that decides a result besides
    the token ids. Key order does not matter; values must be JSON types."""
    text = canonical_json(parts)
    return hashlib.sha256(b"rmbench_fast scope v1\0" + text.encode()).hexdigest()


def _int64_ids(ids: Any, name: str) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        return np.zeros(0, dtype="<i8")
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be integers, got dtype {arr.dtype}")
    if arr.dtype.kind == "u" and arr.dtype.itemsize == 8 and int(arr.max()) > np.iinfo(np.int64).max:
        raise ValueError(f"{name} has a value above int64")
    return arr.astype("<i8", copy=False)


def seq_key(ids: Any, label_start: int, *, pool_index: int = -1, mask_first: bool = False) -> str:
    """sha256 (hex) of one sequence: its token ids (any integer array or list, hashed as int64, so
    int32 and int64 arrays of the same ids agree) and what is read from it: `label_start` (tokens
    ids[label_start:] are scored, DPO), `pool_index` (the classifier's pooled position, -1 for
    DPO) and `mask_first` (classifier: token 0 masked), as in `rmbench_fast.records.TokSeq`."""
    arr = _int64_ids(ids, "ids")
    n = int(arr.shape[0])
    label_start = int(label_start)
    if not 0 <= label_start <= n:
        raise ValueError(f"label_start {label_start} outside 0..{n}")
    h = hashlib.sha256(b"rmbench_fast seq v1\0")
    h.update(struct.pack("<qqq?", n, label_start, int(pool_index), bool(mask_first)))
    h.update(arr.tobytes())
    return h.hexdigest()


def seq_key_of(seq: Any) -> str:
    """`seq_key` of a `TokSeq`-like object (ids, label_start, pool_index, mask_first)."""
    return seq_key(
        seq.ids,
        seq.label_start,
        pool_index=getattr(seq, "pool_index", -1),
        mask_first=getattr(seq, "mask_first", False),
    )


def judge_key(store_identity: str, request_key: str) -> str:
    """The store key of one judge request: sha256 of the judge's store identity (content-derived
    where it can be: the in-process model's fingerprint and dtype; for a server its URL and
    served model name) and the request's own key (prompt and decoding settings)."""
    return hashlib.sha256(f"{store_identity}\0{request_key}".encode()).hexdigest()


def batch_key(seq_keys: Sequence[str], layout: Any = None) -> str:
    """sha256 (hex) of a batch: its sequence keys in order and `layout`, a JSON-typed descriptor
    of whatever else decides the batch's shapes (packing, prefix sharing, padding...)."""
    text = canonical_json({"seqs": [check_key(k, "sequence key") for k in seq_keys], "layout": layout})
    return hashlib.sha256(b"rmbench_fast batch v1\0" + text.encode()).hexdigest()


def classifier_values(scores: Any) -> np.ndarray:
    """Rows `(score, NaN, NaN)` float64 `[n, 3]` for classifier scores."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    out = np.full((s.shape[0], 3), np.nan, dtype=np.float64)
    out[:, 0] = s
    return out


def check_key(key: str, what: str) -> str:
    if not isinstance(key, str) or len(key) != _KEY_HEX_LEN:
        raise ValueError(f"{what} must be a {_KEY_HEX_LEN}-character sha256 hex string, got {key!r}")
    try:
        bytes.fromhex(key)
    except ValueError:
        raise ValueError(f"{what} must be a sha256 hex string, got {key!r}") from None
    return key


def key_bytes(key: str, what: str) -> bytes:
    return bytes.fromhex(check_key(key, what))
