"""Tests of fitsketch.storage: the package's surface and imports, HubStore (storage/env.py: meta,
formats, growth, locking, corruption; storage/txn.py: transactions, dupsort, u64 keys) and inspect.
The codec has test_codec.py. Random data is fresh on every run; a failing report names the seed."""
from __future__ import annotations

import ast
import gc
import os
import pathlib
import re
import threading
import time

import lmdb
import msgpack
import numpy as np
import pytest

import fitsketch.storage as storage
from fitsketch.storage import (
    DBS,
    FORMAT_VERSION,
    CodecError,
    CorruptHubError,
    HubBusyError,
    HubNotFoundError,
    HubStore,
    SchemaError,
    StorageError,
    from_u64,
    inspect,
    u64,
)


@pytest.fixture
def store(tmp_path):
    with HubStore(tmp_path / "hub") as s:
        yield s


def test_public_surface():
    assert sorted(storage.__all__) == sorted([
        "HubStore", "Txn", "FORMAT_VERSION", "DBS", "inspect", "pack", "unpack", "u64",
        "from_u64", "StorageError", "SchemaError", "CorruptHubError", "HubNotFoundError",
        "HubBusyError", "CodecError",
    ])
    codes = {c.code for c in (SchemaError, CorruptHubError, HubNotFoundError, HubBusyError, CodecError)}
    assert codes == {"schema", "corrupt", "not_found", "busy", "codec"}


ALLOWED_IMPORTS = {"__future__", "contextlib", "errno", "fcntl", "logging", "math", "mmap", "os", "threading", "time",
                   "typing", "weakref", "zlib", "lmdb", "msgpack", "numpy",
                   "pyarrow", "zstandard"}   # zlib, mmap: arrayfile's CRC-32 and mapped read, codec's fallback;
#                                pyarrow (a dependency): codec's zstd; zstandard (a dependency): its kept contexts


def test_storage_imports_nothing_forbidden():
    root = pathlib.Path(storage.__file__).parent
    for f in sorted(root.glob("*.py")):
        src = f.read_text()
        assert not re.search(r"pickle", src, re.I), f"{f.name} mentions pickle"
        assert not re.search(r"\beval\s*\(|\bexec\s*\(", src), f"{f.name} calls eval/exec"
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, ast.ImportFrom):
                mods = [node.module or ""] if node.level == 0 else []
                assert node.level <= 1, f"{f.name}: relative import outside storage"
            elif isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            else:
                continue
            for m in mods:
                assert m.split(".")[0] in ALLOWED_IMPORTS, f"{f.name} imports {m}"


def test_u64_order(rng):
    ns = sorted(set(int(x) for x in rng.integers(0, 2**63, size=50)) | {0, 2**64 - 1})
    keys = [u64(n) for n in ns]
    assert keys == sorted(keys) and [from_u64(k) for k in keys] == ns
    for bad in (-1, 2**64, 1.0, True):
        with pytest.raises(ValueError):
            u64(bad)


# ---------------------------------------------------------------- store: meta and formats

def test_create_and_meta_roundtrip(tmp_path, rng):
    path = tmp_path / "h"
    seeds = rng.integers(0, 2**32, size=8, dtype=np.uint64)
    with HubStore(path) as s:
        assert s.created and not s.readonly and s.path == str(path)
        assert (path / "hub.lmdb").is_file() and (path / "hub.lmdb-lock").is_file()
        s.init_meta({"seeds": seeds, "num_perm": 128, "method": "adaptivity"})
        with pytest.raises(StorageError, match="written once"):
            s.init_meta({"num_perm": 64})
        with pytest.raises(StorageError, match="written once"):
            s.init_meta({"format": 9})
    with HubStore(path, create=False) as s:
        assert not s.created
        m = s.meta()
    assert m["format"] == FORMAT_VERSION and m["num_perm"] == 128 and m["method"] == "adaptivity"
    assert abs(m["created"] - time.time()) < 600
    np.testing.assert_array_equal(m["seeds"], seeds)
    with HubStore(path, readonly=True) as s:
        assert s.readonly and s.meta()["num_perm"] == 128
        with pytest.raises(StorageError, match="readonly"):
            s.transact(lambda t: t.put("extra", b"k", 1))


def _raw_put_meta(path, key: bytes, value):
    env = lmdb.open(str(path / "hub.lmdb"), subdir=False, max_dbs=16)
    try:
        db = env.open_db(b"meta", create=False)
        with env.begin(write=True, db=db) as txn:
            txn.put(key, msgpack.packb(value))
    finally:
        env.close()


def test_newer_format_refused(tmp_path):
    path = tmp_path / "h"
    HubStore(path).close()
    _raw_put_meta(path, b"format", FORMAT_VERSION + 1)
    for opener in (lambda: HubStore(path), lambda: HubStore(path, readonly=True), lambda: inspect(path)):
        with pytest.raises(SchemaError) as e:
            opener()
        msg = str(e.value)
        assert f"format {FORMAT_VERSION + 1}" in msg and f"up to {FORMAT_VERSION}" in msg
        assert str(path) in msg and "upgrade fitsketch" in msg and e.value.code == "schema"
    # the failed opens left no handle registered: the refusal is the same again
    with pytest.raises(SchemaError):
        HubStore(path)


@pytest.mark.parametrize("bad", [0, -3, "1", 1.0, None])
def test_unknown_format_refused(tmp_path, bad):
    path = tmp_path / "h"
    HubStore(path).close()
    _raw_put_meta(path, b"format", bad)
    with pytest.raises(SchemaError, match="unknown format"):
        HubStore(path)


def test_migration_chain(tmp_path, monkeypatch):
    from fitsketch.storage import env as env_mod

    path = tmp_path / "h"
    with HubStore(path) as s:
        s.transact(lambda t: t.put("entries", u64(1), {"v": 1}))
    monkeypatch.setattr(env_mod, "FORMAT_VERSION", FORMAT_VERSION + 1)
    with pytest.raises(SchemaError, match="no upgrade from format"):
        HubStore(path)

    def _upgrade(txn):
        txn.put("entries", u64(1), {"v": 2})

    monkeypatch.setitem(env_mod.MIGRATIONS, FORMAT_VERSION, _upgrade)
    with pytest.raises(SchemaError, match="readonly=False"):
        HubStore(path, readonly=True)
    with HubStore(path) as s:
        assert s.meta()["format"] == FORMAT_VERSION + 1
        with s.read() as t:
            assert t.get("entries", u64(1)) == {"v": 2}


def test_inspect(tmp_path):
    path = tmp_path / "h"
    with HubStore(path) as s:
        s.init_meta({"num_perm": 64, "bands": 16})
        s.transact(lambda t: [t.put("entries", u64(i), {"i": i}) for i in range(37)])
        live = inspect(path)  # works while open in this process (reuses the handle)
    info = inspect(path)
    assert info == live
    assert info["path"] == str(path) and info["format"] == FORMAT_VERSION
    assert info["entries"] == 37 and info["num_perm"] == 64 and info["bands"] == 16
    assert info["bytes"] == os.path.getsize(path / "hub.lmdb") > 0
    with HubStore(path) as s:  # inspect left no handle behind
        assert s.stat()["entries"] == 37
    with pytest.raises(HubNotFoundError):
        inspect(tmp_path / "nope")


# ---------------------------------------------------------------- store: errors on open

def test_not_found(tmp_path):
    for kw in ({"create": False}, {"readonly": True}):
        with pytest.raises(HubNotFoundError) as e:
            HubStore(tmp_path / "missing", **kw)
        assert e.value.code == "not_found"
    assert not (tmp_path / "missing").exists()
    (tmp_path / "afile").write_bytes(b"x")
    with pytest.raises(HubNotFoundError, match="is a file"):
        HubStore(tmp_path / "afile")


def test_corrupt_file(tmp_path, rng):
    path = tmp_path / "h"
    path.mkdir()
    (path / "hub.lmdb").write_bytes(rng.bytes(int(rng.integers(100, 20000))))
    for opener in (lambda: HubStore(path), lambda: HubStore(path, readonly=True), lambda: inspect(path)):
        with pytest.raises(CorruptHubError) as e:
            opener()
        assert str(path) in str(e.value) and e.value.code == "corrupt"


def test_foreign_lmdb_and_bad_record(tmp_path):
    path = tmp_path / "h"
    path.mkdir()
    lmdb.open(str(path / "hub.lmdb"), subdir=False).close()  # valid LMDB, no meta db
    with pytest.raises(CorruptHubError, match="not a fitsketch hub"):
        HubStore(path)
    path2 = tmp_path / "h2"
    with HubStore(path2) as s:
        s.transact(lambda t: t.put_raw("entries", u64(5), b"\xc1garbage"))
        with s.read() as t, pytest.raises(CorruptHubError, match=r"x05.*'entries'"):
            t.get("entries", u64(5))


def test_open_twice_busy(tmp_path):
    path = tmp_path / "h"
    first = HubStore(path)
    with pytest.raises(HubBusyError, match="reuse that HubStore") as e:
        HubStore(path)
    assert e.value.code == "busy"
    with pytest.raises(HubBusyError):
        HubStore(str(path) + "/", readonly=True)
    first.transact(lambda t: t.put("names", b"a", 1))
    first.close()
    first.close()  # idempotent
    with pytest.raises(StorageError, match="closed"):
        first.meta()
    with HubStore(path) as again:
        assert again.stat()["names"] == 1
    dropped = HubStore(path)  # a handle dropped without close() frees the hub
    del dropped
    gc.collect()
    HubStore(path).close()


# ---------------------------------------------------------------- transactions

def test_txn_api(store, rng):
    emb = rng.standard_normal((3, 8)).astype(np.float32)

    def write(t):
        assert t.put("entries", u64(1), {"name": "a", "emb": emb})
        assert t.put("entries", u64(2), {"name": "b"})
        assert not t.put("entries", u64(2), "x", overwrite=False)
        assert t.put_raw("extra", b"raw", b"\x00\x01")
        for i in range(5):
            t.put("names", b"p/" + bytes([97 + i]), i)
        t.put("names", b"q", 99)
        return "done"

    assert store.transact(write) == "done"
    with store.read() as t:
        e = t.get("entries", u64(1))
        np.testing.assert_array_equal(e["emb"], emb)
        assert t.get("entries", u64(2)) == {"name": "b"} and t.get("entries", u64(3)) is None
        assert t.get_raw("extra", b"raw") == b"\x00\x01"
        assert t.exists("names", b"q") and not t.exists("names", b"p")
        assert list(t.items("names", prefix=b"p/")) == [(b"p/" + bytes([97 + i]), i) for i in range(5)]
        assert list(t.keys("names"))[-1] == b"q" and t.count("names") == 6
        assert [from_u64(k) for k in t.keys("entries")] == [1, 2]
        with pytest.raises(StorageError, match="read-only transaction"):
            t.put("names", b"z", 1)
        with pytest.raises(ValueError, match="unknown database"):
            t.get("nope", b"k")
        with pytest.raises(TypeError, match="bytes"):
            t.get("names", "str-key")
        with pytest.raises(ValueError, match="key length"):
            t.get("names", b"")
    assert store.transact(lambda t: (t.delete("names", b"q"), t.delete("names", b"q"))) == (True, False)
    assert store.stat() == {**{d: 0 for d in DBS}, "meta": 3, "entries": 2, "names": 5, "extra": 1}


def test_transact_atomic(store):
    store.transact(lambda t: t.put("entries", u64(0), "before"))

    def fails(t):
        t.put("entries", u64(0), "changed")
        for i in range(1, 50):
            t.put("entries", u64(i), i)
            t.put_dup("bands", b"k", u64(i))
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        store.transact(fails)
    with pytest.raises(CodecError):  # an encoding failure mid-way also writes nothing
        store.transact(lambda t: (t.put("entries", u64(7), 7), t.put("entries", u64(8), object())))
    with store.read() as t:
        assert t.get("entries", u64(0)) == "before"
        assert t.count("entries") == 1 and t.get_dups("bands", b"k") == []
    with pytest.raises(StorageError, match="inside transact"):
        store.transact(lambda t: store.transact(lambda t2: None))


def test_map_growth(tmp_path, rng):
    with HubStore(tmp_path / "h", map_size=64 << 10) as s:
        blobs = [rng.integers(0, 256, size=int(rng.integers(1, 200_000)), dtype=np.uint8) for _ in range(40)]
        calls = []

        def write(t):
            calls.append(1)
            for i, b in enumerate(blobs):
                t.put("weights", u64(i), b)
                t.put_dup("bands", u64(i % 3), u64(i))
            return len(blobs)

        assert s.transact(write) == 40 and len(calls) > 1
        assert s.env_bytes() > sum(b.nbytes for b in blobs)
        with s.read() as t:
            for i, b in enumerate(blobs):
                np.testing.assert_array_equal(t.get("weights", u64(i)), b)
            assert t.count("bands") == 40
        swallowed = []
        big = b"\x00" * (2 * s.env_bytes())

        def swallow(t):  # fn that hides MapFullError still gets a bigger map and a retry
            try:
                t.put_raw("extra", b"big", big)
            except lmdb.MapFullError:
                swallowed.append(1)
                if len(swallowed) < 3:
                    return "hidden"
            return "ok"

        assert s.transact(swallow) == "ok"


@pytest.mark.parametrize("n_keys", [0, 1, 2, 7, 97, 3001])     # 3,001 keys: many pages, sub-pages of dups
def test_delete_range_deletes_what_delete_of_each_key_deletes(tmp_path, rng, n_keys):
    """``Txn.delete_range(db, first, last)`` (one cursor) leaves what ``delete`` of every key in
    [first, last] leaves, in a dupsort database (every duplicate) and a plain one, for ranges inside,
    around, before and after the keys and of one key; it returns the keys deleted."""
    keys = sorted({u64(int(x)) for x in rng.integers(0, 2**64 - 1, size=n_keys, dtype=np.uint64)})
    many = set(rng.choice(len(keys), min(len(keys), 4), replace=False).tolist()) if n_keys >= 1000 else set()
    dups = {k: sorted({u64(int(x)) for x in rng.integers(0, 2**63, size=int(rng.integers(300, 700))
                                                          if i in many else int(rng.integers(1, 5)))})
            for i, k in enumerate(keys)}          # at 3,001 keys a few keys' duplicates fill pages of their own
    lo_hi = [(u64(0), u64(2**64 - 1)), (u64(2**64 - 1), u64(2**64 - 1)), (u64(5), u64(4))]
    for _ in range(4):
        a, b = sorted(int(x) for x in rng.integers(0, 2**64 - 1, size=2, dtype=np.uint64))
        lo_hi.append((u64(a), u64(b)))
    if keys:
        i, j = sorted(int(x) for x in rng.integers(0, len(keys), size=2))
        lo_hi += [(keys[i], keys[j]), (keys[i], keys[i]), (keys[-1], u64(2**64 - 1))]
    for n, (first, last) in enumerate(lo_hi):
        with HubStore(tmp_path / f"a{n}") as a, HubStore(tmp_path / f"b{n}") as b:
            for s in (a, b):
                s.transact(lambda t: [(t.put_dup("bands", k, v), t.put_raw("entries", k, v))
                                      for k in keys for v in dups[k]])
            got = a.transact(lambda t: (t.delete_range("bands", first, last), t.delete_range("entries", first, last)))
            want = [k for k in keys if first <= k <= last]
            b.transact(lambda t: [(t.delete("bands", k), t.delete("entries", k)) for k in want])
            assert got == (len(want), len(want))
            with a.read() as ta, b.read() as tb:
                for db in ("bands", "entries"):
                    assert list(ta._scan(db, b"", nodup=False)) == list(tb._scan(db, b"", nodup=False)), (db, n)


def test_dupsort(store, rng):
    vals = sorted({u64(int(x)) for x in rng.integers(0, 2**64 - 1, size=20, dtype=np.uint64)})
    order = rng.permutation(len(vals))

    def write(t):
        for j in order:
            assert t.put_dup("bands", b"band0", vals[j])
        assert not t.put_dup("bands", b"band0", vals[0])  # same pair twice: no-op
        t.put_dup("bands", b"band1", u64(7))

    store.transact(write)
    with store.read() as t:
        assert t.get_dups("bands", b"band0") == vals  # sorted, as bytes
        assert t.get_dups("bands", b"none") == []
        assert list(t.keys("bands")) == [b"band0", b"band1"]
        assert t.count("bands") == len(vals) + 1
        with pytest.raises(ValueError, match="put_dup"):
            t.get("bands", b"band0")
        with pytest.raises(ValueError, match="8-byte"):
            t.put_dup("bands", b"x", b"short")
        with pytest.raises(ValueError, match="not a dupsort"):
            t.get_dups("entries", b"x")
    assert store.transact(lambda t: (t.delete_dup("bands", b"band0", vals[3]),
                                     t.delete_dup("bands", b"band0", vals[3]))) == (True, False)
    with store.read() as t:
        assert t.get_dups("bands", b"band0") == vals[:3] + vals[4:]
    assert store.transact(lambda t: t.delete("bands", b"band0"))
    with store.read() as t:
        assert t.get_dups("bands", b"band0") == [] and t.count("bands") == 1


def test_get_dups_many(store, rng):
    truth = {}
    for k in range(50):
        n = int(rng.integers(0, 6))
        truth[u64(k)] = sorted({u64(int(v)) for v in rng.integers(0, 1000, size=n)})

    store.transact(lambda t: [t.put_dup("bands", k, v) for k, vs in truth.items() for v in vs])
    query = [u64(int(k)) for k in rng.integers(0, 80, size=200)]  # misses and repeats
    with store.read() as t:
        got = t.get_dups_many("bands", query)
    assert got == [truth.get(k, []) for k in query]
    with store.read() as t:
        assert t.get_dups_many("bands", []) == []


def test_concurrent_readers_see_snapshots(store):
    store.transact(lambda t: (t.put("extra", b"a", 0), t.put("extra", b"b", 0)))
    stop = threading.Event()
    errors: list = []
    seen: list[set] = [set() for _ in range(4)]

    def reader(i):
        try:
            while not stop.is_set():
                with store.read() as t:
                    a = t.get("extra", b"a")
                    time.sleep(0)  # let the writer commit in between
                    b = t.get("extra", b"b")
                assert a == b, (a, b)
                seen[i].add(a)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for v in range(1, 300):
        store.transact(lambda t, v=v: (t.put("extra", b"a", v), t.put("extra", b"weights" + b"x" * 100, b"\x00" * 4000),
                                       t.put("extra", b"b", v)))
    stop.set()
    for th in threads:
        th.join(10)
    assert not errors, errors[0]
    assert all(len(s) > 1 for s in seen)


def test_concurrent_readers_during_growth(tmp_path):
    with HubStore(tmp_path / "h", map_size=64 << 10) as s:
        s.transact(lambda t: (t.put("extra", b"a", 0), t.put("extra", b"b", 0)))
        stop = threading.Event()
        errors: list = []

        def reader():
            try:
                while not stop.is_set():
                    with s.read() as t:
                        assert t.get("extra", b"a") == t.get("extra", b"b")
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=reader) for _ in range(4)]
        for th in threads:
            th.start()
        for v in range(1, 30):
            s.transact(lambda t, v=v: (t.put("extra", b"a", v), t.put("weights", u64(v), b"\x01" * 100_000),
                                       t.put("extra", b"b", v)))
        t0 = time.monotonic()
        for v in range(10):  # aborts must not starve behind spinning readers
            with pytest.raises(KeyError):
                s.transact(lambda t, v=v: (t.put("extra", b"a", -v), {}["boom"]))
        assert time.monotonic() - t0 < 10
        stop.set()
        for th in threads:
            th.join(10)
        assert not errors, errors[0]
        assert s.stat()["weights"] == 29


def test_put_dups_equals_put_dup_loop(tmp_path, rng):
    from fitsketch.storage import HubStore

    keys = rng.integers(0, 2**63, 50).astype(np.uint64)
    keys[10:20] = keys[0]                              # repeated keys
    vals = rng.integers(0, 2**63, 50).astype(np.uint64)
    vals[15] = vals[10]                                # one repeated pair
    a, b = HubStore(str(tmp_path / "a")), HubStore(str(tmp_path / "b"))
    n_new = a.transact(lambda t: t.put_dups("bands", keys, vals))
    added = b.transact(lambda t: sum(t.put_dup("bands", u64(int(k)), u64(int(v))) for k, v in zip(keys, vals)))
    assert n_new == added == 49
    with a.read() as ta, b.read() as tb:
        assert list(ta.items("bands")) == list(tb.items("bands"))
    with pytest.raises(ValueError):
        a.transact(lambda t: t.put_dups("bands", keys, vals[:3]))
    a.close()
    b.close()
