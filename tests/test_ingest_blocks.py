"""The blocked ingest paths (issue 21) against the whole-array definitions they replace, bit for bit.

* ``quantize.numeric_buckets`` (numeric_keys_at over blocks of rows) against
  ``numeric_keys_reference`` of the whole column: the distinct fine keys and every histogram key;
* ``coverage.nanmean_rows`` (running sums over blocks) against ``np.nanmean(X, axis=0)``;
* ``coverage.row_matrix`` (numeric columns transformed in blocks into X) against the concatenated
  ``column_block`` of every column;
* ``coverage.encode`` (centred fp32 rows built in blocks) against the one-pass version;
* whole sketches with the ``all_rows`` shortcut against the same sketch through the row gather.

Random inputs of sizes 0, 1, odd ones and ones around the block sizes, with NaN, +-inf, zeros,
tiny and huge values, ints, bools and float32 columns.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest

from fitsketch import coverage as cov
from fitsketch import quantize as Q
from fitsketch.config import SketchConfig
from fitsketch.kernels.rowcodes import hyperplanes, row_codes
from fitsketch.sketch import build_sketch

SIZES = [0, 1, 2, 7, 97, Q.CHUNK - 1, Q.CHUNK, Q.CHUNK + 1, 2 * Q.CHUNK + 13]


def wild(rng, n: int) -> np.ndarray:
    x = rng.standard_normal(n) * 10.0 ** rng.integers(-15, 15, n)
    for value, share in ((np.nan, 0.05), (np.inf, 0.02), (-np.inf, 0.02), (0.0, 0.05), (-0.0, 0.02),
                         (1e-10, 0.02), (1e308, 0.01), (-1e300, 0.01)):
        x[rng.random(n) < share] = value
    x[:1] = rng.standard_normal(min(n, 1))             # never all NaN (a column without values is refused)
    return x


@pytest.mark.parametrize("n", SIZES)
def test_numeric_buckets_equal_reference(n):
    rng = np.random.default_rng()
    for v in (wild(rng, n), np.round(rng.normal(0, 3, n), 2), np.full(n, np.nan), rng.standard_normal(n)):
        acc, hacc = float(rng.uniform(0.001, 0.2)), float(rng.uniform(0.01, 0.3))
        fine, coarse = Q.numeric_buckets(v, acc, hacc)
        ref_fine = Q.numeric_keys_reference(v, acc)[~np.isnan(v)]
        assert fine.dtype == np.int64 and len(fine) == len(set(fine.tolist()))
        assert np.array_equal(np.sort(fine), np.unique(ref_fine))
        assert coarse.dtype == np.int32 and np.array_equal(coarse, Q.numeric_keys_reference(v, hacc))


def test_numeric_column_equals_reference():
    """The whole numeric Column: elements, histogram keys, total and count as before."""
    rng = np.random.default_rng()
    cfg = SketchConfig(seed=int(rng.integers(0, 2**31)))
    for n in (1, 97, 3 * Q.CHUNK + 5):
        for v in (wild(rng, n), rng.standard_normal(n)):
            c = Q.quantize_column("x", pd.Series(v), cfg, "numeric")
            fine = Q.numeric_keys_reference(v, cfg.accuracy)[~np.isnan(v)]
            elems = Q.to_u32(Q.mix64(np.unique(fine).view(np.uint64), cfg.seed ^ Q._NUMERIC_DOMAIN))
            finite = np.isfinite(v)
            assert np.array_equal(c.set_elems, np.unique(elems))
            assert np.array_equal(c.hist, Q.numeric_keys_reference(v, cfg.hist_accuracy).astype(np.int32))
            assert c.all_rows and np.array_equal(c.rows, np.arange(n))
            assert c.total == float(v[finite].sum()) and c.count == int(finite.sum())


@pytest.mark.parametrize("n", [1, 2, 7, 97, 1001, 5003])
def test_nanmean_rows_equals_nanmean(n):
    rng = np.random.default_rng()
    for d in (1, 3, 33, 5000):
        X = rng.standard_normal((n, d)) * 10.0 ** rng.integers(-12, 12, (n, d))
        X[rng.random((n, d)) < 0.1] = np.nan
        X[:, 0] = np.nan                                   # a column without a number
        with np.errstate(invalid="ignore"), pytest.warns(RuntimeWarning):
            ref = np.nanmean(X, axis=0)
        got = cov.nanmean_rows(X)
        assert got.dtype == np.float64 and np.array_equal(got, ref, equal_nan=True)
        # bit for bit, the sign of zero included
        assert np.array_equal(np.signbit(got), np.signbit(ref))


@pytest.mark.parametrize("d", [1, 2])
def test_nanmean_rows_over_several_blocks(d):
    """Past one block of rows (32,768 values): a single contiguous column is summed pairwise by
    NumPy, wider matrices row after row; both bit for bit."""
    rng = np.random.default_rng()
    for n in (32768 // d + 1, 40001, 70001):
        X = rng.standard_normal((n, d)) * 10.0 ** rng.integers(-6, 6, (n, d))
        X[rng.random((n, d)) < 0.1] = np.nan
        with np.errstate(invalid="ignore"):
            ref = np.nanmean(X, axis=0)
        assert np.array_equal(cov.nanmean_rows(X), ref, equal_nan=True)


def frame(rng, n: int) -> pd.DataFrame:
    z = rng.integers(-5, 5, n)
    cat = np.array(["a", "b c", None, "d"], dtype=object)[rng.integers(0, 4, n)]
    cat[:1] = "a"                                      # never all missing (a column without values is refused)
    return pd.DataFrame({"x": wild(rng, n), "cat": cat,
                         "i": z, "b": z > 0, "f32": rng.standard_normal(n).astype(np.float32),
                         "txt": [f"w{k} v{k % 7} u" for k in rng.integers(0, 50, n)], "y": np.round(rng.normal(0, 3, n), 3)})


@pytest.mark.parametrize("n", [0, 1, 7, 97, cov._ROWS + 3, 2 * cov._ROWS + 1])
def test_row_matrix_equals_column_blocks(n):
    rng = np.random.default_rng()
    df = frame(rng, n)
    kinds = ["numeric", "categorical", "numeric", "numeric", "numeric", "text", "numeric"]
    seed = int(rng.integers(0, 2**31))
    X, keys, owner = cov.row_matrix(df, kinds, seed)
    blocks = [cov.column_block(name, df[name], kind, seed) for name, kind in zip(df.columns, kinds)]
    assert np.array_equal(X, np.concatenate([b[0] for b in blocks], axis=1), equal_nan=True)
    assert np.array_equal(keys, np.concatenate([b[1] for b in blocks]))
    assert owner == [i for i, b in enumerate(blocks) for _ in range(b[0].shape[1])]


def encode_one_pass(X, keys, center, *, seed, bits, tables):
    """coverage.encode as it was: the centred fp32 rows in one pass."""
    Z = np.empty(X.shape, dtype=np.float32)
    with np.errstate(over="ignore"):
        np.subtract(X, np.asarray(center, dtype=np.float64)[None, :], out=Z, casting="unsafe")
    np.copyto(Z, 0.0, where=np.isnan(Z))
    return row_codes(Z, hyperplanes(seed, tables, bits, keys), device="cpu")


@pytest.mark.parametrize("n", [0, 1, 97, 3001])
def test_encode_equals_one_pass(n):
    rng = np.random.default_rng()
    d = int(rng.integers(1, 40))
    X = rng.standard_normal((n, d)) * 10.0 ** rng.integers(-3, 3, (n, d))
    X[rng.random((n, d)) < 0.1] = np.nan
    X[rng.random((n, d)) < 0.01] = 1e300                  # beyond fp32 after centring
    keys = rng.integers(0, 2**40, d)
    center = rng.standard_normal(d)
    seed, bits, tables = int(rng.integers(0, 2**31)), int(rng.integers(1, 16)), int(rng.integers(1, 5))
    got = cov.encode(X, keys, center, seed=seed, bits=bits, tables=tables, device="cpu")
    assert np.array_equal(got, encode_one_pass(X, keys, center, seed=seed, bits=bits, tables=tables))


def test_sketch_with_all_rows_equals_sketch_through_the_gather():
    rng = np.random.default_rng()

    def gathered(name, col, config, kind):
        return dataclasses.replace(Q.quantize_column(name, col, config, kind), all_rows=False)

    for n in (1, 7, 501, 2 * Q.CHUNK + 1):
        df = frame(rng, n)
        cfg = SketchConfig(seed=int(rng.integers(0, 2**31)))
        m = int(rng.integers(1, max(2, math.isqrt(n) + 2)))
        fast = build_sketch(df, cfg, partition_size=m, device="cpu")
        slow = build_sketch(df, cfg, partition_size=m, device="cpu", quantize=gathered)
        assert fast.to_bytes() == slow.to_bytes()


@pytest.mark.parametrize("n", [0, 1, 2, 97, 5001])
@pytest.mark.parametrize("bits", [1, 4, 12, 20, 30])
def test_code_counts_equal_unique(n, bits):
    """code_counts (cells counted by bincount when they are few) against np.unique of the keys."""
    from fitsketch.kernels.rowcodes import code_counts, narrow_counts

    rng = np.random.default_rng()
    T = int(rng.integers(1, 9))
    codes = rng.integers(0, 2 ** bits, (T, n)) >> int(rng.integers(0, bits + 1))   # sometimes few codes
    key = np.arange(T, dtype=np.int64).reshape(-1, 1) * (1 << 32) + codes
    uniq, cnt = np.unique(key.reshape(-1), return_counts=True)
    got = code_counts(codes)
    assert np.array_equal(got["table"], (uniq >> 32)) and np.array_equal(got["code"], uniq & 0xFFFFFFFF)
    assert np.array_equal(got["count"], cnt) and got["count"].dtype == narrow_counts(cnt).dtype
    assert got["table"].dtype == (np.uint8 if T <= 256 else np.uint16)
    assert got["code"].dtype == (np.uint16 if n == 0 or int(codes.max()) < (1 << 16) else np.uint32)


def aligned_reference(hist, feat_map, n_aligned, per_dataset, n_partitions):
    """partitions.aligned_distributions as it was: the (row, feature) totals by np.unique's ranks."""
    feat = np.asarray(hist["feat"], dtype=np.int64)
    keep = feat_map[feat] >= 0 if len(feat) else np.zeros(0, dtype=bool)
    j = feat_map[feat[keep]].astype(np.int64)
    bucket = np.asarray(hist["bucket"], dtype=np.int64)[keep]
    count = np.asarray(hist["count"], dtype=np.float64)[keep]
    row = np.zeros(len(j), dtype=np.int64) if per_dataset else np.asarray(hist["part"], dtype=np.int64)[keep]
    key = (j << 32) + (bucket + (1 << 31))
    if per_dataset and len(key):
        key, inv = np.unique(key, return_inverse=True)
        count = np.bincount(inv, weights=count, minlength=len(key))
        row, j = np.zeros(len(key), dtype=np.int64), key >> 32
    rf = row * max(n_aligned, 1) + j
    uniq_rf, inv_rf = np.unique(rf, return_inverse=True)
    totals = np.bincount(inv_rf, weights=count, minlength=len(uniq_rf))
    return row, key, count / totals[inv_rf] / max(n_aligned, 1)


@pytest.mark.parametrize("n", [0, 1, 7, 97, 5001])
def test_aligned_distributions_equal_reference(n):
    from fitsketch.partitions import aligned_distributions

    rng = np.random.default_rng()
    n_feat, n_parts = int(rng.integers(1, 20)), int(rng.integers(1, 300))
    hist = {"part": np.sort(rng.integers(0, n_parts, n)).astype(np.int32),
            "feat": rng.integers(0, n_feat, n).astype(np.int32),
            "bucket": rng.integers(-2**31, 2**31, n).astype(np.int32) if n % 2 else rng.integers(-50, 50, n).astype(np.int32),
            "count": rng.integers(1, 2**32, n, dtype=np.int64).astype(np.uint32)}
    feat_map = np.where(rng.random(n_feat) < 0.2, -1, rng.permutation(n_feat)).astype(np.int64)
    for per_dataset in (False, True):
        got = aligned_distributions(hist, feat_map, n_feat, per_dataset=per_dataset, n_partitions=n_parts)
        row, key, value = aligned_reference(hist, feat_map, n_feat, per_dataset, n_parts)
        assert np.array_equal(got.row, row) and np.array_equal(got.key, key)
        assert got.value.dtype == np.float64 and np.array_equal(got.value, value)
