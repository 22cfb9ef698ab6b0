"""The two-level candidate stage (``shortlist_screen="two-level"``): a coarse level over every entry,
then the method's own screen (engine/screen.py) over the best of them.

The exact screen costs ~40-50 us of CPU an entry (a gather, a logarithm and a bincount over every
stored dataset-level histogram cell): seconds at 100k entries. Level 1 instead ranks every entry
by the **Bhattacharyya coefficient** of its dataset-level distributions with the query's,

    BC(t, s) = sum over the features both name, sum_b sqrt(p_t(b) p_s(b)),

one sparse matrix-vector product over the same cells the screen stores (``sqrt(p)`` of each cell,
the query's ``sqrt(p)`` over the coordinates): a few ns a cell. BC and JS are both f-divergences of
the same pair of distributions, and for distributions as close as a zoo's similar entries both are
~ the chi-square distance / 8, so BC ranks entries almost as exact-js does (digits, 5k entries: the
exact-js top 10 lay within the BC top 14 in 20 of 20 queries); the JS-LSH methods' band collisions
are a random function of the Hellinger distance ``sqrt(2 - 2 BC)``. Level 2 computes the method's
own screen for the ``coarse x shortlist`` entries of best BC (``subset``: the screen index's rows of
those entries) and the stage keeps the top ``shortlist`` of them as the exact screen does.

The trade-off is ``shortlist_coarse`` (level 1 keeps ``shortlist_coarse x shortlist`` entries):
recall@10 against the exact screen of every entry, per method, is measured by
``python -m bench.bench_shortlist --two-level`` (bench/SUMMARY.md) and stated by ``explain``
(``MEASURED_RECALL``, at the default); it is *not* held by construction as the exact screen's is.

Nothing is stored: the level-1 matrix is derived from the screen index in memory (rebuilt when the
index changes) and costs ~8 bytes per stored cell.
"""
from __future__ import annotations

import weakref

import numpy as np
from scipy import sparse

from . import screen as _screen
from .growable import Grow

COARSE_DEFAULT = 8   # config.shortlist_coarse: level 1 keeps this many x shortlist entries
# recall@10 of the two-level stage against the exact screen of every entry, at COARSE_DEFAULT and
# shortlist 256 (bench.bench_shortlist --two-level; bench/SUMMARY.md). Chosen on the digits pool zoo
# (10k / 30k: 1.000 for every method; js / adaptivity lose 0.6-1.4% of the top 10 at
# shortlist_coarse=1, none from 4); stated here as held out on the MNIST-5k pool zoo at 10k (12-15
# queries each): exact-js / l2 / adaptivity 1.000, js 0.992 (its top 10 lay as deep as BC rank 2,115)
MEASURED_RECALL: dict[str, float] = {"exact-js": 1.0, "l2": 1.0, "js": 0.99, "adaptivity": 1.0}

_MATRIX = weakref.WeakKeyDictionary()   # ScreenIndex -> (its state, the level-1 CSR matrix)


def matrix(idx) -> sparse.csr_matrix:
    """``(entries, coordinates)`` CSR of ``sqrt(p)`` of every stored cell of ``idx`` (a ScreenIndex;
    rows in its order), built once per state of the index."""
    state = (idx.generation, idx.ids.n, idx._col.n, len(idx._coords))
    got = _MATRIX.get(idx)
    if got is not None and got[0] == state:
        return got[1]
    row = idx._fi_row.v[idx._fi.v]                                    # per cell, non-decreasing
    indptr = np.searchsorted(row, np.arange(idx.ids.n + 1)).astype(np.int64)
    m = sparse.csr_matrix((np.sqrt(idx._p.v), idx._col.v, indptr), shape=(idx.ids.n, len(idx._coords) + 1))
    _MATRIX[idx] = (state, m)
    return m


def query_vector(idx, target, seed: int) -> np.ndarray:
    """``sqrt(p_t)`` of the query's dataset-level distributions over ``idx``'s coordinates (float32;
    the last slot, for coordinates no entry has, stays 0), per-feature normalized as the screen is."""
    rec = _screen.record(target.hist, target.names, target.sums, target.counts, seed)
    t_name = idx._names.get(rec["names"])
    feat = np.asarray(rec["feat"], dtype=np.int64)
    cnt = np.asarray(rec["count"], dtype=np.float64)
    tot = np.bincount(feat, weights=cnt, minlength=len(t_name))
    pt = cnt / np.where(tot[feat] > 0, tot[feat], 1.0)
    known = t_name[feat] >= 0
    cid = idx._coords.get((t_name[feat[known]].astype(np.int64) << 32)
                          + (np.asarray(rec["bucket"], dtype=np.int64)[known] + (1 << 31)))
    q = np.zeros(len(idx._coords) + 1, dtype=np.float32)
    q[cid[cid >= 0]] = np.sqrt(pt[known][cid >= 0])
    return q


def bc(idx, target, seed: int) -> np.ndarray:
    """The Bhattacharyya coefficient (times the features' count, a constant) of every entry of
    ``idx`` with ``target``, in the index's row order."""
    return matrix(idx) @ query_vector(idx, target, seed)


def subset(idx, rows: np.ndarray):
    """A ScreenIndex of ``idx``'s rows ``rows`` (sorted, unique) alone: the same names, coordinates
    and schemas, each row's columns copied and renumbered, so its ``scores`` are ``idx``'s for those
    entries (the same float operations in the same order)."""
    rows = np.asarray(rows, dtype=np.int64)
    sub = object.__new__(type(idx))
    for a in ("lock", "generation", "l", "accuracy", "_names", "_coords", "_schema_id", "_schema_names",
              "_jks_params"):
        setattr(sub, a, getattr(idx, a))

    def take(src: Grow, sel) -> Grow:
        out = Grow(src.a.dtype, src.a.shape[1] if src.a.ndim == 2 else None)
        out.extend(src.v[sel])
        return out

    def starts(cnt) -> Grow:
        out = Grow(np.int64)
        out.extend(np.concatenate([[0], np.cumsum(cnt)[:-1]]) if len(cnt) else np.zeros(0, np.int64))
        return out

    def counted(cnt) -> Grow:
        out = Grow(np.int32)
        out.extend(np.repeat(np.arange(len(cnt)), cnt))
        return out

    for a in ("ids", "_schema", "_jk_ok", "_jk_data", "_jks_ok"):
        setattr(sub, a, take(getattr(idx, a), rows))
    sub._jks_data = None if idx._jks_data is None else take(idx._jks_data, rows)
    fi_sel, fi_cnt = _ranges(idx._f_lo.v, idx._fi_row.n, rows)
    sub._f_lo = starts(fi_cnt)
    for a in ("_fi_name", "_fi_mean", "_fi_sq", "_fi_live", "_fi_var"):
        setattr(sub, a, take(getattr(idx, a), fi_sel))
    sub._fi_row = counted(fi_cnt)
    z_sel, z_cnt = _ranges(idx._fi_lo.v, idx._col.n, fi_sel)
    sub._fi_lo = starts(z_cnt)
    for a in ("_col", "_p", "_plog"):
        setattr(sub, a, take(getattr(idx, a), z_sel))
    sub._fi = counted(z_cnt)
    p_sel, p_cnt = _ranges(idx._p_lo.v, idx._part_row.n, rows)
    sub._p_lo = starts(p_cnt)
    sub._part_keys = take(idx._part_keys, p_sel)
    sub._part_row = counted(p_cnt)
    return sub


def _ranges(lo: np.ndarray, end: int, sel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the groups ``sel`` whose first positions are ``lo`` (the last ends at ``end``),
    concatenated in order, and each group's size."""
    hi = np.append(lo[1:], end)
    a, b = lo[sel], hi[sel]
    cnt = (b - a).astype(np.int64)
    total = int(cnt.sum())
    if total == 0:
        return np.zeros(0, np.int64), cnt
    first = np.concatenate([[0], np.cumsum(cnt)[:-1]])
    return np.repeat(a - first, cnt) + np.arange(total), cnt


def scores(idx, target, method: str, *, seed: int, keep: int, t_keys=None, t_small=None) -> tuple[dict, dict]:
    """``(screen, info)``: the method's screen (ScreenIndex.scores) of the ``keep`` entries of best
    BC (ties at the cut included), and what level 1 did (``info``: entries ranked, kept, the BC
    range kept)."""
    with idx.lock:
        n = idx.ids.n
        b = bc(idx, target, seed)
        live = np.flatnonzero(b > 0)                                   # entries sharing a cell with the query
        if len(live) < min(keep, n):
            # level 1 cannot rank the others (BC 0), yet the exact screen scores every entry sharing a
            # column name (l2 by its means, js by its keys): fewer than ``keep`` share a cell, so every
            # entry is screened exactly, as shortlist_screen="exact" would
            info = {"ranked": n, "live": int(len(live)), "coarse_kept": n, "bc_cut": 0.0, "all": True}
            return idx._scores(target, method, seed, t_keys, t_small), info
        if len(live) > keep:
            cut = np.partition(b[live], len(live) - keep)[len(live) - keep]
            rows = live[b[live] >= cut]
        else:
            rows = live
        info = {"ranked": n, "live": int(len(live)), "coarse_kept": int(len(rows)),
                "bc_cut": float(b[rows].min()) / max(target.n_features, 1) if len(rows) else 0.0}
        sub = subset(idx, np.sort(rows))
        return sub._scores(target, method, seed, t_keys, t_small), info


def describe(info: dict, coarse: int, method: str) -> tuple[str, float | None]:
    """The plan's words for level 1 and the stage's estimated recall (``MEASURED_RECALL``)."""
    if info.get("all"):
        return (f"; two-level: only {info['live']} of {info['ranked']} entries share a cell with the query, "
                f"fewer than {coarse} x shortlist: every entry was screened exactly (the recall above holds)"), 1.0
    rec = MEASURED_RECALL.get(method) if coarse >= COARSE_DEFAULT else None
    t = (f"; two-level: level 1 ranked {info['ranked']} entries by the Bhattacharyya coefficient of their "
         f"dataset-level distributions ({info['live']} share a cell with the query) and kept "
         f"{info['coarse_kept']} ({coarse} x shortlist; BC >= {info['bc_cut']:.4f}), level 2 screened those "
         "(the recall above is among them)")
    t += (f"; recall@10 vs the exact screen measured {rec:.3f} at shortlist_coarse={COARSE_DEFAULT} "
          "(bench.bench_shortlist --two-level)" if rec is not None else
          "; recall not measured at this shortlist_coarse")
    return t, rec
