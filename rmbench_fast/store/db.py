"""A crash-safe SQLite store of per-sequence results: resume after kill -9, reuse across runs.

One file (`results.sqlite`, by default in the user cache directory next to the demo model:
`$RMBENCH_FAST_CACHE/results.sqlite`, else `~/.cache/rmbench_fast/results.sqlite`) holds, for
every model setup ("scope") and every batch the engine computed, each sequence's three float64
values. Only the standard library's `sqlite3` is used.

Its keys (`scope_key`, `seq_key_of`, `batch_key`, ...) and values are described in `keys`, model
fingerprints in `fingerprint`.

API for the engine
------------------
::

    store = open_store(path_or_None)          # None: default_store_path(); caller skips it for --no-cache
    fp = store.fingerprint_model(model_dir)   # hashes weights once; reruns only stat them
    scope = store.scope({"model": fp, "tokenizer": tok_fp, "kind": "dpo", "dtype": "bfloat16",
                         "device": "cuda", "attn": "sdpa", "kernel": "triton", "fp32_scores": False},
                        label=str(model_dir))
    for batch in plan:                        # the same deterministic plan on every run
        keys = [seq_key_of(s) for s in batch.seqs]
        bk = batch_key(keys, layout)
        values = store.get_batch(scope, bk, keys)       # exact: this batch was stored
        if values is None:
            values = compute(batch)                     # float64 [n, 3]
            store.put_batch(scope, bk, keys, values)    # one transaction: all rows or none
    # Reuse across a different batching (exact only up to rounding; report the count in meta):
    values, found, other = store.get_seqs(scope, keys, expected=bk)

- `put_batch` writes the batch row and all its sequence rows in one `BEGIN IMMEDIATE`
  transaction, so after a kill at any point a batch is either fully stored or absent. Writing a
  batch that is already stored (same scope and key, same sequences) changes nothing and returns
  False; the first stored values win.
- `get_batch` returns the values only if that exact batch (key and ordered sequence list) is
  stored, else None.
- `get_seqs` looks sequences up one by one, whatever batch they were stored with: values
  `[n, 3]` (NaN where missing), `found [n]` and `from_other_batch [n]` (True where the value came
  from a batch other than `expected`; with `expected=None`, every found value counts as from
  another batch). Among several stored copies of a sequence it takes the one from the expected
  batch, else the earliest stored one, so later writes never change an answer.
- `batch_keys(scope)` lists the stored batches (for progress), `check()` runs SQLite's
  integrity check plus the store's own (every batch complete), `info()` summarises,
  `clear(model_fingerprint=None)` deletes, `close()` (or a `with` block) closes.
- `admin.cache_command(action, path, console)` implements `python -m rmbench_fast cache {info,clear}`.

Errors
------
A file that is not SQLite, is truncated, is some other program's SQLite database, or was written
by another schema version raises `StoreError` (a `UsageError`: exit code 2 and one line) naming
the file and saying how to move it aside (`mv FILE FILE.bad`, or `--no-cache`). So does an SQLite
error later on (disk full, a damaged page, a lock held for longer than the busy timeout).

Concurrency and durability
--------------------------
WAL mode, `BEGIN IMMEDIATE` for every write and a 60 s busy timeout: several processes on one
host (data-parallel ranks, Ray tasks) can share one store; writers take turns, readers never
block, and no row is lost. `synchronous=NORMAL`: a killed process loses at most its uncommitted
batch; a power loss may also lose the last committed ones, never consistency. Open one
`ResultStore` per process (a store refuses to be pickled or used after a fork) and per thread.

**WAL does not work over network filesystems** (NFS, SMB, Lustre, ...): its shared-memory index
needs every process on one host with a local file system. On a cluster, give each node its own
store file (`--cache-dir` on local disk).

Model fingerprints read every weight file once; each file's sha256 is remembered in the store
(table `file_hashes`) by its resolved path, size, mtime, ctime, inode and device, so a rerun
only stats the files. A file changed in the last `RACY_WINDOW_NS` before it was hashed is not
remembered (its timestamps cannot yet tell a later same-size rewrite apart, git's "racy" case).
"""

from __future__ import annotations

import json
import os
import shlex
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from rmbench_fast import __version__
from rmbench_fast.errors import ModelError, UsageError
from rmbench_fast.inputs.demo import default_cache_dir
from rmbench_fast.store import fingerprint
from rmbench_fast.store.keys import canonical_json, key_bytes, scope_key
from rmbench_fast.store.summary import ScopeInfo, StoreInfo

SCHEMA_VERSION = 1
STORE_FILE = "results.sqlite"
# SQLite header field identifying the file as ours ("RMBF").
APPLICATION_ID = 0x524D4246
BUSY_TIMEOUT_S = 60.0
# A file whose mtime/ctime is this recent when hashed is not memoized (see module docstring).
RACY_WINDOW_NS = 2_000_000_000
KINDS = ("dpo", "classifier")
_VALUE_BYTES = 24  # 3 x float64
_IN_CHUNK = 500  # parameters per `IN (...)` query
_REQUIRED_TABLES = frozenset({"meta", "scopes", "batches", "seqs", "file_hashes"})

_SCHEMA = f"""
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE scopes (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    model TEXT NOT NULL,
    kind TEXT NOT NULL,
    parts TEXT NOT NULL,
    label TEXT,
    created REAL NOT NULL,
    used REAL NOT NULL
);
CREATE INDEX scopes_by_model ON scopes (model);
CREATE TABLE batches (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    scope_id INTEGER NOT NULL,
    key BLOB NOT NULL,
    n INTEGER NOT NULL,
    created REAL NOT NULL,
    UNIQUE (scope_id, key)
);
CREATE TABLE seqs (
    batch_id INTEGER NOT NULL,
    pos INTEGER NOT NULL,
    scope_id INTEGER NOT NULL,
    key BLOB NOT NULL,
    v BLOB NOT NULL,
    PRIMARY KEY (batch_id, pos)
) WITHOUT ROWID;
CREATE INDEX seqs_by_key ON seqs (scope_id, key);
CREATE TABLE file_hashes (
    path TEXT PRIMARY KEY,
    stat TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    hashed REAL NOT NULL
) WITHOUT ROWID;
PRAGMA application_id = {APPLICATION_ID};
"""
# Generative judges' answers (judge/runner.py): added to schema 1 stores on first open (an
# additive table; older rmbench_fast versions ignore it).
_JUDGMENTS = """
CREATE TABLE IF NOT EXISTS judgments (
    key BLOB PRIMARY KEY,
    judge TEXT NOT NULL,
    response TEXT NOT NULL,
    created REAL NOT NULL
) WITHOUT ROWID
"""


class StoreError(UsageError):
    """The results store cannot be used (corrupt, foreign, other schema, locked, disk full).

    One line naming the file and how to move it aside; the CLI exits with code 2.
    """


def default_store_path() -> Path:
    """`$RMBENCH_FAST_STORE` (a file or directory) if set, else `$RMBENCH_FAST_CACHE/results.sqlite`,
    else `~/.cache/rmbench_fast/results.sqlite`."""
    override = os.environ.get("RMBENCH_FAST_STORE")
    if override:
        p = Path(override).expanduser()
        return p / STORE_FILE if p.is_dir() else p
    return default_cache_dir() / STORE_FILE


def resolve_store_path(path: Path | str | None) -> Path:
    """The store file for `path`: None -> `default_store_path()`; a directory (existing, e.g.
    `--cache-dir`) -> `DIR/results.sqlite`; anything else is the file itself."""
    if path is None:
        return default_store_path()
    p = Path(path).expanduser()
    return p / STORE_FILE if p.is_dir() else p


def open_store(path: Path | str | None = None) -> ResultStore:
    """Open (creating if needed) the store at `resolve_store_path(path)`.

    For `--no-cache` the caller does not call this at all.
    """
    return ResultStore(resolve_store_path(path))


def _move_aside_hint(path: Path) -> str:
    q = shlex.quote(str(path))
    return f"move it aside (mv {q} {q}.bad) or run with --no-cache"


def _check_header(path: Path) -> None:
    """Refuse a file that is not SQLite, or is shorter than its header says (truncated)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StoreError(f"cannot read results store ({exc.strerror or exc})", file=str(path)) from None
    if size == 0:
        return  # an empty file is an empty SQLite database: initialized on open
    try:
        with open(path, "rb") as f:
            header = f.read(100)
    except OSError as exc:
        raise StoreError(f"cannot read results store ({exc.strerror or exc})", file=str(path)) from None
    if len(header) < 100 or not header.startswith(b"SQLite format 3\0"):
        raise StoreError(f"not an SQLite results store; {_move_aside_hint(path)}", file=str(path))
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    n_pages = int.from_bytes(header[28:32], "big")
    change_counter = header[24:28]
    valid_for = header[92:96]
    # The in-header page count is valid when the change counter matches "version-valid-for". With
    # a non-empty WAL beside it, a checkpoint may be under way (or was killed): SQLite recovers
    # from the WAL then, and a real truncation shows as an SQLite error later (see _guard).
    try:
        wal_size = os.stat(f"{path}-wal").st_size
    except OSError:
        wal_size = 0
    if n_pages and change_counter == valid_for and not wal_size and size < n_pages * page_size:
        raise StoreError(
            f"results store is truncated ({size} bytes, its header says {n_pages * page_size}); "
            f"{_move_aside_hint(path)}",
            file=str(path),
        )


class ResultStore:
    """The results store in one SQLite file. See the module docstring for the model.

    Open with `open_store(path)`; use as a context manager or call `close()`.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._pid = os.getpid()
        self._scopes: dict[str, tuple[str, str, str, str | None]] = {}  # key -> model, kind, json, label
        self._db: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create the results store directory ({exc.strerror or exc})", file=str(self.path)
            ) from None
        _check_header(self.path)
        try:
            self._db = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open results store ({exc})", file=str(self.path)) from None
        try:
            with self._guard():
                mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise StoreError(
                        f"results store cannot use WAL mode (got {mode!r}; a network file system?); "
                        "put it on a local disk (--cache-dir) or run with --no-cache",
                        file=str(self.path),
                    )
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._init_or_check()
        except BaseException:
            self._db.close()
            self._db = None
            raise

    # -- plumbing ------------------------------------------------------------------------------

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> Any:
        raise TypeError("a ResultStore cannot be pickled; open the store in each process (open_store)")

    def __repr__(self) -> str:
        return f"ResultStore({str(self.path)!r})"

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._db is not None and os.getpid() == self._pid:
            self._db.close()
        self._db = None

    @property
    def db(self) -> sqlite3.Connection:
        """The open connection (for tests and diagnostics)."""
        if self._db is None:
            raise StoreError("results store is closed", file=str(self.path))
        if os.getpid() != self._pid:
            raise StoreError(
                "results store opened in another process (after fork); open it in each process",
                file=str(self.path),
            )
        return self._db

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """SQLite errors -> StoreError naming the file (programming errors pass through)."""
        try:
            yield
        except (sqlite3.ProgrammingError, sqlite3.InterfaceError):
            raise
        except sqlite3.Error as exc:
            text = str(exc)
            if "locked" in text or "busy" in text:
                msg = f"results store is locked by another process for more than {BUSY_TIMEOUT_S:.0f} s ({text})"
                raise StoreError(msg, file=str(self.path)) from None
            if "full" in text:
                raise StoreError(f"cannot write results store ({text})", file=str(self.path)) from None
            raise StoreError(
                f"results store is damaged or unreadable ({text}); {_move_aside_hint(self.path)}",
                file=str(self.path),
            ) from None

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One `BEGIN IMMEDIATE` transaction: committed on success, rolled back on any exception."""
        db = self.db
        with self._guard():
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: one consistent snapshot for several statements."""
        db = self.db
        with self._guard():
            db.execute("BEGIN")
            try:
                yield db
            finally:
                if db.in_transaction:
                    db.execute("COMMIT")

    def _foreign(self, why: str) -> StoreError:
        return StoreError(
            f"not an rmbench_fast results store ({why}); {_move_aside_hint(self.path)}", file=str(self.path)
        )

    def _init_or_check(self) -> None:
        db = self.db
        app_id = db.execute("PRAGMA application_id").fetchone()[0]
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if app_id == 0 and not tables:
            with self._write():
                # Re-check under the write lock: another process may have just created it.
                if not db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                    for stmt in _SCHEMA.split(";"):
                        if stmt.strip():
                            db.execute(stmt)
                    db.executemany(
                        "INSERT INTO meta (key, value) VALUES (?, ?)",
                        [
                            ("schema_version", str(SCHEMA_VERSION)),
                            ("created_by", f"rmbench_fast {__version__}"),
                            ("created", f"{time.time():.3f}"),
                        ],
                    )
            app_id = db.execute("PRAGMA application_id").fetchone()[0]
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if app_id != APPLICATION_ID:
            shown = ", ".join(sorted(tables)[:5]) or "none"
            raise self._foreign(f"an SQLite database with other tables: {shown}")
        missing = _REQUIRED_TABLES - tables
        if "meta" in missing:
            raise self._foreign("no meta table")
        row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        try:
            version = int(row[0]) if row is not None else None
        except ValueError:
            version = None
        if version is None:
            raise self._foreign("no schema version")
        if version != SCHEMA_VERSION:
            newer = "a newer" if version > SCHEMA_VERSION else "an older"
            raise StoreError(
                f"results store has schema version {version} (written by {newer} rmbench_fast), this "
                f"rmbench_fast {__version__} uses {SCHEMA_VERSION}; {_move_aside_hint(self.path)}",
                file=str(self.path),
            )
        if missing:
            raise self._foreign(f"missing tables: {', '.join(sorted(missing))}")
        if "judgments" not in tables:
            with self._write():
                db.execute(_JUDGMENTS)

    # -- scopes --------------------------------------------------------------------------------

    def scope(self, parts: Mapping[str, Any], *, label: str | None = None) -> str:
        """Register a scope and return its key (`scope_key(**parts)`).

        `parts` must hold `model` (a fingerprint string) and `kind` ("dpo" or "classifier"), plus
        every other setting that decides a result. `label` (e.g. the model path) is for display only.
        """
        parts = dict(parts)
        model, kind = parts.get("model"), parts.get("kind")
        if not isinstance(model, str) or not model:
            raise ValueError("scope parts need 'model': the model fingerprint (fingerprint_model)")
        if kind not in KINDS:
            raise ValueError(f"scope parts need 'kind' in {KINDS}, got {kind!r}")
        key = scope_key(**parts)
        self._scopes[key] = (model, kind, canonical_json(parts), label)
        with self._write() as db:
            self._upsert_scope(db, key)
        return key

    def _upsert_scope(self, db: sqlite3.Connection, key: str) -> int:
        model, kind, parts_json, label = self._scopes[key]
        now = time.time()
        db.execute(
            "INSERT INTO scopes (key, model, kind, parts, label, created, used) VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET used = excluded.used, label = coalesce(excluded.label, label)",
            (key, model, kind, parts_json, label, now, now),
        )
        return int(db.execute("SELECT id FROM scopes WHERE key = ?", (key,)).fetchone()[0])

    def _scope_id(self, db: sqlite3.Connection, scope: str, *, create: bool) -> int | None:
        row = db.execute("SELECT id FROM scopes WHERE key = ?", (scope,)).fetchone()
        if row is not None:
            return int(row[0])
        if create and scope in self._scopes:  # cleared by another process meanwhile: re-register
            return self._upsert_scope(db, scope)
        if create:
            raise ValueError(f"unknown scope {scope[:12]}...; register it with ResultStore.scope() first")
        return None

    # -- batches -------------------------------------------------------------------------------

    def put_batch(self, scope: str, batch_key: str, seq_keys: Sequence[str], values: np.ndarray) -> bool:
        """Store one batch: its row and all its sequences' values (`[n, 3]` float64) in one transaction.

        Returns True if written, False if this batch (same scope, key and sequences) was already
        stored (nothing changes). The same key with other sequences raises ValueError.
        """
        bkey = key_bytes(batch_key, "batch key")
        keys = [key_bytes(k, "sequence key") for k in seq_keys]
        vals = np.asarray(values)
        if vals.dtype != np.float64:
            raise TypeError(f"values must be float64, got {vals.dtype}")
        if vals.ndim != 2 or vals.shape[1] != 3 or vals.shape[0] != len(keys) or not keys:
            raise ValueError(f"values must have shape [n, 3] with n = {len(keys)} >= 1, got {vals.shape}")
        raw = np.ascontiguousarray(vals, dtype="<f8").tobytes()
        blobs = [raw[i * _VALUE_BYTES : (i + 1) * _VALUE_BYTES] for i in range(len(keys))]
        with self._write() as db:
            sid = self._scope_id(db, scope, create=True)
            row = db.execute("SELECT id FROM batches WHERE scope_id = ? AND key = ?", (sid, bkey)).fetchone()
            if row is not None:
                stored = [
                    r[0] for r in db.execute("SELECT key FROM seqs WHERE batch_id = ? ORDER BY pos", row)
                ]
                if stored != keys:
                    raise ValueError(f"batch {batch_key[:12]}... is stored with other sequences")
                return False
            cur = db.execute(
                "INSERT INTO batches (scope_id, key, n, created) VALUES (?, ?, ?, ?)",
                (sid, bkey, len(keys), time.time()),
            )
            bid = cur.lastrowid
            db.executemany(
                "INSERT INTO seqs (batch_id, pos, scope_id, key, v) VALUES (?, ?, ?, ?, ?)",
                [(bid, i, sid, k, b) for i, (k, b) in enumerate(zip(keys, blobs))],
            )
        return True

    def _decode(self, blobs: Sequence[bytes]) -> np.ndarray:
        if any(not isinstance(b, bytes) or len(b) != _VALUE_BYTES for b in blobs):
            raise StoreError(
                f"results store holds a malformed value; {_move_aside_hint(self.path)}", file=str(self.path)
            )
        return np.frombuffer(b"".join(blobs), dtype="<f8").astype(np.float64).reshape(len(blobs), 3)

    def get_batch(self, scope: str, batch_key: str, seq_keys: Sequence[str]) -> np.ndarray | None:
        """The values `[n, 3]` of this exact batch (same key, same sequences in order), else None."""
        bkey = key_bytes(batch_key, "batch key")
        keys = [key_bytes(k, "sequence key") for k in seq_keys]
        with self._guard():
            rows = self.db.execute(
                "SELECT b.n, s.key, s.v FROM scopes c JOIN batches b ON b.scope_id = c.id "
                "JOIN seqs s ON s.batch_id = b.id WHERE c.key = ? AND b.key = ? ORDER BY s.pos",
                (scope, bkey),
            ).fetchall()
        if not rows or rows[0][0] != len(rows) or [r[1] for r in rows] != keys:
            return None
        return self._decode([r[2] for r in rows])

    def batch_keys(self, scope: str) -> set[str]:
        """The keys of the batches stored for `scope`."""
        with self._guard():
            rows = self.db.execute(
                "SELECT b.key FROM batches b JOIN scopes c ON b.scope_id = c.id WHERE c.key = ?", (scope,)
            ).fetchall()
        return {r[0].hex() for r in rows}

    def get_seqs(
        self, scope: str, seq_keys: Sequence[str], expected: str | Sequence[str | None] | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Look sequences up whatever batch stored them.

        Returns `(values [n, 3] float64, found [n] bool, from_other_batch [n] bool)`; values of
        missing sequences are NaN. `expected` is the batch key each sequence would be computed in
        (one key for all, or one per sequence, or None): a copy stored with it is preferred and
        counts as not from another batch. Otherwise the earliest stored copy is used.
        """
        n = len(seq_keys)
        keys = [key_bytes(k, "sequence key") for k in seq_keys]
        if expected is None or isinstance(expected, str):
            exp_list: list[bytes | None] = [
                None if expected is None else key_bytes(expected, "batch key")
            ] * n
        else:
            if len(expected) != n:
                raise ValueError(f"expected has {len(expected)} batch keys for {n} sequences")
            exp_list = [None if e is None else key_bytes(e, "batch key") for e in expected]
        values = np.full((n, 3), np.nan, dtype=np.float64)
        found = np.zeros(n, dtype=bool)
        other = np.zeros(n, dtype=bool)
        if n == 0:
            return values, found, other
        # key -> list of (batch id, batch key, value blob), earliest batch first
        copies: dict[bytes, list[tuple[int, bytes, bytes]]] = {}
        unique = list(dict.fromkeys(keys))
        with self._read() as db:
            sid = self._scope_id(db, scope, create=False)
            if sid is None:
                return values, found, other
            for i in range(0, len(unique), _IN_CHUNK):
                chunk = unique[i : i + _IN_CHUNK]
                marks = ",".join("?" * len(chunk))
                for k, bid, bk, v in db.execute(
                    "SELECT s.key, s.batch_id, b.key, s.v FROM seqs s JOIN batches b ON b.id = s.batch_id "
                    f"WHERE s.scope_id = ? AND s.key IN ({marks}) ORDER BY s.batch_id, s.pos",
                    (sid, *chunk),
                ):
                    copies.setdefault(k, []).append((bid, bk, v))
        blobs: list[bytes] = []
        rows: list[int] = []
        for i, (k, exp) in enumerate(zip(keys, exp_list)):
            cands = copies.get(k)
            if not cands:
                continue
            pick = next((c for c in cands if exp is not None and c[1] == exp), None)
            found[i] = True
            other[i] = pick is None
            blobs.append((pick or cands[0])[2])
            rows.append(i)
        if rows:
            values[rows] = self._decode(blobs)
        return values, found, other

    # -- model fingerprints --------------------------------------------------------------------

    def fingerprint_model(self, model_dir: Path | str, files: Sequence[str] | None = None) -> str:
        """`fingerprint_model(model_dir, store=self, files=files)`."""
        return fingerprint.fingerprint_model(model_dir, store=self, files=files)

    def file_hash(self, path: Path) -> str:
        """sha256 of a file, from the memo when its stat is unchanged, else read and remembered."""
        real = path.resolve()
        try:
            st = real.stat()
        except OSError as exc:
            raise ModelError(f"{path}: cannot read model file ({exc.strerror or exc})") from None
        skey = fingerprint.stat_key(st)
        with self._guard():
            row = self.db.execute(
                "SELECT stat, sha256 FROM file_hashes WHERE path = ?", (str(real),)
            ).fetchone()
        if row is not None and row[0] == skey:
            return str(row[1])
        started = time.time_ns()
        try:
            digest = fingerprint.hash_file(real)
            after = real.stat()
        except OSError as exc:
            raise ModelError(f"{path}: cannot read model file ({exc.strerror or exc})") from None
        settled = max(st.st_mtime_ns, st.st_ctime_ns) <= started - RACY_WINDOW_NS
        if fingerprint.stat_key(after) == skey and settled:
            with self._write() as db:
                db.execute(
                    "INSERT OR REPLACE INTO file_hashes (path, stat, sha256, hashed) VALUES (?, ?, ?, ?)",
                    (str(real), skey, digest, time.time()),
                )
        return digest

    # -- generative judges ---------------------------------------------------------------------

    def put_judgment(self, key: str, judge: str, response: Mapping[str, Any]) -> bool:
        """Store one judge answer under `key` (a 64-hex request key made with the judge's store
        identity, see `judge_key`), in its own transaction. The first stored answer wins: writing
        a key again changes nothing and returns False."""
        blob = key_bytes(key, "judgment key")
        text = json.dumps(dict(response), ensure_ascii=False, sort_keys=True)
        with self._write() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO judgments (key, judge, response, created) VALUES (?, ?, ?, ?)",
                (blob, judge, text, time.time()),
            )
            return cur.rowcount == 1

    def get_judgments(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The stored answers among `keys`: key -> the response dict given to `put_judgment`."""
        blobs = {key_bytes(k, "judgment key"): k for k in keys}
        found: dict[str, dict[str, Any]] = {}
        items = list(blobs)
        with self._read() as db:
            for i in range(0, len(items), _IN_CHUNK):
                chunk = items[i : i + _IN_CHUNK]
                marks = ",".join("?" * len(chunk))
                for blob, text in db.execute(
                    f"SELECT key, response FROM judgments WHERE key IN ({marks})", chunk
                ):
                    try:
                        found[blobs[bytes(blob)]] = json.loads(text)
                    except json.JSONDecodeError:
                        continue  # unreadable: asked again
        return found

    def judgment_count(self) -> int:
        with self._read() as db:
            return int(db.execute("SELECT count(*) FROM judgments").fetchone()[0])

    # -- maintenance ---------------------------------------------------------------------------

    def size_bytes(self) -> int:
        """Bytes on disk: the database file and its -wal and -shm files."""
        total = 0
        for suffix in ("", "-wal", "-shm"):
            try:
                total += os.stat(f"{self.path}{suffix}").st_size
            except OSError:
                pass
        return total

    def info(self) -> StoreInfo:
        """Size, and per scope (with its settings dict) the number of batches and sequences."""
        with self._read() as db:
            rows = db.execute(
                "SELECT c.key, c.model, c.kind, c.parts, c.label, c.created, c.used, "
                "count(b.id), coalesce(sum(b.n), 0) FROM scopes c LEFT JOIN batches b ON b.scope_id = c.id "
                "GROUP BY c.id ORDER BY c.id"
            ).fetchall()
            n_files = int(db.execute("SELECT count(*) FROM file_hashes").fetchone()[0])
            n_judged = int(db.execute("SELECT count(*) FROM judgments").fetchone()[0])
        scopes = []
        for key, model, kind, parts, label, created, used, nb, ns in rows:
            try:
                parts_dict = json.loads(parts)
            except json.JSONDecodeError:
                parts_dict = {}
            scopes.append(ScopeInfo(key, model, kind, parts_dict, label, int(nb), int(ns), created, used))
        return StoreInfo(self.path, self.size_bytes(), SCHEMA_VERSION, n_files, tuple(scopes), n_judged)

    def clear(self, model_fingerprint: str | None = None) -> tuple[int, int]:
        """Delete the results of one model (its fingerprint, or a unique prefix of it), or everything
        (results and file hashes) when None. Returns (batches, sequences) deleted."""
        with self._write() as db:
            if model_fingerprint is None:
                nb, ns = db.execute("SELECT count(*), coalesce(sum(n), 0) FROM batches").fetchone()
                for table in ("seqs", "batches", "scopes", "file_hashes", "judgments"):
                    db.execute(f"DELETE FROM {table}")
            else:
                models = [
                    r[0]
                    for r in db.execute(
                        "SELECT DISTINCT model FROM scopes WHERE substr(model, 1, ?) = ?",
                        (len(model_fingerprint), model_fingerprint),
                    )
                ]
                if len(models) > 1:
                    raise StoreError(
                        f"model prefix {model_fingerprint!r} matches {len(models)} models; give more digits",
                        file=str(self.path),
                    )
                ids = "SELECT id FROM scopes WHERE model = ?"
                arg = (models[0] if models else "",)
                nb, ns = db.execute(
                    f"SELECT count(*), coalesce(sum(n), 0) FROM batches WHERE scope_id IN ({ids})", arg
                ).fetchone()
                db.execute(f"DELETE FROM seqs WHERE scope_id IN ({ids})", arg)
                db.execute(f"DELETE FROM batches WHERE scope_id IN ({ids})", arg)
                db.execute("DELETE FROM scopes WHERE model = ?", arg)
        if model_fingerprint is None:
            try:  # give the space back; best effort (another process may be reading)
                self.db.execute("VACUUM")
                self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.OperationalError:
                pass
        return int(nb), int(ns)

    def check(self) -> list[str]:
        """Problems found (empty when sound): SQLite's integrity check, then every batch complete
        (n sequence rows at positions 0..n-1), no orphan rows, every value 24 bytes."""
        with self._read() as db:
            problems = [r[0] for r in db.execute("PRAGMA integrity_check") if r[0] != "ok"]
            bad = db.execute(
                "SELECT b.id, b.n, count(s.pos), min(s.pos), max(s.pos) FROM batches b "
                "LEFT JOIN seqs s ON s.batch_id = b.id GROUP BY b.id "
                "HAVING count(s.pos) != b.n OR min(s.pos) != 0 OR max(s.pos) != b.n - 1"
            ).fetchall()
            problems += [f"batch {r[0]}: {r[2]} of {r[1]} sequence rows" for r in bad]
            orphans = db.execute(
                "SELECT count(*) FROM seqs WHERE batch_id NOT IN (SELECT id FROM batches)"
            ).fetchone()[0]
            if orphans:
                problems.append(f"{orphans} sequence rows without a batch")
            lost = db.execute("SELECT count(*) FROM batches WHERE scope_id NOT IN (SELECT id FROM scopes)")
            if n := lost.fetchone()[0]:
                problems.append(f"{n} batches without a scope")
            mismatched = db.execute(
                "SELECT count(*) FROM seqs s JOIN batches b ON b.id = s.batch_id WHERE s.scope_id != b.scope_id"
            ).fetchone()[0]
            if mismatched:
                problems.append(f"{mismatched} sequence rows with another scope than their batch")
            if n := db.execute(f"SELECT count(*) FROM seqs WHERE length(v) != {_VALUE_BYTES}").fetchone()[0]:
                problems.append(f"{n} malformed values")
        return problems


__all__ = [
    "APPLICATION_ID",
    "BUSY_TIMEOUT_S",
    "SCHEMA_VERSION",
    "STORE_FILE",
    "ResultStore",
    "StoreError",
    "default_store_path",
    "open_store",
    "resolve_store_path",
]
