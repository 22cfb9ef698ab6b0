"""Scoring by JS-LSH: adaptivity (ModelHub Def. 4) and LSH-estimated JS, plus exact baselines.

* ``adaptivity(D_s, D_t)`` = fraction of the target's partitions that collide with at least one
  source partition in at least one band. Ties are broken by ``band_agreement``: the mean over
  target partitions of the best fraction of bands shared with any source partition.
* ``js`` = adaptivity's special case of one partition per dataset, reported as the fraction of
  bands in which the two datasets collide (a graded estimate of collision probability).
* ``exact-js``: 1 - JS divergence (base 2) of the dataset-level distributions, no LSH.
* ``l2``: minus the L2 distance between feature means over the aligned features (for a
  categorical or text feature its normalized histogram stands for its mean).

The projection for one query is computed once over the union of coordinates of the target and
all candidates (kernels.jslsh.project), in row chunks that bound memory.
"""
from __future__ import annotations

import numpy as np

from .kernels.jslsh import band_keys, gaussian_projection, offsets, project
from .partitions import Distributions, aligned_distributions, dense, js_divergence, stack

_DENSE_BUDGET = 1 << 23  # floats per dense chunk (32 MiB in fp32)


def lsh_band_keys(dists: list[Distributions], *, seed: int, r: float, k: int, l: int,
                  device: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Band keys of every row of every dataset: ``(keys (n_rows, l) int64, row_offsets)``."""
    rows, cols, vals, cj, cb, row_offsets = stack(dists)
    n_rows, d = int(row_offsets[-1]), len(cj)
    h = k * l
    a = gaussian_projection(seed, cj, cb, h)       # (d, h)
    b = offsets(seed, h, r)                        # (h,)
    keys = np.zeros((n_rows, l), dtype=np.int64)
    step = max(1, _DENSE_BUDGET // max(d, 1))
    order = np.argsort(rows, kind="stable")
    rows, cols, vals = rows[order], cols[order], vals[order]
    bounds = np.searchsorted(rows, np.arange(0, n_rows + step, step))
    for i, lo in enumerate(range(0, n_rows, step)):
        hi = min(n_rows, lo + step)
        s, e = bounds[i], bounds[i + 1]
        sqrt_p = np.sqrt(dense(rows[s:e], cols[s:e], vals[s:e], n_rows, d, lo, hi, dtype=np.float64))
        hashes = project(sqrt_p.astype(np.float32), a, b, r, device=device)   # (rows, h) int64
        keys[lo:hi] = band_keys(hashes, k, l)
    return keys, row_offsets


def own_keys(hist: dict, n_features: int, n_partitions: int, *, per_dataset: bool, seed: int, r: float, k: int,
             l: int, device: str = "auto") -> np.ndarray:
    """Band keys of a sketch over its own features in its own order (the identity alignment), low
    32 bits as uint32 ``(rows, l)``: stored with each entry (engine/profiles.py) so that a query
    whose columns are the entry's, in the same order, compares keys instead of re-projecting the
    entry's histograms. Both sides of such a comparison come from this function."""
    d = aligned_distributions(hist, np.arange(n_features, dtype=np.int64), n_features, per_dataset=per_dataset,
                              n_partitions=n_partitions)
    keys, _ = lsh_band_keys([d], seed=seed, r=r, k=k, l=l, device=device)
    return (keys & 0xFFFFFFFF).astype(np.uint32)


def adaptivity_scores(t_keys: np.ndarray, s_keys: list[np.ndarray]) -> list[tuple[float, float, int]]:
    """Per candidate: (adaptivity, band_agreement, matched target partitions)."""
    out = []
    n_t, n_bands = t_keys.shape
    for sk in s_keys:
        if n_t == 0 or len(sk) == 0:
            out.append((0.0, 0.0, 0))
            continue
        eq = (t_keys[:, None, :] == sk[None, :, :]).sum(axis=-1)   # (n_t, n_s) bands shared
        best = eq.max(axis=1)
        matched = int((best > 0).sum())
        out.append((matched / n_t, float(best.mean()) / n_bands, matched))
    return out


def js_lsh_scores(t_keys: np.ndarray, s_keys: list[np.ndarray]) -> list[tuple[float, int]]:
    """Per candidate (one row each): (fraction of bands collided, bands collided)."""
    out = []
    for sk in s_keys:
        c = int((t_keys[0] == sk[0]).sum())
        out.append((c / t_keys.shape[1], c))
    return out


def exact_js_scores(dists: list[Distributions]) -> np.ndarray:
    """JS divergence of the first (target, one row) with each following dataset (one row each)."""
    rows, cols, vals, cj, _, row_offsets = stack(dists)
    mat = dense(rows, cols, vals, int(row_offsets[-1]), len(cj))
    return js_divergence(mat[0], mat[1:])
