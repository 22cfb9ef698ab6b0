"""The method registry (engine/methods/): every built-in method is found by name and declares what
it needs; a method added from outside is one class plus one ``register`` line, and the hub, the
planner and the sharded hub use it without any other change."""
import numpy as np
import pandas as pd
import pytest

import fitsketch
from fitsketch import errors as E
from fitsketch import methods, planner
from fitsketch.methods import Method, ShortlistRule


def _frame(rng, n, shift=0.0):
    return pd.DataFrame({"a": rng.normal(shift, 1.0, n), "b": rng.normal(2 * shift, 1.0, n)})


class MeanGap(Method):
    """A toy method: minus the gap between the query's and the entry's mean of each matched column
    (from the stored sums / counts), scored from the entry record alone."""
    name = "mean-gap"
    shortlist = ShortlistRule(None)

    def score(self, ctx, query, cands):
        out = []
        for rec, al in cands:
            gap = sum(abs(query.sums[t] / query.counts[t] - rec["sums"][s] / rec["counts"][s]) for t, s, _ in al.pairs)
            out.append(ctx.match(rec, al, query, -gap, self.name, {"gap": gap}))
        return out


@pytest.fixture
def toy():
    methods.register(MeanGap())
    yield
    methods.unregister("mean-gap")


def test_builtin_methods_are_the_registry(toy):
    assert fitsketch.METHODS[:8] == ("auto", "accuracy", "adaptivity", "coverage", "js", "exact-js", "l2", "simex")
    assert "mean-gap" in fitsketch.METHODS and "mean-gap" in fitsketch.config.METHODS
    for name in fitsketch.METHODS:
        assert methods.get(name).name == name
    assert {m for m in fitsketch.METHODS if methods.ROWS in methods.get(m).needs} == {"coverage", "simex", "accuracy",
                                                                                         "auto"}
    with pytest.raises(E.UnknownMethodError, match="mean-gap"):
        methods.get("nope")
    with pytest.raises(E.InvalidArgumentError):
        methods.register(MeanGap())          # a name is registered once
    with pytest.raises(E.InvalidArgumentError):
        methods.unregister("js")             # built-in


def test_a_registered_method_searches_through_hub_planner_and_shards(tmp_path, rng, toy):
    shifts = [0.0, 0.5, 1.5, 3.0]
    frames = [_frame(rng, 300, s) for s in shifts]
    q = _frame(rng, 200, 0.4)
    with fitsketch.open(tmp_path / "h") as hub:
        for i, f in enumerate(frames):
            hub.add(f"e{i}", f)
        got = hub.search(q, k=4, method="mean-gap")
        # the reference: the same gap from the data's own means (the sketch sums every value)
        want = sorted(((-sum(abs(q[c].mean() - f[c].mean()) for c in "ab"), f"e{i}") for i, f in enumerate(frames)),
                      reverse=True)
        assert [m.name for m in got] == [n for _, n in want]
        np.testing.assert_allclose([m.score for m in got], [s for s, _ in want], rtol=1e-9)
        assert all(m.method == "mean-gap" and m.features for m in got)
        plan = hub.explain(q, k=2, method="mean-gap", shortlist=1)
        assert [s.name for s in plan.stages] == ["sketch", "candidates", "score", "rerank"]   # no screen declared
        assert planner.use_shortlist(10_000, 8, "mean-gap")[0] is False
    with fitsketch.open_sharded([tmp_path / "s0", tmp_path / "s1"]) as sh:
        for i, f in enumerate(frames):
            sh.add(f"e{i}", f)
        assert [(m.name, m.score) for m in sh.search(q, k=4, method="mean-gap")] == [(m.name, m.score) for m in got]
