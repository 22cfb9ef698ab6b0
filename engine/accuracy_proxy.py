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


def own_predictions_many(qb: dict, n_rows: int, items: list, labels: list, names: list[str],
                         qx: dict | None = None) -> list[np.ndarray]:
    """``[own_predictions(qb, n_rows, rec, fmap, labels, names, qx) for rec, fmap in items]``: the
    (n_rows,) index into ``labels`` of the class each query row gets from each candidate's proxy."""
    E, K = len(items), len(labels)
    if n_rows == 0 or E == 0:
        return [np.zeros(0, np.int64) for _ in range(E)]
    if qx is None:
        qx = query_index(qb, n_rows)
    prior = np.stack([_counts(rec, labels) for rec, _ in items])                 # (E, K)
    with np.errstate(divide="ignore"):
        logprior = np.log(prior / np.maximum(prior.sum(axis=1, keepdims=True), 1.0))
    logprior[prior <= 0] = -np.inf
    uq = qx["uq"]
    if len(uq) == 0:
        ll = None
    else:
        ll = _logliks(qb, n_rows, items, labels, names, qx)                    # (n_rows, E, K) or None
    out = []
    for e in range(E):
        # the reference adds the prior to the row-major (n_rows, K) loglik of one candidate
        score = (np.zeros((n_rows, K)) if ll is None or ll[e] is None else ll[e]) + logprior[e]
        score[:, prior[e] <= 0] = -np.inf
        out.append(score.argmax(axis=1).astype(np.int64))
    return out


def _logliks(qb: dict, n_rows: int, items: list, labels: list, names: list[str], qx: dict) -> list:
    """Per candidate, its tempered (n_rows, K) naive-Bayes log-likelihoods (accuracy_pool.loglik of
    its own pool at ``PROXY_TEMPERATURE``), or None where the reference returns zeros."""
    E, K = len(items), len(labels)
    uq = qx["uq"]
    ncol = int(uq[-1] >> 33) + 1
    j_of = {names[j]: j for j in qb if j < ncol}
    pj = np.array([j_of.get(c, -1) for c in names] or [-1], dtype=np.int64)  # pool column -> query column
    index = {c: i for i, c in enumerate(labels)}
    ent, cls, col, bucket, count = [], [], [], [], []
    for e, (rec, fmap) in enumerate(items):            # accuracy_pool.pool, one candidate at a time
        remap = np.array([index[c] for c in rec["labels"]], dtype=np.int64)
        f = np.asarray(rec["feat"], np.int64)
        fm = np.full(max(int(f.max()) + 1 if f.size else 0, max(fmap, default=-1) + 1), -1, dtype=np.int64)
        for sf, tj in fmap.items():
            fm[sf] = tj
        c = fm[f] if f.size else np.zeros(0, np.int64)
        keep = c >= 0
        c = c[keep]
        c = np.where(c < len(pj), pj[np.minimum(c, len(pj) - 1)], -1)            # the query column, or -1
        k2 = c >= 0
        idx = np.flatnonzero(keep)[k2]
        ent.append(np.full(len(idx), e, np.int64))
        cls.append(remap[np.asarray(rec["cls"], np.int64)[idx]])
        col.append(c[k2])
        bucket.append(np.asarray(rec["bucket"], np.int64)[idx])
        count.append(np.asarray(rec["count"], np.float64)[idx])
    ent, cls, col, bucket, count = (np.concatenate(x) for x in (ent, cls, col, bucket, count))
    # dense ids of every (column, bucket) of the candidates' pools and of the query
    ucol_all = uq >> 33
    qcols = np.unique(ucol_all)                                                 # the query's columns with values
    ckey = col * (1 << 33) + (bucket + (1 << 32))
    cb, cb_inv = np.unique(np.concatenate([ckey, uq]), return_inverse=True)
    cb_inv = cb_inv.ravel()
    cb_row, cb_q = cb_inv[:len(ckey)], cb_inv[len(ckey):]                      # rows' and query pairs' ids
    n_cb = len(cb)
    cb_col = cb >> 33
    # per candidate: which columns its pool has, N_j, N_jc, and the present (column, bucket)s
    has = np.zeros((E, ncol), bool)
    has[ent, col] = True
    Ntot = np.bincount(ent * ncol + col, weights=count, minlength=E * ncol).reshape(E, ncol)
    q_of = np.full(n_cb, -1, np.int64)
    q_of[cb_q] = np.arange(len(uq))
    out = [None] * E
    U = len(uq)
    step = max(1, _BLOCK_FLOATS // max(U * K, 1))
    S = qx["S"]
    for lo in range(0, E, step):
        hi = min(E, lo + step)
        B = hi - lo
        sel = (ent >= lo) & (ent < hi)
        e_b, cb_b, cnt_b, cls_b = ent[sel] - lo, cb_row[sel], count[sel], cls[sel]
        Nc = np.bincount((e_b * ncol + col[sel]) * K + cls_b, weights=cnt_b, minlength=B * ncol * K).reshape(B, ncol, K)
        M = np.bincount(e_b * n_cb + cb_b, weights=cnt_b, minlength=B * n_cb).reshape(B, n_cb)   # all-class
        pres = np.bincount(e_b * n_cb + cb_b, minlength=B * n_cb).reshape(B, n_cb) > 0           # pool keys
        hb = has[lo:hi]                                                         # (B, ncol)
        mask = hb[:, ucol_all]                                                  # (B, U): uq_m of each
        # V_j: distinct buckets of the pool and of the query's pairs, in the columns the pool has
        qpres = np.zeros((B, n_cb), bool)
        qpres[:, cb_q] = mask
        V = np.zeros((B, ncol))
        un = pres | qpres
        bi, ci = np.nonzero(un)
        np.add.at(V, (bi, cb_col[ci]), 1.0)
        Mmax = np.zeros((B, ncol))
        bi, ci = np.nonzero(pres)
        np.maximum.at(Mmax, (bi, cb_col[ci]), M[bi, ci])
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
        for b in range(B):
            e = lo + b
            if not mask[b].any() or not hb[b].any():
                continue                                                        # the reference's zeros
            used = qcols[hb[b, qcols]]                                          # = np.unique(ucol of uq_m)
            effective = float(np.sum(1.0 - (Mmax[b, used] + 1.0) / (Nt[b, used] + V[b, used])))
            out[e] = ll[:, b, :] / (PROXY_TEMPERATURE * max(effective, 1e-3))
    return out
