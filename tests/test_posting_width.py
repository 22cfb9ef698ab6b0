"""Issue 21 item 3 (32 KB per entry): 4-byte band postings (hub format 4, engine/parts.py ``Bands``,
``posting_bytes``; storage/env.py ``_upgrade_v3_to_v4``).

A hub created at format 4 stores each band posting as the entry id (4 bytes); a hub written by an
older fitsketch (format 3: 8-byte (entry id, feature) postings, built here with the old encoder --
``FORMAT_VERSION`` 3 at creation and 8-byte postings, the bytes that fitsketch wrote) opens read-only
as it is, is upgraded on a writable open and keeps writing 8-byte postings (one LMDB key's values
have one width). Checked on fresh random tables (one-row, odd sizes, merged): both widths hold the
same (band key, entry) pairs after adds and removals, find the same entries, answer LSH-forced
searches alike, and removal leaves no posting; a damaged width record or posting raises
``CorruptHubError`` (the hub unchanged), ``Txn.put_dups(width=4)`` refuses values of 2^32 or more."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import fitsketch
import fitsketch.storage.env as env_mod
from fitsketch import parts, planner
from fitsketch.errors import CorruptHubError

import _hubcheck as hc

METHODS = ("exact-js", "js", "coverage")


def _table(rng, n, shift=0.0):
    return pd.DataFrame({"a": np.round(rng.normal(shift, size=n), 2), "b": rng.integers(0, 30, n),
                         "c": np.round(rng.normal(shift, size=n), 2), "d": rng.integers(0, 5, n).astype(str)})


def _sketches(rng):
    cfg = fitsketch.SketchConfig()
    sk = lambda n, s=0.0: fitsketch.sketch_data(_table(rng, n, s), cfg, partition_size=50)   # noqa: E731
    out = {f"s{i}": sk(int(rng.integers(1, 400)), float(rng.integers(0, 3))) for i in range(7)}
    out["one-row"] = sk(1)
    out["merged"] = sk(133, 1.0).merge(sk(51, 2.0))
    return out


def _build(path, sketches, monkeypatch, old: bool):
    """A hub of ``sketches`` (one add_sketch, then one add_sketches); ``old``: as a format-3 fitsketch
    wrote it (format 3 at creation, 8-byte (entry id, feature) postings, no meta posting_bytes)."""
    with monkeypatch.context() as m:
        if old:
            m.setattr(env_mod, "FORMAT_VERSION", 3)
            m.setattr(parts, "POSTING_BYTES", 8)
        with fitsketch.open(path) as hub:
            (n0, s0), *rest = sketches.items()
            hub.add_sketch(n0, s0)
            hub.add_sketches(rest)
    assert fitsketch.inspect(path)["format"] == (3 if old else env_mod.FORMAT_VERSION)


def _pairs(hub):
    """{(band key, entry id)} of the hub's postings, and the set of their widths."""
    with hub.store.read() as txn:
        items = list(txn.items("bands"))
    return {(k, int.from_bytes(v[:4], "big")) for k, v in items}, {len(v) for _, v in items}


def _answers(hub, q):
    return {m: [(r.name, r.score) for r in hub.search(q, k=5, method=m)] for m in METHODS}


def test_a_format_3_hub_opens_as_it_is_and_keeps_8_byte_postings_after_its_upgrade(tmp_path, rng, monkeypatch):
    sketches = _sketches(rng)
    new, old = tmp_path / "new", tmp_path / "old"
    _build(new, sketches, monkeypatch, old=False)
    _build(old, sketches, monkeypatch, old=True)
    monkeypatch.setattr(planner, "SCAN_FEATURE_LIMIT", 0)      # every search through the band postings
    q = _table(rng, 120, 1.0)
    with fitsketch.open(new) as a:
        pa, wa = _pairs(a)
        assert wa == {4} and pa
        want = _answers(a, q)
    with fitsketch.open(old, readonly=True) as b:                # read as it is, not upgraded
        pb, wb = _pairs(b)
        assert wb == {8} and pb == pa
        assert _answers(b, q) == want
    assert fitsketch.inspect(old)["format"] == 3
    extra = fitsketch.sketch_data(_table(rng, 211, 1.0), fitsketch.SketchConfig(), partition_size=50)
    gone = [n for n in sketches if rng.random() < 0.5]
    with fitsketch.open(new) as a, fitsketch.open(old) as b:     # b upgraded to format 4
        with b.store.read() as txn:
            assert txn.get("meta", b"posting_bytes") == 8
        for hub in (a, b):
            hub.add_sketch("extra", extra)
            for name in gone:
                hub.remove(name)
            hc.check_hub(hub)
        (pa, wa), (pb, wb) = _pairs(a), _pairs(b)
        assert wa <= {4} and wb <= {8} and pa == pb
        assert _answers(a, q) == _answers(b, q)
        for hub in (a, b):
            for name in hub.names():
                hub.remove(name)
            with hub.store.read() as txn:
                assert txn.count("bands") == 0
    assert fitsketch.inspect(old)["format"] == 6


def test_an_old_hub_without_postings_takes_4_byte_postings(tmp_path, rng, monkeypatch):
    path = tmp_path / "h"
    with monkeypatch.context() as m:
        m.setattr(env_mod, "FORMAT_VERSION", 3)
        with fitsketch.open(path):
            pass                                                 # a format-3 hub without entries
    with fitsketch.open(path) as hub:
        with hub.store.read() as txn:
            assert txn.get("meta", b"posting_bytes") == 4
        hub.add("more", _table(rng, int(rng.integers(1, 300))))
        assert _pairs(hub)[1] == {4}


def _corrupt_every_posting(txn, value: bytes):
    h = txn._db("bands", dup=True)
    for key in list(txn.keys("bands")):
        txn._txn.delete(key, db=h)
        txn._txn.put(key, value, db=h)


@pytest.mark.parametrize("bad", [b"abc", b"abcde"])
def test_a_damaged_posting_raises_corrupt_hub(tmp_path, rng, monkeypatch, bad):
    path = tmp_path / "h"
    sketches = _sketches(rng)
    _build(path, sketches, monkeypatch, old=False)
    q = sketches["s0"]
    with fitsketch.open(path) as hub:
        hub.store.transact(lambda t: _corrupt_every_posting(t, bad))
        monkeypatch.setattr(planner, "SCAN_FEATURE_LIMIT", 0)
        with pytest.raises(CorruptHubError, match="band posting"):
            hub.search(q, k=5, method="exact-js")


@pytest.mark.parametrize("bad", [5, 0, "4", 8.0])
def test_a_damaged_posting_width_raises_corrupt_hub_and_changes_nothing(tmp_path, rng, monkeypatch, bad):
    path = tmp_path / "h"
    sketches = _sketches(rng)
    _build(path, sketches, monkeypatch, old=False)
    extra = fitsketch.sketch_data(_table(rng, int(rng.integers(1, 300))), fitsketch.SketchConfig(),
                                  partition_size=50)
    with fitsketch.open(path) as hub:
        hub.store.transact(lambda t: t.put("meta", b"posting_bytes", bad))
        before = (_pairs(hub), hub.names())
        with pytest.raises(CorruptHubError, match="posting_bytes"):
            hub.add_sketch("extra", extra)
        with pytest.raises(CorruptHubError, match="posting_bytes"):
            hub.remove("s1")
        assert (_pairs(hub), hub.names()) == before


@pytest.mark.parametrize("old", [False, True])
def test_without_its_width_record_a_hub_writes_the_width_it_holds(tmp_path, rng, monkeypatch, old):
    """``meta/posting_bytes`` lost (or a format-4 hub written before creation recorded it): the width
    is the stored postings' (an upgraded hub's 8 bytes are not joined by 4-byte ones), 4 when none;
    removing every entry leaves no posting."""
    path = tmp_path / "h"
    sketches = _sketches(rng)
    _build(path, sketches, monkeypatch, old=old)
    with fitsketch.open(path) as hub:
        with hub.store.read() as txn:
            assert txn.get("meta", b"posting_bytes") == (8 if old else 4)      # recorded at creation / upgrade
        hub.store.transact(lambda t: t.delete("meta", b"posting_bytes"))
        hub.add("more", _table(rng, int(rng.integers(1, 300))))
        assert _pairs(hub)[1] == {8 if old else 4}
        for name in hub.names():
            hub.remove(name)
        with hub.store.read() as txn:
            assert txn.count("bands") == 0
        hub.store.transact(lambda t: t.delete("meta", b"posting_bytes"))
        hub.add("again", _table(rng, int(rng.integers(1, 300))))
        assert _pairs(hub)[1] == {4}                                          # no postings left: 4


def test_a_width_record_that_disagrees_with_the_postings_raises_and_changes_nothing(tmp_path, rng, monkeypatch):
    path = tmp_path / "h"
    sketches = _sketches(rng)
    _build(path, sketches, monkeypatch, old=True)
    with fitsketch.open(path) as hub:                                         # upgraded: 8-byte postings
        hub.store.transact(lambda t: t.put("meta", b"posting_bytes", 4))
        before = (_pairs(hub), hub.names())
        with pytest.raises(CorruptHubError, match="two fitsketch versions"):
            hub.add("more", _table(rng, int(rng.integers(1, 300))))
        assert (_pairs(hub), hub.names()) == before


def test_put_dups_width_4_stores_the_values_as_4_big_endian_bytes(tmp_path, rng):
    from fitsketch.storage import HubStore, u64

    with HubStore(tmp_path / "h") as store:
        n = int(rng.integers(0, 300))
        keys = rng.integers(0, 40, n).astype(np.uint64)
        vals = rng.integers(0, 1 << 32, n, dtype=np.uint64)
        added = store.transact(lambda t: t.put_dups("bands", keys, vals, width=4))
        want = {}
        for k, v in zip(keys.tolist(), vals.tolist()):
            want.setdefault(u64(k), set()).add(v.to_bytes(4, "big"))
        assert added == sum(len(v) for v in want.values())
        with store.read() as t:
            for k, v in want.items():
                assert t.get_dups("bands", k) == sorted(v)
        for bad_vals, width in ((np.array([1 << 32], dtype=np.uint64), 4), (np.array([1], dtype=np.uint64), 5)):
            with pytest.raises(ValueError):
                store.transact(lambda t: t.put_dups("bands", np.array([7], dtype=np.uint64), bad_vals, width=width))
        if want:   # a 4-byte posting is removed by its 4 bytes
            k, v = next(iter(want.items()))
            assert store.transact(lambda t: t.delete_dup("bands", k, next(iter(v))))
