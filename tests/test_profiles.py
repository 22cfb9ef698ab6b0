"""Large-hub query path: entry profiles + shortlist, stored JS-LSH keys, identity alignment,
compact histograms, bulk add -- each against the reference it replaces, on fresh random inputs."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import fitsketch
from fitsketch import errors as E
from fitsketch import profiles as P
from fitsketch.kernels import jslsh as KJ
from fitsketch.minhash import align_from_similarity, row_similarity, similarity
from fitsketch.partitions import pack_hist, unpack_hist
from fitsketch.storage import u64

from _hubcheck import check_hub


def _frame(rng, n, loc=0.0, names=("a", "b", "c")):
    cols = {}
    for j, name in enumerate(names):
        cols[name] = rng.normal(loc + j, 1 + 0.3 * j, n)
    cols[names[-1]] = np.rint(cols[names[-1]])
    return pd.DataFrame(cols)


def _sketch(cfg, df, ps=50):
    return fitsketch.sketch_data(df, cfg, partition_size=ps)


# ----------------------------------------------------------------------------- kernels / formats
@pytest.mark.parametrize("n", [0, 1, 7, 301])
def test_gaussian_rows_memo_equals_fresh_draw(rng, n):
    """The memo returns exactly the rows a fresh draw gives, also for repeated and new coordinates."""
    cache = KJ._RowCache(max_rows=64)          # small: exercises clearing too
    for _ in range(3):
        f = rng.integers(-5, 5, n).astype(np.int64) * (1 << 40)
        b = rng.integers(-3, 3, n).astype(np.int64)
        got = cache.get(7, f, b, 16)
        assert got.dtype == np.float32 and got.shape == (n, 16)
        np.testing.assert_array_equal(got, KJ._gaussian_rows(7, f, b, 16))


@pytest.mark.parametrize("shape", [(0, 3), (1, 1), (3, 5), (7, 9)])
def test_pack_hist_roundtrip(rng, shape):
    n_p, n_f = shape
    cells = [(p, f) for p in range(n_p) for f in range(n_f) if rng.random() < 0.7]
    part, feat, bucket, count = [], [], [], []
    for p, f in cells:
        k = int(rng.integers(1, 12))
        bs = np.sort(rng.choice(np.concatenate([np.arange(-40, 40), [-(2**31) + 1, 2**31 - 2, 5000]]), k, replace=False))
        part += [p] * k
        feat += [f] * k
        bucket += bs.tolist()
        count += rng.choice([1, 3, 254, 255, 256, 70_000], k).tolist()
    h = {"part": np.array(part, np.int32), "feat": np.array(feat, np.int32), "bucket": np.array(bucket, np.int32),
         "count": np.array(count, np.uint32)}
    u = unpack_hist(pack_hist(h, n_p, n_f))
    for k in h:
        assert u[k].dtype == h[k].dtype
        np.testing.assert_array_equal(u[k], h[k])
    assert unpack_hist({"v": 1, **h})["count"].tolist() == h["count"].tolist()   # format 1 still reads


def test_pack_hist_refuses_unsorted():
    h = {"part": np.array([0, 0], np.int32), "feat": np.array([0, 0], np.int32),
         "bucket": np.array([3, 1], np.int32), "count": np.array([1, 1], np.uint32)}
    with pytest.raises(ValueError, match="sorted"):
        pack_hist(h, 1, 1)


@pytest.mark.parametrize("n,T", [(0, 3), (1, 1), (5, 4), (9, 7)])
def test_row_similarity_is_the_diagonal(rng, n, T):
    P_ = 16
    t = rng.integers(0, 50, (T, P_)).astype(np.uint32)
    s = rng.integers(0, 50, (n, T, P_)).astype(np.uint32)
    s[..., :P_ // 2] = t[None, :, :P_ // 2] * (rng.random((n, T, 1)) < 0.5)
    if T > 1:
        t[0] = np.uint32(0xFFFFFFFF)            # an empty feature
    for match in ("containment", "jaccard"):
        got = row_similarity(t, s, match)
        assert got.shape == (n, T)
        for i in range(n):
            np.testing.assert_array_equal(got[i], np.diag(similarity(t, s[i], match)))


def test_identity_alignment_is_optimal(rng):
    """With the same names in the same order the identity is returned, and it reaches the maximum
    total gain the assignment solver finds."""
    from scipy.optimize import linear_sum_assignment

    for T in (1, 2, 5, 11):
        names = [f"c{i}" for i in range(T)]
        sim = rng.random((T, T))
        al = align_from_similarity(names, names, sim, 0.3)
        assert [(t, s) for t, s, _ in al.pairs] == [(j, j) for j in range(T)]
        ok = (sim >= 0.3) | np.eye(T, dtype=bool)
        gain = np.where(ok, sim + np.eye(T), -1.0)
        r, c = linear_sum_assignment(gain, maximize=True)
        assert np.trace(gain) == pytest.approx(gain[r, c].sum())


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


def test_stored_keys_equal_query_time_projection(tmp_path, rng, monkeypatch):
    """adaptivity / js through the keys stored with each entry give the scores of projecting the
    entries' histograms at query time (the path for other alignments), within one band of one
    target partition (fp32 summation order may move a value sitting on a bucket edge)."""
    cfg = fitsketch.SketchConfig()
    with fitsketch.open(tmp_path / "h.hub", config=cfg) as hub:
        for i in range(8):
            hub.add_sketch(f"m{i}", _sketch(cfg, _frame(rng, 200 + 13 * i, loc=0.2 * i)))
        q = _frame(rng, 173, loc=0.5)
        for method in ("adaptivity", "js"):
            fast = {m.name: (m.score, m.evidence) for m in hub.search(q, k=8, method=method)}
            monkeypatch.setattr(P, "keys_key", lambda eid: b"q" + u64(eid))   # no stored keys found
            slow = {m.name: (m.score, m.evidence) for m in hub.search(q, k=8, method=method)}
            monkeypatch.undo()
            assert fast.keys() == slow.keys()
            for name in fast:
                if method == "adaptivity":
                    assert abs(fast[name][1]["matched_partitions"] - slow[name][1]["matched_partitions"]) <= 1
                    assert abs(fast[name][1]["band_agreement"] - slow[name][1]["band_agreement"]) <= 1 / cfg.jslsh_l
                else:
                    assert abs(fast[name][1]["bands_collided"] - slow[name][1]["bands_collided"]) <= 1


def test_hub_without_profiles_still_shortlists(tmp_path, rng):
    """A hub written before profiles existed: the index computes them from the stored histograms."""
    cfg = fitsketch.SketchConfig(shortlist=2)
    with fitsketch.open(tmp_path / "h.hub", config=cfg) as hub:
        for i in range(10):
            hub.add_sketch(f"m{i}", _sketch(cfg, _frame(rng, 100, loc=i)))
        q = _frame(rng, 100, loc=4)
        want = [(m.name, m.score) for m in hub.search(q, k=2)]
    with fitsketch.open(tmp_path / "h.hub") as hub:
        hub.store.transact(lambda t: [(t.delete("extra", P.key(hub.get(f"m{i}").id)),
                                       t.delete("extra", P.keys_key(hub.get(f"m{i}").id))) for i in range(10)])
    with fitsketch.open(tmp_path / "h.hub") as hub:
        plan = hub.explain(q, k=2)
        res = hub.search(q, k=2)
        assert next(s for s in plan.stages if s.name == "shortlist").actual == 2
        assert (res[0].name, res[0].score) == want[0]


def test_add_sketches_checks_everything_first(tmp_path, rng):
    cfg = fitsketch.SketchConfig()
    s = _sketch(cfg, _frame(rng, 60))
    with fitsketch.open(tmp_path / "h.hub", config=cfg) as hub:
        hub.add_sketch("taken", s)
        before = hub.stats()
        bad = [
            [("a", s), ("a", s)],                                 # repeated name
            [("b", s), ("taken", s)],                             # name in the hub
            [("c", s), ("d", "not a sketch")],                    # not a sketch
            [("e", s), ("f", _sketch(fitsketch.SketchConfig(seed=5), _frame(rng, 60)))],   # other parameters
            [("g", s, {"x": object()})],                          # metadata not storable
            [("h",)],
        ]
        for items in bad:
            with pytest.raises(E.FitsketchError):
                hub.add_sketches(items)
            assert hub.stats() == before and len(hub) == 1
        with pytest.raises(E.InvalidArgumentError):
            hub.add_sketches([("z", s)], batch=0)
        assert hub.add_sketches([]) == 0
        assert hub.add_sketches([("one", s, {"k": 1})]) == 1 and hub.get("one").metadata == {"k": 1}
        check_hub(hub)


def test_put_dups_equals_put_dup_loop(tmp_path, rng):
    from fitsketch.storage import HubStore

    keys = rng.integers(0, 2**63, 50).astype(np.uint64)
    keys[10:20] = keys[0]                              # repeated keys
    vals = rng.integers(0, 2**63, 50).astype(np.uint64)
    vals[15] = vals[10]                                # one repeated pair
    a, b = HubStore(str(tmp_path / "a")), HubStore(str(tmp_path / "b"))
    n_new = a.transact(lambda t: t.put_dups("bands", keys, vals))
    added = b.transact(lambda t: sum(t.put_dup("bands", u64(int(k)), u64(int(v))) for k, v in zip(keys, vals)))
    assert n_new == added == 49
    with a.read() as ta, b.read() as tb:
        assert list(ta.items("bands")) == list(tb.items("bands"))
    with pytest.raises(ValueError):
        a.transact(lambda t: t.put_dups("bands", keys, vals[:3]))
    a.close()
    b.close()


def test_chunked_verification_and_scoring_equal_one_pass(tmp_path, rng, monkeypatch):
    """Signatures verified and histograms scored a few entries at a time give the one-pass results
    (exact-js / l2 within 1e-12: the dense sums run over another set of columns per chunk; JS-LSH
    keys within one band, as fp32 sums may reorder per chunk)."""
    from fitsketch import hub as H

    cfg = fitsketch.SketchConfig()
    with fitsketch.open(tmp_path / "h.hub", config=cfg) as hub:
        for i in range(7):
            df = _frame(rng, 120 + 11 * i, loc=0.3 * i)
            hub.add_sketch(f"m{i}", _sketch(cfg, df[["c", "a", "b"]] if i % 2 else df))   # two column orders
        q = _frame(rng, 140, loc=0.9)
        want = {m: {r.name: r for r in hub.search(q, k=7, method=m, shortlist=0)} for m in METHODS_ALL}
        monkeypatch.setattr(H, "_VERIFY_CHUNK", 2)
        monkeypatch.setattr(H, "_SCORE_CHUNK", 3)
        for m in METHODS_ALL:
            got = {r.name: r for r in hub.search(q, k=7, method=m, shortlist=0)}
            assert got.keys() == want[m].keys()
            for name, r in got.items():
                assert r.features == want[m][name].features and r.overlap == want[m][name].overlap
                if m in ("exact-js", "l2"):
                    assert r.score == pytest.approx(want[m][name].score, abs=1e-12)
                elif m == "js":
                    assert abs(r.evidence["bands_collided"] - want[m][name].evidence["bands_collided"]) <= 1
                else:
                    assert abs(r.evidence["matched_partitions"] - want[m][name].evidence["matched_partitions"]) <= 1


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
