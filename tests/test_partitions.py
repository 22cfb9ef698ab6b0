"""fitsketch.partitions: JS divergence (base 2) against a plain-loop reference, the packed histogram
record (round trip, refusal of unsorted input)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from fitsketch.partitions import js_divergence, pack_hist, unpack_hist


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
