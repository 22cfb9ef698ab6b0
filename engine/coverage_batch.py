"""Coverage of one query's rows by many entries at once, equal to :func:`coverage.score` entry by entry.

Scoring one entry at a time (``coverage.score``) cost ~2.4 ms CPU an entry at 10k digits entries
beyond reading its record: the hyperplanes drawn again (~0.5 ms), the query's rows coded around
the entry's centre (~0.2 ms) and the share score's sorts (~0.3 ms), plus the method's per-entry
column lookups. :func:`score_many` gives the same per-table scores, bit for bit, for a list of
entries coded over the same columns:

* hyperplanes are drawn once per (seed, tables, bits, keys) (``coverage._planes``, memoized);
* the query's rows are coded once per distinct centre, by the very call ``coverage.score`` makes
  (parts merged with a shared ``coverage_center`` -- bench/zoos.py pool zoos -- give every entry
  one centre; entries sketched on their own have their own and are coded one by one);
* the share score of every (entry, group) comes from dense ``(tables, 2^r)`` cell counts (``r =
  min(resolution, bits)``, codes masked to their low ``r`` bits as ``share_score`` masks them): per
  table, the cells' ``min(p_target, p_source / rho)`` added one after another in ascending cell
  order -- the order of ``share_score``'s ``np.add.at`` over the cells both sides hold; every other
  cell adds an exact +0.0 -- and several groups weighted by their rows as ``coverage.score`` does.

Count mode (``coverage_score="count"``) and resolutions above ``MAX_DENSE_BITS`` go through
``coverage.score`` entry by entry (with the memoized hyperplanes).

Measured and not kept: coding every centre from one shared product (``a . (x - c) = a . x - a . c``,
signs taken only where a rigorous fp32 rounding bound proves them, the rest coded exactly). On 300
entries with distinct centres the bound left 107 centres with some projection too close to call at
d = 64 (1.2 ms CPU an entry, against 0.4 for the exact call per centre) and no gain at d = 784
(2.2 against 1.8 ms): the exact codes are one small BLAS product, as cheap as the elementwise
passes the split needs. tests/test_coverage_batch.py checks equality on fresh random inputs."""
from __future__ import annotations

import numpy as np

from . import coverage as _cov

MAX_DENSE_BITS = 10          # share resolution scored from dense (tables, 2^r) cells; above, entry by entry
BATCH_ELEMS = 1 << 22        # dense cells held at once (groups x tables x cells), ~32 MB of float64


def score_many(X: np.ndarray, recs: list, *, seed: int, tau: float, device: str = "auto", mode: str = "count",
               resolution: int = 6, rho: float = 1.0) -> list:
    """``[coverage.score(X, rec, ...) for rec in recs]``, the same float64 ``(tables,)`` arrays."""
    X = np.asarray(X, dtype=np.float64)
    kw = dict(seed=seed, tau=tau, device=device, mode=mode, resolution=resolution, rho=rho)
    out: list = [None] * len(recs)
    batchable: dict = {}
    for i, rec in enumerate(recs):
        bits, tables = int(rec["bits"]), int(rec["tables"])
        if mode != "share" or min(int(resolution), bits) > MAX_DENSE_BITS:
            out[i] = _cov.score(X, rec, **kw)
            continue
        keys = np.asarray(rec["keys"], dtype=np.int64)
        batchable.setdefault((keys.tobytes(), bits, tables), []).append(i)
    for (kb, bits, tables), idx in batchable.items():
        keys = np.frombuffer(kb, dtype=np.int64)
        scores = _share_group(X, [recs[i] for i in idx], keys, bits, tables, seed=seed, device=device,
                              resolution=min(int(resolution), bits), rho=rho)
        for i, s in zip(idx, scores):
            out[i] = s
    return out


def _share_group(X, recs, keys, bits, tables, *, seed, device, resolution, rho) -> list:
    """Share scores of entries coded over the same keys, bits and tables."""
    n = X.shape[0]
    T, r = tables, resolution
    cells = 1 << r
    groups = [_cov.groups(rec) for rec in recs]
    if n == 0:
        return [np.zeros(T, dtype=np.float64) for _ in recs]
    # distinct centres, in order of first appearance
    where: dict = {}
    centres = []
    for gs in groups:
        for g in gs:
            c = np.asarray(g["center"], dtype=np.float64)
            k = c.tobytes()
            if k not in where:
                where[k] = len(centres)
                centres.append(c)
    codes = _low_codes(X, centres, keys, bits, T, r, seed=seed, device=device)   # (U, T, n)
    U = len(centres)
    flat = (np.arange(U, dtype=np.int64)[:, None, None] * (T * cells)
            + np.arange(T, dtype=np.int64)[None, :, None] * cells + codes)
    t_cnt = np.bincount(flat.reshape(-1), minlength=U * T * cells).reshape(U, T, cells)
    pt = t_cnt / n                                               # (U, T, cells), share_score's t_cnt[i] / n
    # every (entry, group): dense source shares, then per table the ordered sum of the cells' minima
    g_centre, s_share, g_weight = [], [], []
    mask = np.int64(cells - 1)
    for gs in groups:
        for g in gs:
            g_centre.append(where[np.asarray(g["center"], dtype=np.float64).tobytes()])
            tab = np.asarray(g["table"], dtype=np.int64)
            code = np.asarray(g["code"], dtype=np.int64) & mask
            cnt = np.asarray(g["count"], dtype=np.float64)
            keep = tab < T                                         # (a record's tables beyond T meet no target cell)
            s_cnt = np.bincount(tab[keep] * cells + code[keep], weights=cnt[keep],
                                minlength=T * cells).reshape(T, cells)
            s_tot = s_cnt.sum(axis=1)                              # integers: exact in any order
            s_share.append(s_cnt / np.maximum(s_tot, 1.0)[:, None])
            g_weight.append(float(cnt.sum()))
    per_group = np.empty((len(g_centre), T), dtype=np.float64)
    step = max(1, BATCH_ELEMS // (T * cells))
    gc = np.asarray(g_centre, dtype=np.int64)
    for s in range(0, len(g_centre), step):
        v = np.minimum(pt[gc[s:s + step]], np.stack(s_share[s:s + step]) / rho)    # (G, T, cells)
        per_group[s:s + step] = np.add.accumulate(v, axis=2)[:, :, -1]             # in cell order, one by one
    res, j = [], 0
    for rec, gs in zip(recs, groups):
        if len(gs) == 1 and not rec.get("more"):
            res.append(per_group[j].copy())
            j += 1
            continue
        acc, weight = np.zeros(T, dtype=np.float64), 0.0            # coverage.score's weighted mean of groups
        for _ in gs:
            acc += g_weight[j] * per_group[j]
            weight += g_weight[j]
            j += 1
        res.append(acc / max(weight, 1.0))
    return res


def _low_codes(X, centres, keys, bits, T, r, *, seed, device) -> np.ndarray:
    """``(U, T, n)`` int64: the low ``r`` bits of ``coverage.encode(X, keys, c)`` for each centre, by
    that very call (one per distinct centre)."""
    out = np.zeros((len(centres), T, X.shape[0]), dtype=np.int64)
    mask = np.int64((1 << r) - 1)
    for u, c in enumerate(centres):
        out[u] = _cov.encode(X, keys, c, seed=seed, bits=bits, tables=T, device=device) & mask
    return out
