"""Models and datasets named by Hugging Face hub id: `ORG/NAME[@REVISION]`.

An argument (`--model`, `--ref-model`, a sweep MODEL, the judge's `--model`, `--data`) resolves:

1. an existing local path of that name: used as it is, the hub is not asked;
2. else, when it reads as `ORG/NAME[@REVISION]`, the hub, through `huggingface_hub`:
   - the commit: REVISION (default `main`). A 40-hex sha is a commit already; a branch or tag
     is asked of the hub once per process (`repo_info`) and remembered, so every later
     resolution in the run (a sweep's checkpoints, the reference model, the checks before
     scoring) gets the same commit. With `HF_HUB_OFFLINE=1`, or when the hub cannot be
     reached, the cache's `refs/<REVISION>` names it instead;
   - the files: the cache's `snapshots/<sha>/` folder (`HF_HUB_CACHE`, else `$HF_HOME/hub`,
     else ~/.cache/huggingface/hub). A file the run needs and the snapshot lacks is downloaded
     by `snapshot_download` (with the hub's progress bars), only the files `hub_files` picks
     (config, tokenizer, chat templates, safetensors; pickle only with --allow-pickle, *.py only
     with --trust-remote-code; a dataset's data files, never a loading script). A model comes
     in two steps, the small files first: the safetensors index decides which shards follow.
     The weight files come through `hub_resume` instead, into the same cache layout: a download
     killed halfway continues from its last byte (the client itself restarts a file at byte 0).
   The listing the hub sent for a commit is kept (`~/.cache/rmbench_fast/hub/`, or
   `$RMBENCH_FAST_CACHE/hub/`): an offline run picks the same files from it, and a snapshot
   that misses one (a download killed halfway) is said to be incomplete, not half used.

Every failure is a `HubError` (one line, exit 2): unknown repo, unknown revision, a gated or
private repo (accept the license, set HF_TOKEN), offline with nothing cached, not enough disk.
The token is read by `huggingface_hub` from HF_TOKEN or its login; this module never sees it
(hub_resume hands the client's own headers back to the client, and prints none of them), so no
message or metadata can carry it.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rmbench_fast.inputs.demo import default_cache_dir
from rmbench_fast.inputs.hub_files import (
    HubError,
    Listing,
    dataset_files,
    model_meta_files,
    model_weight_files,
)
from rmbench_fast.inputs.hub_resume import fetch_resumable, is_large

RepoType = Literal["model", "dataset"]

# `ORG/NAME` as the hub spells repo ids (letters, digits, '-', '_', '.'), then an optional
# `@REVISION` (a branch, tag or sha; a branch may hold '/', e.g. refs/pr/1).
_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<rev>[^\s@]+))?$")
_SHA = re.compile(r"^[0-9a-f]{40}$")
DEFAULT_REVISION = "main"


@dataclass(frozen=True)
class HubId:
    """`ORG/NAME[@REVISION]` as given; `revision` None means the default branch."""

    repo_id: str
    revision: str | None

    @property
    def asked(self) -> str:
        return f"{self.repo_id}@{self.revision}" if self.revision else self.repo_id


@dataclass(frozen=True)
class HubSnapshot:
    """A resolved id: the commit it names and the local files of that commit.

    path: the snapshot folder (a model), or the data file / folder inside it (a dataset).
    origin: "hub-cache" (every file was there) or "download" (some were fetched now).
    """

    repo_type: RepoType
    repo_id: str
    revision: str  # as asked; DEFAULT_REVISION when none was given
    sha: str
    path: Path
    origin: str
    files: tuple[str, ...]

    @property
    def label(self) -> str:
        """`ORG/NAME@sha7`, as the report and compare print it."""
        return f"{self.repo_id}@{self.sha[:7]}"

    @property
    def ref(self) -> str:
        """`ORG/NAME@<full sha>`: the exact commit, usable as an argument again."""
        return f"{self.repo_id}@{self.sha}"

    def meta(self) -> dict[str, Any]:
        """metrics.json's record of where the input came from."""
        return {
            "repo_type": self.repo_type,
            "repo_id": self.repo_id,
            "revision": self.revision,
            "sha": self.sha,
            "ref": self.ref,
            "label": self.label,
            "origin": self.origin,
            "path": str(self.path),
            "files": list(self.files),
        }


def parse_hub_id(text: str) -> HubId | None:
    """`ORG/NAME[@REVISION]` -> HubId; None for anything else (a path such as ./x, /x or a/b/c)."""
    m = _ID.match(text)
    if m is None or ".." in m.group("repo"):
        return None
    rev = m.group("rev")
    if rev is not None and any(part in ("", ".", "..") for part in rev.split("/")):
        return None  # a revision names a ref file in the cache: never a path outside it
    return HubId(m.group("repo"), rev)


def source_label(source: Mapping[str, Any] | None) -> str | None:
    """`ORG/NAME@sha7` from a `HubSnapshot.meta()` record (e.g. read back from metrics.json)."""
    if not source or not source.get("repo_id") or not source.get("sha"):
        return None
    return f"{source['repo_id']}@{str(source['sha'])[:7]}"


# One resolution of a branch or tag per process (a run, or a whole sweep): the key holds the
# endpoint and the cache folder, so a changed environment is a different key.
_COMMITS: dict[tuple[str, str, str, str, str], str] = {}


def forget_commits() -> None:
    """Drop the remembered branch/tag resolutions (for a new run in the same process)."""
    _COMMITS.clear()


def _hf() -> Any:
    # start-up cost: only a run that names a hub id imports the client (its submodules are lazy)
    import huggingface_hub
    import huggingface_hub.constants  # start-up cost: huggingface_hub
    import huggingface_hub.errors  # start-up cost: huggingface_hub
    import huggingface_hub.utils  # start-up cost: huggingface_hub

    return huggingface_hub


def hub_cache_dir() -> Path:
    """The hub cache folder huggingface_hub uses (HF_HUB_CACHE, else $HF_HOME/hub, ...)."""
    return Path(_hf().constants.HF_HUB_CACHE).expanduser()


def _offline() -> bool:
    constants = _hf().constants
    is_offline = getattr(constants, "is_offline_mode", None)
    return bool(is_offline() if callable(is_offline) else constants.HF_HUB_OFFLINE)


def _storage(repo_type: RepoType, repo_id: str) -> Path:
    """The cache's folder of one repo (`models--ORG--NAME`, `datasets--ORG--NAME`)."""
    return hub_cache_dir() / f"{repo_type}s--{repo_id.replace('/', '--')}"


def _listing_file(repo_type: RepoType, repo_id: str, sha: str) -> Path:
    return default_cache_dir() / "hub" / f"{repo_type}s--{repo_id.replace('/', '--')}" / f"{sha}.json"


def _write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_listing(repo_type: RepoType, repo_id: str, sha: str) -> Listing | None:
    try:
        files = json.loads(_listing_file(repo_type, repo_id, sha).read_text(encoding="utf-8"))["files"]
        return {str(k): (int(v) if isinstance(v, int) else None) for k, v in files.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _keep_listing(repo_type: RepoType, repo_id: str, sha: str, listing: Listing) -> None:
    """A commit's file list never changes: keep it for offline runs (best effort)."""
    try:
        doc = {"repo_type": repo_type, "repo_id": repo_id, "sha": sha, "files": listing}
        _write_text_atomic(_listing_file(repo_type, repo_id, sha), json.dumps(doc, indent=1) + "\n")
    except OSError:
        pass


def _cached_ref(repo_type: RepoType, repo_id: str, revision: str) -> str | None:
    """The commit the cache's refs/<revision> names (written by any earlier download)."""
    try:
        sha = (_storage(repo_type, repo_id) / "refs" / revision).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return sha if _SHA.match(sha) else None


def _write_ref(repo_type: RepoType, repo_id: str, revision: str, sha: str) -> None:
    """refs/<revision> -> sha, the cache's own record (a download by commit does not write it)."""
    if _SHA.match(revision) or _cached_ref(repo_type, repo_id, revision) == sha:
        return
    try:
        _write_text_atomic(_storage(repo_type, repo_id) / "refs" / revision, sha)
    except OSError:
        pass


def _snapshot_listing(folder: Path) -> Listing:
    """The files a snapshot folder holds (a snapshot cached by another tool, no listing kept)."""
    return {p.relative_to(folder).as_posix(): None for p in folder.rglob("*") if p.is_file()}


def _hub_error(exc: BaseException, kind: RepoType, ref: HubId, *, downloading: bool = False) -> HubError:
    """The one-line error for a failed hub request (nothing of the request's headers in it);
    `downloading`: the failure came while files were being fetched."""
    hf = _hf()
    errors = hf.errors
    endpoint = hf.constants.ENDPOINT
    page = f"{endpoint}/{'datasets/' if kind == 'dataset' else ''}{ref.repo_id}"
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, errors.GatedRepoError):
        return HubError(
            f"{kind} {ref.asked} is gated: accept its license on {page} and set HF_TOKEN to a token with access"
        )
    if isinstance(exc, errors.RevisionNotFoundError):
        return HubError(
            f"{kind} {ref.repo_id} has no revision {ref.revision or DEFAULT_REVISION!r} (a branch, tag or commit sha)"
        )
    if isinstance(exc, errors.RepositoryNotFoundError) or status in (401, 403):
        if status == 404:
            return HubError(
                f"no {kind} {ref.repo_id} on the hub ({endpoint}), and no local directory of that name"
            )
        return HubError(
            f"{kind} {ref.repo_id}: the hub refused access (HTTP {status}): it does not exist, or it is private or "
            f"gated; check the name, accept the license on {page} and set HF_TOKEN"
        )
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return HubError(f"{kind} {ref.asked}: no space left on the device of the hub cache {hub_cache_dir()}")
    if isinstance(exc, errors.HfHubHTTPError):
        return HubError(f"{kind} {ref.asked}: the hub answered HTTP {status}; try again later")
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    if downloading:
        return HubError(
            f"{kind} {ref.asked}: the download stopped ({type(exc).__name__}: {first}); run again to resume "
            "(the files, and the bytes of a weight file, already fetched are kept in the hub cache)"
        )
    return HubError(
        f"{kind} {ref.asked} is no local path, and the hub at {endpoint} cannot be reached ({type(exc).__name__}: "
        f"{first}) while the hub cache {hub_cache_dir()} does not hold it; check the path or the network, or set "
        "HF_HUB_OFFLINE=1 to use the cache only"
    )


def _ask_hub(kind: RepoType, ref: HubId, revision: str) -> tuple[str, Listing] | Exception:
    """(commit sha, listing) of `revision` from the hub; the error when the hub cannot be reached."""
    hf = _hf()
    try:
        info = hf.HfApi().repo_info(ref.repo_id, repo_type=kind, revision=revision, files_metadata=True)
    except hf.errors.HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status is not None and status >= 500:
            return e  # the hub is down: the cache may still have it
        raise _hub_error(e, kind, ref) from None
    except Exception as e:  # noqa: BLE001 - any transport error (its class depends on the client version)
        return e
    if not info.sha:
        raise HubError(f"{kind} {ref.asked}: the hub sent no commit sha for revision {revision!r}")
    listing: Listing = {s.rfilename: s.size for s in (info.siblings or [])}
    return str(info.sha), listing


def _free_bytes(folder: Path) -> int:
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def check_disk(where: str, names: list[str], listing: Listing) -> int:
    """The bytes `names` take (their listed sizes); HubError when the hub cache's disk has less free."""
    need = sum(listing.get(n) or 0 for n in names)
    cache = hub_cache_dir()
    free = _free_bytes(cache)
    if need > free:
        raise HubError(
            f"{where}: not enough disk space in the hub cache {cache}: the download needs "
            f"{need / 1e9:.2f} GB, {free / 1e9:.2f} GB are free (set HF_HUB_CACHE to another disk)"
        )
    return need


def _fetch(
    kind: RepoType, ref: HubId, sha: str, names: list[str], listing: Listing, log: Callable[[str], None]
) -> None:
    """Download `names` of commit `sha` into the cache: the small files by the hub's own client,
    the weight files by `fetch_resumable` (both with the client's progress bars)."""
    hf = _hf()
    need = check_disk(f"{kind} {ref.repo_id}@{sha[:7]}", names, listing)
    cache = hub_cache_dir()
    log(f"downloading {len(names)} file(s) of {ref.repo_id}@{sha[:7]} ({need / 1e6:.1f} MB) into {cache}")
    # The weight files resume per byte after a kill (hub_resume); the client restarts a file at
    # byte 0, which only matters for the large ones.
    large = [n for n in names if is_large(kind, n)]
    small = [n for n in names if n not in large]
    try:
        if small:
            patterns = [_glob_escape(n) for n in small]
            hf.snapshot_download(ref.repo_id, repo_type=kind, revision=sha, allow_patterns=patterns)
        for name in large:
            fetch_resumable(kind, ref.repo_id, sha, name, cache=cache, log=log)
    except HubError:
        raise
    except Exception as e:  # noqa: BLE001 - HTTP, transport and disk errors, each as one line
        raise _hub_error(e, kind, ref, downloading=True) from None


def _glob_escape(name: str) -> str:
    """A file name as an fnmatch pattern that matches only itself."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def _commit(kind: RepoType, ref: HubId, log: Callable[[str], None] = print) -> tuple[str, Listing | None]:
    """The commit `ref` names (once per process for a branch or tag), and the hub's listing of
    it when the hub was asked now."""
    revision = ref.revision or DEFAULT_REVISION
    key = (str(_hf().constants.ENDPOINT), str(hub_cache_dir()), kind, ref.repo_id, revision)
    if key in _COMMITS:
        return _COMMITS[key], None
    if _SHA.match(revision):
        _COMMITS[key] = revision
        return revision, None
    listing = None
    if _offline():
        sha = _cached_ref(kind, ref.repo_id, revision)
        if sha is None:
            raise HubError(
                f"{kind} {ref.asked}: HF_HUB_OFFLINE=1 and it is not in the hub cache {hub_cache_dir()}; run once "
                "without HF_HUB_OFFLINE to download it"
            )
    else:
        asked = _ask_hub(kind, ref, revision)
        if isinstance(asked, Exception):  # unreachable: fall back on what the cache says the revision is
            sha = _cached_ref(kind, ref.repo_id, revision)
            if sha is None:
                raise _hub_error(asked, kind, ref)
            log(f"note: the hub did not answer; {ref.asked} is the cached commit {sha[:7]}")
        else:
            sha, listing = asked
            _write_ref(kind, ref.repo_id, revision, sha)
    _COMMITS[key] = sha
    return sha, listing


def _snapshot_files(
    kind: RepoType,
    ref: HubId,
    choose: Callable[[Listing, Path, str], list[str]],
    log: Callable[[str], None],
) -> tuple[str, Path, list[str], str]:
    """(sha, snapshot folder, the chosen files, origin) with every chosen file present."""
    sha, listing = _commit(kind, ref, log)
    where = f"{ref.repo_id}@{sha[:7]}"
    folder = _storage(kind, ref.repo_id) / "snapshots" / sha
    if listing is not None:
        _keep_listing(kind, ref.repo_id, sha, listing)
    else:
        listing = _read_listing(kind, ref.repo_id, sha)
    if listing is None:
        if _offline():
            if not folder.is_dir():
                raise HubError(
                    f"{kind} {ref.asked}: HF_HUB_OFFLINE=1 and commit {sha[:7]} is not in the hub cache "
                    f"{hub_cache_dir()}; run once without HF_HUB_OFFLINE to download it"
                )
            listing = _snapshot_listing(folder)
        else:
            asked = _ask_hub(kind, ref, sha)
            if isinstance(asked, Exception):
                if not folder.is_dir():
                    raise _hub_error(asked, kind, ref)
                listing = _snapshot_listing(folder)
            else:
                listing = asked[1]
                _keep_listing(kind, ref.repo_id, sha, listing)
    origin = "hub-cache"
    chosen = choose(listing, folder, where)  # raises before anything is fetched (pickle-only, ...)
    missing = [n for n in chosen if not (folder / n).is_file()]
    if missing:
        if _offline():
            raise HubError(
                f"{kind} {where}: the cached snapshot is incomplete ({len(missing)} file(s) missing, e.g. "
                f"{missing[0]}) and HF_HUB_OFFLINE=1; run once without it to finish the download"
            )
        _fetch(kind, ref, sha, missing, listing, log)
        origin = "download"
        still = [n for n in chosen if not (folder / n).is_file()]
        if still:
            raise HubError(f"{kind} {where}: the download did not bring {still[0]}; run again to resume")
    return sha, folder, chosen, origin


def pin(text: str, repo_type: RepoType = "model") -> str:
    """`ORG/NAME[@branch or tag]` -> `ORG/NAME@<sha>` (the commit this run resolved it to), for
    work handed to other processes (Ray tasks) that must not resolve the branch again; a local
    path or a non-id is returned as it is."""
    ref = None if Path(text).expanduser().exists() else parse_hub_id(text)
    if ref is None:
        return text
    return f"{ref.repo_id}@{_commit(repo_type, ref)[0]}"


def resolve_model(
    text: str,
    *,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> tuple[Path, HubSnapshot | None]:
    """A model argument -> (its directory, the hub snapshot or None for a local directory).

    Not a local path and not an id: (the path, None), so the caller's own "does not exist" error
    names it. The small files come first, then the weights the index names."""
    local = Path(text).expanduser()
    ref = None if local.exists() else parse_hub_id(text)
    if ref is None:
        return local, None
    if not progress:
        _hf().utils.disable_progress_bars()

    def small(listing: Listing, folder: Path, where: str) -> list[str]:
        if "config.json" not in listing:
            raise HubError(f"model {where} has no config.json (is it a model repo?)")
        names = model_meta_files(listing, trust_remote_code=trust_remote_code)
        # Refuse pickle-only weights, and a download the disk cannot hold, before any byte
        # moves (the index is not here yet: every top-level weight file counts).
        later = model_weight_files(listing, folder, where, allow_pickle=allow_pickle)
        check_disk(f"model {where}", [n for n in names + later if not (folder / n).is_file()], listing)
        return names

    def weights(listing: Listing, folder: Path, where: str) -> list[str]:
        return small(listing, folder, where) + model_weight_files(
            listing, folder, where, allow_pickle=allow_pickle
        )

    first = _snapshot_files("model", ref, small, log)[3]  # the index is here before the weights are chosen
    sha, folder, files, origin = _snapshot_files("model", ref, weights, log)
    origin = "download" if "download" in (first, origin) else origin
    rev = ref.revision or DEFAULT_REVISION
    snap = HubSnapshot("model", ref.repo_id, rev, sha, folder, origin, tuple(files))
    return folder, snap


def resolve_dataset(
    text: str, *, progress: bool = True, log: Callable[[str], None] = print
) -> tuple[Path, HubSnapshot | None]:
    """A `--data` argument -> (the path to load, the hub snapshot or None for a local path)."""
    local = Path(text).expanduser()
    ref = None if local.exists() else parse_hub_id(text)
    if ref is None:
        return local, None
    if not progress:
        _hf().utils.disable_progress_bars()
    load: list[str] = []

    def choose(listing: Listing, _folder: Path, where: str) -> list[str]:
        files, path = dataset_files(listing, where)
        load[:] = [path]
        return files

    sha, folder, files, origin = _snapshot_files("dataset", ref, choose, log)
    path = folder / load[0] if load[0] else folder
    rev = ref.revision or DEFAULT_REVISION
    return path, HubSnapshot("dataset", ref.repo_id, rev, sha, path, origin, tuple(files))
