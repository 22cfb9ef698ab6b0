"""The dataset-independent quantizer: values -> integer buckets.

Two datasets sketched apart stay comparable because the rule depends only on the hub's
parameters, never on the data:

* numbers: relative-accuracy logarithmic buckets, as DDSketch does. With
  ``gamma = (1 + alpha) / (1 - alpha)``, a value ``v`` with ``|v| > MIN_ABS`` goes to
  ``k = ceil(log|v| / log gamma)``; the key is ``BIAS + k`` for positive and ``-(BIAS + k)`` for
  negative values, ``0`` for the zero bucket ``|v| <= MIN_ABS``, and NaN, +inf and -inf get
  buckets of their own. Keys fit in int32.
* categorical values and text tokens: a seeded 64-bit hash (pandas' SipHash), folded to
  ``hist_bins`` bins for histograms (plus one bin for missing values).

The MinHash set of every string column (categorical or text) is its set of lower-cased word
tokens, so two columns of the same values match even when one was detected as categorical
("SIGMOD Record") and the other as text ("International Conference on Management of Data");
histograms keep the distinction (whole values for categorical, tokens for text).

Each column becomes a :class:`Column`: the set of its fine buckets (MinHash elements, 32-bit),
and one coarse histogram bucket per occurrence (a row for numbers and categories, a token for
text) with the row it came from.
"""
from __future__ import annotations

import contextvars
import math
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .config import SketchConfig
from .errors import EmptyColumnError
from .kernels import ingest as _ingest
from .kernels.hashing import hash_tokens, mix64, to_u32

try:  # the compiled word tokenizer (kernels/_cminhash.c, built by `pip install`; optional)
    from .kernels import _cminhash as _c
    if not hasattr(_c, "ascii_tokens"):    # a kernel built before the tokenizer was added
        _c = None
except ImportError:  # pragma: no cover - no C compiler when installed
    _c = None

MIN_ABS = 1e-9
BIAS = 1 << 20
NAN_KEY = 1 << 30
POS_INF_KEY = (1 << 30) + 1
NEG_INF_KEY = -((1 << 30) + 1)
_NUMERIC_DOMAIN = 0x6E756D62  # keeps numeric buckets and string hashes apart in MinHash sets
TEXT_MIN_TOKENS = 2.5         # an object column whose values average more tokens than this is text
KINDS = ("numeric", "categorical", "text")


@dataclass
class Column:
    name: str
    kind: str                 # "numeric" | "categorical" | "text"
    set_elems: np.ndarray     # (n_distinct,) int64 in [0, 2**32): MinHash elements, unique
    rows: np.ndarray          # (n_occ,) int64 row of each occurrence
    hist: np.ndarray          # (n_occ,) int32 histogram bucket of each occurrence
    total: float              # sum of finite numeric values (0 for other kinds)
    count: int                # number of finite numeric values (0 for other kinds)
    all_rows: bool = False    # rows is arange(n): one occurrence per row, in row order


def numeric_keys(values: np.ndarray, accuracy: float) -> np.ndarray:
    """Log-bucket keys (int64, within int32 range) of float values at relative ``accuracy``."""
    return numeric_keys_at(values, (accuracy,))[0]


def numeric_keys_at(values: np.ndarray, accuracies) -> list[np.ndarray]:
    """:func:`numeric_keys` of ``values`` at each of ``accuracies``, sharing one logarithm and one
    pass over the special values (a column is bucketed at the fine and the histogram accuracy).
    The logarithm is taken of the same array (the finite ``|v| > MIN_ABS`` values) as
    :func:`numeric_keys_reference`, so the keys are the same bit for bit."""
    v = np.asarray(values, dtype=np.float64)
    a = np.abs(v)
    big = a > MIN_ABS                                   # False for NaN
    big &= a != np.inf
    every = bool(big.all())
    ab, sgn = (a, np.sign(v)) if every else (a[big], np.sign(v[big]))     # +-1: every value here is big
    with np.errstate(divide="ignore", invalid="ignore"):
        la = np.log(ab)
    special = None
    if not every:
        nan, pinf, ninf = np.isnan(v), v == np.inf, v == -np.inf
        special = (nan.any(), nan), (pinf.any(), pinf), (ninf.any(), ninf)
    out = []
    t = np.empty_like(la)
    for accuracy in accuracies:
        lg = math.log((1.0 + accuracy) / (1.0 - accuracy))
        # +-(BIAS + ceil(la / lg)) in float64 (integers far below 2**53: every step exact), then one
        # conversion: the same keys as the int64 arithmetic, without a masked negation
        np.divide(la, lg, out=t)
        np.ceil(t, out=t)
        t += BIAS
        t *= sgn
        k = t.astype(np.int64)
        if every:
            out.append(k)
            continue
        keys = np.zeros(v.shape, dtype=np.int64)
        keys[big] = k
        for (has, mask), key in zip(special, (NAN_KEY, POS_INF_KEY, NEG_INF_KEY)):
            if has:
                keys[mask] = key
        out.append(keys)
    return out


CHUNK = 8192   # values per block of the numeric passes: their temporaries stay in cache and are reused


def numeric_buckets(v: np.ndarray, accuracy: float, hist_accuracy: float) -> tuple[np.ndarray, np.ndarray]:
    """A numeric column's distinct fine keys of its non-NaN values (int64, unordered) and its
    histogram keys at ``hist_accuracy`` (int32, one per value): :func:`numeric_keys_at` over blocks
    of :data:`CHUNK` values, so no temporary is a fresh column-sized array (their page faults cost
    more than the arithmetic). The keys are elementwise, so the same as of the whole column."""
    return _numeric_buckets(v, accuracy, hist_accuracy)[:2]


def _numeric_buckets(v: np.ndarray, accuracy: float, hist_accuracy: float):
    """:func:`numeric_buckets` and, when the compiled pass computed them, how many values are NaN
    and how many finite (else None, None)."""
    v = np.asarray(v, dtype=np.float64)
    lgs = [math.log((1.0 + acc) / (1.0 - acc)) for acc in (accuracy, hist_accuracy)]
    # one compiled pass: the logarithm, both keys, the distinct fine keys and the counts
    got = _ingest.numeric_quantize(v, lgs[0], lgs[1], MIN_ABS, float(BIAS), NAN_KEY, POS_INF_KEY, NEG_INF_KEY)
    if got is not None:
        return got
    n = len(v)
    coarse = np.empty(n, dtype=np.int32)
    fines = np.empty(n, dtype=np.int64)             # the fine keys of the non-NaN values, packed
    if _c is not None and hasattr(_c, "numeric_buckets") and v.ndim == 1:
        # NumPy's logarithm of every |v| (elementwise: the values numeric_keys_at takes of its subset),
        # then the same float64 steps per value and the distinct fine keys in one compiled pass
        v = np.ascontiguousarray(v)
        with np.errstate(divide="ignore", invalid="ignore"):
            la = np.log(np.abs(v))
        m = _c.numeric_buckets(v, la, lgs[0], lgs[1], MIN_ABS, float(BIAS), NAN_KEY, POS_INF_KEY, NEG_INF_KEY,
                               coarse, fines)
        return fines[:m].copy(), coarse, None, None
    m = 0
    for s in range(0, n, CHUNK):
        vc = v[s:s + CHUNK]
        fine, co = numeric_keys_at(vc, (accuracy, hist_accuracy))
        coarse[s:s + CHUNK] = co                    # keys fit int32: the same as co.astype(np.int32)
        nan = np.isnan(vc)
        if nan.any():
            fine = fine[~nan]
        fines[m:m + len(fine)] = fine
        m += len(fine)
    return pd.unique(fines[:m]), coarse, None, None  # distinct buckets (hashing: no sort of n keys)


def numeric_keys_reference(values: np.ndarray, accuracy: float) -> np.ndarray:
    """The definition of :func:`numeric_keys` (the tests compare the two)."""
    v = np.asarray(values, dtype=np.float64)
    lg = math.log((1.0 + accuracy) / (1.0 - accuracy))
    keys = np.zeros(v.shape, dtype=np.int64)
    a = np.abs(v)
    big = np.isfinite(v) & (a > MIN_ABS)
    with np.errstate(divide="ignore", invalid="ignore"):
        k = np.ceil(np.log(a[big]) / lg).astype(np.int64)
    keys[big] = np.where(v[big] > 0, BIAS + k, -(BIAS + k))
    keys[np.isnan(v)] = NAN_KEY
    keys[v == np.inf] = POS_INF_KEY
    keys[v == -np.inf] = NEG_INF_KEY
    return keys


def detect_kind(col: pd.Series) -> str:
    """``numeric`` for numbers/bools/datetimes; ``text`` or ``categorical`` for the rest."""
    if pd.api.types.is_bool_dtype(col) or pd.api.types.is_numeric_dtype(col) or \
            pd.api.types.is_datetime64_any_dtype(col):
        return "numeric"
    nonnull = col.dropna()
    if len(nonnull) == 0:
        return "categorical"
    sample = nonnull.iloc[: 1000]
    if all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in sample):
        return "numeric"
    tokens = sample.astype(str).str.count(r"\w+")
    return "text" if float(tokens.mean()) > TEXT_MIN_TOKENS else "categorical"


def _as_float(col: pd.Series) -> np.ndarray:
    if pd.api.types.is_datetime64_any_dtype(col):
        out = col.astype("int64").to_numpy(dtype=np.float64) / 1e9
        out[col.isna().to_numpy()] = np.nan
        return out
    if isinstance(col.dtype, np.dtype) and col.dtype == np.float64:
        return col.to_numpy()               # the column's own values (read-only use): no copy
    return pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


_ALL_ROWS = [np.zeros(0, dtype=np.int64)]


def _all_rows(n: int) -> np.ndarray:
    """``np.arange(n)`` (int64, read-only), the one of the last call's ``n`` reused: every column of
    a frame has one occurrence per row."""
    a = _ALL_ROWS[0]
    if len(a) != n:
        a = np.arange(n, dtype=np.int64)
        a.setflags(write=False)
        _ALL_ROWS[0] = a
    return a


def quantize_column(name: str, col: pd.Series, config: SketchConfig, kind: str | None = None) -> Column:
    kind = kind or detect_kind(col)
    n = len(col)
    if kind == "numeric":
        v = _as_float(col)
        fine, coarse, n_nan, n_fin = _numeric_buckets(v, config.accuracy, config.hist_accuracy)
        if (n_nan == n) if n_nan is not None else bool(np.isnan(v).all()):
            raise EmptyColumnError(
                f"column {name!r} has no values (all {n} are missing/NaN): drop it "
                "(df.dropna(axis=1, how='all')) or fill it")
        elems = to_u32(mix64(fine.view(np.uint64), config.seed ^ _NUMERIC_DOMAIN))
        # every value finite: the sum of v itself (the same numbers in the same order as v[finite])
        if n_fin == n and v.flags.c_contiguous:
            total = v.sum()
        else:
            finite = np.isfinite(v)
            total, n_fin = v[finite].sum(), int(finite.sum())
        return Column(name, kind, np.unique(elems), _all_rows(n), coarse,
                      float(total), int(n_fin), all_rows=True)
    missing = col.isna().to_numpy()
    if missing.all():
        raise EmptyColumnError(
            f"column {name!r} has no values (all {n} are missing): drop it or fill it")
    cats = _str_categories(col, missing) if kind in ("categorical", "text") else None
    if cats is not None:                   # a Categorical of str: every value's work done once per category
        return _quantize_categories(name, kind, cats, n, config)
    if kind == "categorical":
        rows = _all_rows(n)
        h = np.zeros(n, dtype=np.uint64)
        h[~missing] = _value_hashes(col, missing, config.seed)
        hist = _fold(h, config.hist_bins)
        hist[missing] = config.hist_bins  # one extra bin for missing values
        _, tok_hash = _tokens(col, missing, config.seed)
        elems = _distinct_u32(tok_hash) if tok_hash.size else _distinct_u32(h[~missing])
        return Column(name, kind, elems, rows, hist, 0.0, 0, all_rows=True)
    if kind == "text":
        rows, h = _tokens(col, missing, config.seed)
        if h.size == 0:
            raise EmptyColumnError(f"text column {name!r} has no word tokens: drop it or fill it")
        return Column(name, kind, _distinct_u32(h), rows,
                      _fold(h, config.hist_bins), 0.0, 0)
    raise ValueError(f"unknown column kind {kind!r}")


def _str_categories(col: pd.Series, missing: np.ndarray):
    """``(codes, categories)`` of a pandas Categorical column whose categories are all ``str``
    (exactly: a subclass's ``str()`` could differ) and whose missing rows are those of code -1:
    ``codes`` int64 (n,) with -1 for a missing value, ``categories`` a Series of the category
    values (object dtype, no missing); else None. A Parquet column read as a dictionary
    (``fitsketch.parquet_units``) arrives this way: its per-value work (hashes, tokens, hashed
    dimensions) is done once per category and gathered by code, the same values as of the rows."""
    if not isinstance(col.dtype, pd.CategoricalDtype):
        return None
    codes = np.asarray(col.cat.codes.to_numpy(), dtype=np.int64)
    if len(missing) != len(codes) or not np.array_equal(np.asarray(missing, dtype=bool), codes < 0):
        return None
    k = len(col.cat.categories)
    used = np.bincount(codes[codes >= 0], minlength=k) > 0
    if not used.all():        # only the categories some row holds: a slice of a big Categorical keeps them all,
        at = np.cumsum(used) - 1                    # and an unused one must not be hashed (or refused)
        codes = np.where(codes >= 0, at[np.maximum(codes, 0)], -1)
        values = col.cat.categories[used].to_numpy(dtype=object)
    else:
        values = col.cat.categories.to_numpy(dtype=object)
    if len(values) == 0 or any(type(v) is not str for v in values):
        return None
    return codes, pd.Series(values, dtype=object)


def _category_tokens(cats: pd.Series, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``_tokens`` of the categories themselves: (category of each token, token hash)."""
    return _tokens(cats, np.zeros(len(cats), dtype=bool), seed)


def _quantize_categories(name: str, kind: str, cats, n: int, config: SketchConfig) -> Column:
    """:func:`quantize_column` of a Categorical of str (``_str_categories``): the same Column as
    of its values written out row by row."""
    codes, values = cats
    present = np.bincount(codes[codes >= 0], minlength=len(values)) > 0
    if not present.any():
        raise EmptyColumnError(f"column {name!r} has no values (all {n} are missing): drop it or fill it")
    crow, ch = _category_tokens(values, config.seed)
    used = ch[present[crow]]                        # the tokens of the categories some row holds
    if kind == "categorical":
        vh = _value_hashes(values, np.zeros(len(values), dtype=bool), config.seed)
        table = np.empty(len(values) + 1, dtype=np.int32)
        table[:-1] = _fold(vh, config.hist_bins)
        table[-1] = config.hist_bins                # code -1 (missing): the extra bin
        elems = _distinct_u32(used) if used.size else _distinct_u32(vh[present])
        return Column(name, kind, elems, _all_rows(n), table[codes], 0.0, 0, all_rows=True)
    rows, h = _expand_category_tokens(codes, crow, ch, len(values))
    if h.size == 0:
        raise EmptyColumnError(f"text column {name!r} has no word tokens: drop it or fill it")
    return Column(name, kind, _distinct_u32(used), rows, _fold(h, config.hist_bins), 0.0, 0)


def _expand_category_tokens(codes: np.ndarray, crow: np.ndarray, ch: np.ndarray, k: int):
    """(row of each token, token hash) of the rows given by category ``codes`` (-1: no token), from
    the categories' own tokens (``crow`` category of each, ``ch`` hash; in category then text
    order): the rows' tokens in row then text order, as :func:`_tokens` of the rows gives them."""
    cnt = np.zeros(k + 1, dtype=np.int64)
    cnt[:k] = np.bincount(crow, minlength=k)
    start = np.zeros(k + 1, dtype=np.int64)        # each category's first token (start[k]: unused)
    np.cumsum(cnt[:k], out=start[1:])
    per_row = cnt[codes]                            # code -1 -> cnt[k] = 0
    rows = np.repeat(np.arange(len(codes), dtype=np.int64), per_row)
    first = np.cumsum(per_row) - per_row            # each row's first token in the output
    idx = np.arange(len(rows), dtype=np.int64)
    idx -= first[rows]
    idx += start[codes][rows]
    return rows, ch[idx]


def _fold(h: np.ndarray, bins: int) -> np.ndarray:
    """``(h % bins).astype(int32)`` of uint64 hashes: a mask when ``bins`` is a power of two (the
    same values; the default 64 is), as NumPy's unsigned modulo costs a division per value."""
    h = np.asarray(h, dtype=np.uint64)
    if bins > 0 and bins & (bins - 1) == 0:
        return (h & np.uint64(bins - 1)).astype(np.int32)
    return (h % np.uint64(bins)).astype(np.int32)


def _distinct_u32(h64: np.ndarray) -> np.ndarray:
    """``np.unique(to_u32(h64))``, the distinct 64-bit hashes found first by hashing (a text column
    holds many more tokens than distinct ones: sorting every token cost more than the rest)."""
    return np.unique(to_u32(pd.unique(np.asarray(h64, dtype=np.uint64))))


# ----------------------------------------------------------------------------- string columns
_SHARED: contextvars.ContextVar = contextvars.ContextVar("fitsketch_shared_tokens", default=None)


@contextmanager
def shared_tokens():
    """Inside the block, :func:`_tokens` and :func:`_value_hashes` of one column object are computed
    once (``build_sketch`` quantizes a column and transforms it for coverage: the same tokens twice).
    Shared results are read-only arrays. Per context (thread / task), never global."""
    reset = _SHARED.set({})
    try:
        yield
    finally:
        _SHARED.reset(reset)


def _shared(what: str, col: pd.Series, missing: np.ndarray, seed: int, compute):
    memo = _SHARED.get()
    if memo is None:
        return compute()
    obj = col.array                        # the same object for every Series view of a frame's column
    key = (what, id(obj), len(col), int(seed))
    hit = memo.get(key)
    if hit is not None and hit[0] is obj and np.array_equal(hit[1], missing):
        return hit[2]
    out = compute()
    for a in (out if isinstance(out, tuple) else (out,)):
        a.setflags(write=False)
    memo[key] = (obj, missing.copy(), out)     # holding obj keeps its id from being reused
    return out


def _tokens(col: pd.Series, missing: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Lower-cased word tokens (``\\w+``) of a string column: (row of each token, token hash),
    tokens in row order and, within a row, in text order.

    Columns of ``str`` values go through Arrow: ASCII rows are tokenized on the UTF-8 bytes with
    NumPy and only distinct tokens are hashed; rows with other characters (Unicode word rules and
    case mapping) and columns of other values take :func:`_tokens_reference`, the definition.
    Both give the same result (tests/test_sketch_fastpath.py compares them)."""
    return _shared("tokens", col, missing, seed, lambda: _tokens_fast(col, missing, seed))


def _tokens_fast(col: pd.Series, missing: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    cats = _str_categories(col, missing)
    if cats is not None:
        codes, values = cats
        crow, ch = _category_tokens(values, seed)
        return _expand_category_tokens(codes, crow, ch, len(values))
    arr = _arrow_strings(col)
    if arr is None:
        return _tokens_reference(col, missing, seed)
    import pyarrow.compute as pc

    drop = missing | arr.is_null().to_numpy(zero_copy_only=False)
    if _ascii_bytes(arr):                            # every value ASCII: no per-value check needed
        return _ascii_token_hashes(_blank(arr, drop), seed)
    ascii_ = pc.fill_null(pc.string_is_ascii(arr), True).to_numpy(zero_copy_only=False)
    slow = ~ascii_ & ~drop
    if not slow.any():
        return _ascii_token_hashes(_blank(arr, drop), seed)
    fast = np.flatnonzero(~slow)
    rows_a, h_a = _ascii_token_hashes(_blank(arr.take(fast), drop[fast]), seed)
    idx_b = np.flatnonzero(slow)
    rows_b, h_b = _tokens_reference(col.iloc[idx_b], np.zeros(len(idx_b), dtype=bool), seed)
    rows = np.concatenate([fast[rows_a], idx_b[rows_b]])
    h = np.concatenate([h_a, h_b])
    order = np.argsort(rows, kind="stable")          # a row's tokens come from one side: text order kept
    return rows[order], h[order]


def _value_hashes(col: pd.Series, missing: np.ndarray, seed: int) -> np.ndarray:
    """``hash_tokens`` of ``str(v)`` for the non-missing values ``v`` of a column, in row order;
    for a column of ``str`` values only the distinct values are hashed."""
    return _shared("values", col, missing, seed, lambda: _value_hashes_fast(col, missing, seed))


def _value_hashes_fast(col: pd.Series, missing: np.ndarray, seed: int) -> np.ndarray:
    cats = _str_categories(col, missing)
    if cats is not None:
        codes, values = cats
        return _value_hashes(values, np.zeros(len(values), dtype=bool), seed)[codes[codes >= 0]]
    arr = _arrow_strings(col)
    if arr is None:
        return hash_tokens(np.array([str(x) for x in col.to_numpy(dtype=object)[~missing]], dtype=object), seed)
    return _hash_unique(arr.filter(~missing), seed)


def _tokens_reference(col: pd.Series, missing: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The definition of :func:`_tokens`: ``str(v).lower()`` split by the regex ``\\w+`` (pandas)."""
    toks = col.astype(object).where(~missing, "").astype(str).str.lower().str.findall(r"\w+")
    lengths = toks.str.len().to_numpy(dtype=np.int64)
    flat = np.array([t for ts in toks for t in ts], dtype=object)
    rows = np.repeat(np.arange(len(col), dtype=np.int64), lengths)
    return rows, hash_tokens(flat, seed)


# ----------------------------------------------------------------------------- Arrow fast path
def _word_bytes(b: np.ndarray) -> np.ndarray:
    """Which bytes are ASCII characters of the regex ``\\w``: ``[0-9A-Za-z_]``."""
    w = ((b | np.uint8(32)) - np.uint8(97)) < 26         # letters (uint8 wraps: one compare a range)
    w |= (b - np.uint8(48)) < 10                         # digits
    w |= b == 95                                         # _
    return w


def _ascii_lower(c: np.ndarray) -> np.ndarray:
    """ASCII lower case of bytes (what ``str.lower`` does to ASCII)."""
    return c + (((c - np.uint8(65)) < 26).view(np.uint8) << np.uint8(5))


def _arrow_strings(col: pd.Series):
    """The column as an Arrow ``large_string`` array when every non-missing value is a ``str``
    (pandas string dtypes, or object / categorical columns of str); else None."""
    import pyarrow as pa

    try:
        if isinstance(col.dtype, pd.StringDtype):
            arr = pa.array(col.array)
        else:
            if col.dtype != object and not isinstance(col.dtype, pd.CategoricalDtype):
                return None
            values = col.to_numpy(dtype=object)
            if len(values) == 0 or pd.api.types.infer_dtype(values, skipna=True) != "string":
                return None
            # str itself, not a subclass (whose str() could differ); other types are missing values
            if any(t is not str and issubclass(t, str) for t in set(map(type, values))):
                return None
            arr = pa.array(values, type=pa.large_string(), from_pandas=True)
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
            return None
        return arr.cast(pa.large_string())
    except (pa.ArrowException, TypeError, ValueError, UnicodeError):
        return None


def _string_buffers(arr):
    """``(offsets, data)`` of a non-empty Arrow ``large_string`` array: its ``len(arr) + 1`` int64
    value offsets (the array's slice of them) and its data buffer (``b""`` when it has none)."""
    bufs = arr.buffers()
    offs = np.frombuffer(bufs[1], dtype=np.int64, count=arr.offset + len(arr) + 1)[arr.offset:]
    return offs, (bufs[2] if bufs[2] is not None else b"")


def _ascii_bytes(arr) -> bool:
    """Whether every byte of the values of an Arrow ``large_string`` array is ASCII (below 128):
    one max over its data buffer, what ``pc.string_is_ascii`` true on every value means."""
    if len(arr) == 0:
        return True
    offs, data = _string_buffers(arr)
    lo, hi = int(offs[0]), int(offs[-1])
    return hi <= lo or int(np.frombuffer(data, dtype=np.uint8)[lo:hi].max()) < 128


def _blank(arr, drop: np.ndarray):
    """``arr`` with the rows in ``drop`` (missing values) replaced by empty strings."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not drop.any():
        return arr
    return pc.if_else(pa.array(drop), pa.scalar("", pa.large_string()), arr)


TOKEN_ROOM = 1 << 22    # tokens _ascii_token_hashes makes room for without counting them first (64 MiB)


def _ascii_token_hashes(arr, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(row of each token, hash_tokens hash of each token)`` of ASCII strings (no nulls): the
    compiled kernel (kernels/_cminhash.c: one pass, every token hashed) when it is built, else
    :func:`_ascii_tokens` then :func:`_hash_unique` -- the same values."""
    if _c is None or len(arr) == 0:
        rows, tok = _ascii_tokens(arr)
        return rows, _hash_unique(tok, seed)
    from .kernels.hashing import _hash_key

    offs, data = _string_buffers(arr)
    # room for the most tokens the values can hold (a token and a separator take 2 bytes: a value
    # of L bytes holds at most ceil(L / 2)) instead of a counting pass over the text, pages past the
    # tokens written never touched; counted first when that room would be large (a big in-memory
    # column: no reservation of 8x its bytes)
    cap = (int(offs[-1]) - int(offs[0]) + len(offs)) // 2 + 1
    if cap > TOKEN_ROOM:
        cap = _c.count_ascii_tokens(data, offs)
    rows = np.empty(cap, dtype=np.int64)
    h = np.empty(cap, dtype=np.uint64)
    n_tok = _c.ascii_tokens(data, offs, _hash_key(seed).encode("ascii"), rows, h)
    return rows[:n_tok], h[:n_tok]


def _ascii_tokens(arr):
    """Lower-cased maximal runs of ``[0-9A-Za-z_]`` of ASCII strings (no nulls): ``(row of each
    token, tokens as an Arrow large_string array)``, in row then text order."""
    import pyarrow as pa

    n = len(arr)
    if n == 0:
        return np.zeros(0, dtype=np.int64), pa.array([], type=pa.large_string())
    offs, data = _string_buffers(arr)
    lo, hi = int(offs[0]), int(offs[-1])
    b = np.frombuffer(data, dtype=np.uint8)[lo:hi] if hi > lo else np.zeros(0, np.uint8)
    rel = offs - lo
    w = _word_bytes(b)
    size = len(b)
    vstart = np.zeros(size + 1, dtype=bool)         # a byte that starts a value: no token spans values
    vstart[rel[:-1]] = True
    prev = np.zeros(size, dtype=bool)
    prev[1:] = w[:-1]
    prev &= ~vstart[:size]
    starts = np.flatnonzero(w & ~prev)
    nxt = np.zeros(size, dtype=bool)
    nxt[:-1] = w[1:]
    nxt &= ~vstart[1:]
    ends = np.flatnonzero(w & ~nxt) + 1
    rows = np.searchsorted(rel[:-1], starts, side="right").astype(np.int64) - 1
    tok_offs = np.zeros(len(starts) + 1, dtype=np.int64)
    np.cumsum(ends - starts, out=tok_offs[1:])
    chars = _ascii_lower(np.compress(w, b))             # the tokens back to back
    tok = pa.LargeStringArray.from_buffers(len(starts), pa.py_buffer(tok_offs), pa.py_buffer(chars))
    return rows, tok


def _hash_unique(arr, seed: int) -> np.ndarray:
    """``hash_tokens`` of every string of an Arrow array (no nulls), hashing each distinct one once."""
    if len(arr) == 0:
        return np.zeros(0, dtype=np.uint64)
    enc = arr.dictionary_encode()
    uniq = enc.dictionary.to_numpy(zero_copy_only=False)
    return hash_tokens(uniq, seed)[enc.indices.to_numpy(zero_copy_only=False)]
