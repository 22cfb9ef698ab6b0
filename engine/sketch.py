"""A dataset's sketch: everything fitsketch keeps of it, mergeable, independent of any hub.

* ``signatures`` (n_features, num_perm) uint32 -- MinHash of each feature's bucket set; merge: min
* ``hist`` -- sparse per-partition histograms, COO sorted by (part, feat, bucket); merge: the
  partitions of the second sketch follow those of the first
* ``sums``, ``counts`` -- per numeric feature, for feature means; merge: sum
* ``n_rows``; merge: sum
* ``coverage`` -- counts of rows per (table, SimHash code) of the transformed rows (coverage.py);
  merge: sum when both parts share the centre (``coverage_center``); parts sketched independently
  (each around its own mean) keep one group of counts per centre, scored together

Rows are shuffled with a generator seeded by the hub seed, then cut into partitions of
``partition_size`` rows (the last one may be shorter), so partitions are samples of the data.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .config import SketchConfig
from .data import to_frame
from .errors import EmptyColumnError, InvalidArgumentError
from .kernels import ingest as _ingest
from .kernels.minhash import minhash_csr
from .quantize import Column, quantize_column, shared_tokens

SKETCH_FORMAT = 1


@dataclass
class Sketch:
    config_key: tuple
    partition_size: int
    names: list[str]
    kinds: list[str]
    signatures: np.ndarray                 # (n_features, num_perm) uint32
    sums: np.ndarray                       # (n_features,) float64
    counts: np.ndarray                     # (n_features,) int64
    n_rows: int
    n_partitions: int
    hist: dict = field(repr=False)         # part, feat, bucket: int32 (nnz,); count: uint32 (nnz,)
    coverage: dict | None = field(default=None, repr=False)
    # in memory only (never stored): the transformed rows, for coverage queries with this sketch
    rows: np.ndarray | None = field(default=None, repr=False, compare=False)   # (n_rows, D)
    row_owner: list | None = field(default=None, repr=False, compare=False)   # column of each of the D dims
    frame: object = field(default=None, repr=False, compare=False)            # the query DataFrame (SimEx)
    # class-conditional histograms when built with labels (engine/accuracy.py); merge: counts add
    classes: dict | None = field(default=None, repr=False)
    # in memory only: columns left out of a query sketch because they hold no value (skip_empty)
    left_out: list | None = field(default=None, repr=False, compare=False)
    set_elems: list | None = field(default=None, repr=False, compare=False)   # minhash=False: each feature's set

    @property
    def n_features(self) -> int:
        return len(self.names)

    def merge(self, other: "Sketch") -> "Sketch":
        """The sketch of the rows of ``self`` followed by the rows of ``other``."""
        if not isinstance(other, Sketch):
            raise InvalidArgumentError(f"can only merge a Sketch with a Sketch, not {type(other).__name__}")
        if tuple(other.config_key) != tuple(self.config_key) or other.partition_size != self.partition_size:
            raise InvalidArgumentError(
                "sketches were built with different parameters (seed, num_perm, quantizer or partition size): "
                "build both with the same SketchConfig")
        if other.names != self.names or other.kinds != self.kinds:
            raise InvalidArgumentError(
                f"sketches have different features: {list(zip(self.names, self.kinds))} vs "
                f"{list(zip(other.names, other.kinds))}: merge sketches of the same columns")
        hist = {k: np.concatenate([self.hist[k], other.hist[k]]) for k in ("part", "feat", "bucket", "count")}
        hist["part"][len(self.hist["part"]):] += self.n_partitions
        cov = None
        if self.coverage is not None and other.coverage is not None:
            from . import coverage as _cov

            try:
                cov = _cov.merge(self.coverage, other.coverage)
            except ValueError as e:
                raise InvalidArgumentError(str(e)) from None
        if (self.classes is None) != (other.classes is None):
            raise InvalidArgumentError("one sketch was built with labels and the other without: build both with "
                                       "labels= (or both without)")
        classes = None
        if self.classes is not None:
            from .accuracy import label_kind, merge_records

            if label_kind(self.classes["labels"]) != label_kind(other.classes["labels"]):
                raise InvalidArgumentError("the sketches' labels are of different kinds (ints and strings): use one")
            classes = merge_records(self.classes, other.classes)
        return Sketch(self.config_key, self.partition_size, list(self.names), list(self.kinds),
                      np.minimum(self.signatures, other.signatures), self.sums + other.sums,
                      self.counts + other.counts, self.n_rows + other.n_rows,
                      self.n_partitions + other.n_partitions, hist, cov, classes=classes)

    def totals(self) -> dict:
        """Histograms summed over partitions: ``feat``, ``bucket``, ``count`` sorted by (feat, bucket)."""
        key = self.hist["feat"].astype(np.int64) * (1 << 32) + (self.hist["bucket"].astype(np.int64) + (1 << 31))
        uniq, inv = np.unique(key, return_inverse=True)
        counts = np.bincount(inv, weights=self.hist["count"].astype(np.float64), minlength=len(uniq))
        return {"feat": (uniq >> 32).astype(np.int32), "bucket": ((uniq & 0xFFFFFFFF) - (1 << 31)).astype(np.int32),
                "count": counts.astype(np.uint64)}

    def to_bytes(self) -> bytes:
        """Versioned msgpack bytes (NumPy arrays as a msgpack extension; never pickle)."""
        from .storage import pack

        return pack(self.to_record())

    @classmethod
    def from_bytes(cls, data: bytes) -> "Sketch":
        from .errors import translate
        from .storage import unpack

        try:
            rec = unpack(data)
        except Exception as e:
            raise translate(e) from None
        if not isinstance(rec, dict):
            raise InvalidArgumentError("bytes do not hold a fitsketch sketch record")
        return sketch_from_record(rec)

    def to_record(self) -> dict:
        return {"v": SKETCH_FORMAT, "config_key": list(self.config_key), "partition_size": self.partition_size,
                "names": self.names, "kinds": self.kinds, "signatures": self.signatures,
                "sums": self.sums, "counts": self.counts, "n_rows": self.n_rows,
                "n_partitions": self.n_partitions, "hist": self.hist, "coverage": self.coverage,
                **({"classes": self.classes} if self.classes is not None else {})}


def build_sketch(data, config: SketchConfig, **kw) -> Sketch:
    """Sketch ``data`` under ``config`` (keyword arguments: :func:`_build_sketch`); text UTF-8
    cannot encode (lone surrogates, in column names or values) is an ``InvalidArgumentError``."""
    try:
        return _build_sketch(data, config, **kw)
    except (UnicodeEncodeError, EOFError) as e:
        from .errors import translate

        raise translate(e) from None


def _build_sketch(data, config: SketchConfig, *, partition_size: int | None = None, feature_names=None,
                  device: str = "auto", progress: bool = False, shuffle: bool = True,
                  coverage_center=None, kinds: list[str] | None = None, shuffle_key=None,
                  quantize=None, skip_empty: bool = False, minhash: bool = True,
                  coverage: bool = True) -> Sketch:
    """Sketch ``data`` (anything :func:`fitsketch.data.to_frame` reads) under ``config``.

    ``coverage_center`` fixes the centre of the coverage row transform (default: the data's own
    mean); sketches built in parts and merged must share it. For parts of one dataset
    (``fitsketch.distributed``): ``kinds`` fixes the column kinds, ``shuffle_key`` seeds the row
    shuffle by ``(config.seed, *shuffle_key)`` instead of the seed alone, and ``quantize`` replaces
    :func:`quantize_column` (``(name, column, config, kind) -> Column``). ``skip_empty`` (queries)
    leaves out the columns that hold no value (all missing / NaN, or text without a word) instead
    of refusing them, and names them in ``Sketch.left_out``; a frame of only such columns is refused. ``minhash=False`` leaves
    the signatures empty and keeps each feature's MinHash set in ``set_elems`` instead (in memory),
    for a caller that sketches many chunks and hashes the union once (``fitsketch.chunked``).
    ``coverage=False`` leaves ``coverage`` None (the transformed rows stay in ``rows``) for a caller
    that codes them once the centre is known (:func:`finish_coverage`; ``fitsketch.parquet_units``).
    """
    m = config.partition_size if partition_size is None else partition_size
    if not isinstance(m, int) or isinstance(m, bool) or m < 1:
        raise InvalidArgumentError(f"partition_size={m!r} is not valid: expected a positive integer")
    df = to_frame(data, feature_names)
    complex_cols = [str(c) for c, dt in df.dtypes.items() if getattr(dt, "kind", "") == "c"]
    if complex_cols:
        from .errors import UnsupportedDataError

        raise UnsupportedDataError(f"columns {complex_cols[:5]} hold complex numbers, which fitsketch does not "
                                   "sketch (the imaginary part would be lost): split them into real and imaginary "
                                   "columns, e.g. df['x_re'], df['x_im'] = z.real, z.imag")
    n = len(df)
    cols: list[Column] = []
    it = df.items()
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, total=df.shape[1], desc="sketching features", unit="feature", leave=False)
    quantize = quantize or quantize_column
    left_out = []
    with shared_tokens():                  # a string column's tokens serve the quantizer and coverage
        for i, (name, col) in enumerate(it):
            try:
                cols.append(quantize(name, col, config, None if kinds is None else kinds[i]))
            except EmptyColumnError:
                if not skip_empty:
                    raise
                left_out.append(name)
        if left_out:
            if not cols:
                raise EmptyColumnError(f"every column of the query holds no value ({left_out[:10]}): give data")
            df = df.drop(columns=left_out)
        from . import coverage as _cov

        rows, keys, owner = _cov.row_matrix(df, [c.kind for c in cols], config.seed)
    # MinHash of every feature's bucket set in one batched call
    lengths = np.array([len(c.set_elems) for c in cols], dtype=np.int64)
    offsets = np.zeros(len(cols) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    values = np.concatenate([c.set_elems for c in cols]).astype(np.int64) if cols else np.zeros(0, np.int64)
    if minhash:
        sigs = minhash_csr(values, offsets, num_perm=config.num_perm, seed=config.seed, device=device,
                           family=config.minhash_family)
    else:
        from .kernels.minhash import EMPTY

        sigs = np.full((len(cols), config.num_perm), EMPTY, dtype=np.uint32)
    # partitions: a seeded shuffle, then blocks of m rows
    if shuffle_key is not None:
        ss = np.random.SeedSequence([config.seed, *[int(k) for k in shuffle_key]])
        order = np.random.Generator(np.random.PCG64(ss)).permutation(n)
        position = np.empty(n, dtype=np.int64)
        position[order] = np.arange(n, dtype=np.int64)
    elif shuffle:
        order = np.random.Generator(np.random.PCG64(config.seed)).permutation(n)
        position = np.empty(n, dtype=np.int64)
        position[order] = np.arange(n, dtype=np.int64)
    else:
        position = np.arange(n, dtype=np.int64)
    part_of_row = position // m
    n_parts = int((n + m - 1) // m)
    parts, feats, buckets, counts = [], [], [], []
    for f, c in enumerate(cols):
        p, b, cnt = partition_counts(part_of_row, c.hist, n_parts, rows=None if c.all_rows else c.rows)
        parts.append(p)
        buckets.append(b)
        feats.append(np.full(len(p), f, dtype=np.int32))
        counts.append(cnt)
    hist = {"part": np.concatenate(parts), "feat": np.concatenate(feats),
            "bucket": np.concatenate(buckets), "count": np.concatenate(counts)}
    # each feature's cells are sorted by (part, bucket) and the features follow in order: a stable
    # sort by part alone gives the (part, feat, bucket) order
    # (under 2^16 partitions NumPy's stable sort of 16-bit keys is a radix sort: the same order)
    order = np.argsort(hist["part"].astype(np.uint16) if n_parts <= (1 << 16) else hist["part"], kind="stable")
    hist = {k: v[order] for k, v in hist.items()}
    cov = _cov.build(rows, keys, seed=config.seed, bits=config.coverage_bits, tables=config.coverage_tables,
                     center=coverage_center, device=device) if coverage else None
    return Sketch(config.sketch_key(), m, [c.name for c in cols], [c.kind for c in cols], sigs,
                  np.array([c.total for c in cols], dtype=np.float64),
                  np.array([c.count for c in cols], dtype=np.int64), n, n_parts, hist, cov, rows, owner,
                  left_out=left_out or None,
                  set_elems=None if minhash else [np.unique(np.asarray(c.set_elems, dtype=np.int64)) for c in cols])


def finish_coverage(sk: Sketch, config: SketchConfig, center, device: str = "auto") -> Sketch:
    """The coverage counts of a sketch built with ``coverage=False``, coded around ``center`` from its
    transformed rows (which it then drops): the sketch ``coverage_center=center`` would have built."""
    from . import coverage as _cov

    keys = _coverage_keys(tuple(sk.names), tuple(sk.kinds), config.seed)
    sk.coverage = _cov.build(sk.rows, np.array(keys), seed=config.seed, bits=config.coverage_bits,
                             tables=config.coverage_tables, center=center, device=device)
    sk.rows = sk.row_owner = None
    return sk


def partition_counts(part: np.ndarray, bucket: np.ndarray, n_parts: int,
                     rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Occurrences per (partition, bucket): ``(part int32, bucket int32, count uint32)`` of the
    distinct pairs, sorted by (part, bucket) -- ``np.unique`` of the pairs with counts, computed by
    mapping the buckets to ranks (by offset within a narrow range, else ``pd.factorize``, sorted) and counting ``part * n_buckets + rank``
    cells with ``np.bincount`` when there are not many more cells than occurrences (the sort of n
    keys is most of the cost otherwise); else by ``np.unique``. With ``rows``, occurrence ``i`` is
    in partition ``part[rows[i]]`` (``part`` then gives each row's partition). int32 buckets are
    counted the same way in one compiled pass (kernels/ingest.py ``pair_counts``) when it is built."""
    bucket = np.asarray(bucket)
    if bucket.dtype == np.int32 and bucket.ndim == 1:
        got = _ingest.pair_counts(part, rows, bucket, n_parts, max(1 << 20, 4 * len(bucket)))
        if got is not None:
            return got
    part = np.asarray(part, dtype=np.int64)
    if rows is not None:
        part = part[rows]
    if len(bucket) == 0:
        return np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.uint32)
    lo, hi = int(bucket.min()), int(bucket.max())
    if hi - lo < min(1 << 16, 4 * len(bucket) + 64):    # a narrow range (numeric buckets): offsets are ranks
        off = bucket.astype(np.int64)
        off -= lo
        present = np.bincount(off, minlength=hi - lo + 1) > 0
        uniq = np.flatnonzero(present) + lo
        ranks = (np.cumsum(present) - 1)[off]
    else:
        ranks, uniq = pd.factorize(bucket, sort=True)
    nb = len(uniq)
    cells = int(n_parts) * nb
    if cells <= max(1 << 20, 4 * len(bucket)):
        key = part * nb
        key += ranks
        cnt = np.bincount(key, minlength=cells)
        nz = np.flatnonzero(cnt)
        return ((nz // nb).astype(np.int32), np.asarray(uniq, dtype=np.int64)[nz % nb].astype(np.int32),
                cnt[nz].astype(np.uint32))
    key = part * (1 << 32) + (bucket.astype(np.int64) + (1 << 31))
    uk, cnt = np.unique(key, return_counts=True)
    return (uk >> 32).astype(np.int32), ((uk & 0xFFFFFFFF) - (1 << 31)).astype(np.int32), cnt.astype(np.uint32)


MAX_ROWS = 1 << 40        # rows a sketch may claim (n_rows); partitions are at most one per row


def check_sketch(sk: Sketch, config: SketchConfig) -> None:
    """Refuse (``InvalidArgumentError``) a sketch that could not have been built by
    :func:`build_sketch` under ``config``: every array's shape, dtype and range, histograms sorted
    by (part, feat, bucket) within ``n_partitions`` x ``n_features``, ``n_partitions`` consistent
    with ``n_rows``, the coverage record over this hub's bits / tables and the sketch's columns.
    A stored entry can then never break a search of others (issue 23)."""
    def bad(why):
        return InvalidArgumentError(f"sketch is malformed: {why}; build it with fitsketch.sketch_data(data, hub.config) "
                                    "and send Sketch.to_bytes() / to_record() unchanged")

    def int_array(a, what, shape=None):
        if not (isinstance(a, np.ndarray) and a.dtype.kind in "iu" and (a.ndim == 1 if shape is None else a.shape == shape)):
            raise bad(f"{what} must be a 1-D integer array" if shape is None else
                      f"{what} must be an integer array of shape {shape}, got {getattr(a, 'shape', type(a).__name__)}")
        return a

    from .quantize import KINDS

    names, kinds = sk.names, sk.kinds
    if not (isinstance(names, list) and isinstance(kinds, list)):
        raise bad(f"names must be non-empty str and kinds one of {KINDS}, one per feature")
    _check_columns(names, kinds, bad)
    n = len(names)
    for key in ("partition_size", "n_rows", "n_partitions"):
        v = getattr(sk, key)
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < (1 if key == "partition_size" else 0):
            raise bad(f"{key}={v!r} must be a {'positive' if key == 'partition_size' else 'non-negative'} int")
    if sk.n_rows > MAX_ROWS:
        raise bad(f"n_rows={sk.n_rows} is over {MAX_ROWS}")
    if not -(-sk.n_rows // sk.partition_size) <= sk.n_partitions <= sk.n_rows:
        raise bad(f"n_partitions={sk.n_partitions} does not fit n_rows={sk.n_rows} in partitions of at most "
                  f"{sk.partition_size} rows (between ceil(n_rows / partition_size) and n_rows)")
    sig = sk.signatures
    if not (isinstance(sig, np.ndarray) and sig.dtype == np.uint32 and sig.shape == (n, config.num_perm)):
        raise bad(f"signatures must be uint32 of shape ({n}, {config.num_perm}), got "
                  f"{getattr(sig, 'dtype', type(sig).__name__)} {getattr(sig, 'shape', '')}")
    if not (isinstance(sk.sums, np.ndarray) and sk.sums.shape == (n,) and sk.sums.dtype.kind == "f"):
        raise bad(f"sums must be a float array of shape ({n},)")
    counts = int_array(sk.counts, "counts", (n,))
    if n and _negative(counts):
        raise bad("counts must be non-negative")
    h = sk.hist
    if not (isinstance(h, dict) and set(h) == {"part", "feat", "bucket", "count"}):
        raise bad("hist must be a map of part, feat, bucket, count")
    part, feat, bucket, count = (int_array(h[k], f"hist {k}") for k in ("part", "feat", "bucket", "count"))
    if not len(part) == len(feat) == len(bucket) == len(count):
        raise bad("hist arrays must have one length")
    got = _ingest.hist_check(part, feat, bucket, count, sk.n_partitions, n) if len(part) else 0
    if got:   # the compiled pass found one (the NumPy tests below say which, in their order)
        _check_hist(part, feat, bucket, count, sk.n_partitions, n, bad)
        raise bad(f"hist failed the compiled check ({got})")   # pragma: no cover - the two agree (tests/test_ingest_kernels.py)
    if got is None:
        _check_hist(part, feat, bucket, count, sk.n_partitions, n, bad)
    cov = sk.coverage
    if cov is not None:
        _check_coverage(cov, sk, config, bad, int_array)


_COLUMNS_OK: dict = {}   # tuples of names that passed _check_columns


def _check_columns(names: list, kinds: list, bad) -> None:
    """check_sketch's tests of the column names and kinds. The names' tests past their type (distinct,
    encodable) are looked up for names that passed them before (str only: equal tuples hold the
    same values; a hub's sketches share a few schemas, ~30 us a 32-column sketch)."""
    from .quantize import KINDS

    if not (len(names) == len(kinds) and set(map(type, names)) <= {str} and all(map(KINDS.__contains__, kinds))
            and all(names)):
        raise bad(f"names must be non-empty str and kinds one of {KINDS}, one per feature")
    key = tuple(names)
    if key in _COLUMNS_OK:
        return
    if len(set(names)) != len(names):
        raise bad("two features have the same name")
    for x in names:
        try:
            x.encode("utf-8")
        except UnicodeEncodeError:
            raise bad(f"feature name {x!r} holds a lone surrogate") from None
    if len(_COLUMNS_OK) >= 1024:      # bounded: a caller sending many schemas starts over
        _COLUMNS_OK.clear()
    _COLUMNS_OK[key] = True


def _check_hist(part, feat, bucket, count, n_partitions: int, n: int, bad) -> None:
    """check_sketch's histogram tests in NumPy (the definition; kernels/ingest.py ``hist_check`` runs
    them in one pass where the arrays have build_sketch's dtypes): ``bad(why)`` raised on the first failed."""
    if len(part):
        if part.min() < 0 or part.max() >= n_partitions or feat.min() < 0 or feat.max() >= n:
            raise bad(f"hist part / feat out of range (n_partitions={n_partitions}, features={n})")
        if bucket.min() < -(1 << 31) or bucket.max() >= (1 << 31) or count.min() < 1 or count.max() >= (1 << 32):
            raise bad("hist bucket must fit int32 and count be in [1, 2**32)")
        dp, df, db = (np.diff(a.astype(np.int64)) for a in (part, feat, bucket))
        if not np.all((dp > 0) | ((dp == 0) & ((df > 0) | ((df == 0) & (db > 0))))):
            raise bad("hist must be sorted by (part, feat, bucket) without repeats")


def _negative(a: np.ndarray) -> bool:
    """Whether integer array ``a`` holds a value below 0 (never for an unsigned dtype: no pass over it)."""
    return a.dtype.kind == "i" and bool(a.min() < 0)


def _check_coverage(cov, sk: Sketch, config: SketchConfig, bad, int_array) -> None:
    from . import coverage as _cov

    if not (isinstance(cov, dict) and {"v", "keys", "center", "bits", "tables", "table", "code", "count"} <= set(cov)):
        raise bad("coverage must be a map with v, keys, center, bits, tables, table, code, count")
    if cov["v"] != _cov.COVERAGE_FORMAT:
        raise bad(f"coverage format {cov['v']!r} is not {_cov.COVERAGE_FORMAT}")
    if cov["bits"] != config.coverage_bits or cov["tables"] != config.coverage_tables \
            or isinstance(cov["bits"], bool) or isinstance(cov["tables"], bool):
        raise bad(f"coverage has bits={cov['bits']!r}, tables={cov['tables']!r}; this hub codes "
                  f"{config.coverage_bits} bits in {config.coverage_tables} tables")
    keys = int_array(cov["keys"], "coverage keys")
    want = _coverage_keys(tuple(sk.names), tuple(sk.kinds), config.seed)
    if keys.shape != want.shape or not np.array_equal(keys.astype(np.int64), want):
        raise bad("coverage keys do not match the sketch's columns (names and kinds)")
    center = cov["center"]
    if not (isinstance(center, np.ndarray) and center.shape == keys.shape and center.dtype.kind == "f"
            and np.isfinite(center).all()):
        raise bad("coverage center must be finite floats, one per key")
    table, code, count = (int_array(cov[k], f"coverage {k}") for k in ("table", "code", "count"))
    if not len(table) == len(code) == len(count):
        raise bad("coverage table / code / count must have one length")
    if len(table) and (_negative(table) or table.max() >= config.coverage_tables or _negative(code)
                       or code.max() >= (1 << config.coverage_bits) or _negative(count)
                       or count.max() > sk.n_rows):
        raise bad("coverage table / code / count out of range")


def sketch_from_record(rec: dict) -> Sketch:
    """The Sketch of a record (``Sketch.to_record()``), its structure checked: a malformed record
    raises ``InvalidArgumentError`` (the hub checks the rest against its parameters on add)."""
    if not isinstance(rec, dict):
        raise InvalidArgumentError(f"a sketch record is a map, got {type(rec).__name__}")
    try:
        sk = _from_record(rec)
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as e:
        raise InvalidArgumentError(f"sketch record is malformed ({type(e).__name__}: {e}): send "
                                   "Sketch.to_bytes() / to_record() unchanged") from None
    if not (isinstance(sk.hist, dict) and set(sk.hist) == {"part", "feat", "bucket", "count"}):
        raise InvalidArgumentError("sketch record is malformed: hist must be a map of part, feat, bucket, count")
    return sk


def _from_record(rec: dict) -> Sketch:
    if rec.get("v") != SKETCH_FORMAT:
        from .errors import SchemaError

        raise SchemaError(f"sketch record has format {rec.get('v')!r}; this fitsketch reads {SKETCH_FORMAT}: "
                          "upgrade fitsketch or rebuild the sketch")
    missing = {"config_key", "partition_size", "names", "kinds", "signatures", "sums", "counts", "n_rows",
               "n_partitions", "hist"} - set(rec)
    if missing:
        raise InvalidArgumentError(f"sketch record lacks {sorted(missing)}: it is not a complete fitsketch sketch")
    return Sketch(tuple(rec["config_key"]), int(rec["partition_size"]), list(rec["names"]), list(rec["kinds"]),
                  np.asarray(rec["signatures"], dtype=np.uint32), np.asarray(rec["sums"], dtype=np.float64),
                  np.asarray(rec["counts"], dtype=np.int64), int(rec["n_rows"]), int(rec["n_partitions"]),
                  {k: np.asarray(v) for k, v in rec["hist"].items()},
                  {k: (np.asarray(v) if isinstance(v, np.ndarray) else v) for k, v in rec["coverage"].items()}
                  if rec.get("coverage") else None, classes=_classes_from_record(rec, len(rec["names"])))


def _classes_from_record(rec: dict, n_features: int):
    if rec.get("classes") is None:
        return None
    from .accuracy import check_record
    from .errors import CorruptHubError

    try:
        cl = check_record({**rec["classes"], "perf": None}, n_features)
    except CorruptHubError:
        raise InvalidArgumentError("the sketch's class record is malformed: rebuild the sketch with labels=") from None
    return {k: (np.asarray(v) if isinstance(v, np.ndarray) else v) for k, v in cl.items()}


@functools.lru_cache(maxsize=256)
def _coverage_keys(names: tuple, kinds: tuple, seed: int) -> np.ndarray:
    """The coverage keys of columns ``names`` of ``kinds`` (coverage.column_block's), memoized: the
    sketches of one hub keep one schema, and hashing each name costs ~70 us (add_sketches)."""
    from . import coverage as _cov

    if not names:
        return np.zeros(0, np.int64)
    out = np.concatenate([np.array([_cov._col_key(nm, seed) * 16], dtype=np.int64) if kind == "numeric" else
                          _cov._col_key(nm, seed) * 16 + 1 + np.arange(_cov.HASH_DIMS, dtype=np.int64)
                          for nm, kind in zip(names, kinds)])
    out.flags.writeable = False
    return out
