"""Feature overlap (ModelHub Def. 3): which source features match which target features.

A source feature matches a target feature when the MinHash estimate of their bucket sets'
Jaccard similarity -- or of the containment of the target set in the source set (the LSH
Ensemble view, better for sets of very different sizes) -- reaches ``feature_threshold`` (t2).
Matches are made one-to-one, greedily: a pair with the same column name first, then by
similarity. ``overlap = matched target features / target features``.

Candidate pairs come either from comparing against every stored signature (small hubs) or from
the banded LSH tables (``lsh_l`` bands of ``lsh_k`` values, one key per band and feature).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .kernels.jslsh import band_keys
from .kernels.minhash import EMPTY, cardinality

_CHUNK = 1 << 24  # booleans compared at once


def feature_band_keys(sigs: np.ndarray, k: int, l: int) -> np.ndarray:
    """LSH band keys of feature signatures: ``(n_features, l)`` int64."""
    return band_keys(np.asarray(sigs, dtype=np.int64), k, l)


def similarity(t_sigs: np.ndarray, s_sigs: np.ndarray, match: str = "containment") -> np.ndarray:
    """Estimated similarity of every target feature with every source feature: ``(T, S)``."""
    t_sigs = np.asarray(t_sigs)
    s_sigs = np.asarray(s_sigs)
    T, S, P = t_sigs.shape[0], s_sigs.shape[0], t_sigs.shape[1]
    jac = np.zeros((T, S), dtype=np.float64)
    step = max(1, _CHUNK // max(1, S * P))
    for lo in range(0, T, step):
        jac[lo:lo + step] = (t_sigs[lo:lo + step, None, :] == s_sigs[None, :, :]).mean(axis=-1)
    empty = (t_sigs[:, 0] == EMPTY)[:, None] | (s_sigs[:, 0] == EMPTY)[None, :]
    jac[empty] = 0.0
    if match == "jaccard":
        return jac
    return _containment(jac, cardinality(t_sigs)[:, None], cardinality(s_sigs)[None, :])


def _containment(jac: np.ndarray, nt: np.ndarray, ns: np.ndarray) -> np.ndarray:
    """Containment of the target in the source from Jaccard and the two set-size estimates."""
    inter = jac * (nt + ns) / (1.0 + jac)
    return np.where(nt > 0, np.clip(inter / np.maximum(nt, 1e-12), 0.0, 1.0), 0.0)


def row_similarity(t_sigs: np.ndarray, s_sigs: np.ndarray, match: str = "containment") -> np.ndarray:
    """``similarity`` of target feature ``j`` with source feature ``j`` only, for a stack of
    sources with the target's columns: ``s_sigs`` (n, T, P) -> (n, T) (the diagonals of the
    pairwise matrices, same formula)."""
    t_sigs = np.asarray(t_sigs)
    s_sigs = np.asarray(s_sigs)
    jac = (t_sigs[None] == s_sigs).mean(axis=-1)
    empty = (t_sigs[None, :, 0] == EMPTY) | (s_sigs[..., 0] == EMPTY)
    jac[empty] = 0.0
    if match == "jaccard":
        return jac
    return _containment(jac, cardinality(t_sigs)[None, :], cardinality(s_sigs))


@dataclass
class Alignment:
    pairs: list[tuple[int, int, float]]   # (target feature, source feature, similarity)
    n_target: int

    @property
    def overlap(self) -> float:
        return len(self.pairs) / self.n_target if self.n_target else 0.0


def align(t_names: list[str], t_sigs: np.ndarray, s_names: list[str], s_sigs: np.ndarray,
          threshold: float, match: str = "containment") -> Alignment:
    """Greedy one-to-one matching of target features to source features."""
    return align_from_similarity(t_names, s_names, similarity(t_sigs, s_sigs, match), threshold)


def align_from_similarity(t_names: list[str], s_names: list[str], sim: np.ndarray,
                          threshold: float) -> Alignment:
    """One-to-one matching given the (T, S) similarity matrix.

    Candidate pairs: columns with the same name (whatever their value overlap: a shifted
    distribution is still the same feature) and pairs with similarity >= ``threshold``. Among
    them, the assignment maximizing the total
    similarity plus a bonus of 1 for every pair with the same column name (Hungarian
    algorithm, scipy's ``linear_sum_assignment``): a greedy match can let one strong wrong pair
    take a column that two right pairs needed.
    """
    from scipy.optimize import linear_sum_assignment

    if list(t_names) == list(s_names):
        # same columns in the same order: the identity is an optimal assignment (a same-name pair
        # gains 1 + sim >= 1, any other pair at most 1), so the solver is not needed
        return Alignment([(j, j, float(sim[j, j])) for j in range(len(t_names))], len(t_names))
    s_index = {n: i for i, n in enumerate(s_names)}
    same_all = np.zeros(sim.shape, dtype=bool)
    for i, n in enumerate(t_names):
        if n in s_index:
            same_all[i, s_index[n]] = True
    ok = (sim >= threshold) | same_all
    if not ok.any():
        return Alignment([], len(t_names))
    rows = np.flatnonzero(ok.any(axis=1))
    cols = np.flatnonzero(ok.any(axis=0))
    sub = sim[np.ix_(rows, cols)]
    same = same_all[np.ix_(rows, cols)]
    gain = np.where(ok[np.ix_(rows, cols)], sub + same, -1.0)
    ri, ci = linear_sum_assignment(gain, maximize=True)
    pairs = [(int(rows[a]), int(cols[b]), float(sub[a, b])) for a, b in zip(ri, ci) if gain[a, b] >= 0]
    pairs.sort()
    return Alignment(pairs, len(t_names))
