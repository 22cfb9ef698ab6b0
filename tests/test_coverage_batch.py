"""coverage_batch.score_many against coverage.score entry by entry (the definition): equal float64
per-table scores on fresh random entries -- distinct and shared centres, merged multi-group
records, NaN rows, query sizes 0 / 1 / 7 / 97 / 1001, every resolution, rho < 1, count mode --
and the coverage method's matches equal to scoring its candidates one at a time."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pandas as pd
import pytest

import fitsketch
from fitsketch import coverage as C
from fitsketch import coverage_batch as CB
from fitsketch.config import SketchConfig

from _frames import _cov_frame

SIZES = [0, 1, 7, 97, 1001]


def _entries(rng, cfg, n_entries: int, shared: bool):
    """Coverage records of random frames: one piece each, or (``shared``) coded around one centre,
    and some merged from parts with other centres (several groups)."""
    centre = fitsketch.sketch_data(_cov_frame(rng, 200), cfg).coverage["center"] if shared else None
    out = []
    for i in range(n_entries):
        kw = {} if centre is None else {"coverage_center": centre}
        sk = fitsketch.sketch_data(_cov_frame(rng, int(rng.integers(1, 300)), float(rng.normal(0, 0.5))), cfg, **kw)
        if i % 3 == 2:   # merged with parts coded around their own centres: 2-3 groups
            for _ in range(int(rng.integers(1, 3))):
                sk = sk.merge(fitsketch.sketch_data(_cov_frame(rng, int(rng.integers(1, 120)),
                                                               float(rng.normal(0, 1))), cfg))
            assert len(C.groups(sk.coverage)) > 1
        out.append(sk.coverage)
    return out


def _query(rng, cfg, n: int, nan: bool):
    q = fitsketch.sketch_data(_cov_frame(rng, max(n, 1), float(rng.normal(0, 0.5))), cfg)
    rows = np.array(q.rows[:n], dtype=np.float64)
    if nan and n:
        rows[rng.random(rows.shape) < 0.05] = np.nan      # missing values: rows sit at the centre there
    return rows


def _equal(got, ref):
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        assert g.dtype == np.float64 and g.shape == r.shape
        assert np.array_equal(g, r), (g, r)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("shared", [False, True])
def test_score_many_equals_score_entry_by_entry(rng, n, shared, monkeypatch):
    cfg = SketchConfig(seed=int(rng.integers(0, 2**31)), coverage_bits=int(rng.integers(4, 13)),
                       coverage_tables=int(rng.integers(1, 9)))
    recs = _entries(rng, cfg, int(rng.integers(4, 12)), shared)
    X = _query(rng, cfg, n, nan=bool(rng.integers(0, 2)))
    rho = float(rng.choice([1.0, 0.5, 0.3]))
    res = int(rng.integers(1, cfg.coverage_bits + 3))        # above bits: capped at bits, as score does
    if min(res, cfg.coverage_bits) > CB.MAX_DENSE_BITS:      # (scored entry by entry: the next test)
        res = CB.MAX_DENSE_BITS
    ref = [C.score(X, r, seed=cfg.seed, tau=1.0, mode="share", resolution=res, rho=rho) for r in recs]
    # the batched share path must not hand entries back to the per-entry scorer
    monkeypatch.setattr(C, "score", lambda *a, **k: pytest.fail("share mode fell back to coverage.score"))
    got = CB.score_many(X, recs, seed=cfg.seed, tau=1.0, mode="share", resolution=res, rho=rho)
    _equal(got, ref)


def test_score_many_mixed_schemas_count_mode_and_high_resolution(rng):
    """Entries over different columns in one call (grouped by keys), count mode and a resolution
    above MAX_DENSE_BITS (both entry by entry): every result equal, in the callers' order."""
    cfg = SketchConfig(seed=int(rng.integers(0, 2**31)), coverage_bits=14, coverage_tables=3)
    recs = _entries(rng, cfg, 6, False)
    X = _query(rng, cfg, 97, nan=True)
    other = fitsketch.sketch_data(_cov_frame(rng, 50)[["x", "y", "k", "c"]], cfg).coverage   # other keys order
    assert not np.array_equal(other["keys"], recs[0]["keys"])
    Xo = X[:, :len(other["keys"])]
    mixed = recs[:3] + [other] + recs[3:]
    for mode, res in (("share", 6), ("share", CB.MAX_DENSE_BITS + 2), ("count", 6)):
        for tau in (1.0, 2.5):
            ref = [C.score(Xo if r is other else X, r, seed=cfg.seed, tau=tau, mode=mode, resolution=res)
                   for r in mixed]
            got_main = CB.score_many(X, recs, seed=cfg.seed, tau=tau, mode=mode, resolution=res)
            got_other = CB.score_many(Xo, [other], seed=cfg.seed, tau=tau, mode=mode, resolution=res)
            _equal(got_main[:3] + got_other + got_main[3:], ref)


def test_score_many_empty_list_and_a_changed_record_is_seen(rng):
    cfg = SketchConfig(seed=int(rng.integers(0, 2**31)))
    assert CB.score_many(_query(rng, cfg, 7, False), [], seed=cfg.seed, tau=1.0, mode="share") == []
    recs = _entries(rng, cfg, 5, False)
    X = _query(rng, cfg, 97, False)
    got = CB.score_many(X, recs, seed=cfg.seed, tau=1.0, mode="share")
    _equal(got, [C.score(X, r, seed=cfg.seed, tau=1.0, mode="share") for r in recs])
    # the scores read the records' cells: the same entries with their codes moved score otherwise
    moved = [{**r, "code": (np.asarray(r["code"]).astype(np.int64) + 1)} for r in recs]
    bad = CB.score_many(X, moved, seed=cfg.seed, tau=1.0, mode="share")
    assert any(not np.array_equal(b, g) for b, g in zip(bad, got))


def test_method_scores_equal_one_entry_at_a_time(rng, tmp_path):
    """Through a hub: every coverage match's score and per-table evidence equal ``coverage.score`` of
    the query's own rows taken in that entry's column order (the query sketched over those columns,
    not the method's column logic), with entries over the query's columns in other orders and over a
    subset of them -- built from the query's own values, so the MinHash alignment matches them and
    coverage (not the adaptivity fallback) scores them."""
    cfg = SketchConfig(seed=int(rng.integers(0, 2**31)))
    names = ["x", "y", "c", "k"]
    q = _cov_frame(rng, 150, 0.2)[names]
    orders = {}   # entry name -> its columns, in its order
    with fitsketch.open(tmp_path / "h", config=cfg) as hub:
        centre = None
        for i in range(12):
            cols = [["y", "x", "k"], ["k", "c", "y", "x"], names, ["c", "x"]][i % 4]
            df = (q.sample(100, random_state=int(rng.integers(0, 2**31))) if i % 4 != 2 else
                  _cov_frame(rng, int(rng.integers(20, 200)), float(rng.normal(0, 1))))[cols]
            kw = {"coverage_center": centre} if (i % 4 == 2 and centre is not None) else {}
            sk = fitsketch.sketch_data(df, cfg, **kw)
            centre = sk.coverage["center"] if (centre is None and i % 4 == 2) else centre
            hub.add_sketch(f"e{i}", sk)
            orders[f"e{i}"] = (cols, sk.coverage)
        for kw in ({}, {"coverage_score": "count"}, {"coverage_resolution": 3, "coverage_rho": 0.5}):
            qc = cfg.query_defaults(**kw)
            got = hub.search(q, k=12, method="coverage", shortlist=0, **kw)
            assert len(got) == 12
            for m in got:
                cols, cov = orders[m.name]
                assert m.method == "coverage", (m.name, cols, m.evidence.get("fallback"))
                rows = np.asarray(fitsketch.sketch_data(q[cols], cfg).rows, dtype=np.float64)
                ref = C.score(rows, cov, seed=cfg.seed, tau=qc.coverage_tau, mode=qc.coverage_score,
                              resolution=qc.coverage_resolution, rho=qc.coverage_rho)
                assert m.score == float(ref.mean()), (m.name, cols)
                assert m.evidence["per_table"] == [round(float(x), 4) for x in ref]


def _peak(fn):
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("shared", [False, True])
def test_score_many_memory_is_one_entrys_plus_a_bounded_batch(rng, shared, monkeypatch):
    """Entries with distinct centres: the query's codes are held one centre at a time (not every
    centre's at once); shared centres at a resolution of 2^10 cells: the dense cells held are bounded
    by BATCH_ELEMS (set to 4 groups' here), not by the number of entries. Peak traced memory below
    twice one entry's ``coverage.score`` plus 4 groups' cells; the results equal entry by entry."""
    bits, tables, d, n = 10, 6, 5, 4000
    keys = np.arange(d, dtype=np.int64) * 11 + 2
    seed = int(rng.integers(0, 2**31))
    centre = rng.normal(0, 1, d)
    recs = [C.build(rng.normal(rng.normal(0, .5), 1, (int(rng.integers(50, 300)), d)), keys, seed=seed, bits=bits,
                    tables=tables, center=centre if shared else None, device="cpu") for _ in range(60)]
    X = rng.normal(0, 1, (n, d))
    cells = 1 << bits
    monkeypatch.setattr(CB, "BATCH_ELEMS", 4 * tables * cells)
    kw = dict(seed=seed, tau=1.0, mode="share", resolution=bits, device="cpu")
    C._planes(seed, tables, bits, keys)                       # the memo filled outside the measures
    one = _peak(lambda: C.score(X, recs[0], **kw))
    got = []
    peak = _peak(lambda: got.extend(CB.score_many(X, recs, **kw)))
    assert peak < 2 * one + 3 * 4 * tables * cells * 8, (peak, one)
    _equal(got, [C.score(X, r, **kw) for r in recs])


def test_score_many_batches_of_any_size_equal(rng, monkeypatch):
    """Batches of 1, 2 and 3 groups (cutting centre runs and merged entries' groups apart) give the
    same scores as one batch and as coverage.score."""
    cfg = SketchConfig(seed=int(rng.integers(0, 2**31)), coverage_bits=8, coverage_tables=3)
    recs = _entries(rng, cfg, 7, True) + _entries(rng, cfg, 5, False)
    X = _query(rng, cfg, 97, nan=True)
    kw = dict(seed=cfg.seed, tau=1.0, mode="share", resolution=5, rho=0.7)
    ref = [C.score(X, r, **kw) for r in recs]
    for groups in (1, 2, 3):
        monkeypatch.setattr(CB, "BATCH_ELEMS", groups * 3 * 32)
        _equal(CB.score_many(X, recs, **kw), ref)


def test_planes_memo_equals_fresh_hyperplanes_and_is_read_only(rng, monkeypatch):
    from fitsketch.kernels.rowcodes import hyperplanes

    keys = rng.integers(0, 2**40, 7)
    seed, tables, bits = int(rng.integers(0, 2**31)), int(rng.integers(1, 9)), int(rng.integers(1, 17))
    a = C._planes(seed, tables, bits, keys)
    assert np.array_equal(a, hyperplanes(seed, tables, bits, keys)) and a.dtype == np.float32
    assert C._planes(seed, tables, bits, keys) is a                         # memoized
    with pytest.raises(ValueError):
        a[0, 0, 0] = 1.0
    # above PLANES_MEMO_BYTES: drawn each call (equal, read-only, not held)
    monkeypatch.setattr(C, "PLANES_MEMO_BYTES", a.nbytes - 1)
    b = C._planes(seed, tables, bits, keys)
    assert b is not a and b is not C._planes(seed, tables, bits, keys)
    assert np.array_equal(b, a)
    with pytest.raises(ValueError):
        b[0, 0, 0] = 1.0


def test_score_many_device_and_rho_errors_as_score(rng, monkeypatch):
    """``device="cuda"`` without a GPU raises what coverage.score raises, even with no query rows;
    ``rho <= 0`` is refused with a named error (not NaN scores)."""
    from fitsketch import errors as E
    from fitsketch.kernels import _device

    cfg = SketchConfig(seed=int(rng.integers(0, 2**31)))
    recs = _entries(rng, cfg, 3, False)
    monkeypatch.setattr(_device, "cuda_available", lambda: False)
    for n in (0, 7):
        X = _query(rng, cfg, n, False)
        with pytest.raises(Exception) as ref:
            C.score(X, recs[0], seed=cfg.seed, tau=1.0, mode="share", device="cuda")
        with pytest.raises(type(ref.value)):
            CB.score_many(X, recs, seed=cfg.seed, tau=1.0, mode="share", device="cuda")
        for rho in (0.0, -0.5, float("nan")):
            with pytest.raises(E.InvalidArgumentError, match="rho"):
                CB.score_many(X, recs, seed=cfg.seed, tau=1.0, mode="share", rho=rho)
