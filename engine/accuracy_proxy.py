"""Every candidate's own-histogram proxy on one query, computed together (engine/accuracy.py step 3).

The reference is :func:`fitsketch.accuracy_pool.own_predictions`, one candidate at a time: it
pools the candidate's class histograms over the query's columns, scores the query's distinct
(column, bucket) pairs ``u`` by naive Bayes (``P_j(b | c) = (N_jcb + q_j(b)) / (N_jc + 1)`` with
``q_j(b) = (M_jb + 1) / (N_j + V_j)``), sums them over each row's occurrences (``S @ logP``),
tempers by ``PROXY_TEMPERATURE`` x the candidate's effective features, adds the log of its training
class shares and takes the argmax. At 10k labelled entries that loop cost ~1 ms a candidate, most
of it per-call NumPy overhead on small arrays.

Here the candidates' records are concatenated once, every per-candidate count (``M``, ``N_j``,
``N_jc``, ``N_jcb`` at the query's pairs, the vocabulary ``V_j``, ``max_b M_jb``) is one
``bincount`` over (candidate, ...) keys, and ``S @ logP`` is one sparse product with every
candidate's ``logP`` side by side, in blocks of candidates (``_BLOCK_FLOATS``). The predictions are
*equal* to the reference's: the counts are integer sums (exact in float64 in any order), ``q`` and
``logP`` are the same element-wise expressions, scipy's CSR product accumulates each output column
over the row's non-zeros in the same order whatever the number of columns, and each candidate's
effective features is summed by the same ``np.sum`` over the same 1-D array
(tests/test_accuracy_proxy.py checks equality on random records, vocabularies and alignments)."""
from __future__ import annotations

import numpy as np

from .accuracy_pool import PROXY_TEMPERATURE, SMOOTHING, _counts, query_index

_BLOCK_FLOATS = 1 << 22     # (query pairs x candidates x classes) floats of logP held at once (32 MiB)
_DENSE_IDS = 1 << 24        # (column, bucket) grid cells numbered by a lookup table instead of a sort


def own_predictions_many(qb: dict, n_rows: int, items: list, labels: list, names: list[str],
                         qx: dict | None = None) -> list[np.ndarray]:
    """``[own_predictions(qb, n_rows, rec, fmap, labels, names, qx) for rec, fmap in items]``: the
    (n_rows,) index into ``labels`` of the class each query row gets from each candidate's proxy."""
    E = len(items)
    if n_rows == 0 or E == 0:
        return [np.zeros(0, np.int64) for _ in range(E)]
    if qx is None:
        qx = query_index(qb, n_rows)
    prior = np.stack([_counts(rec, labels) for rec, _ in items])                 # (E, K)
    with np.errstate(divide="ignore"):
        logprior = np.log(prior / np.maximum(prior.sum(axis=1, keepdims=True), 1.0))
    out = np.empty((E, n_rows), np.int64)
    for lo, hi, ll in _logliks(qb, n_rows, items, labels, names, qx):           # ll: (n_rows, B, K)
        # the reference adds the prior to each candidate's (n_rows, K) loglik, -inf where it saw no row
        score = ll + logprior[None, lo:hi, :]
        score[np.broadcast_to(prior[None, lo:hi, :] <= 0, score.shape)] = -np.inf
        out[lo:hi] = score.argmax(axis=2).T
    return list(out)


def _logliks(qb: dict, n_rows: int, items: list, labels: list, names: list[str], qx: dict):
    """Yield ``(lo, hi, ll)``: the tempered (n_rows, hi - lo, K) naive-Bayes log-likelihoods of
    candidates ``lo .. hi-1`` (accuracy_pool.loglik of each one's own pool at ``PROXY_TEMPERATURE``;
    0 where the reference returns zeros: no pooled column with a query value)."""
    E, K = len(items), len(labels)
    uq = qx["uq"]
    if len(uq) == 0:
        yield 0, E, np.zeros((n_rows, E, K))
        return
    ncol = int(uq[-1] >> 33) + 1
    j_of = {names[j]: j for j in qb if j < ncol}
    pj = np.array([j_of.get(c, -1) for c in names] + [-1], dtype=np.int64)     # pool column -> query column
    # the candidates' records concatenated, their features mapped through each one's alignment
    # (accuracy_pool.pool) and their classes into ``labels``
    index = {c: i for i, c in enumerate(labels)}
    sizes = np.array([len(rec["feat"]) for rec, _ in items], dtype=np.int64)
    ent = np.repeat(np.arange(E), sizes)
    n_f = max([int(np.max(rec["feat"])) + 1 for rec, _ in items if len(rec["feat"])] +
              [max(fmap, default=-1) + 1 for _, fmap in items] + [1])
    fm = np.full((E, n_f), len(pj) - 1, dtype=np.int64)                         # -> pj's trailing -1
    k_max = max(len(rec["labels"]) for rec, _ in items)
    remap = np.zeros((E, k_max), dtype=np.int64)
    for e, (rec, fmap) in enumerate(items):
        if fmap:
            fm[e, list(fmap)] = np.minimum(list(fmap.values()), len(pj) - 1)
        remap[e, :len(rec["labels"])] = [index[c] for c in rec["labels"]]
    cat = lambda k, dt: np.concatenate([np.asarray(rec[k], dt) for rec, _ in items])  # noqa: E731
    feat = cat("feat", np.int64)
    col = pj[fm[ent, feat]] if len(feat) else np.zeros(0, np.int64)             # the query column, or -1
    keep = np.flatnonzero(col >= 0)
    ent, col = ent[keep], col[keep]
    cls = remap[ent, cat("cls", np.int64)[keep]]
    bucket = cat("bucket", np.int64)[keep]
    count = cat("count", np.float64)[keep]
    # dense ids of every (column, bucket) of the candidates' pools and of the query's pairs
    ucol_all = uq >> 33
    qcols = np.unique(ucol_all)                                                 # the query's columns with values
    ub_all = (uq & ((1 << 33) - 1)) - (1 << 32)
    cb_row, cb_q, cb_col = _cell_ids(col, bucket, ucol_all, ub_all, ncol)
    n_cb = len(cb_col)
    has = np.zeros((E, ncol), bool)
    has[ent, col] = True
    Ntot = np.bincount(ent * ncol + col, weights=count, minlength=E * ncol).reshape(E, ncol)
    q_of = np.full(n_cb, -1, np.int64)
    q_of[cb_q] = np.arange(len(uq))
    U = len(uq)
    # a block of candidates holds (U, B, K) of logP and (n_rows, B, K) log-likelihoods (twice, with the
    # prior): bounded by _BLOCK_FLOATS whatever the query's rows (each candidate's product is its own)
    step = max(1, _BLOCK_FLOATS // max(U * K, n_cb, n_rows * K, 1))
    S = qx["S"]
    starts = np.searchsorted(ent, np.arange(0, E + step, step))                 # ent is sorted
    for bi, lo in enumerate(range(0, E, step)):
        hi = min(E, lo + step)
        B = hi - lo
        sl = slice(starts[bi], starts[bi + 1])
        e_b, cb_b, cnt_b, cls_b, col_b = ent[sl] - lo, cb_row[sl], count[sl], cls[sl], col[sl]
        Nc = np.bincount((e_b * ncol + col_b) * K + cls_b, weights=cnt_b, minlength=B * ncol * K).reshape(B, ncol, K)
        M = np.bincount(e_b * n_cb + cb_b, weights=cnt_b, minlength=B * n_cb).reshape(B, n_cb)   # all-class
        pres = np.bincount(e_b * n_cb + cb_b, minlength=B * n_cb).reshape(B, n_cb) > 0           # pool keys
        hb = has[lo:hi]                                                         # (B, ncol)
        mask = hb[:, ucol_all]                                                  # (B, U): uq_m of each
        # V_j: distinct buckets of the pool and of the query's pairs, in the columns the pool has
        un = pres.copy()
        un[:, cb_q] |= mask
        V = np.zeros((B, ncol))
        r, c = np.nonzero(un)
        np.add.at(V, (r, cb_col[c]), 1.0)
        Mmax = np.zeros((B, ncol))
        r, c = np.nonzero(pres)
        np.maximum.at(Mmax, (r, cb_col[c]), M[r, c])
        Nt = Ntot[lo:hi]
        Mu = M[:, cb_q]                                                         # (B, U)
        with np.errstate(divide="ignore", invalid="ignore"):   # inf only in columns the pool lacks (unused)
            q = (Mu + 1.0) / (Nt[:, ucol_all] + V[:, ucol_all])
        qsel = q_of[cb_b] >= 0                                                  # rows at a query pair
        N = np.bincount((e_b[qsel] * U + q_of[cb_b[qsel]]) * K + cls_b[qsel], weights=cnt_b[qsel],
                        minlength=B * U * K).reshape(B, U, K)
        den = Nc[:, ucol_all, :] + SMOOTHING                                    # (B, U, K)
        with np.errstate(divide="ignore", invalid="ignore"):
            val = np.log((N + SMOOTHING * q[:, :, None]) / den)                 # (B, U, K)
        # (U, B, K): each candidate's logP side by side, 0 outside the columns its pool has
        logP = np.ascontiguousarray(np.where(mask[:, :, None], val, 0.0).transpose(1, 0, 2))
        ll = np.asarray(S @ logP.reshape(U, B * K)).reshape(n_rows, B, K)
        # effective features: per candidate, the same 1-D sum the reference takes
        with np.errstate(divide="ignore", invalid="ignore"):
            eff_terms = 1.0 - (Mmax + 1.0) / (Nt + V)                           # (B, ncol)
        div = np.ones(B)
        for b in range(B):
            if mask[b].any():
                used = qcols[hb[b, qcols]]                                      # = np.unique(ucol of uq_m)
                div[b] = PROXY_TEMPERATURE * max(float(np.sum(eff_terms[b, used])), 1e-3)
        yield lo, hi, ll / div[None, :, None]


def _cell_ids(col: np.ndarray, bucket: np.ndarray, qcol: np.ndarray, qbucket: np.ndarray, ncol: int):
    """``(ids of the rows' cells, ids of the query's cells, column of each id)``: the distinct
    (column, bucket) cells of both numbered in (column, bucket) order, by a lookup table over the
    grid when it is small enough (``_DENSE_IDS``), else by a sort."""
    b_all = np.concatenate([bucket, qbucket])
    c_all = np.concatenate([col, qcol])
    lo = int(b_all.min()) if len(b_all) else 0
    span = (int(b_all.max()) - lo + 1) if len(b_all) else 1
    if span * ncol <= _DENSE_IDS:
        cell = c_all * span + (b_all - lo)
        used = np.zeros(span * ncol, bool)
        used[cell] = True
        ids = np.cumsum(used) - 1
        inv = ids[cell]
        cb_col = np.flatnonzero(used) // span
    else:
        key = c_all * (1 << 33) + (b_all + (1 << 32))
        uniq, inv = np.unique(key, return_inverse=True)
        inv = inv.ravel()
        cb_col = uniq >> 33
    return inv[:len(col)], inv[len(col):], cb_col
