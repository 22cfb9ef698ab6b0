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

The exact level-1 matrix is derived from the screen index in memory (rebuilt when the index changes)
and costs ~8 bytes per stored cell. From ``ANN_MIN_ENTRIES`` entries level 1 is instead a FAISS IVF over
a 64-dim projection of the same rows, ranked by the projected BC (``Level1Ann``, below: sublinear in the hub;
``shortlist_nprobe`` chooses the lists probed, 0 the exact level 1), persisted beside the hub as
``indexes/level1.faiss`` + ``level1.msgpack`` and rebuilt when it does not serve the hub.
"""
from __future__ import annotations

import weakref

import numpy as np
from scipy import sparse

from . import screen as _screen
from .growable import Grow

COARSE_DEFAULT = 8   # level 1 keeps this many x shortlist entries for a method not in COARSE_BY_METHOD
# config.shortlist_coarse=0 (the default): level 1 keeps COARSE_BY_METHOD[method] x shortlist entries, the
# depth each method's exhaustive top 10 was measured to need in level 1's order (bench.level1_scale; chosen
# on tuning queries, bench/SUMMARY.md "Candidate stage at 1M, sixth session"). js and adaptivity go deep:
# their screens are JS-LSH band collisions, a noisy function of what level 1 ranks by, and level 2
# screens only the rows whose band agreements can reach the shortlist (``_by_keys``), so depth is cheap.
# coverage and accuracy (proxy screens with a margin) keep COARSE_DEFAULT: not measured at less.
# l2 measured 4 (its deepest tuning rank 183), set to 8: the depth of its top 10 grew with the hub (16-29
# rows at 10k, 18-111 at 100k) and a 60-entry hub with shortlist 2 lost 17 of 60 top-2 entries at 4 (3 at
# 8; review, sixth session); its bound cut makes 8 cost ~3 ms more CPU than 4 at 100k (20 vs 17 ms)
COARSE_BY_METHOD: dict[str, int] = {"exact-js": 2, "l2": 8, "js": 32, "adaptivity": 64}
# Level 1's depth grows with the hub: with 10x more similar entries, more of them lie between a query and
# its exhaustive top 10 in level 1's order. COARSE_BY_METHOD holds up to DEPTH_MEASURED_AT entries;
# COARSE_AT_1M was chosen at 1M entries of the same zoo, every one of them scored (the exact screen of all
# 1M the reference; bench.level1_pool, bench/SUMMARY.md "Candidate stage at 1M, tenth session"): the
# smallest power-of-two depth at which every tuning query (query seeds 4 and 5: 80 js / adaptivity /
# exact-js queries, 13 l2) found its best entry and the mean recall@10 was >= .99, at NPROBE_AT_1M lists,
# never below the 100k depth (exact-js would hold at 1, l2 at 4: the depth does not shrink as the hub grows).
# The deepest tuning rank of a true top-10 entry at 1M (128 lists): js 16,459, adaptivity 60,644 (one
# query), exact-js 155, l2 1,041. js at 64 (the no-margin choice on seed 4 alone) missed one seed-5 best
# entry (49/50); at 128 it cost ~20 ms more CPU (held out, seed 6: 64.5 against 40.8 ms p50; since the
# eleventh session's level 1 by range search and cheaper level 2, 33-37 ms at 128). Between the two
# sizes, and past 1M (not measured there), the depth follows the power law through both points.
DEPTH_MEASURED_AT = 100_000
COARSE_AT_1M: dict[str, int] = {"exact-js": 2, "l2": 8, "js": 128, "adaptivity": 64}


def coarse_for(method: str, override: int = 0, entries: int = 0) -> int:
    """Level 1's depth (x shortlist) for ``method`` on a hub of ``entries`` entries: ``override``
    (config.shortlist_coarse) when > 0, else ``COARSE_BY_METHOD`` (``COARSE_DEFAULT`` for a method not
    listed) up to ``DEPTH_MEASURED_AT`` entries and ``COARSE_AT_1M`` at 1M, the power law through the
    two between and beyond (rounded up: never below the smaller hub's depth)."""
    if override:
        return int(override)
    base = COARSE_BY_METHOD.get(method, COARSE_DEFAULT)
    return _grown(base, COARSE_AT_1M.get(method, base) / base, entries)


def _grown(value: int, at_1m: float, entries: int) -> int:
    """``value`` (what holds up to ``DEPTH_MEASURED_AT`` entries) on a hub of ``entries`` entries:
    itself up to that size, ``at_1m`` times it at 1M, the power law through the two between and
    beyond, rounded up (``coarse_for``, ``nprobe_for``)."""
    if entries <= DEPTH_MEASURED_AT or at_1m == 1:
        return int(value)
    decades = np.log10(entries / DEPTH_MEASURED_AT)          # 0 at 100k, 1 at 1M
    return int(np.ceil(value * at_1m ** decades - 1e-9))


# recall@10 of the two-level stage against the exact screen of every entry, at COARSE_DEFAULT and
# shortlist 256 (bench.bench_shortlist --two-level; bench/SUMMARY.md). Chosen on the digits pool zoo
# (10k / 30k: 1.000 for every method; js / adaptivity lose 0.6-1.4% of the top 10 at
# shortlist_coarse=1, none from 4); stated here as held out on the MNIST-5k pool zoo at 10k (12-15
# queries each): exact-js / l2 / adaptivity 1.000, js 0.992 (its top 10 lay as deep as BC rank 2,115)
MEASURED_RECALL: dict[str, float] = {"exact-js": 1.0, "l2": 1.0, "js": 0.99, "adaptivity": 1.0}
# the least shortlist_coarse MEASURED_RECALL holds from (the same runs: exact-js / l2 lost none at 1)
# (l2 from 4: the 60-entry review case above lost top entries at 4 with a small shortlist)
MEASURED_MIN_COARSE: dict[str, int] = {"exact-js": 1, "l2": 4, "js": 4, "adaptivity": 4}

# level 1 by the IVF (``Level1Ann``, below; used from ANN_MIN_ENTRIES entries)
ANN_FORMAT = 1
ANN_MIN_ENTRIES = 20_000   # below: the exact product (~20-40 ms CPU at 10k-30k, bench/SUMMARY.md)
ANN_DIM = 64               # projection width
ANN_REFINE = 1             # > 1: the IVF hands refine x keep rows to an exact BC re-rank (1: none; level 2
                           # is exact: the re-rank costs ~30-60 ms CPU for 4,096 rows, bench/SUMMARY.md)
NPROBE_DEFAULT = 64        # config.shortlist_nprobe: IVF lists probed (0: level 1 exact); chosen on 1M synthetic
NPROBE_AT_1M = 128         # what shortlist_nprobe=NPROBE_DEFAULT probes at 1M entries (nprobe_for; tenth session)
ANN_FIT_ROWS = 20_000      # rows the basis and the IVF's k-means are fitted on (evenly spaced)
ANN_CHECK_ROWS = 64        # rows whose stored vectors are re-projected when a file is read
# recall@10 of the whole stage with the IVF level 1 at each method's default depth (COARSE_BY_METHOD,
# shortlist_nprobe=NPROBE_DEFAULT, ANN_REFINE 1, level 2's cuts) against the exact screen of every entry
# (each method's own score), on the 100k-entry digits label-skew pool hub's screen index (bench/SUMMARY.md,
# "Candidate stage at 1M, sixth session"). Depths chosen on the tuning queries (query seed 0): the deepest
# IVF rank of a true top-10 entry over 23-28 queries a method was exact-js 40, l2 183, js 1,571,
# adaptivity 3,289, each under a quarter of its default depth x 256 (so recall 1.000 on them), from
#   python -m bench.level1_scale --screen-file <100k hub>/indexes/screen.fsidx --queries 40 --coarse 2,3,4,8
#       --nprobe 64 --no-exact-level1 --budget 3200 --synthetic 0 --warm 0 --tag _100k_q40_coarse
#   python -m bench.level1_scale --screen-file <100k hub>/indexes/screen.fsidx --queries 20 --coarse 0,8
#       --nprobe 64 --no-exact-level1 --budget 700 --synthetic 0 --warm 0 --query-seed 0 --tag _100k_tune_permethod
# and held out (query seeds 1 and 2, never looked at before the depths were set):
#   python -m bench.level1_scale --screen-file <100k hub>/indexes/screen.fsidx --queries 30 --coarse 0,8
#       --nprobe 64 --no-exact-level1 --budget 1100 --synthetic 0 --warm 0 --query-seed 1 --ivf-at 1000000
#       --tag _100k_heldout_permethod
#   python -m bench.level1_scale ... --queries 30 --coarse 0 --budget 1300 --query-seed 2 --tag _100k_heldout2_permethod
# recall@10 1.000 and the best entry found in every held-out query of every method (6-25 queries a method:
# the load, 10-17 on 2 cores, left few in the budgets). Not measured at 1M (no 1M hub of similar entries):
# depth grew with the hub (exact-js's top 10 in the exact BC order: 9-13 rows at 10k, 30k and 100k; l2
# 16-29 -> 18-111; js 46-103 -> 109-399). Stated by ``describe`` (the lower of this and MEASURED_RECALL,
# the exact level 1's at 10k / 30k) at the default depth or deeper.
# Seventh session, held-out query seed 3, 100-120 queries a method (``--queries 100 --coarse 0 --query-seed 3
# --log-queries --tag _100k_q100_permethod`` and its continuations): exact-js 1.000, l2 1.000, js .998 (min .90,
# 120 queries), adaptivity .999 (min .90); the best entry found in every query. Tenth session, 1M entries all
# scored, the 1M defaults (COARSE_AT_1M, NPROBE_AT_1M), held-out query seed 6, 50 queries a method (l2: its
# reference costs 8.7 s a query; see bench/SUMMARY.md):
#   python -m bench.level1_pool measure --dir D --query-seed 6 --queries 50 --nprobe 64,128 --max-depth 256
#       --time "js:128/128,64/128;adaptivity:64/128,128/128;exact-js:2/128;l2:8/128" --budget 200 --tag _1m_heldout_q6
# js 1.000, adaptivity .996 (min .90), exact-js 1.000; best found in every query. The lower of the two sizes'
# figures is stated (the power law between them is not measured at sizes between).
ANN_MEASURED_RECALL: dict[str, float] = {"exact-js": 1.0, "js": 0.998, "adaptivity": 0.996, "l2": 1.0}
# the same stage at COARSE_DEFAULT (8) for every method, 40 queries a method on the same hub (fifth session,
# ``--coarse 8 --tag _100k_q40``; level 2's cuts leave the selection unchanged): what a hub that stores
# shortlist_coarse=8 (every hub made before the per-method depths) is told, below the method's default depth
ANN_RECALL_AT_DEFAULT: dict[str, float] = {"exact-js": 1.0, "js": 0.997, "adaptivity": 0.995, "l2": 1.0}
ANN_MEASURED_ON = ("100k and 1M similar entries (digits label-skew zoo), at 100k 100-120 held-out queries a method, "
                   "at 1M 50 (l2 8) against the exact screen of every entry; the depth and lists grow with the hub")

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


def subset(idx, rows: np.ndarray, cells_of=None, lazy: bool = False):
    """A ScreenIndex of ``idx``'s rows ``rows`` (sorted, unique) alone: the same names, coordinates
    and schemas, each row's columns copied and renumbered, so its ``scores`` are ``idx``'s for those
    entries (the same float operations in the same order).

    ``cells_of``: a query's per-coordinate values (``query_vector``): then only the stored cells at
    coordinates where it is > 0 are copied, the only cells the screen of that query reads (``_hits``:
    the query's mass is 0 elsewhere; every other per-feature number is stored per feature instance),
    so the subset serves that query alone, with the same scores and less to copy and scan.

    ``lazy``: each array of ``idx`` is gathered when the subset's screen first reads it (``_Gathered``),
    not here: a method's screen reads only some of them (js and adaptivity not l2's per-feature means
    and spreads, a small query not the large query's band keys), and each gather from a memory-mapped
    index costs page faults (~1 a row and array). The subset must then be screened before ``idx``
    changes (``scores`` holds the index's lock throughout)."""
    rows = np.asarray(rows, dtype=np.int64)
    sub = object.__new__(type(idx))
    for a in ("lock", "generation", "l", "accuracy", "_names", "_coords", "_schema_id", "_schema_names",
              "_jks_params"):
        setattr(sub, a, getattr(idx, a))

    def take(src: Grow, sel) -> Grow:
        return _Gathered(src, sel) if lazy else _held(src.take(sel), src.a.dtype)

    def starts(cnt) -> Grow:
        return _held(np.concatenate([[0], np.cumsum(cnt)[:-1]]) if len(cnt) else np.zeros(0, np.int64), np.int64)

    def counted(cnt) -> Grow:
        return _held(np.repeat(np.arange(len(cnt), dtype=np.int32), cnt), np.int32)

    for a in ("ids", "_schema", "_jk_ok", "_jk_data", "_jks_ok"):
        setattr(sub, a, take(getattr(idx, a), rows))
    sub._jks_data = None if idx._jks_data is None else take(idx._jks_data, rows)
    fi_sel, fi_cnt = _ranges(idx._f_lo.v, idx._fi_row.n, rows)
    sub._f_lo = starts(fi_cnt)
    for a in ("_fi_name", "_fi_mean", "_fi_sq", "_fi_live", "_fi_var"):
        setattr(sub, a, take(getattr(idx, a), fi_sel))
    sub._fi_row = counted(fi_cnt)
    z_sel, z_cnt = _ranges(idx._fi_lo.v, idx._col.n, fi_sel)
    if cells_of is None:
        sub._fi = counted(z_cnt)
        sub._col = take(idx._col, z_sel)
    else:
        has = np.append(np.asarray(cells_of)[:len(idx._coords)] > 0, False)   # the last slot: nobody's
        col = idx._col.take(z_sel)                                            # read once: the filter and the copy
        on = has[col]
        fi_of = np.repeat(np.arange(len(z_cnt), dtype=np.int32), z_cnt)[on]
        z_sel, z_cnt = z_sel[on], np.bincount(fi_of, minlength=len(z_cnt)).astype(np.int64)
        sub._fi = _held(fi_of, np.int32)
        sub._col = _held(col[on], idx._col.a.dtype)
    sub._fi_lo = starts(z_cnt)
    for a in ("_p", "_plog"):
        setattr(sub, a, take(getattr(idx, a), z_sel))
    p_sel, p_cnt = _ranges(idx._p_lo.v, idx._part_row.n, rows)
    sub._p_lo = starts(p_cnt)
    sub._part_keys = take(idx._part_keys, p_sel)
    sub._part_row = counted(p_cnt)
    return sub


def _held(a: np.ndarray, dtype) -> Grow:
    """A Grow holding ``a`` as it is (no copy into a fresh buffer: level 2 builds its subset per query)."""
    out = Grow(dtype, a.shape[1] if a.ndim == 2 else None)
    out.a, out.n = np.ascontiguousarray(a, dtype=dtype), len(a)
    return out


class _Gathered(Grow):
    """A subset's array (``subset(lazy=True)``): the rows ``sel`` of ``src`` (the index's Grow, e.g.
    memory-mapped), gathered on the first read of ``a`` / ``v`` and kept."""

    def __init__(self, src: Grow, sel: np.ndarray):
        self._src, self._sel, self._a, self.n = src, sel, None, len(sel)

    @property
    def a(self) -> np.ndarray:
        if self._a is None:
            self._a = self._src.take(self._sel)
            self._src = self._sel = None
        return self._a

    @a.setter
    def a(self, value: np.ndarray) -> None:
        self._a, self._src, self._sel = value, None, None


def _ranges(lo: np.ndarray, end: int, sel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the groups ``sel`` whose first positions are ``lo`` (the last ends at ``end``),
    concatenated in order, and each group's size. Only ``sel``'s bounds are read (``lo`` has one
    slot per feature instance: millions at 100k entries)."""
    sel = np.asarray(sel, dtype=np.int64)
    lo = np.asarray(lo)        # a memory map's fancy indexing is ~2x slower than its base array's
    nxt = sel + 1
    a = lo[sel]
    b = np.where(nxt < len(lo), lo[np.minimum(nxt, max(len(lo) - 1, 0))], end) if len(sel) else a
    cnt = (b - a).astype(np.int64)
    total = int(cnt.sum())
    if total == 0:
        return np.zeros(0, np.int64), cnt
    first = np.concatenate([[0], np.cumsum(cnt)[:-1]])
    return np.repeat(a - first, cnt) + np.arange(total), cnt


def _by_keys(idx, rows, target, method, seed, t_keys, t_small, shortlist, info) -> np.ndarray:
    """``rows`` less those whose JS-LSH band agreements (``ScreenIndex.key_counts``) are below the
    ``shortlist``-th best of the keyed rows: a keyed row's screen is its count times one step plus
    under half a step, so those rows cannot be among the top ``shortlist`` ``screen.select`` keeps of
    the exactly screened group (proxy rows are all kept). The stage's answer is unchanged; level 2
    computes the costly part of the screen (its subset, the exact-js grading) for fewer rows."""
    if not shortlist or method not in ("js", "adaptivity"):
        return rows
    k = idx.key_counts(rows, target, method, seed=seed, t_keys=t_keys, t_small=t_small)
    if k is None:
        return rows
    keyed = k >= 0
    nk = int(keyed.sum())
    if nk <= shortlist:
        return rows
    cut = np.partition(k[keyed], nk - shortlist)[nk - shortlist]
    kept = rows[~keyed | (k >= cut)]
    info["by_keys"] = {"keyed": nk, "cut": int(cut), "screened": int(len(kept))}
    return kept


def l2_bounds(idx, rows: np.ndarray, target, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(lo, hi, shared)`` over ``rows``: bounds on the sum of squares under the l2 screen's root
    (``ScreenIndex._l2``: its score is ``-sqrt(sum / N)``) from the per-feature numbers alone, no
    histogram cell read. A feature numeric on both sides adds its term exactly (the same formula);
    another shared feature adds ``2 (sum p_t^2 + sum p_s^2 - 2 cross)``, between 0 and twice the
    stored sums of squares; each query feature an entry does not name adds ``L2_UNCOVERED``.
    ``shared``: whether the row names one of the query's features (only those are screened). Where
    every shared feature is numeric (e.g. pixels), ``lo == hi``."""
    rows = np.asarray(rows, dtype=np.int64)
    rec = _screen.record(target.hist, target.names, target.sums, target.counts, seed)
    N = max(target.n_features, 1)
    t_name = idx._names.get(rec["names"])
    tj_of = np.full(len(idx._names), -1, dtype=np.int64)
    tj_of[t_name[t_name >= 0]] = np.flatnonzero(t_name >= 0)
    feat = np.asarray(rec["feat"], dtype=np.int64)
    cnt = np.asarray(rec["count"], dtype=np.float64)
    tot = np.bincount(feat, weights=cnt, minlength=len(t_name))
    pt = cnt / tot[feat]
    sq_t = np.bincount(feat, weights=pt * pt, minlength=len(t_name))
    t_cnt = np.asarray(target.counts)
    t_mean = np.where(t_cnt > 0, np.asarray(target.sums, dtype=np.float64) / np.maximum(t_cnt, 1), np.nan)
    t_var = _screen._variance(feat, np.asarray(rec["bucket"], dtype=np.int64), pt, t_mean, idx.accuracy)
    fi_sel, fi_cnt = _ranges(idx._f_lo.v, idx._fi_row.n, rows)
    pos = np.repeat(np.arange(len(rows)), fi_cnt)
    tj = tj_of[idx._fi_name.take(fi_sel)]
    on = tj >= 0
    fi_s, pos, tj = fi_sel[on], pos[on], tj[on]
    mt, ms = t_mean[tj], idx._fi_mean.take(fi_s)
    num = ~np.isnan(mt) & ~np.isnan(ms)
    mt0, ms0 = np.where(num, mt, 0.0), np.where(num, ms, 0.0)
    vt, vs = t_var[tj], idx._fi_var.take(fi_s)
    sd = np.maximum(np.maximum(np.sqrt((vt + vs) / 2), 1e-3 * (np.abs(mt0) + np.abs(ms0))), 1e-12)
    d2 = np.where(num, ((mt0 - ms0) / sd) ** 2, 0.0)
    wide = np.where(num, 0.0, 2.0 * (sq_t[tj] + idx._fi_sq.take(fi_s)))
    matched = np.bincount(pos, minlength=len(rows))
    lo = np.bincount(pos, weights=np.maximum(d2, 0.0), minlength=len(rows)).astype(np.float64)
    lo += _screen.L2_UNCOVERED * np.maximum(N - matched, 0)
    return lo, lo + np.bincount(pos, weights=wide, minlength=len(rows)), matched > 0


def _by_l2_bound(idx, rows, target, seed, shortlist, info) -> np.ndarray:
    """``rows`` less those whose l2 is bounded below the ``shortlist``-th best's bound (``l2_bounds``:
    their least sum of squares exceeds the ``shortlist``-th least upper bound among the rows sharing a
    feature with the query, with a relative slack of 1e-9 for the bounds' floating point): they cannot
    be among the top ``shortlist`` ``screen.select`` keeps. Rows sharing no feature are not screened."""
    if not shortlist or len(rows) <= shortlist:
        return rows
    lo, hi, shared = l2_bounds(idx, rows, target, seed)
    ns = int(shared.sum())
    if ns <= shortlist:
        return rows
    cut = np.partition(hi[shared], shortlist - 1)[shortlist - 1]
    kept = rows[shared & (lo <= cut * (1 + 1e-9) + 1e-12)]
    info["by_bound"] = {"shared": ns, "screened": int(len(kept))}
    return kept


def _prefilter(idx, rows, target, method, seed, t_keys, t_small, shortlist, info) -> np.ndarray:
    """Level 2's rows that can reach the top ``shortlist`` of the screen (js / adaptivity by their band
    agreements, l2 by its per-feature bounds; the others: every row)."""
    if method == "l2":
        return _by_l2_bound(idx, rows, target, seed, shortlist, info)
    return _by_keys(idx, rows, target, method, seed, t_keys, t_small, shortlist, info)


def scores(idx, target, method: str, *, seed: int, keep: int, t_keys=None, t_small=None, ann=None,
           nprobe: int = NPROBE_DEFAULT, shortlist: int | None = None) -> tuple[dict, dict]:
    """``(screen, info)``: the method's screen (ScreenIndex.scores) of the ``keep`` entries of best
    BC (ties at the cut included), and what level 1 did (``info``: entries ranked, kept, the BC
    range kept). ``ann``: the hub's Level1Ann of ``idx`` (``level1``): with ``nprobe`` > 0 level 1
    takes the ``keep`` of best exact BC among those its IVF ranks first instead of ranking every
    entry (``info["ann"]``: lists probed, rows re-ranked). ``shortlist``: the count the caller keeps of
    the screen (``screen.select``) of an exact rule (a proxy rule's margin keeps more: pass None): for js,
    adaptivity and l2 level 2 then screens only the kept rows that can reach it (``_prefilter``;
    ``info["by_keys"]`` / ``info["by_bound"]``), with the same selection."""
    with idx.lock:
        n = idx.ids.n
        # the rows themselves, not only their count, under the lock: a sync between the caller's
        # level1() and this lock may have removed one entry and added another (review, 2026-11-30)
        if ann is not None and nprobe > 0 and len(ann) == n and keep < n and ann.fits(idx):
            q = query_vector(idx, target, seed)
            try:
                # without a re-rank, the IVF's first ``keep`` as a set (ties at the cut included)
                rows, b = ann.top(idx, q, keep, nprobe) if ANN_REFINE > 1 else ann.kept(q, keep, nprobe)
            except RuntimeError:       # FAISS refused its own file's contents: never trusted again
                _ANN.pop(idx, None)
                rows, b = np.zeros(0, np.int64), np.zeros(0)
            if ANN_REFINE > 1:
                rows, b = rows[b > 0], b[b > 0]
            if len(rows) >= keep:      # else few entries share a cell with the query: the exact level below
                info = {"ranked": n, "live": n, "coarse_kept": int(len(rows)),
                        "bc_cut": float(b.min()) / max(target.n_features, 1),
                        "ann": {"nprobe": int(ann.index.nprobe), "nlist": int(ann.index.nlist),
                                "reranked": int(min(ANN_REFINE * keep, n)) if ANN_REFINE > 1 else 0}}
                # in row order from here: level 2's gathers from the index then run forward through it
                rows = _prefilter(idx, np.sort(rows), target, method, seed, t_keys, t_small, shortlist, info)
                return subset(idx, rows, q, lazy=True)._scores(target, method, seed, t_keys, t_small), info
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
        rows = _prefilter(idx, rows, target, method, seed, t_keys, t_small, shortlist, info)
        sub = subset(idx, np.sort(rows), query_vector(idx, target, seed), lazy=True)
        return sub._scores(target, method, seed, t_keys, t_small), info


def describe(info: dict, coarse: int, screen: str, method: str | None = None) -> tuple[str, float | None]:
    """The plan's words for level 1 and the stage's estimated recall: ``ANN_MEASURED_RECALL`` (IVF
    level 1) or ``MEASURED_RECALL`` (exact level 1) of ``screen``, the measured recall of the stage
    against the exact screen, when level 1 kept at least the depth it was measured at (``coarse`` x
    shortlist, ``coarse`` >= ``COARSE_BY_METHOD[screen]``; a deeper level 1 keeps a superset) with at
    least ``NPROBE_DEFAULT`` lists probed and no re-rank; else None. ``method``: the searched method,
    whose default depth ``coarse`` may be (``coarse_for``)."""
    if info.get("all"):
        return (f"; two-level: only {info['live']} of {info['ranked']} entries share a cell with the query, "
                f"fewer than {coarse} x shortlist: every entry was screened exactly (the recall above holds)"), 1.0
    need = coarse_for(screen, 0, info.get("ranked", 0))     # the depth measured for a hub of this size
    deep = coarse >= need
    rec = MEASURED_RECALL.get(screen) if coarse >= MEASURED_MIN_COARSE.get(screen, COARSE_DEFAULT) else None
    a = info.get("ann")
    bk, bb = info.get("by_keys"), info.get("by_bound")
    l2_words = (f"level 2 counted their JS-LSH band agreements ({bk['keyed']} keyed) and screened the "
                f"{bk['screened']} that could reach the shortlist (>= {bk['cut']}; the others cannot)" if bk else
                f"level 2 bounded their l2 by the features' means and spreads ({bb['shared']} sharing a feature) "
                f"and screened the {bb['screened']} that could reach the shortlist (the others cannot)" if bb else
                "level 2 screened those")
    if a:
        ra = ANN_MEASURED_RECALL.get(screen)
        # measured at NPROBE_DEFAULT lists (or every list, when fewer: a small hub's IVF), no re-rank
        low = a["nprobe"] < min(nprobe_for(NPROBE_DEFAULT, info.get("ranked", 0)), a["nlist"])
        if not deep and coarse >= COARSE_DEFAULT and screen in ANN_RECALL_AT_DEFAULT and \
                info.get("ranked", 0) <= DEPTH_MEASURED_AT:   # measured at 8 on the 100k hub only
            ra, need, deep = ANN_RECALL_AT_DEFAULT[screen], COARSE_DEFAULT, True
        rec = None if ra is None or low or a["reranked"] or not deep else ra if rec is None else min(rec, ra)
        t = (f"; two-level: level 1 probed {a['nprobe']} of {a['nlist']} IVF lists over projected dataset-level "
             f"distributions of {info['ranked']} entries, "
             + (f"re-ranked the first {a['reranked']} by their exact Bhattacharyya coefficient" if a["reranked"]
                else "ranked by their projected Bhattacharyya coefficient")
             + f" and kept {info['coarse_kept']} ({coarse} x shortlist; BC >= {info['bc_cut']:.4f}), {l2_words} "
             "(the recall above is among them)")
    else:
        t = (f"; two-level: level 1 ranked {info['ranked']} entries by the Bhattacharyya coefficient of their "
             f"dataset-level distributions ({info['live']} share a cell with the query) and kept "
             f"{info['coarse_kept']} ({coarse} x shortlist; BC >= {info['bc_cut']:.4f}), {l2_words} "
             "(the recall above is among them)")
    if a and rec is not None:
        t += (f"; recall@10 vs the exact screen measured {rec:.3f} at shortlist_coarse >= {need}, "
              f"shortlist_nprobe >= {NPROBE_DEFAULT} ({ANN_MEASURED_ON}; bench.level1_scale)")
    elif a:
        t += ("; recall not measured at this shortlist_coarse / shortlist_nprobe" if ANN_MEASURED_RECALL.get(screen)
              is not None else "; the IVF level 1's recall is not measured for this method")
    else:
        t += (f"; recall@10 vs the exact screen measured {rec:.3f} at shortlist_coarse >= "
              f"{MEASURED_MIN_COARSE.get(screen, COARSE_DEFAULT)} (bench.bench_shortlist --two-level)"
              if rec is not None else "; recall not measured at this shortlist_coarse")
    return t, rec


# ---------------------------------------------------------------------- level 1 made sublinear
# Level 1 above is one pass over every stored cell: ~85 ms CPU at 100k entries of 64 columns, linear
# in the hub. ``Level1Ann`` ranks instead by a FAISS IVF (inner product) over a dense projection of the
# same ``sqrt(p)`` rows: ``x = basis^T sqrt(p)`` with ``basis`` the top ``ANN_DIM`` right singular
# vectors of a sample of the rows (a zoo of similar entries spans few directions: class mixtures), so
# ``<x_s, x_t>`` approximates BC(s, t). The IVF returns ``ANN_REFINE x keep`` rows by that estimate;
# with ``ANN_REFINE`` > 1 they are re-ranked by their exact BC (their own cells only), of which level 1
# keeps ``keep`` (the default, 1, keeps the IVF's first ``keep``, ties at the cut included:
# ``Level1Ann.kept``, FAISS's range search and a partition; level 2 is exact).
# The recall of the stage against the exact screen of every entry is measured, not held
# (``python -m bench.level1_scale``; bench/SUMMARY.md). Below ``ANN_MIN_ENTRIES`` entries, with
# ``shortlist_nprobe=0``, or when no index fits the screen index, level 1 is the exact product above.
#
# The index is derived data, kept beside the hub as ``indexes/level1.faiss`` + ``level1.msgpack``
# (engine/faiss_files.py: size and CRC-32 of the index file in the sidecar). The sidecar records
# ``ANN_FORMAT``, the hub's identity and parameters, the entry ids the index's rows stand for (their
# count and CRC-32), the coordinates the basis knows (count and CRC-32 of their keys) and the basis
# itself; a file of another format, hub, parameters, rows or coordinates, or whose index is not an
# IVF over exactly its rows, or whose vectors are not the projection of its rows (checked on a sample
# of rows), is not used: rebuilt from the screen index. A file whose rows are a prefix of the screen
# index's is brought forward (the new rows projected and added); after a removal it is rebuilt.

_ANN = weakref.WeakKeyDictionary()   # ScreenIndex -> Level1Ann


def nprobe_for(nprobe: int, entries: int) -> int:
    """The IVF lists level 1 probes on a hub of ``entries`` entries for ``config.shortlist_nprobe``:
    ``nprobe`` itself up to ``DEPTH_MEASURED_AT`` entries, ``nprobe x NPROBE_AT_1M / NPROBE_DEFAULT``
    at 1M, the power law between and beyond (rounded up). The IVF has ~sqrt(n) lists: at 100k, 64 of
    its 316 lists held every tuning query's top 10; at 1M, 64 of 1,000 missed one query's best entry at
    any depth (bench/SUMMARY.md "Candidate stage at 1M, tenth session"). 0 (the exact level 1) stays 0."""
    if nprobe <= 0:
        return int(nprobe)
    return _grown(nprobe, NPROBE_AT_1M / NPROBE_DEFAULT, entries)


def _nlist(n: int) -> int:
    """IVF lists for ``n`` rows: ~sqrt(n), at least 39 training rows a list (FAISS's floor)."""
    return int(max(1, min(4096, int(np.sqrt(max(n, 1))), n // 39)))


def _cells(idx, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(row position within rows, coordinate, sqrt(p))`` of every stored cell of ``idx``'s rows."""
    fi_sel, fi_cnt = _ranges(idx._f_lo.v, idx._fi_row.n, rows)
    z_sel, z_cnt = _ranges(idx._fi_lo.v, idx._col.n, fi_sel)
    cz = np.concatenate([[0], np.cumsum(z_cnt)])
    cf = np.concatenate([[0], np.cumsum(fi_cnt)])
    per_row = cz[cf[1:]] - cz[cf[:-1]]
    pos = np.repeat(np.arange(len(rows)), per_row)
    return pos, idx._col.v[z_sel], np.sqrt(idx._p.v[z_sel])


def _csr(pos, col, val, shape) -> sparse.csr_matrix:
    """The CSR of cells already grouped by row (``pos`` non-decreasing): no sort, no COO pass."""
    indptr = np.searchsorted(pos, np.arange(shape[0] + 1)).astype(np.int64)
    return sparse.csr_matrix((val, col, indptr), shape=shape)


def _coord_keys(idx, n_coords: int) -> np.ndarray:
    """The keys of coordinate ids ``0..n_coords-1`` of ``idx``, in id order."""
    keys = np.empty(len(idx._coords), dtype=np.int64)
    keys[idx._coords.ids] = idx._coords.keys
    return keys[:n_coords]


def _crc(a: np.ndarray) -> int:
    import zlib
    return zlib.crc32(np.ascontiguousarray(a).tobytes())


class Level1Ann:
    """The IVF over the projected level-1 rows of one ScreenIndex (rows ``0..n-1``, ids in its order)."""

    def __init__(self, basis: np.ndarray, index, ids: np.ndarray, coord_keys: np.ndarray):
        self.basis = np.ascontiguousarray(basis, dtype=np.float32)   # (n_coords, ANN_DIM)
        self.index = index
        self.ids = np.asarray(ids, dtype=np.int64)                   # the entry ids of the rows indexed
        self.coord_keys = np.asarray(coord_keys, dtype=np.int64)     # the coordinates the basis knows

    def __len__(self) -> int:
        return len(self.ids)

    # -------------------------------------------------------------- building
    @classmethod
    def build(cls, idx, dim: int = ANN_DIM, fit_rows: int = ANN_FIT_ROWS) -> "Level1Ann":
        import faiss
        from scipy.sparse.linalg import svds

        n, c = idx.ids.n, len(idx._coords)
        fit = np.unique(np.linspace(0, n - 1, min(n, fit_rows)).astype(np.int64)) if n else np.zeros(0, np.int64)
        pos, col, val = _cells(idx, fit)
        a = _csr(pos, col, val.astype(np.float64), (len(fit), max(c, 1)))
        k = min(dim, min(a.shape) - 1)
        basis = np.zeros((c, dim), dtype=np.float32)
        if c and c <= 4096 and a.shape[0] * c <= 1 << 26:   # top eigenvectors of the Gram matrix (dense)
            d = a.toarray()
            _, v = np.linalg.eigh(d.T @ d)
            k = min(dim, c)
            basis[:, :k] = v[:, ::-1][:, :k]
        elif k >= 1:
            rng = np.random.default_rng(0)
            _, s, vt = svds(a, k=k, v0=rng.standard_normal(min(a.shape)))
            basis[:, :k] = vt[np.argsort(-s)].T[:c]
        ann = cls(basis, None, np.zeros(0, np.int64), _coord_keys(idx, c))
        x = ann.project(idx, np.arange(n, dtype=np.int64))
        nlist = _nlist(n)
        quant = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quant, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = 0
        index.cp.min_points_per_centroid = 1          # nlist <= n / 39 already; no warning for tiny hubs
        index.train(x[fit] if len(fit) >= nlist else x)
        index.add_with_ids(x, np.arange(n, dtype=np.int64))
        ann.index, ann.ids = index, idx.ids.v.copy()
        return ann

    def project(self, idx, rows: np.ndarray, block: int = 50_000) -> np.ndarray:
        """``(len(rows), dim)`` float32: the projection of ``idx``'s rows (coordinates the basis does
        not know count 0)."""
        out = np.zeros((len(rows), self.basis.shape[1]), dtype=np.float32)
        ext = np.vstack([self.basis, np.zeros((1, self.basis.shape[1]), np.float32)])
        for lo in range(0, len(rows), block):
            pos, col, val = _cells(idx, rows[lo:lo + block])
            col = np.where(col < len(self.basis), col, len(self.basis))
            m = _csr(pos, col, val.astype(np.float32), (min(block, len(rows) - lo), len(ext)))
            out[lo:lo + block] = m @ ext
        return out

    def fits(self, idx) -> bool:
        """Whether the index's rows are ``idx``'s first rows (equal, or a prefix to be brought forward)
        and its basis's coordinates are ``idx``'s first coordinates."""
        n = len(self.ids)
        return (n <= idx.ids.n and np.array_equal(self.ids, idx.ids.v[:n])
                and len(self.coord_keys) <= len(idx._coords)
                and np.array_equal(self.coord_keys, _coord_keys(idx, len(self.coord_keys))))

    def extend(self, idx) -> int:
        """Add ``idx``'s rows after those indexed (``fits`` must hold); how many were added."""
        n0, n = len(self.ids), idx.ids.n
        if n > n0:
            rows = np.arange(n0, n, dtype=np.int64)
            self.index.add_with_ids(self.project(idx, rows), rows)
            self.ids = idx.ids.v.copy()
        return n - n0

    # -------------------------------------------------------------- searching
    def top(self, idx, q: np.ndarray, keep: int, nprobe: int, refine: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, BC)`` of the ``keep`` rows of best exact BC among the ``refine x keep`` the IVF ranks
        first by the projected inner product (fewer when fewer rows share a list probed); with
        ``refine`` 1 (``ANN_REFINE``) the IVF's first ``keep`` and their projected inner products."""
        refine = ANN_REFINE if refine is None else refine
        qx = (q[:-1][:len(self.basis)] @ self.basis).astype(np.float32)[None, :]
        self.index.nprobe = int(max(1, min(nprobe, self.index.nlist)))
        want = int(min(max(refine, 1) * keep, len(self.ids)))
        dist, got = self.index.search(qx, want)
        rows = got[0][got[0] >= 0]
        if refine <= 1:
            return rows, dist[0][got[0] >= 0].astype(np.float64)
        pos, col, val = _cells(idx, rows)
        b = np.bincount(pos, weights=val * q[col], minlength=len(rows))
        if len(rows) > keep:
            sel = np.argpartition(-b, keep - 1)[:keep]
            rows, b = rows[sel], b[sel]
        return rows, b

    def kept(self, q: np.ndarray, keep: int, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, projected BC)``, in no particular order: the rows of ``top(refine=1)`` as a set, with
        every row tied with its last at the cut (a superset, equal when no tie straddles the cut; the
        exact level 1 keeps ties too) -- all the rows of the lists probed when they hold at most ``keep``.

        ``top``'s FAISS search keeps a heap of ``keep`` rows: at 1M entries (128 lists, ``keep`` 32,768
        of ~125k rows scanned) ~15 ms CPU a query. Here FAISS's range search over the same lists returns
        every row scanned with the inner product its search computes (the same scanner: equal floats,
        tests/test_level1.py) and a partition finds the cut: ~7-9 ms. It holds every row of the lists
        probed (~16 bytes a row: ~2 MB at 1M entries and 128 of 1,000 lists; all of them when every list
        is probed). An index whose scan FAISS caps (``max_codes``; fitsketch never sets it and FAISS does
        not save it) is searched by ``top`` instead: the range search would scan more rows than it."""
        if getattr(self.index, "max_codes", 0):
            return self.top(None, q, keep, nprobe, refine=1)
        qx = (q[:-1][:len(self.basis)] @ self.basis).astype(np.float32)[None, :]
        self.index.nprobe = int(max(1, min(nprobe, self.index.nlist)))
        _, dist, rows = self.index.range_search(qx, -np.inf)      # IP > -inf: every row of the lists probed
        if len(rows) > keep > 0:
            cut = np.partition(dist, len(dist) - keep)[len(dist) - keep]
            on = dist >= cut
            rows, dist = rows[on], dist[on]
        elif keep <= 0:
            rows, dist = rows[:0], dist[:0]
        return rows.astype(np.int64, copy=False), dist.astype(np.float64)

    # -------------------------------------------------------------- persistence
    def meta(self, ident: dict) -> dict:
        return {"v": ANN_FORMAT, **ident, "entries": len(self.ids), "ids_crc": _crc(self.ids),
                "ids": self.ids, "coords": len(self.coord_keys), "coords_crc": _crc(self.coord_keys),
                "coord_keys": self.coord_keys, "basis": self.basis}

    @classmethod
    def decode(cls, index, meta: dict, idx) -> "Level1Ann | None":
        """The object a file holds, or None when it does not serve ``idx`` (see the section's notes)."""
        import faiss

        ids, keys, basis = meta.get("ids"), meta.get("coord_keys"), meta.get("basis")
        if not (isinstance(ids, np.ndarray) and ids.dtype == np.int64 and ids.ndim == 1
                and isinstance(keys, np.ndarray) and keys.dtype == np.int64 and keys.ndim == 1
                and isinstance(basis, np.ndarray) and basis.dtype == np.float32
                and basis.shape == (len(keys), ANN_DIM) and bool(np.isfinite(basis).all())):
            return None
        if meta.get("entries") != len(ids) or meta.get("ids_crc") != _crc(ids) or \
                meta.get("coords") != len(keys) or meta.get("coords_crc") != _crc(keys):
            return None
        if not (isinstance(index, faiss.IndexIVFFlat) and index.metric_type == faiss.METRIC_INNER_PRODUCT
                and index.d == ANN_DIM and index.ntotal == len(ids) and index.nlist == _nlist(len(ids))):
            return None
        # the coarse quantizer inside the file too: FAISS searches it with the query's ANN_DIM floats
        # (a quantizer of another width would read past them) and indexes lists by its answers
        # (more centroids than lists: FAISS's own assertion), and lists held in memory only (an
        # on-disk list type would open a path named inside the file)
        quant = faiss.downcast_index(index.quantizer)
        if not (type(quant) is faiss.IndexFlatIP and quant.d == ANN_DIM and quant.ntotal == index.nlist
                and isinstance(faiss.downcast_InvertedLists(index.invlists), faiss.ArrayInvertedLists)):
            return None
        if not np.isfinite(faiss.rev_swig_ptr(quant.get_xb(), quant.ntotal * quant.d)).all():
            return None
        ann = cls(basis, index, ids, keys)
        if not ann.fits(idx) or not _holds_rows(index, len(ids)):
            return None
        n = len(ids)
        if n:
            rows = np.unique(np.random.default_rng(n).integers(0, n, min(n, ANN_CHECK_ROWS)))
            if not np.allclose(_stored(index, rows), ann.project(idx, rows), atol=1e-5):
                return None
        return ann


def _holds_rows(index, n: int) -> bool:
    """Whether the IVF's lists hold every row ``0..n-1`` exactly once, under its row as id."""
    import faiss

    seen = np.zeros(n, dtype=np.int64)
    il = index.invlists
    for lst in range(index.nlist):
        sz = int(il.list_size(lst))
        if sz:
            ids = faiss.rev_swig_ptr(il.get_ids(lst), sz)
            if ids.min() < 0 or ids.max() >= n:
                return False
            np.add.at(seen, ids, 1)
    return bool(np.all(seen == 1))


def _stored(index, rows: np.ndarray) -> np.ndarray:
    """The vectors the IVF stores under ids ``rows``."""
    import faiss

    out = np.full((len(rows), index.d), np.nan, dtype=np.float32)
    where = {int(r): i for i, r in enumerate(rows)}
    il = index.invlists
    for lst in range(index.nlist):
        sz = int(il.list_size(lst))
        if not sz:
            continue
        ids = faiss.rev_swig_ptr(il.get_ids(lst), sz)
        hit = np.flatnonzero(np.isin(ids, rows))
        if len(hit):
            codes = faiss.rev_swig_ptr(il.get_codes(lst), sz * index.code_size).view(np.float32).reshape(sz, index.d)
            for h in hit:
                out[where[int(ids[h])]] = codes[h]
    return out


def level1(idx, *, load=None, save=None) -> "Level1Ann | None":
    """The level-1 IVF of ``idx`` brought to its rows, or None below ``ANN_MIN_ENTRIES`` entries.

    ``load()``: a Level1Ann read from the hub's files (None when there is none that serves), tried
    once per index; ``save(ann)``: writes it (after a build, or after bringing forward >= 5% rows)."""
    with idx.lock:
        if idx.ids.n < max(ANN_MIN_ENTRIES, 1):
            return None
        ann = _ANN.get(idx)
        if ann is None and load is not None:
            ann = load()
        if ann is not None and not ann.fits(idx):
            ann = None
        changed = 0
        if ann is None:
            ann = Level1Ann.build(idx)
            changed = len(ann)
        else:
            changed = ann.extend(idx)
        _ANN[idx] = ann
        if save is not None and changed and (changed == len(ann) or changed >= 0.05 * len(ann)):
            save(ann)
        return ann
