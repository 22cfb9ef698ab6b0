"""Seeded synthetic data of the benchmarks (token sets, integer sets, partition histograms, MLP
fleets): the same seed gives the same workload, so numbers stay comparable between runs."""
from __future__ import annotations

import numpy as np


# ----------------------------------------------------------------------------- seeded data
def token_sets(n_sets: int, set_size: int, vocab: int = 200_000, seed: int = 0) -> list[list[str]]:
    """``n_sets`` lists of ``set_size`` string tokens drawn from a shared vocabulary (the token
    objects are shared, so 10M tokens cost pointers, not strings)."""
    rng = np.random.default_rng(seed)
    words = [f"token-{i}" for i in range(vocab)]
    ids = rng.integers(0, vocab, size=(n_sets, set_size))
    return [[words[j] for j in row] for row in ids.tolist()]


def int_sets(n_sets: int, set_size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """CSR ``(values, offsets)`` of ``n_sets`` sets of ``set_size`` 32-bit integers."""
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 1 << 32, size=n_sets * set_size, dtype=np.int64)
    return values, np.arange(0, n_sets * set_size + 1, set_size, dtype=np.int64)


def partition_histograms(n_sources: int, n_partitions: int, n_features: int, n_bins: int,
                         rows_per_partition: int = 500, n_families: int = 100, seed: int = 0):
    """Synthetic datasets as partition histograms, with graded similarity to family bases.

    Source s belongs to family ``s % n_families`` and has the per-feature bin distribution
    ``(1 - alpha_s) * base_family + alpha_s * own_s`` (alpha_s ~ U[0, 1]); each of its
    partitions is a multinomial sample of ``rows_per_partition`` rows per feature.
    Returns ``(hist (n_sources, n_partitions, n_features, n_bins) float32 normalized per feature,
    family (n_sources,), alpha (n_sources,), bases (n_families, n_features, n_bins))``.
    """
    rng = np.random.default_rng(seed)
    bases = rng.dirichlet(np.full(n_bins, 0.5), size=(n_families, n_features))
    own = rng.dirichlet(np.full(n_bins, 0.5), size=(n_sources, n_features))
    family = np.arange(n_sources) % n_families
    alpha = rng.random(n_sources)
    dist = (1 - alpha)[:, None, None] * bases[family] + alpha[:, None, None] * own
    counts = sample_partitions(rng, dist, n_partitions, rows_per_partition)
    return counts, family, alpha, bases


def sample_partitions(rng, dist: np.ndarray, n_partitions: int, rows: int) -> np.ndarray:
    """Multinomial partitions of ``rows`` rows from per-feature distributions ``dist``
    (..., n_features, n_bins) -> (..., n_partitions, n_features, n_bins) normalized float32."""
    lead = dist.shape[:-2]
    p = np.broadcast_to(dist[..., None, :, :], lead + (n_partitions,) + dist.shape[-2:])
    counts = rng.multinomial(rows, p / p.sum(axis=-1, keepdims=True))
    return (counts / rows).astype(np.float32)


def mlp_fleet(n_ae: int, dims: list[int], seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Random stacked MLP autoencoder weights ``[(W (E, in, out), b (E, out)), ...]`` float32."""
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=(n_ae, i, o)).astype(np.float32) / np.float32(np.sqrt(i)),
             (0.1 * rng.normal(size=(n_ae, o))).astype(np.float32))
            for i, o in zip(dims[:-1], dims[1:])]
