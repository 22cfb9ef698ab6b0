"""The two-level stage's level 1 by a FAISS IVF (engine/coarse.py ``Level1Ann``, persisted by
engine/indexes.py as ``indexes/level1.faiss`` + ``level1.msgpack``): against the exact level 1 (the
Bhattacharyya coefficient of every entry) on fresh random hubs of odd sizes, one entry and none;
the file read, brought forward after adds, rebuilt after a removal; a corrupt, version-mismatched,
tampered or foreign file never trusted (rebuilt, and the answer is the exact level 1's)."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

import fitsketch
from fitsketch import coarse as C
from fitsketch import faiss_files
from fitsketch.jslsh import own_keys
from fitsketch.storage import pack, unpack

from test_coarse import _hub_items
from test_shortlist import _classes, _mixture, _own

METHODS = ("adaptivity", "js", "exact-js", "l2")


@pytest.fixture
def small_ann(monkeypatch):
    """The IVF from the first entry (production: ANN_MIN_ENTRIES), and a count of its builds."""
    monkeypatch.setattr(C, "ANN_MIN_ENTRIES", 1)
    monkeypatch.setattr(C, "ANN_REFINE", 2)         # the exact re-rank (the tests' equality rests on it)
    builds = []
    real = C.Level1Ann.build.__func__

    def counted(cls, idx, *a, **k):
        builds.append(idx.ids.n)
        return real(cls, idx, *a, **k)

    monkeypatch.setattr(C.Level1Ann, "build", classmethod(counted))
    return builds


def _hub(path, rng, n, cfg):
    pools = _classes(rng)
    hub = fitsketch.open(path, config=cfg)
    items = _hub_items(rng, cfg, pools, n)
    hub.add_sketches(items[:max(n, 0)] if n <= 1 else items)
    return hub, pools


def test_ivf_probing_every_list_equals_the_exact_level1(tmp_path, rng, small_ann):
    """With every list probed and refine x keep >= the entries, the IVF's kept rows are the exact
    BC top ``keep`` (ties at the cut aside: the kept BC values equal the exact top values) and the BC
    it returns is the exact one (1e-5), for keep 1, an odd middle value and all but one; with fewer
    lists probed the BC of what it returns is still exact."""
    cfg = fitsketch.SketchConfig(shortlist=2, partition_size=20)
    n_items = int(rng.integers(5, 16)) * 2 + 1
    hub, pools = _hub(tmp_path / "h.hub", rng, n_items, cfg)
    with hub:
        idx = hub._synced_screen()
        ann = C.Level1Ann.build(idx)
        n = len(idx)
        assert len(ann) == n and ann.index.ntotal == n
        q = fitsketch.sketch_data(_mixture(pools, rng.integers(20, 120, 4)), cfg)
        qv = C.query_vector(idx, q, cfg.seed)
        exact = C.bc(idx, q, cfg.seed)
        for keep in sorted({1, int(rng.integers(2, n - 1)) | 1, n - 1}):
            rows, b = ann.top(idx, qv, keep, nprobe=ann.index.nlist, refine=n)
            assert len(rows) == keep and len(set(rows.tolist())) == keep
            np.testing.assert_allclose(b, exact[rows], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(np.sort(b)[::-1], np.sort(exact)[::-1][:keep], rtol=1e-5, atol=1e-6)
            rows, b = ann.top(idx, qv, keep, nprobe=1, refine=2)
            assert 0 < len(rows) <= keep
            np.testing.assert_allclose(b, exact[rows], rtol=1e-5, atol=1e-6)
            # no re-rank: the IVF's first rows and their projected inner products
            rows, b = ann.top(idx, qv, keep, nprobe=ann.index.nlist, refine=1)
            proj = ann.project(idx, np.arange(n)) @ (qv[:-1] @ ann.basis)
            assert len(rows) == keep
            np.testing.assert_allclose(b, proj[rows], rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(np.sort(b)[::-1], np.sort(proj)[::-1][:keep], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("n", [0, 1])
def test_empty_and_one_entry(tmp_path, rng, small_ann, n):
    """No entry: no IVF (level 1 has nothing to rank). One entry: the IVF holds it and the search
    finds it, as the exact level 1 does."""
    cfg = fitsketch.SketchConfig(shortlist=1, partition_size=20, shortlist_screen="two-level")
    pools = _classes(rng)
    with fitsketch.open(tmp_path / "h.hub", config=cfg) as hub:
        if n:
            hub.add_sketch("only", fitsketch.sketch_data(_mixture(pools, rng.integers(5, 100, 4)), cfg))
        idx = hub._synced_screen()
        ann = C.level1(idx)
        assert (ann is None) == (n == 0)
        if n:
            rows, b = ann.top(idx, C.query_vector(idx, fitsketch.sketch_data(_mixture(pools, [30, 30, 30, 30]), cfg),
                                                  cfg.seed), 1, nprobe=1)
            assert list(rows) == [0] and b[0] > 0
        q = _mixture(pools, rng.integers(20, 80, 4))
        assert [m.name for m in hub.search(q, k=3, method="exact-js")] == (["only"] if n else [])


def test_search_through_the_ivf_equals_the_exact_level1(tmp_path, rng, small_ann):
    """Every method: a search whose IVF probes every list and re-ranks every entry equals the search
    with the exact level 1 (``shortlist_nprobe=0``); explain says which level 1 ran."""
    cfg = fitsketch.SketchConfig(shortlist=2, partition_size=20)
    hub, pools = _hub(tmp_path / "h.hub", rng, int(rng.integers(10, 20)), cfg)
    with hub:
        for method in METHODS:
            q = _mixture(pools, rng.integers(20, 120, 4))
            # level 1 keeps 2 x coarse < n, and the IVF hands every entry to the exact re-rank
            a = [(m.name, m.score) for m in hub.search(q, k=5, method=method, shortlist_screen="two-level",
                                                          shortlist_coarse=_coarse(hub), shortlist_nprobe=4096)]
            b = [(m.name, m.score) for m in hub.search(q, k=5, method=method, shortlist_screen="two-level",
                                                          shortlist_coarse=_coarse(hub), shortlist_nprobe=0)]
            assert a and a == b, method
            st = next(s for s in hub.explain(q, k=5, method=method, shortlist_screen="two-level",
                                             shortlist_coarse=_coarse(hub), shortlist_nprobe=4096).stages
                      if s.name == "shortlist")
            assert "IVF lists" in st.detail and f"re-ranked the first {len(hub)} " in st.detail, st.detail
            st = next(s for s in hub.explain(q, k=5, method=method, shortlist_screen="two-level", shortlist_coarse=2,
                                             shortlist_nprobe=0).stages if s.name == "shortlist")
            assert "IVF" not in st.detail and "level 1 ranked" in st.detail, st.detail
    with pytest.raises(fitsketch.errors.InvalidArgumentError):
        fitsketch.SketchConfig(shortlist_nprobe=-1)


def _coarse(hub) -> int:
    """shortlist_coarse for shortlist 2 such that level 1 keeps fewer than every entry (the IVF runs)
    and the IVF hands every entry to the exact re-rank (ANN_REFINE x keep >= entries)."""
    return -(-len(hub) // 4)


def _search(hub, q):
    return [(m.name, m.score) for m in hub.search(q, k=4, method="exact-js", shortlist_screen="two-level",
                                                     shortlist_coarse=_coarse(hub))]


def _exact(hub, q):
    return [(m.name, m.score) for m in hub.search(q, k=4, method="exact-js", shortlist_screen="two-level",
                                                     shortlist_coarse=_coarse(hub), shortlist_nprobe=0)]


def test_file_read_brought_forward_and_rebuilt_after_removal(tmp_path, rng, small_ann):
    """The first two-level search builds the IVF and writes it; a reopened hub reads it (no build);
    adds bring it forward (no build; the file then serves the larger hub); a removal rebuilds it.
    Each search equals the exact level 1's when every list is probed."""
    cfg = fitsketch.SketchConfig(shortlist=2, partition_size=20, shortlist_nprobe=4096)
    path = tmp_path / "h.hub"
    hub, pools = _hub(path, rng, int(rng.integers(8, 14)), cfg)
    q = _mixture(pools, rng.integers(20, 120, 4))
    with hub:
        got = _search(hub, q)
        assert small_ann == [len(hub)] and got == _exact(hub, q)
    fpath, mpath = faiss_files.paths(str(path), "level1")
    assert os.path.exists(fpath) and os.path.exists(mpath)
    with fitsketch.open(path, config=cfg) as hub:
        hub.warm()                                              # reads the file it finds
        assert small_ann == [len(hub)] and _search(hub, q) == got
        for i in range(int(rng.integers(1, 4))):
            hub.add_sketch(f"new{i}", fitsketch.sketch_data(_mixture(pools, rng.integers(5, 100, 4)), cfg))
        assert _search(hub, q) == _exact(hub, q) and len(small_ann) == 1
        hub.remove("m0")
        assert _search(hub, q) == _exact(hub, q) and small_ann[1:] == [len(hub)]


def _tamper_sidecar(mpath, **change):
    with open(mpath, "rb") as f:
        meta = unpack(f.read())
    meta.update(change)
    with open(mpath, "wb") as f:
        f.write(pack(meta))


@pytest.mark.parametrize("how", ["version", "garbage_sidecar", "index_bytes", "basis", "ids", "other_hub",
                                 "params", "quantizer", "quantizer_width"])
def test_a_bad_file_is_rebuilt_never_trusted(tmp_path, rng, small_ann, how):
    """A file of another format version, an unreadable sidecar, an index file that is not the one
    its sidecar was saved with, a tampered basis or row ids (their checks fail), the files of another
    hub with the same entry count, or of other hub parameters: not used -- the IVF is rebuilt (one
    build), the answer is the exact level 1's, and a valid file is written again."""
    cfg = fitsketch.SketchConfig(shortlist=2, partition_size=20, shortlist_nprobe=4096)
    n = int(rng.integers(8, 14))
    path = tmp_path / "h.hub"
    hub, pools = _hub(path, rng, n, cfg)
    q = _mixture(pools, rng.integers(20, 120, 4))
    with hub:
        want = _search(hub, q)
    fpath, mpath = faiss_files.paths(str(path), "level1")
    with open(mpath, "rb") as f:
        meta = unpack(f.read())
    if how == "version":
        _tamper_sidecar(mpath, v=C.ANN_FORMAT + 1)
    elif how == "garbage_sidecar":
        with open(mpath, "wb") as f:
            f.write(rng.bytes(int(rng.integers(1, 300))))
    elif how == "index_bytes":
        raw = bytearray(open(fpath, "rb").read())
        pos = int(rng.integers(len(raw)))
        raw[pos] ^= 1 << int(rng.integers(8))
        open(fpath, "wb").write(bytes(raw))
    elif how == "basis":
        b = meta["basis"].copy()
        b[int(rng.integers(len(b))), int(rng.integers(b.shape[1]))] += 0.5
        _tamper_sidecar(mpath, basis=b)
    elif how == "ids":
        ids = meta["ids"].copy()
        ids[-1] += 1000                                 # the count and CRC recomputed: only the rows differ
        _tamper_sidecar(mpath, ids=ids, ids_crc=C._crc(ids))
    elif how == "other_hub":
        other, _ = _hub(tmp_path / "o.hub", rng, n, cfg)
        with other:
            _search(other, q)
        ofp, omp = faiss_files.paths(str(tmp_path / "o.hub"), "level1")
        shutil.copy(ofp, fpath)
        shutil.copy(omp, mpath)
        small_ann.clear()
        small_ann.append(-1)
    elif how == "params":
        _tamper_sidecar(mpath, params={**meta["params"], "seed": meta["params"]["seed"] + 1})
    elif how in ("quantizer", "quantizer_width"):
        # the coarse quantizer swapped for one with more centroids than the index has lists (FAISS
        # then asserts inside search) or of another width (it would read past the query), and the
        # sidecar's size and CRC of the index file recomputed: the quantizer itself is checked
        import zlib

        import faiss
        index = faiss.read_index(fpath)
        d = C.ANN_DIM if how == "quantizer" else C.ANN_DIM * 2
        quant = faiss.IndexFlatIP(d)
        quant.add(rng.standard_normal((int(index.nlist) + int(rng.integers(1, 50)), d)).astype(np.float32))
        index.quantizer = quant
        index.own_fields = False
        raw = faiss.serialize_index(index).tobytes()
        open(fpath, "wb").write(raw)
        _tamper_sidecar(mpath, file={"size": len(raw), "crc32": zlib.crc32(raw)})
    builds = len(small_ann)
    with fitsketch.open(path, config=cfg) as hub:
        assert _search(hub, q) == want == _exact(hub, q)
        assert len(small_ann) == builds + 1, how
    with fitsketch.open(path, config=cfg) as hub:     # the rebuilt file serves
        assert _search(hub, q) == want and len(small_ann) == builds + 1


def test_explain_states_the_ivf_levels_measured_recall(tmp_path, rng, monkeypatch):
    """At the measured setting (the default shortlist_coarse and shortlist_nprobe, no re-rank) explain
    states the recall bench.level1_scale measured for the IVF level 1 (``ANN_MEASURED_RECALL``, with
    the exact level 1's ``MEASURED_RECALL`` the lower of the two) and the stage's estimated recall is
    at most that; at fewer lists probed or a smaller shortlist_coarse it says the recall is not
    measured and states none."""
    monkeypatch.setattr(C, "ANN_MIN_ENTRIES", 1)
    assert set(METHODS) <= set(C.ANN_MEASURED_RECALL), "every two-level method has a measured IVF recall"
    cfg = fitsketch.SketchConfig(shortlist=1, partition_size=20)
    # level 1 keeps each method's default depth x 1 entries: fewer than the hub's, so the IVF ranks them
    n = max(C.COARSE_BY_METHOD[m] for m in METHODS) + int(rng.integers(2, 9))
    hub, pools = _hub(tmp_path / "h.hub", rng, n, cfg)
    with hub:
        for method in METHODS:
            q = _mixture(pools, rng.integers(20, 120, 4))
            want = min(C.MEASURED_RECALL[method], C.ANN_MEASURED_RECALL[method])
            st = next(s for s in hub.explain(q, k=3, method=method, shortlist_screen="two-level").stages
                      if s.name == "shortlist")
            assert "IVF lists" in st.detail and "ranked by their projected" in st.detail, st.detail
            need = C.COARSE_BY_METHOD[method]
            assert (f"recall@10 vs the exact screen measured {want:.3f} at shortlist_coarse >= {need}, "
                    f"shortlist_nprobe >= {C.NPROBE_DEFAULT}") in st.detail, st.detail
            assert f"({need} x shortlist;" in st.detail, st.detail
            assert st.recall is not None and st.recall <= want + 1e-12, (st.recall, want)
            # fewer lists probed than measured (this small hub's IVF has fewer lists: 0 probes the exact level 1
            # instead, which states MEASURED_RECALL) or a smaller shortlist_coarse
            for kw in ({"shortlist_coarse": int(rng.integers(1, C.COARSE_BY_METHOD[method]))},) \
                    if C.COARSE_BY_METHOD[method] > 1 else ():
                st = next(s for s in hub.explain(q, k=3, method=method, shortlist_screen="two-level", **kw).stages
                          if s.name == "shortlist")
                if "IVF lists" in st.detail:   # (a smaller coarse may keep what every list holds: the same)
                    exp = _expected_recall(method, kw["shortlist_coarse"], True)
                    if exp is None:
                        assert "recall not measured at this shortlist_coarse / shortlist_nprobe" in st.detail, st.detail
                        assert st.recall is None, (kw, st.recall)
                    else:   # at or above COARSE_DEFAULT: a hub storing 8 (made before the per-method depths)
                        assert (f"measured {exp:.3f} at shortlist_coarse >= {C.COARSE_DEFAULT}," in st.detail
                                and st.recall is not None and st.recall <= exp + 1e-12), (kw, st.detail)
    # the words for an IVF of many lists (describe alone): measured only at the default lists or more and
    # without the re-rank
    for method in METHODS:
        want = min(C.MEASURED_RECALL[method], C.ANN_MEASURED_RECALL[method])
        nlist = int(rng.integers(C.NPROBE_DEFAULT + 1, 4 * C.NPROBE_DEFAULT))
        base = {"ranked": nlist * 40, "live": nlist * 40, "coarse_kept": 2048, "bc_cut": 0.5}
        for nprobe, reranked, measured in ((C.NPROBE_DEFAULT, 0, True), (nlist, 0, True),
                                           (int(rng.integers(1, C.NPROBE_DEFAULT)), 0, False),
                                           (C.NPROBE_DEFAULT, 4096, False)):
            for coarse in (C.COARSE_BY_METHOD[method], C.COARSE_BY_METHOD[method] + 3,
                           C.COARSE_BY_METHOD[method] - 1, C.COARSE_DEFAULT, C.COARSE_DEFAULT - 1):
                if coarse < 1:
                    continue
                text, rec = C.describe({**base, "ann": {"nprobe": nprobe, "nlist": nlist, "reranked": reranked}},
                                       coarse, method)
                exp = _expected_recall(method, coarse, measured)
                assert rec == exp, (nprobe, reranked, coarse, rec, exp)
                assert (exp is not None) == ("measured 0." in text or "measured 1." in text), text
                if exp is not None:
                    assert f"measured {exp:.3f}" in text, text


def _expected_recall(method, coarse, measured):
    """What ``describe`` should state for the IVF level 1 at depth ``coarse`` (lists and re-rank as
    measured iff ``measured``): the per-method depth's recall at or above it, the recall measured at
    COARSE_DEFAULT at or above that (a hub storing 8), none below; the lower of it and the exact level
    1's ``MEASURED_RECALL`` where that holds (``MEASURED_MIN_COARSE``)."""
    if not measured:
        return None
    if coarse >= C.COARSE_BY_METHOD[method]:
        ra = C.ANN_MEASURED_RECALL[method]
    elif coarse >= C.COARSE_DEFAULT:
        ra = C.ANN_RECALL_AT_DEFAULT[method]
    else:
        return None
    return ra if coarse < C.MEASURED_MIN_COARSE[method] else min(ra, C.MEASURED_RECALL[method])


def _random_ivf(rng, n, nlist, c, dup):
    """A Level1Ann over ``n`` random rows (``dup`` of them one row repeated: their inner products
    tie), ``nlist`` lists, a random ``(c, ANN_DIM)`` basis: ``kept`` and ``top(refine=1)`` read only
    the basis and the IVF."""
    import faiss

    x = rng.standard_normal((n, C.ANN_DIM)).astype(np.float32)
    if dup and n:
        at = rng.choice(n, min(dup, n), replace=False)
        x[at] = x[at[0]]
    quant = faiss.IndexFlatIP(C.ANN_DIM)
    index = faiss.IndexIVFFlat(quant, C.ANN_DIM, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.min_points_per_centroid = 1
    index.train(rng.standard_normal((max(nlist * 39, 64), C.ANN_DIM)).astype(np.float32))
    index.add_with_ids(x, np.arange(n, dtype=np.int64))
    basis = rng.standard_normal((c, C.ANN_DIM)).astype(np.float32)
    return C.Level1Ann(basis, index, np.arange(n, dtype=np.int64), np.arange(c, dtype=np.int64))


@pytest.mark.parametrize("n", [0, 1, 7, 97, 5_003])
def test_kept_is_the_ivf_top_as_a_set_with_its_ties(rng, n):
    """``Level1Ann.kept`` (level 1 without a re-rank) against ``top(refine=1)``, FAISS's search (the
    reference): on fresh random IVFs with a group of identical rows (exact ties), for keep 1, odd
    middle values, a keep that cuts through the tied group, all rows and more, and 1, some or every list
    probed: it holds every row ``top`` returns, with the same inner product (the same floats), plus
    exactly the other rows of the lists probed tied with ``top``'s last at the cut; when the lists
    hold at most ``keep`` rows, all of them; keep 0 keeps none."""
    nlist = max(1, min(int(rng.integers(1, 80)), n // 2 or 1))
    ann = _random_ivf(rng, n, nlist, int(rng.integers(5, 40)), dup=int(rng.integers(3, 9)))
    q = np.append(rng.random(len(ann.basis)).astype(np.float32), np.float32(0))
    if n == 0:          # an empty IVF (FAISS's search refuses k = 0 rows: no reference to ask)
        for keep in (0, 1, 7):
            rows, d = ann.kept(q, keep, nlist)
            assert len(rows) == len(d) == 0 and rows.dtype == np.int64
        return
    straddled = 0
    for nprobe in sorted({1, int(rng.integers(1, nlist + 1)), nlist}):
        every, d_every = ann.top(None, q, max(n, 1), nprobe, refine=1)     # all rows of the lists probed
        inner = dict(zip(every.tolist(), d_every.tolist()))
        keeps = {1, int(rng.integers(1, max(n, 2))) | 1, max(n - 1, 1), max(n, 1), n + 3}
        tied = [v for v in d_every.tolist() if (d_every == v).sum() > 1]
        if tied:   # a keep whose cut falls inside the tied group (rank of its first row + 1)
            keeps.add(int(np.flatnonzero(d_every == tied[0])[0]) + 1)
        for keep in sorted(keeps):
            rows, d = ann.kept(q, keep, nprobe)
            ref, d_ref = ann.top(None, q, keep, nprobe, refine=1)
            assert rows.dtype == np.int64 and d.dtype == np.float64 and len(rows) == len(d)
            assert len(set(rows.tolist())) == len(rows)
            got = dict(zip(rows.tolist(), d.tolist()))
            assert all(got.get(r) == v for r, v in zip(ref.tolist(), d_ref.tolist())), (keep, nprobe)
            assert all(inner[r] == v for r, v in got.items()), (keep, nprobe)
            if len(every) <= keep:
                assert set(got) == set(inner), (keep, nprobe)
                continue
            cut = d_ref.min()
            assert set(got) == {r for r, v in inner.items() if v >= cut}, (keep, nprobe)
            assert all(v == cut for r, v in got.items() if r not in set(ref.tolist())), (keep, nprobe)
            straddled += len(rows) > keep
        assert len(ann.kept(q, 0, nprobe)[0]) == 0
    if n >= 97:
        assert straddled, "no keep cut through the tied rows: the tie rule went untested"


def test_kept_of_an_ivf_whose_scan_is_capped_is_the_search(rng):
    """An IVF whose scan FAISS caps (``max_codes``; fitsketch never sets it) is searched by ``top``:
    the range search would scan rows the capped search does not, so ``kept`` returns ``top``'s rows."""
    ann = _random_ivf(rng, 997, 13, 12, dup=4)
    ann.index.max_codes = 30
    q = np.append(rng.random(len(ann.basis)).astype(np.float32), np.float32(0))
    for keep, nprobe in ((1, 1), (17, 5), (500, 13)):
        rows, d = ann.kept(q, keep, nprobe)
        ref, d_ref = ann.top(None, q, keep, nprobe, refine=1)
        assert rows.tolist() == ref.tolist() and np.array_equal(d, d_ref)


def test_stage_without_a_rerank_equals_the_search_order_reference(tmp_path, rng, small_ann, monkeypatch):
    """``scores`` with the IVF and no re-rank (``ANN_REFINE`` 1, production): level 1 keeps ``kept``'s
    rows, level 2 screens them in row order from a lazily gathered subset; against the reference built
    from FAISS's ordered search (``top(refine=1)``, its rows in their search order through ``_prefilter``,
    an eager subset): the same screen (ids, scores, tiebreaks, exactness) for every method, large and
    small queries, 1 to every list probed, whenever the two hold the same rows (no tie at the cut), and
    level 1 a superset of the search's rows always."""
    monkeypatch.setattr(C, "ANN_REFINE", 1)
    monkeypatch.setattr(C, "_nlist", lambda n: max(1, n // 4))   # several lists (the default has one below 78 entries)
    cfg = fitsketch.SketchConfig(shortlist=2, partition_size=20)
    hub, pools = _hub(tmp_path / "h.hub", rng, int(rng.integers(14, 24)), cfg)
    with hub:
        idx = hub._synced_screen()
        ann = C.level1(idx)
        n = len(idx)
        sp = fitsketch.profiles.small_params(cfg)
        same = 0
        for method in METHODS:
            for small in (False, True):
                shares = rng.integers(10, 40, 4) if small else rng.integers(60, 120, 4)
                q = fitsketch.sketch_data(_mixture(pools, shares), fitsketch.SketchConfig() if small else cfg,
                                          partition_size=25 if small else int(rng.integers(40, 400)))
                t_small = (sp, own_keys(q.hist, q.n_features, q.n_partitions, per_dataset=method == "js",
                                        seed=cfg.seed, r=sp[0], k=sp[1], l=sp[2])) \
                    if small and method in ("js", "adaptivity") else None
                kw = dict(seed=cfg.seed, t_keys=_own(q, cfg), t_small=t_small)
                qv = C.query_vector(idx, q, cfg.seed)
                for nprobe in sorted({1, int(rng.integers(1, ann.index.nlist + 1)), ann.index.nlist}):
                    keep = int(rng.integers(1, n))
                    ref_rows, _ = ann.top(idx, qv, keep, nprobe, refine=1)
                    if len(ref_rows) < keep:
                        continue          # the exact level 1 runs instead (tests above)
                    scr, info = C.scores(idx, q, method, keep=keep, nprobe=nprobe, ann=ann, shortlist=2, **kw)
                    kept, _ = ann.kept(qv, keep, nprobe)
                    assert set(ref_rows.tolist()) <= set(kept.tolist()) and info["coarse_kept"] == len(kept)
                    if len(kept) != len(ref_rows):
                        continue
                    ref = C._prefilter(idx, ref_rows, q, method, cfg.seed, kw["t_keys"], t_small, 2, {})
                    ref = C.subset(idx, np.sort(ref), qv)._scores(q, method, cfg.seed, kw["t_keys"], t_small)
                    for key in ("ids", "score", "tiebreak", "exact"):
                        assert np.array_equal(scr[key], ref[key]), (method, small, nprobe, keep, key)
                    same += 1
        assert same, "no query compared"
