"""Scoring by JS-LSH: adaptivity (ModelHub Def. 4) and LSH-estimated JS, plus exact baselines.

* ``adaptivity(D_s, D_t)`` = fraction of the target's partitions that collide with at least one
  source partition in at least one band. The score is graded by ``band_agreement`` (the mean over
  target partitions of the best fraction of bands shared with any source partition), counted as
  one more, fractional partition: ``(matched + band_agreement) / (target partitions + 1)``
  (:func:`graded_adaptivity`), so it orders entries as adaptivity then band agreement did.
  A query of fewer than ``query_min_partitions * partition_size`` rows is cut into partitions
  sized from the query (:func:`query_partition_size`).
* ``js`` = adaptivity's special case of one partition per dataset, reported as the fraction of
  bands in which the two datasets collide (a graded estimate of collision probability).
* Both: ``closeness`` = 1 - exact JS divergence of the dataset-level distributions, scaled under
  the step of the LSH score (:func:`below_one_step`), is added to the score of every entry for a
  query of fewer than ``query_min_partitions * partition_size`` rows, and for a larger query to
  the entries at 0 (no band in common; the others' stored band keys spare reading their
  histograms): no 0/1 scores and no ties on small queries, and the order of the LSH scores is kept.
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


def query_partition_size(n_rows: int, partition_size: int, min_partitions: int, min_rows: int) -> int:
    """Rows per partition of a query of ``n_rows`` rows: the hub's ``partition_size`` when the query
    has at least ``min_partitions`` such partitions; otherwise ``min_partitions`` partitions (fewer
    when that would make them smaller than ``min_rows`` rows, at least one)."""
    if n_rows >= partition_size * min_partitions:
        return int(partition_size)
    n_parts = max(1, min(min_partitions, n_rows // max(min_rows, 1)))
    return int(max(1, min(partition_size, -(-n_rows // n_parts))))


def graded_adaptivity(matched: int, agreement: float, n_target: int) -> float:
    """``(matched + band_agreement) / (n_target + 1)``: adaptivity graded by the band agreement,
    lexicographic in (matched, agreement) for one target (a matched partition shares >= 1 band)."""
    return (matched + agreement) / (n_target + 1)


def below_one_step(closeness: float, step: float) -> float:
    """``closeness`` in [0, 1] scaled into [0, step / 2]: added to an LSH score whose values are
    multiples of ``step``, it grades without reordering."""
    return float(np.clip(closeness, 0.0, 1.0)) * step / 2


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
