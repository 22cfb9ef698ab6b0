"""Issue 21 item 3 (32 KB per entry): one LSH band posting per (band key, entry) and records fitted
to LMDB pages (engine/parts.py ``Bands._postings``, ``fit_pack``).

Checked on fresh random inputs: the postings of an entry are exactly its distinct band keys, each
with the entry's lowest non-empty feature holding it (against a per-feature reference, with equal
rows, empty rows, no feature, one feature, odd sizes); the band lookups of a hub find, for every
query, exactly the entries sharing a band key with it (brute force over the stored signatures),
and the same as a hub written with one posting per (key, entry, feature) (the writer before);
searches forced through the LSH stage answer alike on both; removal leaves no posting of the
entry, whichever way it was written (a hub may mix them). ``fit_pack`` round-trips and never
takes more pages than the level-1 record; a damaged record raises ``CodecError``."""
from __future__ import annotations

import struct

import numpy as np
import pandas as pd
import pytest

import fitsketch
from fitsketch import parts, planner
from fitsketch.storage.errors import CodecError
from fitsketch.minhash import feature_band_keys
from fitsketch.storage import codec as C
from fitsketch.storage import u64

EMPTY = 0xFFFFFFFF


def _postings_per_feature(eid, prepared):     # the writer before: one posting per (key, entry, feature)
    bands, nonempty = prepared
    sel = bands[nonempty]
    return (sel.reshape(-1).view(np.uint64),
            np.repeat((np.uint64(eid) << np.uint64(32)) | nonempty.astype(np.uint64), sel.shape[1]))


def _random_sigs(rng, n_features, num_perm=128):
    """Signatures with repeated rows (columns of one distribution), empty rows and few distinct
    values (so band keys repeat across features)."""
    vals = rng.integers(0, 50, size=(n_features, num_perm)).astype(np.uint32)
    for f in range(n_features):
        r = rng.random()
        if r < 0.3 and f:
            vals[f] = vals[rng.integers(0, f)]
        elif r < 0.4:
            vals[f] = EMPTY
    return vals


@pytest.mark.parametrize("n_features", [0, 1, 2, 7, 33])
def test_postings_are_the_distinct_keys_with_their_lowest_feature(rng, n_features):
    sig = _random_sigs(rng, n_features)
    cfg = fitsketch.SketchConfig()
    bands = feature_band_keys(sig, cfg.lsh_k, cfg.lsh_l)
    nonempty = np.nonzero(sig[:, 0] != EMPTY)[0] if n_features else np.zeros(0, dtype=np.int64)
    eid = int(rng.integers(0, 2 ** 32))
    keys, vals = parts.Bands._postings(eid, parts.Bands._keys(bands, nonempty))   # prepare's half, then write's
    ref: dict[int, int] = {}
    for f in nonempty:
        for b in bands[f]:
            ref.setdefault(int(b) & 0xFFFFFFFFFFFFFFFF, int(f))
    assert keys.dtype == np.uint64 and vals.dtype == np.uint64 and keys.shape == vals.shape
    assert list(keys) == sorted(ref)                                     # distinct, ascending
    assert [(int(v) >> 32, int(v) & 0xFFFFFFFF) for v in vals] == [(eid, ref[int(k)]) for k in keys]
    # the same (key, entry) pairs as one posting per feature
    ok, ov = _postings_per_feature(eid, (bands, nonempty))
    assert set(zip(keys.tolist(), (vals >> np.uint64(32)).tolist())) == \
        set(zip(ok.tolist(), (ov >> np.uint64(32)).tolist()))


def _table(rng, n, shift=0.0):
    return pd.DataFrame({"a": np.round(rng.normal(shift, size=n), 2), "b": rng.integers(0, 30, n),
                         "c": np.round(rng.normal(shift, size=n), 2), "d": rng.integers(0, 5, n).astype(str)})


def _build(path, rng_seed, per_feature: bool, monkeypatch):
    rng = np.random.default_rng(rng_seed)
    cfg = fitsketch.SketchConfig()
    sks = [fitsketch.sketch_data(_table(rng, int(rng.integers(1, 400)), float(rng.integers(0, 3))), cfg,
                                 partition_size=50) for _ in range(9)]
    with monkeypatch.context() as m:
        if per_feature:   # the NumPy prepare (no compiled band_runs), its keys left per feature
            m.setattr(parts._ingest, "band_runs", lambda *a, **k: None)
            m.setattr(parts.Bands, "_keys", staticmethod(lambda bands, nonempty: (bands, nonempty)))
            m.setattr(parts.Bands, "_postings", staticmethod(_postings_per_feature))
        with fitsketch.open(path) as hub:
            if per_feature:   # 8-byte postings, as a hub upgraded from format <= 3 keeps writing them
                hub.store.transact(lambda t: t.put("meta", b"posting_bytes", 8))
            hub.add_sketch("s0", sks[0])
            hub.add_sketches([(f"s{i}", s) for i, s in enumerate(sks) if i])
    return sks


def _hits(txn, sig, cfg):
    bands = feature_band_keys(sig, cfg.lsh_k, cfg.lsh_l)
    found = txn.get_dups_many("bands", [u64(int(b) & 0xFFFFFFFFFFFFFFFF) for b in bands.reshape(-1)])
    return {int.from_bytes(v[:4], "big") for dups in found for v in dups}


def _brute(txn, sig, cfg):
    """The entries sharing a band key with ``sig`` (non-empty features only), from their signatures."""
    q = {int(b) for f in range(sig.shape[0]) if sig[f, 0] != EMPTY
         for b in feature_band_keys(sig[f:f + 1], cfg.lsh_k, cfg.lsh_l)[0]}
    out = set()
    for k in txn.keys("signatures"):
        s = fitsketch.signature_records.decode(txn.get("signatures", k))
        ne = s[:, 0] != EMPTY
        if q & {int(b) for b in feature_band_keys(s[ne], cfg.lsh_k, cfg.lsh_l).reshape(-1)}:
            out.add(int.from_bytes(k, "big"))
    return out


def test_band_lookups_find_exactly_the_colliding_entries_as_before(tmp_path, rng, monkeypatch):
    seed = int(rng.integers(0, 2 ** 31))
    new, old = tmp_path / "new", tmp_path / "old"
    sks = _build(new, seed, False, monkeypatch)
    _build(old, seed, True, monkeypatch)
    qrng = np.random.default_rng(seed + 1)
    queries = [s.signatures for s in sks] + [
        fitsketch.sketch_data(_table(qrng, n, 1.0), fitsketch.SketchConfig(), partition_size=50).signatures
        for n in (1, 77)]
    with fitsketch.open(new, readonly=True) as a, fitsketch.open(old, readonly=True) as b, \
            a.store.read() as ta, b.store.read() as tb:
        assert ta.count("bands") < tb.count("bands")
        for sig in queries:
            got = _hits(ta, sig, a.config)
            assert got == _hits(tb, sig, b.config) == _brute(ta, sig, a.config)
    # searches through the LSH stage (as on a hub over SCAN_FEATURE_LIMIT features) answer alike
    monkeypatch.setattr(planner, "SCAN_FEATURE_LIMIT", 0)
    q = _table(qrng, 120, 1.0)
    for method in ("exact-js", "js", "coverage"):
        with fitsketch.open(new, readonly=True) as a, fitsketch.open(old, readonly=True) as b:
            ra, rb = a.search(q, k=5, method=method), b.search(q, k=5, method=method)
            assert [(r.name, r.score) for r in ra] == [(r.name, r.score) for r in rb]


def test_removal_leaves_no_posting_of_either_kind(tmp_path, rng, monkeypatch):
    path = tmp_path / "h"
    seed = int(rng.integers(0, 2 ** 31))
    _build(path, seed, True, monkeypatch)                     # per-feature postings (the writer before)
    cfg = fitsketch.SketchConfig()
    extra = fitsketch.sketch_data(_table(np.random.default_rng(seed + 2), 211), cfg, partition_size=50)
    with fitsketch.open(path) as hub:
        hub.add_sketch("new", extra)                          # one posting per (key, entry)
        ids = {}
        with hub.store.read() as txn:
            for name in ("s3", "new"):
                ids[name] = int.from_bytes(txn.get_raw("names", name.encode()), "big")
        for name in ("s3", "new"):
            hub.remove(name)
        with hub.store.read() as txn:
            left = {struct.unpack(">II", v)[0] for _, v in txn.items("bands")}
            assert {len(v) for _, v in txn.items("bands")} == {8}
        assert not left & set(ids.values())
        for name in hub.names():
            hub.remove(name)
        with hub.store.read() as txn:
            assert txn.count("bands") == 0


def _random_record(rng):
    kinds = ["<u4", "<i8", "<f4", "<f8", "|u1", "<u2", "|b1"]
    rec = {"v": 1}
    for i in range(int(rng.integers(0, 6))):
        dt = np.dtype(kinds[int(rng.integers(0, len(kinds)))])
        n = int(rng.choice([0, 1, 3, 257, 1023, 4099]))
        if dt.kind == "f":
            a = np.round(rng.normal(size=n), int(rng.integers(0, 4))).astype(dt)
        elif dt.kind == "b":
            a = rng.random(n) < 0.2
        else:
            a = rng.integers(0, min(np.iinfo(dt).max, int(rng.choice([3, 300, 70000]))), size=n).astype(dt)
        rec[f"a{i}"] = a.reshape(-1, 1) if n and rng.random() < 0.3 else a
    return rec


def _same(x, y):
    if isinstance(x, np.ndarray):
        return isinstance(y, np.ndarray) and x.dtype.str == y.dtype.str and x.shape == y.shape and \
            x.tobytes() == y.tobytes()
    if isinstance(x, dict):
        return isinstance(y, dict) and x.keys() == y.keys() and all(_same(x[k], y[k]) for k in x)
    return x == y


def test_fit_pack_round_trips_and_never_takes_more_pages(rng, monkeypatch):
    monkeypatch.setattr(parts, "FIT_SHARE", 1.0)          # always try the second level
    monkeypatch.setattr(parts, "FIT_FIRST", 0)            # FIT_LEVEL alone (the ladder: tests/test_bulk.py)
    big = 0
    for _ in range(25):
        rec = _random_record(rng)
        b = parts.fit_pack(rec)
        assert _same(C.unpack(b, stored=True), rec)
        chosen = {}   # the second level tries each array's level-1 filter only (codec.pack(filters=))
        n_fast = len(C.pack(rec, compress=True, filters=chosen))
        strong = parts._pages(len(C.pack(rec, compress=True, level=parts.FIT_LEVEL, filters=chosen)))
        fast = parts._pages(n_fast)
        # a record sharing leaf pages (or over FIT_MAX) is kept as it is; one between takes the fewer pages
        kept = n_fast <= parts.INLINE_MAX or n_fast > parts.FIT_MAX
        assert parts._pages(len(b)) == (fast if kept else min(fast, strong))
        big += n_fast > parts.INLINE_MAX
        cut = int(rng.integers(0, len(b)))
        with pytest.raises(CodecError):
            C.unpack(b[:cut], stored=True)
    assert big        # some records were over a leaf page's share (P(none) ~ 1e-9)
    for level in (0, 23, 1.5, True):
        with pytest.raises(CodecError):
            C.pack({"a": np.zeros(600)}, compress=True, level=level)


def test_fit_pack_packs_records_over_fit_max_once(rng, monkeypatch):
    """Records over ``FIT_MAX`` bytes skip the second level (its CPU on a large entry's records cost
    ~0.3 s an add); those between ``INLINE_MAX`` and it still take the fewer pages of the two."""
    monkeypatch.setattr(parts, "FIT_SHARE", 1.0)
    monkeypatch.setattr(parts, "FIT_FIRST", 0)
    rec = {"a": rng.integers(0, 1 << 20, size=int(rng.integers(3000, 6000))).astype(np.int64)}
    chosen = {}   # fit_pack's second level tries only the filter each array chose at level 1
    once = C.pack(rec, compress=True, filters=chosen)
    strong = C.pack(rec, compress=True, level=parts.FIT_LEVEL, filters=chosen)
    assert once == C.pack(rec, compress=True)
    monkeypatch.setattr(parts, "FIT_MAX", len(once) - 1)
    assert parts.fit_pack(rec) == once
    monkeypatch.setattr(parts, "FIT_MAX", len(once))
    assert parts._pages(len(parts.fit_pack(rec))) == min(parts._pages(len(once)), parts._pages(len(strong)))
