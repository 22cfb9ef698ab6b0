"""The benchmark harness writes rows of one schema and a RESULTS.md listing every row.

Fast (no timing, no real benchmark): a tiny synthetic result through bench.harness.
"""
from __future__ import annotations

import json

import pytest

H = pytest.importorskip("bench.harness")


def _rows():
    ctx = H.context("cpu", quick=True)
    return [
        H.row(ctx, "quality", "toy", "adaptivity", "top1_error", 0.25, baseline="source-accuracy",
              baseline_value=0.5, targets=4),
        H.row(ctx, "quality", "toy", "l2", "pearson", 0.8, baseline="source-accuracy", baseline_value=0.0),
        H.row(ctx, "scale", "1000 entries", "adaptivity", "query_p50", 123.0, unit="ms",
              baseline="issue target (at 1M)", baseline_value=50.0),
        H.row(ctx, "scale", "1000 entries", "add_sketch", "add_throughput", float("nan"), unit="entries/s"),
    ]


@pytest.fixture(autouse=True)
def _no_git(monkeypatch):
    monkeypatch.setattr(H, "git_commit", lambda: "abc1234")  # no subprocess: fast and hermetic


def test_rows_json_schema_and_results_md(tmp_path):
    results = tmp_path / "results"
    rows = _rows()
    path = H.write_suite("toy_quick", rows, out=results, quick=True, plots=["toy.png"],
                         tables={"notes": ["a toy note"]}, env={"device": "cpu", "commit": "abc"})
    payload = json.loads(path.read_text())
    assert payload["suite"] == "toy_quick" and payload["quick"] is True
    assert len(payload["rows"]) == len(rows)
    for r in payload["rows"]:
        for k in H.REQUIRED_KEYS:
            assert k in r, k
        assert isinstance(r["version"], str) and r["version"]
        assert isinstance(r["commit"], str) and r["commit"]
        assert r["device"] == "cpu"
        assert "T" in r["timestamp"]
    by_metric = {r["metric"]: r for r in payload["rows"]}
    assert by_metric["top1_error"]["ratio"] == pytest.approx(0.5)
    assert by_metric["pearson"]["ratio"] is None            # zero baseline: no ratio
    assert by_metric["query_p50"]["ratio"] == pytest.approx(123.0 / 50.0)
    assert by_metric["add_throughput"]["value"] is None     # NaN is written as null, never NaN

    # a file in another benchmark's own format (bench._common.write_result) is listed too
    (results / "other.json").write_text(json.dumps({"benchmark": "other", "commit": "abc",
                                                    "rows": [{"path": "kernel x", "sets/s": 1234.5}]}))
    md_path = H.write_results_md(results, tmp_path / "RESULTS.md")
    md = md_path.read_text()
    assert "## toy_quick (`toy_quick.json`)" in md
    assert "## other (`other.json`)" in md and "kernel x" in md
    lines = md.splitlines()
    for r in rows:
        assert any(f"| {r['workload']} | {r['method']} | {r['metric']} |" in line for line in lines), r["metric"]
    assert "| toy | adaptivity | top1_error | 0.25 |" in md
    assert "![toy.png](results/toy.png)" in md
    assert "a toy note" in md


def test_row_requires_schema(tmp_path):
    with pytest.raises(ValueError):
        H.write_suite("bad", [{"metric": "x", "value": 1.0}], out=tmp_path)
