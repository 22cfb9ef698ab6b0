"""Hub format 3 (issue 21, 32 KB per entry): the per-entry records engine/parts.py writes hold
their arrays compressed (storage/codec.py ``EXT_PACKED``). Checked against a hub written the
format-2 way (plain arrays) from the same fresh random sketches -- real-valued tables of odd
sizes, a one-row table, merged sketches, one added alone and a batch through ``add_sketches``:
every record decodes to the same values bit for bit, searches give the same answers, the
records are smaller, a format-2 hub opens read-only as it is and is upgraded on a writable
open, and entries of both kinds in one hub are read and removed alike."""
from __future__ import annotations

import logging

import msgpack
import numpy as np
import pandas as pd
import pytest

import _hubcheck as hc

import fitsketch
from fitsketch import parts, signature_records
from fitsketch.storage import FORMAT_VERSION
from fitsketch.storage import codec as C

METHODS = ("exact-js", "js", "adaptivity", "l2", "coverage")


def _table(rng, n):
    return pd.DataFrame({"x": np.round(rng.normal(size=n), 4), "y": np.round(rng.gamma(2.0, size=n), 3),
                         "z": rng.integers(0, 1000, n), "u": rng.random(n), "c": rng.integers(0, 7, n).astype(str)})


def _sketches(rng, config):
    sk = lambda n: fitsketch.sketch_data(_table(rng, n), config, partition_size=50)   # noqa: E731
    merged = sk(333).merge(sk(101)).merge(sk(1))
    return {"one-row": sk(1), "odd": sk(257), "merged": merged, "big": sk(3001)}


def _plain_pack(obj, hints=None) -> bytes:     # the format-2 writer: arrays as they are (records packed in prepare too)
    from fitsketch.storage import pack

    return pack(obj)


def _build(path, sketches, monkeypatch, plain: bool):
    with monkeypatch.context() as m:
        if plain:
            m.setattr(parts, "fit_pack", _plain_pack)
            m.setattr(parts, "_sig_record", signature_records.plain)   # format <= 4: the matrix as it is
        with fitsketch.open(path) as hub:
            first, *rest = sketches.items()
            hub.add_sketch(first[0], first[1], metadata={"i": 0})
            hub.add_sketches([(n, s) for n, s in rest])
    if plain:
        hc.set_format(path, 2)




def _records(path):
    """{db: {key: (raw bytes, decoded)}} of the per-entry databases."""
    out = {}
    with fitsketch.open(path, readonly=True) as hub, hub.store.read() as txn:
        for db in ("entries", "signatures", "histograms", "extra"):
            out[db] = {k: (txn.get_raw(db, k), txn.get(db, k)) for k in txn.keys(db)}
        # signatures as their matrices: format 5 may store a dictionary (fitsketch.signature_records)
        out["signatures"] = {k: (raw, signature_records.decode(rec)) for k, (raw, rec) in out["signatures"].items()}
        out["bands"] = sorted(txn.items("bands"))
    return out


def _same(a, b, where=""):
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        assert isinstance(a, np.ndarray) and isinstance(b, np.ndarray), where
        assert a.dtype.str == b.dtype.str and a.shape == b.shape and a.tobytes() == b.tobytes(), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            _same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and a != a:
        assert b != b, where
    elif not (where.endswith("/created")):
        assert a == b and type(a) is type(b), where


def _exts(raw: bytes) -> set:
    codes = set()
    msgpack.unpackb(raw, raw=False, strict_map_key=False, ext_hook=lambda c, d: codes.add(c))
    return codes


def _answers(path, q, readonly=True):
    with fitsketch.open(path, readonly=readonly) as hub:
        return {m: [(r.name, r.score) for r in hub.search(q, k=10, method=m)] for m in METHODS}


def test_compressed_records_read_as_the_plain_ones(tmp_path, rng, monkeypatch):
    config = fitsketch.SketchConfig()
    sketches = _sketches(rng, config)
    new, old = tmp_path / "new", tmp_path / "old"
    _build(new, sketches, monkeypatch, plain=False)
    _build(old, sketches, monkeypatch, plain=True)
    assert fitsketch.inspect(new)["format"] == FORMAT_VERSION == 6 and fitsketch.inspect(old)["format"] == 2
    a, b = _records(new), _records(old)
    assert a["bands"] == b["bands"]
    raw_new = raw_old = 0
    for db in ("entries", "signatures", "histograms", "extra"):
        assert a[db].keys() == b[db].keys(), db
        for k in a[db]:
            _same(a[db][k][1], b[db][k][1], f"{db}/{k!r}")
            assert C.EXT_PACKED not in _exts(b[db][k][0])
            raw_new, raw_old = raw_new + len(a[db][k][0]), raw_old + len(b[db][k][0])
    assert any(C.EXT_PACKED in _exts(r) for r, _ in a["signatures"].values())
    assert any(C.EXT_PACKED in _exts(r) for r, _ in a["histograms"].values())
    assert raw_new < 0.7 * raw_old, (raw_new, raw_old)
    q = _table(rng, 211)
    assert _answers(new, q) == _answers(old, q)


def test_a_format_2_hub_opens_as_it_is_and_mixes_with_format_3_entries(tmp_path, rng, monkeypatch, caplog):
    config = fitsketch.SketchConfig()
    sketches = _sketches(rng, config)
    old = tmp_path / "old"
    _build(old, sketches, monkeypatch, plain=True)
    q = _table(rng, 150)
    want = _answers(old, q)                                   # read-only: read as it is
    assert fitsketch.inspect(old)["format"] == 2
    with caplog.at_level(logging.WARNING, logger="fitsketch.storage.env"):
        with fitsketch.open(old) as hub:
            assert {m: [(r.name, r.score) for r in hub.search(q, k=10, method=m)] for m in METHODS} == want
            extra = fitsketch.sketch_data(_table(rng, 2003), config, partition_size=50)
            hub.add_sketch("added", extra)
            with hub.store.read() as txn:
                k = txn.get_raw("names", b"added")
                assert C.EXT_PACKED in _exts(txn.get_raw("histograms", k))
            mixed = {m: [(r.name, r.score) for r in hub.search(q, k=10, method=m)] for m in METHODS}
    assert any("from format 2 to 6" in r.getMessage() for r in caplog.records)
    assert fitsketch.inspect(old)["format"] == 6
    # the mixed hub answers as a hub written all in format 3 from the same sketches
    ref = tmp_path / "ref"
    _build(ref, {**sketches}, monkeypatch, plain=False)
    with fitsketch.open(ref) as hub:
        hub.add_sketch("added", extra)
    assert _answers(ref, q) == mixed
    # removing an entry of each kind leaves no key of it behind
    with fitsketch.open(old) as hub:
        with hub.store.read() as txn:
            gone = [txn.get_raw("names", n) for n in (b"odd", b"added")]
            n_bands = txn.count("bands")
        hub.remove("odd")          # format 2
        hub.remove("added")        # format 3
        with hub.store.read() as txn:
            for db in ("entries", "signatures", "histograms", "extra"):
                assert not set(gone) & set(txn.keys(db)), db
            assert txn.count("bands") < n_bands
        assert hub.names() == sorted(set(sketches) - {"odd"})
        assert [r.name for r in hub.search(q, k=10, method="exact-js")]


@pytest.mark.parametrize("plain", [False, True])
def test_removing_every_entry_empties_the_per_entry_databases(tmp_path, rng, monkeypatch, plain):
    sketches = _sketches(rng, fitsketch.SketchConfig())
    path = tmp_path / "h"
    _build(path, sketches, monkeypatch, plain=plain)
    with fitsketch.open(path) as hub:
        for name in sketches:
            hub.remove(name)
        with hub.store.read() as txn:
            for db in ("entries", "names", "signatures", "histograms", "bands", "extra"):
                assert not list(txn.keys(db)), db
