"""engine/accuracy_bound.py: the per-class recall bound is above every recall the scorer can give a
model, whatever the query's rows, on random models of every registration kind and on queries whose
proxies recall nothing, everything or anything between (the hub-level checks: test_accuracy_stage.py)."""
from __future__ import annotations

import numpy as np
import pytest

from fitsketch import accuracy as A
from fitsketch.accuracy_batch import Models, shifted_recalls
from fitsketch.accuracy_bound import SLACK, recall_bound, to_score
from fitsketch.results import Match

from test_accuracy_batch import KINDS, _model


def _query(rng, K, n_rows, how):
    """(responsibilities, proxy predictions of every row) of a random query: ``how`` "random", or
    near one-hot rows predicted as their class ("all": proxy recall 1) or as the next ("none": 0)."""
    if how == "random":
        ll = rng.normal(0, 3, (n_rows, K))
    else:
        ll = np.full((n_rows, K), -60.0)
        ll[np.arange(n_rows), rng.integers(0, K, n_rows)] = 0.0
    w = A.responsibilities(ll, rng.dirichlet(np.ones(K)))
    own = np.argmax(w, axis=1)
    return w, own if how == "all" else (own + 1) % K if how == "none" else rng.integers(0, K, n_rows)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("how", ["random", "all", "none"])
def test_no_recall_exceeds_its_bound(seed, how):
    rng = np.random.default_rng([seed, len(how)])
    vocab = list(range(int(rng.integers(2, 9))))
    labels = sorted(set(vocab) | {99})                  # a class no model saw
    K = len(labels)
    pr = [_model(rng, vocab, KINDS[i % len(KINDS)]) for i in range(int(rng.integers(1, 60)))]
    records = [{**rec, "perf": perf} for perf, rec in pr]
    bound = recall_bound(records, labels)
    assert bound.shape == (len(records), K) and np.isfinite(bound).all()
    M = Models([A._Model(perf, rec, labels) for perf, rec in pr], K)
    tight = 0.0
    for n_rows in (1, 2, 37, 600):
        w, own = _query(rng, K, n_rows, how)
        preds = np.stack([own if rng.random() < 0.7 else rng.integers(0, K, n_rows) for _ in pr])
        R = shifted_recalls(M, preds, w)
        assert (R <= bound + SLACK).all(), np.max(R - bound)
        pi = rng.dirichlet(np.ones(K))
        acc = np.array([np.dot(R[i], pi) for i in range(len(pr))])   # as accuracy.estimate scores
        assert (acc <= bound @ pi + SLACK).all()
        tight = max(tight, float(np.max(R - bound)))
    given = np.array([perf["source"] == "class_accuracy" for perf, _ in pr])
    np.testing.assert_array_equal(bound[given], M.base[given])    # given recalls: the bound is them
    if how == "all":
        assert tight > -0.5     # not vacuous: some recall comes near its bound


def test_recall_bound_in_chunks_equals_one_pass(monkeypatch):
    rng = np.random.default_rng(5)
    vocab = list(range(5))
    pr = [_model(rng, vocab, KINDS[i % len(KINDS)]) for i in range(23)]
    records = [{**rec, "perf": perf} for perf, rec in pr]
    whole = recall_bound(records, vocab)
    import fitsketch.accuracy_bound as AB

    monkeypatch.setattr(AB, "CHUNK", 4)
    np.testing.assert_array_equal(recall_bound(records, vocab), whole)
    assert recall_bound([], vocab).shape == (0, 5)


def _match(name, score, labels, mixture):
    m = Match(name, score, "accuracy", 1.0)
    m.detail = {"labels": labels, "mixture": np.asarray(mixture, np.float64)}
    return m


@pytest.mark.parametrize("seed", range(4))
def test_to_score_against_a_loop(seed):
    """Every unscored key whose bound (under the matches' mixture, mapped by label) reaches the k-th
    best score, best bound first; every key when fewer than k were scored."""
    rng = np.random.default_rng(seed)
    E, K = int(rng.integers(1, 40)), int(rng.integers(1, 6))
    keys = [i.to_bytes(8, "big") for i in range(E)]
    labels = list(range(K))
    bound = rng.random((E, K))
    scored = set(rng.choice(E, int(rng.integers(0, E + 1)), replace=False).tolist())
    mix_labels = [99] + labels[::-1]                       # another order, and a class no entry saw
    mix = rng.dirichlet(np.ones(K + 1))
    pi = np.array([mix[mix_labels.index(c)] for c in labels])
    matches = [_match(f"e{i}", float(bound[i] @ pi * rng.uniform(0.8, 1.0)), mix_labels, mix) for i in sorted(scored)]
    k = int(rng.integers(1, 6))
    got, thr = to_score({"keys": keys, "bound": bound, "labels": labels}, matches, k, {keys[i] for i in scored})
    s = sorted((m.score for m in matches), reverse=True)
    want_thr = s[k - 1] if len(s) >= k else float("-inf")
    assert thr == want_thr
    ub = bound @ pi
    want = sorted((i for i in range(E) if i not in scored and ub[i] >= want_thr - SLACK), key=lambda i: (-ub[i], i))
    assert got == [keys[i] for i in want]
