"""The query side of predicted accuracy (engine/accuracy.py): the query's occurrences on the
histogram grid, the candidates' class-conditional counts pooled per (class, query column, bucket),
the naive-Bayes class log-likelihoods over a pool, and one candidate's own-histogram proxy."""
from __future__ import annotations

import numpy as np
import pandas as pd

from . import errors as E
from .accuracy_records import MAX_CLASSES, _sort_key, canonical, column_buckets, grouped_sum

SMOOTHING = 1.0             # weight of the pooled all-class histogram in each class's histogram
# the own-histogram proxy (:func:`own_predictions`; chosen on digits seeds 0-1 and MNIST seed 0)
PROXY_TEMPERATURE = 0.1     # the proxy's temperature (fixed: registration and query must agree)


def query_buckets(frame: pd.DataFrame, names: list[str], kinds: list[str], columns: list[int], config):
    """``{target feature: (rows, buckets)}`` of the query's occurrences in the histogram grid; a
    column with no value is left out."""
    return {j: (rows, hist.astype(np.int64), kinds[j] != "text")   # text: several tokens a row
            for j, rows, hist in column_buckets(frame, names, kinds, columns, config)}


def pool(pooled: list, labels: list, names: list[str]) -> dict:
    """The candidates' class-conditional counts summed per (class, query column, bucket).

    ``pooled``: per candidate, ``(rec, {source feature: target feature})``; ``names``: the query's
    columns. The result names columns and classes, so pools of several hubs (shards) add up
    (:func:`merge_pools`) to the pool of one hub holding every entry."""
    index = {c: i for i, c in enumerate(labels)}
    cls, feat, bucket, count = [], [], [], []
    for rec, fmap in pooled:
        remap = np.array([index[c] for c in rec["labels"]], dtype=np.int64)
        f = np.asarray(rec["feat"], np.int64)
        fm = np.full(max(int(f.max()) + 1 if f.size else 0, max(fmap, default=-1) + 1), -1, dtype=np.int64)
        for sf, tj in fmap.items():
            fm[sf] = tj
        keep = fm[f] >= 0
        cls.append(remap[np.asarray(rec["cls"], np.int64)[keep]])
        feat.append(fm[f[keep]])
        bucket.append(np.asarray(rec["bucket"], np.int64)[keep])
        count.append(np.asarray(rec["count"], np.float64)[keep])
    cat = lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt)  # noqa: E731
    return _aggregate(labels, list(names), cat(cls, np.int64), cat(feat, np.int64), cat(bucket, np.int64),
                      cat(count, np.float64), len(pooled))


def _aggregate(labels, columns, cls, col, bucket, count, entries: int) -> dict:
    """The pool's rows: ``count`` summed per distinct (col, cls, bucket), in that order. The keys
    are numbered by a hash table (``pandas.factorize``, its few distinct keys then sorted) rather
    than a sort of every key (``np.unique``: ~3 s of the stage's first query at 10k pooled
    entries, 25M keys); same keys, order and sums (each key's counts added in input order;
    tests/test_accuracy_proxy.py holds it equal to the sort)."""
    u_col, u_cls, u_b, summed = grouped_sum(col, cls, np.asarray(bucket, np.int64) + (1 << 32), 33, count)
    return {"labels": list(labels), "columns": columns, "col": u_col.astype(np.int32), "cls": u_cls.astype(np.int32),
            "bucket": (u_b - (1 << 32)).astype(np.int32), "count": summed, "entries": int(entries)}


def merge_pools(pools: list[dict]) -> dict:
    """The sum of several :func:`pool` results (e.g. one per shard), over the union of their
    classes and columns, in the canonical order one hub would give."""
    labels = sorted({c for p in pools for c in p["labels"]}, key=_sort_key)
    columns = sorted({c for p in pools for c in p["columns"]})
    li = {c: i for i, c in enumerate(labels)}
    ci = {c: i for i, c in enumerate(columns)}
    parts = [(np.array([li[c] for c in p["labels"]], np.int64)[np.asarray(p["cls"], np.int64)],
              np.array([ci[c] for c in p["columns"]], np.int64)[np.asarray(p["col"], np.int64)],
              np.asarray(p["bucket"], np.int64), np.asarray(p["count"], np.float64))
             for p in pools if len(p["cls"])]
    from .accuracy_gauss import merge_gauss_pools

    # the class Gaussians (accuracy_gauss.py) of the pools holding entries: kept only if all carry one
    gauss = merge_gauss_pools([p.get("gauss") for p in pools if int(p["entries"]) > 0])
    if not parts:
        out = {"labels": labels, "columns": columns, "col": np.zeros(0, np.int32), "cls": np.zeros(0, np.int32),
               "bucket": np.zeros(0, np.int32), "count": np.zeros(0), "entries": sum(p["entries"] for p in pools)}
    else:
        cls, col, bucket, count = (np.concatenate(x) for x in zip(*parts))
        out = _aggregate(labels, columns, cls, col, bucket, count, sum(int(p["entries"]) for p in pools))
    out["gauss"] = gauss
    return out


def check_pool(p) -> dict:
    """A class pool received from outside (a shard's answer), validated."""
    ok = isinstance(p, dict) and isinstance(p.get("labels"), list) and isinstance(p.get("columns"), list) \
        and all(isinstance(c, str) for c in p["columns"]) and isinstance(p.get("entries"), int)
    if ok:
        arrs = [np.asarray(p.get(x)) for x in ("col", "cls", "bucket", "count")]
        ok = len({a.shape for a in arrs}) == 1 and arrs[0].ndim == 1 and len(p["labels"]) <= MAX_CLASSES * 64 \
            and (arrs[0].size == 0 or (arrs[0].min() >= 0 and arrs[0].max() < len(p["columns"])
                                       and arrs[1].min() >= 0 and arrs[1].max() < len(p["labels"])
                                       and np.isfinite(arrs[3]).all() and arrs[3].min() >= 0))
    if not ok:
        raise E.InvalidArgumentError("class_pool is malformed: pass what hub.class_pool(...) returned")
    from .accuracy_gauss import check_gauss_pool

    p = dict(p)
    p["labels"] = canonical(np.array(p["labels"], dtype=object), "class_pool labels").tolist() if p["labels"] else []
    p["gauss"] = check_gauss_pool(p.get("gauss"), p["labels"])
    return p


def query_index(qb: dict, n_rows: int) -> dict:
    """The query's side of :func:`loglik`, computed once per query and shared by every pool scored
    against it (the pooled likelihood and each candidate's own-histogram proxy): the query's
    distinct (query column, bucket) pairs ``uq`` (keys ``j * 2**33 + bucket + 2**32``, sorted) and
    the (n_rows, len(uq)) sparse count of each row's occurrences of them."""
    from scipy import sparse

    R, Q = [], []
    for j, (rows, qbk, _) in qb.items():
        if len(rows):
            R.append(np.asarray(rows, np.int64))
            Q.append(int(j) * (1 << 33) + (np.asarray(qbk, np.int64) + (1 << 32)))
    rows = np.concatenate(R) if R else np.zeros(0, np.int64)
    uq, qinv = np.unique(np.concatenate(Q) if Q else np.zeros(0, np.int64), return_inverse=True)
    S = sparse.csr_matrix((np.ones(len(rows)), (rows, qinv.ravel())), shape=(n_rows, len(uq)))
    return {"n_rows": int(n_rows), "uq": uq, "S": S}


def class_pool_of(items: list, labels: list, names: list[str]) -> dict:
    """The class pool of labelled entries ``items`` [(class record, the entry's feature names,
    {entry feature: query column})]: the per-feature histograms (:func:`pool`) and, where every
    entry carries one over the same columns, the class Gaussians (accuracy_gauss.gauss_pool)."""
    from .accuracy_gauss import gauss_pool

    pl = pool([(cl, fmap) for cl, _, fmap in items], labels, names)
    pl["gauss"] = gauss_pool(items, names)
    return merge_pools([pl])


def loglik(qb: dict, n_rows: int, pl: dict, names: list[str], temperature: float | None,
           qx: dict | None = None) -> np.ndarray:
    """(n_rows, n_classes) ``log p(x_i | c)`` / (temperature x effective features) under naive
    Bayes over the pooled class-conditional histograms ``pl`` (smoothed towards the pooled
    all-class one). A column counts ``1 - (its most common bucket's share)`` towards the effective
    features: dividing by the plain column count over-flattened MNIST's 784 pixels, most of them
    blank (digits seeds 0-1 chose the temperature, MNIST seed 0 showed the plain count failing).
    ``temperature=None``: the untempered naive-Bayes log-likelihood. ``qx``: the query's
    :func:`query_index` when the caller already has it (several pools against one query).

    Per column ``j`` with vocabulary ``V_j`` (the pool's buckets and the query's): the all-class
    ``q_j(b) = (M_jb + 1) / (N_j + V_j)`` and ``P_j(b | c) = (N_jcb + SMOOTHING q_j(b)) / (N_jc +
    SMOOTHING)``. Computed for the query's distinct (column, bucket) pairs only (0 for a column
    the pool lacks), then summed over each row's occurrences as one sparse product
    (tests/test_accuracy_shift.py checks it against a per-column loop)."""
    K = len(pl["labels"])
    if qx is None:
        qx = query_index(qb, n_rows)
    uq = qx["uq"]
    ll = np.zeros((n_rows, K))
    if len(uq) == 0 or len(pl["col"]) == 0:
        return ll
    ncol = int(uq[-1] >> 33) + 1                                           # the query's columns j < ncol
    j_of = {names[j]: j for j in qb if j < ncol}
    pj = np.array([j_of.get(c, -1) for c in pl["columns"]], dtype=np.int64)
    col = pj[np.asarray(pl["col"], np.int64)]                              # the pool's columns as query columns
    keep = col >= 0
    col = col[keep]
    cls = np.asarray(pl["cls"], np.int64)[keep]
    bucket = np.asarray(pl["bucket"], np.int64)[keep]
    count = np.asarray(pl["count"], np.float64)[keep]
    has = np.bincount(col, minlength=ncol) > 0
    ucol_all = uq >> 33
    mask = has[ucol_all]                                                   # occurrences in a column the pool has
    if not mask.any():
        return ll
    uq_m = uq[mask]
    ucol = uq_m >> 33
    pkey = col * (1 << 33) + (bucket + (1 << 32))                         # the pool's (column, bucket)s
    pu, pinv = np.unique(pkey, return_inverse=True)
    M = np.bincount(pinv.ravel(), weights=count, minlength=len(pu))       # all-class count per (column, bucket)
    V = np.bincount(np.union1d(pu, uq_m) >> 33, minlength=ncol).astype(np.float64)
    Ntot = np.bincount(col, weights=count, minlength=ncol)
    Nc = np.bincount(col * K + cls, weights=count, minlength=ncol * K).reshape(ncol, K)
    pos = np.minimum(np.searchsorted(pu, uq_m), len(pu) - 1)
    Mu = np.where(pu[pos] == uq_m, M[pos], 0.0)
    q = (Mu + 1.0) / (Ntot[ucol] + V[ucol])                                # (U,)
    # each pool row keyed by its (column, bucket)'s rank in pu and its class: below len(pu) x K, no
    # packing of the column's index (a fixed 20-bit class field once wrapped at 1,024 query columns)
    fkey = pinv.ravel().astype(np.int64) * K + cls
    order = np.argsort(fkey, kind="stable")
    fkey, fcount = fkey[order], count[order]
    hit = pu[pos] == uq_m                                                  # the query's (column, bucket) is pooled
    want = pos.astype(np.int64)[:, None] * K + np.arange(K)[None, :]
    fpos = np.minimum(np.searchsorted(fkey, want), len(fkey) - 1)
    N = np.where(hit[:, None] & (fkey[fpos] == want), fcount[fpos], 0.0)  # (U, K)
    logP = np.zeros((len(uq), K))
    logP[mask] = np.log((N + SMOOTHING * q[:, None]) / (Nc[ucol] + SMOOTHING))
    ll = np.asarray(qx["S"] @ logP)
    if temperature is None:
        return ll
    # effective features: the query's columns that the pool has, each 1 - max_b q_j(b)
    used = np.unique(ucol)
    Mmax = np.zeros(ncol)
    np.maximum.at(Mmax, pu >> 33, M)
    effective = float(np.sum(1.0 - (Mmax[used] + 1.0) / (Ntot[used] + V[used])))
    return ll / (temperature * max(effective, 1e-3))


def pooled_loglik(qb: dict, n_rows: int, pooled: list, labels: list, temperature: float | None,
                  names: list[str] | None = None) -> np.ndarray:
    """:func:`loglik` over the :func:`pool` of ``pooled``."""
    names = names or [str(j) for j in range(max(qb, default=-1) + 1)]
    return loglik(qb, n_rows, pool(pooled, labels, names), names, temperature)


def own_predictions(qb: dict, n_rows: int, rec: dict, fmap: dict, labels: list, names: list[str],
                    qx: dict | None = None) -> np.ndarray:
    """(n_rows,) index into ``labels`` of the class each query row gets from the proxy of one
    candidate: naive Bayes over the candidate's own class histograms (``rec`` mapped by ``fmap``
    {source feature: query feature}), tempered by ``PROXY_TEMPERATURE``, plus the log of its
    training class shares; only classes the candidate saw can be given. ``qx``: the query's
    :func:`query_index`, shared by every candidate of one query."""
    pl = pool([(rec, fmap)], labels, names)
    ll = loglik(qb, n_rows, pl, names, PROXY_TEMPERATURE, qx)
    n = _counts(rec, labels)
    with np.errstate(divide="ignore"):
        score = ll + np.log(n / max(n.sum(), 1.0))
    score[:, n <= 0] = -np.inf
    return score.argmax(axis=1).astype(np.int64) if n_rows else np.zeros(0, np.int64)


def _counts(rec: dict, labels: list) -> np.ndarray:
    d = dict(zip(rec["labels"], (float(v) for v in rec["counts"])))
    return np.array([d.get(c, 0.0) for c in labels])
