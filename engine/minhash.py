"""Feature overlap (ModelHub Def. 3): which source features match which target features.

A source feature matches a target feature when the MinHash estimate of their bucket sets'
Jaccard similarity -- or of the containment of the target set in the source set (the LSH
Ensemble view, better for sets of very different sizes) -- reaches ``feature_threshold`` (t2).
Sharing buckets is not enough for two numeric columns of different names: any two wide-ranged
columns contain each other's buckets, so their similarity is the smaller of the MinHash estimate
and the overlap of their value distributions (``distribution_overlap``: the histogram
intersection of the dataset-level histograms), which must reach t2 too. A shared column name is
a bonus (the pair is a candidate whatever its values: a shifted distribution is still the same
feature), except for generic names (``is_generic``: ``target``, ``label``, ``id``, ``index``...),
which are compared by their values like any other pair.
Matches are one-to-one (``align_from_similarity``). ``overlap = matched target features / target
features``.

Candidate pairs come either from comparing against every stored signature (small hubs) or from
the banded LSH tables (``lsh_l`` bands of ``lsh_k`` values, one key per band and feature).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .kernels.jslsh import band_keys
from .kernels.minhash import EMPTY, cardinality

_CHUNK = 1 << 24  # booleans compared at once


# column names that say nothing of what a column holds: never a match by name alone
_GENERIC = re.compile(r"^(target|targets|label|labels|class|classes|y|id|ids|idx|index|key|row|rowid|row_id|"
                      r"unnamed: ?\d+|level_\d+|\d+|col_?\d*|column_?\d*|feature_?\d*|value|values)$")


def is_generic(name: str) -> bool:
    """Whether a column name is too generic to match by name (``target``, ``label``, ``id``, ``0``...)."""
    return bool(_GENERIC.match(str(name).strip().lower()))


def feature_dists(totals: dict) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """{feature: (buckets, probabilities)} of dataset-level histograms ``totals`` (feat, bucket, count;
    repeated (feat, bucket) pairs are summed)."""
    key = np.asarray(totals["feat"], dtype=np.int64) * (1 << 32) + (np.asarray(totals["bucket"], dtype=np.int64) + (1 << 31))
    key, inv = np.unique(key, return_inverse=True)     # sorted by (feat, bucket); repeats summed
    count = np.bincount(inv, weights=np.asarray(totals["count"], dtype=np.float64), minlength=len(key))
    feat, bucket = key >> 32, (key & 0xFFFFFFFF) - (1 << 31)
    out = {}
    bounds = np.flatnonzero(np.diff(feat)) + 1
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(feat)]):
        if hi > lo:
            c = count[lo:hi]
            out[int(feat[lo])] = (bucket[lo:hi], c / max(c.sum(), 1e-300))
    return out


def distribution_overlap(a: tuple[np.ndarray, np.ndarray] | None, b: tuple[np.ndarray, np.ndarray] | None) -> float:
    """Histogram intersection ``sum_k min(p_a(k), p_b(k))`` of two features' value distributions
    (``feature_dists`` values; 0 when either is missing)."""
    if a is None or b is None:
        return 0.0
    _, i, j = np.intersect1d(a[0], b[0], assume_unique=True, return_indices=True)
    return float(np.minimum(a[1][i], b[1][j]).sum())


def hist_totals(hist: dict) -> dict:
    """Partition histograms (COO part, feat, bucket, count) summed over partitions."""
    key = np.asarray(hist["feat"], dtype=np.int64) * (1 << 32) + (np.asarray(hist["bucket"], dtype=np.int64) + (1 << 31))
    uniq, inv = np.unique(key, return_inverse=True)
    return {"feat": uniq >> 32, "bucket": (uniq & 0xFFFFFFFF) - (1 << 31),
            "count": np.bincount(inv, weights=np.asarray(hist["count"], dtype=np.float64), minlength=len(uniq))}


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
    distribution is still the same feature) unless the name is generic (``is_generic``), and
    pairs with similarity >= ``threshold``. Among
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
        if n in s_index and not is_generic(n):
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
