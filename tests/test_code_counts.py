"""kernels.rowcodes.code_counts: sparse (table, code) counts in the narrowest types, equal to a
plain np.unique reference on fresh random codes -- empty, one row, counts just under and over the
uint8 / uint16 limits -- and scored the same by coverage_score as the uint32 counts they replace."""
from __future__ import annotations

import numpy as np
import pytest

from fitsketch.kernels import rowcodes as rc


def _reference(codes):
    T, n = codes.shape
    rows = [(t, int(c)) for t in range(T) for c in codes[t]]
    keys, cnt = np.unique(np.array(rows, dtype=np.int64).reshape(-1, 2), axis=0, return_counts=True)
    return keys[:, 0], keys[:, 1], cnt


@pytest.mark.parametrize("n,bits,repeat", [(0, 12, 1), (1, 12, 1), (37, 4, 1), (255, 1, 1), (256, 1, 1),
                                           (5, 2, 13_200), (3, 1, 21_846), (999, 12, 3)])
def test_code_counts_equal_reference_in_narrow_types(rng, n, bits, repeat):
    T = int(rng.integers(1, 9))
    codes = np.repeat(rng.integers(0, 1 << bits, (T, n)), repeat, axis=1)
    got = rc.code_counts(codes)
    t, c, k = _reference(codes)
    assert np.array_equal(got["table"].astype(np.int64), t) and np.array_equal(got["code"].astype(np.int64), c)
    assert np.array_equal(got["count"].astype(np.int64), k)
    top = int(k.max()) if len(k) else 0
    assert got["count"].dtype == (np.uint8 if top < 256 else np.uint16 if top < 65536 else np.uint32)
    if len(k):
        wide = {**got, "count": got["count"].astype(np.uint32)}
        target = rc.code_counts(rng.integers(0, 1 << bits, (T, 50)))
        assert np.array_equal(rc.coverage_score(target, got, T, 3.0), rc.coverage_score(target, wide, T, 3.0))


@pytest.mark.parametrize("n_a,n_b,repeat", [(0, 0, 1), (0, 7, 1), (1, 1, 1), (37, 64, 1), (5, 3, 130),
                                             (3, 2, 26_000)])
def test_merged_counts_equal_counts_of_the_union_in_narrow_types(rng, n_a, n_b, repeat):
    """coverage._sum_counts (merging two sketches' counts around one centre) gives exactly the counts
    of the concatenated codes, stored as narrow as code_counts stores them (it was always uint32)."""
    from fitsketch import coverage

    T, bits = int(rng.integers(1, 7)), int(rng.integers(1, 6))
    a = np.repeat(rng.integers(0, 1 << bits, (T, n_a)), repeat, axis=1)
    b = np.repeat(rng.integers(0, 1 << bits, (T, n_b)), repeat, axis=1)
    centre = rng.normal(size=3)
    got = coverage._sum_counts({"center": centre, **rc.code_counts(a)}, {"center": centre, **rc.code_counts(b)})
    want = rc.code_counts(np.concatenate([a, b], axis=1))
    for f in ("table", "code", "count"):
        assert np.array_equal(got[f].astype(np.int64), want[f].astype(np.int64)), f
    assert got["count"].dtype == want["count"].dtype
