"""Class-conditional Gaussians of predicted accuracy (engine/accuracy.py): the query's class
mixture estimated by EM over Gaussian likelihoods in a fixed low-dimensional projection, instead
of naive Bayes over the per-feature histograms.

Why: naive Bayes over many correlated features (MNIST's 784 pixels) confuses similar classes
(4 / 9, 3 / 5 / 8), and its EM mixture was off by an L1 distance of .19 on MNIST (.12 on digits),
which alone cost more predicted-accuracy error than the issue's target. A quadratic discriminant
in a 32-dimensional random projection models the correlations: L1 .07 / .03 on the tuning zoos
(MNIST seed 0 / digits seeds 0-1; bench/SUMMARY.md, issue 19).

Registration (:func:`gauss_part`, an optional ``"gauss"`` key of the class record): every
numeric column ``j`` of the entry has a fixed random direction ``v(name_j)`` in ``R^GAUSS_DIM``
(seeded by the column's name, so every hub and every query draws the same); a row's projection is
``z = sum_j x_j v(name_j)`` (infinite values count 0). Stored per class: the mean of ``z`` and its
scatter matrix (sum of outer products about the mean, upper triangle), computed in float64 and
stored float32; the class counts are the record's own. Merge (:func:`merge_gauss`): Chan et al.'s
pairwise update, exact in exact arithmetic. Read back: :func:`check_gauss` (types, shapes,
finiteness, feature range) or CorruptHubError. A record without the key scores by naive Bayes, as
before: registered before, with no numeric column, more than ``GAUSS_MAX_CLASSES`` classes, or
(the reason kept in the record's ``"gauss_why"`` and told in the evidence's ``mixture_source``)
a missing value in a numeric column (naive Bayes models them; a projection would not), a float32
mean or scatter that is not finite (values of scale ~1e20), or numeric columns of very different
scales: a column variance over ``GAUSS_MAX_SCALE_RATIO`` (100) x the median non-zero one, where
the ridge (a share of the mean variance) would bury the informative directions (an income column
~1e5 beside features ~1: mixture L1 .47-1.79 against naive Bayes' .003-.008, reviewer's cases). The ratio is at most 4.4 on
samples of digits, MNIST-5k and MNIST 8x8 (50 to 5000 rows), so those stay on this path.

Query (:func:`gauss_pool`, :func:`gauss_loglik`): the labelled candidates' Gaussians are pooled
per class (one hub's, summed over shards by :func:`merge_gauss_pools`) when every candidate
carries one over the same aligned columns; each class's covariance is its own shrunk towards the
pooled within-class one (``GAUSS_SHRINK`` pseudo-rows) plus a ridge, and the log-likelihoods are
divided by ``GAUSS_TEMPERATURE`` (this path's own fixed constant: ``accuracy_temperature``
tempers the naive-Bayes path only; the evidence's ``mixture_temperature`` gives the one used). A
query with a missing value in the pooled columns uses naive Bayes. Chosen on digits seeds 0-1 and MNIST seed 0 (d 16 / 24 / 32 /
48, LDA and QDA, shrink 5 / 20 / 80, temperature 1 / 2), reported on the other seeds.
"""
from __future__ import annotations

import functools
import hashlib
import zlib

import numpy as np
import pandas as pd

from . import errors as E

GAUSS_DIM = 32             # dimensions of the projection
GAUSS_SHRINK = 20.0        # pseudo-rows pulling a class's covariance towards the pooled within-class one
GAUSS_RIDGE = 1e-3         # ridge, as a share of the mean variance of the pooled covariance
GAUSS_TEMPERATURE = 2.0    # the Gaussian log-likelihoods are divided by it before EM
GAUSS_MAX_CLASSES = 256    # an entry with more classes stores no Gaussian (its size grows with K d^2)
GAUSS_SEED = 0x6A055       # the projection's seed (fixed: registrations and queries must agree)
GAUSS_MAX_SCALE_RATIO = 100.0   # no Gaussian when a numeric column's variance exceeds this x the median
#                                 non-zero one (digits / MNIST-5k / MNIST 8x8 samples: at most 4.4)
WHY_MISSING = "a numeric column of the entry has missing values"
WHY_SCALE = f"the entry's numeric columns differ in scale (a variance > {GAUSS_MAX_SCALE_RATIO:g} x the median one)"
WHY_OVERFLOW = "the entry's values are too large for float32 class Gaussians"
WHY_CLASSES = f"the entry has more than {GAUSS_MAX_CLASSES} classes"
WHYS = (WHY_MISSING, WHY_SCALE, WHY_OVERFLOW, WHY_CLASSES)
MAX_WHY = 200              # characters of a stored reason (validated when read)
_TRI = GAUSS_DIM * (GAUSS_DIM + 1) // 2
_IU = np.triu_indices(GAUSS_DIM)


@functools.lru_cache(maxsize=64)
def directions(names: tuple) -> np.ndarray:
    """(len(names), GAUSS_DIM) the fixed random direction of each column name."""
    out = np.empty((len(names), GAUSS_DIM))
    for i, n in enumerate(names):
        h = zlib.crc32(str(n).encode("utf-8", "surrogatepass"))
        out[i] = np.random.default_rng([GAUSS_SEED, h, len(str(n))]).standard_normal(GAUSS_DIM)
    out /= np.sqrt(GAUSS_DIM)
    out.setflags(write=False)
    return out


_BLOCK_BYTES = 1 << 26    # rows are projected in blocks of at most this many float64 bytes


def has_missing(df: pd.DataFrame, cols: list[str]) -> bool:
    """Whether any of the columns ``cols`` of ``df`` holds a missing value (NaN / None / NA)."""
    return bool(df[cols].isna().to_numpy().any())


def project(df: pd.DataFrame, cols: list[str], dir_names: list[str]) -> np.ndarray | None:
    """(n, GAUSS_DIM) projections of the rows of ``df``: its columns ``cols`` along the directions
    of ``dir_names`` (the entry's names of them; infinite values count 0). None if a column is not
    numeric or holds a missing value (the callers fall back to naive Bayes, which models them).
    Projected in row blocks (one float64 copy of a block at a time)."""
    P = directions(tuple(dir_names))
    n = len(df)
    step = max(1, _BLOCK_BYTES // (8 * max(len(cols), 1)))
    out = np.empty((n, GAUSS_DIM))
    sub = df[cols]
    for a in range(0, n, step):
        blk = sub if n <= step else sub.iloc[a:a + step]
        try:
            X = np.asarray(blk.to_numpy(dtype=np.float64, na_value=np.nan), dtype=np.float64)
        except (TypeError, ValueError):
            return None
        fin = np.isfinite(X)
        if not fin.all():
            if np.isnan(X).any():
                return None
            X = np.where(fin, X, 0.0)
        out[a:a + step] = X @ P
    return out


def _tri(M: np.ndarray) -> np.ndarray:
    return M[..., _IU[0], _IU[1]]


def _full(t: np.ndarray) -> np.ndarray:
    M = np.zeros(t.shape[:-1] + (GAUSS_DIM, GAUSS_DIM))
    M[..., _IU[0], _IU[1]] = t
    M[..., _IU[1], _IU[0]] = t
    return M


def gauss_part(df: pd.DataFrame, codes: np.ndarray, K: int, names: list[str], kinds: list[str]) -> tuple:
    """``(part, why)``: the ``"gauss"`` part of a class record of rows ``df`` with class codes
    ``codes`` (0..K-1), or None and why not (None when there is nothing to say: no numeric column)."""
    if K > GAUSS_MAX_CLASSES:
        return None, WHY_CLASSES
    feat = [j for j, k in enumerate(kinds) if k == "numeric" and (pd.api.types.is_numeric_dtype(df[names[j]])
                                                                  or pd.api.types.is_bool_dtype(df[names[j]]))
            and df[names[j]].notna().any()]
    if not feat:
        return None, None
    cols = [names[j] for j in feat]
    if has_missing(df, cols):
        return None, WHY_MISSING
    with np.errstate(over="ignore", invalid="ignore"):   # an overflowing variance is a scale gap too
        cm, var = np.empty(len(cols)), np.empty(len(cols))
        for i, c in enumerate(cols):      # one column's float64 copy at a time
            try:
                x = np.asarray(df[c].to_numpy(dtype=np.float64), dtype=np.float64)
            except (TypeError, ValueError):
                return None, None
            cm[i], var[i] = np.mean(x), np.var(x)
        if _scale_gap(var):
            return None, WHY_SCALE
    Z = project(df, cols, cols)
    if Z is None:
        return None, None
    n = np.bincount(codes, minlength=K).astype(np.float64)
    mean = np.zeros((K, GAUSS_DIM))
    np.add.at(mean, codes, Z)
    mean /= np.maximum(n, 1.0)[:, None]
    D = Z - mean[codes]
    scatter = np.zeros((K, GAUSS_DIM, GAUSS_DIM))
    for k in range(K):
        Dk = D[codes == k]
        scatter[k] = Dk.T @ Dk
    return _finite32(feat, mean, _tri(scatter), cm, var * len(df))


def _scale_gap(var: np.ndarray) -> bool:
    """Whether column variances ``var`` differ too much in scale (or overflow) for the Gaussians."""
    with np.errstate(over="ignore", invalid="ignore"):
        nz = var[var > 0]
        return bool(nz.size) and not (np.isfinite(var).all() and var.max() <= GAUSS_MAX_SCALE_RATIO * np.median(nz))


def _finite32(feat, mean: np.ndarray, scatter: np.ndarray, col_mean: np.ndarray, col_m2: np.ndarray) -> tuple:
    """The part, or None and WHY_OVERFLOW. ``col_mean`` / ``col_m2`` (float64, one per column of
    ``feat``): the columns' mean and sum of squared deviations, kept so that a merge re-checks the
    scale gap on the union (two chunks may each pass while their union does not)."""
    with np.errstate(over="ignore", invalid="ignore"):
        m32, s32 = mean.astype(np.float32), scatter.astype(np.float32)
    if not (np.isfinite(m32).all() and np.isfinite(s32).all() and np.isfinite(col_mean).all()
            and np.isfinite(col_m2).all()):
        return None, WHY_OVERFLOW
    return {"d": GAUSS_DIM, "feat": np.asarray(feat, dtype=np.int32), "mean": m32, "scatter": s32,
            "col_mean": np.asarray(col_mean, np.float64), "col_m2": np.asarray(col_m2, np.float64)}, None


def _combine(parts: list) -> tuple[list, np.ndarray, np.ndarray, np.ndarray]:
    """``(labels, n, mean, scatter)`` of the union of ``parts`` [(labels, n, mean, scatter tri)]:
    per class, the pooled count, mean and scatter about the pooled mean (Chan et al.)."""
    from .accuracy_records import _sort_key

    labels = sorted({c for p in parts for c in p[0]}, key=_sort_key)
    index = {c: i for i, c in enumerate(labels)}
    K = len(labels)
    n = np.zeros(K)
    s1 = np.zeros((K, GAUSS_DIM))
    for lab, nn, mu, _ in parts:
        idx = np.array([index[c] for c in lab], dtype=np.int64)
        nn = np.asarray(nn, np.float64)
        np.add.at(n, idx, nn)
        np.add.at(s1, idx, nn[:, None] * np.asarray(mu, np.float64))
    mean = s1 / np.maximum(n, 1.0)[:, None]
    scatter = np.zeros((K, _TRI))
    for lab, nn, mu, sc in parts:
        idx = np.array([index[c] for c in lab], dtype=np.int64)
        d = np.asarray(mu, np.float64) - mean[idx]
        np.add.at(scatter, idx, np.asarray(sc, np.float64) + np.asarray(nn, np.float64)[:, None]
                  * _tri(d[:, :, None] * d[:, None, :]))
    return labels, n, mean, scatter


def merge_gauss(a: dict, b: dict) -> tuple:
    """``(part, why)``: the ``"gauss"`` part of :func:`~fitsketch.accuracy.merge_records` of class
    records ``a`` and ``b``, or None and why not (None when either lacks one or they project
    different columns: the records' own reasons then stand). The columns' moments merge by Chan et
    al.'s update and the scale gap is checked again on the union."""
    ga, gb = a.get("gauss"), b.get("gauss")
    if ga is None or gb is None or not np.array_equal(np.asarray(ga["feat"]), np.asarray(gb["feat"])):
        return None, None
    labels, _, mean, scatter = _combine([(r["labels"], r["counts"], r["gauss"]["mean"], r["gauss"]["scatter"])
                                         for r in (a, b)])
    if len(labels) > GAUSS_MAX_CLASSES:
        return None, WHY_CLASSES
    na, nb = float(np.sum(a["counts"])), float(np.sum(b["counts"]))
    ma, mb = np.asarray(ga["col_mean"], np.float64), np.asarray(gb["col_mean"], np.float64)
    n = max(na + nb, 1.0)
    with np.errstate(over="ignore", invalid="ignore"):
        delta = mb - ma
        cm = ma + delta * (nb / n)
        m2 = np.asarray(ga["col_m2"], np.float64) + np.asarray(gb["col_m2"], np.float64) + delta * delta * (na * nb / n)
    if _scale_gap(m2 / n):
        return None, WHY_SCALE
    return _finite32(ga["feat"], mean, scatter, cm, m2)


def check_gauss(g, K: int, n_features: int) -> None:
    """The ``"gauss"`` part of a stored or received class record of ``K`` classes over
    ``n_features`` features, validated, or CorruptHubError."""
    if g is None:
        return
    ok = isinstance(g, dict) and _is_int(g.get("d")) and g["d"] == GAUSS_DIM and K <= GAUSS_MAX_CLASSES
    if ok:
        try:
            feat, mean, sc = (np.asarray(g.get(x)) for x in ("feat", "mean", "scatter"))
        except (TypeError, ValueError):
            ok = False
    if ok:
        ok = (feat.ndim == 1 and 1 <= feat.size <= n_features and feat.dtype.kind in "iu"
              and feat.min() >= 0 and feat.max() < n_features and bool(np.all(np.diff(feat) > 0))
              and mean.shape == (K, GAUSS_DIM) and sc.shape == (K, _TRI)
              and mean.dtype.kind == "f" and sc.dtype.kind == "f"
              and bool(np.isfinite(mean).all()) and bool(np.isfinite(sc).all()))
    if ok:
        try:
            cm, m2 = (np.asarray(g.get(x)) for x in ("col_mean", "col_m2"))
        except (TypeError, ValueError):
            ok = False
    if ok:
        ok = (cm.shape == feat.shape and m2.shape == feat.shape and cm.dtype.kind == "f" and m2.dtype.kind == "f"
              and bool(np.isfinite(cm).all()) and bool(np.isfinite(m2).all()) and bool((m2 >= 0).all()))
    if not ok:
        raise E.CorruptHubError("an entry's class record holds a malformed class Gaussian ('gauss'): remove the "
                                "entry and add it again")


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _part(labels, n, mean, scatter) -> dict:
    return {"labels": list(labels), "n": np.asarray(n, np.float64), "mean": np.asarray(mean, np.float32),
            "scatter": np.asarray(scatter, np.float32)}


def _digest(p: dict) -> bytes:
    h = hashlib.blake2b(repr(p["labels"]).encode("utf-8", "surrogatepass"), digest_size=16)
    for k in ("n", "mean", "scatter"):
        h.update(np.ascontiguousarray(p[k]).tobytes())
    return h.digest()


def _sorted_parts(parts: list) -> list:
    # one canonical order: a hub and the shards of a sharded hub sum the same parts in the same
    # order, so their floating-point pools (and scores) are bit-identical
    return [p for _, p in sorted(((_digest(p), i), p) for i, p in enumerate(parts))]


def gauss_pool(items: list, query_names: list[str]) -> dict | None:
    """The class Gaussians of labelled candidates ``items`` [(class record, entry column names,
    {entry feature: query column})], or None unless every candidate carries one over the same
    (entry name, query column) pairs. ``"columns"`` names the pairs; ``"parts"`` holds each
    candidate's per-class count, mean and scatter (summed only when scored, in a canonical order:
    pools of several shards merge with :func:`merge_gauss_pools` to exactly one hub's)."""
    key, parts = None, []
    for cl, enames, fmap in items:
        g = cl.get("gauss")
        if g is None:
            return None
        feat = np.asarray(g["feat"]).tolist()
        if any(f not in fmap for f in feat):
            return None
        # the projection is a sum over columns: only the (entry name, query column) pairs matter
        k = sorted([str(enames[f]), str(query_names[fmap[f]])] for f in feat)
        if key is None:
            key = k
        elif k != key:
            return None
        parts.append(_part(cl["labels"], cl["counts"], g["mean"], g["scatter"]))
    if key is None:
        return None
    return {"columns": key, "parts": _sorted_parts(parts)}


def merge_gauss_pools(pools: list) -> dict | None:
    """The union of several :func:`gauss_pool` results, or None if any is None or they pair other
    columns."""
    if not pools or any(p is None for p in pools):
        return None
    if any(p["columns"] != pools[0]["columns"] for p in pools):
        return None
    if len(pools) == 1:   # its parts are in the canonical order already (every constructor sorts them)
        return pools[0]
    if any(p.get("parts") is None for p in pools):   # a cached pool that kept only its per-class sum
        raise ValueError("merge_gauss_pools: a pool kept only its class Gaussians' per-class sum "
                         "(accuracy_cache.MAX_GAUSS_BYTES): it cannot be merged with another")
    return {"columns": pools[0]["columns"], "parts": _sorted_parts([q for p in pools for q in p["parts"]])}


def combined(gp: dict) -> tuple:
    """``(labels, n, mean, scatter)``: the parts of the pool ``gp`` summed per class (Chan et al.),
    or the same numbers kept under ``"_combined"`` by a pool computed once for many queries
    (accuracy_cache.screen_data: summing 10k parts cost ~1 s a query; dropped by check_gauss_pool,
    so a pool received from outside is always summed here)."""
    got = gp.get("_combined")
    return got if got is not None else _combine([(p["labels"], p["n"], p["mean"], p["scatter"]) for p in gp["parts"]])


MAX_POOL_PARTS = 1 << 20    # parts (pooled entries) a received class pool may hold


def check_gauss_pool(g, labels: list | None = None) -> dict | None:
    """The ``"gauss"`` part of a class pool received from outside, validated, or
    InvalidArgumentError: column pairs unique (each query column at most once), every part's labels
    among the pool's ``labels`` (bounded by check_pool) when given."""
    from .accuracy_records import canonical

    if g is None:
        return None
    ok = isinstance(g, dict) and isinstance(g.get("columns"), list) and isinstance(g.get("parts"), list) \
        and 1 <= len(g["columns"]) and 1 <= len(g["parts"]) <= MAX_POOL_PARTS \
        and all(isinstance(p, list) and len(p) == 2 and all(isinstance(s, str) for s in p) for p in g["columns"]) \
        and len({q for _, q in g["columns"]}) == len(g["columns"])
    allowed = None if labels is None else set(labels)
    parts = []
    for p in g["parts"] if ok else []:
        ok = isinstance(p, dict) and isinstance(p.get("labels"), list) and 1 <= len(p["labels"]) <= GAUSS_MAX_CLASSES
        if ok:
            K = len(p["labels"])
            try:
                n, mean, sc = (np.asarray(p.get(x)) for x in ("n", "mean", "scatter"))
            except (TypeError, ValueError):
                ok = False
        if ok:
            ok = (n.shape == (K,) and mean.shape == (K, GAUSS_DIM) and sc.shape == (K, _TRI)
                  and all(a.dtype.kind in "fiu" for a in (n, mean, sc))
                  and all(bool(np.isfinite(a).all()) for a in (n, mean, sc)) and n.min() >= 0)
        if ok:
            lab = canonical(np.array(p["labels"], dtype=object), "class_pool labels").tolist()
            ok = len(set(lab)) == K and (allowed is None or set(lab) <= allowed)
        if not ok:
            break
        parts.append(_part(lab, n, mean, sc))
    if not ok:
        raise E.InvalidArgumentError("class_pool's 'gauss' is malformed (column pairs must be unique and the "
                                     "parts' labels among the pool's): pass what hub.class_pool(...) returned")
    return {"columns": g["columns"], "parts": _sorted_parts(parts)}


def naive_bayes_reason(frame: pd.DataFrame, gp: dict | None, records: list) -> str:
    """Why the query's mixture falls back to naive Bayes: a pooled entry's record without the
    Gaussian (with its stored reason, if any), or the query's side."""
    if gp is None:
        whys = [r.get("gauss_why") for r in records if r.get("gauss") is None]
        why = next((w for w in whys if isinstance(w, str) and w in WHYS), None)
        return why if why is not None else "some pooled entry has no class Gaussian, e.g. registered before they were stored"
    cols = [q for _, q in gp["columns"]]
    if all(c in frame.columns for c in cols) and has_missing(frame, cols):
        return "the query has missing values in the pooled columns"
    return "the class Gaussians do not fit this query's columns"


def gauss_loglik(frame: pd.DataFrame, gp: dict, labels: list) -> np.ndarray | None:
    """(n_rows, len(labels)) Gaussian class log-likelihoods of the query's rows under the pool
    ``gp`` (divided by ``GAUSS_TEMPERATURE``); -inf for a class the pool has no row of. None when a
    paired query column is missing or not numeric, or a covariance is not positive definite."""
    cols = [q for _, q in gp["columns"]]
    if any(c not in frame.columns for c in cols):
        return None
    Zq = project(frame, cols, [e for e, _ in gp["columns"]])
    if Zq is None:
        return None
    glabels, n, mean, scatter = combined(gp)
    index = {c: i for i, c in enumerate(glabels)}
    S = _full(scatter)
    K = len(n)
    W = S.sum(axis=0) / max(n.sum() - K, 1.0)                    # pooled within-class covariance
    eye = np.eye(GAUSS_DIM)
    W = W + GAUSS_RIDGE * max(np.trace(W) / GAUSS_DIM, 1e-12) * eye
    ridge = GAUSS_RIDGE * max(np.trace(W) / GAUSS_DIM, 1e-12) * eye
    out = np.full((len(frame), len(labels)), -np.inf)
    for j, c in enumerate(labels):
        k = index.get(c)
        if k is None or n[k] < 1:
            continue
        a = n[k] / (n[k] + GAUSS_SHRINK)
        C = a * S[k] / max(n[k] - 1.0, 1.0) + (1.0 - a) * W + ridge
        try:
            L = np.linalg.cholesky(C)
        except np.linalg.LinAlgError:
            return None
        D = np.linalg.solve(L, (Zq - mean[k]).T)
        out[:, j] = -0.5 * (D ** 2).sum(axis=0) - np.log(np.diag(L)).sum()
    if not np.isfinite(out).any(axis=1).all():
        return None
    return out / GAUSS_TEMPERATURE
