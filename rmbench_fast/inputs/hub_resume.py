"""A model's weight files from the hub, resumed per byte after a killed download.

huggingface_hub (2.5) streams every file into a temporary file of a name unique to the process
and deletes it when the download fails, so a multi-GB shard killed halfway starts again at byte
0 whichever public entry point is used (`hf_hub_download`, with or without `local_dir`,
`snapshot_download`). The weight files (`is_large`) therefore come through `fetch_resumable`,
which keeps the partial bytes and continues them with an HTTP range request, using only the
client's public pieces: `hf_hub_url` and `get_hf_file_metadata` (the commit, the etag, the size,
the download location), `build_hf_headers` (the token, from HF_TOKEN or the login, exactly as
the client sends it; this module never reads or prints it) and `file_download.http_get` (the
range request, the progress bar, a server that answers 200 to a range).

What it writes is the hub cache's own layout, so every later reader (`HF_HUB_OFFLINE=1`
included) sees a normal cache: `blobs/<etag>` and `snapshots/<commit>/<name>` as a relative
symlink to it. The partial bytes wait in `blobs/<etag>.rmbf-partial`, a name the client never
reads, under the client's own lock file for that blob (`.locks/<repo>/<etag>.lock`), so two
runs, or a run and the client, never write one blob at once.

A finished file is checked: its size against the hub's, and its sha256 against the etag when
the etag is one (an LFS file, as weight files are). A resumed file that fails the check is
thrown away and downloaded once more from byte 0 in the same run (the kept prefix is the
likely culprit: it was written by another process, maybe another version of the file); a file
fetched whole that fails it is deleted and the run stops with one line, since fetching it again
at once would most likely bring the same bytes.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from rmbench_fast.inputs.hub_files import PICKLE_SUFFIXES, HubError

PARTIAL_SUFFIX = ".rmbf-partial"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# An etag becomes a file name under blobs/: anything else than these characters is refused.
_SAFE_ETAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Hosts the client itself trusts with the token besides the request's own (a mirror that
# redirects to the hub); any other host (a CDN's signed URL) gets no Authorization header.
_HUB_ORIGINS = ("https://huggingface.co", "https://hf.co")


def is_large(kind: str, name: str) -> bool:
    """Whether `name` comes through `fetch_resumable`: a model's weight files (the only ones
    that reach GBs); every other file stays with the client's own download."""
    return kind == "model" and name.endswith((".safetensors", *PICKLE_SUFFIXES))


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme, 0)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default


def _download_headers(hf: Any, url: str, location: str) -> dict[str, str]:
    """The headers the client would send for this download: the token only to the hub itself."""
    headers = dict(hf.utils.build_hf_headers())
    # byte offsets must count the file's own bytes, not those of a compressed stream
    headers["Accept-Encoding"] = "identity"
    trusted = {_origin(url), _origin(str(hf.constants.ENDPOINT)), *(_origin(u) for u in _HUB_ORIGINS)}
    if _origin(location) not in trusted:
        headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
    return headers


def _sha256(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _link(blob: Path, pointer: Path) -> None:
    """`snapshots/<commit>/<name>` -> `../../blobs/<etag>` (deeper names get more `..`), as the
    client links it; swapped in atomically, so a reader never finds the name missing."""
    pointer.parent.mkdir(parents=True, exist_ok=True)
    tmp = pointer.with_name(f".{pointer.name}.{os.getpid()}.rmbf-link")
    tmp.unlink(missing_ok=True)
    try:
        os.symlink(os.path.relpath(blob, pointer.parent), tmp)
    except OSError:  # a filesystem without symlinks: a copy, the client's own fallback
        shutil.copyfile(blob, tmp)
    os.replace(tmp, pointer)


class _Lock:
    """The client's lock file of one blob, held while its bytes are written (says when it waits)."""

    def __init__(self, path: Path, name: str, log: Callable[[str], None]) -> None:
        # start-up cost: filelock (installed with huggingface_hub)
        from filelock import FileLock

        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(str(path))
        self._name = name
        self._log = log

    def __enter__(self) -> None:
        from filelock import Timeout  # start-up cost: filelock (installed with huggingface_hub)

        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            self._log(f"another process is downloading {self._name}; waiting for it")
            self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


def _append_rest(
    http_get: Callable[..., None],
    partial: Path,
    location: str,
    headers: dict[str, str],
    size: int | None,
    name: str,
) -> None:
    """Continue `partial` from its current length to the end of the file (one range request;
    `http_get` rewinds to byte 0 itself when the server sends the whole file instead)."""
    fd = os.open(partial, os.O_RDWR | os.O_CREAT, 0o666)
    with os.fdopen(fd, "r+b") as fh:
        have = fh.seek(0, os.SEEK_END)
        http_get(location, fh, resume_size=have, headers=headers, expected_size=size, displayed_filename=name)


def fetch_resumable(
    kind: str, repo_id: str, sha: str, name: str, *, cache: Path, log: Callable[[str], None] = print
) -> Path:
    """Download `name` of commit `sha` into the hub cache `cache`, continuing the partial bytes a
    killed run left; returns its `snapshots/<sha>/<name>` path. HubError for a file the hub
    describes oddly or whose bytes do not check out; the client's errors (HTTP, transport,
    disk) pass through for the caller to word."""
    import huggingface_hub as hf  # start-up cost: huggingface_hub
    import huggingface_hub.constants  # start-up cost: huggingface_hub
    import huggingface_hub.utils  # start-up cost: huggingface_hub
    from huggingface_hub.file_download import http_get  # start-up cost: huggingface_hub

    where = f"{kind} {repo_id}@{sha[:7]}: {name}"
    url = hf.hf_hub_url(repo_id, name, repo_type=kind, revision=sha)
    meta = hf.get_hf_file_metadata(url)
    etag, size = meta.etag, meta.size
    if meta.commit_hash and meta.commit_hash != sha:
        raise HubError(f"{where}: the hub answered with commit {meta.commit_hash[:7]}, not the one asked")
    if not etag or not _SAFE_ETAG.match(etag):
        raise HubError(f"{where}: the hub sent no usable ETag, so a download cannot be checked or resumed")
    location = str(meta.location or url)
    headers = _download_headers(hf, url, location)

    storage = cache / f"{kind}s--{repo_id.replace('/', '--')}"
    blob = storage / "blobs" / etag
    partial = blob.with_name(etag + PARTIAL_SUFFIX)
    pointer = storage / "snapshots" / sha / name
    blob.parent.mkdir(parents=True, exist_ok=True)
    with _Lock(cache / ".locks" / storage.name / f"{etag}.lock", name, log):
        if not blob.is_file():  # another process may have finished it while this one waited
            _complete(http_get, partial, location, headers, size, etag, name, where, log)
            os.replace(partial, blob)
        _link(blob, pointer)
    return pointer


def _complete(
    http_get: Callable[..., None],
    partial: Path,
    location: str,
    headers: dict[str, str],
    size: int | None,
    etag: str,
    name: str,
    where: str,
    log: Callable[[str], None],
) -> None:
    """Bring `partial` to the whole, checked file (see the module's docstring for a bad one)."""
    for fresh_retry in (False, True):
        have = partial.stat().st_size if partial.exists() else 0
        if size is not None and have > size:  # longer than the file: not a prefix of it
            log(f"note: the partial download of {name} is longer than the file; starting it again")
            partial.unlink()
            have = 0
        if have:
            total = f"{size / 1e6:.1f}" if size is not None else "?"
            log(f"resuming {name} at {have / 1e6:.1f} of {total} MB")
        # http_get raises when the bytes it got do not add up to `size` (the partial is kept)
        _append_rest(http_get, partial, location, headers, size, name)
        if not _SHA256.match(etag) or _sha256(partial) == etag:
            return
        partial.unlink()
        if have and not fresh_retry:
            log(
                f"note: {name} resumed from a kept partial download does not match its sha256; downloading it anew"
            )
            continue
        break
    raise HubError(
        f"{where}: the downloaded bytes do not match the hub's sha256 {etag[:12]}; the file was deleted, "
        "run again to download it anew"
    )
