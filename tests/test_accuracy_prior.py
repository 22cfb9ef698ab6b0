"""The recall prior of method="accuracy" (engine/accuracy.py recall_prior / shifted_recall) and the
model confidence stored at registration (engine/accuracy_perf.py true_class_prob)."""
import numpy as np
import pandas as pd
import pytest
from scipy.special import softmax

import fitsketch
from fitsketch import accuracy as A
from fitsketch import errors as E
from fitsketch.storage import u64

from test_accuracy import _labelled, _model


def _sig(x):
    return 1.0 / (1.0 + np.exp(-x))


def _lg(x):
    x = np.clip(x, 1e-3, 1 - 1e-3)
    return np.log(x / (1 - x))


@pytest.mark.parametrize("n", [0, 1, 7, 50])
def test_true_class_prob_reads_probabilities_and_logits(rng, n):
    vocab = [2, 5, 9]
    y = rng.choice([2, 5, 9, 11], size=n)                      # 11: a label the model has no output for
    P = rng.dirichlet(np.ones(3), size=n)
    col = {2: 0, 5: 1, 9: 2}
    want = np.array([P[i, col[v]] if v in col else 0.0 for i, v in enumerate(y)])
    np.testing.assert_allclose(A.true_class_prob(P, vocab, y), want, rtol=1e-12, atol=0)
    Z = rng.normal(0, 3, size=(n, 3))                          # logits (some below 0): softmax first
    Z[:, 1] = -1.0 - np.abs(Z[:, 1])
    S = softmax(Z, axis=1) if n else Z
    want = np.array([S[i, col[v]] if v in col else 0.0 for i, v in enumerate(y)])
    np.testing.assert_allclose(A.true_class_prob(Z, vocab, y), want, rtol=1e-12, atol=1e-15)
    O = rng.random((n, 3))                                     # one-vs-rest sigmoids: rows normalized
    O[: n // 3] = 0.0                                          # a row of zeros reads as uniform
    N = np.where(O.sum(axis=1, keepdims=True) > 0, O, 1.0)
    N = N / N.sum(axis=1, keepdims=True)
    want = np.array([N[i, col[v]] if v in col else 0.0 for i, v in enumerate(y)])
    np.testing.assert_allclose(A.true_class_prob(O, vocab, y), want, rtol=1e-12, atol=0)


def test_registration_stores_the_mean_probability_of_the_true_class(tmp_path, rng):
    from sklearn.linear_model import LogisticRegression

    classes = [0, 1, 2]
    df, y = _labelled(rng, 150, classes)
    vdf, vy = _labelled(rng, int(rng.integers(20, 60)), classes)
    vdf = vdf + rng.normal(0, 6, size=vdf.shape)                 # some rows the model gets wrong
    clf = LogisticRegression(max_iter=500).fit(df.to_numpy(), y)
    models = {"proba": lambda X: clf.predict_proba(np.asarray(X, np.float64)),
              "logits": lambda X: clf.decision_function(np.asarray(X, np.float64))}
    with fitsketch.open(tmp_path / "hub") as hub:
        for name, model in models.items():
            hub.add(name, df, labels=y, model=model, validation=(vdf, vy))
        with hub.store.read() as txn:
            perf = {n: txn.get("extra", u64(hub.get(n).id))["classes"]["perf"] for n in models}
    X32 = vdf.to_numpy(np.float32).astype(np.float64)              # the hub runs the model on float32 rows
    for name, P in (("proba", clf.predict_proba(X32)), ("logits", softmax(clf.decision_function(X32), axis=1))):
        want = float(P[np.arange(len(vy)), vy].mean())
        assert abs(perf[name]["true_class_prob"] - want) <= 1e-5, (name, perf[name]["true_class_prob"], want)


def _perf(C, acc=None, conf=None, source="validation"):
    C = np.asarray(C)
    p = {"source": source, "labels": list(range(len(C))), "recall": np.zeros(len(C)), "confusion": C,
         "validation_accuracy": float(np.trace(C) / C.sum()) if acc is None else acc}
    if conf is not None:
        p["true_class_prob"] = conf
    return p


@pytest.mark.parametrize("conf, source", [(None, "validation"), (0.6, "validation"), (0.6, A.POOLED),
                                          (None, A.POOLED)])
def test_recall_prior_and_shifted_recall_on_a_constructed_case(rng, conf, source):
    """The prior is the logistic formula of PRIOR_COEF (PRIOR_COEF_NO_CONF without a stored
    confidence; PRIOR_COEF_POOLED for a confusion pooled with the validation's) on random counts; the recall moves it with the class's validation rows and
    PRIOR_PSEUDO pseudo-rows; a class with under PROXY_MIN_MASS query rows takes the learning
    curve; an unseen class stays 0."""
    K = 5
    counts = np.array([0, *rng.integers(1, 200, K - 1)])          # class 0 unseen
    rec = {"labels": list(range(K)), "counts": counts}
    C = np.diag(rng.integers(0, 30, K)) + rng.integers(0, 3, (K, K))
    C[0] = 0
    perf = _perf(C, conf=conf, source=source)
    m = A._Model(perf, rec, list(range(K)))
    pr = rng.uniform(0, 1, K)
    r0, pseudo = A.recall_prior(m, pr)
    acc = perf["validation_accuracy"]
    n = np.maximum(counts, 1)
    z = [1.0, _lg(acc), np.log(n), np.log(n / counts.sum()), _lg(pr)]
    if conf is None:
        coef, want_pseudo = A.PRIOR_COEF_NO_CONF, A.PRIOR_PSEUDO_NO_CONF
    else:
        coef, want_pseudo = ((A.PRIOR_COEF_POOLED, A.PRIOR_PSEUDO_POOLED) if source == A.POOLED
                             else (A.PRIOR_COEF, A.PRIOR_PSEUDO))
        z.append(np.log(acc / conf))
    want = _sig(sum(c * v for c, v in zip(coef, z)))
    want[0] = 0.0
    np.testing.assert_allclose(r0, want, rtol=1e-12)
    assert pseudo == want_pseudo
    # query rows: class k's rows are given to it with certainty; class K-1 gets 2 rows (< PROXY_MIN_MASS)
    rows = np.concatenate([np.full(10, k) for k in range(K - 1)] + [np.full(2, K - 1)])
    w = np.eye(K)[rows]
    pred = rows.copy()
    miss = rng.random(len(rows)) < 0.3
    pred[miss] = (rows[miss] + 1) % K
    pr_want = np.array([(pred[rows == k] == k).mean() for k in range(K)])
    r, shift = A.shifted_recall(m, pred, w)
    r0_q, _ = A.recall_prior(m, pr_want)
    ok = (np.bincount(rows, minlength=K) > A.PROXY_MIN_MASS) & (counts > 0)
    r0_q = np.where(ok, r0_q, acc * A.curve(counts))
    want_r = (np.diag(C) + want_pseudo * r0_q) / (C.sum(axis=1) + want_pseudo)
    np.testing.assert_allclose(shift, 1.0)                        # no proxy_hits stored: no shift factor
    np.testing.assert_allclose(r, want_r, rtol=1e-12)
    assert r[0] == 0.0
    # many validation rows outweigh the prior
    big = _perf(5000 * (np.eye(K, dtype=int) + np.roll(np.eye(K, dtype=int), 1, axis=1)), conf=conf, source=source)
    rb, _ = A.shifted_recall(A._Model(big, rec, list(range(K))), pred, w)
    np.testing.assert_allclose(rb[1:], 0.5, atol=1e-3)


@pytest.mark.parametrize("bad", [1.5, -0.1, float("nan"), "0.5", True])
def test_a_malformed_stored_confidence_is_corrupt(bad):
    rec = {"labels": [0, 1], "counts": np.array([10, 10])}
    with pytest.raises(E.CorruptHubError):
        A._Model(_perf(np.array([[5, 1], [2, 4]]), conf=bad), rec, [0, 1])


def test_an_entry_stored_without_the_confidence_still_scores(tmp_path, rng):
    """An entry registered before true_class_prob was stored (the key removed from its record)
    scores with the prior fitted without it: its score equals the reference computed from
    shifted_recall with a perf lacking the key, and differs from the score with it."""
    with fitsketch.open(tmp_path / "hub") as hub:
        for name in ("a", "b"):
            df, y = _labelled(rng, 200, [0, 1, 2])
            vdf, vy = _labelled(rng, 12, [0, 1, 2])
            vdf = vdf + rng.normal(0, 8, size=vdf.shape)
            hub.add(name, df, labels=y, model=_model([0, 1, 2]), validation=(vdf, vy))
        query, _ = _labelled(rng, 120, [0, 1, 2])
        before = {m.name: m.score for m in hub.search(query, method="accuracy", accuracy_bootstrap=0)}
        key = u64(hub.get("a").id)

        def drop(txn):
            ex = txn.get("extra", key)
            assert "true_class_prob" in ex["classes"]["perf"]
            del ex["classes"]["perf"]["true_class_prob"]
            txn.put("extra", key, ex)
        hub.store.transact(drop)
        res = {m.name: m for m in hub.search(query, method="accuracy", accuracy_bootstrap=0)}
    assert res["b"].score == pytest.approx(before["b"], abs=1e-12)
    # the old entry's score is the mixture times the recall the no-confidence prior gives
    d = res["a"].detail
    np.testing.assert_allclose(res["a"].score, float(np.dot(d["mixture"], d["recall"])), rtol=1e-9)
    assert 0.0 <= res["a"].score <= 1.0
    assert abs(res["a"].score - before["a"]) > 1e-9      # the prior without the confidence was used


def test_the_interval_scale_follows_the_registration(rng, monkeypatch):
    """estimate's interval is the draws' 5-95 % range scaled about the estimate by INTERVAL_SCALE,
    or INTERVAL_SCALE_POOLED for a confusion pooled with the validation's (or standing in for it, every
    validation row a training row): with both set to 1 the
    raw range; with other values each model's half-widths scale by its own constant (up to the
    [0, 1] clip), and the estimates do not move."""
    K = 4
    rec = {"labels": list(range(K)), "counts": rng.integers(20, 200, K)}
    perfs = [_perf(np.diag(rng.integers(5, 30, K)) + rng.integers(0, 4, (K, K)), conf=0.7, source=src)
             for src in ("validation", A.POOLED, A.POOLED_ALL_IN_TRAINING, "validation")]
    ll = np.log(rng.dirichlet(np.ones(K), size=37))                  # 37 query rows, any mixture
    proxies = [rng.integers(0, K, 37) for _ in perfs]

    def run(scale, pooled):
        monkeypatch.setattr(A, "INTERVAL_SCALE", scale)
        monkeypatch.setattr(A, "INTERVAL_SCALE_POOLED", pooled)
        return A.estimate(ll, list(range(K)), perfs, bootstrap=20, seed=3, proxies=proxies, records=[rec] * 4)

    _, acc, raw = run(1.0, 1.0)
    for scale, pooled in ((0.5, 0.8), (0.8, 0.5)):
        _, acc2, iv = run(scale, pooled)
        np.testing.assert_array_equal(acc2, acc)
        want = np.array([scale, pooled, pooled, scale])[:, None]
        np.testing.assert_allclose(iv, np.clip(acc[:, None] + want * (raw - acc[:, None]), 0, 1), rtol=1e-12,
                                   atol=1e-15)


def test_the_offline_fit_predicts_what_the_engine_scores(rng):
    """bench.accuracy_prior.predict (the arrays the recall prior is fitted on) equals
    accuracy.estimate's predicted accuracy on a constructed query where the shift factor discounts
    one class and leaves another whose drop stays within SHIFT_Z standard errors: the fit and the
    engine once disagreed (the offline side smoothed the stored proxy recall twice, so its shift
    factor was ~1 while the engine's was not)."""
    from bench import accuracy_prior as P

    K, n_rows = 4, 200
    y = rng.choice(K, size=n_rows, p=[0.4, 0.3, 0.2, 0.1])
    ll = np.log(np.eye(K)[y] * 0.96 + 0.01)                       # EM gives each row to its class
    pi = A.em_mixture(ll)
    w = A.responsibilities(ll, pi)
    right = rng.random(n_rows) < np.array([0.4, 0.88, 0.96, 0.92])[y]   # class 0: the proxy misses most
    pred = np.where(right, y, (y + 1) % K)
    perfs, recs, Z = [], [], []
    for j in range(3):
        counts = rng.integers(5, 150, K)
        rec = {"labels": list(range(K)), "counts": counts}
        C = np.diag(rng.integers(10, 60, K)) + rng.integers(0, 4, (K, K))
        perf = {**_perf(C, conf=float(rng.uniform(0.6, 0.9)), source=A.POOLED),
                "proxy_hits": np.full(K, 38), "proxy_n": np.full(K, 40)}
        perfs.append(perf)
        recs.append(rec)
        m = A._Model(perf, rec, list(range(K)))
        mass = w.sum(axis=0)
        hit = np.bincount(pred, weights=w[np.arange(n_rows), pred], minlength=K)
        Z.append({"n": m.n, "n_val": m.n_val, "diag": m.diag, "r_max": m.r_max, "conf": perf["true_class_prob"],
                  "pr": hit / mass, "ok": (mass > A.PROXY_MIN_MASS) & (m.n > 0), "pv": m.pv, "pv_n": m.pv_n,
                  "pi": pi, "mass": mass, "rows": n_rows})
        _, shift = A.shifted_recall(m, pred, w)
    z = {k: np.array([d[k] for d in Z]) for k in Z[0]}
    assert shift[0] < 0.9 and shift[1] == 1.0 and z["pr"][0, 1] < z["pv"][0, 1]   # one discounted, one in the noise
    _, acc, _ = A.estimate(ll, list(range(K)), perfs, proxies=[pred] * 3, records=recs)
    np.testing.assert_allclose(P.predict(z, A.PRIOR_COEF_POOLED, A.PRIOR_PSEUDO_POOLED), acc, rtol=1e-12)
