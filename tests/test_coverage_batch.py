"""coverage_batch.score_many against coverage.score entry by entry (the definition): equal float64
per-table scores on fresh random entries -- distinct and shared centres, merged multi-group
records, NaN rows, query sizes 0 / 1 / 7 / 97 / 1001, every resolution, rho < 1, count mode --
and the coverage method's matches equal to scoring its candidates one at a time."""
from __future__ import annotations

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


def test_method_scores_equal_one_entry_at_a_time(rng, tmp_path, monkeypatch):
    """Through a hub: every match's score and per-table evidence with the batch equal those with
    each candidate scored alone (coverage_batch.score_many replaced by the per-entry loop)."""
    cfg = SketchConfig(seed=int(rng.integers(0, 2**31)))
    names = ["x", "y", "c", "k"]
    with fitsketch.open(tmp_path / "h", config=cfg) as hub:
        centre = None
        for i in range(12):
            df = _cov_frame(rng, int(rng.integers(20, 200)), float(rng.normal(0, 1)))
            if i % 4 == 3:   # a renamed column: matched by the MinHash alignment, other column order
                df = df.rename(columns={"x": "xx"})[["y", "xx", "c", "k"]]
            kw = {"coverage_center": centre} if (i % 2 and centre is not None) else {}
            sk = fitsketch.sketch_data(df, cfg, **kw)
            centre = sk.coverage["center"] if centre is None else centre
            hub.add_sketch(f"e{i}", sk)
        q = _cov_frame(rng, 150, 0.2)[names]
        for kw in ({}, {"coverage_score": "count"}, {"coverage_resolution": 3, "coverage_rho": 0.5}):
            got = hub.search(q, k=12, method="coverage", shortlist=0, **kw)
            with monkeypatch.context() as m:
                m.setattr(CB, "score_many", lambda X, recs, **k: [C.score(X, r, **k) for r in recs])
                ref = hub.search(q, k=12, method="coverage", shortlist=0, **kw)
            assert [(g.name, g.score, g.evidence) for g in got] == [(r.name, r.score, r.evidence) for r in ref]
            assert sum(g.method == "coverage" for g in got) >= 9
