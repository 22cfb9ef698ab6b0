"""The benchmark runner (bench/__main__.py) and its one harness (bench/harness.py): every benchmark
module is a registered suite, one timer summarises samples as NumPy does, rows of one schema, a
RESULTS.md listing every row, quick runs that never touch a tracked file.

Fast: tiny synthetic results and fake suites, plus one small real suite (recon --quick).
Random samples are seeded; the seed is in every failure message.
"""
from __future__ import annotations

import json

import numpy as np
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
    """One real (small) suite through `python -m bench` with --out: every tracked file under bench/
    keeps its bytes, and the result and its RESULTS.md land in the temp folder."""
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
    r = subprocess.run([sys.executable, "-m", "bench", "recon", "--quick", "--device", "cpu", "--out", str(out)],
                       cwd=root, capture_output=True, text=True, timeout=600,
                       env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert (out / "recon_quick.json").exists() and (out / "RESULTS.md").exists()
    payload = json.loads((out / "recon_quick.json").read_text())
    assert payload["quick"] is True and H.follows_schema(payload["rows"])
    assert {r["metric"] for r in payload["rows"]} == {"time_p50", "speedup", "max_abs_diff"}
    changed = [str(p.relative_to(root)) for p, h in digest().items() if before[p] != h]
    assert changed == []


# ----------------------------------------------------------------------------- the registry
def _bench_dir():
    from pathlib import Path

    return Path(H.__file__).resolve().parent


def _defines(path, name: str) -> bool:
    import ast

    return any(isinstance(n, ast.FunctionDef) and n.name == name for n in ast.parse(path.read_text()).body)


def test_every_benchmark_module_is_a_registered_suite():
    """Every bench/bench_*.py, and every other module defining suite(), is in the runner's registry,
    `all` runs every registered suite, and each registered module defines suite(opts)."""
    M = pytest.importorskip("bench.__main__")
    registered = {s.module for s in M.SUITES.values()}
    bench_dir = _bench_dir()
    modules = {f"bench.{f.stem}" for f in bench_dir.glob("bench_*.py")}
    modules |= {f"bench.{f.stem}" for f in bench_dir.glob("*.py") if _defines(f, "suite")}
    assert modules - registered == set(), "benchmark modules missing from bench.__main__.SUITES"
    assert set(M.GROUPS["all"]) == set(M.SUITES)
    for name, s in M.SUITES.items():
        f = bench_dir / (s.module.split(".", 1)[1] + ".py")
        assert f.exists() and _defines(f, "suite"), f"{s.module} defines no suite(opts)"
        loaded = s.load()                                  # the loader imports the module it names
        assert loaded.__name__ == s.module and callable(loaded.suite), name
    for group, names in M.GROUPS.items():
        assert set(names) <= set(M.SUITES), group


def test_no_benchmark_times_by_hand():
    """Wall and CPU clocks are read in bench/harness.py only (the one timer)."""
    import ast

    bad = []
    for f in sorted(_bench_dir().glob("*.py")):
        if f.name == "harness.py":
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("perf_counter", "process_time", "monotonic",
                                                                  "perf_counter_ns", "thread_time"):
                bad.append(f"{f.name}:{node.lineno}")
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and "perf_counter" in node.value:
                bad.append(f"{f.name}:{node.lineno} (in code run elsewhere)")
    assert bad == []


def test_no_copy_of_the_js_reference_in_bench():
    """The exact JS baseline is the engine's partitions.js_divergence, not a copy in bench/."""
    import ast

    for f in sorted(_bench_dir().glob("*.py")):
        names = {n.name for n in ast.walk(ast.parse(f.read_text())) if isinstance(n, ast.FunctionDef)}
        assert not names & {"exact_js", "js_divergence", "plogp"}, f.name
    jslsh = (_bench_dir() / "bench_jslsh.py").read_text()
    assert "from fitsketch.partitions import js_divergence" in jslsh


def test_exact_js_bits_is_the_engines_divergence_and_nats_times_ln2():
    """bench_jslsh's pairwise baseline equals partitions.js_divergence row by row (bits), and the
    natural-log JS of the removed copy is that times ln 2 (checked against scipy)."""
    import math

    B = pytest.importorskip("bench.bench_jslsh")
    from scipy.spatial.distance import jensenshannon

    from fitsketch.partitions import js_divergence

    seed = 20261130
    rng = np.random.default_rng(seed)
    for m, n, d in ((1, 1, 1), (3, 5, 7), (2, 9, 16)):
        p = rng.dirichlet(np.full(d, 0.5), size=m)
        q = rng.dirichlet(np.full(d, 0.5), size=n)
        q[0, : d // 2] = 0.0                               # zeros in one distribution only
        q[0] /= q[0].sum() if q[0].sum() > 0 else 1.0
        got = B.exact_js_bits(p, q, block=2)
        for i in range(m):
            np.testing.assert_allclose(got[i], js_divergence(p[i], q), rtol=0, atol=1e-15,
                                       err_msg=f"seed {seed}, shape {(m, n, d)}")
            for j in range(n):
                ref_nats = jensenshannon(p[i], q[j]) ** 2      # scipy: the JS distance, natural log
                assert got[i, j] * math.log(2) == pytest.approx(ref_nats, abs=1e-12), f"seed {seed}, {(i, j)}"


# ----------------------------------------------------------------------------- the timer
def test_stats_percentiles_equal_numpys_on_random_samples():
    seed = int(np.random.SeedSequence().entropy) % (1 << 32)
    rng = np.random.default_rng(seed)
    for n in (1, 2, 3, 7, 10, 20, 101):
        t = rng.exponential(0.01, size=n)
        s = H.stats(t.tolist())
        msg = f"seed {seed}, n {n}"
        assert s["n"] == n, msg
        assert s["p50_s"] == pytest.approx(float(np.percentile(t, 50)), rel=0, abs=0), msg
        assert s["p50_s"] == s["median_s"] == pytest.approx(float(np.median(t)), rel=1e-15), msg
        assert s["p90_s"] == float(np.percentile(t, 90)), msg
        assert s["p99_s"] == float(np.percentile(t, 99)), msg
        assert s["mean_s"] == pytest.approx(float(t.mean()), rel=1e-12), msg
        assert (s["min_s"], s["max_s"]) == (float(t.min()), float(t.max())), msg
        assert s["iqr_s"] == pytest.approx(float(np.percentile(t, 75) - np.percentile(t, 25)), abs=1e-15), msg
        assert s["times_s"] == t.tolist(), msg
    assert H.stats([3.0, 1.0, 2.0, 4.0])["p50_s"] == 2.5             # interpolated, not the nearest rank
    assert H.stats([float(i) for i in range(1, 11)])["p90_s"] == pytest.approx(9.1)
    with pytest.raises(ValueError):
        H.stats([])


def test_timeit_runs_warmup_then_repeats_and_keeps_the_last_result():
    calls = []

    def fn():
        calls.append(len(calls))
        return len(calls)

    t = H.timeit(fn, repeats=4, warmup=2, cpu=True)
    assert len(calls) == 6 and t["n"] == 4 and len(t["times_s"]) == 4
    assert t["result"] == 6
    assert t["cpu"]["n"] == 4
    assert all(x >= 0 for x in t["times_s"]) and t["min_s"] <= t["p50_s"] <= t["p90_s"] <= t["max_s"]
    calls.clear()
    t = H.timeit(fn, repeats=0, warmup=0)          # at least one timed run
    assert len(calls) == 1 and t["n"] == 1


def test_time_each_one_call_per_item_warmup_and_budget():
    seen = []
    t = H.time_each(lambda x: seen.append(x) or x * 2, [5, 6, 7], warmup=1)
    assert seen == [5, 5, 6, 7] and t["result"] == [10, 12, 14] and t["n"] == 3
    seen.clear()
    t = H.time_each(lambda x: seen.append(x), range(100), budget_s=0.0)   # the budget is spent after one call
    assert t["n"] == 1 and seen == [0]
    s = H.Samples()
    assert [s.call(lambda a, b=0: a + b, i, b=1) for i in range(3)] == [1, 2, 3]
    assert s.stats()["n"] == 3 and s.stats()["cpu"]["n"] == 3 and s.total_s() == pytest.approx(sum(s.wall))


def test_interleaved_alternates_contenders():
    order = []
    out = H.interleaved({"a": lambda: order.append("a") or 1, "b": lambda: order.append("b") or 2}, repeats=3,
                        warmup=1)
    assert order == ["a", "b"] * 4
    assert out["a"]["n"] == out["b"]["n"] == 3 and out["a"]["result"] == 1 and out["b"]["result"] == 2
    assert out["a"]["median_cpu_s"] == out["a"]["cpu"]["p50_s"]


# ----------------------------------------------------------------------------- the runner
def test_quick_results_default_to_the_untracked_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(H, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(H, "QUICK_RESULTS", tmp_path / "results" / "quick")
    ctx = H.context("cpu", quick=True)
    p = H.write_suite("toy_quick", [H.row(ctx, "toy", "w", "m", "x", 1.0)], quick=True, env={"device": "cpu"})
    assert p == tmp_path / "results" / "quick" / "toy_quick.json"
    p = H.write_suite("toy", [H.row(H.context("cpu"), "toy", "w", "m", "x", 1.0)], env={"device": "cpu"})
    assert p == tmp_path / "results" / "toy.json"
    assert H.results_dir(tmp_path / "x", quick=True) == tmp_path / "x"
    import subprocess
    from pathlib import Path

    root = Path(H.__file__).resolve().parent.parent
    ign = subprocess.run(["git", "check-ignore", "-q", "bench/results/quick/anything_quick.json"], cwd=root)
    if ign.returncode in (0, 1):          # 128: not a git checkout
        assert ign.returncode == 0, "bench/results/quick/ must be git-ignored"


def test_runner_runs_every_named_suite_and_reports_a_failure(tmp_path, monkeypatch, capsys):
    import sys
    import types

    M = pytest.importorskip("bench.__main__")
    ran = []

    def fake(name, fail=False):
        mod = types.ModuleType(f"bench._fake_{name}")

        def suite(opts):
            ran.append((name, opts.quick, opts.out_dir, opts.seed))
            if fail:
                raise RuntimeError("boom")
            H.write_suite(f"{name}_quick", [H.row(H.context("cpu", True), name, "w", "m", "x", 1.0)],
                          out=opts.out_dir, quick=True, env={"device": "cpu"})

        mod.suite = suite
        monkeypatch.setitem(sys.modules, mod.__name__, mod)
        return mod.__name__

    def entry(modname):
        return M.Suite(modname, "", lambda: sys.modules[modname])

    suites = {"one": entry(fake("one")), "bad": entry(fake("bad", fail=True)), "two": entry(fake("two"))}
    monkeypatch.setattr(M, "SUITES", suites)
    monkeypatch.setattr(M, "GROUPS", {"all": tuple(suites)})
    out = tmp_path / "res"
    code = M.main(["all", "--quick", "--seed", "3", "--out", str(out)])
    assert code == 1
    assert [r[0] for r in ran] == ["one", "bad", "two"]          # the failure did not stop the others
    assert all(r[1] is True and r[2] == out.resolve() and r[3] == 3 for r in ran)
    assert (out / "one_quick.json").exists() and (out / "two_quick.json").exists()
    assert (out / "RESULTS.md").exists()
    err = capsys.readouterr().err
    assert "bad: RuntimeError: boom" in err
    ran.clear()
    assert M.main(["two", "one", "two", "--quick", "--out", str(out)]) == 0
    assert [r[0] for r in ran] == ["two", "one"]                 # each named suite once, in the order given
