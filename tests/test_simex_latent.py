"""SimEx's latent score (engine/simex.py ``latent_score``, the hub's default ``simex_score`` for new
hubs): the definition against a one-sample float64 reference, the stored latent moments against
the encoder's latents of the training rows, records and their fallbacks, and the per-entry scoring
of a query whose columns match only part of an entry's autoencoder columns."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from _simex_cases import TINY, fleet_case

import fitsketch
from fitsketch import errors as E
from fitsketch import simex as S
from fitsketch.coverage_spaces import encode_latent



def _kl_loop(z, mu, sd, floor):
    """Mean over dimensions of KL(N(m, s^2) || N(mu, sd^2)), one number at a time."""
    total = 0.0
    for j in range(z.shape[1]):
        m = float(np.mean(z[:, j]))
        s = max(float(np.std(z[:, j])), floor)
        g = max(float(sd[j]), floor)
        total += math.log(g / s) + (s * s + (m - float(mu[j])) ** 2) / (2 * g * g) - 0.5
    return total / z.shape[1]


@pytest.mark.parametrize("case", ["mlp", "conv", "classes"])
@pytest.mark.parametrize("n_target", [1, 2, 7])
def test_latent_delta_matches_the_reference(case, n_target, rng):
    recs, target = fleet_case(case, n_target, rng, 3)
    got = S.delta(target, recs, latent=True, device="cpu")
    want = S.delta_reference(target, recs, latent=True)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # and the definition spelled out: the latent KL plus the weighted two-sided own-error term
    raw = S.delta(target, recs, normalize=False, device="cpu")
    for r, g, e in zip(recs, got, raw):
        z = encode_latent(target, [r], device="cpu")[0].astype(np.float64)
        mu, sd = (m.astype(np.float64) for m in r.latent_moments)
        floor = max(0.1 * float(sd.mean()), 1e-6)
        ratio = e / r.own_error
        want_one = _kl_loop(z, mu, sd, floor) + S.LATENT_RECON_WEIGHT * 0.5 * (ratio - 1 - math.log(ratio))
        assert g == pytest.approx(want_one, rel=1e-4, abs=1e-5)


def test_stored_latent_moments_are_the_training_rows_latents(rng):
    d = int(rng.integers(3, 9))
    x = (rng.normal(size=(int(rng.integers(20, 60)), d)) * rng.uniform(0.5, 9, size=d)).astype(np.float32)
    (r,) = S.train_fleet(x, config=TINY)
    z = encode_latent(x, [r], device="cpu")[0].astype(np.float64)
    assert r.latent_moments[0].shape == (r.latent_width(),) == (3,)
    np.testing.assert_allclose(r.latent_moments[0], z.mean(axis=0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(r.latent_moments[1], z.std(axis=0), rtol=1e-4, atol=1e-5)
    # the training rows themselves: the latent part is 0, so only the own-error term is left
    raw = S.delta(x, [r], normalize=False, device="cpu")[0]
    e = raw / r.own_error
    assert S.delta(x, [r], latent=True, device="cpu")[0] == pytest.approx(
        S.LATENT_RECON_WEIGHT * 0.5 * (e - 1 - math.log(e)), abs=1e-4)
    (c,) = S.train_fleet(rng.random((20, 2 * 9 * 10)).astype(np.float32), image_shape=(2, 9, 10), config=TINY)
    assert c.latent_moments[0].shape == (c.latent_width(),) == (3 * 2 * 2,)


def test_a_shifted_target_scores_worse_than_the_sources_own_kind(rng):
    x = rng.normal(size=(300, 4)).astype(np.float32)
    (r,) = S.train_fleet(x, config=S.AEConfig(hidden=(8, 3, 8), epochs=10, time_cap_s=0, seed=1))
    near, far = rng.normal(size=(100, 4)), rng.normal(2.0, 1.0, size=(100, 4))
    assert S.delta(near, [r], latent=True)[0] < S.delta(far, [r], latent=True)[0]


def test_records_without_latent_moments_fall_back_to_calibrate(rng):
    x = rng.normal(size=(40, 5)).astype(np.float32)
    recs = S.train_fleet(x, rng.permutation(np.arange(40) % 2), config=TINY)
    old = [r.to_record() for r in recs]
    for rec in old[:1]:
        del rec["lat_mean"], rec["lat_std"]
    mixed = [S.AERecord.from_record(r) for r in old]
    assert mixed[0].latent_moments is None and mixed[1].latent_moments is not None
    assert S.latent_used(mixed).tolist() == [False, True]
    target = rng.normal(size=(9, 5))
    got = S.delta(target, mixed, latent=True)
    assert got[0] == pytest.approx(S.delta(target, mixed[:1], calibrated=True)[0], rel=1e-6)
    assert got[1] == pytest.approx(S.delta(target, mixed[1:], latent=True)[0], rel=1e-6)
    np.testing.assert_allclose(got, S.delta_reference(target, mixed, latent=True), rtol=1e-4, atol=1e-5)
    ev = S.latent_evidence(S.latent_used(mixed), S.calibrated_used(mixed), S.relative_used(mixed))
    assert ev["score"] == "latent" and "1 of this entry's" in ev["fallback"] and "calibrate" in ev["fallback"]
    assert S.latent_evidence([True, True], [True, True], [True, True]) == {
        "score": "latent", "recon_weight": S.LATENT_RECON_WEIGHT}


@pytest.mark.parametrize("bad", [
    {"lat_mean": np.zeros(4, np.float32)},                                  # wrong width
    {"lat_std": -np.ones(3, np.float32)},                                   # negative std
    {"lat_mean": np.array([0.0, np.nan, 0.0], np.float32)},                 # not finite
    {"lat_std": np.zeros((3, 1), np.float32)},                              # not 1-D
])
def test_bad_latent_moments_are_refused(bad, rng):
    (r,) = S.train_fleet(rng.normal(size=(20, 4)).astype(np.float32), config=TINY)
    rec = {**r.to_record(), **bad}
    with pytest.raises(E.CorruptHubError):
        S.AERecord.from_record(rec)


def test_latent_score_checks_the_latent_width(rng):
    (r,) = S.train_fleet(rng.normal(size=(20, 4)).astype(np.float32), config=TINY)
    with pytest.raises(E.DimensionError):
        S.latent_score([np.zeros((5, 4))], [r], [0.1])


# ----------------------------------------------------------------------------- hub: partial column matches
def _wine():
    from sklearn.datasets import load_wine

    d = load_wine()
    return pd.DataFrame(d.data, columns=d.feature_names)


def _wine_halves(rng):
    """(wine, a random half of its rows for the entry, the other rows for the query)."""
    wine = _wine()
    p = rng.permutation(len(wine))
    return wine, wine.iloc[p[:89]].reset_index(drop=True), wine.iloc[p[89:]].reset_index(drop=True)


_SMALL_AE = S.AEConfig(hidden=(16, 4, 16), epochs=10, patience=10, time_cap_s=0, seed=0)


def test_an_entry_the_query_matches_in_part_is_scored_with_its_reason(tmp_path):
    """A query lacking one of an entry's columns (dropped here; renamed columns that match nothing do
    the same) is scored for that entry -- the missing column filled with the entry's mean and the
    delta divided by the matched share -- instead of refusing the search."""
    _, half, rest = _wine_halves(np.random.default_rng(3))
    with fitsketch.open(tmp_path / "h") as hub:
        hub.add("wine", half, autoencoder=True, ae_config=_SMALL_AE)
        dropped = "proline"
        q = rest.drop(columns=[dropped])
        (m,) = hub.search(q, k=1, method="simex")
        ev = m.evidence
        assert m.name == "wine" and ev["filled_columns"] == [dropped]
        share = 12 / 13
        assert ev["entry_columns_matched"] == pytest.approx(round(share, 4))
        assert m.score == pytest.approx(ev["unfilled_score"] / share)
        # the definition: the entry's own records on the query with the column set to the entry's mean
        from fitsketch.storage import u64
        from fitsketch.storage.schema import ae_key

        stored = hub.store.transact(lambda t: t.get("weights", ae_key(u64(hub.get("wine").id))))
        recs = [S.AERecord.from_record(r) for r in stored["simex"]]
        r0 = recs[0]
        j = r0.features.index(dropped)
        X = S.numeric_matrix(rest, columns=r0.features).astype(np.float64)
        X[:, j] = float(r0.moments[0][j]) * float(r0.scale[j]) + float(r0.shift[j])
        want = S.entry_score(S.delta(X, recs, latent=True))
        assert ev["unfilled_score"] == pytest.approx(want, rel=1e-4, abs=1e-6)
        # a full match scores as before: no filled columns, no division
        (full,) = hub.search(rest, k=1, method="simex")
        assert "filled_columns" not in full.evidence and full.score == pytest.approx(-full.evidence["delta"])


def test_a_renamed_query_ranks_its_table_first_when_a_column_is_unmatched(tmp_path):
    """Renamed, reordered wine whose renamed columns do not all match the wine entry's: SimEx still
    scores every entry and ranks wine above breast cancer (before: InvalidArgumentError)."""
    from sklearn.datasets import load_breast_cancer

    bc = load_breast_cancer()
    rng = np.random.default_rng(0)
    wine, half, rest = _wine_halves(rng)
    with fitsketch.open(tmp_path / "h") as hub:
        hub.add("wine", half, autoencoder=True, ae_config=_SMALL_AE)
        hub.add("breast_cancer", pd.DataFrame(bc.data, columns=bc.feature_names), autoencoder=True,
                ae_config=_SMALL_AE)
        cols = list(rng.permutation(wine.columns))
        q = rest[cols].copy()
        q.columns = [f"c{i}" for i in range(len(cols))]
        q = q.drop(columns=["c0"])      # one of wine's columns is now certainly unmatched
        res = hub.search(q, k=2, method="simex")
        assert res[0].name == "wine", [(r.name, r.score, r.evidence.get("filled_columns")) for r in res]
        assert res[0].evidence["filled_columns"] and "partial" in res[0].evidence
