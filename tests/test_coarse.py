"""The two-level candidate stage (engine/coarse.py, ``shortlist_screen="two-level"``): level 1's
Bhattacharyya coefficients against a dense reference, level 2's screen of a subset of entries equal
to the full screen of those entries, and searches through the stage on near-duplicate entries."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import fitsketch
from fitsketch import coarse as C
from fitsketch import screen as S
from fitsketch.growable import Grow
from fitsketch.jslsh import own_keys

from test_shortlist import _classes, _mixture, _own

METHODS = ("adaptivity", "js", "exact-js", "l2")


def _hub_items(rng, cfg, pools, n):
    items = []
    for i in range(n):
        df = _mixture(pools, rng.integers(5, 100, 4))
        df.loc[rng.random(len(df)) < 0.05, "d"] = np.nan
        items.append((f"m{i}", fitsketch.sketch_data(df, cfg, partition_size=int(rng.integers(30, 200)))))
    items.append(("perm", fitsketch.sketch_data(_mixture(pools, [60, 60, 10, 1])[["d", "a", "c", "b"]], cfg)))
    items.append(("fewer", fitsketch.sketch_data(_mixture(pools, [20, 60, 10, 40])[["a", "c"]], cfg)))
    items.append(("one", fitsketch.sketch_data(_mixture(pools, [1, 0, 0, 0]), cfg)))
    return items


def _dist(sk):
    """{(column name, bucket): p} of a sketch's dataset-level histograms, per column normalized."""
    h = sk.hist
    df = pd.DataFrame({"f": np.asarray(h["feat"]), "b": np.asarray(h["bucket"]), "c": np.asarray(h["count"], float)})
    g = df.groupby(["f", "b"])["c"].sum()
    tot = g.groupby(level=0).transform("sum")
    return {(sk.names[f], b): v for (f, b), v in (g / tot).items() if v > 0}


def test_bc_equals_a_dense_reference(tmp_path, rng):
    """Level 1's score of every entry is sum over shared (column, bucket) cells of sqrt(p_t p_s),
    within 1e-5 (float32 products); an entry sharing no column scores 0; after removals and adds
    the matrix follows the index."""
    cfg = fitsketch.SketchConfig(shortlist=2, partition_size=20)
    pools = _classes(rng)
    items = _hub_items(rng, cfg, pools, int(rng.integers(6, 12)))
    other = pd.DataFrame({"zz": rng.normal(size=50)})
    items.append(("other", fitsketch.sketch_data(other, cfg)))
    with fitsketch.open(tmp_path / "h.hub", config=cfg) as hub:
        hub.add_sketches(items)
        sk = dict(items)
        q = fitsketch.sketch_data(_mixture(pools, rng.integers(30, 120, 4)), cfg)
        qd = _dist(q)
        for step in range(2):
            idx = hub._synced_screen()
            b = C.bc(idx, q, cfg.seed)
            by_id = {hub.get(n).id: n for n in hub.names()}
            assert len(b) == len(by_id)
            for eid, v in zip(idx.ids.v, b):
                sd = _dist(sk[by_id[int(eid)]])
                ref = sum(np.sqrt(p * sd[c]) for c, p in qd.items() if c in sd)
                assert v == pytest.approx(ref, rel=1e-5, abs=1e-6), by_id[int(eid)]
            assert b[list(idx.ids.v).index(hub.get("other").id)] == 0.0
            hub.remove(f"m{step}")
            extra = fitsketch.sketch_data(_mixture(pools, rng.integers(5, 100, 4)), cfg)
            hub.add_sketch(f"late{step}", extra)
            sk[f"late{step}"] = extra


def test_subset_screens_equal_the_full_screen(tmp_path, rng):
    """The screen of a subset of rows (level 2) gives each of its entries exactly the score, tiebreak
    and exactness the full screen gives it, for every method (large and small queries), after a
    removal renumbered the index; for one row and for no row too; and so does the subset holding only
    the cells at the query's coordinates (``cells_of``, what level 2 builds)."""
    cfg = fitsketch.SketchConfig(shortlist=2, partition_size=20)
    pools = _classes(rng)
    with fitsketch.open(tmp_path / "h.hub", config=cfg) as hub:
        hub.add_sketches(_hub_items(rng, cfg, pools, int(rng.integers(8, 14))))
        hub.remove("m1")
        idx = hub._synced_screen()
        n = len(idx)
        q_big = fitsketch.sketch_data(_mixture(pools, rng.integers(60, 120, 4)), cfg,
                                      partition_size=int(rng.integers(40, 400)))
        q_small = fitsketch.sketch_data(_mixture(pools, rng.integers(10, 40, 4)), fitsketch.SketchConfig(),
                                        partition_size=25)
        sp = fitsketch.profiles.small_params(cfg)
        for rows in (np.sort(rng.choice(n, int(rng.integers(2, n)), replace=False)), np.array([int(rng.integers(n))]),
                     np.zeros(0, np.int64)):
            sub = C.subset(idx, rows)
            assert list(sub.ids.v) == list(idx.ids.v[rows])
            for method in METHODS:
                for q, small in ((q_big, None), (q_small, method)):
                    t_small = None
                    if small in ("js", "adaptivity"):
                        t_small = (sp, own_keys(q.hist, q.n_features, q.n_partitions, per_dataset=small == "js",
                                                seed=cfg.seed, r=sp[0], k=sp[1], l=sp[2]))
                    kw = dict(seed=cfg.seed, t_keys=_own(q, cfg), t_small=t_small)
                    full, part = idx.scores(q, method, **kw), sub.scores(q, method, **kw)
                    pos = {int(e): i for i, e in enumerate(full["ids"])}
                    want = [pos[int(e)] for e in idx.ids.v[rows] if int(e) in pos]
                    assert list(part["ids"]) == list(full["ids"][want]), method
                    for key in ("score", "tiebreak", "exact"):
                        assert np.array_equal(part[key], full[key][want]), (method, key)
                    # the subset of the cells this query has mass at only (what level 2 builds): the same,
                    # its arrays gathered when first read (lazy, as level 2 builds it) or at once
                    qv = C.query_vector(idx, q, cfg.seed)
                    for lazy in (False, True):
                        only = C.subset(idx, rows, qv, lazy=lazy).scores(q, method, **kw)
                        for key in ("ids", "score", "tiebreak", "exact"):
                            assert np.array_equal(only[key], part[key]), (method, key, "cells of the query", lazy)
                        lz = C.subset(idx, rows, lazy=lazy).scores(q, method, **kw)
                        for key in ("ids", "score", "tiebreak", "exact"):
                            assert np.array_equal(lz[key], part[key]), (method, key, lazy)


def test_two_level_search_on_near_duplicates(tmp_path, rng):
    """Near-duplicate entries (class 0's share one row apart) of one schema: with level 1 keeping
    every entry the two-level stage returns the exhaustive top 3 for every method; with
    shortlist_coarse=1 level 1 keeps the shortlist's count and level 2 chooses among those; explain
    states both levels and what they kept."""
    cfg = fitsketch.SketchConfig(shortlist=3, partition_size=10)   # a query of >= 80 rows is not "small"
    pools = _classes(rng, rows=100)
    base = [0, 40, 30, 20]
    shares = rng.permutation(np.arange(30, 70))
    items = [(f"dup{c0}", fitsketch.sketch_data(_mixture(pools, [c0] + base[1:]), cfg)) for c0 in shares]
    with fitsketch.open(tmp_path / "h.hub", config=cfg) as hub:
        hub.add_sketches(items)
        q = fitsketch.sketch_data(_mixture(pools, [int(rng.integers(33, 67))] + base[1:]), cfg)
        for method in METHODS:
            full = hub.search(q, k=3, method=method, shortlist=0)
            short = hub.search(q, k=3, method=method, shortlist_screen="two-level", shortlist_coarse=14)
            assert [m.score for m in short] == pytest.approx([m.score for m in full], rel=0, abs=1e-12), method
            st = next(s for s in hub.explain(q, k=3, method=method, shortlist_screen="two-level",
                                             shortlist_coarse=14).stages if s.name == "shortlist")
            assert f"level 1 ranked {len(items)} entries" in st.detail and f"kept {len(items)}" in st.detail
            assert f"({len(items)} share a cell" in st.detail and "are not screened: 0" in st.detail
            st = next(s for s in hub.explain(q, k=3, method=method, shortlist_screen="two-level",
                                             shortlist_coarse=1).stages if s.name == "shortlist")
            assert "kept 3 (1 x shortlist" in st.detail and st.actual == 3, st.detail
            # the recall stated only where measured at that depth (exact-js / l2 from 1, js / adaptivity from 4)
            assert st.recall == (C.MEASURED_RECALL[method] if C.MEASURED_MIN_COARSE[method] <= 1 else None), st.detail
    for bad in (-1, 1.5, True, (1 << 20) + 1):
        with pytest.raises(fitsketch.errors.InvalidArgumentError):
            fitsketch.SketchConfig(shortlist_coarse=bad)


@pytest.mark.parametrize("method", ["l2", "js", "exact-js", "adaptivity"])
def test_a_query_sharing_no_cell_is_screened_exactly(tmp_path, rng, method):
    """Level 1 cannot rank entries that share no histogram cell with the query (BC 0), though the
    exact screen scores every entry sharing a column name: when fewer than shortlist_coarse x
    shortlist share a cell, every entry is screened exactly, so the answer is the exact screen's."""
    cfg = fitsketch.SketchConfig(shortlist=2, partition_size=50)
    items = [(f"e{i:02d}", fitsketch.sketch_data(pd.DataFrame({"a": rng.normal(0, 1, 200) + 0.1 * i,
                                                                "b": rng.normal(5, 1, 200)}), cfg))
             for i in range(12)]
    far = pd.DataFrame({"a": rng.normal(1e6, 1, 300), "b": rng.normal(1e6, 1, 300)})
    with fitsketch.open(tmp_path / "h", config=cfg) as hub:
        hub.add_sketches(items)
        exact = hub.search(far, k=3, method=method)
        two = hub.search(far, k=3, method=method, shortlist_screen="two-level")
        assert exact and [(m.name, m.score) for m in two] == [(m.name, m.score) for m in exact]
        st = next(s for s in hub.explain(far, k=3, method=method, shortlist_screen="two-level").stages
                  if s.name == "shortlist")
        assert "every entry was screened exactly" in st.detail


def test_key_counts_order_the_js_screens(tmp_path, rng):
    """``ScreenIndex.key_counts`` (level 2's cut for js / adaptivity): -1 exactly for the rows the
    screen scores by the exact-js proxy or does not score, and for every other row the screen equals
    ``K x step`` plus under half a step (js: 1 / bands; adaptivity: 1 / (bands T (T + 1))), against
    the full screen, for large and small queries, on any rows (all, some, one, none); None for the
    screens that read no band keys."""
    cfg = fitsketch.SketchConfig(shortlist=2, partition_size=20)
    pools = _classes(rng)
    with fitsketch.open(tmp_path / "h.hub", config=cfg) as hub:
        hub.add_sketches(_hub_items(rng, cfg, pools, int(rng.integers(8, 14))))
        hub.remove("m2")
        idx = hub._synced_screen()
        n = len(idx)
        q_big = fitsketch.sketch_data(_mixture(pools, rng.integers(60, 120, 4)), cfg,
                                      partition_size=int(rng.integers(40, 400)))
        q_small = fitsketch.sketch_data(_mixture(pools, rng.integers(10, 40, 4)), fitsketch.SketchConfig(),
                                        partition_size=25)
        sp = fitsketch.profiles.small_params(cfg)
        for rows in (np.arange(n), np.sort(rng.choice(n, int(rng.integers(2, n)), replace=False)),
                     np.array([int(rng.integers(n))]), np.zeros(0, np.int64)):
            for method in ("js", "adaptivity"):
                for q, small in ((q_big, False), (q_small, True)):
                    t_keys = _own(q, cfg)
                    t_small = (sp, own_keys(q.hist, q.n_features, q.n_partitions, per_dataset=method == "js",
                                            seed=cfg.seed, r=sp[0], k=sp[1], l=sp[2])) if small else None
                    kw = dict(seed=cfg.seed, t_keys=t_keys, t_small=t_small)
                    k = idx.key_counts(rows, q, method, **kw)
                    full = idx.scores(q, method, **kw)
                    pos = {int(e): i for i, e in enumerate(full["ids"])}
                    bands = sp[2] if small else cfg.jslsh_l
                    T = len(np.asarray(t_small[1] if small else t_keys[1]).reshape(-1, bands))
                    step = 1.0 / bands if method == "js" else 1.0 / (bands * T * (T + 1))
                    assert k.shape == rows.shape and k.dtype == np.int64
                    for r, kr in zip(rows, k):
                        i = pos.get(int(idx.ids.v[r]))
                        if i is None or not full["exact"][i]:
                            assert kr == -1, (method, small, r)
                            continue
                        assert kr >= 0, (method, small, r)
                        rest = full["score"][i] - kr * step
                        assert -1e-12 <= rest <= step / 2 + 1e-12, (method, small, kr, full["score"][i], step)
        for method in ("exact-js", "l2"):
            assert idx.key_counts(np.arange(n), q_big, method, seed=cfg.seed, t_keys=_own(q_big, cfg)) is None


def test_default_depth_per_method_and_the_key_cut(tmp_path, rng):
    """``shortlist_coarse=0`` (the default) keeps ``COARSE_BY_METHOD[method] x shortlist`` entries
    at level 1 (``COARSE_DEFAULT`` for a method not listed, e.g. coverage); a user's
    ``shortlist_coarse`` overrides it. With level 1 keeping every near-duplicate entry, js and
    adaptivity screen only the rows whose band agreements can reach the shortlist, and the search
    returns what the exact screen of every entry gives (large and small queries)."""
    cfg = fitsketch.SketchConfig(shortlist=2, partition_size=10)   # a query of >= 80 rows is not "small"
    pools = _classes(rng, rows=100)
    base = [0, 40, 30, 20]
    shares = rng.permutation(np.arange(30, 30 + int(rng.integers(25, 40))))
    items = [(f"dup{c0}", fitsketch.sketch_data(_mixture(pools, [c0] + base[1:]), cfg)) for c0 in shares]
    assert len(items) <= 2 * min(C.COARSE_BY_METHOD["js"], C.COARSE_BY_METHOD["adaptivity"])
    with fitsketch.open(tmp_path / "h.hub", config=cfg) as hub:
        hub.add_sketches(items)
        for q, large in ((_mixture(pools, [int(rng.integers(33, 60))] + base[1:]), True),
                         (_mixture(pools, [int(rng.integers(3, 8)), 30, 20, 10]), False)):   # small: < 80 rows
            for method in METHODS + ("coverage",):
                depth = C.COARSE_BY_METHOD.get(method, C.COARSE_DEFAULT)
                st = next(s for s in hub.explain(q, k=2, method=method, shortlist_screen="two-level").stages
                          if s.name == "shortlist")
                assert f"({depth} x shortlist;" in st.detail, (method, st.detail)
                assert f"kept {min(len(items), 2 * depth)} (" in st.detail, (method, st.detail)
                if method in ("js", "adaptivity"):
                    # (a small query's adaptivity bands are stored for entries of one partition only: these
                    # entries have several, so all are proxies and no band count applies)
                    if large or method == "js":
                        assert "counted their JS-LSH band agreements" in st.detail, st.detail
                    two = hub.search(q, k=2, method=method, shortlist_screen="two-level")
                    exact = hub.search(q, k=2, method=method, shortlist_screen="exact")
                    assert two and [(m.name, m.score) for m in two] == [(m.name, m.score) for m in exact], method
                st = next(s for s in hub.explain(q, k=2, method=method, shortlist_screen="two-level",
                                                 shortlist_coarse=1).stages if s.name == "shortlist")
                assert "(1 x shortlist;" in st.detail, (method, st.detail)


def test_default_depth_grows_with_the_hub(rng):
    """``coarse_for(method, 0, entries)``: ``COARSE_BY_METHOD`` up to ``DEPTH_MEASURED_AT`` entries (a hub
    of 100k or fewer is served as before), ``COARSE_AT_1M`` at 1M, between them non-decreasing and
    between the two depths, at the geometric middle (10^5.5) the rounded-up geometric mean of the two,
    past 1M still growing (the power law continued); a user's ``shortlist_coarse`` always wins; a method
    not listed keeps ``COARSE_DEFAULT`` at every size."""
    for method in METHODS + ("coverage", "accuracy"):
        base = C.COARSE_BY_METHOD.get(method, C.COARSE_DEFAULT)
        big = C.COARSE_AT_1M.get(method, base)
        assert big >= base, method
        small = [0, 1, 7, 97, 20_000, C.DEPTH_MEASURED_AT - 1, C.DEPTH_MEASURED_AT]
        for n in small + [int(v) for v in rng.integers(0, C.DEPTH_MEASURED_AT + 1, 5)]:
            assert C.coarse_for(method, 0, n) == base, (method, n)
        assert C.coarse_for(method, 0, 1_000_000) == big, method
        mid = int(round(10 ** 5.5))
        want = int(np.ceil(np.sqrt(base * big) - 1e-9))
        assert abs(C.coarse_for(method, 0, mid) - want) <= 1, (method, C.coarse_for(method, 0, mid), want)
        sizes = np.sort(rng.integers(C.DEPTH_MEASURED_AT + 1, 1_000_000, 40))
        got = [C.coarse_for(method, 0, int(n)) for n in sizes]
        assert all(base <= g <= big for g in got) and got == sorted(got), (method, got)
        past = [C.coarse_for(method, 0, n) for n in (1_000_001, 3_000_000, 10_000_000)]
        assert past == sorted(past) and past[0] >= big and (big == base or past[-1] > big), (method, past)
        for n in (0, 1, C.DEPTH_MEASURED_AT + 1, 1_000_000, 7_654_321):
            k = int(rng.integers(1, 1 << 20))
            assert C.coarse_for(method, k, n) == k


def test_explain_states_the_depth_measured_for_the_hubs_size(rng):
    """``describe`` on a hub of more than ``DEPTH_MEASURED_AT`` entries (level 1 by the IVF, the measured
    lists, no re-rank): at the size's default depth or deeper it states ``ANN_MEASURED_RECALL`` (the lower
    of the 100k and 1M measurements) at "shortlist_coarse >= <that depth>"; below it, no recall -- also
    at ``COARSE_DEFAULT`` (8), whose recall was measured on the 100k hub only."""
    for n in (C.DEPTH_MEASURED_AT + 1, int(rng.integers(C.DEPTH_MEASURED_AT + 2, 1_000_000)), 1_000_000, 3_000_000):
        nlist = C._nlist(n)
        for method in METHODS:
            need = C.coarse_for(method, 0, n)
            probe = C.nprobe_for(C.NPROBE_DEFAULT, n)
            base = {"ranked": n, "live": n, "coarse_kept": need * 256, "bc_cut": 0.5,
                    "ann": {"nprobe": probe, "nlist": nlist, "reranked": 0}}
            want = min(C.MEASURED_RECALL[method], C.ANN_MEASURED_RECALL[method])
            for coarse in (need, need + int(rng.integers(1, 50))):
                text, rec = C.describe(base, coarse, method)
                assert rec == want, (n, method, coarse, rec, want)
                assert f"measured {want:.3f} at shortlist_coarse >= {need}," in text, text
            for coarse in {need - 1, C.COARSE_DEFAULT} - {0}:
                if coarse >= need:
                    continue
                text, rec = C.describe(base, coarse, method)
                assert rec is None and "recall not measured at this shortlist_coarse" in text, (n, method, coarse, text)
            if probe - 1 < nlist:   # fewer lists than the size's measured count: no recall stated
                fewer = {**base, "ann": {**base["ann"], "nprobe": int(rng.integers(1, probe))}}
                assert C.describe(fewer, need, method)[1] is None, (n, method, probe)


def test_lists_probed_grow_with_the_hub(rng):
    """``nprobe_for(nprobe, entries)``: ``nprobe`` itself up to ``DEPTH_MEASURED_AT`` entries (and 0, the
    exact level 1, at every size); ``NPROBE_AT_1M`` for the default at 1M and the same ratio for any other
    count; between, non-decreasing and between the two; past 1M still growing."""
    ratio = C.NPROBE_AT_1M / C.NPROBE_DEFAULT
    for nprobe in (C.NPROBE_DEFAULT, 1, 7, int(rng.integers(2, 4096))):
        for n in (0, 1, 97, C.DEPTH_MEASURED_AT, int(rng.integers(0, C.DEPTH_MEASURED_AT))):
            assert C.nprobe_for(nprobe, n) == nprobe
        assert C.nprobe_for(nprobe, 1_000_000) == int(np.ceil(nprobe * ratio - 1e-9)), nprobe
        sizes = np.sort(rng.integers(C.DEPTH_MEASURED_AT + 1, 1_000_000, 30))
        got = [C.nprobe_for(nprobe, int(n)) for n in sizes]
        assert got == sorted(got) and all(nprobe <= g <= np.ceil(nprobe * ratio) for g in got), (nprobe, got)
        assert C.nprobe_for(nprobe, 5_000_000) >= C.nprobe_for(nprobe, 1_000_000)
    assert C.nprobe_for(C.NPROBE_DEFAULT, 1_000_000) == C.NPROBE_AT_1M
    for n in (0, 1, 10 ** 5, 10 ** 7):
        assert C.nprobe_for(0, n) == 0


def test_l2_bounds_hold_the_l2_screen(tmp_path, rng):
    """``coarse.l2_bounds`` (level 2's cut for l2): for every row sharing a column with the query,
    ``lo <= N x screen^2 <= hi`` against the full l2 screen (a categorical column and NaN values
    included: there ``lo < hi``), ``lo == hi`` where every shared column is numeric on both sides, and
    ``shared`` is exactly the rows the screen scores; any rows (all, some, one, none). Through the
    stage, with level 1 keeping every entry, the l2 search equals the exact screen's."""
    cfg = fitsketch.SketchConfig(shortlist=2, partition_size=20)
    pools = _classes(rng)
    with fitsketch.open(tmp_path / "h.hub", config=cfg) as hub:
        items = _hub_items(rng, cfg, pools, int(rng.integers(8, 14)))
        items.append(("other", fitsketch.sketch_data(pd.DataFrame({"zz": rng.normal(size=50)}), cfg)))
        hub.add_sketches(items)
        hub.remove("m3")
        idx = hub._synced_screen()
        n = len(idx)
        for q, numeric in ((fitsketch.sketch_data(_mixture(pools, rng.integers(20, 120, 4)), cfg), False),
                           (fitsketch.sketch_data(_mixture(pools, rng.integers(20, 120, 4))[["a", "d"]], cfg), True)):
            full = idx.scores(q, "l2", seed=cfg.seed)
            pos = {int(e): i for i, e in enumerate(full["ids"])}
            N = q.n_features
            for rows in (np.arange(n), np.sort(rng.choice(n, int(rng.integers(2, n)), replace=False)),
                         np.array([int(rng.integers(n))]), np.zeros(0, np.int64)):
                lo, hi, shared = C.l2_bounds(idx, rows, q, cfg.seed)
                assert lo.shape == hi.shape == shared.shape == rows.shape
                for r, a, b, s in zip(rows, lo, hi, shared):
                    i = pos.get(int(idx.ids.v[r]))
                    assert s == (i is not None), r
                    if i is None:
                        continue
                    sq = N * full["score"][i] ** 2
                    assert a <= sq * (1 + 1e-9) + 1e-9 and sq <= b * (1 + 1e-9) + 1e-9, (a, sq, b)
                    if numeric:   # a and d are numeric wherever they are stored
                        assert a == pytest.approx(b, rel=1e-12, abs=1e-12) and a == pytest.approx(sq, rel=1e-9)
        hub.remove("other")             # (an entry sharing no cell: level 1 would screen every entry exactly)
        q = _mixture(pools, rng.integers(20, 120, 4))
        exact = hub.search(q, k=2, method="l2", shortlist_screen="exact")
        two = hub.search(q, k=2, method="l2", shortlist_screen="two-level", shortlist_coarse=64)
        assert exact and [(m.name, m.score) for m in two] == [(m.name, m.score) for m in exact]
        st = next(s for s in hub.explain(q, k=2, method="l2", shortlist_screen="two-level", shortlist_coarse=64).stages
                  if s.name == "shortlist")
        assert "bounded their l2 by the features' means and spreads" in st.detail, st.detail


def _same(a, b) -> bool:
    """Equal arrays, NaN equal to NaN (the per-feature means of non-numeric features)."""
    return np.array_equal(a, b, equal_nan=bool(np.issubdtype(np.asarray(a).dtype, np.inexact)))


def _mapped(idx, tmp_path):
    """A shallow copy of ``idx`` whose per-row arrays are read-only memory maps of files (as a hub's
    index files are read, storage/arrayfile.py; bench.level1_pool)."""
    out = object.__new__(type(idx))
    out.__dict__.update(idx.__dict__)
    for name, g in vars(idx).items():
        if isinstance(g, Grow):
            np.save(tmp_path / f"{name}.npy", g.v)
            m = Grow(g.a.dtype, g.a.shape[1] if g.a.ndim == 2 else None)
            m.a = np.load(tmp_path / f"{name}.npy", mmap_mode="r")
            m.n = len(m.a)
            setattr(out, name, m)
    return out


def test_level2_on_a_memory_mapped_index(tmp_path, rng):
    """Level 2 on an index whose arrays are memory maps (``Grow.take``, ``subset``'s lazy gathers,
    ``key_counts``, ``l2_bounds``): every subset array, key count, l2 bound and screen equals the in-memory
    index's, for rows in any order (key counts) and for all, some, one and no rows; a lazy subset's array
    equals the eager one's whether first read by ``v`` or ``a``."""
    cfg = fitsketch.SketchConfig(shortlist=2, partition_size=20)
    pools = _classes(rng)
    with fitsketch.open(tmp_path / "h.hub", config=cfg) as hub:
        hub.add_sketches(_hub_items(rng, cfg, pools, int(rng.integers(8, 14))))
        hub.remove("m0")
        idx = hub._synced_screen()
        (tmp_path / "maps").mkdir()
        mm = _mapped(idx, tmp_path / "maps")
        assert isinstance(mm._col.a, np.memmap)
        n = len(idx)
        q = fitsketch.sketch_data(_mixture(pools, rng.integers(60, 120, 4)), cfg,
                                  partition_size=int(rng.integers(40, 400)))
        q_small = fitsketch.sketch_data(_mixture(pools, rng.integers(10, 40, 4)), fitsketch.SketchConfig(),
                                        partition_size=25)
        sp = fitsketch.profiles.small_params(cfg)
        qv = C.query_vector(idx, q, cfg.seed)
        for rows in (np.arange(n), np.sort(rng.choice(n, int(rng.integers(2, n)), replace=False)),
                     np.array([int(rng.integers(n))]), np.zeros(0, np.int64)):
            for name, g in vars(idx).items():
                if isinstance(g, Grow) and g.n:
                    sel = rng.integers(0, g.n, int(rng.integers(0, 2 * g.n)))
                    got = getattr(mm, name).take(sel)
                    assert type(got) is np.ndarray and got.dtype == g.a.dtype
                    assert _same(got, g.v[sel]), name
            eager = C.subset(idx, rows, qv)
            for first in ("v", "a"):
                lazy = C.subset(mm, rows, qv, lazy=True)
                for name, g in vars(eager).items():
                    if isinstance(g, Grow):
                        lg = getattr(lazy, name)
                        got = lg.v if first == "v" else lg.a[:lg.n]
                        assert lg.n == g.n and _same(got, g.v) and got.dtype == g.v.dtype, (name, first)
            for method in ("js", "adaptivity"):
                for qq, small in ((q, False), (q_small, True)):
                    t_small = (sp, own_keys(qq.hist, qq.n_features, qq.n_partitions, per_dataset=method == "js",
                                            seed=cfg.seed, r=sp[0], k=sp[1], l=sp[2])) if small else None
                    kw = dict(seed=cfg.seed, t_keys=_own(qq, cfg), t_small=t_small)
                    want = idx.key_counts(rows, qq, method, **kw)
                    assert np.array_equal(mm.key_counts(rows, qq, method, **kw), want), (method, small)
                    perm = rng.permutation(len(rows))
                    assert np.array_equal(mm.key_counts(rows[perm], qq, method, **kw), want[perm]), (method, small)
            for got, want in zip(C.l2_bounds(mm, rows, q, cfg.seed), C.l2_bounds(idx, rows, q, cfg.seed)):
                assert _same(got, want), "l2 bounds"
            for method in METHODS:
                a = C.subset(mm, rows, qv, lazy=True).scores(q, method, seed=cfg.seed, t_keys=_own(q, cfg))
                b = C.subset(idx, rows, qv).scores(q, method, seed=cfg.seed, t_keys=_own(q, cfg))
                for key in ("ids", "score", "tiebreak", "exact"):
                    assert np.array_equal(a[key], b[key]), (method, key)


@pytest.mark.parametrize("rows", [0, 1, 7, 97, 32_771])
def test_band_agreements_equal_the_reference(rng, rows):
    """``screen._agreements`` (the band agreements key_counts counts) equals ``(keys == t).sum(axis=1)``
    exactly, int64, for widths of the lane path (multiples of 8 up to 248) and of the plain sum (not a
    multiple of 8, 0, 256 and more), on keys agreeing with ``t`` at none, some and all positions."""
    for w in (0, 1, 7, 8, 16, 32, 128, 248, 256, 264, int(rng.integers(1, 400))):
        t = rng.integers(0, 1 << 32, w, dtype=np.uint32)
        keys = rng.integers(0, 1 << 32, (rows, w), dtype=np.uint32)
        agree = rng.random((rows, w)) < rng.random((rows, 1))      # per row its own share of agreements
        keys[agree] = np.broadcast_to(t, (rows, w))[agree]
        if rows:
            keys[0] = t                                              # all agree
        got = S._agreements(keys, t)
        want = (keys == t[None, :]).sum(axis=1)
        assert got.dtype == np.int64 and got.shape == (rows,)
        assert np.array_equal(got, want), (rows, w)
