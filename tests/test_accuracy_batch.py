"""``accuracy.estimate`` over every model at once (engine/accuracy_batch.py, the one implementation;
engine/accuracy.py's per-model functions call it with one model) against the per-model reference
kept here (``shifted_recall``, ``recall_prior``, ``_recall_draw`` as engine/accuracy.py defined them
model by model, one ``np.dot`` per model: the loop ``estimate`` ran before). Scores, recalls, intervals and the mixture must be *equal* (the
batched steps are the same element-wise operations; see the module's docstring) on random models
of every registration kind, vocabularies, mixtures and bootstraps."""
from __future__ import annotations

import numpy as np
import pytest

from fitsketch import accuracy as A


def _recall_prior_reference(m, proxy_recall):
    """accuracy.recall_prior as it was defined model by model."""
    n = np.maximum(m.n, 1.0)
    x = [np.ones(len(n)), np.full(len(n), A._logit(m.r_max)), np.log(n), np.log(n / max(float(m.n.sum()), 1.0)),
         A._logit(proxy_recall)]
    coef, pseudo = A.PRIOR_COEF_NO_CONF, A.PRIOR_PSEUDO_NO_CONF
    if m.log_cal is not None:
        x.append(np.full(len(n), m.log_cal))
        coef, pseudo = (A.PRIOR_COEF_POOLED, A.PRIOR_PSEUDO_POOLED) if m.pooled else (A.PRIOR_COEF, A.PRIOR_PSEUDO)
    z = np.asarray(coef) @ np.stack(x)
    return np.where(m.n > 0, 1.0 / (1.0 + np.exp(-z)), 0.0), pseudo


def _shifted_recall_reference(m, pred, w):
    """accuracy.shifted_recall as it was defined model by model."""
    if m.given or pred is None or w is None or len(pred) == 0:
        return m.base, np.ones(len(m.base))
    K = w.shape[1]
    mass = w.sum(axis=0)
    hit = np.bincount(pred, weights=w[np.arange(len(pred)), pred], minlength=K)
    pr = hit / np.maximum(mass, 1e-12)
    ok = (mass > A.PROXY_MIN_MASS) & (m.n > 0)
    r0, pseudo = _recall_prior_reference(m, pr)
    r0 = np.where(ok, r0, m.r_max * A.curve(m.n))
    r = (m.diag + pseudo * r0) / (m.n_val + pseudo)
    shift = np.ones(K)
    if m.pv is not None:
        use = (ok & (m.pv_n >= A.SHIFT_MIN_VAL) & (mass >= A.SHIFT_MIN_VAL)
               & (m.pv - pr > A.SHIFT_Z * A.shift_se(m.pv, m.pv_n, pr, mass)))
        shift = np.where(use, np.sqrt(np.minimum(1.0, (pr + 0.02) / (m.pv + 0.02))), 1.0)
    return r * shift, shift


def _recall_draw_reference(m, r, seed):
    """accuracy._recall_draw as it was defined model by model."""
    if m.given:
        return r
    conc = (m.n_val + A.RECALL_PSEUDO) / A.RECALL_SPREAD
    rc = np.clip(r, 1e-3, 1 - 1e-3)
    return np.where(r > 0, np.random.default_rng(seed).beta(rc * conc, (1.0 - rc) * conc), 0.0)


def _estimate_reference(ll, labels, perfs, *, mixture=None, bootstrap=0, seed=0, proxies=None, records=None):
    """The per-model loop of ``accuracy.estimate`` before it was batched."""
    models = [A._Model(p, None if records is None else records[i], labels) for i, p in enumerate(perfs)]

    def times(pi, idx=None, noise=None):
        w = A.responsibilities(ll if idx is None else ll[idx], pi) if proxies is not None and ll.shape[0] else None
        out, recalls = [], []
        for i, m in enumerate(models):
            pred = None if proxies is None else (proxies[i] if idx is None else proxies[i][idx])
            r, _ = _shifted_recall_reference(m, pred, w)
            if noise is not None:
                r = _recall_draw_reference(m, r, noise[0])
            recalls.append(r)
            a = np.dot(r, pi)
            if noise is not None:
                a = a + noise[1] * np.sqrt(max(a * (1.0 - a), 0.0) / ll.shape[0])
            out.append(a)
        return np.array(out), recalls

    if mixture is not None:
        pi = mixture
        acc, recalls = times(pi)
        return pi, acc, None, recalls
    pi = A.em_mixture(ll)
    acc, recalls = times(pi)
    interval = None
    if bootstrap > 0 and ll.shape[0] >= 2:
        rng = np.random.default_rng(seed)
        accs = np.empty((bootstrap, len(perfs)))
        for b in range(bootstrap):
            idx = rng.integers(0, ll.shape[0], ll.shape[0])
            noise = (int(rng.integers(1 << 62)), float(rng.standard_normal()))
            accs[b] = times(A.em_mixture(ll[idx], pi, iters=60), idx, noise)[0]
        accs = np.clip(accs, 0.0, 1.0)
        q = np.stack([np.quantile(accs, 0.05, axis=0), np.quantile(accs, 0.95, axis=0)], axis=1)
        scale = A.INTERVAL_SCALE
        interval = np.clip(acc[:, None] + scale * (q - acc[:, None]), 0.0, 1.0)
    return pi, acc, interval, recalls


KINDS = ("validation", "calibrated", "pooled", "class_accuracy", "fallback", "proxy")


def _model(rng, vocab, kind):
    """(perf, record) of a random model of ``kind`` over a random part of ``vocab``."""
    labels = sorted(rng.choice(vocab, int(rng.integers(2, len(vocab) + 1)), replace=False).tolist())
    K = len(labels)
    counts = rng.integers(0, 300, K)
    counts[rng.random(K) < 0.2] = 0
    rec = {"labels": labels, "counts": counts.astype(np.int64)}
    if kind == "class_accuracy":
        return {"source": "class_accuracy", "labels": labels, "recall": rng.random(K)}, rec
    if kind == "fallback":
        return {"source": "fallback: class counts", "labels": labels, "recall": rng.random(K)}, rec
    C = rng.integers(0, 40, (K, K)).astype(np.float64)
    C[np.diag_indices(K)] += rng.integers(0, 200, K)
    perf = {"source": A.POOLED if kind == "pooled" else "validation", "labels": labels, "recall": rng.random(K),
            "confusion": C, "validation_accuracy": float(np.trace(C) / C.sum())}
    if kind in ("calibrated", "pooled", "proxy"):
        perf["true_class_prob"] = float(rng.uniform(0.2, 1.0))
    if kind in ("proxy", "pooled") or rng.random() < 0.5:
        n = rng.integers(0, 40, K)
        perf["proxy_n"] = n
        perf["proxy_hits"] = rng.integers(0, n + 1)
    return perf, rec


@pytest.mark.parametrize("n_models", [0, 1, 7, 40])
@pytest.mark.parametrize("n_rows", [0, 1, 2, 97])
@pytest.mark.parametrize("seed", [0, 1])
def test_estimate_equals_the_per_model_reference(n_models, n_rows, seed):
    rng = np.random.default_rng([seed, n_models, n_rows])
    vocab = list(range(int(rng.integers(2, 9))))
    pr = [_model(rng, vocab, KINDS[i % len(KINDS)]) for i in range(n_models)]
    perfs, records = [p for p, _ in pr], [r for _, r in pr]
    labels = sorted(set(vocab) | {99})        # a class no model saw
    K = len(labels)
    ll = rng.normal(0, 3, (n_rows, K))
    ll[:, -1] -= 5
    proxies = [rng.integers(0, K, n_rows).astype(np.int64) for _ in range(n_models)]
    for bootstrap in (0, 5):
        det = {}
        pi, acc, interval = A.estimate(ll, labels, perfs, bootstrap=bootstrap, seed=seed, proxies=proxies,
                                       records=records, details=det)
        rpi, racc, rint, rrec = _estimate_reference(ll, labels, perfs, bootstrap=bootstrap, seed=seed,
                                                    proxies=proxies, records=records)
        np.testing.assert_array_equal(pi, rpi)
        np.testing.assert_array_equal(acc, racc)
        assert (interval is None) == (rint is None)
        if interval is not None:
            np.testing.assert_array_equal(interval, rint)
        assert len(det["recall"]) == n_models
        for a, b in zip(det["recall"], rrec):
            np.testing.assert_array_equal(a, b)
    # without proxies (the stored recalls), and a given mixture
    mix = rng.dirichlet(np.ones(K))
    pi, acc, interval = A.estimate(np.zeros((0, K)), labels, perfs, mixture=mix, records=records)
    rpi, racc, rint, _ = _estimate_reference(np.zeros((0, K)), labels, perfs, mixture=mix, records=records)
    np.testing.assert_array_equal(acc, racc)
    assert interval is None and rint is None
    pi, acc, _ = A.estimate(ll, labels, perfs, bootstrap=3, seed=seed)
    np.testing.assert_array_equal(acc, _estimate_reference(ll, labels, perfs, bootstrap=3, seed=seed)[1])


def test_a_models_score_does_not_depend_on_the_others_in_the_call():
    """A shard scores some of the models: each model's score and interval alone equal its score
    among all (the sharded hub's equality with one hub rests on it)."""
    rng = np.random.default_rng(11)
    vocab = list(range(6))
    pr = [_model(rng, vocab, KINDS[i % len(KINDS)]) for i in range(13)]
    labels = vocab
    ll = rng.normal(0, 2, (60, 6))
    proxies = [rng.integers(0, 6, 60).astype(np.int64) for _ in pr]
    _, acc, interval = A.estimate(ll, labels, [p for p, _ in pr], bootstrap=9, seed=3, proxies=proxies,
                                  records=[r for _, r in pr])
    for i in (0, 4, 12):
        _, a1, i1 = A.estimate(ll, labels, [pr[i][0]], bootstrap=9, seed=3, proxies=[proxies[i]], records=[pr[i][1]])
        assert a1[0] == acc[i]
        np.testing.assert_array_equal(i1[0], interval[i])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_one_model_functions_equal_the_per_model_reference(seed):
    """accuracy.shifted_recall / recall_prior / _recall_draw (one model through the batched code)
    equal the per-model definitions above on random models of every kind: recalls, shift factors,
    prior and pseudo-rows, draws."""
    rng = np.random.default_rng(seed)
    vocab = list(range(6))
    labels = sorted(set(vocab) | {99})
    K = len(labels)
    for i in range(24):
        perf, rec = _model(rng, vocab, KINDS[i % len(KINDS)])
        m = A._Model(perf, rec, labels)
        n_rows = int(rng.integers(0, 400))             # enough rows that the shift gate opens
        w = A.responsibilities(rng.normal(0, 3, (n_rows, K)), rng.dirichlet(np.ones(K)))
        pred = rng.integers(0, K, n_rows).astype(np.int64)
        for p, ww in ((pred, w), (None, None)):
            got, want = A.shifted_recall(m, p, ww), _shifted_recall_reference(m, p, ww)
            np.testing.assert_array_equal(got[0], want[0])
            np.testing.assert_array_equal(got[1], want[1])
        if not m.given:
            pr = rng.uniform(0, 1, K)
            r0, ps = A.recall_prior(m, pr)
            r0_ref, ps_ref = _recall_prior_reference(m, pr)
            np.testing.assert_array_equal(r0, r0_ref)
            assert ps == ps_ref
        r = got[0]
        s = int(rng.integers(1 << 62))
        np.testing.assert_array_equal(A._recall_draw(m, r, s), _recall_draw_reference(m, r, s))
