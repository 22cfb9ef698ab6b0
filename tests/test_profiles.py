"""fitsketch.profiles: entry profiles (their inner product against the Bhattacharyya coefficient),
the profile index following adds and removes, warm-up, the IVF profile index, and the shortlist they
feed (scores equal to the exhaustive search's; skipped with no shared name; hubs without profiles;
the metadata filter). Moved out: histogram packing (test_partitions.py), row similarity and identity
alignment (test_minhash.py), stored JS-LSH keys (test_jslsh.py), the gaussian-rows cache
(test_kernel_jslsh.py), bulk add and chunked scoring (test_hub.py), put_dups (test_storage.py)."""
from __future__ import annotations

import numpy as np
import pytest

import fitsketch
from fitsketch import profiles as P
from fitsketch.storage import u64

from _frames import _frame, _sketch
from _hubcheck import check_hub


# ----------------------------------------------------------------------------- kernels / formats


# ----------------------------------------------------------------------------- profiles
def test_profile_inner_product_tracks_bhattacharyya(rng):
    """Same data -> ~1, same names but disjoint values -> ~0, different names -> ~0 (noise ~1/sqrt(d))."""
    cfg = fitsketch.SketchConfig()
    a = _sketch(cfg, _frame(rng, 400))
    a2 = _sketch(cfg, _frame(rng, 400))
    far = _sketch(cfg, _frame(rng, 400, loc=1e6))
    other = _sketch(cfg, _frame(rng, 400, names=("x", "y", "z")))
    pa, pa2, pf, po = (P.profile(s.hist, s.names, cfg.seed) for s in (a, a2, far, other))
    tol = 4 / np.sqrt(P.PROFILE_DIM)
    assert float(pa @ pa) == pytest.approx(1.0, abs=tol)
    assert float(pa @ pa2) > 0.6
    assert abs(float(pa @ pf)) < tol and abs(float(pa @ po)) < tol


def test_profile_index_follows_adds_and_removes(tmp_path, rng):
    cfg = fitsketch.SketchConfig()
    sk = [_sketch(cfg, _frame(rng, 120, loc=3 * i)) for i in range(6)]
    with fitsketch.open(tmp_path / "h.hub", config=cfg) as hub:
        idx = P.ProfileIndex()

        def sync():
            with hub.store.read() as txn:
                idx.sync(txn, int(txn.get("meta", b"generation")))

        for i in range(6):
            hub.add_sketch(f"m{i}", sk[i])
        sync()
        assert len(idx) == 6
        q = P.profile(sk[2].hist, sk[2].names, cfg.seed)
        ids, d = idx.top(q, 6)
        ref = np.argsort(-(idx.x @ q), kind="stable")
        np.testing.assert_array_equal(np.sort(ids[:1]), np.sort(idx.ids[ref[:1]]))
        np.testing.assert_allclose(d, np.sort(idx.x @ q)[::-1], rtol=1e-5, atol=1e-6)
        hub.remove("m2")
        hub.add_sketch("m6", sk[2])               # remove + add between two syncs: same count
        sync()
        with hub.store.read() as txn:
            live = sorted(int.from_bytes(k, "big") for k in txn.keys("entries"))
        assert idx.ids.tolist() == live
        ids, _ = idx.top(q, 1)
        assert hub.get("m6").id == int(ids[0])


def test_warm_loads_what_a_first_search_would(tmp_path, rng):
    """hub.warm() brings the profile index to the hub's generation (its ids are the live entries)
    and builds the FAISS index over them; a shortlisted search on the warmed hub gives what the same
    search gives on a cold one, and warm() follows later adds."""
    cfg = fitsketch.SketchConfig(shortlist=5)
    path = tmp_path / "h.hub"
    n = int(rng.integers(22, 31))
    q = _sketch(cfg, _frame(rng, 100, loc=4.0))

    def live(hub):
        with hub.store.read() as txn:
            return (sorted(int.from_bytes(k, "big") for k in txn.keys("entries")),
                    int(txn.get("meta", b"generation")))

    with fitsketch.open(path, config=cfg) as hub:
        assert hub.warm() == 0
        hub.add_sketches([(f"m{i:02d}", _sketch(cfg, _frame(rng, 100, loc=0.5 * i))) for i in range(n)])
        hub.remove(f"m{int(rng.integers(n)):02d}")
        assert hub.warm() == n - 1
        idx = hub._profile_index()
        ids, gen = live(hub)
        assert idx.ids.tolist() == ids and idx.generation == gen
        assert idx._faiss is not None and idx._faiss.ntotal == n - 1
        warm = [(m.name, m.score) for m in hub.search(q, k=4)]
        assert "shortlist" in [s.name for s in hub.explain(q, k=4).stages]
    with fitsketch.open(path) as cold:
        assert cold._profile_index().generation == -1
        assert [(m.name, m.score) for m in cold.search(q, k=4)] == warm
        cold.add_sketch("late", q)
        assert cold.warm() == n
        ids, gen = live(cold)
        assert cold._profile_index().ids.tolist() == ids and cold._profile_index()._faiss.ntotal == n


def test_shortlisted_search_matches_exhaustive_scores(tmp_path, rng):
    """Above 4 x shortlist entries the plan shortlists; every match it returns carries the score the
    exhaustive search gives that entry, and the best entry (a copy of the query's data) is found."""
    cfg = fitsketch.SketchConfig(shortlist=5)
    with fitsketch.open(tmp_path / "h.hub", config=cfg) as hub:
        items = [(f"m{i:02d}", _sketch(cfg, _frame(rng, 150, loc=0.7 * i))) for i in range(27)]
        target = _frame(np.random.default_rng(99), 150, loc=0.7 * 13)
        items.append(("best", _sketch(cfg, target)))
        assert hub.add_sketches(items, batch=4) == 28
        check_hub(hub)
        q = _sketch(cfg, target)
        for method in ("adaptivity", "js", "exact-js", "l2"):
            plan = hub.explain(q, k=3, method=method)
            short = hub.search(q, k=3, method=method)
            stages = [s.name for s in plan.stages]
            assert "shortlist" in stages and plan.stages[stages.index("shortlist")].actual >= 5   # + a small query's margin
            full = {m.name: m.score for m in hub.search(q, k=28, method=method, shortlist=0)}
            assert short and all(m.score == pytest.approx(full[m.name], abs=1e-12) for m in short)
            assert short[0].name == "best" or short[0].score == pytest.approx(max(full.values()))
        plan = hub.explain(q, k=3, shortlist=0)
        assert "shortlist" not in [s.name for s in plan.stages]


def test_shortlist_skipped_when_no_name_is_shared(tmp_path, rng):
    cfg = fitsketch.SketchConfig(shortlist=2)
    with fitsketch.open(tmp_path / "h.hub", config=cfg) as hub:
        hub.add_sketches([(f"m{i}", _sketch(cfg, _frame(rng, 100, loc=i))) for i in range(12)])
        renamed = _frame(rng, 100, loc=3).rename(columns={"a": "A", "b": "B", "c": "C"})
        plan = hub.explain(renamed, k=3)
        res = hub.search(renamed, k=3)
        st = next(s for s in plan.stages if s.name == "shortlist")
        assert "skipped" in st.detail and st.actual == 12
        assert len(res) == 3          # found through MinHash over all entries, by values


def test_hub_without_profiles_still_shortlists(tmp_path, rng):
    """A hub written before profiles existed: the index computes them from the stored histograms."""
    cfg = fitsketch.SketchConfig(shortlist=2)
    with fitsketch.open(tmp_path / "h.hub", config=cfg) as hub:
        for i in range(10):
            hub.add_sketch(f"m{i}", _sketch(cfg, _frame(rng, 100, loc=i)))
        q = _frame(rng, 100, loc=4)
        want = [(m.name, m.score) for m in hub.search(q, k=2)]
    with fitsketch.open(tmp_path / "h.hub") as hub:
        hub.store.transact(lambda t: [(t.delete("profiles", u64(hub.get(f"m{i}").id)),     # as if stored without
                                       t.delete("profile_keys", u64(hub.get(f"m{i}").id))) for i in range(10)])
    with fitsketch.open(tmp_path / "h.hub") as hub:
        plan = hub.explain(q, k=2)
        res = hub.search(q, k=2)
        st = next(s for s in plan.stages if s.name == "shortlist")
        assert st.actual >= 2 and "the top 2" in st.detail, st.detail   # + a small query's proxy margin
        assert (res[0].name, res[0].score) == want[0]


METHODS_ALL = ("adaptivity", "js", "exact-js", "l2")


def test_metadata_filter_is_never_cut_by_the_shortlist(tmp_path, rng):
    """The only entry passing the filter is far from the query: a shortlist would drop it, so a
    filtered query scores every entry passing the filter and finds it."""
    cfg = fitsketch.SketchConfig(shortlist=2)
    with fitsketch.open(tmp_path / "h.hub", config=cfg) as hub:
        items = [(f"m{i}", _sketch(cfg, _frame(rng, 100, loc=0.1 * i)), {"team": "a"}) for i in range(11)]
        items.append(("far", _sketch(cfg, _frame(rng, 100, loc=50.0)), {"team": "b"}))
        hub.add_sketches(items)
        q = _frame(rng, 100, loc=0.2)
        assert "far" not in [m.name for m in hub.search(q, k=2)]
        plan = hub.explain(q, k=2, where={"team": "b"})
        assert "shortlist" not in [s.name for s in plan.stages]
        assert [m.name for m in hub.search(q, k=2, where={"team": "b"})] == ["far"]


@pytest.mark.parametrize("distinct,copies", [(2048, 1), (32, 80)])
def test_ivf_profile_index_finds_near_profiles(rng, monkeypatch, distinct, copies):
    """Past IVF_FROM the index is IVF when the profiles are many and distinct; a hub of many copies
    of few profiles keeps the exact index (IVF would spread the copies' near-identical lists).
    Either way a query next to a stored profile gets that profile's copies first."""
    import faiss

    monkeypatch.setattr(P, "IVF_FROM", 500)
    base = rng.normal(size=(distinct, P.PROFILE_DIM)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    x = np.repeat(base, copies, axis=0)
    idx = P.ProfileIndex()
    idx._append([(i, {"v": P.PROFILE_FORMAT, "x": x[i].astype(np.float16), "names": np.array([7])})
                 for i in range(len(x))])
    for j in rng.choice(distinct, 5, replace=False):
        q = base[j] + 0.05 * rng.normal(size=P.PROFILE_DIM).astype(np.float32)
        ids, _ = idx.top(q, copies)
        assert sorted(ids.tolist()) == list(range(j * copies, (j + 1) * copies))
    assert isinstance(idx._faiss, faiss.IndexIVFFlat) == (copies == 1)


def _profile_reference(hist, names, seed, dim=P.PROFILE_DIM):
    """profile() as it was: np.unique with the inverse."""
    feat = np.asarray(hist["feat"], dtype=np.int64)
    out = np.zeros(dim, dtype=np.float64)
    if len(feat) == 0:
        return out.astype(np.float32)
    bucket = np.asarray(hist["bucket"], dtype=np.int64)
    count = np.asarray(hist["count"], dtype=np.float64)
    uniq, inv = np.unique((feat << 32) + (bucket + (1 << 31)), return_inverse=True)
    c = np.bincount(inv, weights=count, minlength=len(uniq))
    f, b = uniq >> 32, (uniq & 0xFFFFFFFF) - (1 << 31)
    totals = np.bincount(f, weights=c, minlength=int(f.max()) + 1)
    keep = totals[f] > 0
    f, b, c = f[keep], b[keep], c[keep]
    n_feat = int((totals > 0).sum())
    if n_feat == 0:
        return out.astype(np.float32)
    w = np.sqrt(c / totals[f])
    a = P.gaussian_projection(seed ^ P._SEED_SALT, P.name_keys(list(names), seed)[f], b, dim).astype(np.float64)
    return ((w[:, None] * a).sum(axis=0) / np.sqrt(n_feat * dim)).astype(np.float32)


@pytest.mark.parametrize("nnz", [0, 1, 2, 7, 1001])
def test_profile_and_used_features_equal_reference(rng, nnz):
    n_feat = int(rng.integers(1, 9))
    hist = {"part": rng.integers(0, 5, nnz).astype(np.int32), "feat": rng.integers(0, n_feat, nnz).astype(np.int32),
            "bucket": rng.integers(-(1 << 31), 1 << 31, nnz).astype(np.int32) if nnz % 2 else
            rng.integers(-3, 4, nnz).astype(np.int32), "count": rng.integers(1, 50, nnz).astype(np.uint32)}
    names = [f"c{i}" for i in range(n_feat)]
    seed = int(rng.integers(0, 2**31))
    assert np.array_equal(P.profile(hist, names, seed), _profile_reference(hist, names, seed))
    cfg = fitsketch.SketchConfig(seed=seed)
    prof, _ = P.record(hist, names, 5, cfg, "cpu")
    used = np.unique(hist["feat"].astype(np.int64)).tolist()
    assert np.array_equal(prof["names"], P.name_keys([names[f] for f in used], seed))


# ----------------------------------------------------------------------------- bulk add (batched records)
def _mixed_batch(rng, cfg):
    """Sketches of several schemas, partition counts and sizes (one of a single row), in one batch."""
    out = []
    for i in range(int(rng.integers(5, 9))):
        names = [("a", "b", "c"), ("c", "a"), ("x", "b", "y", "z")][i % 3]
        n = 1 if i == 2 else int(rng.integers(20, 400))
        df = _frame(rng, n, loc=float(rng.normal()), names=names)
        if i % 4 == 3:
            df[names[0]] = rng.choice(["u", "v", "w"], n)          # a categorical column
        out.append(_sketch(cfg, df, ps=int(rng.integers(15, 120))))
    return out


def test_batched_records_equal_one_at_a_time(rng):
    """What Hub.add_sketches prepares for a batch at once equals what each entry's own prepare gives:
    packed histograms exactly, screen records computed for a batch (screen.records) exactly, profile vectors to float16 storage, JS-LSH band keys
    exactly (both are float32 projections of the same values; a different summation order could move
    one across a bucket edge, which these seeded sketches do not hit); and an entry's records do not
    depend on the rest of its batch (records of it alone are bit-equal)."""
    from fitsketch import parts as PT
    from fitsketch import screen as S
    from fitsketch.partitions import pack_hist, pack_hists, unpack_hist

    cfg = fitsketch.SketchConfig(seed=int(rng.integers(0, 2**31)))
    sks = _mixed_batch(rng, cfg)
    a = P._aggregate(sks)
    packed = pack_hists(a["e"], a["part"], a["feat"], a["bucket"], a["count"], [s.n_partitions for s in sks],
                        [s.n_features for s in sks])
    batch = P.records(sks, cfg, "cpu")
    # screen records: computed for a batch of stored histograms at once (screen.records, the screen
    # index loading entries added since hub format 5, which stores none)
    stored = [unpack_hist(h) for h in packed]
    screens = S.records(stored, [s.names for s in sks], [s.sums for s in sks], [s.counts for s in sks], cfg.seed)
    assert PT.Screen().prepare_many([PT.NewEntry(f"e{i}", s, {}) for i, s in enumerate(sks)], cfg, "cpu", {}) \
        == [None] * len(sks)                                    # not stored
    for i, s in enumerate(sks):
        ref = pack_hist(s.hist, s.n_partitions, s.n_features)
        assert set(ref) == set(packed[i])
        for k in ref:
            assert np.array_equal(np.asarray(ref[k]), np.asarray(packed[i][k])) and \
                np.asarray(ref[k]).dtype == np.asarray(packed[i][k]).dtype, (i, k)
        ref_s = S.record(s.hist, s.names, s.sums, s.counts, cfg.seed)
        for k in ref_s:
            assert np.array_equal(np.asarray(ref_s[k]), np.asarray(screens[i][k])) and \
                np.asarray(ref_s[k]).dtype == np.asarray(screens[i][k]).dtype, (i, k)
        prof, keys = P.record(s.hist, s.names, s.n_partitions, cfg, "cpu")
        bprof, bkeys = batch[i]
        assert np.array_equal(prof["names"], bprof["names"]) and bprof["x"].dtype == np.float16
        np.testing.assert_allclose(bprof["x"].astype(np.float32), prof["x"].astype(np.float32), rtol=2e-3, atol=1e-4)
        assert bkeys["jk_params"] == keys["jk_params"] and bkeys["jk_small_params"] == keys["jk_small_params"]
        for k in ("jk_part", "jk_data", "jk_small"):
            assert bkeys[k].dtype == keys[k].dtype and np.array_equal(bkeys[k], keys[k]), (i, k)
        alone_s = S.records([stored[i]], [s.names], [s.sums], [s.counts], cfg.seed)[0]
        assert all(np.asarray(alone_s[k]).tobytes() == np.asarray(screens[i][k]).tobytes() for k in ref_s if k != "v")
        alone = P.records([s], cfg, "cpu")[0]
        assert np.array_equal(alone[0]["x"], bprof["x"])
        assert all(np.array_equal(alone[1][k], bkeys[k]) for k in ("jk_part", "jk_data", "jk_small"))


def test_add_sketches_stores_what_add_sketch_stores(tmp_path, rng):
    """Two hubs given the same sketches, one through add_sketches (batched, batch=3 so batches split
    the items unevenly) and one entry at a time through add_sketch, hold the same records under every
    key except the add times, and search alike."""
    import lmdb

    from fitsketch.storage.codec import unpack
    from fitsketch.storage.txn import DBS

    cfg = fitsketch.SketchConfig(seed=int(rng.integers(0, 2**31)))
    sks = _mixed_batch(rng, cfg)
    with fitsketch.open(tmp_path / "a.hub", config=cfg) as a, fitsketch.open(tmp_path / "b.hub", config=cfg) as b:
        assert a.add_sketches([(f"e{i}", s, {"i": i}) for i, s in enumerate(sks)], batch=3) == len(sks)
        for i, s in enumerate(sks):
            b.add_sketch(f"e{i}", s, metadata={"i": i})
        check_hub(a)
        q = sks[0]
        for method in ("exact-js", "js", "l2"):
            assert [(m.name, m.score) for m in a.search(q, method=method, k=5)] == \
                [(m.name, m.score) for m in b.search(q, method=method, k=5)]
        files = (a.store._file, b.store._file)
    dumps = []
    for f in files:
        env = lmdb.open(f, subdir=False, readonly=True, lock=False, max_dbs=16)
        d = {}
        with env.begin() as txn:
            for name in DBS:
                db = env.open_db(name.encode(), txn=txn, create=False, dupsort=name == "bands")
                d[name] = [(bytes(k), bytes(v)) for k, v in txn.cursor(db=db)]
        env.close()
        dumps.append(d)
    for name in DBS:
        ka, kb = [k for k, _ in dumps[0][name]], [k for k, _ in dumps[1][name]]
        assert ka == kb, name
        for (k, va), (_, vb) in zip(dumps[0][name], dumps[1][name]):
            if name == "entries":
                ra, rb = unpack(va, stored=True), unpack(vb, stored=True)
                ra.pop("created"), rb.pop("created")
                assert ra.keys() == rb.keys() and all(np.array_equal(np.asarray(ra[x]), np.asarray(rb[x]))
                                                      if isinstance(ra[x], np.ndarray) else ra[x] == rb[x] for x in ra)
            elif name == "extra" and k[:1] == P._PREFIX:   # the profile vector: float16 of another summation
                ra, rb = unpack(va, stored=True), unpack(vb, stored=True)   # hub records (format 3)
                np.testing.assert_allclose(ra["x"].astype(np.float32), rb["x"].astype(np.float32), rtol=2e-3, atol=1e-4)
                assert np.array_equal(ra["names"], rb["names"])
            elif name != "meta":
                assert va == vb, (name, k)
