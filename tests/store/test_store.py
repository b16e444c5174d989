"""The results store (rmbench_fast.store.db): keys, bit-exact values, batches, fingerprints,
corruption, concurrency and crash safety (SIGKILL in the middle of a transaction)."""

from __future__ import annotations

import io
import json
import multiprocessing as mp
import os
import pickle
import queue
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from rmbench_fast.errors import RMBenchError, UsageError
from rmbench_fast.records import TokSeq
from rmbench_fast.store import db as store_mod
from rmbench_fast.store import fingerprint
from rmbench_fast.store.admin import cache_command
from rmbench_fast.store.db import SCHEMA_VERSION, ResultStore, StoreError, default_store_path, open_store
from rmbench_fast.store.fingerprint import fingerprint_model, model_files
from rmbench_fast.store.keys import batch_key, classifier_values, judge_key, scope_key, seq_key, seq_key_of
from tests.helpers.paths import REPO

SEQS_PER_BATCH = 32
WAIT_S = 60.0


def make_batch(i: int, n: int = SEQS_PER_BATCH) -> tuple[list[str], str, np.ndarray]:
    """Batch number i: deterministic sequence keys, batch key and values (shared with children)."""
    keys = [seq_key([i, j, 7, 11], 1) for j in range(n)]
    values = np.arange(n * 3, dtype=np.float64).reshape(n, 3) * 0.25 + i * 1e3 + 1.0 / 3.0
    values[:, 2] = -values[:, 2]
    return keys, batch_key(keys, {"i": i}), values


def _scope(store: ResultStore, model: str = "f" * 64, **extra: object) -> str:
    return store.scope({"model": model, "kind": "dpo", "dtype": "float32", "device": "cpu", **extra})


@pytest.fixture
def store(tmp_path: Path):
    s = open_store(tmp_path / "results.sqlite")
    yield s
    s.close()


def _put(s: ResultStore, scope: str, i: int) -> bool:
    keys, bk, values = make_batch(i)
    return s.put_batch(scope, bk, keys, values)


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float64).view(np.uint64)


# --------------------------------------------------------------------------------------------
# Paths and opening


def test_default_store_path_follows_the_demo_cache_dir(monkeypatch, tmp_path: Path) -> None:
    # $RMBENCH_FAST_STORE (which tests/conftest.py sets for every test) wins over the cache dir.
    monkeypatch.setenv("RMBENCH_FAST_STORE", str(tmp_path / "own.sqlite"))
    assert default_store_path() == tmp_path / "own.sqlite"
    monkeypatch.delenv("RMBENCH_FAST_STORE")
    monkeypatch.setenv("RMBENCH_FAST_CACHE", str(tmp_path / "c"))
    assert default_store_path() == tmp_path / "c" / "results.sqlite"
    monkeypatch.delenv("RMBENCH_FAST_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_store_path() == tmp_path / "home" / ".cache" / "rmbench_fast" / "results.sqlite"


def test_open_store_creates_a_wal_store_with_its_schema_version(tmp_path: Path) -> None:
    with open_store(tmp_path) as s:  # a directory: DIR/results.sqlite
        assert s.path == tmp_path / "results.sqlite"
        assert s.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        row = s.db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        assert row == (str(SCHEMA_VERSION),)
    with open_store(tmp_path / "deeper" / "x.sqlite") as s:  # parents are created
        assert s.path.is_file()
        assert s.info().scopes == ()


def test_empty_file_is_initialized(tmp_path: Path) -> None:
    p = tmp_path / "results.sqlite"
    p.write_bytes(b"")
    with open_store(p) as s:
        assert s.check() == []


def test_store_refuses_pickling(store: ResultStore) -> None:
    with pytest.raises(TypeError, match="each process"):
        pickle.dumps(store)


# --------------------------------------------------------------------------------------------
# Keys


def test_seq_key_hashes_ids_and_label_span() -> None:
    ids = [5, 9, 2, 40000, 3]
    k = seq_key(ids, 2)
    assert k == seq_key(np.array(ids, dtype=np.int32), 2) == seq_key(np.array(ids, dtype=np.uint16), 2)
    assert len(k) == 64
    assert seq_key(ids, 3) != k
    assert seq_key([5, 9, 2, 40000, 4], 2) != k
    assert seq_key(ids[:-1], 2) != k
    assert seq_key(ids, 2, pool_index=4) != k
    assert seq_key(ids, 5, pool_index=4, mask_first=True) != seq_key(ids, 5, pool_index=4)
    assert seq_key_of(TokSeq(ids=ids, label_start=2)) == k
    assert seq_key([], 0) == seq_key(np.zeros(0, dtype=np.int32), 0)
    with pytest.raises(TypeError):
        seq_key(np.array([1.0, 2.0]), 1)
    with pytest.raises(ValueError):
        seq_key(np.array([[1, 2]]), 1)
    with pytest.raises(ValueError):
        seq_key(ids, 6)


def test_scope_and_batch_keys_are_canonical() -> None:
    a = scope_key(model="m", kind="dpo", dtype="bfloat16", extra={"b": 1, "a": [1, 2]})
    assert a == scope_key(extra={"a": (1, 2), "b": 1}, dtype="bfloat16", kind="dpo", model="m")
    assert a != scope_key(model="m", kind="dpo", dtype="float16", extra={"b": 1, "a": [1, 2]})
    assert scope_key(fp32_scores=True) != scope_key(fp32_scores=False)
    with pytest.raises(TypeError):
        scope_key(path=Path("/x"))
    with pytest.raises(ValueError):
        scope_key(x=float("nan"))
    keys = [seq_key([i], 0) for i in range(3)]
    assert batch_key(keys, {"tokens": 3}) != batch_key(keys[::-1], {"tokens": 3})
    assert batch_key(keys, {"tokens": 3}) != batch_key(keys, {"tokens": 4})
    assert batch_key(keys, {"tokens": 3}) == batch_key(list(keys), {"tokens": 3})
    with pytest.raises(ValueError):
        batch_key(["not-a-key"])


def test_scope_needs_model_and_kind(store: ResultStore) -> None:
    with pytest.raises(ValueError, match="model"):
        store.scope({"kind": "dpo"})
    with pytest.raises(ValueError, match="kind"):
        store.scope({"model": "m", "kind": "reward"})
    parts = {"model": "m", "kind": "classifier", "dtype": "bfloat16"}
    assert store.scope(parts, label="a") == scope_key(**parts) == store.scope(parts, label="b")
    (info,) = store.info().scopes
    assert info.parts == parts and info.label == "b" and info.kind == "classifier"


# --------------------------------------------------------------------------------------------
# Values and batches


def test_values_round_trip_bit_exactly(store: ResultStore) -> None:
    scope = _scope(store)
    raw = np.array(
        [0x7FF8000000000123, 0xFFF0000000000001, 0x8000000000000000, 0x0000000000000001, 0x7FEFFFFFFFFFFFFF]
        + [0x7FF0000000000000, 0xFFF0000000000000, 0x3FD5555555555555, 0xBFF0000000000000],
        dtype=np.uint64,
    )
    values = np.concatenate([raw, raw[:3]]).view(np.float64).reshape(4, 3)
    keys = [seq_key([i], 0) for i in range(4)]
    bk = batch_key(keys)
    assert store.put_batch(scope, bk, keys, values)
    store.close()
    with open_store(store.path) as s:
        got = s.get_batch(scope, bk, keys)
        assert got is not None and got.dtype == np.float64
        assert np.array_equal(_bits(got), _bits(values))
        seqs, found, _ = s.get_seqs(scope, keys)
        assert found.all() and np.array_equal(_bits(seqs), _bits(values))
    cls = classifier_values([1.5, -0.0])
    assert cls.shape == (2, 3) and np.isnan(cls[:, 1:]).all()
    assert np.array_equal(_bits(cls[:, 0]), _bits(np.array([1.5, -0.0])))


def test_get_batch_is_exact(store: ResultStore) -> None:
    scope = _scope(store)
    keys, bk, values = make_batch(0)
    assert store.get_batch(scope, bk, keys) is None
    assert store.put_batch(scope, bk, keys, values) is True
    assert np.array_equal(store.get_batch(scope, bk, keys), values)
    assert store.get_batch(scope, bk, keys[::-1]) is None  # same key, other order
    assert store.get_batch(scope, bk, keys[:-1]) is None
    assert store.get_batch(scope, batch_key(keys, {"i": 1}), keys) is None  # other layout
    assert store.get_batch(_scope(store, dtype="bfloat16"), bk, keys) is None  # other scope
    assert store.get_batch(scope_key(model="never", kind="dpo"), bk, keys) is None  # unregistered
    assert store.batch_keys(scope) == {bk}
    # Writing it again changes nothing: the first values win.
    assert store.put_batch(scope, bk, keys, values + 1.0) is False
    assert np.array_equal(store.get_batch(scope, bk, keys), values)
    with pytest.raises(ValueError, match="other sequences"):
        store.put_batch(scope, bk, keys[::-1], values)


def test_put_batch_validates_before_writing(store: ResultStore) -> None:
    scope = _scope(store)
    keys, bk, values = make_batch(0)
    with pytest.raises(TypeError, match="float64"):
        store.put_batch(scope, bk, keys, values.astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        store.put_batch(scope, bk, keys, values[:-1])
    with pytest.raises(ValueError, match="shape"):
        store.put_batch(scope, bk, [], np.zeros((0, 3)))
    with pytest.raises(ValueError, match="unknown scope"):
        store.put_batch(scope_key(model="m", kind="dpo"), bk, keys, values)
    with pytest.raises(ValueError):
        store.put_batch(scope, bk, ["xyz"] * len(keys), values)
    assert store.info().batches == 0 and store.check() == []


def test_get_seqs_across_batchings(store: ResultStore) -> None:
    scope = _scope(store)
    a, b, c, d = (seq_key([i, 1], 1) for i in range(4))
    bk1 = batch_key([a, b, a])  # a sequence may occur twice in one batch
    v1 = np.array([[1.0, 2, 3], [4, 5, 6], [1.0, 2, 3]])
    bk2 = batch_key([b, c])
    v2 = np.array([[4.5, 5, 6], [7, 8, 9]])
    assert store.put_batch(scope, bk1, [a, b, a], v1)
    assert store.put_batch(scope, bk2, [b, c], v2)
    values, found, other = store.get_seqs(scope, [a, b, c, d, b])
    assert found.tolist() == [True, True, True, False, True]
    assert other.tolist() == [True, True, True, False, True]  # no expected batch: all "other"
    assert values[1, 0] == 4.0 and values[4, 0] == 4.0  # b: the earliest stored copy
    assert np.isnan(values[3]).all()
    values, found, other = store.get_seqs(scope, [a, b, c], expected=bk2)
    assert values[1, 0] == 4.5  # b: the copy from the expected batch
    assert other.tolist() == [True, False, False]
    _, _, other = store.get_seqs(scope, [a, b, c], expected=[bk1, bk1, None])
    assert other.tolist() == [False, False, True]
    with pytest.raises(ValueError):
        store.get_seqs(scope, [a, b], expected=[bk1])
    values, found, _ = store.get_seqs(_scope(store, dtype="float16"), [a, b])
    assert not found.any() and np.isnan(values).all()
    # More keys than one IN (...) chunk.
    many = [seq_key([i, 2], 0) for i in range(1200)]
    mv = np.tile(np.arange(1200, dtype=np.float64)[:, None], (1, 3))
    store.put_batch(scope, batch_key(many), many, mv)
    values, found, _ = store.get_seqs(scope, many[::-1])
    assert found.all() and np.array_equal(values, mv[::-1])


def test_put_batch_reregisters_a_scope_cleared_meanwhile(tmp_path: Path) -> None:
    with open_store(tmp_path) as s1, open_store(tmp_path) as s2:
        scope = _scope(s1)
        keys, bk, values = make_batch(0)
        s1.put_batch(scope, bk, keys, values)
        s2.clear()
        assert s1.get_batch(scope, bk, keys) is None
        assert s1.put_batch(scope, bk, keys, values)
        assert np.array_equal(s2.get_batch(scope, bk, keys), values)
        assert s2.info().scopes[0].parts["device"] == "cpu"


def test_a_held_lock_gives_a_store_error_after_the_busy_timeout(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(store_mod, "BUSY_TIMEOUT_S", 0.2)
    with open_store(tmp_path) as s:
        scope = _scope(s)
        other = sqlite3.connect(str(s.path), isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            keys, bk, values = make_batch(0)
            t0 = time.monotonic()
            with pytest.raises(StoreError, match="locked"):
                s.put_batch(scope, bk, keys, values)
            assert time.monotonic() - t0 < 10
            other.execute("ROLLBACK")
        finally:
            other.close()
        assert s.put_batch(scope, bk, keys, values)


# --------------------------------------------------------------------------------------------
# Model fingerprints


def _model_dir(root: Path, weights: bytes = b"\x01" * 4096, name: str = "model.safetensors") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (root / name).write_bytes(weights)
    (root / "tokenizer.json").write_text("{}")
    return root


@pytest.fixture
def hash_calls(monkeypatch) -> list[Path]:
    calls: list[Path] = []
    real = fingerprint.hash_file

    def counting(path: Path) -> str:
        calls.append(Path(path))
        return real(path)

    monkeypatch.setattr(fingerprint, "hash_file", counting)
    return calls


def test_model_files_follow_the_loader(tmp_path: Path) -> None:
    d = _model_dir(tmp_path / "m")
    (d / "optimizer.pt").write_bytes(b"x")
    (d / "model.safetensors.index.json").write_text("{}")
    assert model_files(d) == ["config.json", "model.safetensors", "model.safetensors.index.json"]
    p = _model_dir(tmp_path / "p", name="pytorch_model.bin")
    (p / "model.safetensors").unlink(missing_ok=True)
    assert model_files(p) == ["config.json", "pytorch_model.bin"]
    g = _model_dir(tmp_path / "g", name="m.Q4.gguf")
    assert model_files(g) == ["config.json", "m.Q4.gguf"]
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "config.json").write_text("{}")
    with pytest.raises(RMBenchError, match="no weights"):
        model_files(tmp_path / "none")


def test_fingerprint_is_content_not_path(tmp_path: Path) -> None:
    a = fingerprint_model(_model_dir(tmp_path / "a"))
    assert a == fingerprint_model(_model_dir(tmp_path / "elsewhere" / "b"))
    assert a != fingerprint_model(_model_dir(tmp_path / "c", weights=b"\x01" * 4095 + b"\x02"))
    assert a != fingerprint_model(_model_dir(tmp_path / "d", name="model-00001.safetensors"))
    e = _model_dir(tmp_path / "e")
    (e / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "x": 1}))
    assert a != fingerprint_model(e)
    (e / "tokenizer.json").write_text('{"changed": 1}')  # the tokenizer has its own fingerprint
    assert fingerprint_model(e) == fingerprint_model(e, files=["config.json", "model.safetensors"])


def test_fingerprint_memo_avoids_rereading(monkeypatch, tmp_path: Path, hash_calls: list[Path]) -> None:
    monkeypatch.setattr(store_mod, "RACY_WINDOW_NS", 0)
    d = _model_dir(tmp_path / "m")
    with open_store(tmp_path / "s.sqlite") as s:
        fp = s.fingerprint_model(d)
        assert sorted(p.name for p in hash_calls) == ["config.json", "model.safetensors"]
        assert s.fingerprint_model(d) == fp
        assert len(hash_calls) == 2  # the second call only stats the files
    with open_store(tmp_path / "s.sqlite") as s:  # remembered across processes / reopenings
        assert s.fingerprint_model(d) == fp
        assert len(hash_calls) == 2
        assert s.info().file_hashes == 2
    with open_store(tmp_path / "other.sqlite") as s:
        assert s.fingerprint_model(d) == fp
        assert len(hash_calls) == 4
    assert fingerprint_model(d) == fp  # no store: no memo
    assert len(hash_calls) == 6


def test_changed_weight_value_same_size_same_mtime_is_a_new_model(
    monkeypatch, tmp_path: Path, hash_calls: list[Path]
) -> None:
    monkeypatch.setattr(store_mod, "RACY_WINDOW_NS", 0)
    d = _model_dir(tmp_path / "m", weights=np.arange(1024, dtype=np.float32).tobytes())
    w = d / "model.safetensors"
    with open_store(tmp_path / "s.sqlite") as s:
        fp1 = s.fingerprint_model(d)
        assert s.fingerprint_model(d) == fp1 and len(hash_calls) == 2
        before = w.stat()
        time.sleep(0.05)  # past the file system's timestamp granularity
        with open(w, "r+b") as f:  # one float32 value changed in place
            f.seek(4 * 100)
            f.write(np.float32(-1.5).tobytes())
        os.utime(w, ns=(before.st_atime_ns, before.st_mtime_ns))  # and the mtime put back
        after = w.stat()
        assert (after.st_size, after.st_mtime_ns, after.st_ino) == (
            before.st_size,
            before.st_mtime_ns,
            before.st_ino,
        )
        fp2 = s.fingerprint_model(d)
        assert fp2 != fp1
        assert [p.name for p in hash_calls[2:]] == ["model.safetensors"]
        assert fp2 == fingerprint_model(d)


def test_freshly_written_files_are_not_memoized(tmp_path: Path, hash_calls: list[Path]) -> None:
    d = _model_dir(tmp_path / "m")  # just written: inside the default racy window
    with open_store(tmp_path / "s.sqlite") as s:
        fp = s.fingerprint_model(d)
        assert s.fingerprint_model(d) == fp
        assert len(hash_calls) == 4
        assert s.info().file_hashes == 0


# --------------------------------------------------------------------------------------------
# Corrupt, foreign and other-version files


def _assert_one_line_store_error(exc: BaseException, path: Path) -> None:
    assert isinstance(exc, StoreError) and isinstance(exc, UsageError) and isinstance(exc, RMBenchError)
    assert exc.exit_code == 2
    text = str(exc)
    assert "\n" not in text
    assert str(path) in text
    assert f"mv {path} {path}.bad" in text and "--no-cache" in text


def _filled_store(path: Path, n_batches: int = 40) -> None:
    with open_store(path) as s:
        scope = _scope(s)
        for i in range(n_batches):
            _put(s, scope, i)
        s.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert not Path(f"{path}-wal").exists() or Path(f"{path}-wal").stat().st_size == 0


def test_not_sqlite_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "results.sqlite"
    p.write_text("this is a CSV, not a database\n" * 20)
    with pytest.raises(StoreError, match="not an SQLite") as e:
        open_store(p)
    _assert_one_line_store_error(e.value, p)
    assert p.read_text().startswith("this is a CSV")  # left as it was


@pytest.mark.parametrize("keep", [0.5, 50])
def test_truncated_store_is_refused(tmp_path: Path, keep: float) -> None:
    p = tmp_path / "results.sqlite"
    _filled_store(p)
    size = p.stat().st_size
    assert size > 8 * 4096
    with open(p, "r+b") as f:
        f.truncate(int(size * keep) if keep < 1 else int(keep))
    with pytest.raises(StoreError, match="truncated" if keep < 1 else "not an SQLite") as e:
        open_store(p)
    _assert_one_line_store_error(e.value, p)


def test_truncated_store_with_a_wal_gives_a_store_error(tmp_path: Path) -> None:
    # With a WAL beside it the header check stands back (a checkpoint may have been cut short);
    # SQLite's own error then becomes the one-line StoreError.
    p = tmp_path / "results.sqlite"
    _filled_store(p, n_batches=100)
    with open(p, "r+b") as f:
        f.truncate(p.stat().st_size // 2)
    Path(f"{p}-wal").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(StoreError) as e:
        with open_store(p) as s:
            scope = _scope(s)
            for i in range(100):
                keys, bk, _ = make_batch(i)
                assert s.get_batch(scope, bk, keys) is not None
            assert s.check() == []
    _assert_one_line_store_error(e.value, p)


def test_damaged_pages_give_a_store_error(tmp_path: Path) -> None:
    p = tmp_path / "results.sqlite"
    _filled_store(p)
    data = bytearray(p.read_bytes())
    rng = np.random.default_rng(0)
    data[4096:] = rng.integers(0, 256, len(data) - 4096, dtype=np.uint8).tobytes()  # all but page 1
    p.write_bytes(bytes(data))
    with pytest.raises(StoreError) as e:
        with open_store(p) as s:
            s.info()
            s.get_seqs(_scope(s), make_batch(0)[0])
    _assert_one_line_store_error(e.value, p)


def test_foreign_sqlite_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "results.sqlite"
    db = sqlite3.connect(str(p))
    db.execute("CREATE TABLE cache (k TEXT, v BLOB)")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="other tables: cache") as e:
        open_store(p)
    _assert_one_line_store_error(e.value, p)


def test_other_schema_version_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "results.sqlite"
    with open_store(p) as s:
        s.db.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match=f"schema version 999 .*uses {SCHEMA_VERSION}") as e:
        open_store(p)
    _assert_one_line_store_error(e.value, p)


# --------------------------------------------------------------------------------------------
# info, clear and the cache command


def test_judge_answers_round_trip_first_wins_and_clear(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    with open_store(path) as st:
        k1, k2 = judge_key("server:http://h/v1:m", "a" * 64), judge_key("server:http://h/v1:m", "b" * 64)
        assert k1 != judge_key("server:http://other/v1:m", "a" * 64)  # another judge, another key
        assert st.put_judgment(k1, "m", {"text": "\\boxed{A>B} é", "error": None})
        assert not st.put_judgment(k1, "m", {"text": "changed"})  # the first answer wins
        assert st.get_judgments([k1, k2]) == {k1: {"text": "\\boxed{A>B} é", "error": None}}
        assert st.judgment_count() == 1 and st.info().judgments == 1
        with pytest.raises(ValueError, match="sha256"):
            st.put_judgment("not-hex", "m", {})
        st.clear()
        assert st.get_judgments([k1]) == {}


def test_a_store_without_the_judgments_table_gains_it(tmp_path: Path) -> None:
    """Stores written before generative answers were stored (schema 1 without `judgments`) keep
    their results and get the table on first open."""
    path = tmp_path / "old.sqlite"
    with open_store(path) as st:
        scope = st.scope({"model": "f" * 64, "kind": "dpo"})
        keys = [seq_key([1, 2, 3], 1)]
        st.put_batch(scope, batch_key(keys), keys, np.ones((1, 3)))
    db = sqlite3.connect(path)
    db.execute("DROP TABLE judgments")
    db.commit()
    db.close()
    with open_store(path) as st:
        assert st.get_batch(scope, batch_key(keys), keys) is not None
        k = judge_key("vllm:abc:float32", "c" * 64)
        assert st.put_judgment(k, "j", {"text": "x"}) and st.get_judgments([k]) == {k: {"text": "x"}}
        assert st.check() == []


def test_info_and_clear_per_model(tmp_path: Path) -> None:
    with open_store(tmp_path) as s:
        pol = s.scope(
            {"model": "a" * 64, "kind": "dpo", "dtype": "bfloat16", "device": "cuda"}, label="policy"
        )
        ref = s.scope({"model": "b" * 64, "kind": "dpo", "dtype": "bfloat16", "device": "cuda"}, label="ref")
        ref32 = s.scope({"model": "b" * 64, "kind": "dpo", "dtype": "float32", "device": "cpu"}, label="ref")
        for i in range(3):
            _put(s, pol, i)
        for i in range(2):
            _put(s, ref, i)
        _put(s, ref32, 0)
        info = s.info()
        assert info.size_bytes > 0 and info.batches == 6 and info.seqs == 6 * SEQS_PER_BATCH
        by_model = {m.model: m for m in info.models()}
        assert by_model["a" * 64].seqs == 3 * SEQS_PER_BATCH and by_model["a" * 64].labels == ("policy",)
        assert by_model["b" * 64].scopes == 2 and by_model["b" * 64].batches == 3
        assert by_model["b" * 64].settings == ("bfloat16/cuda", "float32/cpu")
        assert s.clear("b" * 12) == (3, 3 * SEQS_PER_BATCH)  # a prefix
        assert [m.model for m in s.info().models()] == ["a" * 64]
        assert s.get_batch(pol, make_batch(1)[1], make_batch(1)[0]) is not None
        assert s.get_batch(ref, make_batch(1)[1], make_batch(1)[0]) is None
        assert s.clear("c" * 64) == (0, 0)
        assert s.check() == []
        assert s.clear() == (3, 3 * SEQS_PER_BATCH)
        assert s.info().scopes == () and s.check() == []


def test_clear_refuses_an_ambiguous_prefix(store: ResultStore) -> None:
    store.scope({"model": "ab" + "0" * 62, "kind": "dpo"})
    store.scope({"model": "ab" + "1" * 62, "kind": "dpo"})
    with pytest.raises(StoreError, match="matches 2 models"):
        store.clear("ab")


def test_cache_command(tmp_path: Path) -> None:
    from rich.console import Console

    out = io.StringIO()
    console = Console(file=out, width=200)
    missing = tmp_path / "none" / "results.sqlite"
    assert cache_command("info", missing, console) == 0
    assert "no results store" in out.getvalue() and not missing.exists()
    with open_store(tmp_path) as s:
        scope = s.scope(
            {"model": "d" * 64, "kind": "classifier", "dtype": "float16", "device": "cpu"}, label="rm-7b"
        )
        _put(s, scope, 0)
    out.truncate(0)
    assert cache_command("info", tmp_path, console) == 0
    text = out.getvalue()
    assert "dddddddddddd" in text and "rm-7b" in text and "classifier" in text and "float16/cpu" in text
    assert f"{SEQS_PER_BATCH} sequences" in text
    assert cache_command("clear", tmp_path, console) == 0
    assert "1 batches" in out.getvalue()
    with open_store(tmp_path) as s:
        assert s.info().scopes == ()
    with pytest.raises(UsageError, match="unknown cache action"):
        cache_command("purge", tmp_path, console)
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"\0" * 4096)
    with pytest.raises(StoreError):
        cache_command("info", bad, console)


# --------------------------------------------------------------------------------------------
# Concurrency: several processes writing at once lose nothing


def _writer(path: str, wid: int, n_batches: int, start: object, results: object) -> None:
    s = open_store(path)
    scope = _scope(s)
    start.wait(WAIT_S)  # type: ignore[attr-defined]
    won = 0
    for k in range(n_batches):
        keys, bk, values = make_batch(1000 * (wid + 1) + k, n=8)
        assert s.put_batch(scope, bk, keys, values)
        if k < 10:  # the same shared batches from every writer: exactly one write wins each
            keys, bk, values = make_batch(k, n=8)
            won += s.put_batch(scope, bk, keys, values)
    s.close()
    results.put((wid, won))  # type: ignore[attr-defined]


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite"
    open_store(path).close()
    ctx = mp.get_context("spawn")
    start, results = ctx.Event(), ctx.Queue()
    n_writers, n_batches = 3, 60
    procs = [
        ctx.Process(target=_writer, args=(str(path), w, n_batches, start, results)) for w in range(n_writers)
    ]
    for p in procs:
        p.start()
    start.set()
    try:
        won = [results.get(timeout=WAIT_S) for _ in procs]
        for p in procs:
            p.join(WAIT_S)
            assert p.exitcode == 0
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(5)
    assert sum(w for _, w in won) == 10
    with open_store(path) as s:
        scope = _scope(s)
        assert s.check() == []
        assert s.info().batches == n_writers * n_batches + 10
        for i in [*range(10), *(1000 * (w + 1) + k for w in range(n_writers) for k in range(n_batches))]:
            keys, bk, values = make_batch(i, n=8)
            got = s.get_batch(scope, bk, keys)
            assert got is not None and np.array_equal(_bits(got), _bits(values)), i


# --------------------------------------------------------------------------------------------
# Crash safety: SIGKILL at random points and in the middle of a transaction

_CHILD = r"""
import sys, time
from tests.store.test_store import make_batch, _scope
from rmbench_fast.store.db import open_store

path, mode, pause_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
store = open_store(path)
scope = _scope(store)
done = store.batch_keys(scope)
state = {"arm": False, "rows": 0}

def trace(stmt):
    if not state["arm"]:
        return
    if mode == "commit" and stmt == "COMMIT" or mode == "insert" and stmt.startswith("INSERT INTO seqs"):
        state["rows"] += 1
        if mode == "commit" or state["rows"] == 5:
            print("paused", flush=True)
            time.sleep(60)

store.db.set_trace_callback(trace)
new = 0
for i in range(100000):
    keys, bk, values = make_batch(i)
    if bk in done:
        continue
    state["arm"] = mode != "random" and new == pause_at
    print("writing", i, flush=True)
    store.put_batch(scope, bk, keys, values)
    new += 1
    if new == 1:
        print("ready", flush=True)
"""


def _read_until(proc: subprocess.Popen, word: str, timeout: float = WAIT_S) -> list[str]:
    """Lines of the child's stdout up to the first that starts with `word` (with a timeout).

    A thread reads the pipe (select() on a buffered text pipe misses lines already buffered)."""
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.put(line.strip())
            if line.startswith(word):
                return
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        try:
            line = lines.get(timeout=max(deadline - time.monotonic(), 0.001))
        except queue.Empty:
            raise AssertionError(f"child did not print {word!r} within {timeout} s: {seen[-3:]}") from None
        if line is None:
            proc.wait(WAIT_S)
            err = proc.stderr.read() if proc.stderr else ""  # type: ignore[union-attr]
            raise AssertionError(f"child exited before {word!r}: {err[-2000:]}")
        seen.append(line)
        if line.startswith(word):
            return seen


def _stored_prefix(path: Path) -> int:
    """Check the store after a kill; return how many batches (0..m-1, in order) it holds."""
    raw = sqlite3.connect(str(path))
    try:
        assert raw.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        incomplete = raw.execute(
            "SELECT b.id FROM batches b LEFT JOIN seqs s ON s.batch_id = b.id "
            "GROUP BY b.id HAVING count(s.pos) != b.n"
        ).fetchall()
        assert incomplete == []
        assert raw.execute(
            "SELECT count(*) FROM seqs WHERE batch_id NOT IN (SELECT id FROM batches)"
        ).fetchone() == (0,)
    finally:
        raw.close()
    with open_store(path) as s:
        assert s.check() == []
        scope = _scope(s)
        stored = s.batch_keys(scope)
        m = len(stored)
        for i in range(m):
            keys, bk, values = make_batch(i)
            assert bk in stored, f"batch {i} missing below {m}"
            got = s.get_batch(scope, bk, keys)
            assert got is not None and np.array_equal(_bits(got), _bits(values))
        return m


def _run_child(path: Path, mode: str, pause_at: int = 0) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path), mode, str(pause_at)],
        cwd=REPO,  # `python -c` puts the cwd first on sys.path: the child imports tests.store.test_store
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(WAIT_S)
    assert proc.returncode == -signal.SIGKILL
    for f in (proc.stdout, proc.stderr):
        if f:
            f.close()


def test_sigkill_leaves_every_batch_whole_or_absent(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite"
    rng = random.Random(1234)
    stored = 0
    # In the middle of a transaction: all rows written, COMMIT not yet run; and after 5 of the
    # batch's sequence rows. The batch in flight must be absent, every earlier one whole.
    for mode, pause_at in [("commit", 0), ("insert", 2), ("commit", 3), ("insert", 0)]:
        proc = _run_child(path, mode, pause_at)
        try:
            lines = _read_until(proc, "paused")
        finally:
            _kill(proc)
        in_flight = int([ln for ln in lines if ln.startswith("writing")][-1].split()[1])
        assert in_flight == stored + pause_at
        stored = _stored_prefix(path)
        assert stored == in_flight  # everything before it, nothing of it
    # At random points while writing in a loop (seeded).
    for _ in range(4):
        proc = _run_child(path, "random")
        try:
            _read_until(proc, "ready")
            time.sleep(rng.uniform(0.0, 0.25))
        finally:
            _kill(proc)
        now = _stored_prefix(path)
        assert now > stored  # the child committed at least one batch before "ready"
        stored = now
