"""Class Gaussians of predicted accuracy (engine/accuracy_gauss.py): EM over them recovers a
planted mixture, records and pools merge to the record / pool of the whole, the stored and
received parts are validated with named errors, and records without them still score (by naive
Bayes over the histograms, as before they were stored)."""
import numpy as np
import pandas as pd
import pytest

import fitsketch
from fitsketch import accuracy as A
from fitsketch import accuracy_gauss as G
from fitsketch import errors as E
from fitsketch.config import SketchConfig
from fitsketch.storage import u64

K = 4     # classes
D = 12    # numeric features


def _means(rng):
    """(K, D) class means, every pair at least 6 standard deviations apart."""
    return rng.normal(0, 1, size=(K, D)) * 3.0 + 8.0 * np.eye(K, D)


def _draw(rng, mu, pi, n, names=None):
    """``n`` rows with classes drawn from ``pi``, Gaussian around the class means, correlated
    features (a shared random mixing), and their labels."""
    y = rng.choice(K, size=n, p=pi)
    mix = np.linalg.qr(np.random.default_rng(7).normal(size=(D, D)))[0]   # the same correlation for all draws
    X = mu[y] + rng.normal(0, 1, size=(n, D)) @ mix
    return pd.DataFrame(X, columns=names or [f"f{j}" for j in range(D)]), y


def _record(df, y):
    names = list(df.columns)
    return A.class_record(df, A.check_labels(y, len(y)), names, ["numeric"] * len(names), SketchConfig())


def test_em_over_class_gaussians_recovers_a_planted_mixture(rng):
    mu = _means(rng)
    train, ytr = _draw(rng, mu, np.full(K, 1.0 / K), 4000)
    pi = rng.dirichlet(np.ones(K))
    query, yq = _draw(rng, mu, pi, 3000)
    planted = np.bincount(yq, minlength=K) / len(yq)   # the query's own class shares
    rec = _record(train, ytr)
    gp = G.gauss_pool([(rec, list(train.columns), {f: f for f in range(D)})], list(query.columns))
    ll = G.gauss_loglik(query, gp, rec["labels"])
    est = A.em_mixture(ll)
    assert np.abs(est - planted).max() <= 0.02, (est, planted)


def test_gauss_loglik_equals_scipys_multivariate_normal(rng):
    """Up to a per-row constant (the 2 pi term), each class's log-likelihood x temperature is
    scipy's log density with the class covariance shrunk towards the pooled one, plus the ridge."""
    from scipy.stats import multivariate_normal

    mu = _means(rng)
    train, ytr = _draw(rng, mu, rng.dirichlet(np.ones(K)) * 0.8 + 0.05, int(rng.integers(60, 400)))
    ytr[:K] = np.arange(K)
    query, _ = _draw(rng, mu, np.full(K, 1.0 / K), int(rng.choice([1, 2, 17, 100])))
    rec = _record(train, ytr)
    gp = G.gauss_pool([(rec, list(train.columns), {f: f for f in range(D)})], list(query.columns))
    got = G.gauss_loglik(query, gp, rec["labels"]) * G.GAUSS_TEMPERATURE
    P = G.directions(tuple(train.columns))
    Z, Zq = train.to_numpy() @ P, query.to_numpy() @ P
    n = np.bincount(ytr, minlength=K).astype(float)
    S = [(Z[ytr == k] - Z[ytr == k].mean(0)).T @ (Z[ytr == k] - Z[ytr == k].mean(0)) for k in range(K)]
    W = sum(S) / (n.sum() - K)
    W = W + G.GAUSS_RIDGE * np.trace(W) / G.GAUSS_DIM * np.eye(G.GAUSS_DIM)
    ridge = G.GAUSS_RIDGE * np.trace(W) / G.GAUSS_DIM * np.eye(G.GAUSS_DIM)
    for k in range(K):
        a = n[k] / (n[k] + G.GAUSS_SHRINK)
        C = a * S[k] / max(n[k] - 1, 1) + (1 - a) * W + ridge
        want = multivariate_normal(Z[ytr == k].mean(0), C).logpdf(Zq).reshape(-1)
        np.testing.assert_allclose(got[:, k] - 0.5 * G.GAUSS_DIM * np.log(2 * np.pi), want, rtol=1e-4, atol=1e-3)


def test_merged_records_and_pools_equal_those_of_the_whole(rng):
    """merge_records' Gaussians equal those of all rows; a pool of the two parts (and the merge of
    two one-part pools, as shards give) scores as the pool of the whole."""
    mu = _means(rng)
    a, ya = _draw(rng, mu, np.array([0.5, 0.5, 0, 0]), int(rng.integers(3, 300)))
    b, yb = _draw(rng, mu, np.array([0, 0.2, 0.4, 0.4]), int(rng.integers(3, 300)))
    ya[0], yb[0], ya[-1], yb[-1] = 0, 3, 1, 2
    ya[1], yb[1] = 1, 1     # class 1 in both parts whatever the draw (parts have >= 3 rows)
    ra, rb = _record(a, ya), _record(b, yb)
    whole = _record(pd.concat([a, b], ignore_index=True), np.concatenate([ya, yb]))
    merged = A.merge_records(ra, rb)
    np.testing.assert_array_equal(merged["gauss"]["feat"], whole["gauss"]["feat"])
    scale = np.abs(whole["gauss"]["scatter"]).max()
    np.testing.assert_allclose(merged["gauss"]["mean"], whole["gauss"]["mean"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(merged["gauss"]["scatter"], whole["gauss"]["scatter"], rtol=1e-4, atol=1e-5 * scale)
    np.testing.assert_allclose(merged["gauss"]["col_mean"], whole["gauss"]["col_mean"], rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(merged["gauss"]["col_m2"], whole["gauss"]["col_m2"], rtol=1e-9)
    names = list(a.columns)
    fm = {f: f for f in range(D)}
    query, _ = _draw(rng, mu, np.full(K, 0.25), 50)
    two = G.gauss_pool([(ra, names, fm), (rb, names, fm)], names)
    shards = G.merge_gauss_pools([G.gauss_pool([(rb, names, fm)], names), G.gauss_pool([(ra, names, fm)], names)])
    one = G.gauss_pool([(whole, names, fm)], names)
    labels = whole["labels"]
    ll_two = G.gauss_loglik(query, two, labels)
    assert np.array_equal(ll_two, G.gauss_loglik(query, shards, labels))    # bit-identical: canonical order
    np.testing.assert_allclose(ll_two, G.gauss_loglik(query, one, labels), rtol=1e-4, atol=1e-3)


def test_the_projection_follows_column_names_not_their_order(rng):
    mu = _means(rng)
    train, ytr = _draw(rng, mu, np.full(K, 0.25), 200)
    query, _ = _draw(rng, mu, np.full(K, 0.25), 30)
    rec = _record(train, ytr)
    perm = rng.permutation(D)
    shuffled = query[[f"f{j}" for j in perm]]
    fmap = {int(f): int(np.flatnonzero(perm == f)[0]) for f in range(D)}     # entry feature -> query column
    gp = G.gauss_pool([(rec, list(train.columns), fmap)], list(shuffled.columns))
    gp0 = G.gauss_pool([(rec, list(train.columns), {f: f for f in range(D)})], list(query.columns))
    np.testing.assert_allclose(G.gauss_loglik(shuffled, gp, rec["labels"]), G.gauss_loglik(query, gp0, rec["labels"]),
                               rtol=1e-9, atol=1e-9)
    # an entry over other columns (or one without the Gaussian) leaves the pool to naive Bayes
    other = _record(train.rename(columns={"f0": "g0"}), ytr)
    assert G.gauss_pool([(rec, list(train.columns), {f: f for f in range(D)}),
                         (other, ["g0"] + list(train.columns[1:]), {f: f for f in range(D)})], list(query.columns)) is None
    assert G.gauss_pool([(rec, list(train.columns), {f: f for f in range(D)}),
                         ({k: v for k, v in rec.items() if k != "gauss"}, list(train.columns),
                          {f: f for f in range(D)})], list(query.columns)) is None


@pytest.mark.parametrize("damage", ["nan", "shape", "feat", "dim", "type"])
def test_a_malformed_stored_gaussian_is_a_named_error(rng, damage):
    mu = _means(rng)
    train, ytr = _draw(rng, mu, np.full(K, 0.25), 100)
    rec = _record(train, ytr)
    g = dict(rec["gauss"])
    if damage == "nan":
        g["mean"] = g["mean"].copy()
        g["mean"][int(rng.integers(K)), int(rng.integers(G.GAUSS_DIM))] = np.nan
    elif damage == "shape":
        g["scatter"] = g["scatter"][:, :-1]
    elif damage == "feat":
        g["feat"] = np.array([0, D], dtype=np.int32)
    elif damage == "dim":
        g["d"] = 16
    else:
        g = [1, 2, 3]
    with pytest.raises(E.CorruptHubError, match="class Gaussian"):
        A.check_record({**rec, "gauss": g}, D)
    A.check_record(rec, D)    # the undamaged record passes


def test_a_sketch_with_a_malformed_gaussian_is_refused_and_the_hub_unchanged(tmp_path, rng):
    mu = _means(rng)
    df, y = _draw(rng, mu, np.full(K, 0.25), 120)
    sk = fitsketch.sketch_data(df, SketchConfig(), labels=y)
    sk.classes["gauss"] = {**sk.classes["gauss"], "mean": np.full((K, G.GAUSS_DIM), np.inf, np.float32)}
    with fitsketch.open(tmp_path / "hub") as hub:
        with pytest.raises(E.FitsketchError, match="class"):
            hub.add_sketch("bad", sk, class_accuracy={c: 0.5 for c in range(K)})
        assert "bad" not in hub and len(hub) == 0
    with pytest.raises(E.InvalidArgumentError, match="class record"):
        fitsketch.Sketch.from_bytes(sk.to_bytes())


def _balanced_record(rng):
    """100 rows of the four classes in equal shares, their labels and their class record."""
    df, y = _draw(rng, _means(rng), np.full(K, 0.25), 100)
    return df, y, _record(df, y)


def _pool_of(rec, names):
    """The class pool (histograms and Gaussians) of one record over the columns ``names``."""
    return A.class_pool_of([(rec, names, {f: f for f in range(D)})], rec["labels"], names)


def test_a_received_pool_with_a_malformed_gaussian_is_a_named_error(rng):
    train, _, rec = _balanced_record(rng)
    pl = _pool_of(rec, list(train.columns))
    assert A.check_pool(pl)["gauss"] is not None
    bad = {**pl["gauss"], "parts": [{**pl["gauss"]["parts"][0], "n": np.full(K, -1.0)}]}
    with pytest.raises(E.InvalidArgumentError, match="gauss"):
        A.check_pool({**pl, "gauss": bad})
    with pytest.raises(E.InvalidArgumentError, match="gauss"):
        A.check_pool({**pl, "gauss": {**pl["gauss"], "columns": "f0"}})


def _nearest_mean_model(mu, classes):
    cs = np.array(sorted(classes))

    def predict(X):
        X = np.asarray(X, dtype=np.float64)
        return -((X[:, None, :] - mu[cs][None]) ** 2).sum(axis=2)
    return predict


def test_records_without_the_gaussian_still_score_by_naive_bayes(tmp_path, rng, monkeypatch):
    """An entry registered before the Gaussians were stored (simulated: the record's key removed in
    the store) scores, and every candidate then falls back to naive Bayes, with the reason in the
    evidence; with the key, the evidence names the Gaussians."""
    mu = _means(rng)
    query, _ = _draw(rng, mu, rng.dirichlet(np.ones(K)), 200)
    with fitsketch.open(tmp_path / "hub") as hub:
        for name, cls in {"low": [0, 1], "all": [0, 1, 2, 3]}.items():
            p = np.zeros(K)
            p[cls] = 1.0 / len(cls)
            df, y = _draw(rng, mu, p, 200)
            vdf, vy = _draw(rng, mu, p, 80)
            hub.add(name, df, labels=y, model=_nearest_mean_model(mu, cls), validation=(vdf, vy))
        new = {m.name: m for m in hub.search(query, method="accuracy", accuracy_bootstrap=0)}
        assert all(m.evidence["mixture_source"] == "EM over pooled class Gaussians" for m in new.values())
        key = u64(hub.get("low").id)

        def drop(txn):                            # as written before the Gaussians existed
            ex = txn.get("extra", key)
            assert "gauss" in ex["classes"]
            del ex["classes"]["gauss"]
            txn.put("extra", key, ex)
        hub.store.transact(drop)
        old = {m.name: m for m in hub.search(query, method="accuracy", accuracy_bootstrap=0)}
    assert set(old) == {"low", "all"}
    for m in old.values():
        assert m.evidence["mixture_source"].startswith("EM over pooled class histograms (naive Bayes")
        assert 0.0 <= m.score <= 1.0
    # both estimates see the same query: the mixtures agree on the well separated classes
    for c in map(str, range(K)):
        assert abs(old["all"].evidence["mixture"].get(c, 0.0) - new["all"].evidence["mixture"].get(c, 0.0)) < 0.1


def _query_with_labelled_hub(tmp_path, rng, df, y, query):
    with fitsketch.open(tmp_path / "hub") as hub:
        hub.add("m", df, labels=y, class_accuracy={c: 0.5 for c in range(K)})
        return [m.evidence for m in hub.search(query, method="accuracy", accuracy_bootstrap=0)]


def test_values_too_large_for_float32_store_no_gaussian_and_still_register(tmp_path, rng):
    """Columns of scale 1e20: the float32 scatter would overflow; the record keeps no Gaussian
    (naive Bayes, the reason in the evidence), the sketch round-trips and adds."""
    mu = _means(rng)
    df, y = _draw(rng, mu, np.full(K, 0.25), 120)
    big = df * 1e20
    rec = _record(big, y)
    assert "gauss" not in rec and rec["gauss_why"] == G.WHY_OVERFLOW
    assert "gauss" in _record(df, y)
    merged = A.merge_records(rec, _record(df, y))
    assert "gauss" not in merged
    sk = fitsketch.sketch_data(big, SketchConfig(), labels=y)
    sk2 = fitsketch.Sketch.from_bytes(sk.to_bytes())
    with fitsketch.open(tmp_path / "hub") as hub:
        hub.add_sketch("big", sk2, class_accuracy={c: 0.5 for c in range(K)})
        ev = [m.evidence for m in hub.search(big.iloc[:40], method="accuracy", accuracy_bootstrap=0)]
    assert len(ev) == 1 and G.WHY_OVERFLOW in ev[0]["mixture_source"]
    assert ev[0]["mixture_temperature"] == SketchConfig().accuracy_temperature


def test_a_column_of_much_larger_scale_leaves_the_mixture_to_naive_bayes(tmp_path, rng):
    mu = _means(rng)
    df, y = _draw(rng, mu, np.full(K, 0.25), 200)
    assert "gauss" in _record(df, y)
    wide = df.assign(income=rng.normal(5e4, 2e4, size=len(df)))
    rec = _record(wide, y)
    assert "gauss" not in rec and rec["gauss_why"] == G.WHY_SCALE
    q, _ = _draw(rng, mu, np.full(K, 0.25), 30)
    ev = _query_with_labelled_hub(tmp_path, rng, wide, y, q.assign(income=rng.normal(5e4, 2e4, size=30)))
    assert G.WHY_SCALE in ev[0]["mixture_source"]


def test_missing_values_leave_the_mixture_to_naive_bayes(tmp_path, rng):
    mu = _means(rng)
    df, y = _draw(rng, mu, np.full(K, 0.25), 150)
    holed = df.copy()
    holed.iloc[int(rng.integers(len(df))), int(rng.integers(D))] = np.nan
    rec = _record(holed, y)
    assert "gauss" not in rec and rec["gauss_why"] == G.WHY_MISSING
    # a query with a missing value: naive Bayes (a complete query keeps the Gaussians)
    q, _ = _draw(rng, mu, np.full(K, 0.25), 30)
    gp = G.gauss_pool([(_record(df, y), list(df.columns), {f: f for f in range(D)})], list(q.columns))
    assert G.gauss_loglik(q, gp, list(range(K))) is not None
    qh = q.copy()
    qh.iloc[int(rng.integers(len(q))), int(rng.integers(D))] = np.nan
    assert G.gauss_loglik(qh, gp, list(range(K))) is None
    ev = _query_with_labelled_hub(tmp_path, rng, df, y, qh)
    assert "the query has missing values" in ev[0]["mixture_source"]
    assert ev[0]["mixture_temperature"] == SketchConfig().accuracy_temperature


@pytest.mark.parametrize("damage", ["d_array", "d_bool", "ragged_mean", "ragged_scatter"])
def test_malformed_gaussians_of_other_types_are_named_errors(tmp_path, rng, damage):
    df, y, rec = _balanced_record(rng)
    g = dict(rec["gauss"])
    if damage == "d_array":
        g["d"] = np.array([G.GAUSS_DIM, G.GAUSS_DIM])
    elif damage == "d_bool":
        g["d"] = True
    elif damage == "ragged_mean":
        g["mean"] = [[0.0] * G.GAUSS_DIM, [0.0]] + [[0.0] * G.GAUSS_DIM] * (K - 2)
    else:
        g["scatter"] = [[1.0, 2.0], [1.0]] * (K // 2)
    with pytest.raises(E.CorruptHubError, match="class Gaussian"):
        A.check_record({**rec, "gauss": g}, D)
    sk = fitsketch.sketch_data(df, SketchConfig(), labels=y)
    sk.classes["gauss"] = g
    with fitsketch.open(tmp_path / "hub") as hub:
        with pytest.raises(E.InvalidArgumentError, match="class record"):
            hub.add_sketch("bad", sk, class_accuracy={c: 0.5 for c in range(K)})
        assert len(hub) == 0
    pl = _pool_of(rec, list(df.columns))
    part = dict(pl["gauss"]["parts"][0])
    part["n" if damage.startswith("d_") else damage.split("_")[1]] = g["mean"] if damage == "ragged_mean" else (
        g["scatter"] if damage == "ragged_scatter" else [[1.0], [1.0, 2.0]])
    with pytest.raises(E.InvalidArgumentError, match="gauss"):
        A.check_pool({**pl, "gauss": {**pl["gauss"], "parts": [part]}})


def test_a_received_pool_with_repeated_columns_or_foreign_labels_is_refused(rng):
    train, _, rec = _balanced_record(rng)
    pl = _pool_of(rec, list(train.columns))
    A.check_pool(pl)
    cols = pl["gauss"]["columns"]
    j = int(rng.integers(len(cols)))
    with pytest.raises(E.InvalidArgumentError, match="gauss"):
        A.check_pool({**pl, "gauss": {**pl["gauss"], "columns": cols + [list(cols[j])]}})
    part = dict(pl["gauss"]["parts"][0])
    part["labels"] = [c + 1000 * int(rng.integers(1, 5)) for c in part["labels"]]
    with pytest.raises(E.InvalidArgumentError, match="gauss"):
        A.check_pool({**pl, "gauss": {**pl["gauss"], "parts": [part]}})


def test_a_merge_whose_union_has_a_scale_gap_drops_the_gaussian(rng):
    """Two chunks of which each passes the scale check but whose union does not (a column near 0 in
    one chunk and near 5e4 in the other): the merged record has no Gaussian and says why, as the
    record of all the rows does."""
    mu = _means(rng)
    a, ya = _draw(rng, mu, np.full(K, 0.25), int(rng.integers(40, 200)))
    b, yb = _draw(rng, mu, np.full(K, 0.25), int(rng.integers(40, 200)))
    a = a.assign(income=rng.normal(0, 1, len(a)))
    b = b.assign(income=rng.normal(5e4, 1, len(b)))
    ra, rb = _record(a, ya), _record(b, yb)
    assert "gauss" in ra and "gauss" in rb
    whole = _record(pd.concat([a, b], ignore_index=True), np.concatenate([ya, yb]))
    merged = A.merge_records(ra, rb)
    assert "gauss" not in whole and whole["gauss_why"] == G.WHY_SCALE
    assert "gauss" not in merged and merged["gauss_why"] == G.WHY_SCALE


@pytest.mark.parametrize("why", ["array", "long", "number"])
def test_a_malformed_gauss_why_is_refused_and_the_hub_unchanged(tmp_path, rng, why):
    mu = _means(rng)
    df, y = _draw(rng, mu, np.full(K, 0.25), 120)
    sk = fitsketch.sketch_data(df, SketchConfig(), labels=y)
    sk.classes.pop("gauss")
    sk.classes["gauss_why"] = {"array": np.array([1, 2]), "long": "x" * (G.MAX_WHY + 1), "number": 3}[why]
    with fitsketch.open(tmp_path / "hub") as hub:
        with pytest.raises(E.FitsketchError, match="class record"):
            hub.add_sketch("bad", sk, class_accuracy={c: 0.5 for c in range(K)})
        assert "bad" not in hub and len(hub) == 0
    with pytest.raises(E.InvalidArgumentError):
        fitsketch.Sketch.from_bytes(sk.to_bytes())
