"""fitsketch.jslsh (the engine's JS-LSH): band keys and adaptivity against a float64 loop reference,
stored keys equal to the query-time projection. The projection kernel is in test_kernel_jslsh.py."""
from __future__ import annotations

import math

import numpy as np
import pytest

import fitsketch
from fitsketch.config import SketchConfig
from fitsketch.jslsh import adaptivity_scores, lsh_band_keys
from fitsketch import profiles as P
from fitsketch.kernels.jslsh import band_keys, gaussian_projection, offsets
from fitsketch.partitions import aligned_distributions

from _frames import _frame, _sketch, random_frame


def ref_band_keys_and_adaptivity(hists, feat_maps, n_aligned, seed, r, k, l):
    """Reference JS-LSH: per partition, loop over its (j, bucket) probabilities in float64."""
    dist_rows = []
    for hist, fmap in zip(hists, feat_maps):
        rows = {}
        for p, f, b, c in zip(hist["part"], hist["feat"], hist["bucket"], hist["count"]):
            j = fmap[int(f)]
            if j < 0:
                continue
            rows.setdefault(int(p), {}).setdefault((j, int(b)), 0.0)
            rows[int(p)][(j, int(b))] += float(c)
        out = []
        for p in range(max(rows) + 1 if rows else 0):
            cells = rows.get(p, {})
            tot = {}
            for (j, _), c in cells.items():
                tot[j] = tot.get(j, 0.0) + c
            out.append({key: c / tot[key[0]] / n_aligned for key, c in cells.items()})
        dist_rows.append(out)
    bvec = offsets(seed, k * l, r).astype(np.float64)
    keys, values = [], []
    for rows in dist_rows:
        ks, vs = [], []
        for cells in rows:
            v = bvec.copy()
            for (j, b), pr in cells.items():
                v += gaussian_projection(seed, [j], [b], k * l)[0].astype(np.float64) * math.sqrt(pr)
            vs.append(v / r)
            ks.append(np.ceil(v / r).astype(np.int64))
        keys.append(np.array(ks).reshape(-1, k * l))
        values.append(np.array(vs).reshape(-1, k * l))
    return keys, values


def test_jslsh_and_adaptivity_equal_reference(rng):
    cfg = SketchConfig(seed=int(rng.integers(0, 2**31)))
    target = fitsketch.sketch_data(random_frame(rng, 97), cfg, partition_size=13)
    # 997 rows: 110 partitions x 8 bands in all, so that the 99% bound below leaves room for the rare
    # band on a bucket edge (~1.5e-4 a band); with 19 partitions (152 bands) two such bands failed it
    sources = [fitsketch.sketch_data(random_frame(rng, int(n)), cfg, partition_size=11) for n in (1, 7, 97, 997)]
    n_t = target.n_features
    fmaps = [np.arange(n_t)] + [rng.permutation(n_t) for _ in sources]
    fmaps[2][1] = -1  # one source feature unaligned
    hists = [target.hist] + [s.hist for s in sources]
    nparts = [target.n_partitions] + [s.n_partitions for s in sources]
    r, k, l = 0.3, 2, 8
    dists = [aligned_distributions(h, np.asarray(fm), n_t, n_partitions=n) for h, fm, n in zip(hists, fmaps, nparts)]
    keys, offs = lsh_band_keys(dists, seed=cfg.seed, r=r, k=k, l=l, device="cpu")
    ref_hashes, ref_vals = ref_band_keys_and_adaptivity(hists, fmaps, n_t, cfg.seed, r, k, l)
    # integer buckets equal, except where fp32 vs fp64 rounding sits on a bucket edge
    all_ref = np.concatenate(ref_hashes)
    all_val = np.concatenate(ref_vals)
    edge = np.abs(all_val - np.round(all_val)) < 1e-4
    ref_keys = band_keys(all_ref, k, l)
    safe_rows = ~edge.reshape(len(all_ref), l, k).any(axis=2)
    assert safe_rows.mean() > 0.99
    assert np.array_equal(keys[safe_rows], ref_keys[safe_rows])
    # adaptivity by plain loops on the reference keys
    t_keys = ref_keys[offs[0]:offs[1]]
    got = adaptivity_scores(keys[offs[0]:offs[1]], [keys[offs[i]:offs[i + 1]] for i in range(1, len(offs) - 1)])
    for i in range(1, len(offs) - 1):
        s_keys = ref_keys[offs[i]:offs[i + 1]]
        hit = [any(t_keys[p, b] == s_keys[q, b] for q in range(len(s_keys)) for b in range(l))
               for p in range(len(t_keys))]
        if safe_rows[offs[0]:offs[i + 1]].all():
            assert got[i - 1][0] == pytest.approx(sum(hit) / len(hit))
            assert got[i - 1][2] == sum(hit)


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
            monkeypatch.setattr(P, "stored_keys", lambda txn, eid: None)   # no stored keys found
            slow = {m.name: (m.score, m.evidence) for m in hub.search(q, k=8, method=method)}
            monkeypatch.undo()
            assert fast.keys() == slow.keys()
            for name in fast:
                if method == "adaptivity":
                    assert abs(fast[name][1]["matched_partitions"] - slow[name][1]["matched_partitions"]) <= 1
                    assert abs(fast[name][1]["band_agreement"] - slow[name][1]["band_agreement"]) <= 1 / cfg.jslsh_l
                else:
                    assert abs(fast[name][1]["bands_collided"] - slow[name][1]["bands_collided"]) <= 1


def test_small_query_reads_each_candidates_histograms_once_and_scores_alike(tmp_path, rng, monkeypatch):
    """A small query's adaptivity / js: the entries scored by query-time projection get their
    closeness from the histograms the LSH step read (one read each), with exactly the scores of
    reading them again for closeness (within 1e-12: the JS pass sums a different batch of
    candidates, which moves the last bits); entries with other columns or orders take that path."""
    from fitsketch.methods import base as B, jslsh as MJ

    cfg = fitsketch.SketchConfig()
    with fitsketch.open(tmp_path / "h.hub", config=cfg) as hub:
        n = int(rng.integers(5, 10))
        for i in range(n):   # odd sizes; some entries with another column order or an extra column
            names = ("a", "b", "c") if i % 3 == 0 else (("c", "a", "b") if i % 3 == 1 else ("a", "b", "c", "d"))
            hub.add_sketch(f"m{i}", _sketch(cfg, _frame(rng, 150 + 37 * i, loc=0.3 * i, names=names)))
        q = _frame(rng, int(rng.integers(20, 60)), loc=float(rng.uniform(0, 2)))
        reads = []
        real = B.source_hist
        monkeypatch.setattr(MJ, "source_hist", lambda txn, rec: reads.append(rec["id"]) or real(txn, rec))
        for method in ("adaptivity", "js"):
            reads.clear()
            once = [(m.name, m.score, m.evidence.get("closeness")) for m in hub.search(q, k=n, method=method)]
            assert len(once) == n and all(c is not None for _, _, c in once)
            assert len(reads) == len(set(reads)) and len(reads) >= n // 3   # each read at most once here
            real_scores = MJ.jslsh_scores
            monkeypatch.setattr(MJ, "jslsh_scores", lambda *a, closeness_out=None, **kw: real_scores(*a, **kw))
            twice = [(m.name, m.score, m.evidence.get("closeness")) for m in hub.search(q, k=n, method=method)]
            monkeypatch.setattr(MJ, "jslsh_scores", real_scores)
            assert [x[0] for x in once] == [x[0] for x in twice]
            assert np.allclose([x[1:] for x in once], [x[1:] for x in twice], rtol=0, atol=1e-12)
