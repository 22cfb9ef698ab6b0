"""Issue 21 item 3 (32 KB per entry): records fitted to LMDB pages (engine/parts.py ``fit_pack``):
it round-trips and never takes more pages than the level-1 record; a damaged record raises
``CodecError``. (The band postings these tests once shared a file with are derived since hub
format 6: tests/test_band_index.py.)"""
from __future__ import annotations

import numpy as np
import pytest

from fitsketch import parts
from fitsketch.storage.errors import CodecError
from fitsketch.storage import codec as C


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
