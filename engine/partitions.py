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
