"""Partition histograms over aligned features, as distributions ready for JS-LSH / JS / L2.

For a dataset with aligned features ``j = 0..n-1`` (the target's feature order), the
distribution of partition ``p`` is the concatenation over ``j`` of that feature's normalized
histogram, divided by ``n``: ``P_p[(j, k)] = count_p(j, k) / sum_k' count_p(j, k') / n``.
A dataset-level distribution sums the partitions' counts first (JS is adaptivity's special
case of one partition per dataset). Coordinates ``(j, bucket)`` are shared by the target and
every candidate in one query, so one random projection serves all of them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .kernels import ingest as _ingest

_SHIFT = np.int64(1 << 32)
_OFF = np.int64(1 << 31)


@dataclass
class Distributions:
    """Sparse rows: ``row``, ``coord`` (into ``coords``), ``value``; ``n_rows`` rows in all."""
    row: np.ndarray
    key: np.ndarray          # (j << 32) + (bucket + 2**31), int64
    value: np.ndarray        # float64 probabilities (already divided by n_aligned)
    n_rows: int


def aligned_distributions(hist: dict, feat_map: np.ndarray, n_aligned: int, *,
                          per_dataset: bool = False, n_partitions: int | None = None) -> Distributions:
    """Distributions of a sketch's partitions (or of the whole dataset) over aligned features.

    ``feat_map[f]`` is the aligned index ``j`` of the sketch's feature ``f``, or -1 if unaligned.
    """
    feat = np.asarray(hist["feat"], dtype=np.int64)
    keep = feat_map[feat] >= 0 if len(feat) else np.zeros(0, dtype=bool)
    j = feat_map[feat[keep]].astype(np.int64)
    bucket = np.asarray(hist["bucket"], dtype=np.int64)[keep]
    count = np.asarray(hist["count"], dtype=np.float64)[keep]
    if per_dataset:
        row = np.zeros(len(j), dtype=np.int64)
        n_rows = 1
    else:
        row = np.asarray(hist["part"], dtype=np.int64)[keep]
        n_rows = int(n_partitions) if n_partitions is not None else (int(row.max()) + 1 if len(row) else 0)
    key = (j << 32) + (bucket + _OFF)
    # aggregate duplicates (only present when per_dataset)
    if per_dataset and len(key):
        uniq, inv = np.unique(key, return_inverse=True)
        count = np.bincount(inv, weights=count, minlength=len(uniq))
        key = uniq
        row = np.zeros(len(uniq), dtype=np.int64)
        j = key >> 32
    # normalize per (row, feature)
    rf = row * max(n_aligned, 1) + j
    cells = (int(rf.max()) + 1) if len(rf) else 0
    if len(rf) and int(rf.min()) >= 0 and cells <= max(1 << 20, 4 * len(rf)):
        # few (row, feature) cells: count into all of them (np.bincount adds in element order,
        # so the totals are those of the ranks below, without sorting the occurrences)
        totals = np.bincount(rf, weights=count, minlength=cells)
        value = count / totals[rf] / max(n_aligned, 1)
    else:
        uniq_rf, inv_rf = np.unique(rf, return_inverse=True)
        totals = np.bincount(inv_rf, weights=count, minlength=len(uniq_rf))
        value = count / totals[inv_rf] / max(n_aligned, 1)
    return Distributions(row, key, value, n_rows)


def stack(dists: list[Distributions]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Stack many datasets' rows: ``(row, col, value, coords_j, coords_bucket)`` plus row offsets.

    Returns global ``row``, ``col`` (index into the union of coordinates), ``value``, the union's
    ``(j, bucket)`` arrays, and ``row_offsets`` (len(dists) + 1) where dataset ``i`` owns rows
    ``row_offsets[i]:row_offsets[i+1]``.
    """
    row_offsets = np.zeros(len(dists) + 1, dtype=np.int64)
    np.cumsum([d.n_rows for d in dists], out=row_offsets[1:])
    rows = np.concatenate([d.row + row_offsets[i] for i, d in enumerate(dists)]) if dists else np.zeros(0, np.int64)
    keys = np.concatenate([d.key for d in dists]) if dists else np.zeros(0, np.int64)
    vals = np.concatenate([d.value for d in dists]) if dists else np.zeros(0)
    coords, col = np.unique(keys, return_inverse=True)
    return rows, col.astype(np.int64), vals, (coords >> 32), ((coords & 0xFFFFFFFF) - _OFF), row_offsets


def dense(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, n_rows: int, n_cols: int,
          lo: int = 0, hi: int | None = None, dtype=np.float64) -> np.ndarray:
    """Dense ``[lo:hi]`` rows of a COO matrix."""
    hi = n_rows if hi is None else hi
    sel = (rows >= lo) & (rows < hi)
    flat = (rows[sel] - lo) * n_cols + cols[sel]
    out = np.bincount(flat, weights=vals[sel], minlength=(hi - lo) * n_cols)
    return out.reshape(hi - lo, n_cols).astype(dtype, copy=False)


def js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence (base 2, in [0, 1]) between ``p`` (d,) and each row of ``q`` (n, d)."""
    p = np.asarray(p, dtype=np.float64)[None, :]
    q = np.asarray(q, dtype=np.float64)
    m = 0.5 * (p + q)
    with np.errstate(divide="ignore", invalid="ignore"):
        kp = np.where(p > 0, p * np.log2(p / m), 0.0).sum(axis=1)
        kq = np.where(q > 0, q * np.log2(q / m), 0.0).sum(axis=1)
    return np.clip(0.5 * (kp + kq), 0.0, 1.0)


# ----------------------------------------------------------------------------- stored form
HIST_FORMAT = 2   # 1: the COO arrays as they are (int32 / uint32); 2: runs, below


def _narrow(a: np.ndarray, signed: bool) -> np.ndarray:
    """``a`` in the narrowest integer dtype holding its values (these arrays are most of an entry)."""
    a = np.asarray(a, dtype=np.int64)
    lo, hi = (int(a.min()), int(a.max())) if len(a) else (0, 0)
    for t, t_lo, t_hi in _LIMITS[signed]:
        if t_lo <= lo and hi <= t_hi:
            return a.astype(t)
    raise ValueError("value out of range")  # pragma: no cover


_LIMITS = {s: tuple((t, int(np.iinfo(t).min), int(np.iinfo(t).max)) for t in ts) for s, ts in
           ((True, (np.int8, np.int16, np.int32, np.int64)), (False, (np.uint8, np.uint16, np.uint32, np.uint64)))}


def pack_hist(hist: dict, n_partitions: int, n_features: int) -> dict:
    """Stored form of a sketch's histograms (COO sorted by part, feat, bucket, unique): per
    (partition, feature) cell its number of buckets ``n``, the first bucket of each non-empty cell
    ``b0``, the gaps to the following buckets ``gap`` (>= 1) and the counts ``c``: gaps and counts
    one byte each, those of 255 or more at positions ``xi`` / ``cxi`` with values ``xv`` / ``cxv``;
    the rest in the narrowest integer type. About 2 bytes per non-zero instead of 16."""
    part = np.asarray(hist["part"], dtype=np.int64)
    feat = np.asarray(hist["feat"], dtype=np.int64)
    bucket = np.asarray(hist["bucket"], dtype=np.int64)
    cell = part * n_features + feat
    if len(cell) and (np.any(np.diff(cell) < 0) or np.any((np.diff(cell) == 0) & (np.diff(bucket) <= 0))):
        raise ValueError("histograms must be sorted by (part, feat, bucket) without repeats")
    n = np.bincount(cell, minlength=n_partitions * n_features) if len(cell) else np.zeros(n_partitions * n_features,
                                                                                       dtype=np.int64)
    start = np.ones(len(cell), dtype=bool)
    start[1:] = cell[1:] != cell[:-1]
    gap = np.diff(bucket)[~start[1:]] if len(cell) else np.zeros(0, dtype=np.int64)
    # rare long jumps (special buckets) and large counts are kept aside so the rest fit a byte
    g8, gxi, gxv = _bytes_and_exceptions(gap)
    c8, cxi, cxv = _bytes_and_exceptions(np.asarray(hist["count"], dtype=np.int64))
    return {"v": HIST_FORMAT, "shape": [int(n_partitions), int(n_features)], "n": _narrow(n, False),
            "b0": _narrow(bucket[start], True), "gap": g8, "xi": gxi, "xv": gxv, "c": c8, "cxi": cxi, "cxv": cxv}


def pack_hists(e, part, feat, bucket, count, n_partitions, n_features) -> list[dict]:
    """``pack_hist`` of every sketch of a batch at once (``Hub.add_sketches``): their histograms
    concatenated (``e`` the sketch of each non-zero, ascending; each sketch's sorted as
    ``pack_hist`` requires, which sketch.check_sketch has checked), ``n_partitions`` /
    ``n_features`` per sketch. Equal to ``pack_hist`` of each (tests/test_profiles.py)."""
    n_p, n_f = np.asarray(n_partitions, dtype=np.int64), np.asarray(n_features, dtype=np.int64)
    c_off = np.concatenate([[0], np.cumsum(n_p * n_f)]).astype(np.int64)
    arrays = _ingest.hist_runs(e, part, feat, bucket, count, n_f, c_off)   # compiled: the same arrays in one pass
    if arrays is None:
        arrays = _hist_arrays(e, part, feat, bucket, count, n_f, c_off)
    n_all, b0, g8, xi, xv, c8, cxi, cxv, lo, s_lo, g_lo, gb_lo, cb_lo = arrays
    # every sketch's arrays in the narrowest type, its dtype found for all sketches at once (``_narrow_runs``)
    ns, b0s = _narrow_runs(n_all, c_off, False), _narrow_runs(b0, s_lo, True)
    xis, xvs = _narrow_runs(xi, gb_lo, False), _narrow_runs(xv, gb_lo, False)
    cxis, cxvs = _narrow_runs(cxi, cb_lo, False), _narrow_runs(cxv, cb_lo, False)
    lo, g_lo = lo.tolist(), g_lo.tolist()
    return [{"v": HIST_FORMAT, "shape": [p, f], "n": n, "b0": b, "gap": g8[g_lo[i]:g_lo[i + 1]], "xi": x, "xv": v,
             "c": c8[lo[i]:lo[i + 1]], "cxi": cx, "cxv": cv}
            for i, (p, f, n, b, x, v, cx, cv) in enumerate(zip(n_p.tolist(), n_f.tolist(), ns, b0s, xis, xvs, cxis, cxvs))]


def _hist_arrays(e, part, feat, bucket, count, n_f, c_off) -> tuple:
    """``pack_hists``' batch-wide arrays in NumPy (the definition; kernels/ingest.py ``hist_runs`` computes
    them in one pass): every cell's non-zero count ``n_all``, the cells' first buckets ``b0``, the other
    non-zeros' gaps as bytes ``g8`` with the gaps of 255 or more at ``xi`` (within the sketch's gaps) /
    ``xv``, the counts as bytes ``c8`` with those of 255 or more at ``cxi`` (within the sketch) / ``cxv``,
    and each sketch's offsets into them: ``lo`` (non-zeros), ``s_lo`` (b0), ``g_lo`` (gaps), ``gb_lo``
    (xi / xv), ``cb_lo`` (cxi / cxv)."""
    m = len(n_f)
    lo = np.searchsorted(e, np.arange(m + 1))
    cell = part * n_f[e] + feat
    start = np.zeros(len(e), dtype=bool)        # (sortedness: checked by sketch.check_sketch before a batch)
    start[lo[:-1][lo[:-1] < len(e)]] = True      # every sketch's first non-zero
    start[1:] |= cell[1:] != cell[:-1]
    n_all = np.bincount(c_off[e] + cell, minlength=int(c_off[-1])) if len(e) else np.zeros(int(c_off[-1]), np.int64)
    inner = np.flatnonzero(~start)                                     # positions with a gap to the one before
    gap = bucket[inner] - bucket[inner - 1]
    g_lo = np.searchsorted(inner, lo)
    s_lo = np.searchsorted(np.flatnonzero(start), lo)
    b0 = bucket[start]
    cnt = np.asarray(count, dtype=np.int64)
    g_big, c_big = np.flatnonzero(gap >= 255), np.flatnonzero(cnt >= 255)
    gb_lo, cb_lo = np.searchsorted(g_big, g_lo), np.searchsorted(c_big, lo)
    g8 = np.where(gap >= 255, 255, gap).astype(np.uint8)
    c8 = np.where(cnt >= 255, 255, cnt).astype(np.uint8)
    # the exceptions' positions, relative to their sketch's gaps / counts
    xi = g_big - g_lo[np.repeat(np.arange(m), np.diff(gb_lo))]
    cxi = c_big - lo[np.repeat(np.arange(m), np.diff(cb_lo))]
    return n_all, b0, g8, xi, gap[g_big], c8, cxi, cnt[c_big], lo, s_lo, g_lo, gb_lo, cb_lo


def _narrow_runs(a: np.ndarray, bounds: np.ndarray, signed: bool) -> list:
    """``[_narrow(a[bounds[i]:bounds[i + 1]], signed) for i ...]`` for non-decreasing ``bounds`` within
    ``a``: every run's smallest and largest value found at once (``reduceat`` over the non-empty runs),
    then each run cast to the first type of ``_LIMITS`` that holds both (an empty run: the first)."""
    bounds = np.asarray(bounds, dtype=np.int64)
    a = np.asarray(a, dtype=np.int64)[:int(bounds[-1])]      # the last non-empty run's reduce stops at the end
    starts, ends = bounds[:-1], bounds[1:]
    full = ends > starts
    lo = np.zeros(len(starts), dtype=np.int64)
    hi = np.zeros(len(starts), dtype=np.int64)
    if full.any():      # consecutive non-empty runs: each reduce ends where the next non-empty run starts
        lo[full] = np.minimum.reduceat(a, starts[full])
        hi[full] = np.maximum.reduceat(a, starts[full])
    types = _LIMITS[signed]
    code = np.full(len(starts), len(types))
    for i in range(len(types) - 1, -1, -1):   # widest to narrowest: the last type that holds a run is the first
        _, t_lo, t_hi = types[i]
        code[(t_lo <= lo) & (hi <= t_hi)] = i
    if (code == len(types)).any():
        raise ValueError("value out of range")  # pragma: no cover - int64 values fit int64 / non-negative ones uint64
    return [a[s:e].astype(types[c][0]) for s, e, c in zip(starts.tolist(), ends.tolist(), code.tolist())]


def _bytes_and_exceptions(a: np.ndarray):
    """Non-negative ``a`` as uint8 (255 where it does not fit) + the positions and values that do not."""
    big = np.flatnonzero(a >= 255)
    return np.where(a >= 255, 255, a).astype(np.uint8), _narrow(big, False), _narrow(a[big], False)


def _with_exceptions(small, xi, xv) -> np.ndarray:
    a = np.asarray(small, dtype=np.int64)
    a[np.asarray(xi, dtype=np.int64)] = np.asarray(xv, dtype=np.int64)
    return a


def unpack_hist(rec: dict) -> dict:
    """The COO histograms (``part``, ``feat``, ``bucket`` int32, ``count`` uint32) of a stored record
    (format 1 or 2)."""
    if rec.get("v") == 1 or "part" in rec:
        return {k: np.asarray(rec[k]) for k in ("part", "feat", "bucket", "count")}
    if rec.get("v") != HIST_FORMAT:
        from .errors import SchemaError

        raise SchemaError(f"histogram record has format {rec.get('v')}; this fitsketch reads 1 and {HIST_FORMAT}: "
                          "upgrade fitsketch")
    n_p, n_f = rec["shape"]
    n = np.asarray(rec["n"], dtype=np.int64)
    cells = np.flatnonzero(n)
    cell = np.repeat(cells, n[cells])
    start = np.ones(len(cell), dtype=bool)
    start[1:] = cell[1:] != cell[:-1]
    step = np.zeros(len(cell), dtype=np.int64)
    step[start] = np.asarray(rec["b0"], dtype=np.int64)
    step[~start] = _with_exceptions(rec["gap"], rec["xi"], rec["xv"])
    # bucket = first bucket of its run + cumulative gaps inside the run
    csum = np.cumsum(np.where(start, 0, step))
    run_base = np.maximum.accumulate(np.where(start, np.arange(len(cell)), 0)) if len(cell) else cell
    bucket = step[run_base] + csum - csum[run_base]
    return {"part": (cell // max(n_f, 1)).astype(np.int32), "feat": (cell % max(n_f, 1)).astype(np.int32),
            "bucket": bucket.astype(np.int32), "count": _with_exceptions(rec["c"], rec["cxi"], rec["cxv"]).astype(np.uint32)}
