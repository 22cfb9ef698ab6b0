"""fitsketch.minhash (the engine's use of signatures): similarity estimates against a reference and the
true Jaccard / containment, feature alignment (names first, then similarity), the row similarity
and the identity alignment. Kernels are in test_kernel_minhash.py."""
from __future__ import annotations

import numpy as np
import pytest

import fitsketch
from fitsketch.kernels.minhash import EMPTY
from fitsketch.minhash import align, align_from_similarity, row_similarity, similarity


def ref_similarity(ts, ss, match):
    out = np.zeros((len(ts), len(ss)))
    for i, a in enumerate(ts):
        for j, b in enumerate(ss):
            if a[0] == EMPTY or b[0] == EMPTY:
                continue
            jac = sum(int(x == y) for x, y in zip(a, b)) / len(a)
            if match == "jaccard":
                out[i, j] = jac
                continue
            na = len(a) / sum(x / float(2**32 - 1) for x in a) - 1
            nb = len(b) / sum(x / float(2**32 - 1) for x in b) - 1
            na, nb = max(na, 1.0), max(nb, 1.0)
            out[i, j] = min(1.0, max(0.0, jac * (na + nb) / (1 + jac) / na))
    return out


@pytest.mark.parametrize("match", ["jaccard", "containment"])
def test_similarity_equals_reference(rng, match):
    base = rng.integers(0, 2**32 - 1, size=(7, 32), dtype=np.int64).astype(np.uint32)
    other = base[rng.integers(0, 7, 5)].copy()
    mask = rng.random(other.shape) < 0.5
    other[mask] = rng.integers(0, 2**32 - 1, size=mask.sum(), dtype=np.int64).astype(np.uint32)
    other[0] = EMPTY
    got = similarity(base, other, match)
    np.testing.assert_allclose(got, ref_similarity(base, other, match), rtol=1e-12, atol=1e-12)


def test_similarity_estimates_true_jaccard_and_containment(rng):
    universe = np.arange(100_000)
    a = rng.choice(universe, 2000, replace=False)
    b = np.concatenate([a[:1000], rng.choice(universe[50_000:], 1000, replace=False)])
    small = a[:200]
    sig = fitsketch.minhash_sets([a.tolist(), b.tolist(), small.tolist()], num_perm=512)
    true_j = len(set(a) & set(b)) / len(set(a) | set(b))
    j = similarity(sig[:1], sig[1:2], "jaccard")[0, 0]
    assert abs(j - true_j) < 0.08  # 512 permutations: std ~ 0.02
    # containment of a 200-set inside a 2000-set (J = 0.1): the estimate's std is ~0.15 here,
    # so 0.4 is 4 standard deviations below the truth (1.0)
    c = similarity(sig[2:3], sig[:1], "containment")[0, 0]
    assert 0.4 < c <= 1.0
    stranger = rng.choice(np.arange(200_000, 300_000), 200, replace=False)
    c0 = similarity(fitsketch.minhash_sets([stranger.tolist()], num_perm=512), sig[:1], "containment")[0, 0]
    assert c0 < 0.2


def test_alignment_prefers_same_name_then_similarity(rng):
    s = rng.integers(0, 2**32 - 1, size=(3, 64), dtype=np.int64).astype(np.uint32)
    t = s.copy()
    # target feature "b" is identical to source "a" and to source "b": same name wins
    t_names, s_names = ["b", "x", "q"], ["a", "b", "c"]
    t[0] = s[0]
    s[1] = s[0]
    t[1] = s[2]
    t[2] = rng.integers(0, 2**32 - 1, size=64, dtype=np.int64).astype(np.uint32)
    al = align(t_names, t, s_names, s, threshold=0.5, match="jaccard")
    assert [(a, b) for a, b, _ in al.pairs] == [(0, 1), (1, 2)]
    assert al.overlap == pytest.approx(2 / 3)


def test_same_name_columns_align_whatever_their_value_overlap(rng):
    t = rng.integers(0, 2**32 - 1, size=(2, 64), dtype=np.int64).astype(np.uint32)
    s = rng.integers(0, 2**32 - 1, size=(2, 64), dtype=np.int64).astype(np.uint32)
    al = align(["price", "zz"], t, ["price", "other"], s, threshold=0.5, match="jaccard")
    assert [(a, b) for a, b, _ in al.pairs] == [(0, 0)]
    assert al.pairs[0][2] < 0.5


@pytest.mark.parametrize("n,T", [(0, 3), (1, 1), (5, 4), (9, 7)])
def test_row_similarity_is_the_diagonal(rng, n, T):
    P_ = 16
    t = rng.integers(0, 50, (T, P_)).astype(np.uint32)
    s = rng.integers(0, 50, (n, T, P_)).astype(np.uint32)
    s[..., :P_ // 2] = t[None, :, :P_ // 2] * (rng.random((n, T, 1)) < 0.5)
    if T > 1:
        t[0] = np.uint32(0xFFFFFFFF)            # an empty feature
    for match in ("containment", "jaccard"):
        got = row_similarity(t, s, match)
        assert got.shape == (n, T)
        for i in range(n):
            np.testing.assert_array_equal(got[i], np.diag(similarity(t, s[i], match)))


def test_identity_alignment_is_optimal(rng):
    """With the same names in the same order the identity is returned, and it reaches the maximum
    total gain the assignment solver finds."""
    from scipy.optimize import linear_sum_assignment

    for T in (1, 2, 5, 11):
        names = [f"c{i}" for i in range(T)]
        sim = rng.random((T, T))
        al = align_from_similarity(names, names, sim, 0.3)
        assert [(t, s) for t, s, _ in al.pairs] == [(j, j) for j in range(T)]
        ok = (sim >= 0.3) | np.eye(T, dtype=bool)
        gain = np.where(ok, sim + np.eye(T), -1.0)
        r, c = linear_sum_assignment(gain, maximize=True)
        assert np.trace(gain) == pytest.approx(gain[r, c].sum())
