"""The command line, run as a user runs it: a real process, real files, exit codes, --json."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest





def test_console_entry_point_runs_as_a_process(tmp_path):
    """One real process: the installed module runs and a bad input exits 2 with one line."""
    env = dict(os.environ, FITSKETCH_DEVICE="cpu")
    p = subprocess.run([sys.executable, "-m", "fitsketch.cli", "show", str(tmp_path / "missing")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "[not_found]" in p.stderr


@pytest.fixture
def files(tmp_path, rng):
    out = {}
    for i, shift in enumerate([0, 5, 10]):
        df = pd.DataFrame({"a": rng.normal(shift, 1, 300), "b": rng.choice(["x", "y", "z"], 300)})
        out[f"s{i}"] = tmp_path / f"s{i}.csv"
        df.to_csv(out[f"s{i}"], index=False)
    q = pd.DataFrame({"a": rng.normal(5, 1, 200), "b": rng.choice(["x", "y", "z"], 200)})
    out["q"] = tmp_path / "q.parquet"
    q.to_parquet(out["q"])
    return out


def test_cli_end_to_end(tmp_path, files, run):
    hub = tmp_path / "hub"
    info = json.loads(run("init", hub, "--partition-size", "50", "--json").stdout)
    assert info["entries"] == 0 and info["config"]["partition_size"] == 50
    for name in ("s0", "s1", "s2"):
        e = json.loads(run("add", hub, name, files[name], "--metadata", '{"task": "t"}', "--json").stdout)
        assert e["name"] == name and e["n_rows"] == 300 and e["n_partitions"] == 6
    res = json.loads(run("search", hub, files["q"], "-k", "2", "--method", "exact-js", "--json").stdout)
    assert [r["name"] for r in res][0] == "s1" and len(res) == 2
    assert res[0]["features"][0][:2] == ["a", "a"]
    text = run("search", hub, files["q"], "-k", "1").stdout
    assert "s1" in text and "shared: a, b" in text
    plan = json.loads(run("search", hub, files["q"], "--explain", "--json").stdout)
    assert [s["name"] for s in plan["stages"]] == ["sketch", "candidates", "score", "rerank"]
    shown = json.loads(run("show", hub, "--json").stdout)
    assert shown["names"] == ["s0", "s1", "s2"] and shown["entries"] == 3
    one = json.loads(run("show", hub, "s2", "--json").stdout)
    assert one["metadata"] == {"task": "t"}
    assert json.loads(run("remove", hub, "s0", "--json").stdout) == {"removed": "s0", "entries": 2}


@pytest.mark.parametrize("args,code,needle", [
    (("add", "{hub}", "s0", "{s0}"), "entry_exists", "exists"),
    (("add", "{hub}", "new", "/no/such.csv"), "unsupported_data", "does not exist"),
    (("add", "{hub}", "new", "{s0}", "--metadata", "{{bad"), "invalid_argument", "not valid JSON"),
    (("search", "{hub}", "{q}", "-k", "0"), "invalid_argument", "k=0"),
    (("show", "{hub}", "nope"), "entry_not_found", "nope"),
    (("remove", "{hub}", "nope"), "entry_not_found", "nope"),
    (("add", "{missing}", "x", "{s0}"), "not_found", ""),
])
def test_cli_errors_are_one_line_with_exit_2(tmp_path, files, run, args, code, needle):
    hub = tmp_path / "hub"
    run("init", hub)
    run("add", hub, "s0", files["s0"])
    fmt = {"hub": hub, "s0": files["s0"], "q": files["q"], "missing": tmp_path / "missing"}
    p = run(*[a.format(**fmt) for a in args], check=False)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and f"[{code}]" in lines[0] and needle in lines[0]
    assert p.stdout == ""


def test_cli_simex_classes_writes_matrix_and_heatmap(tmp_path, run):
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    keep = np.isin(y, [0, 1, 7])
    df = pd.DataFrame(X[keep], columns=[f"p{i}" for i in range(64)])
    df["digit"] = y[keep]
    csv = tmp_path / "d.csv"
    df.to_csv(csv, index=False)
    png = tmp_path / "heat.png"
    out = json.loads(run("simex", "classes", csv, "--labels", "digit", "--png", png, "--json").stdout)
    m = np.array(out["matrix"])
    assert out["classes"] == [0, 1, 7] and m.shape == (3, 3)
    assert all(m[i, i] == m[i].min() for i in range(3))  # each class is closest to its own autoencoder
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    p = run("simex", "classes", csv, "--labels", "nope", check=False)
    assert p.returncode == 2 and "[invalid_argument]" in p.stderr


def test_cli_add_parquet_glob_equals_the_library(rng, tmp_path, run):
    """`fitsketch add HUB NAME --parquet GLOB` registers the distributed sketch of the files."""
    import fitsketch
    from fitsketch.distributed import sketch_parquet

    for i in range(2):
        pd.DataFrame({"a": rng.normal(size=40), "b": rng.choice(["x", "y"], 40)}).to_parquet(tmp_path / f"p{i}.parquet")
    hub = tmp_path / "hub"
    run("init", hub)
    e = json.loads(run("add", hub, "pq", "--parquet", str(tmp_path / "p*.parquet"), "--workers", "1",
                       "--json").stdout)
    assert e["n_rows"] == 80 and e["features"] == ["a", "b"]
    with fitsketch.open(hub, create=False) as h:
        ref = sketch_parquet(str(tmp_path / "p*.parquet"), config=h.config, engine="local", progress=False)
        with h.store.read() as txn:
            stored = fitsketch.signature_records.decode(txn.get("signatures", fitsketch.storage.u64(h.get("pq").id)))
    assert np.array_equal(stored, ref.signatures)
    p = run("add", hub, "x", "--parquet", str(tmp_path / "none*.parquet"), check=False)
    assert p.returncode == 2
    p = run("add", hub, "x", check=False)
    assert p.returncode == 2 and "either a DATA file or --parquet" in p.stderr


def test_cli_shortlist_reaches_the_plan(tmp_path, files, run):
    """--shortlist N: with more than 4 x N entries the plan shortlists N of them; 0 scores all."""
    hub = tmp_path / "hub"
    run("init", hub, "--partition-size", "50")
    for i in range(3):
        for name in ("s0", "s1", "s2"):
            run("add", hub, f"{name}-{i}", files[name])
    out = run("search", hub, files["q"], "--shortlist", "2", "--explain", "-k", "2").stdout
    assert "shortlist" in out and "top 2" in out
    out0 = run("search", hub, files["q"], "--shortlist", "0", "--explain", "-k", "2").stdout
    assert "shortlist" not in out0.split("plan:")[-1]
    bad = run("search", hub, files["q"], "--shortlist", "-1", check=False)
    assert bad.returncode == 2 and "shortlist" in bad.stderr
