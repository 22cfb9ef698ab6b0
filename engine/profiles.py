"""Profiles: one small vector per entry, so a query on a large hub scores a shortlist, not every entry.

Since engine/screen.py this is the *fast, approximate* candidate stage, run only when a query asks
``shortlist_screen="profile"``: on zoos of similar entries the projection's error exceeds the
differences between entries (bench/bench_shortlist.py, similar workload), where the screen
computes every entry's own score instead. The records are still written with every entry.

Scoring a candidate (alignment, its partition histograms, JS-LSH over them) costs about a
millisecond, so a hub of a million entries sharing the query's columns cannot be scored
exhaustively in interactive time. Each entry therefore carries a *profile*: the Hellinger
embedding of its dataset-level feature distributions under a random projection keyed by feature
**name**,

    profile(D) = sum_f sum_b sqrt(p_f(b)) * g(seed, name_f, b) / sqrt(F),   g ~ N(0, I_d / d),

where ``p_f`` is feature ``f``'s normalized histogram over the quantizer's buckets and ``F`` the
number of non-empty features. Then ``E[profile(D_t) . profile(D_s)]`` is the sum over same-named
features of the Bhattacharyya coefficient ``sum_b sqrt(p_t(b) p_s(b))`` divided by
``sqrt(F_t F_s)``: 1 for identical data, 0 for disjoint columns or values (the projection adds
noise of standard deviation about ``1/sqrt(d)``). The search ranks every entry by that inner
product (a FAISS inner-product index, exact below ``IVF_FROM`` entries, IVF above) and hands the
top ``shortlist`` to the exact stages (MinHash alignment, the chosen method). Recall of the
exhaustive top-k is measured in ``bench/scale.py``.

Profiles are keyed by name, so they only see features the query names the same way; the planner
skips the shortlist (scores exhaustively) when no stored feature has one of the query's names.

Storage: database ``profiles``, key ``u64(entry id)`` -> ``{"v", "x" float16 (d,), "names"
(name keys, int64)}`` and database ``profile_keys``, key ``u64(entry id)`` -> ``{"v", "jk_params", "jk_part",
"jk_data", "jk_small_params", "jk_small"}`` (the entry's JS-LSH band keys under the identity
alignment, see ``record``; ``jk_small*`` since issue 24, absent in older records), both
written in the entry's transaction (hubs before format 5 wrote them to database ``extra``, keys
``b"p"`` / ``b"k"`` + u64(entry id), still read: ``stored_profiles``, ``stored_keys``). The in-memory index is derived: built
from those records on first use and kept in step with the hub's generation (new entries by a
range scan over ids above the last one seen, removals by a key scan).
"""
from __future__ import annotations

import functools
import threading

import faiss
import numpy as np
import pandas as pd

from .kernels import ingest as _ingest
from .kernels.hashing import hash_tokens
from .kernels.jslsh import gaussian_projection
from .storage import from_u64, u64

PROFILE_FORMAT = 1
PROFILE_DIM = 128
IVF_FROM = 200_000        # exact inner products below this many entries, IVF from there on
IVF_NPROBE = 32
IVF_MIN_DISTINCT = 64     # distinct training profiles per IVF list, at least
IVF_MIN_LISTS = 16        # fewer lists than this: exact search instead
_PREFIX = b"p"
_SEED_SALT = 0x9E0F11E5


def key(entry_id: int) -> bytes:
    """Key of an entry's profile record in database ``extra`` (entries added before hub format 5;
    since, database ``profiles``, key ``u64(entry id)``)."""
    return _PREFIX + u64(entry_id)


def keys_key(entry_id: int) -> bytes:
    """Key of an entry's stored JS-LSH band keys in database ``extra`` (entries added before hub
    format 5; since, database ``profile_keys``, key ``u64(entry id)``)."""
    return b"k" + u64(entry_id)


def stored_keys(txn, entry_id: int):
    """The entry's stored JS-LSH band keys record (``record``'s second), None when it has none:
    database ``profile_keys`` (hub format 5: each kind of record in its own database, keyed by the
    entry id, so that adds append them and their pages are left full), else the ``extra`` record
    an older fitsketch wrote."""
    return txn.get("profile_keys", u64(entry_id)) or txn.get("extra", keys_key(entry_id))


def stored_profiles(txn, after: int) -> list:
    """``[(entry id, profile record)]`` of the entries above id ``after`` that have one, ascending:
    those written before hub format 5 (database ``extra``), then those since (``profiles``)."""
    out = [(from_u64(k[1:]), rec) for k, rec in txn.items("extra", _PREFIX, start=key(after + 1)) if len(k) == 9]
    out += [(from_u64(k), rec) for k, rec in txn.items("profiles", start=u64(after + 1))]
    out.sort(key=lambda t: t[0])
    return out


def name_keys(names, seed: int) -> np.ndarray:
    """Stable int64 keys of feature names (63 bits of the seeded hash)."""
    if len(names) == 0:
        return np.zeros(0, dtype=np.int64)
    return _name_keys(tuple(str(n) for n in names), seed).copy()


@functools.lru_cache(maxsize=256)
def _name_keys(names: tuple, seed: int) -> np.ndarray:
    # memo: the entries of a hub keep one schema, and hashing names costs ~70 us a call
    return (hash_tokens(np.array(names, dtype=object), seed) >> np.uint64(1)).astype(np.int64)


def profile(hist: dict, names, seed: int, dim: int = PROFILE_DIM) -> np.ndarray:
    """The profile (float32 ``(dim,)``) of a sketch's partition histograms (module docstring)."""
    feat = np.asarray(hist["feat"], dtype=np.int64)
    out = np.zeros(dim, dtype=np.float64)
    if len(feat) == 0:
        return out.astype(np.float32)
    bucket = np.asarray(hist["bucket"], dtype=np.int64)
    count = np.asarray(hist["count"], dtype=np.float64)
    fb = (feat << 32) + (bucket + (1 << 31))
    inv, uniq = pd.factorize(fb, sort=True)             # np.unique(fb, return_inverse=True), by hashing
    c = np.bincount(inv, weights=count, minlength=len(uniq))
    f = uniq >> 32
    b = (uniq & 0xFFFFFFFF) - (1 << 31)
    totals = np.bincount(f, weights=c, minlength=int(f.max()) + 1)
    keep = totals[f] > 0
    f, b, c = f[keep], b[keep], c[keep]
    n_feat = int((totals > 0).sum())
    if n_feat == 0:
        return out.astype(np.float32)
    w = np.sqrt(c / totals[f])
    nk = name_keys(list(names), seed)[f]
    a = gaussian_projection(seed ^ _SEED_SALT, nk, b, dim).astype(np.float64)   # (nnz, dim)
    out = (w[:, None] * a).sum(axis=0) / np.sqrt(n_feat * dim)
    return out.astype(np.float32)


def record(hist: dict, names, n_partitions: int, config, device: str = "auto") -> tuple[dict, dict]:
    """The entry's two records: ``(profile, keys)``. ``profile`` = the vector and the keys of the
    names of its non-empty features (read by the index, so kept small); ``keys`` = its JS-LSH band
    keys under the identity alignment (``jk_part`` per partition, ``jk_data`` per dataset;
    engine/jslsh.py ``own_keys``) for the hub's default ``jslsh_r/k/l`` (``jk_params``), and
    ``jk_small`` per dataset for the bands a small query is scored with (``small_query_jslsh_r`` /
    ``_l``, ``jk_small_params``): with them js screens a small query by its own score
    (engine/screen.py) instead of a proxy."""
    from .jslsh import own_keys

    seed = config.seed
    x = profile(hist, names, seed)
    feat = np.asarray(hist["feat"], dtype=np.int64)
    used = np.flatnonzero(np.bincount(feat)).tolist() if len(feat) else []   # np.unique(feat), no sort
    kw = dict(seed=seed, r=config.jslsh_r, k=config.jslsh_k, l=config.jslsh_l, device=device)
    return ({"v": PROFILE_FORMAT, "x": x.astype(np.float16), "names": name_keys([names[f] for f in used], seed)},
            {"v": PROFILE_FORMAT, "jk_params": [float(config.jslsh_r), int(config.jslsh_k), int(config.jslsh_l)],
             "jk_part": own_keys(hist, len(names), n_partitions, per_dataset=False, **kw),
             "jk_data": own_keys(hist, len(names), n_partitions, per_dataset=True, **kw),
             "jk_small_params": small_params(config),
             "jk_small": own_keys(hist, len(names), n_partitions, per_dataset=True,
                                  **{**kw, "r": config.small_query_jslsh_r, "l": config.small_query_jslsh_l})})


def small_params(config) -> list:
    """``[r, k, l]`` of the bands a small query is scored with (methods/jslsh.py): ``jk_small_params``."""
    return [float(config.small_query_jslsh_r), int(config.jslsh_k), int(config.small_query_jslsh_l)]


def _aggregate(sketches) -> dict:
    """The batch's histograms in one COO: ``e`` (entry in the batch), ``part``, ``feat``, ``bucket``,
    ``count`` (each sketch's arrays, concatenated in order; sorted by (entry, part, feat, bucket)
    since each sketch's are, check_sketch), ``d_of`` (each cell's dataset-level cell) and per entry
    the dataset-level histogram (partitions summed) as ``d_e``, ``d_feat``, ``d_bucket``,
    ``d_count``, sorted by (entry, feature, bucket) -- what every sketch's ``profile``,
    ``own_keys(per_dataset=True)`` and screen record compute one at a time."""
    lens = np.array([len(s.hist["feat"]) for s in sketches], dtype=np.int64)

    def cat(k, t):
        return np.concatenate([np.asarray(s.hist[k]) for s in sketches]).astype(t) if len(sketches) else np.zeros(0, t)

    e = np.repeat(np.arange(len(sketches), dtype=np.int64), lens)
    part, feat, bucket, count = cat("part", np.int64), cat("feat", np.int64), cat("bucket", np.int64), \
        cat("count", np.float64)
    got = _ingest.agg_cells(lens, feat, bucket, count)   # compiled: the same cells, sums in the same order
    inv, uniq, d_count = got if got is not None else _cells(e, feat, bucket, count)
    return {"e": e, "part": part, "feat": feat, "bucket": bucket, "count": count, "d_of": inv, "d_e": uniq >> 48,
            "d_feat": (uniq >> 32) & 0xFFFF, "d_bucket": (uniq & 0xFFFFFFFF) - (1 << 31), "d_count": d_count}


def _cells(e, feat, bucket, count) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``_aggregate``'s dataset-level cells in NumPy (the definition; kernels/ingest.py ``agg_cells`` is
    the compiled pass): each non-zero's cell, the cells' keys ``e << 48 | feat << 32 | (bucket + 2**31)``
    ascending and their summed counts."""
    # (entry, feature, bucket) -> one int64: entries < 2^15 a batch, features < 2^16, buckets int32.
    # Each sketch's cells are sorted by (part, feat, bucket): the keys are n_partitions sorted runs a
    # sketch, which a stable (run-merging) sort orders ~7x faster than factorize(sort=True) hashes them
    key = (e << 48) | (feat << 32) | (bucket + (1 << 31))
    order = np.argsort(key, kind="stable")
    ks = key[order]
    start = np.ones(len(ks), dtype=bool)
    np.not_equal(ks[1:], ks[:-1], out=start[1:])
    run = np.cumsum(start) - 1
    inv = np.empty(len(ks), dtype=np.int64)
    inv[order] = run
    uniq = ks[start]
    # each dataset cell's counts summed in cell order (the sort is stable), as the factorize did
    return inv, uniq, np.bincount(run, weights=count[order], minlength=len(uniq))


BATCH = 1 << 15    # entries a _aggregate may hold (the entry index takes the key's top 15 bits)


def _runs(*keys) -> np.ndarray:
    """Run id of every element of arrays sorted by ``keys`` (a new run where any key changes)."""
    n = len(keys[0])
    start = np.zeros(n, dtype=bool)
    start[:1] = True
    for k in keys:
        start[1:] |= k[1:] != k[:-1]
    return np.cumsum(start) - 1


def _sparse_keys(rows, cols, vals, n_rows, a, b, r, k, l) -> np.ndarray:
    """``band_keys(ceil((sqrt(P) @ a + b) / r))`` of the sparse rows ``P`` (``rows`` ascending,
    ``cols`` ascending within a row): float32 as kernels.jslsh.project, each row summed over its own
    non-zeros in column order (so a row's keys do not depend on the other rows of the batch)."""
    from scipy import sparse

    from .kernels.jslsh import band_keys

    indptr = np.searchsorted(rows, np.arange(n_rows + 1))
    data = np.sqrt(vals).astype(np.float32)
    prod = _ingest.csr_proj(indptr, cols, data, a)    # compiled, scipy's sums bit for bit (kernels/ingest.py)
    if prod is None:
        prod = sparse.csr_matrix((data, cols, indptr), shape=(n_rows, len(a))) @ a
    v = (prod + b) / np.float32(r)
    return band_keys(np.ceil(v).astype(np.int64), k, l)


def records(sketches, config, device: str = "auto", agg: dict | None = None) -> list[tuple[dict, dict]]:
    """``record(...)`` of every sketch in ``sketches`` (each a Sketch, features < 2^16), computed for
    the batch at once (``Hub.add_sketches``): one random projection over the union of the batch's
    coordinates for the profiles and for each kind of JS-LSH band keys, as sparse products in which
    every row is summed over its own non-zeros in coordinate order -- so an entry's records do not
    depend on the rest of its batch (``records([s])`` is bit-equal). They equal ``record``'s (a dense
    float32 product per entry) up to float rounding: profiles within float16 storage, band keys
    except where rounding moves a projection across a bucket edge (tests/test_profiles.py)."""
    from .kernels.jslsh import offsets

    if len(sketches) > BATCH:
        out = []
        for lo in range(0, len(sketches), BATCH):
            out += records(sketches[lo:lo + BATCH], config, device)
        return out
    n = len(sketches)
    if n == 0:
        return []
    seed = config.seed
    a = agg if agg is not None else _aggregate(sketches)
    n_feat = np.array([s.n_features for s in sketches], dtype=np.int64)
    f_off = np.concatenate([[0], np.cumsum(n_feat)])
    nk_all = np.concatenate([name_keys(list(s.names), seed) for s in sketches])
    de, df, db, dc = a["d_e"], a["d_feat"], a["d_bucket"], a["d_count"]
    run = _runs(de, df)                                                 # dataset-level (entry, feature) cells
    tot = np.bincount(run, weights=dc)[run] if len(run) else dc
    live = np.bincount(de[np.r_[0, np.flatnonzero(np.diff(run)) + 1]], minlength=n) if len(run) else np.zeros(n, int)
    # profiles: sqrt(p) of every dataset-level cell, projected per (name, bucket) coordinate (in sorted order)
    name_ix, name_u = pd.factorize(nk_all, sort=True)
    c_inv, c_uniq = pd.factorize((name_ix[f_off[de] + df].astype(np.int64) << 32) + (db + (1 << 31)), sort=True)
    A = gaussian_projection(seed ^ _SEED_SALT, name_u[c_uniq >> 32], (c_uniq & 0xFFFFFFFF) - (1 << 31),
                            PROFILE_DIM).astype(np.float64)
    from scipy import sparse

    order = np.argsort((de << 32) | c_inv, kind="stable")   # by (entry, coordinate): lexsort((c_inv, de))
    indptr = np.searchsorted(de, np.arange(n + 1))
    W = sparse.csr_matrix((np.sqrt(dc / tot)[order], c_inv[order], indptr), shape=(n, len(c_uniq)))
    X = (W @ A) / np.sqrt(np.maximum(live, 1) * PROFILE_DIM)[:, None]
    # JS-LSH keys under the identity alignment over (feature index, bucket) coordinates, numbered in
    # sorted order: per dataset (row = entry) and per partition (row = partition)
    h = config.jslsh_k * config.jslsh_l
    j_inv, j_uniq = pd.factorize((df << 32) + (db + (1 << 31)), sort=True)
    Aj = gaussian_projection(seed, j_uniq >> 32, (j_uniq & 0xFFFFFFFF) - (1 << 31), h)
    bj = offsets(seed, h, config.jslsh_r)
    kw = dict(a=Aj, b=bj, r=config.jslsh_r, k=config.jslsh_k, l=config.jslsh_l)
    nf = np.maximum(n_feat, 1).astype(np.float64)
    data_keys = _sparse_keys(de, j_inv, dc / tot / nf[de], n, **kw)
    n_part = np.array([s.n_partitions for s in sketches], dtype=np.int64)
    p_off = np.concatenate([[0], np.cumsum(n_part)])
    prow = p_off[a["e"]] + a["part"]
    p_val = _ingest.part_shares(prow, a["feat"], a["count"], a["e"], nf)   # compiled: the same values, bit for bit
    if p_val is None:
        prun = _runs(prow, a["feat"])
        p_val = a["count"] / np.bincount(prun, weights=a["count"])[prun] / nf[a["e"]] if len(prun) else a["count"]
    part_keys = _sparse_keys(prow, j_inv[a["d_of"]], p_val, int(p_off[-1]), **kw)
    hs = config.jslsh_k * config.small_query_jslsh_l
    small_keys = _sparse_keys(de, j_inv, dc / tot / nf[de], n, a=gaussian_projection(seed, j_uniq >> 32, (j_uniq & 0xFFFFFFFF)
                              - (1 << 31), hs), b=offsets(seed, hs, config.small_query_jslsh_r),
                              r=config.small_query_jslsh_r, k=config.jslsh_k, l=config.small_query_jslsh_l)
    small_keys = (small_keys & 0xFFFFFFFF).astype(np.uint32)
    data_keys = (data_keys & 0xFFFFFFFF).astype(np.uint32)
    part_keys = (part_keys & 0xFFFFFFFF).astype(np.uint32)
    out = []
    params = [float(config.jslsh_r), int(config.jslsh_k), int(config.jslsh_l)]
    xs = X.astype(np.float32).astype(np.float16)
    rs = np.flatnonzero(np.r_[True, run[1:] != run[:-1]]) if len(run) else np.zeros(0, np.int64)
    used = nk_all[f_off[de[rs]] + df[rs]]   # each entry's non-empty features' name keys, by feature
    u_lo = np.searchsorted(de[rs], np.arange(n + 1))
    for i in range(n):
        out.append(({"v": PROFILE_FORMAT, "x": xs[i], "names": used[u_lo[i]:u_lo[i + 1]]},
                    {"v": PROFILE_FORMAT, "jk_params": params, "jk_part": part_keys[p_off[i]:p_off[i + 1]],
                     "jk_data": data_keys[i:i + 1], "jk_small_params": small_params(config),
                     "jk_small": small_keys[i:i + 1]}))
    return out


class ProfileIndex:
    """Entry profiles of one hub in memory, synchronized with the hub's generation.

    Rows live in buffers that double when full (an add between two searches appends, it does not
    copy the index); each entry's column names are kept as a schema id (entries of one schema
    share one tuple of name keys)."""

    def __init__(self):
        self.lock = threading.RLock()
        self.generation = -1
        self.n = 0
        self._ids = np.zeros(0, dtype=np.int64)
        self._x = np.zeros((0, PROFILE_DIM), dtype=np.float32)
        self._schema = np.zeros(0, dtype=np.int32)
        self._schema_id: dict[tuple, int] = {}
        self._schema_names: list[frozenset] = []
        self._schema_live: list[int] = []
        self._faiss = None
        self._faiss_n = -1
        self._trained_n = 0

    @property
    def ids(self) -> np.ndarray:
        return self._ids[:self.n]

    @property
    def x(self) -> np.ndarray:
        return self._x[:self.n]

    def __len__(self) -> int:
        return self.n

    def sync(self, txn, generation: int, read_missing=None) -> None:
        """Bring the index to ``generation``: add records of ids above the last seen, drop removed
        ones. ``read_missing(eid) -> profile record`` computes one for an entry stored without."""
        with self.lock:
            if generation == self.generation:
                return
            last = int(self._ids[self.n - 1]) if self.n else -1
            new = stored_profiles(txn, last)
            late = False
            if read_missing is not None:
                # entries without a stored profile (written before profiles were stored: every entry,
                # on the first sync): computed
                have = {eid for eid, _ in new}
                if self.generation == -1:
                    have |= set(self.ids.tolist())
                    scan = txn.keys("entries")
                else:
                    scan = txn.keys("entries", start=u64(last + 1))
                for ek in scan:
                    eid = from_u64(ek)
                    if eid not in have:
                        rec = read_missing(eid)
                        if rec is not None:
                            new.append((eid, rec))
                            late = late or eid < last
            if new:
                new.sort(key=lambda t: t[0])
                self._append(new)
                if late or (self.n > len(new) and new[0][0] < last):
                    order = np.argsort(self.ids, kind="stable")   # old entries profiled late: positions moved
                    self._ids[:self.n], self._x[:self.n] = self.ids[order], self.x[order]
                    self._schema[:self.n] = self._schema[:self.n][order]
                    self._faiss = None
            if self.n > txn.count("entries"):        # some were removed: keep the ids still present
                present = np.fromiter((from_u64(k) for k in txn.keys("entries")), dtype=np.int64)
                keep = np.isin(self.ids, present)
                for sid in self._schema[:self.n][~keep].tolist():
                    self._schema_live[sid] -= 1
                m = int(keep.sum())
                self._ids[:m], self._x[:m] = self.ids[keep], self.x[keep]
                self._schema[:m] = self._schema[:self.n][keep]
                self.n = m
                self._faiss = None
            self.generation = generation

    def _append(self, new: list) -> None:
        need = self.n + len(new)
        if need > len(self._ids):
            cap = max(need, 2 * len(self._ids), 1024)
            for name, dtype, shape in (("_ids", np.int64, ()), ("_x", np.float32, (PROFILE_DIM,)),
                                       ("_schema", np.int32, ())):
                buf = np.zeros((cap,) + shape, dtype=dtype)
                buf[:self.n] = getattr(self, name)[:self.n]
                setattr(self, name, buf)
        for i, (eid, rec) in enumerate(new, start=self.n):
            if rec.get("v") != PROFILE_FORMAT:
                from . import errors as E

                raise E.SchemaError(f"profile record of entry {eid} has format {rec.get('v')}; this fitsketch "
                                    f"reads {PROFILE_FORMAT}: upgrade fitsketch")
            self._ids[i] = eid
            self._x[i] = np.asarray(rec["x"], dtype=np.float32)
            names = tuple(np.asarray(rec["names"], dtype=np.int64).tolist())
            sid = self._schema_id.get(names)
            if sid is None:
                sid = self._schema_id[names] = len(self._schema_names)
                self._schema_names.append(frozenset(names))
                self._schema_live.append(0)
            self._schema_live[sid] += 1
            self._schema[i] = sid
        self.n = need

    def shares_names(self, keys: np.ndarray) -> bool:
        """Whether a live entry has a feature named like one of ``keys`` (name keys)."""
        ks = {int(k) for k in keys}
        return any(live > 0 and ks & names for names, live in zip(self._schema_names, self._schema_live))

    def _index(self):
        """The FAISS index over ``x`` (row i = ``ids[i]``): appended to as entries arrive, rebuilt
        after removals, when the hub doubles since the index was built past ``IVF_FROM`` entries,
        or when an IVF index has doubled since it was trained."""
        n = len(self.ids)
        ivf = n >= IVF_FROM
        if self._faiss is not None:
            is_ivf = isinstance(self._faiss, faiss.IndexIVFFlat)
            if (ivf and not is_ivf and n > max(IVF_FROM, 2 * self._trained_n)) or (not ivf and is_ivf) \
                    or (is_ivf and n > 2 * self._trained_n):
                self._faiss = None
        if self._faiss is not None and self._faiss_n < n:
            self._faiss.add(self.x[self._faiss_n:])
            self._faiss_n = n
        if self._faiss is None:
            self._trained_n = n
            train, nlist = None, 0
            if ivf:
                nlist = int(4 * np.sqrt(n))
                rng = np.random.default_rng(0)
                train = self.x[rng.choice(n, min(n, 64 * nlist), replace=False)]
                # hubs of many copies of few sketches: with more lists than distinct profiles, the
                # copies of one profile land in one of many near-identical lists, which a query
                # near it may not probe; so at most one list per IVF_MIN_DISTINCT distinct profiles
                nlist = min(nlist, len(np.unique(train, axis=0)) // IVF_MIN_DISTINCT)
                ivf = nlist >= IVF_MIN_LISTS
            if ivf:
                q = faiss.IndexFlatIP(PROFILE_DIM)
                idx = faiss.IndexIVFFlat(q, PROFILE_DIM, nlist, faiss.METRIC_INNER_PRODUCT)
                idx.train(train)
                idx.add(self.x)
                idx.nprobe = IVF_NPROBE
                self._quantizer = q   # the IVF index points at it: keep it alive
            else:
                idx = faiss.IndexFlatIP(PROFILE_DIM)
                idx.add(self.x)
            self._faiss, self._faiss_n = idx, n
        return self._faiss

    def build(self) -> None:
        """Build (or bring up to date) the FAISS index now rather than at the next ``top``."""
        with self.lock:
            if self.n:
                self._index()

    def top(self, q: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(entry ids, inner products) of the ``n`` best profiles for query profile ``q``."""
        with self.lock:
            if len(self.ids) == 0 or n <= 0:
                return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
            D, I = self._index().search(np.asarray(q, dtype=np.float32).reshape(1, -1), min(n, len(self.ids)))
            ok = I[0] >= 0
            return self.ids[I[0][ok]], D[0][ok]
