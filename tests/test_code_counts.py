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
