# The compiled passes of an add (issue 21), kernels/_cminhash.c, with the checks that decide
# whether they may run. Each returns None when it cannot (no compiled kernel, or this machine's
# libm does not give NumPy's logarithms): the caller then takes its NumPy path, the definition.
#
# * numeric_quantize: a numeric column's histogram keys and distinct fine keys (quantize.py's
#   numeric_keys_at at two accuracies) with |v|'s logarithm taken in the same pass;
# * numeric_rows: coverage.py's numeric row transform sign(v) * log1p(min(|v|, 1e300)) of many
#   columns written into the row matrix block by block;
# * hashed_rows_at: a string column's hashed dimensions written into the row matrix;
# * take_rows_at: a categorical column's rows gathered from its per-category table into the row matrix;
# * pair_counts: sketch.py's partition_counts (occurrences per (partition, bucket));
# * sig_dictionary: signature_records.py's per-permutation dictionary of a signature matrix;
# * band_runs: each entry's distinct LSH band keys (engine/parts.py Bands), hashed and sorted in one pass;
# * hist_runs: partitions.pack_hists' batch arrays (cell counts, first buckets, gap / count bytes, exceptions).
#
# Bit for bit: NumPy's float64 log and log1p call the C library's functions unless it carries SIMD
# implementations of its own for the CPU (AVX-512 builds do), whose last bit can differ. The
# kernels call the C library's, so they run only after libm_agrees() found both give NumPy's
# results on a probe of values spread over every binade and the ranges data hold.
from __future__ import annotations

import functools

import numpy as np

try:  # built by `pip install` (setup.py; optional)
    from . import _cminhash as _c
    if not hasattr(_c, "pair_counts"):     # a kernel built before these were added
        _c = None
except ImportError:  # pragma: no cover - no C compiler when installed
    _c = None


def probe_values(rng: np.random.Generator | None = None) -> np.ndarray:
    """Positive float64 values on which the C library's log / log1p must give NumPy's results:
    every binade (normal and subnormal) at random mantissas, values near 1 (where log1p and log
    switch methods), tiny and huge ones, data-like rounded decimals, and 0 / inf / NaN."""
    rng = rng or np.random.default_rng(0x1F)
    mant = rng.uniform(1.0, 2.0, 24)
    exps = np.arange(-1074, 1024)
    grid = np.ldexp(mant[None, :], exps[:, None]).ravel()
    near1 = np.concatenate([1.0 + rng.uniform(-0.5, 1.0, 6000), rng.uniform(0.0, 4.0, 6000)])
    small = 10.0 ** rng.uniform(-30, 0, 4000)
    decimals = np.abs(np.round(rng.normal(0, 3, 6000) * 10.0 ** rng.integers(-3, 6, 6000), 4))
    special = np.array([0.0, 1e-9, 1e-10, 1e300, 1e308, np.finfo(np.float64).max, np.finfo(np.float64).tiny,
                        5e-324, 1.0, 2.0, 0.5, np.inf, np.nan])
    # round numbers, the values most often exactly on a log bucket's edge (a one-ulp difference in log
    # moves their key; review, sixth session): integers, powers of 2, 3 and 10, and powers of the
    # bucket ratio (1 + a) / (1 - a) at common accuracies
    with np.errstate(over="ignore"):
        ratios = [((1 + a) / (1 - a)) ** np.arange(-400.0, 401.0) for a in (0.5, 1 / 3, 0.1, 0.05, 0.01, 0.001)]
    rounds = np.concatenate([np.arange(1.0, 4097.0), 2.0 ** np.arange(-1074.0, 1024.0),
                             3.0 ** np.arange(-600.0, 600.0), 10.0 ** np.arange(-300.0, 301.0), *ratios])
    rounds = rounds[np.isfinite(rounds) & (rounds > 0)]
    out = np.concatenate([grid, near1, small, decimals, special, rounds])
    return out[np.isnan(out) | (out >= 0)]


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    nan = np.isnan(a)
    return bool(np.array_equal(nan, np.isnan(b)) and np.array_equal(a[~nan].view(np.int64), b[~nan].view(np.int64)))


@functools.lru_cache(maxsize=1)
def libm_agrees() -> bool:
    """Whether the compiled kernel's log and log1p give NumPy's float64 results bit for bit on
    :func:`probe_values` (checked once a process, ~2 ms)."""
    if _c is None:
        return False
    x = probe_values()
    out = np.empty_like(x)
    with np.errstate(divide="ignore", invalid="ignore"):
        for which, fn in ((0, np.log), (1, np.log1p)):
            _c.libm_apply(x, out, which)
            if not _same(out, fn(x)):
                return False
    return True


def enabled() -> bool:
    return _c is not None and libm_agrees()


def numeric_quantize(v: np.ndarray, lg_fine: float, lg_coarse: float, min_abs: float, bias: float,
                     nan_key: int, pos_inf_key: int, neg_inf_key: int):
    """``(fines, coarse, n_nan, n_finite)`` of float64 values ``v`` (1-D): the distinct fine keys
    (int64, unordered) of the non-NaN values and the coarse key of every value (int32), as
    quantize.numeric_keys_at gives them at log-bucket widths ``lg_fine`` / ``lg_coarse``; or None."""
    if not enabled() or v.ndim != 1:
        return None
    v = np.require(v, dtype=np.float64, requirements="CA")   # C order and aligned (the kernel reads doubles)
    n = len(v)
    coarse = np.empty(n, dtype=np.int32)
    fines = np.empty(n, dtype=np.int64)           # only the first m are written (pages never touched cost nothing)
    m, n_nan, n_fin = _c.numeric_quantize(v, lg_fine, lg_coarse, min_abs, bias, nan_key, pos_inf_key, neg_inf_key,
                                          coarse, fines)
    return fines[:m].copy(), coarse, n_nan, n_fin


def numeric_rows(columns: list, cols: list[int], X: np.ndarray) -> bool:
    """Write ``sign(v) * log1p(min(|v|, 1e300))`` of each float64 column ``columns[j]`` (n values)
    into column ``cols[j]`` of ``X`` (n, d) float64, C order. False (nothing written) when the
    kernel may not run."""
    if not enabled() or X.dtype != np.float64 or X.ndim != 2 or not X.flags.c_contiguous:
        return False
    columns = [np.require(c, dtype=np.float64, requirements="CA") for c in columns]
    _c.numeric_rows(columns, np.asarray(cols, dtype=np.int64), X, X.shape[0], X.shape[1])
    return True


def hashed_rows_at(rows: np.ndarray, h: np.ndarray, X: np.ndarray, col: int) -> bool:
    """A string column's 8 hashed dimensions (coverage.column_block's) written into columns
    ``col .. col + 7`` of ``X``; False (nothing written) without the kernel."""
    if _c is None or X.dtype != np.float64 or X.ndim != 2 or not X.flags.c_contiguous:
        return False
    _c.hashed_rows_at(np.require(rows, dtype=np.int64, requirements="CA"), np.require(h, dtype=np.uint64, requirements="CA"), X,
                      X.shape[0], X.shape[1], int(col))
    return True


def take_rows_at(table: np.ndarray, codes: np.ndarray, X: np.ndarray, col: int) -> bool:
    """``X[:, col:col + w] = np.take(table, codes, axis=0, mode="wrap")`` for a (k, w) float64 ``table``
    and int64 ``codes`` in [-1, k) (-1: the table's last row) without the (n, w) temporary; False
    (nothing written) without the kernel or when ``X`` is not a C-ordered float64 matrix."""
    if (_c is None or not hasattr(_c, "take_rows_at") or X.dtype != np.float64 or X.ndim != 2
            or not X.flags.c_contiguous or not X.flags.writeable or table.ndim != 2):
        return False
    _c.take_rows_at(np.require(table, dtype=np.float64, requirements="CA"), np.require(codes, dtype=np.int64, requirements="CA"),
                    X, X.shape[0], X.shape[1], int(col), table.shape[1])
    return True


def pair_counts(part: np.ndarray, rows, bucket: np.ndarray, n_parts: int, max_cells: int):
    """``(part int32, bucket int32, count uint32)`` of the distinct (partition, bucket) pairs,
    sorted, where occurrence ``i`` has bucket ``bucket[i]`` and partition ``part[rows[i]]``
    (``part[i]`` when ``rows`` is None); None without the kernel or when ``n_parts`` x distinct
    buckets exceeds ``max_cells``."""
    if _c is None:
        return None
    part = np.require(part, dtype=np.int64, requirements="CA")
    bucket = np.require(bucket, dtype=np.int32, requirements="CA")
    if rows is not None:
        rows = np.require(rows, dtype=np.int64, requirements="CA")
    got = _c.pair_counts(part, rows, bucket, int(n_parts), int(max_cells))
    if got is None:
        return None
    p, b, c = got
    return np.frombuffer(p, dtype=np.int32), np.frombuffer(b, dtype=np.int32), np.frombuffer(c, dtype=np.uint32)


def _uint_holding(n: int):
    return np.uint8 if n < 1 << 8 else np.uint16 if n < 1 << 16 else np.uint32


def sig_dictionary(sig: np.ndarray):
    """``(sn, sd, si, max_sn)`` of a ``(features, num_perm)`` uint32 matrix, as
    signature_records.dictionary defines them before narrowing: ``sn`` (num_perm,) and ``si``
    (num_perm, features) in the narrowest unsigned type holding ``features``, ``sd`` uint32, and
    the largest ``sn`` (0 when there is none); None without the kernel. Releases the GIL."""
    if _c is None or not hasattr(_c, "sig_dictionary"):
        return None
    sig = np.asarray(sig)
    if sig.dtype != np.uint32 or not (sig.flags.c_contiguous and sig.flags.aligned):
        sig = np.require(sig, dtype=np.uint32, requirements="CA")
    if sig.ndim != 2 or sig.shape[0] >= 1 << 30:
        return None
    n_f, n_p = sig.shape
    t = _uint_holding(n_f)
    sn, si = np.empty(n_p, dtype=t), np.empty((n_p, n_f), dtype=t)
    sd, top = _c.sig_dictionary(sig, n_f, n_p, sn, si, sn.itemsize)
    return sn, np.frombuffer(sd, dtype=np.uint32), si, top


def hist_check(part: np.ndarray, feat: np.ndarray, bucket: np.ndarray, count: np.ndarray, n_partitions: int,
               n_features: int) -> int | None:
    """sketch.check_sketch's histogram tests in one compiled pass: a bit mask, 1 a part or feat out of
    range, 2 a zero count, 4 (part, feat, bucket) not strictly increasing; 0 when all pass. None
    without the kernel or unless the arrays are int32 / int32 / int32 / uint32 of one length (as
    build_sketch makes them): the caller's NumPy tests then decide."""
    if _c is None or not hasattr(_c, "hist_check"):
        return None
    n = len(part)
    if not (part.dtype == feat.dtype == bucket.dtype == np.int32 and count.dtype == np.uint32
            and len(feat) == len(bucket) == len(count) == n) or not 0 <= n_partitions < 1 << 62 \
            or not 0 <= n_features < 1 << 62:
        return None
    arrays = (a if a.flags.c_contiguous and a.flags.aligned else np.require(a, requirements="CA")   # (np.require: ~2 us)
              for a in (part, feat, bucket, count))
    return _c.hist_check(*arrays, n, int(n_partitions), int(n_features))


def csr_proj(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, a: np.ndarray, scalar: bool = False):
    """``scipy.sparse.csr_matrix((data, indices, indptr)) @ a`` for float32 ``data`` and ``a`` (n_cols, h),
    bit for bit (each sum over its row's non-zeros in their order, a multiply and an add a term),
    with the row's sums held in registers (AVX2 where the CPU has it: ~2x scipy's loop on the JS-LSH
    projections of a bulk add). None without the kernel or for other dtypes: the caller's scipy
    product then. ``scalar``: the portable loop even where the AVX2 one runs (the same bits). An ``a`` of
    over ``CP_SPLIT_BYTES`` is multiplied ``CP_COLS`` columns at a time (the same bits)."""
    if _c is None or not hasattr(_c, "csr_proj") or data.dtype != np.float32 or a.dtype != np.float32 or a.ndim != 2:
        return None
    n_rows, h = len(indptr) - 1, a.shape[1]
    out = np.empty((n_rows, h), dtype=np.float32)
    args = (np.require(indptr, dtype=np.int64, requirements="CA"), np.require(indices, dtype=np.int64, requirements="CA"),
            np.require(data, requirements="CA"))
    if a.nbytes <= CP_SPLIT_BYTES or h <= CP_COLS:
        _c.csr_proj(*args, np.require(a, requirements="CA"), out, n_rows, a.shape[0], h, bool(scalar))
        return out
    # ``a`` outgrows the caches (the small-query keys' 512 columns over a chunk's ~4,600 coordinates: 9.4 MB):
    # CP_COLS columns at a time, each block copied contiguous, so a row's gathers stay in cache (~1.8x on
    # that product). Every output is the same sum in the same order: the same bits.
    part = np.empty((n_rows, CP_COLS), dtype=np.float32)
    for lo in range(0, h, CP_COLS):
        blk = np.ascontiguousarray(a[:, lo:lo + CP_COLS])
        dst = part if blk.shape[1] == CP_COLS else np.empty((n_rows, blk.shape[1]), dtype=np.float32)
        _c.csr_proj(*args, blk, dst, n_rows, a.shape[0], blk.shape[1], bool(scalar))
        out[:, lo:lo + blk.shape[1]] = dst
    return out


CP_SPLIT_BYTES = 4 << 20   # projection matrices above this are multiplied CP_COLS columns at a time
CP_COLS = 128


def agg_cells(lens: np.ndarray, feat: np.ndarray, bucket: np.ndarray, count: np.ndarray):
    """profiles._aggregate's dataset-level cells in one compiled pass: ``(d_of, ukey, d_count)`` -- each
    non-zero's cell, the cells' keys ``sketch << 48 | feat << 32 | (bucket + 2**31)`` ascending (int64)
    and their summed counts (float64, summed in the stable sorted order, as np.bincount sums them) -- for
    sketches of ``lens`` non-zeros concatenated (``feat``, ``bucket`` int64, ``count`` float64). None
    without the kernel or outside its ranges (at most 2**15 sketches, feat < 2**16, bucket int32):
    the caller's NumPy path then. Releases the GIL."""
    if _c is None or not hasattr(_c, "agg_cells") or not (feat.dtype == bucket.dtype == np.int64
                                                           and count.dtype == np.float64):
        return None
    n = len(feat)
    d_of, ukey, d_count = np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.float64)
    try:
        u = _c.agg_cells(np.require(lens, dtype=np.int64, requirements="CA"), np.require(feat, requirements="CA"),
                         np.require(bucket, requirements="CA"), np.require(count, requirements="CA"),
                         d_of, ukey, d_count, len(lens), n)
    except ValueError:
        return None
    return d_of, ukey[:u], d_count[:u]


def part_shares(prow: np.ndarray, feat: np.ndarray, count: np.ndarray, e: np.ndarray, nf: np.ndarray):
    """profiles.records' partition-level values ``count / (the (prow, feat) group's summed count) / nf[e]``
    (float64; the groups contiguous, sums in order as np.bincount's) in one compiled pass, bit for bit;
    None without the kernel or for other dtypes (the caller's NumPy expression then)."""
    if _c is None or not hasattr(_c, "part_shares") or not (prow.dtype == feat.dtype == e.dtype == np.int64
                                                             and count.dtype == nf.dtype == np.float64):
        return None
    out = np.empty(len(prow), dtype=np.float64)
    _c.part_shares(*(np.require(a, requirements="CA") for a in (prow, feat, count, e, nf)), out, len(prow), len(nf))
    return out


def band_runs(sigs: np.ndarray, lo: np.ndarray, k: int, l: int):
    """engine/parts.py ``Bands._keys`` of every entry whose signature rows are ``sigs[lo[i]:lo[i + 1]]``
    (uint32, ``k * l`` a row): ``[(distinct band keys ascending, uint64; each one's first non-empty row,
    uint32)]``, the same arrays (minhash.feature_band_keys' keys, np.unique's first occurrence), in one
    compiled pass: the keys hashed and each entry's sorted (a counting sort on the top bits, then an
    insertion sort) without NumPy's temporaries. None without the kernel or for other dtypes / shapes."""
    if _c is None or not hasattr(_c, "band_runs") or not isinstance(sigs, np.ndarray) or sigs.dtype != np.uint32 \
            or sigs.ndim != 2 or k < 1 or l < 1 or sigs.shape[1] != k * l:
        return None
    n = len(sigs)
    keys = np.empty(n * l, dtype=np.uint64)
    first = np.empty(n * l, dtype=np.uint32)
    counts = np.empty(len(lo) - 1, dtype=np.int64)
    _c.band_runs(np.require(sigs, requirements="CA"), np.require(lo, dtype=np.int64, requirements="CA"), int(k), int(l),
                 keys, first, counts)
    off = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=off[1:])
    return [(keys[a:b], first[a:b]) for a, b in zip(off[:-1].tolist(), off[1:].tolist())]


def hist_runs(e: np.ndarray, part: np.ndarray, feat: np.ndarray, bucket: np.ndarray, count: np.ndarray,
              n_f: np.ndarray, c_off: np.ndarray):
    """engine/partitions.py ``pack_hists``' batch-wide arrays in one compiled pass: the tuple
    partitions._hist_arrays (the definition) returns, ``(n_all, b0, g8, xi, xv, c8, cxi, cxv, lo, s_lo, g_lo,
    gb_lo, cb_lo)``. None without the kernel or for other dtypes (``e``, ``part``, ``feat``, ``bucket``
    int64, ``count`` float64, as profiles._aggregate gives them)."""
    if _c is None or not hasattr(_c, "hist_runs") or not all(
            isinstance(a, np.ndarray) and a.dtype == np.int64 and a.ndim == 1 for a in (e, part, feat, bucket, n_f, c_off)) \
            or not (isinstance(count, np.ndarray) and count.dtype == np.float64 and count.ndim == 1):
        return None
    n, m = len(e), len(n_f)
    n_all = np.zeros(int(c_off[-1]) if len(c_off) else 0, dtype=np.int64)
    b0, xi, xv, cxi, cxv = (np.empty(n, np.int64) for _ in range(5))
    g8, c8 = np.empty(n, np.uint8), np.empty(n, np.uint8)
    offs = np.empty((5, m + 1), dtype=np.int64)
    req = [np.require(a, requirements="CA") for a in (e, part, feat, bucket, count, n_f, c_off)]
    S, G, GX, CX = _c.hist_runs(*req, n_all, b0, g8, xi, xv, c8, cxi, cxv, offs)
    return (n_all, b0[:S], g8[:G], xi[:GX], xv[:GX], c8, cxi[:CX], cxv[:CX], *offs)
