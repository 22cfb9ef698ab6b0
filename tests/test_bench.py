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


def test_results_md_links_summary_and_keeps_quick_runs_apart(tmp_path):
    results = tmp_path / "results"
    ctx = H.context("cpu", quick=False)
    H.write_suite("toy", [H.row(ctx, "toy", "w", "m", "full_metric", 1.0)], out=results, env={"device": "cpu"})
    H.write_suite("toy_quick", [H.row(H.context("cpu", quick=True), "toy", "w", "m", "quick_metric", 2.0)],
                  out=results, quick=True, env={"device": "cpu"})
    (results / "kern_quick.json").write_text(json.dumps({"benchmark": "kern", "quick": True,
                                                         "rows": [{"path": "kernel q"}]}))
    summary = "## Summary\n\nA hand-written paragraph that must not be copied.\n"
    (tmp_path / "SUMMARY.md").write_text(summary)
    md = H.write_results_md(results, tmp_path / "RESULTS.md").read_text()
    assert "must not be copied" not in md and "(SUMMARY.md)" in md
    full_at, quick_at = md.index("## Full runs"), md.index("## Quick runs")
    assert full_at < md.index("full_metric") < quick_at
    assert md.index("quick_metric") > quick_at and md.index("kernel q") > quick_at


def _writer_calls_without_out():
    """Calls in bench/*.py to a result writer (write_result / write_suite) that pass no ``out``:
    such a call writes into the tracked bench/results whatever ``--out`` said."""
    import ast
    from pathlib import Path

    bad = []
    for f in sorted((Path(H.__file__).parent).glob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "attr", getattr(node.func, "id", None))
                if name in ("write_result", "write_suite") and not any(k.arg == "out" for k in node.keywords):
                    bad.append(f"{f.name}:{node.lineno}")
    return bad


def test_every_bench_writer_honours_out():
    assert _writer_calls_without_out() == []


def test_quick_bench_into_temp_dir_leaves_tracked_files_alone(tmp_path):
    """One real (small) suite through `python -m bench speed`'s path with --out: every tracked file
    under bench/ keeps its bytes, and the result lands in the temp folder."""
    import hashlib
    import subprocess
    import sys
    from pathlib import Path

    root = Path(H.__file__).resolve().parent.parent
    ls = subprocess.run(["git", "ls-files", "bench"], cwd=root, capture_output=True, text=True)
    if ls.returncode != 0 or not ls.stdout.strip():
        pytest.skip("not a git checkout")
    tracked = [root / p for p in ls.stdout.split()]

    def digest():
        return {p: hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else None for p in tracked}

    before = digest()
    out = tmp_path / "results"
    code = ("import sys, bench.__main__ as M; from pathlib import Path; "
            "M.SPEED_MODULES = ('bench.bench_recon',); "
            "sys.exit(M.main(['speed', '--quick', '--device', 'cpu', '--out', sys.argv[1]]))")
    r = subprocess.run([sys.executable, "-c", code, str(out)], cwd=root, capture_output=True, text=True,
                       timeout=600, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert (out / "recon_quick.json").exists() and (tmp_path / "RESULTS.md").exists()
    changed = [str(p.relative_to(root)) for p, h in digest().items() if before[p] != h]
    assert changed == []
