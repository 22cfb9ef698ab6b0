"""SimEx's calibrated score (engine/simex.py ``calibrate``, ``simex_score="calibrated"``; the latent
score, the default since, is tested in tests/test_simex_latent.py):
the definition against a per-feature reference, scale invariance, the two-sided own-error term, the
per-feature std floor of the tabular transform, records and stored-hub compatibility, and known
answers (a median split, class groups of digits) where the right source must rank first."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

import fitsketch
from fitsketch import errors as E
from fitsketch import simex as S
from fitsketch.config import SketchConfig

TINY = S.AEConfig(hidden=(8, 3, 8), epochs=6, min_epochs=1, patience=6, time_cap_s=0, seed=0)


def _record(rng, d, image=False):
    """A record with random weights, transform, moments and own error (no training)."""
    cfg = S.AEConfig(hidden=(7, 3, 7))
    w = {k: rng.normal(scale=0.5, size=s).astype(np.float32)
         for k, s in S._weight_shapes("mlp", d, (), cfg).items()}
    shift = np.zeros(d, np.float32) if image else rng.normal(size=d).astype(np.float32)
    scale = np.full(d, 16.0, np.float32) if image else rng.uniform(0.1, 5.0, size=d).astype(np.float32)
    moments = (rng.normal(size=d).astype(np.float32), rng.uniform(0.0, 2.0, size=d).astype(np.float32))
    moments[1][0] = 0.0   # a constant feature: the floor applies
    return S.AERecord("mlp", d, (1, 1, d) if image else (), cfg.to_dict(), shift, scale, 1.0, w, 50, 1,
                      "epoch-cap", own_error=float(rng.uniform(0.05, 2.0)), moments=moments)


@pytest.mark.parametrize("n,d", [(1, 1), (2, 5), (7, 3), (33, 9)])
def test_calibrated_delta_equals_reference(n, d):
    rng = np.random.default_rng()
    recs = [_record(rng, d) for _ in range(3)]
    X = (rng.normal(size=(n, d)) * rng.uniform(0.1, 3, size=d)).astype(np.float32)
    got = S.delta(X, recs, calibrated=True, device="cpu")
    want = S.delta_reference(X, recs, calibrated=True)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)   # float32 forward vs float64
    assert S.calibrated_used(recs).all()


def test_calibrated_falls_back_per_record_without_moments():
    rng = np.random.default_rng()
    recs = [_record(rng, 4) for _ in range(3)]
    recs[1].moments = None
    recs[2].moments, recs[2].own_error = None, None
    X = rng.normal(size=(9, 4)).astype(np.float32)
    raw = S.delta(X, recs, normalize=False, device="cpu")
    got = S.delta(X, recs, calibrated=True, device="cpu")
    assert S.calibrated_used(recs).tolist() == [True, False, False]
    np.testing.assert_allclose(got[1], raw[1] / recs[1].own_error, rtol=1e-6)
    np.testing.assert_allclose(got[2], raw[2] / recs[2].norm, rtol=1e-6)
    np.testing.assert_allclose(got, S.delta_reference(X, recs, calibrated=True), rtol=1e-4, atol=1e-6)
    ev = S.calibrated_evidence(S.calibrated_used(recs), S.relative_used(recs))
    assert ev["score"] == "calibrated" and "2 of" in ev["fallback"]


def test_own_error_term_is_two_sided():
    """An autoencoder that reconstructs the target far better than its own held-out rows (one that
    reconstructs everything) scores worse than one that reconstructs it as well as its own rows;
    the term is 0 at E = 1 and grows on both sides."""
    rng = np.random.default_rng()
    r = _record(rng, 5)
    X = rng.normal(size=(20, 5))
    base = S.calibrate(X, [r], [r.own_error], recon_weight=0.0)[0]
    for e in (1e-3, 0.1, 0.5, 2.0, 10.0):
        got = S.calibrate(X, [r], [e * r.own_error], recon_weight=1.0)[0]
        assert got - base == pytest.approx(0.5 * (e - 1 - math.log(e)), rel=1e-9)
        assert got > base
    assert S.calibrate(X, [r], [r.own_error], recon_weight=1.0)[0] == pytest.approx(base, rel=1e-12)


def test_moment_term_is_zero_for_the_source_itself_and_grows_with_a_shift():
    rng = np.random.default_rng()
    r = _record(rng, 3)
    r.moments = (np.zeros(3, np.float32), np.ones(3, np.float32))
    X = rng.normal(size=(4000, 3))
    X = (X - X.mean(0)) / X.std(0) * r.scale + r.shift      # exactly the source's moments
    assert S.calibrate(X, [r], [r.own_error])[0] == pytest.approx(0.0, abs=1e-9)
    shifted = [S.calibrate(X + k * r.scale, [r], [r.own_error])[0] for k in (0.5, 1.0, 2.0)]
    np.testing.assert_allclose(shifted, [np.mean([k * k / 2] * 3) for k in (0.5, 1.0, 2.0)], rtol=1e-6)


def test_calibrated_is_scale_invariant():
    """Rescaling features of source and target alike leaves the calibrated score put: per-feature
    affine maps for tabular data, one global factor for images."""
    rng = np.random.default_rng(3)
    X = (rng.normal(size=(120, 5)) @ rng.normal(size=(5, 5))).astype(np.float32)
    Q = (rng.normal(size=(31, 5)) @ rng.normal(size=(5, 5)) + 0.3).astype(np.float32)
    f = np.array([1000.0, 0.01, 3.0, 1.0, 50.0], np.float32)
    c = np.array([5.0, -2.0, 0.0, 100.0, 1.0], np.float32)
    a = S.delta(Q, [S.train_autoencoder(X, config=TINY)], calibrated=True, device="cpu")
    b = S.delta(Q * f + c, [S.train_autoencoder(X * f + c, config=TINY)], calibrated=True, device="cpu")
    np.testing.assert_allclose(a, b, rtol=2e-3)
    img = rng.integers(0, 17, size=(80, 64)).astype(np.float32)
    qi = rng.integers(0, 9, size=(20, 64)).astype(np.float32)
    ia = S.delta(qi, [S.train_autoencoder(img, image_shape=(1, 8, 8), config=TINY)], calibrated=True, device="cpu")
    ib = S.delta(qi * 4, [S.train_autoencoder(img * 4, image_shape=(1, 8, 8), config=TINY)], calibrated=True,
                 device="cpu")
    np.testing.assert_allclose(ia, ib, rtol=2e-3)


def test_feature_scale_floor_is_per_feature():
    rng = np.random.default_rng()
    X = rng.normal(size=(50, 6)) * [1e4, 1e-3, 1.0, 0.0, 0.0, 1.0] + [0, 0, 0, 7.0, 0.0, 0]
    X[:, 5] = 0.0
    X[3, 5] = 16.0                   # a pixel that is on once
    sd = X.std(axis=0)
    got = S._feature_scale(X, sd, S.AEConfig())
    want = []
    for j in range(6):
        rng_j = X[:, j].max() - X[:, j].min()
        floor = 0.1 * rng_j if rng_j > 0 else (0.1 * abs(X[0, j]) if X[0, j] != 0 else 1.0)
        want.append(max(sd[j], floor))
    np.testing.assert_allclose(got, want, rtol=1e-12)
    old = S._feature_scale(X, sd, S.AEConfig(std_floor_scope="mean"))
    np.testing.assert_allclose(old, np.maximum(sd, max(0.1 * sd.mean(), 1e-6)), rtol=1e-12)
    with pytest.raises(E.InvalidArgumentError, match="std_floor_scope"):
        S.AEConfig(std_floor_scope="global")


def test_moments_round_trip_and_corrupt_moments_refused():
    rng = np.random.default_rng()
    r = S.train_autoencoder(rng.normal(size=(40, 4)).astype(np.float32), config=TINY)
    xs = (rng.normal(size=(40, 4)).astype(np.float32))
    assert r.moments is not None and r.moments[0].shape == (4,)
    back = S.AERecord.from_record(r.to_record())
    np.testing.assert_array_equal(back.moments[0], r.moments[0])
    np.testing.assert_array_equal(back.moments[1], r.moments[1])
    np.testing.assert_allclose(S.delta(xs, [back], calibrated=True, device="cpu"),
                               S.delta(xs, [r], calibrated=True, device="cpu"), rtol=1e-7)
    old = r.to_record()
    del old["mom_mean"], old["mom_std"]
    assert S.AERecord.from_record(old).moments is None          # a record written before moments
    for key, bad in (("mom_mean", np.zeros(3, np.float32)), ("mom_std", -np.ones(4, np.float32)),
                     ("mom_mean", np.full(4, np.nan, np.float32))):
        rec = r.to_record()
        rec[key] = bad
        with pytest.raises(E.CorruptHubError):
            S.AERecord.from_record(rec)


def test_stored_hub_config_keeps_raw_simex():
    old = SketchConfig().to_dict()
    del old["simex_score"]
    assert SketchConfig.from_dict(old).simex_score == "raw"
    assert SketchConfig().simex_score == "latent"
    assert SketchConfig.from_dict({**old, "simex_score": "calibrated"}).simex_score == "calibrated"
    with pytest.raises(E.InvalidArgumentError, match="simex_score"):
        SketchConfig(simex_score="best")


# ----------------------------------------------------------------------------- known answers
def test_median_split_ranks_the_querys_side_first(tmp_path):
    """Correlated data split at feature 0's median into "low" and "high" plus a random half of all
    rows; a held-out query from either side ranks that side's entry first under the hub's default
    SimEx score (the raw loss ranks the broad random source first here: its standardized units
    compress the query)."""
    rng = np.random.default_rng(11)
    n, d = 1200, 6
    X = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * rng.uniform(0.01, 100, size=d)
    df = pd.DataFrame(X, columns=[f"f{j}" for j in range(d)])
    low = X[:, 0] <= np.median(X[:, 0])
    held = np.zeros(n, bool)
    queries = {}
    for side, mask in (("low", low), ("high", ~low)):
        idx = rng.permutation(np.flatnonzero(mask))[:n // 8]
        held[idx] = True
        queries[side] = df.iloc[np.sort(idx)]
    rest = np.flatnonzero(~held)
    sources = {"low": df[low & ~held], "high": df[~low & ~held], "random": df.iloc[rng.permutation(rest)[:len(rest) // 2]]}
    ae = S.AEConfig(hidden=(16, 4, 16), epochs=15, patience=15, time_cap_s=0, seed=0)
    with fitsketch.open(tmp_path / "h") as hub:
        for name, s in sources.items():
            hub.add(name, s.reset_index(drop=True), autoencoder=True, ae_config=ae)
        for side, q in queries.items():
            for score in ("latent", "calibrated", "regions"):   # the default, the previous one, the opt-in
                res = hub.search(q.reset_index(drop=True), k=3, method="simex", simex_score=score)
                assert res[0].name == side, (score, [(r.name, r.score) for r in res])
                assert res[0].evidence["score"] == score


def test_class_groups_rank_their_own_group_first(tmp_path):
    """Digits split into visually different class groups (round 0/6/8, thin 1/7, open 4/9), one conv
    autoencoder per group: a held-out query of each group ranks its group's entry first."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    cols = [f"p{i}" for i in range(64)]
    groups = {"round": (0, 6, 8), "thin": (1, 7), "open": (4, 9)}
    p = np.random.default_rng(0).permutation(len(x))
    src, tgt = p[:1200], p[1200:]
    ae = S.AEConfig(epochs=12, patience=12, time_cap_s=0, seed=0)
    with fitsketch.open(tmp_path / "h") as hub:
        for g, cl in groups.items():
            rows = src[np.isin(y[src], cl)][:200]
            hub.add(g, pd.DataFrame(x[rows], columns=cols), autoencoder=True, image_shape=(1, 8, 8), ae_config=ae)
        for g, cl in groups.items():
            q = pd.DataFrame(x[tgt[np.isin(y[tgt], cl)][:100]], columns=cols)
            for score in ("regions", "latent", "calibrated"):
                res = hub.search(q, k=3, method="simex", simex_score=score)
                assert res[0].name == g, (score, g, [(r.name, r.score) for r in res])
