"""The compiled passes of an add (kernels/ingest.py, issue 21) against the paths they replace, on
fresh random inputs, exactly (every key, every float64 bit, every byte of the sketch):

* ``numeric_quantize`` (|v|'s logarithm, both keys and the distinct fine keys in one pass) against
  ``quantize.numeric_keys_reference`` at random accuracies (tiny ones push keys out of the
  kernel's bitmap window, onto the zero key);
* ``quantize_column`` of numeric columns (strided, float32, int, all-infinite) with and without it;
* ``coverage.row_matrix`` (``numeric_rows`` and ``hashed_rows_at`` writing into X) against the
  NumPy paths, around the kernel's block of 512 rows;
* ``pair_counts`` (``sketch.partition_counts``) against ``np.unique`` of the pairs;
* ``csr_proj`` (the JS-LSH keys' sparse projections, profiles._sparse_keys) against scipy's product,
  bit for bit, on both of its loops (AVX2 and portable), and a bulk add's profile records with and without it;
* ``agg_cells`` (profiles._aggregate's dataset-level cells) and ``part_shares`` (profiles.records'
  partition-level values) against their NumPy paths on random batches, bit for bit;
* ``band_runs`` (each entry's distinct LSH band keys, parts.Bands) against feature_band_keys + Bands._keys,
  with empty features, repeated rows and many equal keys;
* ``hist_runs`` (partitions.pack_hists' batch arrays) against partitions._hist_arrays, with empty sketches,
  long gaps, large counts and int32 extremes;
* ``hist_check`` (check_sketch's histogram tests in one pass) against each test written in NumPy,
  and check_sketch's error with and without it, on sorted, shuffled and out-of-range histograms;
* whole sketches: ``Sketch.to_bytes()`` (what a hub stores) with the kernels, without them, and
  without any compiled kernel.

The logarithm kernels run only where the C library's log / log1p give NumPy's results; that is
checked on fresh random values here too.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from fitsketch import coverage as cov
from fitsketch import quantize as Q
from fitsketch import sketch as S
from fitsketch.config import SketchConfig
from fitsketch.kernels import ingest
from fitsketch.kernels import rowcodes as R

SIZES = [0, 1, 2, 7, 97, 511, 512, 513, 1025, 3001]
needs_libm = pytest.mark.skipif(not ingest.enabled(), reason="the compiled ingest kernels do not run here")
needs_c = pytest.mark.skipif(ingest._c is None, reason="no compiled kernel")


def wild(rng, n: int) -> np.ndarray:
    x = rng.standard_normal(n) * 10.0 ** rng.integers(-300, 300, n)
    dec = rng.random(n) < 0.3                           # data-like decimals
    x[dec] = np.round(rng.normal(0, 5, int(dec.sum())), 3)
    for value, share in ((np.nan, 0.05), (np.inf, 0.02), (-np.inf, 0.02), (0.0, 0.05), (-0.0, 0.02),
                         (1e-10, 0.02), (1e-9, 0.01), (1e308, 0.01), (-1e300, 0.01), (5e-324, 0.01)):
        x[rng.random(n) < share] = value
    x[:1] = rng.standard_normal(min(n, 1))             # never all NaN (a column without values is refused)
    return x


@pytest.fixture
def no_kernels(monkeypatch):
    """Switch the compiled ingest passes off (their callers take the paths they replaced)."""
    def off():
        monkeypatch.setattr(ingest, "_c", None)
    return off


@needs_libm
def test_libm_gives_numpys_logarithms_on_fresh_values(rng):
    """The premise of the kernels, on values the probe never saw: random binades and data-like decimals."""
    n = 20000
    x = np.concatenate([np.ldexp(rng.uniform(1, 2, n), rng.integers(-1074, 1024, n)),
                        np.abs(np.round(rng.normal(0, 10, n), int(rng.integers(0, 6)))),
                        rng.uniform(0, 3, n)])
    out = np.empty_like(x)
    with np.errstate(divide="ignore"):
        for which, fn in ((0, np.log), (1, np.log1p)):
            ingest._c.libm_apply(x, out, which)
            assert np.array_equal(out.view(np.int64), fn(x).view(np.int64))


def test_probe_covers_every_binade():
    p = ingest.probe_values()
    e = np.frexp(p[np.isfinite(p) & (p > 0)])[1]
    assert set(range(-1073, 1025)) <= set(e.tolist())
    assert np.isnan(p).any() and np.isinf(p).any() and (p == 0).any()


@needs_libm
@pytest.mark.parametrize("n", SIZES)
def test_numeric_quantize_equals_reference(rng, n):
    for v in (wild(rng, n), np.round(rng.normal(0, 3, n), 2), np.full(n, np.nan), rng.standard_normal(n)):
        for acc, hacc in ((float(rng.uniform(0.001, 0.2)), float(rng.uniform(0.01, 0.3))),
                          (float(10.0 ** rng.uniform(-7, -5)), float(rng.uniform(0.5, 0.99)))):
            lgs = [np.log((1.0 + a) / (1.0 - a)) for a in (acc, hacc)]
            fines, coarse, n_nan, n_fin = ingest.numeric_quantize(v, lgs[0], lgs[1], Q.MIN_ABS, float(Q.BIAS),
                                                                  Q.NAN_KEY, Q.POS_INF_KEY, Q.NEG_INF_KEY)
            ref_fine = Q.numeric_keys_reference(v, acc)[~np.isnan(v)]
            assert fines.dtype == np.int64 and len(fines) == len(set(fines.tolist()))
            assert np.array_equal(np.sort(fines), np.unique(ref_fine))
            assert coarse.dtype == np.int32
            assert np.array_equal(coarse, Q.numeric_keys_reference(v, hacc).astype(np.int32))
            assert n_nan == int(np.isnan(v).sum()) and n_fin == int(np.isfinite(v).sum())


@needs_libm
def test_numeric_quantize_reaches_the_zero_key_from_a_bucket():
    """At accuracy ~1e-6 the bucket k = -BIAS has key 0, the key of |v| <= MIN_ABS: one key, once."""
    acc = 1e-6
    lg = np.log((1.0 + acc) / (1.0 - acc))
    v = np.array([np.exp(-Q.BIAS * lg) * 0.9999999, 0.0, -np.exp(-Q.BIAS * lg) * 0.9999999, 1e-12])
    fines, coarse, _, _ = ingest.numeric_quantize(v, lg, lg, Q.MIN_ABS, float(Q.BIAS), Q.NAN_KEY, Q.POS_INF_KEY,
                                                  Q.NEG_INF_KEY)
    ref = Q.numeric_keys_reference(v, acc)
    assert (ref == 0).sum() >= 2
    assert np.array_equal(np.sort(fines), np.unique(ref)) and np.array_equal(coarse, ref.astype(np.int32))


@needs_libm
def test_numeric_quantize_one_key_from_both_signs():
    """At accuracy 1e-6, +1.0 (k = 0) and a negative value with k = -2 BIAS share the key BIAS (the
    reference's keys collide): the kernel's bitmap and set must hold it once."""
    acc = 1e-6
    lg = np.log((1.0 + acc) / (1.0 - acc))
    neg = -np.exp(-2 * Q.BIAS * lg) * (1 - 1e-9)
    v = np.array([1.0, neg, neg * 0.999, 1.0001])
    ref = Q.numeric_keys_reference(v, acc)
    assert ref[0] == ref[1] == Q.BIAS
    fines, coarse, _, _ = ingest.numeric_quantize(v, lg, lg, Q.MIN_ABS, float(Q.BIAS), Q.NAN_KEY, Q.POS_INF_KEY,
                                                  Q.NEG_INF_KEY)
    assert len(fines) == len(set(fines.tolist())) and np.array_equal(np.sort(fines), np.unique(ref))


def _numeric_frame(rng, n):
    block = wild(rng, 3 * n).reshape(n, 3)
    block[:1] = rng.standard_normal((min(n, 1), 3))     # every column holds a value
    df = pd.DataFrame(block, columns=["a", "b", "c"])                 # a 2-D block: strided columns
    df["f32"] = rng.standard_normal(n).astype(np.float32)
    df["i"] = rng.integers(-10**12, 10**12, n)
    df["inf"] = np.where(rng.random(n) < 0.5, np.inf, -np.inf)
    df["u8"] = rng.integers(0, 255, n).astype(np.uint8)
    return df


@pytest.mark.parametrize("n", [1, 2, 97, 513, 3001])
def test_numeric_columns_equal_without_the_kernel(rng, n, no_kernels):
    df = _numeric_frame(rng, n)
    cfg = SketchConfig(seed=int(rng.integers(0, 2**31)), accuracy=float(rng.uniform(0.001, 0.1)))
    fast = [Q.quantize_column(c, df[c], cfg, "numeric") for c in df.columns]
    no_kernels()
    for c, got in zip(df.columns, fast):
        ref = Q.quantize_column(c, df[c], cfg, "numeric")
        for f in dataclasses.fields(ref):
            a, b = getattr(got, f.name), getattr(ref, f.name)
            if isinstance(a, np.ndarray):
                assert a.dtype == b.dtype and np.array_equal(a, b), (c, f.name)
            else:
                assert type(a) is type(b) and (a == b or (a != a and b != b)), (c, f.name, a, b)


def test_an_all_nan_numeric_column_is_refused_with_and_without_the_kernel(no_kernels):
    for off in (False, True):
        if off:
            no_kernels()
        for n in (0, 1, 513):
            with pytest.raises(Q.EmptyColumnError):
                Q.quantize_column("x", pd.Series(np.full(n, np.nan)), SketchConfig(), "numeric")


def _mixed_frame(rng, n):
    df = _numeric_frame(rng, n)
    cat = np.array(["a", "b c", None, "d", "Émile"], dtype=object)[rng.integers(0, 5, n)]
    cat[:1] = "a"                                        # every column holds a value
    df["cat"] = cat
    df["txt"] = [None if i and rng.random() < 0.1 else f"w{k} v{k % 7} u_{k % 3}"
                 for i, k in enumerate(rng.integers(0, 50, n))]
    df["flag"] = rng.random(n) < 0.5
    return df, ["numeric"] * 7 + ["categorical", "text", "numeric"]


@pytest.mark.parametrize("n", SIZES)
def test_row_matrix_equals_without_the_kernel(rng, n, no_kernels):
    df, kinds = _mixed_frame(rng, n)
    seed = int(rng.integers(0, 2**31))
    X, keys, owner = cov.row_matrix(df, kinds, seed)
    no_kernels()
    X0, keys0, owner0 = cov.row_matrix(df, kinds, seed)
    nan = np.isnan(X0)
    assert np.array_equal(np.isnan(X), nan)
    assert np.array_equal(X[~nan].view(np.int64), X0[~nan].view(np.int64))      # bit for bit, signs of zero too
    assert np.array_equal(keys, keys0) and owner == owner0


@needs_c
@pytest.mark.parametrize("n", SIZES)
def test_pair_counts_equal_unique(rng, n):
    n_rows = int(rng.integers(1, 2 * n + 2))
    n_parts = int(rng.integers(1, n_rows + 1))
    part = rng.integers(0, n_parts, n_rows)
    rows = rng.integers(0, n_rows, n)
    for bucket in (rng.integers(-3, 4, n), rng.integers(-2**31, 2**31, n),
                   np.where(rng.random(n) < 0.5, 1, -1) * (Q.BIAS + rng.integers(-50, 50, n))):
        bucket = bucket.astype(np.int32)
        for r in (rows, None if n == n_rows else rows):
            p = part[r] if r is not None else part
            key = p.astype(np.int64) * (1 << 32) + (bucket.astype(np.int64) + (1 << 31))
            uk, cnt = np.unique(key, return_counts=True)
            want = ((uk >> 32).astype(np.int32), ((uk & 0xFFFFFFFF) - (1 << 31)).astype(np.int32), cnt.astype(np.uint32))
            got = ingest.pair_counts(part, r, bucket, n_parts, 1 << 40)
            for g, w in zip(got, want):
                assert g.dtype == w.dtype and np.array_equal(g, w)
            assert S.partition_counts(part, bucket, n_parts, rows=r) is not None
            for g, w in zip(S.partition_counts(part, bucket, n_parts, rows=r), want):
                assert g.dtype == w.dtype and np.array_equal(g, w)
            if n:
                assert ingest.pair_counts(part, r, bucket, n_parts, n_parts * len(np.unique(bucket)) - 1) is None


@needs_c
def test_pair_counts_refuse_out_of_range_rows_and_parts():
    part, bucket = np.array([0, 1, 1]), np.array([5, 6, 7], dtype=np.int32)
    with pytest.raises(ValueError):
        ingest.pair_counts(part, None, bucket, 1, 100)
    with pytest.raises(ValueError):
        ingest.pair_counts(part, np.array([0, 3, 1]), bucket, 2, 100)
    with pytest.raises(ValueError):
        ingest.pair_counts(part, None, bucket[:2], 2, 100)


@pytest.mark.parametrize("n", [1, 7, 513, 3001])
def test_sketch_bytes_equal_without_the_kernels(rng, n, no_kernels, monkeypatch):
    """What a hub stores of the data: the same bytes with the new passes, without them, and without
    any compiled kernel (NumPy only)."""
    df, kinds = _mixed_frame(rng, n)
    cfg = SketchConfig(seed=int(rng.integers(0, 2**31)))
    m = int(rng.integers(1, 60))
    fast = S.build_sketch(df, cfg, partition_size=m, device="cpu")
    no_kernels()
    assert S.build_sketch(df, cfg, partition_size=m, device="cpu").to_bytes() == fast.to_bytes()
    for mod in (Q, cov, R):
        monkeypatch.setattr(mod, "_c", None)
    slow = S.build_sketch(df, cfg, partition_size=m, device="cpu")
    assert slow.to_bytes() == fast.to_bytes()
    nan = np.isnan(slow.rows)
    assert np.array_equal(np.isnan(fast.rows), nan) and np.array_equal(fast.rows[~nan], slow.rows[~nan])


def _codes_one_product(Z, a):
    """Codes as one (T*B, n) product and NumPy's sign packing (what the blocked paths replace)."""
    T, B, d = a.shape
    proj = a.reshape(T * B, d) @ Z.T
    out = np.zeros((T, Z.shape[0]), dtype=np.int64)
    for t in range(T):
        for j in range(B):
            out[t] |= (proj[t * B + j] > 0).astype(np.int64) << j
    return out


@pytest.mark.parametrize("n", [0, 1, 97, R.ROW_BLOCK - 1, 2 * R.ROW_BLOCK + 7, 3 * R.ROW_BLOCK + 1])
def test_blocked_centred_codes_equal_one_product(rng, n):
    """coverage's codes with each block of rows centred into one reused buffer and multiplied into
    another, against the centred fp32 matrix multiplied at once."""
    d = int(rng.integers(1, 12))
    X = rng.standard_normal((n, d)) * 10.0 ** rng.integers(-3, 3, (n, d))
    X[rng.random((n, d)) < 0.1] = np.nan
    X[rng.random((n, d)) < 0.01] = 1e300
    center = rng.standard_normal(d)
    seed, bits, tables = int(rng.integers(0, 2**31)), int(rng.integers(1, 16)), int(rng.integers(1, 5))
    a = R.hyperplanes(seed, tables, bits, rng.integers(0, 2**40, d))
    Z = R.centered_f32_numpy(X, center)
    want = _codes_one_product(Z, a)
    got = R.row_codes_centered(X, center, a, device="cpu")
    assert np.array_equal(got, want)
    assert np.array_equal(cov.encode(X, np.zeros(d, np.int64), center, seed=seed, bits=bits, tables=tables,
                                     device="cpu"), R.row_codes(Z, R.hyperplanes(seed, tables, bits, np.zeros(d, np.int64)),
                                                                device="cpu"))
    if n:
        counts = R.code_counts(got)
        key = np.arange(tables, dtype=np.int64).reshape(-1, 1) * (1 << 32) + want
        uniq, cnt = np.unique(key.reshape(-1), return_counts=True)
        assert np.array_equal(counts["table"], uniq >> 32) and np.array_equal(counts["code"], uniq & 0xFFFFFFFF)
        assert np.array_equal(counts["count"], cnt)


@needs_c
def test_hashed_rows_at_refuses_columns_outside_x(rng):
    """The C function's own bounds (the wrapper passes valid columns): a column past ``d - 8``,
    including one so large that ``col + 8`` overflows (review, sixth session: it wrote outside X),
    raises and writes nothing; the last valid column writes exactly columns ``col .. col + 7``."""
    n, d = int(rng.integers(1, 40)), int(rng.integers(8, 20))
    m = int(rng.integers(1, 60))                       # (row, hash) of each hashed item
    rows = np.sort(rng.integers(0, n, m)).astype(np.int64)
    h = rng.integers(0, 1 << 63, m, dtype=np.int64).astype(np.uint64)
    X = np.zeros((n, d))
    for col in (d - 7, d, 1 << 62, (1 << 63) - 1, -1):
        with pytest.raises((ValueError, OverflowError)):
            ingest._c.hashed_rows_at(rows, h, X, n, d, col)
        assert not X.any()
    assert ingest.hashed_rows_at(rows, h, X, d - 8)
    assert not X[:, :d - 8].any() and X[np.unique(rows), d - 8:].any()


@needs_libm
def test_misaligned_columns_give_the_aligned_results(rng):
    """A float64 column at an odd byte offset (a view into a byte buffer) is read as the aligned copy
    is: the wrappers hand the kernels aligned memory."""
    n = int(rng.integers(1, 700))
    v = wild(rng, n)
    buf = np.zeros(n * 8 + 1, dtype=np.uint8)
    mis = buf[1:].view(np.float64)
    mis[:] = v
    assert not mis.flags.aligned
    args = (0.01, 0.1, 1e-9, 0.0, -1, -2, -3)
    a, b = ingest.numeric_quantize(mis, *args), ingest.numeric_quantize(v.copy(), *args)
    assert np.array_equal(np.sort(a[0]), np.sort(b[0])) and np.array_equal(a[1], b[1]) and a[2:] == b[2:]
    X1, X2 = np.zeros((n, 3)), np.zeros((n, 3))
    assert ingest.numeric_rows([mis], [1], X1) and ingest.numeric_rows([v.copy()], [1], X2)
    assert np.array_equal(X1.view(np.int64), X2.view(np.int64))


def _hist_reference(part, feat, bucket, count, n_parts: int, n_feats: int) -> int:
    """The bits ``hist_check`` sets, each test in NumPy."""
    if not len(part):
        return 0
    rng_bad = bool((part < 0).any() or (part >= n_parts).any() or (feat < 0).any() or (feat >= n_feats).any())
    key = [a.astype(np.int64) for a in (part, feat, bucket)]
    lex = np.lexsort(key[::-1])          # strictly increasing <=> sorted and no two equal
    order_bad = bool((lex != np.arange(len(part))).any()) or bool(
        ((np.diff(key[0]) == 0) & (np.diff(key[1]) == 0) & (np.diff(key[2]) == 0)).any())
    return int(rng_bad) | int(bool((count == 0).any())) << 1 | int(order_bad) << 2


def _random_hist(rng, n: int, n_parts: int, n_feats: int):
    """A valid histogram of ``n`` non-zeros at most (sorted, unique), as build_sketch makes it."""
    key = np.unique(rng.integers(0, n_parts * n_feats * 64, n))
    part, rest = np.divmod(key, n_feats * 64)
    feat, bucket = np.divmod(rest, 64)
    b = bucket - 32                                  # -32 .. 31, spread by a strictly increasing map to int32's ends
    bucket = np.where(b == -32, -2**31, np.where(b == 31, 2**31 - 1, np.where(b >= 16, b << 20, b)))
    return (part.astype(np.int32), feat.astype(np.int32), bucket.astype(np.int32),
            rng.integers(1, 2**32, len(key), dtype=np.uint64).astype(np.uint32))


@needs_c
@pytest.mark.parametrize("n", SIZES)
def test_hist_check_equals_reference(rng, n):
    for trial in range(12):
        n_parts, n_feats = int(rng.integers(1, 40)), int(rng.integers(1, 70))
        part, feat, bucket, count = (a.copy() for a in _random_hist(rng, n, n_parts, n_feats))
        m = len(part)
        if m and trial % 4 == 1:       # one or two elements moved or repeated
            i, j = rng.integers(0, m, 2)
            for a in (part, feat, bucket):
                a[i] = a[j]
            if rng.random() < 0.5:
                bucket[i] += int(rng.integers(-2, 3))
        if m and trial % 4 == 2:       # out of range: negative or past the end, in part or feat
            i = int(rng.integers(0, m))
            (part if rng.random() < 0.5 else feat)[i] = rng.choice([-1, n_parts, n_feats, 2**31 - 1, -2**31])
        if m and trial % 4 == 3:
            count[int(rng.integers(0, m))] = 0
        want = _hist_reference(part, feat, bucket, count, n_parts, n_feats)
        assert trial % 4 or want == 0      # the untouched ones are valid
        assert ingest.hist_check(part, feat, bucket, count, n_parts, n_feats) == want
        # strided views and the largest n_partitions (an int64 beyond int32) take the same path
        assert ingest.hist_check(part[::1], feat, bucket, count, 1 << 40, n_feats) == want & ~1 | _hist_reference(
            part, feat, bucket, count, 1 << 40, n_feats) & 1


@needs_c
def test_hist_check_declines_other_dtypes_and_lengths():
    a = np.arange(5, dtype=np.int32)
    c = np.ones(5, dtype=np.uint32)
    assert ingest.hist_check(a.astype(np.int64), a, a, c, 9, 9) is None
    assert ingest.hist_check(a, a, a, c.astype(np.int32), 9, 9) is None
    assert ingest.hist_check(a, a, a[:4], c, 9, 9) is None
    assert ingest.hist_check(a, a, a, c, 9, 9) == 0
    with pytest.raises(ValueError):
        ingest._c.hist_check(a, a, a, c, 6, 9, 9)


@pytest.mark.parametrize("case", ["ok", "unsorted", "repeat", "part", "feat", "negative", "zero", "int64"])
def test_check_sketch_says_the_same_with_and_without_the_kernel(rng, case, no_kernels):
    cfg = SketchConfig()
    X = pd.DataFrame({"a": rng.normal(size=300), "b": rng.integers(0, 9, 300), "c": rng.normal(size=300)})
    sk = S.build_sketch(X, cfg, partition_size=50)
    h = {k: v.copy() for k, v in sk.hist.items()}
    m = len(h["part"])
    i = int(rng.integers(1, m - 1))
    if case == "unsorted":
        h["bucket"][[i, i + 1]] = h["bucket"][[i + 1, i]]
        h["part"][[i, i + 1]] = h["part"][[i + 1, i]]
        h["feat"][[i, i + 1]] = h["feat"][[i + 1, i]]
    elif case == "repeat":
        for k in ("part", "feat", "bucket"):
            h[k][i] = h[k][i - 1]
    elif case == "part":
        h["part"][i] = sk.n_partitions
    elif case == "feat":
        h["feat"][i] = len(sk.names)
    elif case == "negative":
        h["feat"][0] = -1
    elif case == "zero":
        h["count"][i] = 0
    elif case == "int64":          # another dtype: the NumPy tests alone
        h = {k: v.astype(np.int64) for k, v in h.items()}
        h["part"][i] = sk.n_partitions
    sk = dataclasses.replace(sk, hist=h)

    def said():
        try:
            S.check_sketch(sk, cfg)
        except Exception as e:
            return type(e), str(e)
        return None

    with_kernel = said()
    no_kernels()
    assert said() == with_kernel
    assert (with_kernel is None) == (case == "ok")


def test_check_sketch_columns_memo_refuses_what_the_checks_refuse(rng):
    """The names that passed are looked up, not checked again: equal names of another type, a repeat,
    a lone surrogate and kinds that are not kinds are refused every time, before and after a pass."""
    cfg = SketchConfig()
    X = pd.DataFrame({"a": rng.normal(size=200), "b": rng.normal(size=200)})
    sk = S.build_sketch(X, cfg, partition_size=50)
    S._COLUMNS_OK.clear()

    class Name(str):
        pass

    bad_columns = [([Name("a"), "b"], None), (["a", "a"], None), (["a", "\ud800"], None), (["a", ""], None),
                   (None, ["numeric", ["numeric"]]), (None, ["numeric", "blob"]), (["a"], None)]
    for attempt in range(2):       # before the schema passed, and after (looked up)
        for names, kinds in bad_columns:
            bad = dataclasses.replace(sk, names=list(names or sk.names), kinds=list(kinds or sk.kinds))
            with pytest.raises(S.InvalidArgumentError, match="sketch is malformed"):
                S.check_sketch(bad, cfg)
        S.check_sketch(sk, cfg)
        assert tuple(sk.names) in S._COLUMNS_OK


def _random_csr(rng, n_rows: int, n_cols: int, density: float):
    counts = rng.binomial(n_cols, density, n_rows) if n_cols else np.zeros(n_rows, dtype=np.int64)
    counts[rng.random(n_rows) < 0.2] = 0                      # empty rows
    indices = np.concatenate([np.sort(rng.choice(n_cols, c, replace=False)) for c in counts]) if n_rows else []
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    data = np.sqrt(rng.random(len(indices))).astype(np.float32) * np.float32(10.0) ** rng.integers(-3, 3, len(indices))
    return indptr, np.asarray(indices, dtype=np.int64), data.astype(np.float32)


@needs_c
@pytest.mark.parametrize("h", [0, 1, 7, 63, 64, 65, 128, 200, 512])
def test_csr_proj_equals_scipy_bit_for_bit(rng, h):
    from scipy import sparse

    for n_rows, n_cols in ((0, 5), (1, 1), (3, 0), (17, 40), (40, 300)):
        indptr, indices, data = _random_csr(rng, n_rows, n_cols, 0.3)
        a = rng.standard_normal((n_cols, h)).astype(np.float32)
        want = sparse.csr_matrix((data, indices, indptr), shape=(n_rows, n_cols)) @ a
        for scalar in (False, True):
            got = ingest.csr_proj(indptr, indices, data, a, scalar=scalar)
            assert got.dtype == np.float32 and got.shape == (n_rows, h)
            assert np.array_equal(got.view(np.uint32), np.asarray(want, dtype=np.float32).view(np.uint32))


@needs_c
@pytest.mark.parametrize("h,cols", [(65, 64), (128, 64), (200, 64), (300, 128), (512, 128)])
def test_csr_proj_in_column_blocks_equals_scipy(rng, monkeypatch, h, cols):
    """A projection matrix over ``CP_SPLIT_BYTES`` is multiplied ``CP_COLS`` columns at a time (the last
    block narrower where ``h`` is not a multiple): still scipy's product bit for bit (the limit lowered
    here so small matrices take that path)."""
    from scipy import sparse

    monkeypatch.setattr(ingest, "CP_SPLIT_BYTES", 0)
    monkeypatch.setattr(ingest, "CP_COLS", cols)
    for n_rows, n_cols in ((0, 5), (1, 1), (3, 0), (17, 40), (40, 300)):
        indptr, indices, data = _random_csr(rng, n_rows, n_cols, 0.3)
        a = rng.standard_normal((n_cols, h)).astype(np.float32)
        want = np.asarray(sparse.csr_matrix((data, indices, indptr), shape=(n_rows, n_cols)) @ a, dtype=np.float32)
        for scalar in (False, True):
            got = ingest.csr_proj(indptr, indices, data, a, scalar=scalar)
            assert got.dtype == np.float32 and got.shape == (n_rows, h)
            assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


@needs_c
def test_csr_proj_refuses_what_is_out_of_range(rng):
    a = rng.standard_normal((4, 64)).astype(np.float32)
    out = np.empty((2, 64), np.float32)
    ok = (np.array([0, 1, 2]), np.array([0, 3]), np.ones(2, np.float32))
    ingest._c.csr_proj(*ok, a, out, 2, 4, 64)
    for indptr, indices in ((np.array([0, 1, 2]), np.array([0, 4])), (np.array([0, 1, 2]), np.array([-1, 0])),
                            (np.array([0, 2, 1]), np.array([0, 1])), (np.array([1, 1, 2]), np.array([0, 1])),
                            (np.array([0, 1, 3]), np.array([0, 1]))):
        with pytest.raises(ValueError):
            ingest._c.csr_proj(indptr.astype(np.int64), indices.astype(np.int64), np.ones(2, np.float32), a, out, 2, 4, 64)
    with pytest.raises(ValueError):     # out of another shape
        ingest._c.csr_proj(*ok, a, np.empty((2, 63), np.float32), 2, 4, 64)
    assert ingest.csr_proj(ok[0], ok[1], ok[2].astype(np.float64), a) is None


def test_profile_records_equal_without_the_projection_kernel(rng, monkeypatch):
    """A bulk add's profile and JS-LSH key records: the same bytes with the compiled projections and
    with scipy's product."""
    from fitsketch import profiles
    from fitsketch.storage import pack

    cfg = SketchConfig()
    frames = [pd.DataFrame(rng.normal(size=(int(rng.integers(60, 400)), int(rng.integers(1, 9)))) * rng.uniform(0.5, 3))
              for _ in range(7)]
    sks = [S.build_sketch(f.rename(columns=str), cfg, partition_size=50) for f in frames]
    with_kernel = [pack(r) for rec in profiles.records(sks, cfg, "cpu") for r in rec]
    monkeypatch.setattr(ingest, "_c", None)
    assert [pack(r) for rec in profiles.records(sks, cfg, "cpu") for r in rec] == with_kernel


def _numpy_cells(lens, feat, bucket, count):
    """profiles._aggregate's NumPy path: (d_of, ukey, d_count)."""
    from fitsketch import profiles

    return profiles._cells(np.repeat(np.arange(len(lens), dtype=np.int64), lens), feat, bucket, count)


@needs_c
@pytest.mark.parametrize("n", SIZES)
def test_agg_cells_equal_numpy(rng, n):
    for trial in range(6):
        m = int(rng.integers(1, 12))
        lens = rng.multinomial(n, np.ones(m) / m).astype(np.int64)
        lens[rng.random(m) < 0.2] = 0
        n_ = int(lens.sum())
        parts = []
        for ln in lens:     # a sketch: sorted partitions (runs) of (feat, bucket), or any order (trial 5)
            p = np.sort(rng.integers(0, max(1, int(rng.integers(1, 12))), ln))
            f = rng.integers(0, [3, 1 << 16][trial % 2], ln)
            b = [rng.integers(-3, 4, ln), rng.integers(-2**31, 2**31, ln)][trial % 2]
            o = np.lexsort((b, f, p)) if trial != 5 else rng.permutation(ln)
            parts.append((f[o], b[o]))
        feat = np.concatenate([f for f, _ in parts]).astype(np.int64) if m else np.zeros(0, np.int64)
        bucket = np.concatenate([b for _, b in parts]).astype(np.int64)
        count = rng.integers(1, 2**32, n_).astype(np.float64) * rng.choice([1.0, 2.0**21], n_)   # sums that round
        got = ingest.agg_cells(lens, feat, bucket, count)
        want = _numpy_cells(lens, feat, bucket, count)
        for g, w in zip(got, want):     # (np.bincount of nothing is int64: the kernel's empty sums stay float64)
            assert (g.dtype == w.dtype or not len(w)) and np.array_equal(g, w)
        assert got[2].dtype == np.float64


@needs_c
def test_agg_cells_declines_what_the_keys_cannot_hold():
    lens = np.array([2], dtype=np.int64)
    ok = (np.array([0, 1], dtype=np.int64), np.array([5, -5], dtype=np.int64), np.ones(2))
    assert ingest.agg_cells(lens, *ok) is not None
    assert ingest.agg_cells(lens, np.array([0, 1 << 16], dtype=np.int64), ok[1], ok[2]) is None
    assert ingest.agg_cells(lens, ok[0], np.array([0, 2**31], dtype=np.int64), ok[2]) is None
    assert ingest.agg_cells(np.array([3], dtype=np.int64), *ok) is None
    assert ingest.agg_cells(lens, ok[0].astype(np.int32), ok[1], ok[2]) is None


@needs_c
@pytest.mark.parametrize("n", SIZES)
def test_part_shares_equal_numpy(rng, n):
    from fitsketch import profiles

    for trial in range(4):
        m = int(rng.integers(1, 9))
        e = np.sort(rng.integers(0, m, n)).astype(np.int64)
        prow = (e * 10 + rng.integers(0, [2, 10][trial % 2], n)).astype(np.int64)
        prow.sort()
        feat = rng.integers(0, [2, 40][trial % 2], n).astype(np.int64)
        if trial == 3:          # groups need not be sorted: runs are where (prow, feat) changes
            feat = rng.permutation(feat)
        count = rng.integers(1, 2**32, n).astype(np.float64) * rng.choice([1.0, 3.0 * 2.0**21], n)
        nf = rng.integers(1, 70, m).astype(np.float64)
        prun = profiles._runs(prow, feat) if n else np.zeros(0, np.int64)
        want = count / np.bincount(prun, weights=count)[prun] / nf[e] if n else count
        got = ingest.part_shares(prow, feat, count, e, nf)
        assert got.dtype == np.float64 and np.array_equal(got.view(np.uint64), want.view(np.uint64))
    with pytest.raises(ValueError):
        ingest._c.part_shares(*(np.zeros(2, np.int64),) * 2, np.ones(2), np.array([0, 1], np.int64), np.ones(1),
                              np.empty(2), 2, 1)


def _band_reference(sigs, lo, k, l):
    """parts.Bands' NumPy path (minhash.feature_band_keys, then Bands._keys) of each entry, the definition."""
    from fitsketch import parts as PT
    from fitsketch.minhash import feature_band_keys

    bands = feature_band_keys(sigs, k, l)
    return [PT.Bands._keys(bands[lo[i]:lo[i + 1]], np.nonzero(sigs[lo[i]:lo[i + 1], 0] != PT._EMPTY_SIG)[0])
            for i in range(len(lo) - 1)]


@needs_c
@pytest.mark.parametrize("k,l", [(1, 1), (4, 32), (3, 5), (2, 64)])
def test_band_runs_equals_the_numpy_keys(rng, k, l):
    """``band_runs`` (add_sketches' distinct band keys of a chunk's entries) gives Bands._keys' arrays
    exactly -- the keys ascending, each one's first row in (row, band) order, the dtypes -- for entries of
    0, 1 and odd numbers of rows, empty features (0xFFFFFFFF first), repeated rows and values that hash
    to many equal keys (the first occurrence kept), and 0xFFFFFFFF inside a row."""
    for _ in range(30):
        rows = rng.integers(0, 9, int(rng.integers(0, 6)))
        lo = np.concatenate([[0], np.cumsum(rows)]).astype(np.int64)
        n = int(lo[-1])
        sigs = rng.integers(0, 2**32, (n, k * l), dtype=np.uint64).astype(np.uint32)
        if n:
            small = rng.random(n) < 0.4                        # few distinct values: equal keys across bands / rows
            sigs[small] = rng.integers(0, 3, (int(small.sum()), k * l)).astype(np.uint32)
            sigs[rng.random(n) < 0.2, 0] = 0xFFFFFFFF          # empty features
            sigs[rng.random((n, k * l)) < 0.05] = 0xFFFFFFFF   # the empty value elsewhere in a row
            for r in np.flatnonzero(rng.random(n) < 0.2):      # a row repeating the one before
                if r:
                    sigs[r] = sigs[r - 1]
        got = ingest.band_runs(sigs, lo, k, l)
        want = _band_reference(sigs, lo, k, l)
        assert len(got) == len(want) == len(rows)
        for (gk, gf), (wk, wf) in zip(got, want):
            assert gk.dtype == wk.dtype == np.uint64 and gf.dtype == wf.dtype == np.uint32
            assert np.array_equal(gk, wk) and np.array_equal(gf, wf)


@needs_c
def test_band_runs_on_a_chunk_of_real_sketches_and_its_refusals(rng):
    """On the sketches of real frames (merged and not) ``band_runs`` equals the NumPy keys; shapes, dtypes and
    bounds it cannot take give None (the NumPy path) or ValueError, never a read out of bounds."""
    from fitsketch import parts as PT

    cfg = SketchConfig(seed=int(rng.integers(0, 2**31)))
    sks = [S.build_sketch(pd.DataFrame(rng.normal(size=(int(rng.integers(1, 300)), int(rng.integers(1, 6))))), cfg)
           for _ in range(6)]
    sigs = [s.signatures for s in sks]
    lo = np.cumsum([0] + [len(x) for x in sigs]).astype(np.int64)
    cat = np.concatenate(sigs)
    got = ingest.band_runs(cat, lo, cfg.lsh_k, cfg.lsh_l)
    for (gk, gf), (wk, wf) in zip(got, _band_reference(cat, lo, cfg.lsh_k, cfg.lsh_l)):
        assert np.array_equal(gk, wk) and np.array_equal(gf, wf)
    news = [PT.NewEntry(f"e{i}", s, {}) for i, s in enumerate(sks)]
    for (gk, gf), new in zip(PT.Bands().prepare_many(news, cfg, "cpu", {}), news):   # the part: kernel vs prepare
        wk, wf = PT.Bands().prepare(new, cfg, "cpu")
        assert np.array_equal(gk, wk) and np.array_equal(gf, wf)
    assert ingest.band_runs(cat.astype(np.int64), lo, cfg.lsh_k, cfg.lsh_l) is None
    assert ingest.band_runs(cat, lo, cfg.lsh_k + 1, cfg.lsh_l) is None
    keys, first, counts = np.empty(len(cat) * cfg.lsh_l, np.uint64), np.empty(len(cat) * cfg.lsh_l, np.uint32), \
        np.empty(len(lo) - 1, np.int64)
    for bad in (lo + 1, np.r_[lo[:-1], lo[-1] + 1], np.r_[lo[:1], lo[2:2], lo[1:]][::-1].copy()):
        if len(bad) == len(lo):
            with pytest.raises(ValueError):
                ingest._c.band_runs(cat, bad.astype(np.int64), cfg.lsh_k, cfg.lsh_l, keys, first, counts)
    with pytest.raises(ValueError):   # outputs too small for every key distinct
        ingest._c.band_runs(cat, lo, cfg.lsh_k, cfg.lsh_l, keys[:-1], first, counts)


@needs_c
def test_hist_runs_equals_the_numpy_arrays(rng):
    """``hist_runs`` gives partitions._hist_arrays' arrays exactly (values and dtypes): batches of 0-6
    sketches with no non-zero, one, gaps and counts around 255, buckets at int32's extremes; and refuses
    (ValueError) a descending ``e`` or a cell outside its sketch instead of writing out of bounds."""
    from fitsketch.partitions import _hist_arrays

    names = ("n_all", "b0", "g8", "xi", "xv", "c8", "cxi", "cxv", "lo", "s_lo", "g_lo", "gb_lo", "cb_lo")
    for _ in range(60):
        shapes = [(int(rng.integers(0, 5)), int(rng.integers(1, 7))) for _ in range(int(rng.integers(0, 7)))]
        es, ps, fs, bs, cs = [], [], [], [], []
        for i, (n_p, n_f) in enumerate(shapes):
            for p in range(n_p):
                for f in range(n_f):
                    if rng.random() < 0.4:
                        continue
                    k = int(rng.integers(1, 9))
                    pool = np.concatenate([np.arange(-300, 300), [-(2**31), 2**31 - 1, 254, 255, 256, 510]])
                    b = np.sort(rng.choice(pool, k, replace=False))
                    es += [i] * k; ps += [p] * k; fs += [f] * k; bs += b.tolist()
                    cs += rng.choice([1, 2, 254, 255, 256, 70_000, 2**32 - 1], k).tolist()
        e, part, feat, bucket = (np.array(x, dtype=np.int64) for x in (es, ps, fs, bs))
        count = np.array(cs, dtype=np.float64)
        n_f = np.array([s[1] for s in shapes], dtype=np.int64)
        c_off = np.concatenate([[0], np.cumsum([s[0] * s[1] for s in shapes])]).astype(np.int64)
        got = ingest.hist_runs(e, part, feat, bucket, count, n_f, c_off)
        want = _hist_arrays(e, part, feat, bucket, count, n_f, c_off)
        assert len(got) == len(want) == len(names)
        for k, g, w in zip(names, got, want):
            assert np.array_equal(g, w) and g.dtype == w.dtype, k
        if len(e):
            past = e.copy()
            past[-1] = len(shapes)                                  # a sketch that is not in the batch
            down = np.r_[e[1:], -1].astype(np.int64)                # descending at the end
            for bad in ((past, part, feat), (down, part, feat), (e, part, feat + 100), (e, part - 100, feat)):
                with pytest.raises(ValueError):
                    ingest.hist_runs(bad[0], bad[1], bad[2], bucket, count, n_f, c_off)
