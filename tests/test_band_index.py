"""Issue 21 item 3 (32 KB per entry), hub format 6: the LSH band postings derived from the stored
signatures (engine/band_index.py), kept in memory and in ``<hub>/indexes/bands.fsidx``, instead of
LMDB's ``bands`` database.

The reference is an exhaustive band match: the entries with a non-empty feature sharing a band key
with the query's signatures, found by decoding every stored signature. Checked on fresh random hubs
after adds and removals, through the index file brought forward after another process wrote the
hub, with damaged files (rebuilt, never used), and on a format-5 hub written with its postings
(read-only as it is, then upgraded: postings emptied, the same lookups and LSH-forced answers).
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

import fitsketch
import fitsketch.storage.env as env_mod
from fitsketch import band_index as B
from fitsketch import indexes as IX
from fitsketch import planner
from fitsketch.errors import CorruptHubError
from fitsketch.minhash import feature_band_keys
from fitsketch.storage import from_u64, u64
from fitsketch.storage.arrayfile import read_arrays, write_arrays

import _hubcheck as hc

EMPTY = 0xFFFFFFFF
METHODS = ("exact-js", "js", "adaptivity", "l2", "coverage")


def _table(rng, n, shift=0.0):
    return pd.DataFrame({"a": np.round(rng.normal(shift, size=n), 2), "b": rng.integers(0, 30, n),
                         "c": np.round(rng.normal(shift, size=n), 2), "d": rng.integers(0, 5, n).astype(str)})


def _sketch(rng, n=None, shift=None):
    n = int(rng.integers(1, 300)) if n is None else n
    shift = float(rng.integers(0, 3)) if shift is None else shift
    return fitsketch.sketch_data(_table(rng, n, shift), fitsketch.SketchConfig(), partition_size=50)


def _ref_keys(sig, cfg) -> set:
    """The band keys of ``sig``'s non-empty features, one feature at a time (as the format-5 writer did)."""
    return {int(b) & 0xFFFFFFFFFFFFFFFF for f in range(sig.shape[0]) if sig[f, 0] != EMPTY
            for b in feature_band_keys(sig[f:f + 1], cfg.lsh_k, cfg.lsh_l)[0]}


def _brute(txn, sig, cfg) -> set:
    """The entries sharing a band key with ``sig`` (every feature of the query, non-empty stored ones)."""
    q = {int(b) & 0xFFFFFFFFFFFFFFFF for b in feature_band_keys(sig, cfg.lsh_k, cfg.lsh_l).reshape(-1)}
    out = set()
    for k in txn.keys("signatures"):
        if q & _ref_keys(fitsketch.signature_records.decode(txn.get("signatures", k)), cfg):
            out.add(from_u64(k))
    return out


def _lookup(hub, sig) -> tuple[set, set]:
    """(the band index's answer, the exhaustive one), in one read transaction."""
    with hub.store.read() as txn:
        idx = hub._indexes.bands(hub.store, txn)
        return set(idx.lookup(feature_band_keys(sig, hub.config.lsh_k, hub.config.lsh_l)).tolist()), \
            _brute(txn, sig, hub.config)


def _check_lookups(hub, queries):
    for sig in queries:
        got, want = _lookup(hub, sig)
        assert got == want


def _answers(hub, q, k=10):
    return {m: [(r.name, r.score) for r in hub.search(q, k=k, method=m)] for m in METHODS}


# ---------------------------------------------------------------------------------------- units
@pytest.mark.parametrize("n_features", [0, 1, 7, 97])
def test_entry_postings_are_the_distinct_keys_of_the_nonempty_features(rng, n_features):
    cfg = fitsketch.SketchConfig()
    sigs, eids = [], []
    for e in range(3):
        s = rng.integers(0, 6 if e == 1 else 1 << 32, size=(n_features, cfg.num_perm), dtype=np.int64).astype(np.uint32)
        if n_features:
            s[rng.random(n_features) < 0.3] = EMPTY
        sigs.append(s)
        eids.append(int(rng.integers(0, 1 << 31)) * 3 + e)
    k, e = B.entry_postings(sigs, eids, cfg.lsh_k, cfg.lsh_l)
    want = sorted((key, eid) for s, eid in zip(sigs, eids) for key in _ref_keys(s, cfg))
    assert list(zip(k.tolist(), e.tolist())) == want          # sorted by (key, entry), each pair once


@pytest.mark.parametrize("delta_min", [0, 7, 1 << 16])
def test_lookup_equals_a_dict_after_random_inserts_and_drops(rng, monkeypatch, delta_min):
    monkeypatch.setattr(B, "DELTA_MIN", delta_min)        # merged at every insert, now and then, never
    monkeypatch.setattr(B, "DELTA_SHARE", 3)
    idx = B.BandIndex(4, 32)
    truth: dict[int, set] = {}
    next_id = int(rng.integers(0, 5))
    pool = rng.integers(0, 1 << 64, size=40, dtype=np.uint64)    # few keys: many entries a key
    for step in range(12):
        if step == 8:
            next_id = (1 << 32) - 2                                 # ids past 2**32: the postings widen
        n = int(rng.integers(0, 6))
        ids = np.arange(next_id, next_id + n, dtype=np.int64)
        next_id += n + int(rng.integers(0, 3))
        ks, es = [], []
        for eid in ids:
            for key in set(rng.choice(pool, size=int(rng.integers(0, 9))).tolist()):
                ks.append(key)
                es.append(int(eid))
                truth.setdefault(key, set()).add(int(eid))
        order = rng.permutation(len(ks))
        idx._insert(np.asarray(ks, dtype=np.uint64)[order], np.asarray(es, dtype=np.int64)[order], ids)
        if step % 3 == 2 and len(idx.ids):
            gone = rng.choice(idx.ids, size=min(len(idx.ids), int(rng.integers(1, 4))), replace=False)
            idx._drop(gone)
            truth = {k: v - set(gone.tolist()) for k, v in truth.items()}
        for q in (pool[:5], pool[rng.integers(0, 40, 9)], rng.integers(0, 1 << 64, 3, dtype=np.uint64), pool[:0]):
            want = sorted(set().union(*(truth.get(int(x), set()) for x in q)))
            assert idx.lookup(q).tolist() == want
        pk, pe = idx.postings()
        pairs = list(zip(pk.tolist(), pe.tolist()))
        assert pairs == sorted(pairs) and len(set(pairs)) == len(pairs)
        assert pairs == sorted((k, e) for k, es in truth.items() for e in es)
        # the file's arrays give the same index back
        idx.generation = step
        meta, arrays = idx.state()
        back = B.BandIndex.from_state(meta, arrays, 4, 32)
        assert np.array_equal(back.keys, pk) and np.array_equal(back.eids.astype(np.int64), pe.astype(np.int64))
    assert idx.postings()[1].dtype == np.int64 and int(idx.postings()[1].max()) >= 1 << 32


# ---------------------------------------------------------------------------------------- hubs
def test_lookups_equal_the_exhaustive_match_after_adds_and_removals(tmp_path, rng):
    path = tmp_path / "h"
    qs = [_sketch(rng).signatures for _ in range(3)] + [_sketch(rng, 1).signatures]
    with fitsketch.open(path) as hub:
        hub.add_sketch("a0", _sketch(rng))
        _check_lookups(hub, qs)
        hub.add_sketches([(f"b{i}", _sketch(rng)) for i in range(6)] + [("m", _sketch(rng).merge(_sketch(rng)))])
        _check_lookups(hub, qs + [_sketch(rng).signatures])
        hub.remove("b2")
        hub.remove("a0")
        hub.add_sketch("c", _sketch(rng))
        _check_lookups(hub, qs)
        for name in hub.names():
            hub.remove(name)
        with hub.store.read() as txn:
            idx = hub._indexes.bands(hub.store, txn)
            assert len(idx) == 0 and len(idx.keys) == 0 and txn.count("bands") == 0
        hc.check_hub(hub)


_WRITER = """
import sys
import numpy as np, pandas as pd
import fitsketch
rng = np.random.default_rng(int(sys.argv[2]))
with fitsketch.open(sys.argv[1]) as hub:
    hub.remove(sys.argv[3])
    for i in range(3):
        n = int(rng.integers(20, 200))
        df = pd.DataFrame({"a": np.round(rng.normal(1.0, size=n), 2), "b": rng.integers(0, 30, n)})
        hub.add_sketch(f"late{i}", fitsketch.sketch_data(df, partition_size=50))
"""


def test_a_stale_file_and_another_process_writing(tmp_path, rng, monkeypatch):
    """Process A holds the index (and wrote its file); another process removes and adds entries:
    A's next lookups, a fresh reader of the now stale file and a search forced through the band
    index all equal the exhaustive match."""
    monkeypatch.setattr(IX, "SAVE_MIN_CHANGES", 0)
    monkeypatch.setattr(IX, "SAVE_FRACTION", 0)
    path = tmp_path / "h"
    with fitsketch.open(path) as hub:
        hub.add_sketches([(f"s{i}", _sketch(rng)) for i in range(8)])
    qs = [_sketch(rng).signatures for _ in range(3)]
    fpath = path / "indexes" / "bands.fsidx"
    with fitsketch.open(path, readonly=True) as hub:
        _check_lookups(hub, qs)
        assert fpath.exists()
        gen0 = read_arrays(str(fpath))[0]["generation"]
        root = os.path.dirname(os.path.dirname(os.path.abspath(fitsketch.__file__)))
        subprocess.run([sys.executable, "-c", textwrap.dedent(_WRITER), str(path), str(int(rng.integers(1 << 31))),
                        "s3"], check=True, cwd=root, timeout=300)
        monkeypatch.setattr(IX, "SAVE_MIN_CHANGES", 1 << 30)    # from here the file is left as it is (stale)
        _check_lookups(hub, qs + [_sketch(rng).signatures])      # brought forward in memory
    loaded = []
    real = IX.SearchIndexes._load_bands
    monkeypatch.setattr(IX.SearchIndexes, "_load_bands", lambda self, s, t: loaded.append(real(self, s, t)) or loaded[-1])
    with fitsketch.open(path, readonly=True) as hub:
        with hub.store.read() as txn:
            assert int(txn.get("meta", b"generation")) > gen0
        _check_lookups(hub, qs)
        assert loaded[0] is not None and loaded[0].generation > gen0      # read from the file, then synced
        assert read_arrays(str(fpath))[0]["generation"] == gen0
        monkeypatch.setattr(planner, "SCAN_FEATURE_LIMIT", 0)          # every search through the band index
        q = _table(rng, 150, 1.0)
        lsh = _answers(hub, q)
    os.remove(fpath)
    with fitsketch.open(path, readonly=True) as hub:                   # rebuilt from the signatures alone
        assert _answers(hub, q) == lsh


def _damage(fpath, how):
    raw = bytearray(fpath.read_bytes())
    if how == "truncated":
        fpath.write_bytes(bytes(raw[: len(raw) - 9]))
    elif how == "flipped":                 # 70 bytes: more than any padding, so some header or array byte
        mid = len(raw) // 2
        raw[mid:mid + 70] = bytes(b ^ 0x40 for b in raw[mid:mid + 70])
        fpath.write_bytes(bytes(raw))
    else:                                  # valid checksums, wrong contents: rewritten through write_arrays
        meta, packed = read_arrays(str(fpath))
        a = B.unpack_arrays(packed["packed"])
        if how == "unsorted":
            a["ukeys"] = a["ukeys"][::-1].copy()
        elif how == "foreign-id":
            a["eids"] = a["eids"].copy()
            a["eids"][0] = int(a["ids"].max()) + 1
        elif how == "counts":
            a["counts"] = a["counts"].copy()
            a["counts"][0] += 1
        elif how == "float-ids":
            a["eids"] = a["eids"].astype(np.float64)
        blob = B.pack_arrays(a)
        if how == "garbage":
            blob = np.frombuffer(np.random.default_rng(0).bytes(len(blob)), dtype=np.uint8)
        write_arrays(str(fpath), meta, {"packed": blob})


@pytest.mark.parametrize("how", ["truncated", "flipped", "unsorted", "foreign-id", "counts", "float-ids", "garbage"])
def test_a_damaged_file_is_rebuilt_never_used(tmp_path, rng, monkeypatch, how):
    monkeypatch.setattr(IX, "SAVE_MIN_CHANGES", 0)
    monkeypatch.setattr(IX, "SAVE_FRACTION", 0)
    path = tmp_path / "h"
    with fitsketch.open(path) as hub:
        hub.add_sketches([(f"s{i}", _sketch(rng)) for i in range(6)])
        with hub.store.read() as txn:
            hub._indexes.bands(hub.store, txn)
    fpath = path / "indexes" / "bands.fsidx"
    meta, arrays = read_arrays(str(fpath))
    _damage(fpath, how)
    if how not in ("truncated", "flipped"):
        m2, a2 = read_arrays(str(fpath))
        with pytest.raises(CorruptHubError, match="band index file"):
            B.BandIndex.from_state(m2, a2, 4, 32)
    qs = [_sketch(rng).signatures for _ in range(3)]
    with fitsketch.open(path, readonly=True) as hub:
        with hub.store.read() as txn:
            assert hub._indexes._load_bands(hub.store, txn) is None
        _check_lookups(hub, qs)


# ---------------------------------------------------------------------------------------- format 5
def _legacy_postings(txn, cfg, width):
    """The postings a format-5 (4 bytes: entry id) or format-3 (8 bytes: entry id, lowest feature)
    fitsketch stored for every entry: one per (band key, entry), feature by feature."""
    keys, vals = [], []
    for k in txn.keys("signatures"):
        eid = from_u64(k)
        sig = fitsketch.signature_records.decode(txn.get("signatures", k))
        seen = {}
        for f in range(sig.shape[0]):
            if sig[f, 0] != EMPTY:
                for b in feature_band_keys(sig[f:f + 1], cfg.lsh_k, cfg.lsh_l)[0]:
                    seen.setdefault(int(b) & 0xFFFFFFFFFFFFFFFF, f)
        for b, f in seen.items():
            keys.append(b)
            vals.append(eid if width == 4 else (eid << 32) | f)
    order = np.argsort(np.asarray(keys, dtype=np.uint64), kind="stable")
    return np.asarray(keys, dtype=np.uint64)[order], np.asarray(vals, dtype=np.uint64)[order]


def _build_old(path, sketches, monkeypatch, fmt, width):
    """A hub as a format-``fmt`` fitsketch wrote it: its records (unchanged since) and its band
    postings in LMDB, ``width`` bytes each."""
    with monkeypatch.context() as m:
        m.setattr(env_mod, "FORMAT_VERSION", fmt)
        with fitsketch.open(path) as hub:
            (n0, s0), *rest = sketches.items()
            hub.add_sketch(n0, s0)
            hub.add_sketches(rest)

            def put(t):
                t.put("meta", b"posting_bytes", width)
                t.put_dups("bands", *_legacy_postings(t, hub.config, width), width=width)
            hub.store.transact(put)
    assert fitsketch.inspect(path)["format"] == fmt


@pytest.mark.parametrize("fmt,width", [(5, 4), (3, 8)])
def test_an_older_hub_reads_as_it_is_and_its_upgrade_empties_the_postings(tmp_path, rng, monkeypatch, fmt, width):
    sks = {f"s{i}": _sketch(rng) for i in range(7)}
    sks["merged"] = _sketch(rng, 133, 1.0).merge(_sketch(rng, 51, 2.0))
    old, new = tmp_path / "old", tmp_path / "new"
    _build_old(old, sks, monkeypatch, fmt, width)
    with fitsketch.open(new) as hub:
        (n0, s0), *rest = sks.items()
        hub.add_sketch(n0, s0)
        hub.add_sketches(rest)
    qs = [s.signatures for s in sks.values()] + [_sketch(rng, 77, 1.0).signatures]
    q = _table(rng, 140, 1.0)
    monkeypatch.setattr(planner, "SCAN_FEATURE_LIMIT", 0)              # every search through the band index
    with fitsketch.open(new, readonly=True) as hub:
        want = _answers(hub, q)
    with fitsketch.open(old, readonly=True) as hub:                    # as it is: the postings left, not read
        assert hub.store._format == fmt
        with hub.store.read() as txn:
            stored = {}
            for key, v in txn.items("bands"):
                stored.setdefault(from_u64(key), set()).add(int.from_bytes(v[:4], "big"))
            assert {len(v) for _, v in txn.items("bands")} == {width}
        for sig in qs:                                                  # the derived index = the stored postings
            got, brute = _lookup(hub, sig)
            keys = {int(b) & 0xFFFFFFFFFFFFFFFF for b in feature_band_keys(sig, hub.config.lsh_k,
                                                                                hub.config.lsh_l).reshape(-1)}
            assert got == brute == set().union(*(stored.get(k, set()) for k in keys))
        assert _answers(hub, q) == want
    with fitsketch.open(old) as hub:                                    # upgraded
        assert hub.store._format == env_mod.FORMAT_VERSION == 6
        with hub.store.read() as txn:
            assert txn.count("bands") == 0
        assert _answers(hub, q) == want
        hub.remove("s2")
        hub.add_sketch("late", _sketch(rng, 90, 1.0))
        _check_lookups(hub, qs)
        hc.check_hub(hub)


def test_warm_refreshes_an_existing_band_index_file_and_builds_none(tmp_path, rng, monkeypatch):
    path = tmp_path / "h"
    fpath = path / "indexes" / "bands.fsidx"
    with fitsketch.open(path) as hub:
        hub.add_sketches([(f"s{i}", _sketch(rng)) for i in range(4)])
        hub.warm()
        assert not fpath.exists()                     # no LSH search yet: warm builds no band index
        with hub.store.read() as txn:
            hub._indexes.bands(hub.store, txn, save=True)
        gen0 = read_arrays(str(fpath))[0]["generation"]
        hub.add_sketch("late", _sketch(rng))
        hub.remove("s1")
        hub.warm()
        meta, arrays = read_arrays(str(fpath))
        with hub.store.read() as txn:
            assert meta["generation"] == int(txn.get("meta", b"generation")) > gen0
            ids = sorted(from_u64(k) for k in txn.keys("entries"))
        assert B.BandIndex.from_state(meta, arrays, 4, 32).ids.tolist() == ids
