"""SimEx's regions score (engine/simex.py ``region_score``, ``simex_score="regions"``, opt-in): the
stored regions against a k-means fit's definition, the score against a one-row, one-centroid float64
reference on fresh random inputs, records without regions (stored before them) falling back per record
to the latent score, bad stored regions refused, and the hub's option and evidence."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from _simex_cases import TINY, fleet_case

import fitsketch
from fitsketch import errors as E
from fitsketch import simex as S
from fitsketch.autoencoder import REGION_ROWS, fit_regions
from fitsketch.config import SketchConfig


def _nearest_loop(xs, cent):
    """Nearest centroid (first of equals) and its distance, one row and one centroid at a time."""
    out = []
    for x in xs:
        best, bd = 0, math.inf
        for j, c in enumerate(cent):
            dj = math.sqrt(sum((float(a) - float(b)) ** 2 for a, b in zip(x, c)))
            if dj < bd:
                best, bd = j, dj
        out.append((best, bd))
    return out


@pytest.mark.parametrize("n", [1, 3, 4, 9, 57, 130])
def test_fit_regions_counts_radii_and_centroids(n, rng):
    d = int(rng.integers(1, 6))
    x = rng.normal(size=(n, d)) * rng.uniform(0.1, 5, size=d) + rng.normal(size=d)
    cent, counts, radii = fit_regions(x, seed=int(rng.integers(1000)))
    k = len(radii)
    assert 1 <= k <= max(1, min(S.REGION_K, n // REGION_ROWS)) and cent.shape == (k, d) and counts.shape == (k + 1,)
    near = _nearest_loop(x, cent.astype(np.float64))
    idx = np.array([j for j, _ in near])
    dist = np.array([dd for _, dd in near])
    # no centroid without a nearest row kept; radii: each centroid's rows' quantile distance
    nearest = np.bincount(idx, minlength=k)
    assert (nearest >= 1).all()
    whole = np.quantile(dist, S.REGION_QUANTILE)
    for j in range(k):
        want = np.quantile(dist[idx == j], S.REGION_QUANTILE) if nearest[j] > 1 else whole
        assert radii[j] == pytest.approx(want, rel=1e-5, abs=1e-6)
    # every row counted once: within its nearest centroid's radius, or outside
    bins = [k if dd > float(radii[j]) else j for j, dd in near]
    assert counts.sum() == n
    np.testing.assert_array_equal(counts, np.bincount(bins, minlength=k + 1))
    if k == 1:   # one centroid: the rows' mean
        np.testing.assert_allclose(cent[0], x.mean(axis=0), rtol=1e-5, atol=1e-6)
    # deterministic for a seed
    again = fit_regions(x, seed=0)
    for a, b in zip(fit_regions(x, seed=0), again):
        np.testing.assert_array_equal(a, b)


def _region_loop(target, r, raw):
    xs = (np.asarray(target, np.float64) - r.shift.astype(np.float64)) / r.scale.astype(np.float64)
    cent, counts, radii = r.regions
    k = len(radii)
    q = [0.5] * (k + 1)
    for j, dd in _nearest_loop(xs, cent.astype(np.float64)):
        q[k if dd > float(radii[j]) else j] += 1
    p = [float(c) + 0.5 for c in counts]
    kl = sum(a / sum(q) * math.log((a / sum(q)) / (b / sum(p))) for a, b in zip(q, p))
    e = raw / r.own_error
    return kl + S.REGION_RECON_WEIGHT * 0.5 * (e - 1 - math.log(e))


@pytest.mark.parametrize("case", ["mlp", "conv", "classes"])
@pytest.mark.parametrize("n_target", [1, 2, 7, 33])
def test_regions_delta_matches_the_reference(case, n_target, rng):
    recs, target = fleet_case(case, n_target, rng, rng.uniform(0.3, 3))
    assert all(r.regions is not None for r in recs) and S.regions_used(recs).all()
    got = S.delta(target, recs, regions=True, device="cpu")
    np.testing.assert_allclose(got, S.delta_reference(target, recs, regions=True), rtol=1e-5, atol=1e-6)
    raw = S.delta(target, recs, normalize=False, device="cpu")
    for r, g, e in zip(recs, got, raw):
        assert g == pytest.approx(_region_loop(target, r, e), rel=1e-5, abs=1e-6)


def test_a_query_in_few_of_the_sources_regions_scores_worse_than_the_sources_own_kind(rng):
    # two well separated groups; a source with both in equal shares, one with 90% of group b
    a, b = rng.normal(0, 1, size=(400, 3)), rng.normal(8, 1, size=(400, 3))
    both = np.r_[a[:150], b[:150]].astype(np.float32)
    skew = np.r_[a[150:180], b[150:420] if len(b) >= 420 else b[150:]].astype(np.float32)
    cfg = S.AEConfig(hidden=(8, 3, 8), epochs=10, time_cap_s=0, seed=1)
    (rb,) = S.train_fleet(both, config=cfg)
    (rs,) = S.train_fleet(skew, config=cfg)
    query = a[200:300]                                     # only group a
    g = S.delta(query, [rb, rs], regions=True)
    assert g[0] < g[1]
    # a query far from every region lands in the outside bin: worse than the source's own kind
    far = rng.normal(40, 1, size=(100, 3))
    assert S.delta(far, [rb], regions=True)[0] > S.delta(np.r_[a[300:350], b[300:350]], [rb], regions=True)[0]


def test_records_without_regions_fall_back_to_the_latent_score(rng):
    x = rng.normal(size=(40, 5)).astype(np.float32)
    recs = S.train_fleet(x, rng.permutation(np.arange(40) % 2), config=TINY)
    old = [r.to_record() for r in recs]
    del old[0]["reg_c"], old[0]["reg_n"], old[0]["reg_r"]
    mixed = [S.AERecord.from_record(r) for r in old]
    assert mixed[0].regions is None and mixed[1].regions is not None
    assert S.regions_used(mixed).tolist() == [False, True]
    target = rng.normal(size=(9, 5))
    got = S.delta(target, mixed, regions=True)
    assert got[0] == pytest.approx(S.delta(target, mixed[:1], latent=True)[0], rel=1e-6)
    assert got[1] == pytest.approx(S.delta(target, mixed[1:], regions=True)[0], rel=1e-6)
    np.testing.assert_allclose(got, S.delta_reference(target, mixed, regions=True), rtol=1e-4, atol=1e-5)
    ev = S.regions_evidence(S.regions_used(mixed), S.latent_used(mixed), S.calibrated_used(mixed))
    assert ev["score"] == "regions" and "1 of this entry's" in ev["fallback"]
    assert "latent" in ev["fallback"] and "own error or regions" in ev["fallback"]
    assert S.regions_evidence([False], [True], [True])["score"] == "latent"
    assert S.regions_evidence([True, True], [True, True], [True, True]) == {
        "score": "regions", "recon_weight": S.REGION_RECON_WEIGHT}


@pytest.mark.parametrize("bad", [
    lambda c, n, r: {"reg_c": c[:, :-1]},                                     # wrong width
    lambda c, n, r: {"reg_n": n - n},                                         # no row counted
    lambda c, n, r: {"reg_n": np.r_[n[:-1], -1]},                             # a negative count
    lambda c, n, r: {"reg_n": n[:-1]},                                        # no outside bin
    lambda c, n, r: {"reg_r": -r - 1},                                        # negative radius
    lambda c, n, r: {"reg_r": r[:0]},                                         # radii of the wrong length
    lambda c, n, r: {"reg_c": np.full_like(c, np.nan)},                       # not finite
    lambda c, n, r: {"reg_n": n.astype(np.float32)},                          # counts not integers
    lambda c, n, r: {"reg_n": np.append(n[:-1].astype(np.uint64), np.uint64(2 ** 63))},   # negative as int64
    lambda c, n, r: {"reg_c": c[:0], "reg_n": n[-1:], "reg_r": r[:0]},        # no centroid
])
def test_bad_regions_are_refused(bad, rng):
    (r,) = S.train_fleet(rng.normal(size=(12, 5)).astype(np.float32), config=TINY)
    rec = r.to_record()
    S.AERecord.from_record(rec)                                                 # as stored: read
    with pytest.raises(E.CorruptHubError):
        S.AERecord.from_record({**rec, **bad(rec["reg_c"], rec["reg_n"], rec["reg_r"])})


def test_regions_is_accepted_per_hub_and_old_configs_keep_theirs():
    assert SketchConfig(simex_score="regions").simex_score == "regions"
    old = SketchConfig().to_dict()
    assert SketchConfig.from_dict({**old, "simex_score": "regions"}).simex_score == "regions"
    del old["simex_score"]
    assert SketchConfig.from_dict(old).simex_score == "raw"


def test_hub_search_scores_by_regions_and_names_the_fallback(tmp_path, rng):
    def frame(n, loc):
        return pd.DataFrame(rng.normal(loc, 1.0, size=(n, 3)), columns=["a", "b", "c"])

    cfg = S.AEConfig(hidden=(8, 3, 8), epochs=6, min_epochs=1, patience=6, time_cap_s=0, seed=0)
    with fitsketch.open(tmp_path / "h") as hub:
        hub.add("near", frame(120, 0.0), autoencoder=True, ae_config=cfg)
        hub.add("far", frame(120, 6.0), autoencoder=True, ae_config=cfg)
        q = frame(60, 0.0)
        res = {m.name: m for m in hub.search(q, k=2, method="simex", simex_score="regions")}
        assert res["near"].evidence["score"] == "regions" and "fallback" not in res["near"].evidence
        assert res["near"].score > res["far"].score
        lat = {m.name: m for m in hub.search(q, k=2, method="simex", simex_score="latent")}
        assert lat["near"].evidence["score"] == "latent"
