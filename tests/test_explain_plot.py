"""hub.explain(...).plot(): the arrays it draws are the search's own numbers (scores, intervals,
the class mixture and recalls whose product is each predicted accuracy, the top match's most
different features), checked against the explain result, not against pixels."""
from __future__ import annotations

import sys

import numpy as np
import pytest

import fitsketch
from fitsketch import datasets, plots
from fitsketch.errors import InvalidArgumentError, MissingDependencyError
from fitsketch.planner import Plan


@pytest.fixture
def zoo(tmp_path, rng):
    """Three labelled entries (two with registered per-class recalls, one with the fallback) and
    one without labels; a query of fresh random class shares."""
    shares = rng.dirichlet(np.ones(datasets.CLASSES))
    recall = {c: float(r) for c, r in enumerate(rng.uniform(0.5, 1.0, datasets.CLASSES))}
    hub = fitsketch.open(tmp_path / "hub")
    z = datasets.model_zoo(n=int(rng.integers(150, 260)))
    hub.add("model-a", z["model-a"], labels="label", class_accuracy={0: recall[0], 1: recall[1]})
    hub.add("model-b", z["model-b"], labels="label", class_accuracy=recall)
    hub.add("model-c", z["model-c"], labels="label")                       # recall from class counts
    hub.add("plain", z["model-c"].drop(columns="label"))                   # no labels: label-free group
    q = datasets.blobs(int(rng.integers(80, 200)), class_shares=shares, seed=int(rng.integers(1 << 30)),
                       labels=False)
    yield hub, q, recall
    hub.close()


def test_explain_data_equals_the_search(zoo):
    hub, q, recall = zoo
    plan = hub.explain(q, k=4)
    res = hub.search(q, k=4)
    d = plots.explain_data(plan)
    assert d["names"] == [m.name for m in res] == [m.name for m in plan.matches]
    np.testing.assert_allclose(d["scores"], [m.score for m in res], rtol=0, atol=1e-12)
    assert d["methods"] == [m.method for m in res]
    for m, iv in zip(res, d["intervals"]):
        if "interval" in m.evidence:
            np.testing.assert_allclose(iv, m.evidence["interval"], atol=0)
        else:
            assert np.isnan(iv).all()
    mix = d["mixture"]
    acc = [m for m in res if m.method == "accuracy"]
    assert mix["models"] == [m.name for m in acc] and len(acc) == 3
    assert mix["classes"] == ["0", "1", "2", "3"]
    assert mix["mixture"].sum() == pytest.approx(1.0, abs=1e-9) and (mix["mixture"] >= 0).all()
    for m, r in zip(acc, mix["recall"]):   # predicted accuracy = share . recall, for every model
        assert float(mix["mixture"] @ r) == pytest.approx(m.score, abs=1e-9)
        top = {c: round(float(p), 4) for c, p in zip(mix["classes"], mix["mixture"]) if p > 0}
        for c, p in m.evidence["mixture"].items():   # the evidence's top classes are the mixture's
            assert top[c] == pytest.approx(p, abs=1e-4)
    ra = mix["recall"][mix["models"].index("model-a")]
    np.testing.assert_allclose(ra[2:], 0.0, atol=0)           # never saw classes 2 and 3
    rb = mix["recall"][mix["models"].index("model-b")]
    np.testing.assert_allclose(rb, [recall[c] for c in range(4)], atol=1e-12)
    # the label-free entry ranks after the labelled ones, with no recall row
    assert d["names"][-1] == "plain" and d["methods"][-1] == "coverage"   # methods/accuracy.LABEL_FREE


def test_given_mixture_is_drawn(zoo):
    hub, q, recall = zoo
    plan = hub.explain(q, k=3, method="accuracy", mixture={2: 1, 3: 3})
    mix = plots.explain_data(plan)["mixture"]
    np.testing.assert_allclose(mix["mixture"], [0, 0, 0.25, 0.75], atol=1e-12)
    for m in plan.matches:
        r = mix["recall"][mix["models"].index(m.name)]
        assert float(mix["mixture"] @ r) == pytest.approx(m.score, abs=1e-9)


def test_label_free_plan_has_no_mixture_and_ranked_features(zoo):
    hub, q, _ = zoo
    plan = hub.explain(q, k=2, method="coverage")
    d = plots.explain_data(plan)
    assert d["mixture"] is None
    top = plan.matches[0]
    assert {(t, s) for t, s, *_ in d["features"]} == {(t, s) for t, s, _ in top.features}
    jsd = [f[3] for f in d["features"]]
    assert jsd == sorted(jsd, reverse=True)
    assert all("overlap" in note for note in d["notes"])


def test_plot_draws_the_scores_and_the_mixture(zoo, tmp_path):
    pytest.importorskip("matplotlib")
    hub, q, _ = zoo
    plan = hub.explain(q, k=4)
    d = plots.explain_data(plan)
    fig = plan.plot()
    score_ax, mix_ax = fig.axes[0], fig.axes[1]
    widths = [p.get_width() for p in score_ax.patches]
    np.testing.assert_allclose(widths, d["scores"], atol=1e-12)         # one bar per match, its score
    heights = np.array([p.get_height() for p in mix_ax.patches]).reshape(1 + len(d["mixture"]["models"]), -1)
    np.testing.assert_allclose(heights[0], d["mixture"]["mixture"], atol=1e-12)
    np.testing.assert_allclose(heights[1:], d["mixture"]["recall"], atol=1e-12)
    assert len(fig.axes) == 2 + min(3, len(d["features"]))                 # no empty panel
    assert all(ax.get_xlabel() for ax in fig.axes)
    out = plan.plot(tmp_path / "why.png")
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_plot_needs_matplotlib_and_a_local_plan(zoo, monkeypatch):
    hub, q, _ = zoo
    plan = hub.explain(q, k=2)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MissingDependencyError, match=r"fitsketch\[plot\]"):
        plan.plot()
    monkeypatch.undo()
    with pytest.raises(InvalidArgumentError, match="embedded hub"):
        Plan("auto", 3).plot()          # a plan that came over the socket carries no matches


def test_cli_search_why(zoo, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    import json

    from fitsketch.cli import main

    hub, q, _ = zoo
    want = [(m.name, m.score) for m in hub.search(q, k=3)]
    path = hub.path
    hub.close()
    csv = tmp_path / "q.csv"
    q.to_csv(csv, index=False)
    png = tmp_path / "why.png"
    assert main(["search", str(path), str(csv), "-k", "3", "--why", str(png), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert [(r["name"], r["score"]) for r in got] == want        # --why draws the search it prints
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
