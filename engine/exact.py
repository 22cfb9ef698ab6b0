# Exact cosine k-NN, recall@k and seeded clustered embeddings: the reference that the FAISS
# indexes and the deep-hash buckets are measured against, shared by tests and bench/ (FAISS
# contrib/exhaustive_search, SyntheticDataset) and never copied into a benchmark.
#
# Cosine similarity of rows x, y is  <x / |x|, y / |y|>;  a zero row is kept as zero, so its
# similarity to everything is 0. FAISS conventions: database xb (nb, d), queries xq (nq, d),
# results D (nq, k) float32 similarities in decreasing order and I (nq, k) int64 row numbers of
# xb (ties to the smaller row), slots past nb are D = -inf, I = -1.
from __future__ import annotations

import logging

import numpy as np
import torch

log = logging.getLogger(__name__)

__all__ = ["normalize", "exact_search", "recall_at_k", "synthetic_embeddings", "MISSING_D", "MISSING_I"]

MISSING_D = -np.inf  # D of a slot with no result (similarities: lower is worse)
MISSING_I = -1       # I of a slot with no result
_BLOCK = 1 << 24     # similarity entries per query block (64 MiB of float32)


def normalize(x) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``x`` (n, d) scaled to unit L2 norm: ``(xn float32 (n, d), norms float32 (n,))``.

    Zero rows stay zero (their norm is 0)."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D array (n, d), got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1).astype(np.float32)              # (n,)
    safe = np.where(norms > 0, norms, np.float32(1.0))
    return np.ascontiguousarray(x / safe[:, None], dtype=np.float32), norms


def exact_search(xb, xq, k: int, *, normalized: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most cosine-similar rows of ``xb`` for every row of ``xq``, by brute force.

    Returns ``D`` float32 (nq, k) cosine similarities, decreasing, and ``I`` int64 (nq, k) row
    numbers of ``xb``, ties to the smaller row; missing slots (k > nb) are ``-inf`` / ``-1``.
    ``normalized=True`` skips the normalization when both sides already have unit rows.
    """
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 0:
        raise ValueError(f"k={k!r}: pass a non-negative integer number of neighbours")
    k = int(k)
    xb = np.asarray(xb, dtype=np.float32)
    xq = np.asarray(xq, dtype=np.float32)
    if xb.ndim != 2 or xq.ndim != 2 or xb.shape[1] != xq.shape[1]:
        raise ValueError(f"xb {xb.shape} and xq {xq.shape} must be 2-D with the same width")
    if not normalized:
        xb, _ = normalize(xb)
        xq, _ = normalize(xq)
    nb, nq = xb.shape[0], xq.shape[0]
    D = np.full((nq, k), MISSING_D, dtype=np.float32)
    I = np.full((nq, k), MISSING_I, dtype=np.int64)
    kk = min(k, nb)
    if kk == 0 or nq == 0:
        return D, I
    rows = max(1, _BLOCK // max(nb, 1))
    for lo in range(0, nq, rows):
        sim = xq[lo:lo + rows] @ xb.T                                  # (r, nb) float32
        if kk < nb:
            # selection only (torch.topk is ~10x np.argpartition on CPU); order and ties below
            part = torch.topk(torch.from_numpy(sim), kk, dim=1, sorted=False).indices.numpy()  # (r, kk)
            # the kk-th similarity may be tied with rows outside `part`: widen to every row
            # reaching it, so the tie-break to the smaller row is exact
            psim = np.take_along_axis(sim, part, axis=1)               # (r, kk)
            kth = psim.min(axis=1)                                     # (r,)
            order = np.lexsort((part, -psim), axis=1)
            I[lo:lo + rows, :kk] = np.take_along_axis(part, order, axis=1)
            D[lo:lo + rows, :kk] = np.take_along_axis(psim, order, axis=1)
            tied = np.flatnonzero((sim >= kth[:, None]).sum(axis=1) > kk)
            for j in tied:                                             # rare: exact tie-break
                cand = np.flatnonzero(sim[j] >= kth[j])
                o = np.lexsort((cand, -sim[j, cand]))[:kk]
                I[lo + j, :kk] = cand[o]
                D[lo + j, :kk] = sim[j, cand[o]]
        else:
            ids = np.broadcast_to(np.arange(nb), sim.shape)
            order = np.lexsort((ids, -sim), axis=1)[:, :kk]
            I[lo:lo + rows, :kk] = order
            D[lo:lo + rows, :kk] = np.take_along_axis(sim, order, axis=1)
    return D, I


def recall_at_k(I, I_gt, k: int) -> float:
    """Mean over queries of |I[:, :k] ∩ I_gt[:, :k]| / (valid ids in I_gt[:, :k]) ("k-recall@k":
    the share of the true k nearest neighbours that the search returned, in any order).

    ``-1`` slots never count; a query whose ground truth is empty counts as recall 1.
    """
    I = np.asarray(I)
    I_gt = np.asarray(I_gt)
    if I.ndim != 2 or I_gt.ndim != 2 or I.shape[0] != I_gt.shape[0]:
        raise ValueError(f"I {I.shape} and I_gt {I_gt.shape} must be 2-D with the same number of queries")
    if I.shape[0] == 0:
        return 1.0
    total = 0.0
    for got, gt in zip(I[:, :k], I_gt[:, :k]):
        gt = gt[gt >= 0]
        if gt.size == 0:
            total += 1.0
            continue
        total += np.intersect1d(got[got >= 0], gt).size / gt.size
    return total / I.shape[0]


def synthetic_embeddings(n: int, d: int, n_clusters: int = 100, seed: int = 0, *,
                         spread: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    """Seeded clustered embeddings: ``(x float32 (n, d), labels int64 (n,))``.

    Cluster centres are uniform on the unit sphere; a point is its centre plus isotropic
    Gaussian noise of total norm about ``spread`` (so within-cluster cosine ~ 1 / (1 + spread^2)),
    then scaled by a random norm in [0.5, 2] (cosine search must ignore it). The same
    (seed, d, n_clusters) give the same centres for every n, and the first rows of a larger n
    equal a smaller n, so queries can be drawn as the tail of one call.
    """
    if n < 0 or d < 1 or n_clusters < 1:
        raise ValueError(f"n={n}, d={d}, n_clusters={n_clusters}: need n >= 0, d >= 1, n_clusters >= 1")
    rng = np.random.default_rng([seed, d, n_clusters])
    centres, _ = normalize(rng.standard_normal((n_clusters, d)))     # (n_clusters, d)
    x = np.empty((n, d), dtype=np.float32)
    labels = np.empty(n, dtype=np.int64)
    chunk = 1 << 16
    for i, lo in enumerate(range(0, n, chunk)):                       # stream in chunks: prefix-stable
        r = np.random.default_rng([seed, d, n_clusters, i])
        m = min(chunk, n - lo)
        lab = r.integers(0, n_clusters, size=chunk)[:m]                  # full-chunk draws, sliced
        noise = r.standard_normal((chunk, d), dtype=np.float32)[:m]
        scale = r.uniform(0.5, 2.0, size=(chunk, 1)).astype(np.float32)[:m]
        x[lo:lo + m] = (centres[lab] + noise * np.float32(spread / np.sqrt(d))) * scale
        labels[lo:lo + m] = lab
    return x, labels
