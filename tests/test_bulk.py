"""Bulk add (``Hub.add_sketches``): a hub filled in batches holds, key by key and byte by byte, what
a hub filled one entry at a time holds, for any batch size (1, odd, larger than the items) and
across calls (the empty list included); bad input anywhere in the items leaves the hub unchanged."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

import fitsketch
from fitsketch import errors as E
from fitsketch import parts as PT
from fitsketch.storage.txn import DBS

from _frames import _frame, _sketch
from _hubcheck import check_hub


def _sketches(rng, cfg, n):
    """``n`` fresh sketches of three schemas, mixed partition sizes, a categorical column, a one-row
    table and a merged sketch."""
    out = []
    for i in range(n):
        names = [("a", "b", "c"), ("c", "a"), ("x", "b", "y", "z")][i % 3]
        rows = 1 if i == 2 else int(rng.integers(20, 300))
        df = _frame(rng, rows, loc=float(rng.normal()), names=names)
        if i % 4 == 3:
            df[names[0]] = rng.choice(["u", "v", "w", "q"], rows)
        ps = 40 if i % 5 == 4 else int(rng.integers(15, 120))
        sk = _sketch(cfg, df, ps=ps)
        if i % 5 == 4:   # a merged sketch
            sk = sk.merge(_sketch(cfg, _frame(rng, int(rng.integers(20, 200)), names=names), ps=ps))
        out.append(sk)
    return out


def _dump(hub) -> dict:
    """Every (key, value) of every database of an open hub, raw bytes (``bands``: each duplicate),
    the hub's creation time left out."""
    with hub.store.read() as txn:
        return {name: [(bytes(k), bytes(v)) for k, v in txn._scan(name, b"", nodup=False)
                       if (name, bytes(k)) != ("meta", b"created")] for name in DBS}


def _assert_same(a: dict, b: dict, why: str = "") -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert [k for k, _ in a[name]] == [k for k, _ in b[name]], (why, name)
        for (k, va), (_, vb) in zip(a[name], b[name]):
            assert va == vb, (why, name, k)


@pytest.mark.parametrize("batch", [1, 3, 1000])
def test_batched_hub_equals_entry_by_entry_hub(tmp_path, rng, monkeypatch, batch):
    """The same fresh sketches, added by ``add_sketches`` (in two calls around an empty one) and one
    at a time by ``add_sketch``, give byte-identical databases (the add time fixed: it is a clock)."""
    monkeypatch.setattr(PT.time, "time", lambda: 1.7e9)
    cfg = fitsketch.SketchConfig(seed=int(rng.integers(0, 2**31)))
    n = int(rng.integers(5, 10)) | 1   # odd
    sks = _sketches(rng, cfg, n)
    items = [(f"e{i}", s, {"i": i}) for i, s in enumerate(sks)]
    cut = int(rng.integers(1, n))
    with fitsketch.open(tmp_path / "a.hub", config=cfg) as a, fitsketch.open(tmp_path / "b.hub", config=cfg) as b:
        assert a.add_sketches(items[:cut], batch=batch) == cut
        assert a.add_sketches([], batch=batch) == 0
        assert a.add_sketches(iter(items[cut:]), batch=batch) == n - cut
        for name, s, md in items:
            b.add_sketch(name, s, metadata=md)
        check_hub(a)
        da, db = _dump(a), _dump(b)
    assert len(da["entries"]) == n and len(da["bands"]) > 0
    _assert_same(da, db)


def test_one_batch_equals_many_batches(tmp_path, rng, monkeypatch):
    """An entry's records do not depend on its batch or on its prepare chunk: all items in one
    batch, a transaction per two entries, or one transaction prepared three entries at a time
    (parts.PREPARE_CHUNK) store the same bytes."""
    monkeypatch.setattr(PT.time, "time", lambda: 1.7e9)
    cfg = fitsketch.SketchConfig(seed=int(rng.integers(0, 2**31)))
    sks = _sketches(rng, cfg, 7)
    items = [(f"e{i}", s) for i, s in enumerate(sks)]
    dumps = []
    for j, (batch, chunk) in enumerate(((len(items), 1000), (2, 1000), (len(items), 3))):
        monkeypatch.setattr(PT, "PREPARE_CHUNK", chunk)
        with fitsketch.open(tmp_path / f"{j}.hub", config=cfg) as hub:
            hub.add_sketches(items, batch=batch)
            dumps.append(_dump(hub))
    _assert_same(dumps[0], dumps[1], "batch 2")
    _assert_same(dumps[0], dumps[2], "prepare chunk 3")


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 50])
def test_put_dups_in_chunks_stores_what_put_dup_stores(tmp_path, rng, monkeypatch, n):
    """``Txn.put_dups`` (chunks of 3 pairs here, so chunk edges fall inside runs of one key) stores
    the pairs ``put_dup`` one at a time stores and counts the new ones, repeats included."""
    from fitsketch.storage import txn as T
    from fitsketch.storage import u64

    monkeypatch.setattr(T, "_DUPS_CHUNK", 3)
    keys = rng.integers(0, 4, n).astype(np.uint64) << np.uint64(60)      # few keys: long runs of duplicates
    vals = rng.integers(0, 2**63, n).astype(np.uint64)
    vals[n // 2:] = vals[:n - n // 2] if rng.random() < 0.5 else vals[n // 2:]   # repeated pairs, sometimes
    keys[n // 2:] = keys[:n - n // 2] if rng.random() < 0.5 else keys[n // 2:]
    with fitsketch.open(tmp_path / "a.hub") as a, fitsketch.open(tmp_path / "b.hub") as b:
        added = a.store.transact(lambda t: t.put_dups("bands", keys, vals))
        one = b.store.transact(lambda t: sum(t.put_dup("bands", u64(int(k)), u64(int(v))) for k, v in zip(keys, vals)))
        assert added == one == len(set(zip(keys.tolist(), vals.tolist())))
        da, db = _dump(a), _dump(b)
    _assert_same(da, db)


def test_empty_list_changes_nothing(tmp_path, rng):
    cfg = fitsketch.SketchConfig(seed=int(rng.integers(0, 2**31)))
    with fitsketch.open(tmp_path / "h.hub", config=cfg) as hub:
        hub.add_sketches([(f"e{i}", s) for i, s in enumerate(_sketches(rng, cfg, 3))])
        before = _dump(hub)
        assert hub.add_sketches([]) == 0 and hub.add_sketches(iter(())) == 0
        _assert_same(before, _dump(hub))


def _labelled(rng, cfg, labels):
    n = len(labels)
    df = pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n)})
    return fitsketch.sketch_data(df, cfg, partition_size=30, labels=np.asarray(labels))


@pytest.mark.parametrize("processes", [None, 2])
def test_bad_input_anywhere_leaves_the_hub_unchanged(tmp_path, rng, processes):
    """Each bad item, placed last behind good ones and with batch=1 (so earlier batches would be
    written first if anything were checked late), raises a FitsketchError and leaves every
    database as it was. With worker processes (``processes=2``) the workers are forked once the
    first item passed, while the others are checked: a bad later item stops them, nothing written,
    none left running."""
    import multiprocessing

    from fitsketch import prepare_procs

    if processes and not prepare_procs.fork_ok():
        pytest.skip("this platform does not fork")
    cfg = fitsketch.SketchConfig(seed=int(rng.integers(0, 2**31)))
    good = _sketches(rng, cfg, 4)
    s = good[0]
    unsorted = dataclasses.replace(s, hist={k: v[::-1].copy() for k, v in s.hist.items()})
    short_sig = dataclasses.replace(s, signatures=s.signatures[:, :7].copy())
    neg_rows = dataclasses.replace(s, n_rows=-1)
    big_bucket = dataclasses.replace(s, hist={**s.hist, "count": np.full_like(s.hist["count"], 0)})
    other = _sketch(fitsketch.SketchConfig(seed=cfg.seed + 1), _frame(rng, 50))
    with fitsketch.open(tmp_path / "h.hub", config=cfg) as hub:
        hub.add_sketches([("taken", good[3]), ("int-labelled", _labelled(rng, cfg, rng.integers(0, 3, 60)))])
        before = _dump(hub)
        head = [("g0", good[1]), ("g1", good[2])]
        bad = {
            "repeated name": head + [("g0", good[3])],
            "name in the hub": head + [("taken", good[3])],
            "not a sketch": head + [("x", "sketch")],
            "other parameters": head + [("x", other)],
            "unsorted histograms": head + [("x", unsorted)],
            "short signatures": head + [("x", short_sig)],
            "negative n_rows": head + [("x", neg_rows)],
            "zero counts": head + [("x", big_bucket)],
            "metadata not storable": head + [("x", s, {"k": object()})],
            "name not a string": head + [(7, s)],
            "empty name": head + [("", s)],
            "item of one field": head + [("x",)],
            "item not a tuple": head + ["x"],
            "str labels in an int-labelled hub": head + [("x", _labelled(rng, cfg, rng.choice(["p", "q"], 60)))],
            "int and str labels in one call": [("l1", _labelled(rng, cfg, rng.integers(0, 2, 60))),
                                               ("l2", _labelled(rng, cfg, rng.choice(["p", "q"], 60)))],
        }
        for why, items in bad.items():
            with pytest.raises(E.FitsketchError):
                hub.add_sketches(items, batch=1, processes=processes)
            _assert_same(before, _dump(hub), why)
            assert not [c for c in multiprocessing.active_children() if c.name.startswith("fitsketch-prepare")], why
        for b in (0, -1, True, 1.5, "2"):
            with pytest.raises(E.InvalidArgumentError):
                hub.add_sketches(head, batch=b, processes=processes)
            _assert_same(before, _dump(hub), f"batch={b!r}")
        assert hub.add_sketches(head, batch=1, processes=processes) == 2 and len(hub) == 4
        check_hub(hub)


def test_reserve_grows_the_map_before_the_transaction(tmp_path, rng):
    """``HubStore.transact(fn, reserve=n)``: ``fn`` runs once with at least ``n`` bytes of map past
    the pages in use (grown by doubling); a reserve that fits leaves the map as it is."""
    with fitsketch.Hub(tmp_path / "h.hub", map_size=1 << 20) as hub:
        env = hub.store._env
        used = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
        size0 = env.info()["map_size"]
        n = int(rng.integers(size0, 6 * size0))
        seen = []
        hub.store.transact(lambda t: seen.append(env.info()["map_size"]), reserve=n)
        assert len(seen) == 1 and seen[0] >= used + n and seen[0] < 2 * (used + n)
        assert seen[0] // size0 & (seen[0] // size0 - 1) == 0 and seen[0] % size0 == 0   # doubled
        hub.store.transact(lambda t: seen.append(env.info()["map_size"]), reserve=int(rng.integers(1, 1 << 16)))
        assert seen[1] == seen[0]


def test_a_batch_that_outgrows_the_map_is_written_once(tmp_path, rng, monkeypatch):
    """``add_sketches`` grows the map for a batch before its transaction (parts._writer's function
    runs once a batch, not again after a full map) and stores what a roomy hub stores."""
    monkeypatch.setattr(PT.time, "time", lambda: 1.7e9)
    cfg = fitsketch.SketchConfig(seed=int(rng.integers(0, 2**31)))
    items = [(f"e{i}", s) for i, s in enumerate(_sketches(rng, cfg, 7))]
    runs = []
    orig = PT._writer

    def counted(*a, **kw):
        write = orig(*a, **kw)
        return lambda txn: (runs.append(1), write(txn))[1]

    monkeypatch.setattr(PT, "_writer", counted)
    dumps = []
    for j, size in enumerate((1 << 17, 1 << 30)):
        runs.clear()
        with fitsketch.Hub(tmp_path / f"{j}.hub", config=cfg, map_size=size) as hub:
            assert hub.add_sketches(items, batch=4) == 7
            dumps.append(_dump(hub))
        assert len(runs) == 2, size
    _assert_same(dumps[0], dumps[1])


def test_a_map_that_cannot_grow_leaves_the_hub_usable(tmp_path):
    """set_mapsize failing (ENOMEM under an address-space limit; py-lmdb then invalidates the
    environment) raises DiskFullError and reopens the environment at its old size: the hub still
    reads and writes. A reserve that cannot be granted is best effort (the write goes on). In a
    child process: the limit must not reach the test runner."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(f"""
        import resource, numpy as np, pandas as pd, fitsketch
        from fitsketch.storage.env import DiskFullError
        hub = fitsketch.open({str(tmp_path / 'h')!r}, create=True)
        hub.add("a", pd.DataFrame({{"x": np.arange(50.0)}}))
        vm = [int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmSize')][0] * 1024
        resource.setrlimit(resource.RLIMIT_AS, (vm + (256 << 20), resource.RLIM_INFINITY))
        hub._transact(lambda t: None, reserve=1 << 34)
        try:
            hub.store._resize(1 << 36)
            raise SystemExit("no error")
        except DiskFullError as e:
            assert "cannot grow" in str(e)
        resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        hub.add("b", pd.DataFrame({{"x": np.arange(60.0)}}))
        assert len(hub) == 2 and "a" in hub and "b" in hub
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout + r.stderr


def _packed_filters(b: bytes) -> list:
    """The filter of every compressed array (ExtType 2) of a packed record, in packing order."""
    import msgpack

    from fitsketch.storage import codec as C

    out = []
    msgpack.unpackb(b, raw=False, strict_map_key=False,
                    ext_hook=lambda code, data: out.append(msgpack.unpackb(data)[2]) if code == C.EXT_PACKED else None)
    return out


def _array_record(rng) -> dict:
    """Arrays of the kinds a hub record holds (sorted codes, repeated hash rows, small counts, floats),
    each side of ``codec.MIN_COMPRESS``."""
    n = int(rng.integers(50, 3000))
    rows = rng.integers(0, 2 ** 32, (int(rng.integers(1, 6)), 128), dtype=np.uint32)
    return {"codes": np.cumsum(rng.integers(0, 5, n)).astype(np.int32),
            "sig": rows[rng.integers(0, len(rows), int(rng.integers(1, 40)))],
            "count": rng.integers(0, int(rng.integers(2, 300)), n).astype(np.uint16),
            "x": [np.round(rng.standard_normal(int(rng.integers(1, 400))), 2).astype(np.float32), 3],
            "small": rng.integers(0, 9, int(rng.integers(0, 100))).astype(np.int8)}


def test_a_filter_memo_keeps_the_first_packs_bytes_and_choices(rng):
    """``codec.pack(filters=)`` (``parts.fit_pack``'s second level tries each array's level-1 filter
    only): the first pack is byte for byte the pack without a memo, it records for every array it
    compresses the filter of the smallest output (the first of equals), a later pack with the memo
    uses exactly those filters and decodes to the same arrays, and a memo entry naming another
    object under an array's id is ignored."""
    from fitsketch.storage import codec as C

    for _ in range(20):
        rec = _array_record(rng)
        arrays = [rec["codes"], rec["sig"], rec["count"], rec["x"][0], rec["small"]]
        memo = {}
        assert C.pack(rec, compress=True, filters=memo) == C.pack(rec, compress=True)
        for a in arrays:
            if not C.MIN_COMPRESS <= a.nbytes:
                assert id(a) not in memo
                continue
            filters = (0, 2) if a.dtype.kind in "iu" else (0, 1) if a.itemsize > 1 else (0,)
            sizes = [len(C._compress(C._filtered(a, f))[1]) for f in filters]
            assert memo[id(a)][0] is a and memo[id(a)][1] == filters[int(np.argmin(sizes))]
        level = int(rng.integers(2, 16))
        b = C.pack(rec, compress=True, level=level, filters=memo)
        big = [a for a in arrays if C.MIN_COMPRESS <= a.nbytes]
        got = C.unpack(b, stored=True)
        for a, g in zip(arrays, [got["codes"], got["sig"], got["count"], got["x"][0], got["small"]]):
            assert g.dtype == a.dtype and g.shape == a.shape and g.tobytes() == a.tobytes()
        kept = [memo[id(a)][1] for a in big]   # the compressed ones, in packing order, used the memo's filters
        assert _packed_filters(b) == [f for a, f in zip(big, kept) if _fits(a, f, level)]
        other = {id(a): (a.copy(), 1 - memo[id(a)][1] % 2) for a in big}   # not these objects: ignored
        assert C.pack(rec, compress=True, filters=other) == C.pack(rec, compress=True)


def test_a_preferred_filter_is_the_only_one_tried(rng, monkeypatch):
    """``codec.prefer`` (``parts.fit_pack``'s hints): an array given a filter it could be tried with is
    compressed with that filter alone -- one compression instead of two, the bytes the format's definition
    gives for that filter -- the other arrays are tried as before, a filter the array's dtype is not tried
    with is ignored, and the record decodes to the same arrays."""
    from fitsketch.storage import codec as C

    for _ in range(20):
        rec = _array_record(rng)
        arrays = [rec["codes"], rec["sig"], rec["count"], rec["x"][0], rec["small"]]
        memo, given = {}, {}
        for a in arrays:
            if rng.random() < 0.6:
                f = int(rng.choice([0, 1, 2]))
                C.prefer(memo, a, f)
                if f in C._tries(a.dtype):
                    given[id(a)] = f
        assert set(memo) == set(given)
        calls = []
        real = C._compress
        monkeypatch.setattr(C, "_compress", lambda b, level=None: calls.append(1) or real(b, level))
        b = C.pack(rec, compress=True, filters=memo)
        monkeypatch.setattr(C, "_compress", real)
        assert b == _reference_pack(rec, flts=given)
        big = [a for a in arrays if C.MIN_COMPRESS <= a.nbytes]
        assert len(calls) == sum(1 if id(a) in given else len(C._tries(a.dtype)) for a in big)
        got = C.unpack(b, stored=True)
        for a, g in zip(arrays, [got["codes"], got["sig"], got["count"], got["x"][0], got["small"]]):
            assert g.dtype == a.dtype and g.shape == a.shape and g.tobytes() == a.tobytes()


def test_fit_pack_hints_reach_nested_fields_and_round_trip(rng):
    """``parts.fit_pack(obj, hints)``: each field named in ``hints`` (nested dicts too) is stored with its
    hinted filter where it is stored compressed, the other fields as the trial chose, and the record
    decodes to what was packed."""
    from fitsketch.storage import codec as C

    for _ in range(10):
        codes = np.cumsum(rng.integers(0, 5, 3000)).astype(np.int32)
        noise = rng.integers(0, 2**31, 800).astype(np.uint32)
        rec = {"v": 1, "coverage": {"code": codes, "count": rng.integers(0, 3, 3000).astype(np.uint16)},
               "keys": noise, "c": rng.integers(0, 200, 2000).astype(np.uint8)}
        hints = {"coverage": {"code": 0, "count": 2}, "keys": 2, "missing": 0}
        b = PT.fit_pack(rec, hints)
        got = C.unpack(b, stored=True)
        assert got["coverage"]["code"].tobytes() == codes.tobytes() and got["keys"].tobytes() == noise.tobytes()
        assert got["c"].tobytes() == rec["c"].tobytes()
        flts = {id(rec["coverage"]["code"]): 0, id(rec["coverage"]["count"]): 2, id(noise): 2}
        memo = {}
        PT._prefer(memo, rec, hints)
        first = C.pack(rec, compress=True, filters=memo)
        assert first == _reference_pack(rec, flts=flts)
        if not PT._near(len(first)):      # no second level: fit_pack keeps exactly that first pack
            assert b == first


def test_the_hinted_filters_are_the_fields_best_on_both_kinds_of_data(rng):
    """The filters ``parts`` gives ``fit_pack`` for the signature, histogram, JS-LSH key and coverage
    records (``SIG_FILTERS`` ...) cost at most 1 % more bytes than trying both filters, on fresh
    real-valued data and on merged sketches of several distributions -- what they were chosen on at
    scale (bench/SUMMARY.md); a change of a record's layout that makes a hint wrong fails here."""
    from fitsketch import profiles as PR
    from fitsketch.partitions import pack_hist
    from fitsketch.storage import codec as C

    cfg = fitsketch.SketchConfig(seed=int(rng.integers(0, 2**31)))
    real = [fitsketch.sketch_data(np.round(rng.normal(size=(4000, 24)), 4), partition_size=200, config=cfg)
            for _ in range(3)]
    makers = [lambda n: rng.normal(size=n), lambda n: rng.uniform(-2, 2, n), lambda n: rng.exponential(1.0, n),
              lambda n: rng.integers(0, 7, n).astype(float)]
    merged = []
    for _ in range(3):
        parts = [fitsketch.sketch_data(np.round(np.stack([makers[(j + k) % 4](400) for j in range(24)], axis=1), 3),
                                       partition_size=200, config=cfg) for k in range(4)]
        sk = parts[0]
        for q in parts[1:]:
            sk = sk.merge(q)
        merged.append(sk)
    for group in (real, merged):
        sums = {}
        for sk in group:
            keys = PR.record(sk.hist, sk.names, sk.n_partitions, cfg, "cpu")[1]
            recs = {"sig": (PT._sig_record(sk.signatures), PT.SIG_FILTERS),
                    "hist": (pack_hist(sk.hist, sk.n_partitions, sk.n_features), PT.HIST_FILTERS),
                    "keys": (keys, PT.KEYS_FILTERS)}
            if sk.coverage is not None:
                recs["extra"] = ({"v": 1, "coverage": sk.coverage}, PT.EXTRA_FILTERS)
            for kind, (rec, hints) in recs.items():
                memo = {}
                PT._prefer(memo, rec, hints)
                hinted, tried = len(C.pack(rec, compress=True, filters=memo)), len(C.pack(rec, compress=True))
                h, t = sums.get(kind, (0, 0))
                sums[kind] = (h + hinted, t + tried)
        assert {"sig", "hist", "keys"} <= set(sums)
        for kind, (h, t) in sums.items():
            assert h <= 1.01 * t, (kind, h, t)


def _fits(a, flt, level) -> bool:
    """Whether ``a`` through filter ``flt`` at ``level`` is stored compressed (8 bytes smaller or more)."""
    from fitsketch.storage import codec as C

    return len(C._compress(C._filtered(np.ascontiguousarray(a), flt), level)[1]) + 8 < a.nbytes


def _reference_pack(obj, level=None, flts: dict | None = None) -> bytes:
    """``codec.pack(obj, compress=True, level=)`` written from the format's definition (storage/codec.py's
    docstring), independently of the writer's buffers: each array of ``MIN_COMPRESS`` .. ``MAX_UNPACKED``
    bytes as ``ExtType(2)`` with the filter whose zstd output is smallest (the first of equals; ``flts``:
    the one filter to use for an array, by id), unless that output is not 8 bytes smaller than the array."""
    import msgpack
    import pyarrow as pa

    from fitsketch.storage import codec as C

    z = pa.Codec("zstd", compression_level=C.ZSTD_LEVEL if level is None else level)

    def filtered(a, flt):
        if flt == 2:   # delta in the array's own dtype (wrapping), then the byte planes
            flat = a.reshape(-1)
            a = np.concatenate([flat[:1], flat[1:] - flat[:-1]]).astype(a.dtype)   # concatenate: native order
        u = np.frombuffer(a.tobytes(), dtype=np.uint8)
        return u.tobytes() if flt == 0 else u.reshape(-1, a.itemsize).T.tobytes()

    def plain(a):
        return msgpack.ExtType(C.EXT_NDARRAY, msgpack.packb([a.dtype.str, list(a.shape), a.tobytes()],
                                                            use_bin_type=True))

    def default(o):
        if isinstance(o, np.generic):
            return plain(np.asarray(o))
        if isinstance(o, tuple):
            return list(o)
        a = np.ascontiguousarray(o)
        if not C.MIN_COMPRESS <= a.nbytes <= C.MAX_UNPACKED:
            return plain(a)
        kinds = (0, 2) if a.dtype.kind in "iu" else (0, 1) if a.itemsize > 1 else (0,)
        outs = [(f, z.compress(filtered(a, f), asbytes=True)) for f in ((flts[id(o)],) if flts and id(o) in flts
                                                                        else kinds)]
        f, best = min(outs, key=lambda fz: len(fz[1]))   # min keeps the first of equals
        if len(best) + 8 >= a.nbytes:
            return plain(a)
        return msgpack.ExtType(C.EXT_PACKED, msgpack.packb([a.dtype.str, list(a.shape), f, C._ZSTD, best],
                                                           use_bin_type=True))

    return msgpack.packb(obj, use_bin_type=True, strict_types=True, default=default)


def test_the_record_writer_matches_the_format_definition_byte_for_byte(rng):
    """The writer's filters and compressors (buffers compressed in place, the filtered bytes kept in the
    ``filters=`` memo for a second pack) write exactly what the format's definition does: every dtype
    a record holds (big-endian and bool included), 0, 1, odd and page-sized arrays, 2-D and
    non-contiguous ones, a first pack and a second pack at another level through the memo."""
    from fitsketch.storage import codec as C

    if C._zstd() is None:
        pytest.skip("this pyarrow build has no zstd")
    dtypes = ("u1", "i1", "?", "<u2", ">i2", "<f2", "<i4", ">u4", "<f4", "<u8", "<i8", "<f8", "<c8")
    for _ in range(6):
        rec = {}
        for dt in dtypes:
            dt = np.dtype(dt)
            n = int(rng.choice([0, 1, 2, 3, C.MIN_COMPRESS // dt.itemsize - 1, C.MIN_COMPRESS // dt.itemsize,
                                int(rng.integers(65, 3000)), int(rng.integers(3000, 9000))]))
            low = int(rng.integers(1, 40))
            if dt.kind == "b":
                a = rng.integers(0, 2, n).astype(bool)
            elif dt.kind == "c":
                a = (np.round(rng.standard_normal(n), 1) + 1j * rng.integers(0, low, n)).astype(dt)
            elif dt.kind == "f":
                a = np.round(rng.standard_normal(n) * low, int(rng.integers(0, 3))).astype(dt)
            else:   # sorted codes (delta wins) or repeated small values (none wins), with wrap-around
                a = rng.integers(0, low, n).astype(dt)
                if rng.random() < 0.5:
                    a = np.cumsum(a, dtype=dt).astype(dt)     # cumsum gives native order: back to dt
            rec[dt.str] = a
        # always a sorted big-endian int and a big-endian float array, large enough to be filtered
        rec["be_int"] = np.cumsum(rng.integers(0, 9, int(rng.integers(600, 3000)))).astype(">i4")
        rec["be_float"] = np.round(rng.standard_normal(int(rng.integers(600, 3000))), 2).astype(">f8")
        rec["2d"] = rng.integers(0, 7, (int(rng.integers(1, 40)), 33)).astype(np.uint32)
        rec["strided"] = rng.integers(0, 50, int(rng.integers(400, 4000)))[::3]         # not contiguous
        rec["t"] = rng.integers(0, 3, (70, int(rng.integers(2, 30)))).astype(np.uint16).T   # Fortran order
        rec["rest"] = [np.float32(2.5), np.int64(-3), "x", 7, (1, 2.0)]
        memo = {}
        first = C.pack(rec, compress=True, filters=memo)
        assert first == _reference_pack(rec)
        flts = {k: v[1] for k, v in memo.items()}
        level = int(rng.integers(2, 16))
        assert C.pack(rec, compress=True, level=level, filters=memo) == _reference_pack(rec, level, flts)
        assert C.pack(rec, compress=True, level=level) == _reference_pack(rec, level)
        # a memo naming other objects under these arrays' ids (with other filtered bytes) is ignored
        other = {k: (v[0].copy(), v[1], np.zeros(7, np.uint8)) for k, v in memo.items()}
        assert C.pack(rec, compress=True, level=level, filters=other) == _reference_pack(rec, level)


def _page_record(rng) -> dict:
    """A record of a few arrays, 2-60 KiB packed: many land just over a page boundary."""
    rec = {"v": 1}
    for i in range(int(rng.integers(1, 5))):
        n = int(rng.integers(1, 12_000))
        kind = int(rng.integers(0, 3))
        if kind == 0:     # repeated hash rows (signatures): level 15 finds more of the repeats
            rows = rng.integers(0, 2 ** 32, (int(rng.integers(2, 30)), 16), dtype=np.uint32)
            a = rows[rng.integers(0, len(rows), max(n // 16, 1))]
        elif kind == 1:   # sorted codes
            a = np.cumsum(rng.integers(0, int(rng.integers(2, 200)), n)).astype(np.int32)
        else:             # small counts
            a = rng.integers(0, int(rng.integers(2, 300)), n).astype(np.uint16)
        rec[f"a{i}"] = a
    return rec


@pytest.mark.parametrize("share", [0.1, 1.0])
def test_fit_pack_tries_the_cheap_level_first_and_never_more_pages(rng, monkeypatch, share):
    """``parts.fit_pack``'s ladder: a record within ``FIT_SHARE`` of saving a page is packed again at
    ``FIT_FIRST``; that pack is kept when it saves the page and is not within ``FIT_SHARE`` of saving
    another, else ``FIT_LEVEL`` is tried against the best so far. Checked against that rule written
    out (packs at each level through one filter memo), byte for byte; it never takes more pages than
    the first pack; it decodes to the same arrays. With ``FIT_FIRST = 0`` it takes the fewer pages of the
    first pack and ``FIT_LEVEL``'s, as before the ladder."""
    from fitsketch.storage import codec as C

    monkeypatch.setattr(PT, "FIT_SHARE", share)
    ladder, tried = PT.FIT_FIRST, 0
    assert 0 < ladder < PT.FIT_LEVEL
    for _ in range(30):
        rec = _page_record(rng)
        memo = {}
        fast = C.pack(rec, compress=True, filters=memo)
        first = C.pack(rec, compress=True, level=PT.FIT_FIRST, filters=memo)
        strong = C.pack(rec, compress=True, level=PT.FIT_LEVEL, filters=memo)
        n = len(fast)
        near = PT.INLINE_MAX < n <= PT.FIT_MAX and min(n - PT.INLINE_MAX, (n + 16) % PT.PAGE or PT.PAGE) <= share * n
        want = fast
        if near:
            tried += 1
            if PT._pages(len(first)) < PT._pages(len(want)):
                want = first
            m = len(want)
            again = PT.INLINE_MAX < m and min(m - PT.INLINE_MAX, (m + 16) % PT.PAGE or PT.PAGE) <= share * m
            if (want is fast or again) and PT._pages(len(strong)) < PT._pages(len(want)):
                want = strong
        got = PT.fit_pack(rec)
        assert got == want
        assert PT._pages(len(got)) <= PT._pages(n)
        back = C.unpack(got, stored=True)
        assert all(back[k].tobytes() == rec[k].tobytes() and back[k].dtype == rec[k].dtype for k in rec if k != "v")
        monkeypatch.setattr(PT, "FIT_FIRST", 0)    # FIT_LEVEL alone: the fewer pages of the two packs
        assert PT._pages(len(PT.fit_pack(rec))) == (min(PT._pages(n), PT._pages(len(strong))) if near else PT._pages(n))
        monkeypatch.setattr(PT, "FIT_FIRST", ladder)
    assert tried   # some records were near a boundary


def _prepare_threads() -> list:
    import threading

    return [t for t in threading.enumerate() if t.name.startswith("fitsketch-prepare")]


@pytest.mark.parametrize("threads", [2, 3])
def test_threads_store_the_bytes_of_one_thread(tmp_path, rng, monkeypatch, threads):
    """``add_sketches`` preparing (and packing) its chunks in ``threads`` threads, the next batch while
    one is written (parts.batch_writers), stores byte for byte what the calling thread alone stores:
    0, 1, a batch, a batch + 1 and an odd number of fresh sketches, small chunks so that a batch
    spans several threads; no prepare thread outlives the call."""
    monkeypatch.setattr(PT.time, "time", lambda: 1.7e9)
    monkeypatch.setattr(PT, "PREPARE_CHUNK", int(rng.integers(1, 4)))
    cfg = fitsketch.SketchConfig(seed=int(rng.integers(0, 2**31)))
    batch = int(rng.integers(2, 5))
    sks = _sketches(rng, cfg, 2 * batch + 3)
    for n in sorted({0, 1, batch, batch + 1, 2 * batch + 3}):
        items = [(f"e{i}", s, {"i": i}) for i, s in enumerate(sks[:n])]
        dumps = []
        for t in (1, threads):
            monkeypatch.setattr(PT, "PREPARE_THREADS", t)
            with fitsketch.open(tmp_path / f"{n}-{t}.hub", config=cfg) as hub:
                assert hub.add_sketches(items, batch=batch) == n
                check_hub(hub)
                dumps.append(_dump(hub))
            assert not _prepare_threads()
        assert len(dumps[0]["entries"]) == n
        _assert_same(dumps[0], dumps[1], f"{n} entries")


class _Boom(E.InvalidArgumentError):
    """A named error raised by a prepare thread (the test's own subclass: told apart from any other)."""


@pytest.mark.parametrize("where", ["first batch", "later batch", "transaction"])
def test_an_error_in_a_thread_surfaces_and_leaves_its_batch_unwritten(tmp_path, rng, monkeypatch, where):
    """A part failing in a prepare thread raises its own error from ``add_sketches``; the batches
    before it stay written (each batch all or nothing, as one thread writes them) and nothing of the
    failing batch is; a failing transaction, with the next batch in flight, likewise. The hub then
    equals one given only the batches before, and no prepare thread is left running."""
    monkeypatch.setattr(PT.time, "time", lambda: 1.7e9)
    monkeypatch.setattr(PT, "PREPARE_THREADS", 2)
    monkeypatch.setattr(PT, "PREPARE_CHUNK", 1)
    cfg = fitsketch.SketchConfig(seed=int(rng.integers(0, 2**31)))
    batch = 3
    items = [(f"e{i}", s) for i, s in enumerate(_sketches(rng, cfg, 3 * batch))]
    fail_at = {"first batch": 1, "later batch": int(rng.integers(batch, 3 * batch)), "transaction": batch}[where]
    keep = fail_at // batch * batch                       # the entries of the batches before the failing one
    bad = items[fail_at][0]
    part = PT.Profile if where != "transaction" else PT.Bands
    method = "prepare_many" if where != "transaction" else "write_many"
    orig = getattr(part, method)

    def failing(self, *args):
        news = args[0] if method == "prepare_many" else args[2]
        if any(n.name == bad for n in news):
            raise _Boom(f"entry {bad} fails here")
        return orig(self, *args)

    with fitsketch.open(tmp_path / "ref.hub", config=cfg) as ref:
        ref.add_sketches(items[:keep], batch=batch)
        want = _dump(ref)
    monkeypatch.setattr(part, method, failing)
    with fitsketch.open(tmp_path / "h.hub", config=cfg) as hub:
        with pytest.raises(_Boom, match=bad):
            hub.add_sketches(items, batch=batch)
        assert not _prepare_threads()
        assert len(hub) == keep
        _assert_same(want, _dump(hub), where)
        monkeypatch.setattr(part, method, orig)
        assert hub.add_sketches(items[keep:], batch=batch) == len(items) - keep   # and the rest can follow
        check_hub(hub)


@pytest.mark.parametrize("threads", [1, 2])
def test_an_entry_that_cannot_be_built_leaves_the_hub_unchanged_on_any_thread_count(tmp_path, rng, monkeypatch,
                                                                                    threads):
    """Every entry is built (``Hub._new_entry``: its class record's performance included) before the
    first batch is written: one that fails in a later batch leaves the hub unchanged -- with the
    next batch prepared in threads as with one thread (review, eleventh session: 2 threads lost the
    batch before it, 1 thread wrote it) -- and no prepare thread is left running."""
    cfg = fitsketch.SketchConfig(seed=int(rng.integers(0, 2**31)))
    items = [(f"e{i}", s) for i, s in enumerate(_sketches(rng, cfg, 7))]
    bad = items[int(rng.integers(3, 7))][0]
    real = fitsketch.Hub._new_entry

    def failing(self, name, *args, **kw):
        if name == bad:
            raise KeyboardInterrupt(f"stopped at {name}")
        return real(self, name, *args, **kw)

    monkeypatch.setattr(fitsketch.Hub, "_new_entry", failing)
    with fitsketch.open(tmp_path / "h.hub", config=cfg) as hub:
        with pytest.raises(KeyboardInterrupt, match=bad):
            hub.add_sketches(items, batch=3, threads=threads)
        assert len(hub) == 0 and hub.stats()["generation"] == 0
        assert not _prepare_threads()


def test_the_thread_count_is_checked_and_forced_by_the_environment(tmp_path, rng, monkeypatch):
    """``add_sketches(threads=)`` outside 1..64 is refused before anything is written;
    ``FITSKETCH_PREPARE_THREADS`` sets the default (a positive integer; anything else is a named
    error that says what to give)."""
    cfg = fitsketch.SketchConfig(seed=1)
    items = [(f"e{i}", s) for i, s in enumerate(_sketches(rng, cfg, 2))]
    with fitsketch.open(tmp_path / "h.hub", config=cfg) as hub:
        for bad in (0, -1, 65, 2.0, True, "2"):
            with pytest.raises(E.InvalidArgumentError, match="threads="):
                hub.add_sketches(items, threads=bad)
        assert len(hub) == 0
    for value, want in (("1", 1), ("3", 3), (" 2 ", 2)):
        monkeypatch.setenv("FITSKETCH_PREPARE_THREADS", value)
        assert PT._prepare_threads() == want
    for value in ("0", "-2", "two", "1.5"):
        monkeypatch.setenv("FITSKETCH_PREPARE_THREADS", value)
        with pytest.raises(E.InvalidArgumentError, match="FITSKETCH_PREPARE_THREADS"):
            PT._prepare_threads()
    monkeypatch.delenv("FITSKETCH_PREPARE_THREADS")
    assert PT._prepare_threads() == min(2, len(__import__("os").sched_getaffinity(0)))
