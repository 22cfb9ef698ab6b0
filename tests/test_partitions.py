"""fitsketch.partitions: JS divergence (base 2) against a plain-loop reference, the packed histogram
record (round trip, refusal of unsorted input)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from fitsketch.partitions import _LIMITS, _narrow, _narrow_runs, js_divergence, pack_hist, pack_hists, unpack_hist


def ref_js(p, q):
    m = [(a + b) / 2 for a, b in zip(p, q)]
    kl = lambda x: sum(a * math.log2(a / c) for a, c in zip(x, m) if a > 0)  # noqa: E731
    return 0.5 * kl(p) + 0.5 * kl(q)


@pytest.mark.parametrize("d", [1, 7, 97])
def test_js_divergence_equals_reference(rng, d):
    p = rng.random(d) * (rng.random(d) < 0.7)
    p = p / p.sum() if p.sum() else np.full(d, 1 / d)
    q = rng.random((4, d))
    q[1] = p
    q = q / q.sum(axis=1, keepdims=True)
    got = js_divergence(p, q)
    np.testing.assert_allclose(got, [ref_js(p, row) for row in q], atol=1e-12)
    assert got[1] == pytest.approx(0.0, abs=1e-12)


def _random_hist(rng, n_p, n_f):
    cells = [(p, f) for p in range(n_p) for f in range(n_f) if rng.random() < 0.7]
    part, feat, bucket, count = [], [], [], []
    for p, f in cells:
        k = int(rng.integers(1, 12))
        bs = np.sort(rng.choice(np.concatenate([np.arange(-40, 40), [-(2**31) + 1, 2**31 - 2, 5000]]), k, replace=False))
        part += [p] * k
        feat += [f] * k
        bucket += bs.tolist()
        count += rng.choice([1, 3, 254, 255, 256, 70_000], k).tolist()
    return {"part": np.array(part, np.int32), "feat": np.array(feat, np.int32), "bucket": np.array(bucket, np.int32),
            "count": np.array(count, np.uint32)}


@pytest.mark.parametrize("shape", [(0, 3), (1, 1), (3, 5), (7, 9)])
def test_pack_hist_roundtrip(rng, shape):
    n_p, n_f = shape
    h = _random_hist(rng, n_p, n_f)
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


def test_narrow_runs_equals_narrow(rng):
    """``_narrow_runs`` (pack_hists' dtype choice for every sketch at once) gives ``_narrow`` of each run:
    the same values in the same dtype, for empty and one-element runs and values at every type's limits."""
    for signed in (False, True):
        edges = sorted({v for _, lo, hi in _LIMITS[signed] for v in (lo, lo + 1, hi - 1, hi, 0, 1)
                        if -(2**63) <= v < 2**63})
        for _ in range(300):
            lens = rng.integers(0, 6, int(rng.integers(0, 7)))
            b = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
            a = rng.choice(edges, int(b[-1])).astype(np.int64) if rng.random() < 0.5 else \
                rng.integers(-300 if signed else 0, 70_000, int(b[-1]), dtype=np.int64)
            got = _narrow_runs(a, b, signed)
            ref = [_narrow(a[b[i]:b[i + 1]], signed) for i in range(len(lens))]
            assert len(got) == len(ref)
            for g, r in zip(got, ref):
                assert g.dtype == r.dtype and np.array_equal(g, r), (a, b, signed)


def test_pack_hists_equals_pack_hist(rng):
    """``pack_hists`` of a batch (Hub.add_sketches) equals ``pack_hist`` of each sketch, array by array
    and dtype by dtype: sketches with no cell, one cell, gaps and counts of 255 and more (exceptions)."""
    for _ in range(20):
        shapes = [(int(rng.integers(0, 5)), int(rng.integers(1, 6))) for _ in range(int(rng.integers(1, 7)))]
        hs = [_random_hist(rng, n_p, n_f) for n_p, n_f in shapes]
        e = np.concatenate([np.full(len(h["part"]), i, np.int64) for i, h in enumerate(hs)])
        cat = {k: np.concatenate([h[k] for h in hs]).astype(np.int64) for k in hs[0]}
        # float64 counts, as profiles._aggregate gives them (the compiled pass where built), and int64 (NumPy's)
        for count in (cat["count"].astype(np.float64), cat["count"]):
            got = pack_hists(e, cat["part"], cat["feat"], cat["bucket"], count, [s[0] for s in shapes],
                             [s[1] for s in shapes])
            for h, (n_p, n_f), g in zip(hs, shapes, got):
                ref = pack_hist(h, n_p, n_f)
                assert set(ref) == set(g)
                for k in ref:
                    assert np.asarray(ref[k]).dtype == np.asarray(g[k]).dtype and np.array_equal(ref[k], g[k]), k
