"""Model fingerprints: sha256 of the files that decide a model's outputs (config, the weights the
loader reads, their index, remote code), by content, never by path. With a ResultStore, each
file's hash is remembered in the store (`ResultStore.file_hash`), so a rerun only stats it."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from rmbench_fast.errors import ModelError
from rmbench_fast.inputs.modelio import PICKLE_GLOBS, SAFETENSORS_GLOBS

if TYPE_CHECKING:
    from rmbench_fast.store.db import ResultStore

HASH_CHUNK = 16 << 20


def hash_file(path: Path) -> str:
    """sha256 (hex) of a file, streamed in HASH_CHUNK pieces."""
    h = hashlib.sha256()
    buf = bytearray(HASH_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(view[:n])
    return h.hexdigest()


def stat_key(st: os.stat_result) -> str:
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}:{st.st_dev}"


def model_files(model_dir: Path | str) -> list[str]:
    """The files (names relative to `model_dir`) that decide a model's outputs: config.json,
    the weights the loader reads (safetensors when there are any, as in `rmbench_fast.inputs.modelio`,
    else pickle checkpoints, else GGUF), their shard index and any remote-code `*.py`."""
    root = Path(model_dir)
    if not root.is_dir():
        raise ModelError(f"model directory {root} does not exist")

    def names(patterns: Iterable[str]) -> list[str]:
        return sorted({p.name for pat in patterns for p in root.glob(pat) if p.is_file()})

    weights = names(SAFETENSORS_GLOBS) or names(PICKLE_GLOBS) or names(("*.gguf",))
    if not weights:
        raise ModelError(f"model directory {root} has no weights to fingerprint")
    extra = names(("config.json", "*.index.json", "*.py"))
    return sorted(set(weights) | set(extra))


def fingerprint_model(
    model_dir: Path | str, store: ResultStore | None = None, files: Sequence[str] | None = None
) -> str:
    """sha256 (hex) of a model's content: the names, sizes and sha256 of `files` (default:
    `model_files(model_dir)`; pass `ModelInfo.weight_files + ["config.json"]` to match the
    loader exactly). Independent of the directory's path. With a `store`, each file's hash is
    remembered by (path, size, mtime, ctime, inode, device), so a rerun does not read it again."""
    root = Path(model_dir)
    names = sorted(set(files)) if files is not None else model_files(root)
    h = hashlib.sha256(b"rmbench_fast model v1\0")
    for name in names:
        path = root / name
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise ModelError(f"{path}: cannot read model file ({exc.strerror or exc})") from None
        digest = store.file_hash(path) if store is not None else hash_file(path)
        h.update(f"{name}\0{size}\0{digest}\n".encode())
    return h.hexdigest()
