"""fitsketch.sketch: a sketch's histograms and feature signatures against plain-loop references;
mergeability (merge == sketch of the union, independent halves); determinism; the byte record and
its version check; merged sketches through a hub and the wire. The parts have files of their own:
test_quantize.py, test_minhash.py, test_partitions.py, test_jslsh.py, test_coverage.py."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import fitsketch
from fitsketch.config import SketchConfig
from fitsketch.kernels.minhash import minhash_reference
from fitsketch.quantize import quantize_column

from _frames import _cov_frame, random_frame

SIZES = [1, 7, 97, 1001]


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


@pytest.mark.parametrize("n", SIZES)
def test_histograms_equal_reference(rng, n):
    df = random_frame(rng, n)
    cfg = SketchConfig(seed=int(rng.integers(0, 2**31)))
    m = int(rng.integers(1, 60))
    sk = fitsketch.sketch_data(df, cfg, partition_size=m)
    got = {(int(p), int(f), int(b)): int(c) for p, f, b, c in
           zip(sk.hist["part"], sk.hist["feat"], sk.hist["bucket"], sk.hist["count"])}
    assert got == ref_histograms(df, cfg, m)
    assert sk.n_partitions == (n + m - 1) // m
    assert sk.kinds == ["numeric", "numeric", "categorical", "text"]


def test_feature_signatures_equal_reference(rng):
    df = random_frame(rng, 97)
    cfg = SketchConfig(seed=int(rng.integers(0, 2**31)), num_perm=16, lsh_k=4, lsh_l=4)
    sk = fitsketch.sketch_data(df, cfg)
    for f, name in enumerate(df.columns):
        col = quantize_column(name, df[name], cfg)
        ref = minhash_reference(col.set_elems, np.array([0, len(col.set_elems)]), cfg.num_perm, cfg.seed)
        assert np.array_equal(sk.signatures[f], ref[0])


def test_merge_equals_sketch_of_union(rng):
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


def test_merge_refuses_other_features_or_parameters(rng):
    a = fitsketch.sketch_data(random_frame(rng, 10))
    b = fitsketch.sketch_data(random_frame(rng, 10)[["x", "k"]])
    with pytest.raises(fitsketch.errors.InvalidArgumentError, match="different features"):
        a.merge(b)
    c = fitsketch.sketch_data(random_frame(rng, 10), SketchConfig(seed=5))
    with pytest.raises(fitsketch.errors.InvalidArgumentError, match="different parameters"):
        a.merge(c)


def test_sketch_is_deterministic_under_a_seed(rng):
    df = random_frame(rng, 200)
    s = int(rng.integers(0, 2**31))
    x = fitsketch.sketch_data(df, SketchConfig(seed=s), partition_size=30)
    y = fitsketch.sketch_data(df, SketchConfig(seed=s), partition_size=30)
    z = fitsketch.sketch_data(df, SketchConfig(seed=s + 1), partition_size=30)
    assert np.array_equal(x.signatures, y.signatures)
    for key in x.hist:
        assert np.array_equal(x.hist[key], y.hist[key])
    assert not np.array_equal(x.signatures, z.signatures)


def test_sketch_bytes_round_trip_and_version_check(rng):
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


def test_independent_halves_merge_and_score_like_the_whole(rng):
    """fitsketch.sketch_data(a).merge(fitsketch.sketch_data(b)) -- parts sketched independently, each
    coded around its own mean -- merges; every exact part equals the whole's and coverage scores
    queries within 0.05 of the whole's (measured: within 0.02 over 3 seeds x 3 shifts x 2 taus)."""
    from fitsketch import coverage as C

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


def test_merged_sketch_registers_searches_and_crosses_the_wire(rng, tmp_path):
    from fitsketch import coverage as C
    from fitsketch.protocol import sketch_from_wire

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
def test_partition_counts_equal_unique(rng, n):
    """The factorize + bincount counts against np.unique of the (part, bucket) pairs, on both of
    its paths (few cells: bincount; many: np.unique), buckets over all of int32."""
    from fitsketch.sketch import partition_counts

    for n_parts, spread in ((1, 5), (max(n // 7, 1), 300), (7, 1 << 20), (1 << 12, 1 << 31)):
        part = rng.integers(0, n_parts, n)
        bucket = rng.integers(-spread, spread, n).astype(np.int32)
        p, b, c = partition_counts(part, bucket, n_parts)
        uk, uc = np.unique(part * (1 << 32) + (bucket.astype(np.int64) + (1 << 31)), return_counts=True)
        assert p.dtype == b.dtype == np.int32 and c.dtype == np.uint32
        assert np.array_equal(p, uk >> 32) and np.array_equal(b, (uk & 0xFFFFFFFF) - (1 << 31))
        assert np.array_equal(c, uc)


@pytest.mark.parametrize("n", [0, 1, 2, 7, 1001])
def test_distinct_u32_equals_unique(rng, n):
    from fitsketch.kernels.hashing import to_u32
    from fitsketch.quantize import _distinct_u32

    h = rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64) * np.uint64(2) + rng.integers(0, 2, n).astype(np.uint64)
    h = np.concatenate([h, h[: n // 2]])            # repeats
    got = _distinct_u32(h)
    ref = np.unique(to_u32(h))
    assert got.dtype == ref.dtype and np.array_equal(got, ref)
