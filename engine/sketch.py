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

from dataclasses import dataclass, field

import numpy as np

from .config import SketchConfig
from .data import to_frame
from .errors import InvalidArgumentError
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
        return Sketch(self.config_key, self.partition_size, list(self.names), list(self.kinds),
                      np.minimum(self.signatures, other.signatures), self.sums + other.sums,
                      self.counts + other.counts, self.n_rows + other.n_rows,
                      self.n_partitions + other.n_partitions, hist, cov)

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
                "n_partitions": self.n_partitions, "hist": self.hist, "coverage": self.coverage}


def build_sketch(data, config: SketchConfig, *, partition_size: int | None = None, feature_names=None,
                 device: str = "auto", progress: bool = False, shuffle: bool = True,
                 coverage_center=None, kinds: list[str] | None = None, shuffle_key=None,
                 quantize=None, minhash: bool = True) -> Sketch:
    """Sketch ``data`` (anything :func:`fitsketch.data.to_frame` reads) under ``config``.

    ``coverage_center`` fixes the centre of the coverage row transform (default: the data's own
    mean); sketches built in parts and merged must share it. For parts of one dataset
    (``fitsketch.distributed``): ``kinds`` fixes the column kinds, ``shuffle_key`` seeds the row
    shuffle by ``(config.seed, *shuffle_key)`` instead of the seed alone, and ``quantize`` replaces
    :func:`quantize_column` (``(name, column, config, kind) -> Column``). ``minhash=False`` leaves
    the signatures empty and keeps each feature's MinHash set in ``set_elems`` instead (in memory),
    for a caller that sketches many chunks and hashes the union once (``fitsketch.chunked``).
    """
    m = config.partition_size if partition_size is None else partition_size
    if not isinstance(m, int) or isinstance(m, bool) or m < 1:
        raise InvalidArgumentError(f"partition_size={m!r} is not valid: expected a positive integer")
    df = to_frame(data, feature_names)
    n = len(df)
    cols: list[Column] = []
    it = df.items()
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, total=df.shape[1], desc="sketching features", unit="feature", leave=False)
    quantize = quantize or quantize_column
    with shared_tokens():                  # a string column's tokens serve the quantizer and coverage
        for i, (name, col) in enumerate(it):
            cols.append(quantize(name, col, config, None if kinds is None else kinds[i]))
        from . import coverage as _cov

        rows, keys, owner = _cov.row_matrix(df, [c.kind for c in cols], config.seed)
    # MinHash of every feature's bucket set in one batched call
    lengths = np.array([len(c.set_elems) for c in cols], dtype=np.int64)
    offsets = np.zeros(len(cols) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    values = np.concatenate([c.set_elems for c in cols]).astype(np.int64) if cols else np.zeros(0, np.int64)
    if minhash:
        sigs = minhash_csr(values, offsets, num_perm=config.num_perm, seed=config.seed, device=device)
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
        key = part_of_row[c.rows] * (1 << 32) + (c.hist.astype(np.int64) + (1 << 31))
        uniq, cnt = np.unique(key, return_counts=True)
        parts.append((uniq >> 32).astype(np.int32))
        buckets.append(((uniq & 0xFFFFFFFF) - (1 << 31)).astype(np.int32))
        feats.append(np.full(len(uniq), f, dtype=np.int32))
        counts.append(cnt.astype(np.uint32))
    hist = {"part": np.concatenate(parts), "feat": np.concatenate(feats),
            "bucket": np.concatenate(buckets), "count": np.concatenate(counts)}
    order = np.lexsort((hist["bucket"], hist["feat"], hist["part"]))
    hist = {k: v[order] for k, v in hist.items()}
    cov = _cov.build(rows, keys, seed=config.seed, bits=config.coverage_bits, tables=config.coverage_tables,
                     center=coverage_center, device=device)
    return Sketch(config.sketch_key(), m, [c.name for c in cols], [c.kind for c in cols], sigs,
                  np.array([c.total for c in cols], dtype=np.float64),
                  np.array([c.count for c in cols], dtype=np.int64), n, n_parts, hist, cov, rows, owner,
                  set_elems=None if minhash else [np.unique(np.asarray(c.set_elems, dtype=np.int64)) for c in cols])


def sketch_from_record(rec: dict) -> Sketch:
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
                  if rec.get("coverage") else None)
