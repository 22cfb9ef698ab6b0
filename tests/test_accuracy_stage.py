"""method="accuracy"'s candidate stage on a large hub (issue 24): entries whose model was measured
on validation rows are screened by a proxy (their stored recalls x the EM mixture; the scorer shifts
the recalls by the query's rows), so the stage keeps every such entry within ``SCREEN_MARGIN`` of
the screen's k-th best, at most ``SHORTLIST_MARGIN_CAP x shortlist``."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import fitsketch
from fitsketch import accuracy as A
from fitsketch import pipeline

MEANS = np.array([5.0, 10.0, 15.0])     # class k's features ~ N(MEANS[k], 1.5) in every column
D = 4
N = 12                                   # entries; shortlist=2: the stage runs above 4 x 2


def _rows(rng, y):
    return pd.DataFrame(rng.normal(MEANS[y][:, None], 1.5, size=(len(y), D)), columns=[f"x{i}" for i in range(D)])


def _model(X, y):
    """Nearest class mean of the entry's rows, over its training classes (sorted)."""
    cls = np.unique(y)
    means = np.stack([X[y == c].mean(axis=0) for c in cls])
    return lambda V: -((np.asarray(V, np.float64)[:, None, :] - means[None, :, :]) ** 2).sum(axis=2)


def _hub(tmp_path, rng):
    """N labelled entries of random class mixtures, each with a model fitted on its rows and measured on
    validation rows of its mixture (the screen is then a proxy), and a query of its own mixture."""
    hub = fitsketch.open(tmp_path / "h", create=True)
    for i in range(N):
        pi = rng.dirichlet(np.full(3, 0.7))
        y = rng.choice(3, 120, p=pi)
        y[:3] = [0, 1, 2]                       # every class present (the model has 3 outputs)
        X = _rows(rng, y)
        yv = rng.choice(3, 60, p=pi)
        noisy = X.to_numpy() + rng.normal(0, float(rng.uniform(0.5, 4.0)), X.shape)   # models of varied skill
        hub.add(f"e{i}", X, labels=y, model=_model(noisy, y), validation=(_rows(rng, yv), yv))
    q = _rows(rng, rng.choice(3, 150, p=rng.dirichlet(np.ones(3))))
    return hub, q


def _screen_scores(hub, q) -> dict:
    """Reference of the stage's proxy: each entry's stored recalls x the EM mixture of the query over
    the pooled class records of every entry."""
    from fitsketch.storage import u64

    names = list(q.columns)
    got = []
    with hub.store.read() as txn:
        for key in txn.keys("entries"):
            rec = txn.get("entries", key)
            cl = txn.get("extra", u64(rec["id"]))["classes"]
            got.append((rec["name"], cl, {sf: names.index(n) for sf, n in enumerate(rec["features"])},
                        rec["features"]))
    labels = sorted({c for _, cl, _, _ in got for c in cl["labels"]})
    # the mixture as the scorer estimates it: EM over the pooled class Gaussians where every entry
    # carries one (these entries do), else over naive Bayes
    pl = A.class_pool_of([(cl, feats, fm) for _, cl, fm, feats in got], labels, names)
    pi = A.em_mixture(A.mixture_loglik(q, pl, names, ["numeric"] * len(names), hub.config,
                                       hub.config.accuracy_temperature)[0])
    return {n: float(np.dot(A.recall_vector(cl["perf"], pl["labels"]), pi)) for n, cl, _, _ in got}


def _stage(plan):
    return next(s for s in plan.stages if s.name == "shortlist")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_margin_keeps_every_entry_screened_within_it(tmp_path, seed, monkeypatch):
    """The stage keeps the top 2 by the screen and every entry within the margin of its 2nd best (the
    reference's count, for a random margin); a margin covering every entry gives the exhaustive
    answer, names and scores."""
    rng = np.random.default_rng(seed)
    hub, q = _hub(tmp_path, rng)
    kw = dict(k=2, method="accuracy", shortlist=2, accuracy_bootstrap=0)
    with hub:
        s = _screen_scores(hub, q)
        v = np.sort(np.array(list(s.values())))[::-1]
        margin = float(rng.uniform(0.0, v[1] - v[-1]))
        if np.min(np.abs(v - (v[1] - margin))) < 1e-9:   # pragma: no cover - a score on the cut itself
            margin += 1e-6
        monkeypatch.setattr(A, "SCREEN_MARGIN", margin)
        st = _stage(hub.explain(q, **kw))
        assert st.actual == int((v >= v[1] - margin).sum())
        assert "within" in st.detail and "capped" not in st.detail
        monkeypatch.setattr(A, "SCREEN_MARGIN", 1.0)
        full = hub.search(q, k=2, method="accuracy", shortlist=0, accuracy_bootstrap=0)
        short = hub.search(q, **kw)
        assert _stage(hub.explain(q, **kw)).actual == N
    assert [(m.name, m.score) for m in short] == [(m.name, m.score) for m in full]


@pytest.mark.parametrize("seed", [0, 1])
def test_the_margin_is_capped_and_says_so(tmp_path, seed, monkeypatch):
    """More entries within the margin than SHORTLIST_MARGIN_CAP x shortlist: the best of them are kept
    up to the cap and the plan says the recall is not held."""
    rng = np.random.default_rng(seed)
    hub, q = _hub(tmp_path, rng)
    monkeypatch.setattr(A, "SCREEN_MARGIN", 1.0)
    monkeypatch.setattr(pipeline, "SHORTLIST_MARGIN_CAP", 3)       # at most 3 x 2 = 6 entries
    with hub:
        s = _screen_scores(hub, q)
        st = _stage(hub.explain(q, k=2, method="accuracy", shortlist=2, accuracy_bootstrap=0))
        short = hub.search(q, k=6, method="accuracy", shortlist=2, accuracy_bootstrap=0)
    assert st.actual == 6 and "recall not held" in st.detail and st.recall is None
    best6 = sorted(s, key=lambda n: -s[n])[:6]
    assert {m.name for m in short} == set(best6)


@pytest.mark.parametrize("seed", [0, 1])
def test_class_accuracy_models_are_screened_exactly_without_a_margin(tmp_path, seed, monkeypatch):
    """class_accuracy= recalls are what the scorer uses: the screen is exact, the margin never widens it."""
    rng = np.random.default_rng(seed)
    monkeypatch.setattr(A, "SCREEN_MARGIN", 1.0)
    with fitsketch.open(tmp_path / "h", create=True) as hub:
        for i in range(N):
            y = rng.choice(3, 100, p=rng.dirichlet(np.ones(3)))
            y[:3] = [0, 1, 2]
            hub.add(f"e{i}", _rows(rng, y), labels=y,
                    class_accuracy={c: float(rng.uniform(0.2, 1.0)) for c in range(3)})
        q = _rows(rng, rng.choice(3, 150, p=rng.dirichlet(np.ones(3))))
        st = _stage(hub.explain(q, k=2, method="accuracy", shortlist=2, accuracy_bootstrap=0))
    assert st.actual == 2 and "within" not in st.detail

def test_ties_among_given_models_at_the_cut_are_all_kept(tmp_path):
    """Models registered with class_accuracy= are screened exactly: when many tie at the cut, the
    stage keeps them all, so the shortlisted answer equals shortlist=0's (ties broken by name)."""
    rng = np.random.default_rng(int(np.random.default_rng().integers(1 << 31)))
    cfg = fitsketch.SketchConfig(shortlist=2)
    n = int(rng.integers(10, 16))
    with fitsketch.open(tmp_path / "h", create=True, config=cfg) as hub:
        for i in reversed(range(n)):        # added in reverse name order
            y = rng.choice(3, 90)
            y[:3] = [0, 1, 2]
            hub.add(f"n{i:02d}", _rows(rng, y), labels=y, class_accuracy={0: 0.9, 1: 0.6, 2: 0.3})
        q = _rows(rng, rng.choice(3, 80))
        got = hub.search(q, k=2, method="accuracy", accuracy_bootstrap=0)
        want = hub.search(q, k=2, method="accuracy", shortlist=0, accuracy_bootstrap=0)
        assert [m.name for m in got] == [m.name for m in want]
        assert [m.score for m in got] == [m.score for m in want]
