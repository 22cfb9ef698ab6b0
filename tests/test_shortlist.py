"""The candidate stage of a large hub (engine/screen.py): the screen computes each method's own score
for every entry, so a shortlisted search returns the exhaustive search's top k -- checked against
``shortlist=0`` on fresh random hubs, on near-duplicate entries, and on one-schema hubs. Hubs stay
small through a small ``shortlist=`` (the stage runs above 4 x shortlist entries)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import fitsketch
from fitsketch import errors as E
from fitsketch import planner
from fitsketch import screen as S
from fitsketch.jslsh import own_keys

from _hubcheck import check_hub

HIST_METHODS = ("adaptivity", "js", "exact-js", "l2")
EXACT_METHODS = ("adaptivity", "js", "exact-js", "l2")   # screened by their own score


def _classes(rng, n_classes=4, rows=120):
    """Fixed rows per class: 3 numeric columns at class-specific places + one categorical column."""
    pools = []
    for c in range(n_classes):
        pools.append(pd.DataFrame({
            "a": rng.normal(3 * c, 1.0, rows), "b": np.rint(rng.normal(c, 2.0, rows)),
            "c": rng.choice(["x", "y", "z", f"k{c}"], rows), "d": rng.lognormal(c / 2, 0.5, rows)}))
    return pools


def _mixture(pools, counts) -> pd.DataFrame:
    return pd.concat([p.iloc[:n] for p, n in zip(pools, counts)], ignore_index=True)


def _own(q, cfg):
    kw = dict(seed=cfg.seed, r=cfg.jslsh_r, k=cfg.jslsh_k, l=cfg.jslsh_l)
    return (own_keys(q.hist, q.n_features, q.n_partitions, per_dataset=True, **kw),
            own_keys(q.hist, q.n_features, q.n_partitions, per_dataset=False, **kw))


def _screen_by_name(hub, q, method):
    scr = hub._synced_screen().scores(q, method, seed=hub.config.seed, t_keys=_own(q, hub.config))
    by_id = {e: n for n in hub.names() for e in [hub.get(n).id]}
    return {by_id[int(i)]: (float(s), bool(x)) for i, s, x in zip(scr["ids"], scr["score"], scr["exact"])}


def test_screen_equals_the_scorers(tmp_path, rng):
    """Every entry's screen equals the score the exhaustive search gives it: exact-js / l2 within
    1e-6 (distributions held as float32 in memory), js / adaptivity exactly (the same stored band
    keys) for entries whose columns are the query's in its order; entries with permuted or fewer
    columns are screened exactly for exact-js / l2 and marked as proxies for the JS-LSH methods."""
    cfg = fitsketch.SketchConfig(shortlist=2, partition_size=20)   # queries of >= 160 rows are not "small"
    pools = _classes(rng)
    n = int(rng.integers(9, 14))
    items = []
    for i in range(n):
        df = _mixture(pools, rng.integers(5, 120, 4))
        df.loc[rng.random(len(df)) < 0.05, "d"] = np.nan           # numeric with some missing values
        items.append((f"m{i}", fitsketch.sketch_data(df, cfg, partition_size=int(rng.integers(30, 200)))))
    items.append(("perm", fitsketch.sketch_data(_mixture(pools, [60, 60, 10, 1])[["d", "a", "c", "b"]], cfg)))
    items.append(("fewer", fitsketch.sketch_data(_mixture(pools, [20, 60, 10, 40])[["a", "c"]], cfg)))
    items.append(("one", fitsketch.sketch_data(_mixture(pools, [1, 0, 0, 0]), cfg)))   # a single row
    with fitsketch.open(tmp_path / "h.hub", config=cfg) as hub:
        hub.add_sketches(items)
        check_hub(hub)
        q = fitsketch.sketch_data(_mixture(pools, rng.integers(60, 120, 4)), cfg, partition_size=int(rng.integers(40, 400)))
        for method in HIST_METHODS:
            full = {m.name: m.score for m in hub.search(q, k=len(items), method=method, shortlist=0)}
            scr = _screen_by_name(hub, q, method)
            assert set(scr) == set(full)
            for name, (s, exact) in scr.items():
                if method in ("exact-js", "l2"):   # l2: spread-scaled, with the uncovered-feature term ("fewer")
                    assert exact and s == pytest.approx(full[name], abs=1e-6), (method, name)
                elif name in ("perm", "fewer"):
                    assert not exact
                else:   # the same band keys, so the LSH part is equal; entries at 0 add closeness x step / 2,
                    # where the screen's closeness is its exact-js (within 1e-6, above) and step / 2 <= 1/2:
                    # 5e-7 is far below one LSH step (>= 1 / (32 x 12 x 13): <= 12 query partitions here), so a band difference fails
                    assert exact and s == pytest.approx(full[name], rel=0, abs=5e-7), (method, name)


@pytest.mark.parametrize("method", EXACT_METHODS)
def test_near_duplicates_differing_in_one_class_share(tmp_path, rng, method):
    """Entries are mixtures of the same class rows that differ only in class 0's share (one row
    apart); the query is entry "twin"'s data. The shortlist of 3 out of 40 entries returns the
    exhaustive top 3 (by score), and for exact-js / l2 the twin itself first (score 1 / distance 0)."""
    cfg = fitsketch.SketchConfig(shortlist=3, partition_size=10)   # a query of >= 80 rows is not "small"
    pools = _classes(rng, rows=100)
    base = [0, 40, 30, 20]
    shares = rng.permutation(np.arange(30, 70))                  # class 0 rows: 30 .. 69, one entry each
    twin = int(rng.integers(35, 65))
    items = [("twin" if c0 == twin else f"dup{c0}", fitsketch.sketch_data(_mixture(pools, [c0] + base[1:]), cfg))
             for c0 in shares]
    with fitsketch.open(tmp_path / "h.hub", config=cfg) as hub:
        hub.add_sketches(items)
        q = fitsketch.sketch_data(_mixture(pools, [twin] + base[1:]), cfg)
        plan = hub.explain(q, k=3, method=method)
        st = next(s for s in plan.stages if s.name == "shortlist")
        assert st.actual == 3 and st.recall == 1.0
        short = hub.search(q, k=3, method=method)
        full = hub.search(q, k=3, method=method, shortlist=0)
        assert [m.score for m in short] == pytest.approx([m.score for m in full], rel=0, abs=1e-12)   # batched sums
        if method in ("exact-js", "l2"):
            assert short[0].name == "twin" and short[0].score == pytest.approx(1.0 if method == "exact-js" else 0.0,
                                                                             abs=1e-12)
            # the next best are the neighbours one class-0 row away
            assert {m.name for m in short[1:]} <= {f"dup{twin - 1}", f"dup{twin + 1}", f"dup{twin - 2}",
                                                    f"dup{twin + 2}"}


def test_one_schema_hub_returns_the_exhaustive_top_k(tmp_path, rng):
    """All entries share one schema (class-skewed samples of the same columns): for every histogram
    method the shortlisted top k has the exhaustive top k's scores, and the plan says recall 1."""
    cfg = fitsketch.SketchConfig(shortlist=4, partition_size=10)
    pools = _classes(rng, rows=150)
    n = int(rng.integers(25, 36))
    items = []
    for i in range(n):
        counts = rng.multinomial(int(rng.integers(100, 300)), rng.dirichlet(np.full(4, 0.3)))
        items.append((f"m{i:02d}", fitsketch.sketch_data(_mixture(pools, np.minimum(counts, 150)), cfg, partition_size=100)))
    with fitsketch.open(tmp_path / "h.hub", config=cfg) as hub:
        hub.add_sketches(items)
        for _ in range(2):
            counts = rng.multinomial(200, rng.dirichlet(np.full(4, 0.3)))
            q = fitsketch.sketch_data(_mixture(pools, np.minimum(counts, 150)), cfg, partition_size=100)
            for method in EXACT_METHODS:
                k = int(rng.integers(1, 5))
                short = hub.search(q, k=k, method=method)
                full = hub.search(q, k=k, method=method, shortlist=0)
                assert [m.score for m in short] == pytest.approx([m.score for m in full], rel=0, abs=1e-12), method   # batch sums
                st = next(s for s in hub.explain(q, k=k, method=method).stages if s.name == "shortlist")
                assert st.recall == 1.0 and st.actual == 4 and f"{n} entries screened (sharing column names" in st.detail


def test_index_follows_adds_removes_and_old_hubs(tmp_path, rng):
    """After removals and adds the index holds exactly the live entries, with the screens a fresh
    index gives; a hub whose entries lack screen records (written before screens) gets them from
    the histograms, with the same screens."""
    cfg = fitsketch.SketchConfig(shortlist=2)
    pools = _classes(rng, rows=80)
    path = tmp_path / "h.hub"
    q = fitsketch.sketch_data(_mixture(pools, [30, 10, 50, 5]), cfg)

    def mix():
        return fitsketch.sketch_data(_mixture(pools, rng.integers(1, 80, 4)), cfg, partition_size=int(rng.integers(20, 90)))

    with fitsketch.open(path, config=cfg) as hub:
        hub.add_sketches([(f"m{i}", mix()) for i in range(12)])
        before = {m: _screen_by_name(hub, q, m) for m in HIST_METHODS}
        gone = [f"m{i}" for i in rng.choice(12, 4, replace=False)]
        for name in gone:
            hub.remove(name)
        hub.add_sketch("late", mix())
        check_hub(hub)
        after = {m: _screen_by_name(hub, q, m) for m in HIST_METHODS}
        for m in HIST_METHODS:
            assert set(after[m]) == set(hub.names())
            for name in set(before[m]) - set(gone):
                assert after[m][name] == before[m][name]
        with hub.store.read() as txn:
            live = sorted(int.from_bytes(k, "big") for k in txn.keys("entries"))
        assert hub._synced_screen().ids.v.tolist() == live
        with hub.store.read() as txn:
            assert not any(k[:1] == b"d" and int.from_bytes(k[1:], "big") not in live for k in txn.keys("extra"))
        want = {m: _screen_by_name(hub, q, m) for m in HIST_METHODS}
        hub.store.transact(lambda t: [t.delete("extra", S.key(hub.get(n).id)) for n in hub.names()])
    with fitsketch.open(path) as hub:                  # a fresh process's view: records computed late
        for m in HIST_METHODS:
            got = _screen_by_name(hub, q, m)
            assert got.keys() == want[m].keys()
            for name in got:
                assert got[name][1] == want[m][name][1]
                assert got[name][0] == pytest.approx(want[m][name][0], abs=1e-12)


def test_methods_declare_how_they_are_shortlisted():
    """A method without a rule (a new one) is never shortlisted; simex neither; coverage and
    accuracy by a proxy (exact-js)."""
    assert planner.shortlist_rule("a-new-method").screen is None
    assert planner.use_shortlist(10_000, 8, "a-new-method")[0] is False
    assert planner.shortlist_rule("accuracy").screen == "exact-js" and not planner.shortlist_rule("accuracy").exact
    assert planner.use_shortlist(10_000, 8, "simex")[0] is False
    for m in EXACT_METHODS:
        assert planner.shortlist_rule(m).exact and planner.use_shortlist(10_000, 8, m)[0]
    assert not planner.shortlist_rule("coverage").exact and planner.use_shortlist(10_000, 8, "coverage")[0]
    assert planner.use_shortlist(32, 8, "exact-js")[0] is False          # at most 4 x shortlist entries


def test_explain_states_proxies_and_the_profile_screen_still_runs(tmp_path, rng):
    """Entries the JS-LSH screen cannot score exactly (another column order) are counted as proxies
    and the plan then states the proxy's measured recall and its margin; shortlist_screen="profile" runs the random projections;
    a bad shortlist_screen is refused and changes nothing."""
    cfg = fitsketch.SketchConfig(shortlist=2, partition_size=5)   # the 80-row query is not "small"
    pools = _classes(rng, rows=60)
    items = [(f"m{i}", fitsketch.sketch_data(_mixture(pools, rng.integers(1, 60, 4)), cfg)) for i in range(9)]
    items.append(("perm", fitsketch.sketch_data(_mixture(pools, [20, 20, 20, 20])[["b", "a", "d", "c"]], cfg)))
    with fitsketch.open(tmp_path / "h.hub", config=cfg) as hub:
        hub.add_sketches(items)
        q = fitsketch.sketch_data(_mixture(pools, [25, 20, 15, 20]), cfg)
        st = next(s for s in hub.explain(q, k=2, method="js").stages if s.name == "shortlist")
        # the proxy's stated recall is the rule's measured one, and its margin may keep more than the top 2 of each
        assert st.recall == planner.shortlist_rule("js").measured_recall and "1 by the exact-js proxy" in st.detail
        assert st.actual == 3 and "within margin" in st.detail
        st = next(s for s in hub.explain(q, k=2, method="exact-js").stages if s.name == "shortlist")
        assert st.recall == 1.0 and st.actual == 2
        st = next(s for s in hub.explain(q, k=2, method="exact-js", shortlist_screen="profile").stages
                  if s.name == "shortlist")
        assert "inner product" in st.detail and st.actual == 2 and st.recall is None
        before = hub.stats()
        with pytest.raises(E.InvalidArgumentError, match="shortlist_screen"):
            hub.search(q, k=2, shortlist_screen="fast")
        assert hub.stats() == before


@pytest.mark.parametrize("n,keep", [(0, 3), (1, 3), (7, 3), (97, 5), (97, 0)])
def test_select_keeps_the_best_of_each_group(rng, n, keep):
    """select: the ``keep`` best exact entries (ties at the cut broken by tiebreak) and the ``keep``
    best proxies, against a sort of each group."""
    score = rng.integers(0, 6, n).astype(np.float64) / 5
    tie = rng.random(n)
    exact = rng.random(n) < 0.7
    ids = rng.permutation(1000)[:n].astype(np.int64)
    got, info = S.select({"ids": ids, "score": score, "tiebreak": tie, "exact": exact}, keep)
    want = []
    for grp in (exact, ~exact):
        g = np.flatnonzero(grp)
        g = g[np.lexsort((-tie[g], -score[g]))][:keep]
        want += ids[g].tolist()
    assert sorted(got.tolist()) == sorted(want)
    assert info == {**info, "screened": n, "exact": int(exact.sum()), "proxy": int((~exact).sum()), "kept": len(want)}


@pytest.mark.parametrize("n,keep,k,cap", [(0, 3, 2, None), (1, 3, 1, None), (40, 3, 2, None), (97, 5, 3, None),
                                          (97, 5, 3, 12), (97, 0, 3, None), (10, 4, 10, None)])
def test_select_margin_keeps_every_proxy_within_the_margin_of_the_kth_best(rng, n, keep, k, cap):
    """select with a margin: the exact group as without one; the proxy group's ``keep`` best plus every
    proxy scoring at least (its k-th best - margin), at most ``cap`` of them (the best), against a sort."""
    score = np.round(rng.random(n), 2)
    tie = rng.random(n)
    exact = rng.random(n) < 0.3
    ids = rng.permutation(1000)[:n].astype(np.int64)
    margin = float(rng.uniform(0.02, 0.2))
    got, info = S.select({"ids": ids, "score": score, "tiebreak": tie, "exact": exact}, keep, k=k, margin=margin,
                         max_keep=cap)
    want, capped = [], False
    for is_exact, grp in ((True, exact), (False, ~exact)):
        g = np.flatnonzero(grp)
        g = g[np.lexsort((-tie[g], -score[g]))]
        top = g[:keep]
        if not is_exact and keep and len(g) > keep:
            kth = score[g][min(k, len(g)) - 1]
            extra = [i for i in g[keep:] if score[i] >= kth - margin]
            if cap is not None and len(top) + len(extra) > cap:
                extra, capped = extra[:max(cap - len(top), 0)], True
            top = np.concatenate([top, np.asarray(extra, dtype=np.int64)])
        want += ids[top].tolist()
    if capped:   # the cap keeps the best by score: compare scores (ties at the cap may pick either)
        assert sorted(score[np.isin(ids, got)].tolist()) == sorted(score[np.isin(ids, want)].tolist())
    else:
        assert sorted(got.tolist()) == sorted(want)
    assert info["kept"] == len(want) and info["capped"] == capped


def test_small_query_js_is_screened_by_its_own_score(tmp_path, rng):
    """A small query's js uses more, wider bands (small_query_jslsh_*); entries store their keys for
    those (profiles "jk_small"), so the screen gives every same-schema entry js's own score -- equal
    to the exhaustive search's (the same stored keys; closeness within 1e-6 x step / 2) -- and an
    entry of another column order its exact-js proxy. On near-duplicates (class 0's share one row
    apart) the shortlist of 3 holds the exhaustive top 3; a query that sets its own bands falls back
    to the proxy."""
    cfg = fitsketch.SketchConfig(shortlist=3)       # partition_size 500: a query under 4 x 500 rows is small
    pools = _classes(rng, rows=100)
    base = [0, 40, 30, 20]
    shares = rng.permutation(np.arange(30, 70))
    items = [(f"dup{c0}", fitsketch.sketch_data(_mixture(pools, [c0] + base[1:]), cfg)) for c0 in shares]
    items.append(("perm", fitsketch.sketch_data(_mixture(pools, [50] + base[1:])[["d", "a", "c", "b"]], cfg)))
    with fitsketch.open(tmp_path / "h.hub", config=cfg) as hub:
        hub.add_sketches(items)
        q = fitsketch.sketch_data(_mixture(pools, [int(rng.integers(35, 65))] + base[1:]), cfg)
        assert q.n_rows < cfg.partition_size * cfg.query_min_partitions
        sp = fitsketch.profiles.small_params(cfg)
        t_small = (sp, own_keys(q.hist, q.n_features, q.n_partitions, per_dataset=True, seed=cfg.seed, r=sp[0],
                                k=sp[1], l=sp[2]))
        scr = hub._synced_screen().scores(q, "js", seed=cfg.seed, t_small=t_small)
        by_id = {hub.get(n).id: n for n in hub.names()}
        full = {m.name: m.score for m in hub.search(q, k=len(items), method="js", shortlist=0)}
        for i, sc, ex in zip(scr["ids"], scr["score"], scr["exact"]):
            name = by_id[int(i)]
            if name == "perm":
                assert not ex
            else:   # one LSH step is 1/128: a band difference is far above 5e-7
                assert ex and sc == pytest.approx(full[name], rel=0, abs=5e-7), name
        st = next(s for s in hub.explain(q, k=3, method="js").stages if s.name == "shortlist")
        assert f"{len(items) - 1} screened by the method's own score" in st.detail and "1 by the exact-js" in st.detail
        short = hub.search(q, k=3, method="js")
        assert [m.score for m in short] == pytest.approx(sorted(full.values(), reverse=True)[:3], rel=0, abs=1e-12)
        st = next(s for s in hub.explain(q, k=3, method="js", jslsh_l=64).stages if s.name == "shortlist")
        assert "screened by the method's own score" not in st.detail and f"{len(items)} by the exact-js" in st.detail


def test_small_query_adaptivity_is_screened_by_its_own_score(tmp_path, rng):
    """A small query's adaptivity compares each query partition's small-query bands with the entry's
    partitions; an entry of one partition stored exactly those keys (its dataset's "jk_small"), so the
    screen gives it adaptivity's own score -- equal to the exhaustive search's (the same stored keys;
    closeness within 1e-6 x step / 2) -- and an entry of two partitions its exact-js proxy. On
    near-duplicates (class 0's share one row apart) the shortlist of 3 holds the exhaustive top 3."""
    cfg = fitsketch.SketchConfig(shortlist=3)       # partition_size 500: a query under 4 x 500 rows is small
    pools = _classes(rng, rows=200)
    base = [0, 40, 30, 20]
    shares = rng.permutation(np.arange(30, 70))
    items = [(f"dup{c0}", fitsketch.sketch_data(_mixture(pools, [c0] + base[1:]), cfg)) for c0 in shares]
    items.append(("two", fitsketch.sketch_data(_mixture(pools, [200, 190, 150, 100]), cfg)))   # 640 rows
    with fitsketch.open(tmp_path / "h.hub", config=cfg) as hub:
        hub.add_sketches(items)
        assert hub.get("two").n_partitions == 2 and hub.get("dup30").n_partitions == 1
        q = fitsketch.sketch_data(_mixture(pools, [int(rng.integers(35, 65))] + base[1:]), cfg,
                                  partition_size=40)            # as a query given as data is cut: 4 partitions
        assert q.n_rows < cfg.partition_size * cfg.query_min_partitions and q.n_partitions > 1
        sp = fitsketch.profiles.small_params(cfg)
        t_small = (sp, own_keys(q.hist, q.n_features, q.n_partitions, per_dataset=False, seed=cfg.seed, r=sp[0],
                                k=sp[1], l=sp[2]))
        scr = hub._synced_screen().scores(q, "adaptivity", seed=cfg.seed, t_small=t_small)
        by_id = {hub.get(n).id: n for n in hub.names()}
        full = {m.name: m.score for m in hub.search(q, k=len(items), method="adaptivity", shortlist=0)}
        for i, sc, ex in zip(scr["ids"], scr["score"], scr["exact"]):
            name = by_id[int(i)]
            if name == "two":
                assert not ex
            else:   # one LSH step is 1 / (128 x T x (T + 1)): far above 5e-7
                assert ex and sc == pytest.approx(full[name], rel=0, abs=5e-7), name
        st = next(s for s in hub.explain(q, k=3, method="adaptivity").stages if s.name == "shortlist")
        assert f"{len(items) - 1} screened by the method's own score" in st.detail and "1 by the exact-js" in st.detail
        short = hub.search(q, k=3, method="adaptivity")
        assert [m.score for m in short] == pytest.approx(sorted(full.values(), reverse=True)[:3], rel=0, abs=1e-12)


def test_small_query_proxy_margin_keeps_the_best_and_explain_says_so(tmp_path, rng, monkeypatch):
    """A query under query_min_partitions x partition_size rows is scored with query-time JS-LSH bands;
    adaptivity's (per partition of the query) no stored key reproduces on entries of several
    partitions, so they are screened by the exact-js proxy (js, since its small-query keys are
    stored, only for entries without them). Near-duplicate
    entries (class 0's share one row apart): with a margin covering the whole proxy range the stage
    keeps every entry and returns the exhaustive top k; the plan states the margin, what it kept and
    the rule's measured recall; a cap below that is stated as not holding recall."""
    cfg = fitsketch.SketchConfig(shortlist=4, partition_size=60)   # a 190-row query is small; cap 8 x 4 >= 30
    pools = _classes(rng, rows=100)
    base = [0, 40, 30, 20]
    shares = rng.permutation(np.arange(30, 60))
    items = [(f"dup{c0}", fitsketch.sketch_data(_mixture(pools, [c0] + base[1:]), cfg)) for c0 in shares]
    with fitsketch.open(tmp_path / "h.hub", config=cfg) as hub:
        hub.add_sketches(items)
        q = fitsketch.sketch_data(_mixture(pools, [int(rng.integers(35, 55))] + base[1:]), cfg)
        for method in ("adaptivity",):
            meth = fitsketch.methods.get(method)   # the registry's method object holds its rule
            monkeypatch.setattr(meth, "shortlist",
                                planner.ShortlistRule(meth.shortlist.screen, True, measured_recall=0.96, margin=1.0))
            plan = hub.explain(q, k=2, method=method)
            st = next(s for s in plan.stages if s.name == "shortlist")
            assert st.actual == len(items) and st.recall == 0.96, st.detail
            assert f"{len(items)} by the exact-js proxy" in st.detail and "within margin 1" in st.detail
            short = hub.search(q, k=2, method=method)
            full = hub.search(q, k=2, method=method, shortlist=0)
            assert [m.name for m in short] == [m.name for m in full]
            monkeypatch.setattr(planner, "SHORTLIST_MARGIN_CAP", 2)   # 2 x 4 = 8 entries at most
            import fitsketch.pipeline as pipemod
            monkeypatch.setattr(pipemod, "SHORTLIST_MARGIN_CAP", 2)
            st = next(s for s in hub.explain(q, k=2, method=method).stages if s.name == "shortlist")
            assert st.actual == 8 and st.recall is None and "recall not held" in st.detail
            monkeypatch.undo()


def test_entries_stored_without_small_query_keys_are_proxies(tmp_path, rng):
    """Entries whose keys record predates "jk_small" (simulated by removing it) are screened for a small
    js query by the exact-js proxy, the ones added after them by js's own score -- whichever kind the
    index met first, each entry's row holds its own keys; after removing entries of both kinds the
    rest keep theirs."""
    from fitsketch.storage import u64

    cfg = fitsketch.SketchConfig(shortlist=2)
    pools = _classes(rng, rows=100)

    def mix():
        return fitsketch.sketch_data(_mixture(pools, rng.integers(10, 100, 4)), cfg)

    with fitsketch.open(tmp_path / "h.hub", config=cfg) as hub:
        hub.add_sketches([(f"old{i}", mix()) for i in range(5)])

        def strip(txn):
            for i in range(5):
                eid = hub.get(f"old{i}").id
                rec = dict(txn.get("profile_keys", u64(eid)))      # hub format 5: their own database
                rec.pop("jk_small"), rec.pop("jk_small_params")
                txn.put("profile_keys", u64(eid), rec)
        hub.store.transact(strip)
        q = mix()
        sp = fitsketch.profiles.small_params(cfg)
        t_small = (sp, own_keys(q.hist, q.n_features, q.n_partitions, per_dataset=True, seed=cfg.seed, r=sp[0],
                                k=sp[1], l=sp[2]))
        idx = hub._synced_screen()            # loaded now: the first entries it meets have no small keys
        hub.add_sketches([(f"new{i}", mix()) for i in range(6)])
        hub.remove("old1")
        hub.remove("new2")
        for _ in range(2):
            idx = hub._synced_screen()
            scr = idx.scores(q, "js", seed=cfg.seed, t_small=t_small)
            by_id = {hub.get(n).id: n for n in hub.names()}
            full = {m.name: m.score for m in hub.search(q, k=20, method="js", shortlist=0)}
            got = {by_id[int(i)]: (float(s), bool(x)) for i, s, x in zip(scr["ids"], scr["score"], scr["exact"])}
            assert set(got) == set(full) == set(hub.names())
            for name, (s, ex) in got.items():
                assert ex == name.startswith("new"), name
                if ex:
                    assert s == pytest.approx(full[name], rel=0, abs=5e-7), name
            hub._indexes = type(hub._indexes)(hub.config, hub.device)   # a fresh index (as a reopened hub): the same
