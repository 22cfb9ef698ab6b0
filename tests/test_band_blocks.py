"""Hub format 6: LSH band postings compacted into blocks inside LMDB (engine/band_blocks.py).

Checked on fresh random inputs: a block encodes and decodes to its postings (empty key set refused,
one posting, one key with many ids, keys and ids at their extremes, odd sizes); cutting postings
into blocks loses nothing and keeps each block within a page unless one key fills it; lookups
through the blocks and the delta equal a plain dict of postings after random adds, compactions
(small chunks, so a compaction takes many transactions) and removals interleaved, over several
seeds, and every posting is held exactly once; a read transaction opened before a compaction or
a removal sees its own snapshot's postings; a damaged block is ``CorruptHubError``; a format-5 hub
reads as it is read-only, is upgraded on a writable open, compacts and removes; an older
fitsketch refuses format 6; ``Hub.add`` compacts past its threshold and searches forced through
the LSH stage answer alike before and after compaction."""
from __future__ import annotations

import threading

import numpy as np
import pytest

import fitsketch
import fitsketch.storage.env as env_mod
from fitsketch import band_blocks as B
from fitsketch import errors as E
from fitsketch import planner, signature_records
from fitsketch.minhash import feature_band_keys
from fitsketch.storage import HubStore, SchemaError, u64


def _postings(rng, n, n_keys, max_eid=1 << 32):
    """n (key, eid) pairs, distinct, sorted by (key, eid): keys from a pool of ``n_keys`` (with the
    extremes 0 and 2**64 - 1), ids in [0, max_eid)."""
    pool = np.unique(np.r_[rng.integers(0, 1 << 63, n_keys, dtype=np.uint64) * np.uint64(2) + np.uint64(1),
                           np.uint64(0), np.uint64((1 << 64) - 1)])
    k = pool[rng.integers(0, len(pool), n)]
    e = rng.integers(0, max_eid, n, dtype=np.int64)
    kv = np.unique(np.stack([k, e.astype(np.uint64)], axis=1), axis=0)
    return kv[:, 0].copy(), kv[:, 1].astype(np.int64)


@pytest.mark.parametrize("n,n_keys,max_eid", [(1, 1, 1 << 32), (7, 3, 50), (97, 40, 1 << 32), (1001, 5, 3000),
                                              (5000, 1, 1 << 20), (333, 333, 10)])
def test_a_block_round_trips(rng, n, n_keys, max_eid):
    k, e = _postings(rng, n, n_keys, max_eid)
    raw = B.encode(k, e)
    uk, c, got = B.decode(raw, int(k[-1]))
    assert np.array_equal(np.repeat(uk, c), k) and np.array_equal(got.astype(np.int64), e)
    assert got.dtype == np.uint32 and uk.dtype == np.uint64


@pytest.mark.parametrize("n,n_keys", [(0, 1), (1, 1), (7, 7), (3000, 2), (20011, 900), (60000, 20000)])
def test_cut_keeps_every_posting_in_blocks_of_a_page(rng, n, n_keys):
    k, e = _postings(rng, n, n_keys, max_eid=1 << int(rng.integers(8, 33)))
    blocks = B._cut(k, e)
    got_k, got_e, lasts = [], [], []
    for last, raw in blocks:
        uk, c, ids = B.decode(raw, last)
        assert len(raw) <= B.BLOCK_BYTES or len(uk) == 1       # a key too large alone: its own block
        got_k.append(np.repeat(uk, c))
        got_e.append(ids.astype(np.int64))
        lasts.append(last)
    assert lasts == sorted(set(lasts))
    assert np.array_equal(np.concatenate(got_k) if got_k else B._EMPTY, k)
    assert np.array_equal(np.concatenate(got_e) if got_e else np.zeros(0, np.int64), e)
    if n >= 20000:
        assert np.mean([len(r) for _, r in blocks[:-1]]) > 0.8 * B.BLOCK_BYTES   # blocks are filled


def _all(txn) -> list:
    """Every (key, eid) the hub holds, from the blocks and the delta, each as often as held."""
    out = []
    for bkey, raw in _raw_items(txn, B.DB):
        uk, c, e = B.decode(raw, int.from_bytes(bkey, "big"))
        out += list(zip(np.repeat(uk, c).tolist(), e.tolist()))
    out += [(int.from_bytes(k, "big"), int.from_bytes(v[:4], "big")) for k, v in txn.items(B.DELTA)]
    return sorted(out)


def _all_of(hub) -> list:
    with hub.store.read() as txn:
        return _all(txn)


def _raw_items(txn, db):
    with txn._txn.cursor(db=txn._db(db)) as cur:
        return list(cur) if cur.first() else []


def _check(txn, ref: dict, rng, removed=()):
    """Every posting of ``ref`` held exactly once -- and, in the blocks, those of the entries ``removed``
    (dead: lookups skip them) -- and lookups equal to ``ref``'s."""
    held = sorted((k, e) for k, ids in ref.items() for e in ids)
    assert [p for p in _all(txn) if p[1] not in removed] == held          # each posting exactly once
    keys = list(ref)
    for _ in range(5):
        q = [keys[i] for i in rng.integers(0, len(keys), int(rng.integers(1, 40)))] if keys else []
        q += rng.integers(0, 1 << 63, 5, dtype=np.uint64).tolist()          # keys nobody holds
        want = sorted({e for k in q for e in ref.get(int(k), ())})
        assert B.lookup(txn, np.array(q, dtype=np.uint64)).tolist() == want


@pytest.mark.parametrize("trial", range(3))
@pytest.mark.parametrize("width", [4, 8])    # 8: (entry id, feature) postings of a hub upgraded from format <= 3
def test_lookups_equal_a_dict_after_adds_compactions_and_removals(tmp_path, rng, monkeypatch, trial, width):
    monkeypatch.setattr(B, "BLOCK_BYTES", int(rng.choice([300, 1000, 4080])))   # many blocks, small inputs
    pool = rng.integers(0, 1 << 64, int(rng.integers(5, 400)), dtype=np.uint64)
    ref: dict[int, set] = {}
    next_eid, removed = 0, set()
    with HubStore(tmp_path / "h", map_size=1 << 26) as store:
        for step in range(12):
            op = rng.choice(["add", "add", "compact", "remove", "sweep"])
            if op == "add":
                n_new = int(rng.integers(1, 6))
                keys, vals = [], []
                for eid in range(next_eid, next_eid + n_new):
                    ks = np.unique(pool[rng.integers(0, len(pool), int(rng.integers(1, 60)))])
                    keys.append(ks)
                    vals.append(np.full(len(ks), eid, np.int64))
                    for k in ks.tolist():
                        ref.setdefault(k, set()).add(eid)
                next_eid += n_new
                k, v = np.concatenate(keys), np.concatenate(vals)
                order = np.argsort(k, kind="stable")
                v = v if width == 4 else (v << 32) | (v % 7)
                news = range(next_eid - n_new, next_eid)

                def add(t):
                    t.put_dups("bands", k[order], v[order], width=width)
                    for eid in news:                         # compaction keeps the postings of entries held
                        t.put("entries", u64(eid), {})

                store.transact(add)
            elif op == "compact":
                steps = B.compact(store, chunk=int(rng.integers(1, 200)))
                with store.read() as txn:
                    assert txn.count(B.DELTA) == 0 and steps >= 1
            elif op == "sweep":                              # removed entries' postings dropped from every block
                monkeypatch.setattr(B, "COMPACT_BLOCK_BYTES", int(rng.choice([1, 2000, 1 << 24])))
                B.sweep(store)
                with store.read() as txn:
                    assert B.dead(txn) == 0
            else:
                eids = sorted({e for ids in ref.values() for e in ids})
                if not eids:
                    continue
                eid = int(rng.choice(eids))
                ks = np.array(sorted(k for k, ids in ref.items() if eid in ids), dtype=np.uint64)

                def remove(t):                               # as parts.Bands.delete does
                    t.delete("entries", u64(eid))
                    v = eid.to_bytes(4, "big") if width == 4 else eid.to_bytes(4, "big") + (eid % 7).to_bytes(4, "big")
                    B.removed(t, len(ks) - sum(t.delete_dup("bands", u64(k), v) for k in ks.tolist()))

                store.transact(remove)
                removed.add(eid)
                for k in ks.tolist():
                    ref[k].discard(eid)
                    if not ref[k]:
                        del ref[k]
            with store.read() as txn:
                _check(txn, ref, rng, removed)
                ids = [B.decode(raw, int.from_bytes(k, "big"))[2] for k, raw in _raw_items(txn, B.DB)]
                assert B.held(txn) == sum(len(e) for e in ids)
                gone = {int(e) for e in np.concatenate(ids or [np.zeros(0, np.int64)])} - \
                    {e for es in ref.values() for e in es}
                assert len(gone) == 0 or B.dead(txn) > 0        # a lookup can skip the liveness check only when none
                dead_postings = sum(int(np.isin(e, list(gone)).sum()) for e in ids) if gone else 0
                assert B.dead(txn) == dead_postings               # counted exactly (compactions and sweeps drop them)


def test_a_reader_keeps_its_snapshot_across_a_compaction_and_a_removal(tmp_path, rng):
    keys = rng.integers(0, 1 << 64, 300, dtype=np.uint64)
    with HubStore(tmp_path / "h", map_size=1 << 26) as store:
        k = np.sort(np.repeat(keys, 3))
        v = np.tile(np.arange(3), len(keys))[np.argsort(np.repeat(keys, 3), kind="stable")]
        def add(t):
            t.put_dups("bands", k, v, width=4)
            for eid in range(3):                               # compaction keeps the postings of entries held
                t.put("entries", u64(eid), {})

        store.transact(add)
        q = keys[:50]
        with store.read() as before:
            want = B.lookup(before, q).tolist()
            held = _all(before)
            th = threading.Thread(target=lambda: B.compact(store, chunk=64))
            th.start()
            th.join()
            assert B.lookup(before, q).tolist() == want and _all(before) == held   # still the old snapshot
            with store.read() as after:
                assert after.count(B.DELTA) == 0 and _all(after) == held
                gone = np.unique(keys)

                def remove(t):
                    t.delete("entries", u64(1))
                    B.removed(t, len(gone) - sum(t.delete_dup("bands", u64(kk), (1).to_bytes(4, "big"))
                                                 for kk in gone.tolist()))

                th = threading.Thread(target=lambda: store.transact(remove))
                th.start()
                th.join()
                assert _all(after) == held and B.lookup(after, q).tolist() == want
            with store.read() as now:        # entry 1's postings stay in the blocks, dead: lookups skip them
                assert B.lookup(now, q).tolist() == [0, 2] and _all(now) == held and B.dead(now) == len(gone)
                th = threading.Thread(target=lambda: B.sweep(store))
                th.start()
                th.join()
                assert _all(now) == held                         # the reader's snapshot, across the sweep
            with store.read() as swept:
                assert B.lookup(swept, q).tolist() == [0, 2] and _all(swept) == [p for p in held if p[1] != 1]
                assert B.dead(swept) == 0


def test_a_damaged_block_is_a_named_error(tmp_path, rng):
    k, e = _postings(rng, 500, 30, 1000)
    k, e = k[k < np.uint64(1 << 62)], e[k < np.uint64(1 << 62)]               # room for a block after it
    raw = B.encode(k, e)
    last = int(k[-1])
    head = B._HEAD.unpack_from(raw)
    bad = [raw[:5], raw[:-3], b"\x09" + raw[1:],                               # truncated, format 9
           B._HEAD.pack(head[0], head[1], head[2], head[3] + 1, head[4]) + raw[B._HEAD.size:],   # counts off
           B._HEAD.pack(head[0], head[1], 0, head[3], head[4]) + raw[B._HEAD.size:],
           B._HEAD.pack(head[0], 7, *head[2:]) + raw[B._HEAD.size:],         # unknown codec
           B.encode(k[::-1].copy(), e),                                      # keys decreasing
           B.encode(np.full(3, last, np.uint64), np.array([4, 4, 5])),        # ids not increasing in a key
           raw[:B._HEAD.size] + bytes(len(raw) - B._HEAD.size)]              # zeros for the payload
    good = B.encode(k + np.uint64(1 << 62), e)                                # a sound block after it
    with HubStore(tmp_path / "h") as store:
        for i, b in enumerate(bad + [raw]):
            key = int(k[0]) if i == 6 else last - 1 if i == len(bad) else last  # the last: not the block's key
            with pytest.raises(E.CorruptHubError, match="band block"):
                B.decode(b, key)

            def put(t):
                t.delete(B.DB, u64(key)) if t.exists(B.DB, u64(key)) else None
                t.put_raw(B.DB, u64(key), b)
                t.put_raw(B.DB, u64(int(k[-1]) + (1 << 62)), good)

            store.transact(put)
            with store.read() as txn, pytest.raises(E.CorruptHubError, match="restore the hub"):
                B.lookup(txn, np.r_[k, k + np.uint64(1 << 62)])             # met by a lookup too
            store.transact(lambda t: t.delete(B.DB, u64(key)))


def _hub_answers(path, queries):
    saved = planner.SCAN_FEATURE_LIMIT
    planner.SCAN_FEATURE_LIMIT = 0                    # the candidate stage through the band postings
    try:
        with fitsketch.open(path, readonly=True) as hub:
            return [[(m.name, m.score) for m in hub.search(q, k=5, method="exact-js")] for q in queries]
    finally:
        planner.SCAN_FEATURE_LIMIT = saved


def _entry_hits(path):
    """For every stored entry, the entries its band keys find (the LSH lookup)."""
    with fitsketch.open(path, readonly=True) as hub, hub.store.read() as txn:
        sigs = [signature_records.decode(txn.get("signatures", k)) for k in txn.keys("signatures")]
        return [B.lookup(txn, feature_band_keys(s, hub.config.lsh_k, hub.config.lsh_l)).tolist() for s in sigs]


def _sketches(rng, n):
    out = []
    for i in range(n):
        X = np.round(rng.normal(size=(300, 4)) * (1 + i % 3), 2)
        out.append((f"e{i}", fitsketch.sketch_data(X, partition_size=100, feature_names=["a", "b", "c", f"x{i % 4}"])))
    return out


def test_a_format_5_hub_reads_as_it_is_and_is_upgraded(tmp_path, rng, monkeypatch):
    path = tmp_path / "h"
    items = _sketches(rng, 12)
    with monkeypatch.context() as m:                         # format 5 as the previous fitsketch writes it
        m.setattr(env_mod, "FORMAT_VERSION", 5)
        m.setattr(B, "COMPACT_MIN", 1 << 62)
        with fitsketch.open(path) as hub:
            hub.add_sketches(items[:10])
    assert fitsketch.inspect(path)["format"] == 5
    queries = [s for _, s in items[10:]]
    hits, answers = _entry_hits(path), _hub_answers(path, queries)   # read-only: no band_blocks database
    assert fitsketch.inspect(path)["format"] == 5 and all(hits)
    with fitsketch.open(path) as hub:                        # writable: upgraded
        assert hub.store._format == 6
        with hub.store.read() as txn:
            assert txn.count(B.DB) == 0 and txn.count(B.DELTA) > 0
        out = hub.compact(file=False)
        assert out["band_transactions"] >= 1
        with hub.store.read() as txn:
            assert txn.count(B.DELTA) == 0 and B.held(txn) > 0
    assert _entry_hits(path) == hits and _hub_answers(path, queries) == answers
    with fitsketch.open(path) as hub:
        gone = hub.get("e3").id
        assert gone in {e for _, e in _all_of(hub)}
        hub.remove("e3")
        hub.add_sketches(items[10:])                          # into the delta, beside the blocks
    with fitsketch.open(path) as hub:
        with hub.store.read() as txn:       # its postings stay in the blocks, dead, and no lookup returns it
            held = _all(txn)
            assert txn.count(B.DELTA) > 0 and gone in {e for _, e in held} and B.dead(txn) > 0
            assert gone not in B.lookup(txn, np.array([k for k, e in held if e == gone], dtype=np.uint64)).tolist()
        hub.compact(file=False)             # the sweep drops them
        with hub.store.read() as txn:
            assert gone not in {e for _, e in _all(txn)} and B.dead(txn) == 0 and txn.count(B.DELTA) == 0
    monkeypatch.setattr(env_mod, "FORMAT_VERSION", 5)        # a fitsketch that reads up to format 5
    with pytest.raises(SchemaError, match="format 6"):
        fitsketch.open(path, readonly=True)


def test_add_compacts_past_its_threshold_and_answers_stay(tmp_path, rng, monkeypatch):
    monkeypatch.setattr(B, "COMPACT_MIN", 200)
    monkeypatch.setattr(B, "COMPACT_SHARE", 2)
    monkeypatch.setattr(B, "BLOCK_BYTES", 600)
    items = _sketches(rng, 14)
    a, b = tmp_path / "a", tmp_path / "b"
    with fitsketch.open(b) as ref:                          # the same entries, never compacted
        monkeypatch.setattr(B, "COMPACT_MIN", 1 << 62)
        ref.add_sketches(items[:12], batch=3)
        ref.remove("e5")
    monkeypatch.setattr(B, "COMPACT_MIN", 200)
    compacted = 0
    with fitsketch.open(a) as hub:
        for name, sk in items[:12]:
            hub.add_sketch(name, sk)
            with hub.store.read() as txn:
                delta, held = txn.count(B.DELTA), B.held(txn)
                assert delta <= max(B.COMPACT_MIN, held // B.COMPACT_SHARE)   # never left over the threshold
                compacted += held > 0
        hub.remove("e5")
        with hub.store.read() as txn:
            assert B.held(txn) > 0 and compacted
    queries = [s for _, s in items[12:]] + [items[0][1]]
    assert _hub_answers(a, queries) == _hub_answers(b, queries)
    assert _entry_hits(a) == _entry_hits(b)


@pytest.mark.parametrize("processes", [0, 2])
def test_add_sketches_compacts_once_after_the_first_batch_past_the_threshold(tmp_path, rng, monkeypatch, processes):
    """A call of several batches compacts once: after the first batch past which it is due while the
    next batch is prepared (not at the end, on one core), or at the end of a call of one batch; with
    worker processes or without, the hubs are the same, and the lookups and answers those of a hub
    never compacted."""
    from fitsketch import prepare_procs

    if processes and not prepare_procs.fork_ok():
        pytest.skip("this platform does not fork")
    items = _sketches(rng, 14)
    ref = tmp_path / "ref"
    with fitsketch.open(ref) as hub:
        monkeypatch.setattr(B, "COMPACT_MIN", 1 << 62)
        hub.add_sketches(items[:12], batch=3)
    monkeypatch.setattr(B, "COMPACT_MIN", 1)
    compact, at = B.compact, []
    for path, batch in ((tmp_path / "many", 3), (tmp_path / "one", 12)):
        with fitsketch.open(path) as hub:
            monkeypatch.setattr(B, "compact", lambda store, **kw: (at.append(len(hub)), compact(store, **kw))[1])
            at.clear()
            hub.add_sketches(items[:12], batch=batch, processes=processes)
            assert at == [min(batch, 12)]            # once, when the first batch (all 12: the end) was in
            with hub.store.read() as txn:
                assert B.held(txn) > 0
    queries = [s for _, s in items[12:]] + [items[0][1]]
    for path in (tmp_path / "many", tmp_path / "one"):
        assert _hub_answers(path, queries) == _hub_answers(ref, queries)
        assert _entry_hits(path) == _entry_hits(ref)


@pytest.mark.parametrize("n", [0, 1, 2, 7, 1001])
def test_compactions_sort_and_unique_equal_numpys(rng, n):
    """``_by_key_and_id`` orders (key, id) pairs as ``np.lexsort`` does and ``_unique_sorted`` gives
    ``np.unique``: on the runs compaction gives (old blocks' postings, then the newer delta's: the stable
    sort by key alone), on runs whose ids break that (a delta id older than a block id: lexsort's
    fallback), and on unsorted input; equal keys, equal pairs and keys near 2**64 included."""
    pool = np.concatenate([rng.integers(0, 1 << 63, 8, dtype=np.uint64) * np.uint64(2),
                           np.array([0, (1 << 64) - 1], np.uint64)])
    for trial in range(20):
        nb = int(rng.integers(0, n + 1))
        keys = rng.choice(pool, n)
        eids = rng.integers(0, 50, n).astype(np.int64)
        if trial % 4 != 3:   # two (key, id)-sorted runs; the second newer unless trial % 4 == 2
            eids[nb:] += 0 if trial % 4 == 2 else 50
            for a, b in ((0, nb), (nb, n)):
                o = np.lexsort((eids[a:b], keys[a:b]))
                keys[a:b], eids[a:b] = keys[a:b][o], eids[a:b][o]
        o = np.lexsort((eids, keys))
        k, e = B._by_key_and_id(keys, eids)
        np.testing.assert_array_equal(k, keys[o])
        np.testing.assert_array_equal(e, eids[o])
        assert k.dtype == keys.dtype and e.dtype == eids.dtype
        for a in (keys, keys[o], np.sort(keys)):
            u = B._unique_sorted(a)
            np.testing.assert_array_equal(u, np.unique(a))
            assert u.dtype == a.dtype


def test_cli_compact_bands_only(tmp_path, rng, monkeypatch):
    import json
    import subprocess
    import sys

    monkeypatch.setattr(B, "COMPACT_MIN", 1 << 62)
    path = tmp_path / "h"
    with fitsketch.open(path) as hub:
        hub.add_sketches(_sketches(rng, 5))
    hits = _entry_hits(path)
    with fitsketch.open(path, readonly=True) as reader:      # the postings move while another handle reads
        with reader.store.read() as txn:
            assert txn.count(B.DELTA) > 0
        res = subprocess.run([sys.executable, "-m", "fitsketch.cli", "compact", str(path), "--bands-only", "--json"],
                             capture_output=True, text=True, timeout=300)   # another process: no HubBusyError
        assert res.returncode == 0, res.stderr[-2000:]
        out = json.loads(res.stdout)
        assert out["band_transactions"] >= 1 and out["before"] == out["after"]
        with reader.store.read() as txn:
            assert txn.count(B.DELTA) == 0 and B.held(txn) > 0
    assert _entry_hits(path) == hits


_HOLDER = ("import sys, lmdb\nenv = lmdb.open(sys.argv[1], subdir=False, max_dbs=16, readonly=True)\n"
           "print('open', flush=True)\nsys.stdin.read()")        # any process with the hub open (an older fitsketch)


def _format_5(path, items, monkeypatch):
    with monkeypatch.context() as m:                         # format 5 as the previous fitsketch writes it
        m.setattr(env_mod, "FORMAT_VERSION", 5)
        m.setattr(B, "COMPACT_MIN", 1 << 62)
        with fitsketch.open(path) as hub:
            hub.add_sketches(items)


def test_the_upgrade_to_format_6_waits_for_the_hub_alone(tmp_path, rng, monkeypatch):
    """A fitsketch of format 5 holding the hub would read and write only the delta once the postings
    move into blocks: the upgrade refuses (HubBusyError, hub unchanged) while another process has it open."""
    import subprocess
    import sys

    path = tmp_path / "h"
    _format_5(path, _sketches(rng, 6), monkeypatch)
    size = (path / "hub.lmdb").stat().st_size
    child = subprocess.Popen([sys.executable, "-c", _HOLDER, str(path / "hub.lmdb")], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "open"
        with pytest.raises(E.HubBusyError, match="stop the other fitsketch processes"):
            fitsketch.open(path)
        assert fitsketch.inspect(path)["format"] == 5 and (path / "hub.lmdb").stat().st_size == size
        with fitsketch.open(path, readonly=True) as hub:     # reading as it is still works beside it
            assert len(hub) == 6
    finally:
        child.communicate("", timeout=60)
    with fitsketch.open(path) as hub:                        # alone: upgraded
        assert hub.store._format == 6 and len(hub) == 6
        hub.compact()                                        # this process's locks held across the upgrade
    assert fitsketch.inspect(path)["format"] == 6


def test_postings_of_entries_gone_are_skipped_and_dropped_by_compaction(tmp_path, rng):
    """Postings a format-5 process's removal would have left in the blocks: the candidate stage skips
    them (no entry to verify) and the next compaction of their block drops them."""
    path = tmp_path / "h"
    items = _sketches(rng, 9)
    with fitsketch.open(path) as hub:
        hub.add_sketches(items)
        gone = hub.get("e8").id                              # an id below meta/next_id that no entry has
        hub.remove("e8")
        hub.compact(file=False)
        want = _all_of(hub)
        with hub.store.read() as txn:
            bkey, raw = _raw_items(txn, B.DB)[0]
        last = int.from_bytes(bkey, "big")
        k, c, e = B.decode(raw, last)
        keys, eids = np.r_[B._expand(k, c), np.uint64(last)], np.r_[e.astype(np.int64), gone]

        def stale(t):
            t.put_raw(B.DB, bkey, B.encode(keys, eids))
            t.put("meta", B.HELD_KEY, B.held(t) + 1)

        hub.store.transact(stale)
        assert (last, gone) in _all_of(hub)
    answers = _hub_answers(path, [s for _, s in items[:3]])  # the stale posting met, skipped
    assert [a[0][0] for a in answers] == [n for n, _ in items[:3]]
    with fitsketch.open(path) as hub:
        live = [e for kk, e in want if kk == last][0]       # a delta posting into that block: compacted with it
        hub.store.transact(lambda t: t.put_dups(B.DELTA, np.array([last], np.uint64), np.array([live]), width=4))
        B.compact(hub.store)
        assert _all_of(hub) == want
        with hub.store.read() as txn:
            assert B.held(txn) == len(want)


def _hostile(nk: int, n: int) -> bytes:
    """A block of zstd-compressed zeros claiming ``nk`` keys and ``n`` postings (a few KB stored)."""
    from fitsketch.storage.codec import compress

    codec, zk = compress(np.zeros(12 * nk, np.uint8), B.BLOCK_LEVEL)
    _, ze = compress(np.zeros(4 * n, np.uint8), B.BLOCK_LEVEL)
    return B._HEAD.pack(B.BLOCKS_FORMAT, codec, nk, n, len(zk)) + zk + ze


def test_a_hostile_block_is_refused_before_it_inflates(tmp_path, rng):
    """Blocks whose header claims millions of keys or postings: CorruptHubError, with no more memory
    than a sound block could take (keys bounded by BLOCK_MAX_KEYS, postings by the hub's entry ids)."""
    import tracemalloc

    path = tmp_path / "h"
    with fitsketch.open(path) as hub:
        hub.add_sketches(_sketches(rng, 6))
        hub.compact(file=False)
        with hub.store.read() as txn:
            items = _raw_items(txn, B.DB)
            q = np.array([int.from_bytes(k, "big") for k, _ in items], np.uint64)
        most = 7                                                 # meta/next_id of 6 entries
        for nk, n in [(1 << 21, 1 << 21), (B.BLOCK_MAX_KEYS, B.BLOCK_MAX_KEYS * most + 1), (1, 1 << 25)]:
            bad = _hostile(nk, n)
            assert len(bad) < 20_000

            def put(t):
                for k, _ in items[:3]:                           # three touched blocks
                    t.put_raw(B.DB, k, bad)

            hub.store.transact(put)
            with hub.store.read() as txn:
                tracemalloc.start()
                try:
                    with pytest.raises(E.CorruptHubError, match="band block"):
                        B.lookup(txn, q)
                    peak = tracemalloc.get_traced_memory()[1]
                finally:
                    tracemalloc.stop()
            assert peak < 4 << 20, (nk, n, peak)
            with pytest.raises(E.CorruptHubError, match="band block"):      # a sweep reads every block
                hub.store.transact(lambda t: B._sweep_step(t, 0))
            hub.store.transact(lambda t: [t.put_raw(B.DB, k, raw) for k, raw in items[:3]])


def test_an_add_whose_compaction_fails_is_added_and_says_so(tmp_path, rng, monkeypatch, caplog):
    """Auto-compaction runs after the add committed: its failure is logged, the entry is there (no
    EntryExistsError on a retry), and the next add compacts."""
    items = _sketches(rng, 4)
    with fitsketch.open(tmp_path / "h") as hub:
        monkeypatch.setattr(B, "COMPACT_MIN", 1)
        step = B._compact_step

        def full(txn, start, chunk):
            raise env_mod.DiskFullError("no space left (test)")

        monkeypatch.setattr(B, "_compact_step", full)
        with caplog.at_level("WARNING", logger="fitsketch.hub"):
            hub.add_sketch(*items[0])
            hub.add_sketches(items[1:3])
        assert sorted(hub.names()) == ["e0", "e1", "e2"]
        assert caplog.text.count("the entries were added") == 2 and "DiskFullError" in caplog.text
        with hub.store.read() as txn:
            assert txn.count(B.DELTA) > 0 and B.held(txn) == 0
        monkeypatch.setattr(B, "_compact_step", step)
        hub.add_sketch(*items[3])                                  # the next add compacts
        with hub.store.read() as txn:
            assert txn.count(B.DELTA) == 0 and B.held(txn) > 0


def test_an_add_compacts_at_most_a_few_chunks(tmp_path, rng, monkeypatch):
    """The first add after a large delta (a big format-5 hub upgraded) moves AUTO_STEPS chunks, not the
    whole index; later adds carry on, and lookups stay those of the uncompacted hub."""
    path = tmp_path / "h"
    items = _sketches(rng, 14)
    _format_5(path, items[:10], monkeypatch)
    hits = _entry_hits(path)
    monkeypatch.setattr(B, "COMPACT_MIN", 1)
    steps = []
    step = B._compact_step

    def small(txn, start, chunk):
        steps[-1] += 1
        return step(txn, start, 40)                                # many chunks in a small hub

    monkeypatch.setattr(B, "_compact_step", small)
    with fitsketch.open(path) as hub:
        for name, sk in items[10:]:
            steps.append(0)
            hub.add_sketch(name, sk)
            assert steps[-1] <= B.AUTO_STEPS
            with hub.store.read() as txn:
                moved = B.held(txn)
        assert steps[0] == B.AUTO_STEPS and moved > 0
        hub.compact(file=False)
        for name, _ in items[10:]:
            hub.remove(name)
    assert _entry_hits(path) == hits


def test_blocks_whose_key_ranges_overlap_are_refused_where_read_together(tmp_path, rng):
    """A block whose first key is not above its neighbour's last: CorruptHubError from a lookup, a
    sweep and a compaction that read both (nothing written)."""
    ks = np.sort(rng.choice(1 << 40, 5, replace=False).astype(np.uint64))
    a = B.encode(ks[[0, 2, 3]], np.array([1, 1, 1]))               # last ks[3]
    b = B.encode(ks[[1, 4]], np.array([1, 1]))                     # first ks[1] < ks[3]: overlapping
    with HubStore(tmp_path / "h") as store:
        def put(t):
            t.put_raw(B.DB, u64(int(ks[3])), a)
            t.put_raw(B.DB, u64(int(ks[4])), b)
            t.put("entries", u64(1), {})
            t.put("meta", B.HELD_KEY, 5)

        store.transact(put)
        with store.read() as txn, pytest.raises(E.CorruptHubError, match="band block"):
            B.lookup(txn, ks[[2, 4]])
        with pytest.raises(E.CorruptHubError, match="band block"):
            store.transact(lambda t: B._sweep_step(t, 0))
        store.transact(lambda t: t.put_dups(B.DELTA, ks[[3, 4]], np.array([1, 1]), width=4))
        with pytest.raises(E.CorruptHubError, match="band block"):
            B.compact(store)
        with store.read() as txn:
            assert _raw_items(txn, B.DB) == [(u64(int(ks[3])), a), (u64(int(ks[4])), b)] and txn.count(B.DELTA) == 2


@pytest.mark.parametrize("bad", ["x", -1, 1 << 63, 2.5])
def test_a_damaged_dead_count_means_unknown_until_a_sweep(tmp_path, rng, bad):
    """meta/block_dead unreadable: lookups check liveness (never a removed entry), removals and
    compactions carry on, and hub.compact()'s sweep drops the dead postings and counts again."""
    path = tmp_path / "h"
    with fitsketch.open(path) as hub:
        hub.add_sketches(_sketches(rng, 8))
        hub.compact(file=False)
        ids = {n: hub.get(n).id for n in ("e1", "e2")}
        hub.remove("e1")
        with hub.store.read() as txn:
            assert B.dead(txn) > 0
            held = _all(txn)
        hub.store.transact(lambda t: t.put("meta", B.DEAD_KEY, bad))
        hub.remove("e2")                                   # no CorruptHubError: the count stays unknown
        with hub.store.read() as txn:
            assert B.dead(txn) is None
            for eid in ids.values():
                keys = np.array([k for k, e in held if e == eid], dtype=np.uint64)
                assert len(keys) and eid not in B.lookup(txn, keys).tolist()
        hub.compact(file=False)
        with hub.store.read() as txn:
            assert B.dead(txn) == 0 and not set(ids.values()) & {e for _, e in _all(txn)}
