"""Sketches against plain-loop references: quantizer, histograms, MinHash similarity estimates,
feature alignment, JS divergence, JS-LSH buckets and adaptivity; mergeability; determinism."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

import fitsketch
from fitsketch.config import SketchConfig
from fitsketch.jslsh import adaptivity_scores, lsh_band_keys
from fitsketch.kernels.jslsh import band_keys, gaussian_projection, offsets
from fitsketch.kernels.minhash import EMPTY, minhash_reference
from fitsketch.minhash import align, similarity
from fitsketch.partitions import aligned_distributions, js_divergence
from fitsketch.quantize import BIAS, MIN_ABS, NAN_KEY, NEG_INF_KEY, POS_INF_KEY, numeric_keys, quantize_column

SIZES = [1, 7, 97, 1001]


def fresh_rng():
    return np.random.default_rng()


def ref_numeric_key(v: float, acc: float) -> int:
    if math.isnan(v):
        return NAN_KEY
    if v == math.inf:
        return POS_INF_KEY
    if v == -math.inf:
        return NEG_INF_KEY
    if abs(v) <= MIN_ABS:
        return 0
    k = math.ceil(math.log(abs(v)) / math.log((1 + acc) / (1 - acc)))
    return BIAS + k if v > 0 else -(BIAS + k)


@pytest.mark.parametrize("n", [0] + SIZES)
def test_numeric_keys_equal_reference(n):
    rng = fresh_rng()
    v = rng.standard_normal(n) * 10.0 ** rng.integers(-12, 12, n)
    if n > 3:
        v[:4] = [np.nan, np.inf, -np.inf, 0.0]
    for acc in (0.01, 0.1, 0.37):
        got = numeric_keys(v, acc)
        assert got.dtype == np.int64
        assert got.tolist() == [ref_numeric_key(float(x), acc) for x in v]
        assert np.all(np.abs(got) < 2**31)


@pytest.mark.parametrize("n", [0, 1, 2, 7, 1001])
def test_numeric_keys_at_equal_reference_bit_for_bit(n):
    """The shared-logarithm fast path against the definition, with and without special values
    (the no-special path skips the masks), 1-D and 2-D, two accuracies at once."""
    from fitsketch.quantize import numeric_keys_at, numeric_keys_reference

    rng = fresh_rng()
    for specials in (False, True):
        v = rng.standard_normal(n) * 10.0 ** rng.integers(-12, 12, n)
        if specials and n:
            pick = rng.choice([np.nan, np.inf, -np.inf, 0.0, 1e-10, -1e-12], n)
            mask = rng.random(n) < 0.3
            v[mask] = pick[mask]
        accs = (float(rng.uniform(0.001, 0.2)), float(rng.uniform(0.05, 0.5)))
        for arr in (v, v.reshape(-1, 1) if n else v):
            got = numeric_keys_at(arr, accs)
            for g, acc in zip(got, accs):
                ref = numeric_keys_reference(arr, acc)
                assert g.dtype == np.int64 and g.shape == ref.shape and np.array_equal(g, ref)


def test_numeric_keys_relative_accuracy():
    """Two values in one bucket differ by at most the bucket's relative width."""
    rng = fresh_rng()
    v = np.exp(rng.uniform(-20, 20, 5000))
    acc = 0.05
    keys = numeric_keys(v, acc)
    gamma = (1 + acc) / (1 - acc)
    for key in np.unique(keys):
        vals = v[keys == key]
        assert vals.max() / vals.min() <= gamma * (1 + 1e-9)


def ref_histograms(df: pd.DataFrame, cfg: SketchConfig, m: int) -> dict:
    """(part, feat, bucket) -> count by plain loops over rows and features."""
    n = len(df)
    order = np.random.Generator(np.random.PCG64(cfg.seed)).permutation(n)
    part_of = {int(row): pos // m for pos, row in enumerate(order)}
    out: dict = {}
    for f, name in enumerate(df.columns):
        col = quantize_column(name, df[name], cfg)
        for r, b in zip(col.rows, col.hist):
            key = (part_of[int(r)], f, int(b))
            out[key] = out.get(key, 0) + 1
    return out


def random_frame(rng, n: int) -> pd.DataFrame:
    words = np.array(["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta"])
    return pd.DataFrame({
        "x": rng.standard_normal(n) * 100,
        "k": rng.integers(0, 20, n),
        "cat": rng.choice(words, n),
        "txt": [" ".join(rng.choice(words, rng.integers(3, 7))) for _ in range(n)],  # > 2.5 tokens: text
    })


@pytest.mark.parametrize("n", SIZES)
def test_histograms_equal_reference(n):
    rng = fresh_rng()
    df = random_frame(rng, n)
    cfg = SketchConfig(seed=int(rng.integers(0, 2**31)))
    m = int(rng.integers(1, 60))
    sk = fitsketch.sketch_data(df, cfg, partition_size=m)
    got = {(int(p), int(f), int(b)): int(c) for p, f, b, c in
           zip(sk.hist["part"], sk.hist["feat"], sk.hist["bucket"], sk.hist["count"])}
    assert got == ref_histograms(df, cfg, m)
    assert sk.n_partitions == (n + m - 1) // m
    assert sk.kinds == ["numeric", "numeric", "categorical", "text"]


def test_feature_signatures_equal_reference():
    rng = fresh_rng()
    df = random_frame(rng, 97)
    cfg = SketchConfig(seed=int(rng.integers(0, 2**31)), num_perm=16, lsh_k=4, lsh_l=4)
    sk = fitsketch.sketch_data(df, cfg)
    for f, name in enumerate(df.columns):
        col = quantize_column(name, df[name], cfg)
        ref = minhash_reference(col.set_elems, np.array([0, len(col.set_elems)]), cfg.num_perm, cfg.seed)
        assert np.array_equal(sk.signatures[f], ref[0])


def ref_similarity(ts, ss, match):
    out = np.zeros((len(ts), len(ss)))
    for i, a in enumerate(ts):
        for j, b in enumerate(ss):
            if a[0] == EMPTY or b[0] == EMPTY:
                continue
            jac = sum(int(x == y) for x, y in zip(a, b)) / len(a)
            if match == "jaccard":
                out[i, j] = jac
                continue
            na = len(a) / sum(x / float(2**32 - 1) for x in a) - 1
            nb = len(b) / sum(x / float(2**32 - 1) for x in b) - 1
            na, nb = max(na, 1.0), max(nb, 1.0)
            out[i, j] = min(1.0, max(0.0, jac * (na + nb) / (1 + jac) / na))
    return out


@pytest.mark.parametrize("match", ["jaccard", "containment"])
def test_similarity_equals_reference(match):
    rng = fresh_rng()
    base = rng.integers(0, 2**32 - 1, size=(7, 32), dtype=np.int64).astype(np.uint32)
    other = base[rng.integers(0, 7, 5)].copy()
    mask = rng.random(other.shape) < 0.5
    other[mask] = rng.integers(0, 2**32 - 1, size=mask.sum(), dtype=np.int64).astype(np.uint32)
    other[0] = EMPTY
    got = similarity(base, other, match)
    np.testing.assert_allclose(got, ref_similarity(base, other, match), rtol=1e-12, atol=1e-12)


def test_similarity_estimates_true_jaccard_and_containment():
    rng = fresh_rng()
    universe = np.arange(100_000)
    a = rng.choice(universe, 2000, replace=False)
    b = np.concatenate([a[:1000], rng.choice(universe[50_000:], 1000, replace=False)])
    small = a[:200]
    sig = fitsketch.minhash_sets([a.tolist(), b.tolist(), small.tolist()], num_perm=512)
    true_j = len(set(a) & set(b)) / len(set(a) | set(b))
    j = similarity(sig[:1], sig[1:2], "jaccard")[0, 0]
    assert abs(j - true_j) < 0.08  # 512 permutations: std ~ 0.02
    # containment of a 200-set inside a 2000-set (J = 0.1): the estimate's std is ~0.15 here,
    # so 0.4 is 4 standard deviations below the truth (1.0)
    c = similarity(sig[2:3], sig[:1], "containment")[0, 0]
    assert 0.4 < c <= 1.0
    stranger = rng.choice(np.arange(200_000, 300_000), 200, replace=False)
    c0 = similarity(fitsketch.minhash_sets([stranger.tolist()], num_perm=512), sig[:1], "containment")[0, 0]
    assert c0 < 0.2


def test_alignment_prefers_same_name_then_similarity():
    rng = fresh_rng()
    s = rng.integers(0, 2**32 - 1, size=(3, 64), dtype=np.int64).astype(np.uint32)
    t = s.copy()
    # target feature "b" is identical to source "a" and to source "b": same name wins
    t_names, s_names = ["b", "x", "q"], ["a", "b", "c"]
    t[0] = s[0]
    s[1] = s[0]
    t[1] = s[2]
    t[2] = rng.integers(0, 2**32 - 1, size=64, dtype=np.int64).astype(np.uint32)
    al = align(t_names, t, s_names, s, threshold=0.5, match="jaccard")
    assert [(a, b) for a, b, _ in al.pairs] == [(0, 1), (1, 2)]
    assert al.overlap == pytest.approx(2 / 3)


def ref_js(p, q):
    m = [(a + b) / 2 for a, b in zip(p, q)]
    kl = lambda x: sum(a * math.log2(a / c) for a, c in zip(x, m) if a > 0)  # noqa: E731
    return 0.5 * kl(p) + 0.5 * kl(q)


@pytest.mark.parametrize("d", [1, 7, 97])
def test_js_divergence_equals_reference(d):
    rng = fresh_rng()
    p = rng.random(d) * (rng.random(d) < 0.7)
    p = p / p.sum() if p.sum() else np.full(d, 1 / d)
    q = rng.random((4, d))
    q[1] = p
    q = q / q.sum(axis=1, keepdims=True)
    got = js_divergence(p, q)
    np.testing.assert_allclose(got, [ref_js(p, row) for row in q], atol=1e-12)
    assert got[1] == pytest.approx(0.0, abs=1e-12)


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


def test_jslsh_and_adaptivity_equal_reference():
    rng = fresh_rng()
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


def test_merge_equals_sketch_of_union():
    rng = fresh_rng()
    a = random_frame(rng, 60)
    b = random_frame(rng, 37)
    cfg = SketchConfig(seed=int(rng.integers(0, 2**31)))
    kinds = {"txt": "text"}
    whole = fitsketch.sketch_data(pd.concat([a, b], ignore_index=True), cfg, partition_size=20)
    center = whole.coverage["center"]
    merged = fitsketch.sketch_data(a, cfg, partition_size=20, coverage_center=center).merge(
        fitsketch.sketch_data(b, cfg, partition_size=20, coverage_center=center))
    for key in ("table", "code", "count"):
        assert np.array_equal(whole.coverage[key], merged.coverage[key])
    assert "more" not in merged.coverage          # a shared centre: one group, counts of the union
    assert kinds["txt"] in whole.kinds
    assert np.array_equal(whole.signatures, merged.signatures)
    assert np.array_equal(whole.counts, merged.counts)
    np.testing.assert_allclose(whole.sums, merged.sums, rtol=1e-12)
    assert whole.n_rows == merged.n_rows == 97
    tw, tm = whole.totals(), merged.totals()
    for key in ("feat", "bucket", "count"):
        assert np.array_equal(tw[key], tm[key])
    # without the shuffle, and with A a whole number of partitions, the partitions agree too
    from fitsketch.sketch import build_sketch

    w2 = build_sketch(pd.concat([a, b], ignore_index=True), cfg, partition_size=20, shuffle=False)
    m2 = build_sketch(a, cfg, partition_size=20, shuffle=False, coverage_center=center).merge(
        build_sketch(b, cfg, partition_size=20, shuffle=False, coverage_center=center))
    for key in ("part", "feat", "bucket", "count"):
        assert np.array_equal(w2.hist[key], m2.hist[key])


def test_merge_refuses_other_features_or_parameters():
    rng = fresh_rng()
    a = fitsketch.sketch_data(random_frame(rng, 10))
    b = fitsketch.sketch_data(random_frame(rng, 10)[["x", "k"]])
    with pytest.raises(fitsketch.errors.InvalidArgumentError, match="different features"):
        a.merge(b)
    c = fitsketch.sketch_data(random_frame(rng, 10), SketchConfig(seed=5))
    with pytest.raises(fitsketch.errors.InvalidArgumentError, match="different parameters"):
        a.merge(c)


def test_sketch_is_deterministic_under_a_seed():
    rng = fresh_rng()
    df = random_frame(rng, 200)
    s = int(rng.integers(0, 2**31))
    x = fitsketch.sketch_data(df, SketchConfig(seed=s), partition_size=30)
    y = fitsketch.sketch_data(df, SketchConfig(seed=s), partition_size=30)
    z = fitsketch.sketch_data(df, SketchConfig(seed=s + 1), partition_size=30)
    assert np.array_equal(x.signatures, y.signatures)
    for key in x.hist:
        assert np.array_equal(x.hist[key], y.hist[key])
    assert not np.array_equal(x.signatures, z.signatures)


def test_sketch_bytes_round_trip_and_version_check():
    rng = fresh_rng()
    sk = fitsketch.sketch_data(random_frame(rng, 53), partition_size=10)
    back = fitsketch.Sketch.from_bytes(sk.to_bytes())
    assert back.names == sk.names and back.kinds == sk.kinds and back.config_key == tuple(sk.config_key)
    assert np.array_equal(back.signatures, sk.signatures) and back.signatures.dtype == np.uint32
    for key in sk.hist:
        assert np.array_equal(back.hist[key], sk.hist[key])
    from fitsketch.storage import pack, unpack

    rec = unpack(sk.to_bytes())
    rec["v"] = 99
    with pytest.raises(fitsketch.errors.SchemaError, match="99"):
        fitsketch.Sketch.from_bytes(pack(rec))
    with pytest.raises(fitsketch.errors.FitsketchError):
        fitsketch.Sketch.from_bytes(b"\x00garbage")


def test_same_name_columns_align_whatever_their_value_overlap():
    rng = fresh_rng()
    t = rng.integers(0, 2**32 - 1, size=(2, 64), dtype=np.int64).astype(np.uint32)
    s = rng.integers(0, 2**32 - 1, size=(2, 64), dtype=np.int64).astype(np.uint32)
    al = align(["price", "zz"], t, ["price", "other"], s, threshold=0.5, match="jaccard")
    assert [(a, b) for a, b, _ in al.pairs] == [(0, 0)]
    assert al.pairs[0][2] < 0.5


def _cov_frame(rng, n, shift=0.0):
    return pd.DataFrame({"x": rng.normal(shift, 1, n), "y": rng.exponential(2, n) + shift,
                         "c": rng.choice(["a", "b", "c", "d"], n), "k": rng.integers(0, 5, n)})


def test_independent_halves_merge_and_score_like_the_whole():
    """fitsketch.sketch_data(a).merge(fitsketch.sketch_data(b)) -- parts sketched independently, each
    coded around its own mean -- merges; every exact part equals the whole's and coverage scores
    queries within 0.05 of the whole's (measured: within 0.02 over 3 seeds x 3 shifts x 2 taus)."""
    from fitsketch import coverage as C

    rng = fresh_rng()
    cfg = SketchConfig(seed=int(rng.integers(0, 2**31)))
    df = _cov_frame(rng, 2000)
    whole = fitsketch.sketch_data(df, cfg)
    perm = rng.permutation(len(df))
    a, b = df.iloc[perm[:1000]], df.iloc[perm[1000:]]
    sa, sb = fitsketch.sketch_data(a, cfg), fitsketch.sketch_data(b, cfg)
    merged = sa.merge(sb)
    assert np.array_equal(merged.signatures, whole.signatures) and merged.n_rows == whole.n_rows
    assert np.array_equal(merged.counts, whole.counts)
    tw, tm = whole.totals(), merged.totals()
    assert all(np.array_equal(tw[k], tm[k]) for k in ("feat", "bucket", "count"))
    g = C.groups(merged.coverage)
    assert len(g) == 2 and sum(int(x["count"].sum()) for x in g) == int(whole.coverage["count"].sum())
    other = sb.merge(sa)
    for shift in (0.0, 0.5, 2.0):
        q = fitsketch.sketch_data(_cov_frame(rng, 500, shift), cfg)
        for tau in (1.0, 5.0):
            sw = C.score(q.rows, whole.coverage, seed=cfg.seed, tau=tau)
            sm = C.score(q.rows, merged.coverage, seed=cfg.seed, tau=tau)
            assert abs(sm.mean() - sw.mean()) < 0.05, (shift, tau, sm.mean(), sw.mean())
            # the groups' counts add: the order of the merge does not matter
            np.testing.assert_allclose(C.score(q.rows, other.coverage, seed=cfg.seed, tau=tau), sm, rtol=1e-12)


def test_coverage_groups_generalize_the_one_group_score():
    """The several-groups score with one real group (plus an empty one) is the one-group score;
    a shared centre still sums counts; more than MAX_GROUPS centres is refused with the fix."""
    from fitsketch import coverage as C

    rng = fresh_rng()
    cfg = SketchConfig(seed=int(rng.integers(0, 2**31)))
    s = fitsketch.sketch_data(_cov_frame(rng, int(rng.integers(50, 400))), cfg)
    q = fitsketch.sketch_data(_cov_frame(rng, int(rng.integers(1, 300)), 0.3), cfg)
    rec = s.coverage
    empty = {"center": rec["center"] + 1.0, "table": rec["table"][:0], "code": rec["code"][:0],
             "count": rec["count"][:0]}
    for tau in (1.0, 3.0):
        one = C.score(q.rows, rec, seed=cfg.seed, tau=tau)
        two = C.score(q.rows, {**rec, "more": [empty]}, seed=cfg.seed, tau=tau)
        np.testing.assert_allclose(two, one, rtol=1e-12, atol=1e-15)
    # three parts, two of which share a centre: two groups, the shared one with their summed counts
    parts = [_cov_frame(rng, 80) for _ in range(3)]
    c = fitsketch.sketch_data(parts[1], cfg).coverage["center"]
    m = fitsketch.sketch_data(parts[0], cfg).merge(fitsketch.sketch_data(parts[1], cfg, coverage_center=c)).merge(
        fitsketch.sketch_data(parts[2], cfg, coverage_center=c))
    g = C.groups(m.coverage)
    ref = fitsketch.sketch_data(pd.concat(parts[1:], ignore_index=True), cfg, coverage_center=c).coverage
    assert len(g) == 2 and all(np.array_equal(g[1][k], ref[k]) for k in ("table", "code", "count"))
    acc = fitsketch.sketch_data(parts[0], cfg)
    with pytest.raises(fitsketch.errors.InvalidArgumentError, match="coverage_center"):
        for i in range(C.MAX_GROUPS + 1):
            acc = acc.merge(fitsketch.sketch_data(_cov_frame(rng, 20, float(i)), cfg))


def test_merged_sketch_registers_searches_and_crosses_the_wire(tmp_path):
    from fitsketch import coverage as C
    from fitsketch.protocol import sketch_from_wire

    rng = fresh_rng()
    df = _cov_frame(rng, 600)
    with fitsketch.open(tmp_path / "hub") as hub:
        cfg = hub.config
        merged = fitsketch.sketch_data(df.iloc[:300], cfg).merge(fitsketch.sketch_data(df.iloc[300:], cfg))
        wire = sketch_from_wire(fitsketch.Sketch.from_bytes(merged.to_bytes()).to_record())
        assert len(C.groups(wire.coverage)) == 2
        hub.add_sketch("merged", wire)
        hub.add("whole", df)
        q = _cov_frame(rng, 200, 0.2)
        res = {m.name: m.score for m in hub.search(q, method="coverage")}
        qs = fitsketch.sketch_data(q, cfg)
        direct = C.score(qs.rows, merged.coverage, seed=cfg.seed, tau=cfg.coverage_tau, mode=cfg.coverage_score,
                         resolution=cfg.coverage_resolution, rho=cfg.coverage_rho).mean()
        assert res["merged"] == pytest.approx(direct, rel=1e-9) and abs(res["merged"] - res["whole"]) < 0.05
    bad = merged.to_record()
    bad["coverage"] = {**bad["coverage"], "more": [{"center": np.zeros(3), "table": np.zeros(1, np.int32),
                                                    "code": np.zeros(1, np.int64), "count": np.ones(1, np.uint32)}]}
    with pytest.raises(fitsketch.errors.InvalidArgumentError, match="center"):
        sketch_from_wire(bad)


@pytest.mark.parametrize("n", [0, 1, 2, 7, 1001])
def test_partition_counts_equal_unique(n):
    """The factorize + bincount counts against np.unique of the (part, bucket) pairs, on both of
    its paths (few cells: bincount; many: np.unique), buckets over all of int32."""
    from fitsketch.sketch import partition_counts

    rng = fresh_rng()
    for n_parts, spread in ((1, 5), (max(n // 7, 1), 300), (7, 1 << 20), (1 << 12, 1 << 31)):
        part = rng.integers(0, n_parts, n)
        bucket = rng.integers(-spread, spread, n).astype(np.int32)
        p, b, c = partition_counts(part, bucket, n_parts)
        uk, uc = np.unique(part * (1 << 32) + (bucket.astype(np.int64) + (1 << 31)), return_counts=True)
        assert p.dtype == b.dtype == np.int32 and c.dtype == np.uint32
        assert np.array_equal(p, uk >> 32) and np.array_equal(b, (uk & 0xFFFFFFFF) - (1 << 31))
        assert np.array_equal(c, uc)


@pytest.mark.parametrize("n", [0, 1, 2, 7, 1001])
def test_distinct_u32_equals_unique(n):
    from fitsketch.kernels.hashing import to_u32
    from fitsketch.quantize import _distinct_u32

    rng = fresh_rng()
    h = rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64) * np.uint64(2) + rng.integers(0, 2, n).astype(np.uint64)
    h = np.concatenate([h, h[: n // 2]])            # repeats
    got = _distinct_u32(h)
    ref = np.unique(to_u32(h))
    assert got.dtype == ref.dtype and np.array_equal(got, ref)
