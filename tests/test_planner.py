"""The query planner: stage order chosen from hub statistics, explain equals what ran, the FAISS
embedding shortlist as a candidate stage."""
from __future__ import annotations

import pandas as pd
import pytest

import fitsketch
import fitsketch.planner as planner
from fitsketch import errors as E
from fitsketch.config import SketchConfig


def _frame(rng, shift, n=60):
    return pd.DataFrame({"a": rng.normal(shift, 1, n), "b": rng.integers(0, 5, n), "c": rng.choice(["x", "y"], n)})


def test_candidate_mode_follows_the_stored_feature_count():
    assert planner.choose_candidate_stage(10, 5, 32)[0] == "scan"
    assert planner.choose_candidate_stage(planner.SCAN_FEATURE_LIMIT + 1, 5, 32)[0] == "lsh"
    assert planner.order_filter_first("scan") and not planner.order_filter_first("lsh")


@pytest.mark.parametrize("scan_limit,first", [(10**9, "filter"), (0, "candidates")])
def test_filter_order_and_explain_match_what_ran(rng, tmp_path, monkeypatch, scan_limit, first):
    """Constructed statistics: a tiny scan limit forces the LSH stage, which must run before the
    filter; otherwise the filter runs first. The plan's actual counts are what the search did."""
    monkeypatch.setattr(planner, "SCAN_FEATURE_LIMIT", scan_limit)
    with fitsketch.open(tmp_path / "h", config=SketchConfig(partition_size=30)) as hub:
        for i in range(6):
            hub.add(f"e{i}", _frame(rng, i), metadata={"team": "a" if i % 2 else "b"})
        q = _frame(rng, 3)
        plan = hub.explain(q, where={"team": "a"}, k=2, method="exact-js")
        names = [s.name for s in plan.stages]
        assert names.index(first) < names.index({"filter": "candidates", "candidates": "filter"}[first])
        res = hub.search(q, where={"team": "a"}, k=2, method="exact-js")
        stage = {s.name: s for s in plan.stages}
        assert stage["rerank"].actual == len(res) == 2
        assert all(hub.get(m.name).metadata["team"] == "a" for m in res)
        if first == "filter":
            assert stage["filter"].actual == 3 and stage["candidates"].estimated == 3
        else:
            assert stage["filter"].estimated == stage["candidates"].actual
        assert stage["score"].estimated == stage["score"].actual


def test_embedding_shortlist_is_a_candidate_stage(rng, tmp_path):
    centers = rng.normal(size=(5, 16))
    with fitsketch.open(tmp_path / "h", config=SketchConfig(partition_size=30)) as hub:
        for i in range(5):
            hub.add(f"e{i}", _frame(rng, 0), embedding=centers[i] + 0.01 * rng.normal(size=(60, 16)))
        q = _frame(rng, 0)
        plan = hub.explain(q, embedding=centers[3], embedding_candidates=2, method="exact-js")
        assert [s.name for s in plan.stages][:3] == ["sketch", "embedding", "candidates"]
        assert plan.stages[1].actual == 2 and plan.stages[2].estimated == 2
        res = hub.search(q, embedding=centers[3], embedding_candidates=1, method="exact-js")
        assert [m.name for m in res] == ["e3"]
        with pytest.raises(E.InvalidArgumentError, match="embedding_candidates"):
            hub.search(q, embedding=centers[3], embedding_candidates=0)
