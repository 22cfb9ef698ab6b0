"""Label-free methods a user can trust (issue 20): graded adaptivity / js on small queries, column
matching that needs alike value distributions and ignores generic names, coverage falling back
per entry, l2 comparable across entries, all-NaN query columns left out."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

import fitsketch
from fitsketch import errors as E
from fitsketch.config import SketchConfig
from fitsketch.jslsh import below_one_step, graded_adaptivity, query_partition_size
from fitsketch.minhash import align_from_similarity, distribution_overlap, feature_dists, is_generic


# ----------------------------------------------------------------------------- partitions, grading
def _ref_partition_size(n, m, parts, rows):
    if n >= m * parts:
        return m
    k = max(1, min(parts, n // rows))
    return max(1, min(m, math.ceil(n / k)))


def test_query_partition_size_equals_reference_and_bounds():
    rng = np.random.default_rng()
    cases = [(0, 500, 8, 25), (1, 500, 8, 25), (30, 500, 8, 25), (4000, 500, 8, 25), (3999, 500, 8, 25)]
    cases += [(int(rng.integers(0, 20000)), int(rng.integers(1, 900)), int(rng.integers(1, 40)),
               int(rng.integers(1, 100))) for _ in range(300)]
    for n, m, parts, rows in cases:
        got = query_partition_size(n, m, parts, rows)
        assert got == _ref_partition_size(n, m, parts, rows), (n, m, parts, rows)
        assert 1 <= got <= m
        n_parts = -(-n // got)
        if n >= m * parts:
            assert got == m                                  # normal-size queries: the hub's partitions
        else:
            assert n_parts <= parts                          # at most the stated number of partitions
            assert n < rows or got >= min(rows, m)           # each of at least min_rows rows (when it can be)


def test_graded_adaptivity_orders_like_matched_then_agreement():
    rng = np.random.default_rng()
    for _ in range(200):
        n_t, l = int(rng.integers(1, 12)), int(rng.integers(1, 40))
        pairs = []
        for _ in range(6):
            best = rng.integers(0, l + 1, n_t)   # best bands shared per target partition
            pairs.append((int((best > 0).sum()), float(best.mean()) / l))
        g = [graded_adaptivity(m, a, n_t) for m, a in pairs]
        for (m1, a1), g1 in zip(pairs, g):
            assert 0.0 <= g1 <= 1.0
            for (m2, a2), g2 in zip(pairs, g):
                if (m1, a1) > (m2, a2):
                    assert g1 > g2
        # a zero-score entry graded by closeness stays under every non-zero score
        zero = below_one_step(float(rng.random()), 1.0 / (n_t + 1))
        assert all(zero < x for x in g if x > 0)


def _frame(rng, n, shift=0.0):
    return pd.DataFrame({"a": rng.normal(shift, 1.0, n), "b": rng.gamma(2.0, 1.0 + shift / 4, n),
                         "c": rng.normal(10 + shift, 2.0, n)})


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("method", ["adaptivity", "js"])
def test_small_query_scores_are_graded_and_untied(tmp_path, method, seed):
    # fixed seeds: "the query's own distribution ranks first" is a statistical property of a 30-row
    # query (one partition, a few chance band collisions), not an identity: over seeds 0-39 it failed
    # once (seed 39, adaptivity: the 2-sd shift collided in 10 bands, the own distribution in 7)
    rng = np.random.default_rng(seed)
    with fitsketch.open(tmp_path / "h") as hub:
        for i, shift in enumerate([0.0, 2.0, 4.0, 7.0, 11.0]):
            hub.add(f"s{i}", _frame(rng, 600, shift))
        q = _frame(rng, 30, 0.0)
        res = hub.search(q, k=5, method=method)
        scores = [r.score for r in res]
        assert len(res) == 5
        assert len(set(scores)) == 5, scores                         # no ties
        assert all(0.0 < s < 1.0 for s in scores), scores            # never 0 / 1 on a 30-row query
        # the query's own distribution first; the shifted ones have nearly disjoint histograms on a
        # 30-row query and collide in a few bands by chance, so their order is not asserted
        assert res[0].name == "s0", [(r.name, r.score) for r in res]
        if method == "adaptivity":
            ev = res[0].evidence
            assert ev["target_partition_rows"] == 30 and ev["target_partitions"] == 1


# ----------------------------------------------------------------------------- column matching
def test_distribution_overlap_equals_reference():
    rng = np.random.default_rng()
    for _ in range(50):
        n = int(rng.integers(0, 30))
        feat = rng.integers(0, 3, n)
        bucket = rng.integers(-5, 5, n)
        count = rng.integers(1, 9, n)
        d = feature_dists({"feat": feat, "bucket": bucket, "count": count})
        ref = {}
        for f, b, c in zip(feat, bucket, count):
            ref.setdefault(int(f), {}).setdefault(int(b), 0)
            ref[int(f)][int(b)] += int(c)
        for f in range(3):
            for g in range(3):
                if f not in ref or g not in ref:
                    assert (f in d) == (f in ref)
                    continue
                pf = {b: c / sum(ref[f].values()) for b, c in ref[f].items()}
                pg = {b: c / sum(ref[g].values()) for b, c in ref[g].items()}
                want = sum(min(pf[b], pg[b]) for b in set(pf) & set(pg))
                assert distribution_overlap(d[f], d[g]) == pytest.approx(want, abs=1e-12)
    assert distribution_overlap(None, d.get(0)) == 0.0


def test_generic_names_never_match_by_name_alone():
    for n in ("target", "Label", "id", "index", "0", "Unnamed: 0", "y", "class"):
        assert is_generic(n)
    for n in ("alcohol", "mean radius", "pixel_0_0", "target_price", "x1y"):
        assert not is_generic(n)
    sim = np.zeros((2, 2))
    assert align_from_similarity(["target", "a"], ["b", "target"], sim, 0.5).pairs == []
    assert align_from_similarity(["alcohol", "a"], ["b", "alcohol"], sim, 0.5).pairs == [(0, 1, 0.0)]


def test_unrelated_columns_do_not_match_by_shared_buckets(tmp_path):
    """A narrow column whose value buckets lie inside a wide column's (magnesium ~ area error) is no
    match; the same column renamed is; a shared generic name links nothing."""
    rng = np.random.default_rng()
    n = 600
    wide = pd.DataFrame({"area_error": np.exp(rng.uniform(np.log(5), np.log(600), n)),
                         "target": rng.integers(0, 2, n)})
    narrow = pd.DataFrame({"magnesium": rng.normal(100, 12, n).round(), "target": rng.integers(0, 3, n) * 5})
    with fitsketch.open(tmp_path / "h") as hub:
        hub.add("wide", wide)
        hub.add("narrow", narrow.iloc[:300].reset_index(drop=True))
        q = narrow.iloc[300:].rename(columns={"magnesium": "mg"}).reset_index(drop=True)
        res = hub.search(q, k=2, method="exact-js", feature_threshold=0.5)
        assert [r.name for r in res] == ["narrow"], [(r.name, r.features) for r in res]
        assert res[0].features[0][:2] == ("mg", "magnesium") and res[0].features[0][2] >= 0.5
        assert all(t != "target" or s != "target" for r in res for t, s, _ in r.features if r.name == "wide")


# ----------------------------------------------------------------------------- coverage per entry
def test_coverage_falls_back_per_entry_with_its_own_reason(tmp_path):
    rng = np.random.default_rng()
    src = pd.DataFrame({"a": rng.normal(size=200), "b": rng.normal(size=200), "z": rng.normal(size=200)})
    with fitsketch.open(tmp_path / "h") as hub:
        hub.add("two", src[["a", "b"]])
        hub.add("three", src)
        q = src[["a", "b"]].iloc[:80].copy()
        res = {r.name: r for r in hub.search(q, k=2, method="coverage")}
        assert res["two"].method == "coverage" and "fallback" not in res["two"].evidence
        assert res["three"].method == "adaptivity"
        assert "'three'" in res["three"].evidence["fallback"] and "'two'" not in res["three"].evidence["fallback"]
        # ranked beside coverage scores, the fallback counts the share of the entry's columns matched
        ev = res["three"].evidence
        assert ev["entry_columns_matched"] == pytest.approx(2 / 3)
        assert res["three"].score == pytest.approx(ev["fallback_score"] * 2 / 3)
        with pytest.raises(E.FeatureMismatchError, match="'three'"):
            hub.search(q, method="coverage", coverage_fallback=False)


# ----------------------------------------------------------------------------- l2
def test_l2_counts_uncovered_features_and_scales_by_spread(tmp_path):
    """A wine-like query with renamed, reordered columns: the entry of the same data must beat an
    entry matching one column only (old l2: -30 vs -0.9), and a column of large values must not
    decide alone (differences are in units of the pooled spread)."""
    rng = np.random.default_rng()
    n = 400
    full = pd.DataFrame({"big": rng.normal(1000, 300, n), "small": rng.normal(1, 0.2, n),
                         "mid": rng.gamma(3, 2, n)})
    with fitsketch.open(tmp_path / "h") as hub:
        hub.add("same", full.iloc[:200].reset_index(drop=True))
        hub.add("one_col", pd.DataFrame({"small": rng.normal(1, 0.2, n)}))
        q = full.iloc[200:][["mid", "small", "big"]].reset_index(drop=True)
        res = hub.search(q, k=2, method="l2")
        assert [r.name for r in res] == ["same", "one_col"], [(r.name, r.score, r.evidence) for r in res]
        assert res[1].evidence["uncovered_query_features"] == 2 and res[0].evidence["uncovered_query_features"] == 0
        # the same data scaled by 1000 in one column moves that column by (1000 - 1) spreads
        d = res[0].evidence["l2_distance"]
        assert 0.0 <= d < 0.5, d
        shifted = q.copy()
        shifted["small"] = shifted["small"] + 0.4          # two spreads of "small"
        d2 = hub.search(shifted, k=2, method="l2")[0]
        assert d2.name == "same" and d2.evidence["l2_distance"] == pytest.approx(np.sqrt(4 / 3), rel=0.35)


# ----------------------------------------------------------------------------- all-NaN query columns
def test_query_columns_without_values_are_left_out_with_a_note(tmp_path):
    rng = np.random.default_rng()
    src = _frame(rng, 300)
    with fitsketch.open(tmp_path / "h") as hub:
        hub.add("s", src)
        q = _frame(rng, 100)
        q["empty"] = np.nan
        q["empty_str"] = pd.Series([None] * 100, dtype=object)
        for method in ("adaptivity", "coverage", "exact-js", "l2", "js"):
            res = hub.search(q, k=1, method=method)
            assert res[0].name == "s" and res[0].evidence["query_columns_left_out"] == ["empty", "empty_str"]
            assert [t for t, _, _ in res[0].features] == ["a", "b", "c"]
            assert res[0].method == method              # coverage scores the rest, no fallback
        plan = hub.explain(q, k=1)
        assert "left out query columns without values: ['empty', 'empty_str']" in plan.stages[0].detail
        assert "query_columns_left_out" not in hub.search(_frame(rng, 100), k=1)[0].evidence
        with pytest.raises(E.EmptyColumnError):          # registration still refuses
            hub.add("bad", q)
        with pytest.raises(E.EmptyColumnError):          # a query of only empty columns too
            hub.search(q[["empty"]], k=1)
        assert hub.names() == ["s"]


# ----------------------------------------------------------------------------- coverage share score
@pytest.mark.parametrize("n", [0, 1, 7, 301])
def test_share_score_equals_reference(n):
    from fitsketch.coverage import share_score
    from fitsketch.kernels.rowcodes import code_counts

    rng = np.random.default_rng()
    T, bits = int(rng.integers(1, 5)), int(rng.integers(1, 11))
    res, rho = int(rng.integers(1, bits + 1)), float(rng.choice([1.0, 0.5, 0.3]))
    t_codes = rng.integers(0, 1 << bits, (T, n))
    s_codes = rng.integers(0, 1 << bits, (T, int(rng.integers(1, 400))))
    rec = code_counts(s_codes)
    got = share_score(t_codes, rec, T, res, rho)
    mask = (1 << res) - 1
    for t in range(T):
        tc = [c & mask for c in t_codes[t].tolist()]
        sc = [c & mask for c in s_codes[t].tolist()]
        want = sum(min(tc.count(b) / len(tc), sc.count(b) / len(sc) / rho) for b in set(tc))
        assert got[t] == pytest.approx(want, abs=1e-12)


def test_coverage_ranks_the_side_of_a_median_split_first(tmp_path):
    """The issue's check on one table: a held-out quarter of the rows under a feature's median ranks
    the "low" source above the "high" one and above a random half (the count score ranked it last)."""
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    df = pd.DataFrame(d.data, columns=list(d.feature_names))
    rng = np.random.default_rng(3)
    low = (df["mean area"] <= df["mean area"].median()).to_numpy()
    idx = rng.permutation(np.flatnonzero(low))
    held = np.zeros(len(df), dtype=bool)
    held[idx[:len(idx) // 4]] = True
    rest = np.flatnonzero(~held)
    with fitsketch.open(tmp_path / "h") as hub:
        hub.add("low", df[low & ~held])
        hub.add("high", df[~low & ~held])
        hub.add("random", df.iloc[np.sort(rng.permutation(rest)[:len(rest) // 2])])
        res = hub.search(df[held], k=3, method="coverage")
        assert res[0].name == "low", [(r.name, r.score) for r in res]
        assert all(r.method == "coverage" and r.evidence["coverage_score"] == "share" for r in res)
        old = hub.search(df[held], k=3, method="coverage", coverage_score="count")
        assert old[0].evidence["tau"] == 1.0


# ----------------------------------------------------------------------------- SimEx relative
def _record(rng, d, own):
    from fitsketch import simex

    cfg = simex.AEConfig(hidden=(12, 5, 12))
    shapes = simex._weight_shapes("mlp", d, (), cfg)
    w = {k: rng.standard_normal(s).astype(np.float32) * 0.5 for k, s in shapes.items()}
    return simex.AERecord("mlp", d, (), cfg.to_dict(), rng.normal(size=d).astype(np.float32),
                          rng.uniform(0.5, 2, size=d).astype(np.float32), float(rng.uniform(0.5, 3)), w, 10, 1,
                          "epoch-cap", None, [f"f{i}" for i in range(d)], own_error=own)


@pytest.mark.parametrize("n", [1, 7, 97])
def test_relative_delta_divides_by_own_error_or_falls_back(n):
    from fitsketch import simex

    rng = np.random.default_rng()
    d = int(rng.integers(2, 9))
    recs = [_record(rng, d, float(rng.uniform(0.01, 2))), _record(rng, d, None), _record(rng, d, 0.3)]
    X = rng.normal(size=(n, d)).astype(np.float32)
    raw = simex.delta(X, recs, normalize=False, device="cpu")
    got = simex.delta(X, recs, relative=True, device="cpu")
    want = [raw[0] / recs[0].own_error, raw[1] / recs[1].norm, raw[2] / 0.3]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert simex.relative_used(recs).tolist() == [True, False, True]
    assert simex.relative_used(recs, "ssim").tolist() == [False, False, False]
    # the own error survives the stored form; an old record without it reads as None
    rt = simex.AERecord.from_record(recs[0].to_record())
    assert rt.own_error == recs[0].own_error
    old = recs[0].to_record()
    old.pop("own_error")
    assert simex.AERecord.from_record(old).own_error is None
    bad = recs[0].to_record()
    bad["own_error"] = float("nan")
    with pytest.raises(E.CorruptHubError):
        simex.AERecord.from_record(bad)


def test_simex_in_the_hub_is_relative_and_says_when_it_falls_back(tmp_path):
    from fitsketch import simex
    from fitsketch.storage import u64

    rng = np.random.default_rng()
    ae = simex.AEConfig(epochs=3, min_epochs=1, seed=0, hidden=(8, 3, 8))
    with fitsketch.open(tmp_path / "h") as hub:
        hub.add("a", _frame(rng, 200), autoencoder=True, ae_config=ae)
        hub.add("b", _frame(rng, 200, 3.0), autoencoder=True, ae_config=ae)
        eid = hub.get("b").id

        def strip(txn):   # "b" as an entry added before the own error was stored
            w = txn.get("weights", b"ae:" + u64(eid))
            for r in w["simex"]:
                r.pop("own_error")
            txn.put("weights", b"ae:" + u64(eid), w)

        hub._transact(strip)
        res = {r.name: r for r in hub.search(_frame(rng, 80), k=2, method="simex", simex_relative=True, simex_score="raw")}
        assert res["a"].evidence["relative_to_own_error"] is True and "fallback" not in res["a"].evidence
        assert res["b"].evidence["relative_to_own_error"] is False and "own error" in res["b"].evidence["fallback"]
        raw = {r.name: r for r in hub.search(_frame(rng, 80), k=2, method="simex", simex_score="raw")}
        assert raw["a"].evidence["relative_to_own_error"] is False and "fallback" not in raw["a"].evidence
        plain = {r.name: r for r in hub.search(_frame(rng, 80), k=2, method="simex")}   # the default: latent
        assert plain["a"].evidence["score"] == "latent" and "fallback" not in plain["a"].evidence
        assert plain["b"].evidence["score"] == "raw" and "no own error or latent moments" in plain["b"].evidence["fallback"]
        cal = {r.name: r for r in hub.search(_frame(rng, 80), k=2, method="simex", simex_score="calibrated")}
        assert cal["a"].evidence["score"] == "calibrated" and "fallback" not in cal["a"].evidence
        assert cal["b"].evidence["score"] == "raw" and "no own error or input moments" in cal["b"].evidence["fallback"]
