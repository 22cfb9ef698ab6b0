"""Predicted accuracy under covariate shift inside a class (engine/accuracy.py: the own-histogram
proxy and the shift factor), the vectorized naive-Bayes log-likelihood against a per-column loop,
and the command line's --class-accuracy / --confusion."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import fitsketch
from fitsketch import accuracy as A
from fitsketch import errors as E
from fitsketch.cli import main


# ------------------------------------------------------------------ loglik against a reference
def _loglik_reference(qb, n_rows, pl, names, temperature):
    """The straightforward per-column loop (the implementation before vectorization)."""
    K = len(pl["labels"])
    col_of = {c: i for i, c in enumerate(pl["columns"])}
    col = np.asarray(pl["col"], np.int64)
    order = np.argsort(col, kind="stable")
    col, cls, bucket, count = col[order], np.asarray(pl["cls"], np.int64)[order], \
        np.asarray(pl["bucket"], np.int64)[order], np.asarray(pl["count"], np.float64)[order]
    starts = np.searchsorted(col, np.arange(len(pl["columns"]) + 1))
    ll = np.zeros((n_rows, K))
    effective = 0.0
    for j, (rows, qbk, _) in qb.items():
        c = col_of.get(names[j])
        if c is None or starts[c] == starts[c + 1]:
            continue
        lo, hi = starts[c], starts[c + 1]
        vocab, inv = np.unique(np.concatenate([bucket[lo:hi], qbk]), return_inverse=True)
        N = np.zeros((K, len(vocab)))
        np.add.at(N, (cls[lo:hi], inv[:hi - lo]), count[lo:hi])
        q = (N.sum(axis=0) + 1.0) / (N.sum() + len(vocab))
        P = (N + A.SMOOTHING * q) / (N.sum(axis=1, keepdims=True) + A.SMOOTHING)
        effective += 1.0 - q.max()
        np.add.at(ll, rows, np.log(P).T[inv[hi - lo:]])
    return ll if temperature is None else ll / (temperature * max(effective, 1e-3))


def _random_pool(rng, K, cols, entries=3):
    parts = []
    for _ in range(entries):
        m = int(rng.integers(0, 200))
        parts.append((rng.integers(0, K, m), rng.integers(0, len(cols), m), rng.integers(-6, 7, m),
                      rng.integers(1, 50, m).astype(np.float64)))
    cls, col, bucket, count = (np.concatenate(x) for x in zip(*parts))
    return A._aggregate(list(range(K)), list(cols), cls, col, bucket, count, entries)


@pytest.mark.parametrize("n_rows", [0, 1, 7, 97])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loglik_equals_the_per_column_loop(n_rows, seed):
    rng = np.random.default_rng([seed, n_rows])
    K = int(rng.integers(2, 6))
    names = [f"f{j}" for j in range(9)]
    pl = _random_pool(rng, K, names[:6] + ["other"])       # f6-f8: not in the pool; "other": not in the query
    qb = {}
    for j in range(9):
        if rng.random() < 0.2:
            continue                                          # a query column without values
        if j % 3 == 2 and n_rows:                             # a text-like column: several tokens a row
            m = int(rng.integers(1, 3 * n_rows + 1))
            qb[j] = (rng.integers(0, n_rows, m), rng.integers(-8, 9, m).astype(np.int64), False)
        else:
            qb[j] = (np.arange(n_rows), rng.integers(-8, 9, n_rows).astype(np.int64), True)
    # a second pool over other columns in another order, scored with the same query index
    pl2 = _random_pool(rng, K, ["other", "f8", "f3", "f1"], entries=1)
    qx = A.query_index(qb, n_rows)
    for T in (None, 0.1, 3.0):
        for p in (pl, pl2):
            ref = _loglik_reference(qb, n_rows, p, names, T)
            got = A.loglik(qb, n_rows, p, names, T)
            assert got.shape == ref.shape == (n_rows, K)
            np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-9)
            np.testing.assert_allclose(A.loglik(qb, n_rows, p, names, T, qx), ref, rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("seed", [0, 1])
def test_loglik_of_a_query_of_2100_columns_equals_the_per_column_loop(seed):
    """Pools over 2,048 columns and more: a packed (column, class, bucket) key with a fixed 20-bit
    class field wrapped there (columns 2,048 apart collided), so a wide query's log-likelihoods came
    out wrong, silently."""
    rng = np.random.default_rng(seed)
    n_rows, K = 23, 4
    names = [f"f{j}" for j in range(2100)]
    pl = _random_pool(rng, K, names, entries=60)          # the pool over all 2,100 columns
    assert np.asarray(pl["col"]).max() >= 2048
    qb = {j: (np.arange(n_rows), rng.integers(-8, 9, n_rows).astype(np.int64), True)
          for j in list(range(0, 60)) + list(range(2040, 2100))}
    for T in (None, 0.1):
        ref = _loglik_reference(qb, n_rows, pl, names, T)
        np.testing.assert_allclose(A.loglik(qb, n_rows, pl, names, T), ref, rtol=1e-10, atol=1e-9)
    assert np.abs(ref).max() > 0


def test_loglik_of_an_empty_pool_is_zero():
    e = np.zeros(0, np.int64)
    pl = A._aggregate([0, 1, 2], ["a"], e, e, e, np.zeros(0), 0)
    qb = {0: (np.arange(4), np.arange(4, dtype=np.int64), True)}
    assert not A.loglik(qb, 4, pl, ["a"], 0.1).any()


# ------------------------------------------------------------------ covariate shift inside a class
MEANS = np.array([5.0, 10.0, 15.0])     # class k's features ~ N(MEANS[k], 1.5) in every column
D = 4


def _rows(rng, y, means):
    return pd.DataFrame(rng.normal(means[y][:, None], 1.5, size=(len(y), D)), columns=[f"x{i}" for i in range(D)])


def _centroid_model(means):
    """Nearest class mean over all columns: logits = -squared distance."""
    return lambda X: -((np.asarray(X, np.float64)[:, None, :] - means[None, :, None]) ** 2).sum(axis=2)


def _measured(model, X, y):
    return float((np.asarray(model(X.to_numpy())).argmax(axis=1) == y).mean())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_shift_inside_a_class_ranks_the_unshifted_model_first(tmp_path, seed):
    """Two sources of the same three classes; in source "shifted" class 2 lies at 25 instead of 15
    (its model learned it there, and its validation rows, drawn like its training rows, say it
    recognizes class 2 perfectly). On a target whose class 2 is at 15 that model misses class 2.
    Without the correction both models are predicted alike; with it the unshifted one ranks first
    and both predictions lie within 0.1 of the measured accuracy, the shifted one's error at
    most a third of the uncorrected error (which is about the target's class-2 share, 0.4)."""
    rng = np.random.default_rng(seed)
    shifted_means = np.array([5.0, 10.0, 25.0])
    y_t = rng.choice(3, size=300, p=[0.3, 0.3, 0.4])
    target = _rows(rng, y_t, MEANS)
    measured, predicted, uncorrected = {}, {}, {}
    with fitsketch.open(tmp_path / "h", create=True) as hub:
        for name, means in (("plain", MEANS), ("shifted", shifted_means)):
            y, yv = rng.integers(0, 3, 300), rng.integers(0, 3, 150)
            model = _centroid_model(means)
            hub.add(name, _rows(rng, y, means), labels=y, model=model, validation=(_rows(rng, yv, means), yv))
            measured[name] = _measured(model, target, y_t)
        res = hub.search(target, k=2, method="accuracy", accuracy_bootstrap=0)
    for m in res:
        predicted[m.name] = m.score
        uncorrected[m.name] = m.score / m.evidence["covariate_shift"]
    assert measured["plain"] > 0.95 and measured["shifted"] < 0.7         # the construction works
    assert abs(uncorrected["shifted"] - measured["shifted"]) > 0.25        # validation alone misleads
    assert res[0].name == "plain"
    for name in measured:
        assert abs(predicted[name] - measured[name]) <= 0.1, (name, predicted, measured)
    assert abs(predicted["shifted"] - measured["shifted"]) <= abs(uncorrected["shifted"] - measured["shifted"]) / 3
    assert res[1].evidence["covariate_shift"] < 0.8 <= res[0].evidence["covariate_shift"]


def test_no_shift_keeps_the_validation_recall(tmp_path):
    """Same distribution everywhere, classes well validated: the correction moves nothing
    beyond 0.03 and the predictions match the measured accuracy within 0.05."""
    rng = np.random.default_rng(7)
    y_t = rng.choice(3, size=300, p=[0.5, 0.3, 0.2])
    target = _rows(rng, y_t, MEANS)
    with fitsketch.open(tmp_path / "h", create=True) as hub:
        models = {}
        for name in ("a", "b"):
            y, yv = rng.integers(0, 3, 300), rng.integers(0, 3, 150)
            models[name] = _centroid_model(MEANS + rng.normal(0, 0.5, 3))
            hub.add(name, _rows(rng, y, MEANS), labels=y, model=models[name],
                    validation=(_rows(rng, yv, MEANS), yv))
        res = hub.search(target, k=2, method="accuracy", accuracy_bootstrap=0)
    for m in res:
        assert abs(m.evidence["covariate_shift"] - 1.0) <= 0.03
        assert abs(m.score - _measured(models[m.name], target, y_t)) <= 0.05


def test_shifted_recall_formula_on_a_constructed_case():
    """Proxy recall per class from responsibilities and the proxy's labels; the prior is the
    logistic model of PRIOR_COEF_NO_CONF (no confidence stored); the shift factor applies only to
    classes with SHIFT_MIN_VAL validation rows and query rows, whose drop exceeds SHIFT_Z standard
    errors."""
    labels = [0, 1]
    rec = {"labels": [0, 1], "counts": np.array([40, 40])}
    C = np.array([[20, 0], [0, 5]])                                   # class 1: 5 validation rows
    perf = {"source": "validation", "labels": [0, 1], "recall": np.array([1.0, 1.0]), "confusion": C,
            "validation_accuracy": 1.0, "proxy_hits": np.array([20, 5]), "proxy_n": np.array([20, 5])}
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    b = A.PRIOR_COEF_NO_CONF           # 1, logit(validation accuracy 1 -> clipped), log 40, log(40 / 80), logit(proxy)
    pv = 21 / 22

    def case(n0, hits0):
        """``n0`` query rows of class 0 (the proxy labels ``hits0`` of them 0), 4 of class 1."""
        w = np.array([[1.0, 0.0]] * n0 + [[0.0, 1.0]] * 4)
        pred = np.array([0] * hits0 + [1] * (n0 - hits0) + [1] * 4)
        r, shift = A.shifted_recall(A._Model(perf, rec, labels), pred, w)
        pr = hits0 / n0
        r0 = sig(b[0] + b[1] * np.log(0.999 / 0.001) + b[2] * np.log(40.0) + b[3] * np.log(0.5)
                 + b[4] * A._logit(np.array([pr, 1.0])))
        base = (np.diag(C) + A.PRIOR_PSEUDO_NO_CONF * r0) / (C.sum(axis=1) + A.PRIOR_PSEUDO_NO_CONF)
        return r, shift, base, pr

    # 16 rows, 4 recognized: a drop of .70 against 2 standard errors of .24 -> discounted
    r, shift, base, pr = case(16, 4)
    se = np.sqrt(pv * (1 - pv) / 20 + pr * (1 - pr) / 16)
    assert pv - pr > A.SHIFT_Z * se
    f0 = np.sqrt((pr + 0.02) / (pv + 0.02))
    np.testing.assert_allclose(shift, [f0, 1.0], rtol=1e-12)
    np.testing.assert_allclose(r, base * [f0, 1.0], rtol=1e-12)
    # 16 rows, 12 recognized: a drop of .20 within the noise -> not discounted
    r, shift, base, pr = case(16, 12)
    assert 0 < pv - pr < A.SHIFT_Z * np.sqrt(pv * (1 - pv) / 20 + pr * (1 - pr) / 16)
    np.testing.assert_array_equal(shift, [1.0, 1.0])
    np.testing.assert_allclose(r, base, rtol=1e-12)
    # 8 rows (under SHIFT_MIN_VAL), 2 recognized: too few query rows to discount
    r, shift, base, pr = case(8, 2)
    np.testing.assert_array_equal(shift, [1.0, 1.0])
    # no query rows, or a class_accuracy performance: the stored recalls
    w = np.array([[1.0, 0.0]] * 8 + [[0.0, 1.0]] * 4)
    pred = np.array([0] * 2 + [1] * 6 + [1] * 4)
    np.testing.assert_array_equal(A.shifted_recall(A._Model(perf, rec, labels), None, None)[0], [1.0, 1.0])
    given = {"source": "class_accuracy", "labels": [0, 1], "recall": np.array([0.7, 0.4])}
    np.testing.assert_array_equal(A.shifted_recall(A._Model(given, rec, labels), pred, w)[0], [0.7, 0.4])


def test_shift_se_against_its_formula(rng):
    """shift_se on random inputs equals the two binomial variances summed, with the query side's
    recall clipped to [0.02, 0.98] and counts of 0 taken as 1 row (validation) / 1e-12 (mass)."""
    for size in (0, 1, 7):
        pv, pr = rng.uniform(0, 1, size), rng.uniform(0, 1, size)
        pv_n, mass = rng.integers(0, 50, size).astype(float), rng.uniform(0, 100, size)
        want = [np.sqrt(a * (1 - a) / max(n, 1.0) + min(max(b, 0.02), 0.98) * (1 - min(max(b, 0.02), 0.98))
                        / max(m, 1e-12)) for a, b, n, m in zip(pv, pr, pv_n, mass)]
        np.testing.assert_allclose(A.shift_se(pv, pv_n, pr, mass), want, rtol=1e-12)


# ------------------------------------------------------------------ command line
@pytest.fixture
def cli(capsys):
    def _run(*args):
        capsys.readouterr()
        code = main([str(a) for a in args])
        return code, *capsys.readouterr()
    return _run


def _table(tmp_path, rng):
    df = pd.DataFrame(rng.normal(size=(80, 3)), columns=["a", "b", "c"])
    df["y"] = rng.integers(0, 3, 80)
    df.to_csv(tmp_path / "d.csv", index=False)
    return df


def _scores(hub_path, df, names):
    mix = {0: 0.2, 1: 0.5, 2: 0.3}
    with fitsketch.open(hub_path) as hub:
        res = hub.search(df.drop(columns=["y"]), k=10, method="accuracy", mixture=mix)
    return {m.name: m.score for m in res if m.name in names}


def test_cli_class_accuracy_and_confusion_equal_the_api(tmp_path, cli):
    rng = np.random.default_rng(3)
    df = _table(tmp_path, rng)
    recall = {0: 0.9, 1: 0.55, 2: 0.7}
    C = rng.integers(0, 20, size=(3, 3))
    (tmp_path / "ca.json").write_text(json.dumps({str(k): v for k, v in recall.items()}))
    pd.DataFrame({"label": list(recall), "recall": list(recall.values())}).to_csv(tmp_path / "ca.csv", index=False)
    pd.DataFrame(C, index=[0, 1, 2], columns=[0, 1, 2]).to_csv(tmp_path / "conf.csv")
    np.save(tmp_path / "conf.npy", C)
    assert cli("init", tmp_path / "h")[0] == 0
    for name, flag, f in (("cj", "--class-accuracy", "ca.json"), ("cc", "--class-accuracy", "ca.csv"),
                          ("fc", "--confusion", "conf.csv"), ("fn", "--confusion", "conf.npy")):
        code, _, err = cli("add", tmp_path / "h", name, tmp_path / "d.csv", "--labels", "y", flag, tmp_path / f)
        assert code == 0, err
    with fitsketch.open(tmp_path / "h") as hub:
        X, y = df.drop(columns=["y"]), df["y"].to_numpy()
        hub.add("api-ca", X, labels=y, class_accuracy=recall)
        hub.add("api-conf", X, labels=y, confusion=C)
    s = _scores(tmp_path / "h", df, {"cj", "cc", "fc", "fn", "api-ca", "api-conf"})
    assert s["cj"] == s["cc"] == s["api-ca"] == pytest.approx(0.2 * 0.9 + 0.5 * 0.55 + 0.3 * 0.7, abs=1e-12)
    assert s["fc"] == s["fn"] == s["api-conf"]


@pytest.mark.parametrize("case", ["no-labels", "both", "bad-json", "json-list", "csv-3-columns", "not-square",
                                  "npy-1d", "missing-class", "recall-out-of-range", "no-file"])
def test_cli_bad_performance_files_are_named_errors_and_change_nothing(tmp_path, cli, case):
    rng = np.random.default_rng(4)
    _table(tmp_path, rng)
    assert cli("init", tmp_path / "h")[0] == 0
    (tmp_path / "ok.json").write_text('{"0": 0.9, "1": 0.5, "2": 0.7}')
    files = {"bad-json": ("x.json", "{"), "json-list": ("x.json", "[0.9, 0.5]"),
             "csv-3-columns": ("x.csv", "label,recall,extra\n0,0.9,1\n1,0.5,1\n2,0.7,1\n"),
             "not-square": ("x.csv", ",0,1,2\n0,5,1,0\n1,1,4,2\n"),
             "missing-class": ("x.json", '{"0": 0.9, "1": 0.5}'),
             "recall-out-of-range": ("x.json", '{"0": 0.9, "1": 1.5, "2": 0.7}')}
    args = ["add", tmp_path / "h", "m", tmp_path / "d.csv", "--labels", "y"]
    if case == "no-labels":
        args = args[:-2] + ["--class-accuracy", tmp_path / "ok.json"]
    elif case == "both":
        args += ["--class-accuracy", tmp_path / "ok.json", "--confusion", tmp_path / "ok.json"]
    elif case == "npy-1d":
        np.save(tmp_path / "x.npy", np.ones(3))
        args += ["--confusion", tmp_path / "x.npy"]
    elif case == "no-file":
        args += ["--confusion", tmp_path / "absent.csv"]
    else:
        fname, text = files[case]
        (tmp_path / fname).write_text(text)
        flag = "--confusion" if case == "not-square" else "--class-accuracy"
        args += [flag, tmp_path / fname]
    code, out, err = cli(*args)
    assert code == 2 and err.count("\n") == 1 and "fitsketch: error [" in err, err
    with fitsketch.open(tmp_path / "h") as hub:
        assert hub.names() == []


def test_performance_file_readers_refuse_oversized_files(tmp_path, monkeypatch):
    from fitsketch import accuracy_perf

    monkeypatch.setattr(accuracy_perf, "MAX_PERF_FILE", 10)
    (tmp_path / "big.json").write_text('{"0": 0.9, "1": 0.5, "2": 0.7}')
    with pytest.raises(E.LimitExceededError):
        A.read_class_accuracy(tmp_path / "big.json")
    with pytest.raises(E.LimitExceededError):
        A.read_confusion(tmp_path / "big.json")


# ------------------------------------------------------------------ the candidate stage
@pytest.mark.parametrize("seed", [0, 1])
def test_accuracy_screen_keeps_the_exhaustive_top(tmp_path, seed):
    """12 labelled entries, each a random half of one table (their feature distributions differ
    at random, unrelated to their models), with random per-class recalls (class_accuracy=: the
    scorer uses them as given). With shortlist=2 (the stage runs above 4 x 2 entries) the top 2
    equal those of scoring every entry, names and scores, and the plan says how it ranked."""
    rng = np.random.default_rng(seed)
    y_all = rng.integers(0, 3, 400)
    X_all = _rows(rng, y_all, MEANS)
    target = _rows(rng, rng.choice(3, 200, p=[0.6, 0.3, 0.1]), MEANS)
    with fitsketch.open(tmp_path / "h", create=True) as hub:
        for i in range(12):
            idx = rng.choice(400, 200, replace=False)
            hub.add(f"e{i}", X_all.iloc[idx], labels=y_all[idx],
                    class_accuracy={c: float(rng.uniform(0.2, 1.0)) for c in range(3)})
        full = hub.search(target, k=2, method="accuracy", shortlist=0, accuracy_bootstrap=0)
        short = hub.search(target, k=2, method="accuracy", shortlist=2, accuracy_bootstrap=0)
        plan = hub.explain(target, k=2, method="accuracy", shortlist=2, accuracy_bootstrap=0)
    assert [(m.name, m.score) for m in short] == [(m.name, m.score) for m in full]
    stage = next(s for s in plan.stages if s.name == "shortlist")
    assert "ranked by an upper bound on their predicted accuracy" in stage.detail and stage.actual == 2


# ------------------------------------------------------------------ interval draws
def test_recall_draw_is_a_beta_posterior_per_class(rng):
    """_recall_draw: per class a Beta with mean r and (n_val + pseudo) / spread observations, from
    the draw's seed (checked against numpy's Beta with the same seed, and its mean and variance
    over many seeds); unseen classes (recall 0) stay 0; given recalls stay."""
    K = int(rng.integers(1, 9))
    labels = list(range(K))
    C = np.diag(rng.integers(0, 60, K)).astype(np.int64) + rng.integers(0, 3, (K, K))
    perf = {"source": "validation", "labels": labels, "recall": rng.uniform(0, 1, K), "confusion": C,
            "validation_accuracy": 0.8}
    rec = {"labels": labels, "counts": rng.integers(0, 50, K)}
    m = A._Model(perf, rec, labels)
    r = rng.uniform(0.05, 0.95, K)
    r[rng.random(K) < 0.3] = 0.0
    conc = (C.sum(axis=1) + A.RECALL_PSEUDO) / A.RECALL_SPREAD
    seed = int(rng.integers(1 << 62))
    rc = np.clip(r, 1e-3, 1 - 1e-3)
    want = np.where(r > 0, np.random.default_rng(seed).beta(rc * conc, (1 - rc) * conc), 0.0)
    np.testing.assert_array_equal(A._recall_draw(m, r, seed), want)
    draws = np.stack([A._recall_draw(m, r, s) for s in range(4000)])
    np.testing.assert_allclose(draws.mean(axis=0), r, atol=0.02)
    np.testing.assert_allclose(draws.var(axis=0), r * (1 - r) / (conc + 1), rtol=0.15, atol=1e-4)
    assert (draws[:, r == 0] == 0).all()
    given = A._Model({"source": "class_accuracy", "labels": labels, "recall": r}, rec, labels)
    np.testing.assert_array_equal(A._recall_draw(given, r, seed), r)


def test_interval_is_wider_for_a_model_measured_on_fewer_validation_rows():
    """Two models with the same recalls, one measured on 10x the validation rows: the same point
    estimate, a narrower interval for the well-measured one; both intervals inside [0, 1]."""
    labels = [0, 1, 2]
    rng = np.random.default_rng(7)
    ll = np.log(rng.dirichlet(np.ones(3), size=200))
    rec = {"labels": labels, "counts": np.array([100, 100, 100])}
    perfs = []
    for scale in (1, 10):
        C = np.array([[8, 1, 1], [2, 6, 2], [1, 1, 8]]) * scale
        perfs.append({"source": "validation", "labels": labels, "recall": np.diag(C) / C.sum(axis=1),
                      "confusion": C, "validation_accuracy": float(np.trace(C) / C.sum())})
    _, acc, iv = A.estimate(ll, labels, perfs, bootstrap=200, seed=3, records=[rec, rec])
    assert acc[0] == pytest.approx(acc[1], abs=0.05)
    assert (iv >= 0).all() and (iv <= 1).all() and (iv[:, 0] <= iv[:, 1]).all()
    assert iv[0, 1] - iv[0, 0] > 1.3 * (iv[1, 1] - iv[1, 0])
