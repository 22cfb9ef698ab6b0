"""Coverage of one query's rows by many entries at once, equal to :func:`coverage.score` entry by entry.

Scoring one entry at a time (``coverage.score``) cost ~2.4 ms CPU an entry at 10k digits entries
beyond reading its record: the hyperplanes drawn again (~0.5 ms), the query's rows coded around
the entry's centre (~0.2 ms) and the share score's sorts (~0.3 ms), plus the method's per-entry
column lookups. :func:`score_many` gives the same per-table scores, bit for bit, for a list of
entries coded over the same columns:

* hyperplanes are drawn once per (seed, tables, bits, keys) (``coverage._planes``, memoized up to
  ``coverage.PLANES_MEMO_BYTES`` an array);
* the query's rows are coded once per distinct centre, by the very call ``coverage.score`` makes, and
  counted into that centre's target shares at once (one centre's codes held at a time)
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

import numbers

import numpy as np

from . import coverage as _cov
from . import errors as E
from .kernels._device import resolve_device

MAX_DENSE_BITS = 10          # share resolution scored from dense (tables, 2^r) cells; above, entry by entry
BATCH_ELEMS = 1 << 20        # dense cells of groups held at once (groups x tables x cells): 2 arrays of ~8 MB


def score_many(X: np.ndarray, recs: list, *, seed: int, tau: float, device: str = "auto", mode: str = "count",
               resolution: int = 6, rho: float = 1.0) -> list:
    """``[coverage.score(X, rec, ...) for rec in recs]``, the same float64 ``(tables,)`` arrays.
    ``rho`` must be > 0 (:class:`errors.InvalidArgumentError`); ``device="cuda"`` without a GPU raises
    :class:`errors.DeviceError` as ``coverage.score`` does, whatever the rows."""
    resolve_device(device)
    if not (isinstance(rho, numbers.Real) and not isinstance(rho, bool) and rho > 0):
        raise E.InvalidArgumentError(f"rho={rho!r}: the share score divides the source's shares by rho; "
                                     "pass a number > 0 (SketchConfig.coverage_rho takes (0, 1])")
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
    """Share scores of entries coded over the same keys, bits and tables. Held at once: one centre's
    codes ``(tables, n)`` (what ``coverage.score`` holds for one entry) and dense ``(tables, 2^r)``
    cells of at most ``max(1, BATCH_ELEMS // (tables 2^r))`` groups (their target and source shares)."""
    n = X.shape[0]
    T, r = tables, resolution
    cells = 1 << r
    groups = [_cov.groups(rec) for rec in recs]
    if n == 0:
        return [np.zeros(T, dtype=np.float64) for _ in recs]
    flat_g = [g for gs in groups for g in gs]                      # every (entry, group), in order
    where: dict = {}                                                # distinct centres, by first appearance
    g_centre = np.empty(len(flat_g), dtype=np.int64)
    for j, g in enumerate(flat_g):
        g_centre[j] = where.setdefault(np.asarray(g["center"], dtype=np.float64).tobytes(), len(where))
    g_weight = [float(np.asarray(g["count"], dtype=np.float64).sum()) for g in flat_g]
    mask = np.int64(cells - 1)
    offset = np.arange(T, dtype=np.int64)[:, None] * cells           # (T, 1)
    # groups by centre (each centre's run contiguous: its codes made once, its target shares dropped
    # after its run), a chunk at a time: dense target and source shares, then per table the ordered
    # sum of the cells' minima
    order = np.argsort(g_centre, kind="stable")
    per_group = np.empty((len(flat_g), T), dtype=np.float64)
    step = max(1, BATCH_ELEMS // (T * cells))
    held: dict = {}                                                 # centre -> (T, cells) target shares
    for s in range(0, len(flat_g), step):
        idx = order[s:s + step]
        held = {u: held[u] for u in np.unique(g_centre[idx]).tolist() if u in held}
        pt = np.empty((len(idx), T, cells), dtype=np.float64)                 # (G, T, cells)
        s_share = np.empty((len(idx), T, cells), dtype=np.float64)            # (G, T, cells)
        for i, j in enumerate(idx.tolist()):
            u = int(g_centre[j])
            if u not in held:
                g = flat_g[j]
                code = _cov.encode(X, keys, np.asarray(g["center"], dtype=np.float64), seed=seed, bits=bits,
                                   tables=T, device=device)               # (T, n), as coverage.score codes
                t_cnt = np.bincount((offset + (code & mask)).ravel(), minlength=T * cells)
                del code
                held[u] = (t_cnt / n).reshape(T, cells)                # share_score's t_cnt[i] / n
            pt[i] = held[u]
            g = flat_g[j]
            tab = np.asarray(g["table"], dtype=np.int64)
            code = np.asarray(g["code"], dtype=np.int64) & mask
            cnt = np.asarray(g["count"], dtype=np.float64)
            keep = tab < T                                         # (a record's tables beyond T meet no target cell)
            s_cnt = np.bincount(tab[keep] * cells + code[keep], weights=cnt[keep],
                                minlength=T * cells).reshape(T, cells)
            s_tot = s_cnt.sum(axis=1)                              # integers: exact in any order
            s_share[i] = s_cnt / np.maximum(s_tot, 1.0)[:, None]
        np.divide(s_share, rho, out=s_share)
        np.minimum(pt, s_share, out=s_share)
        np.add.accumulate(s_share, axis=2, out=pt)                 # in cell order, one by one
        per_group[idx] = pt[:, :, -1]
        del pt, s_share
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
