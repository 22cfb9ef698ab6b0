"""API edges: module and function names that do not shadow each other, a short Match repr,
sketch_parquet in processes from any entry point, optional extras named when missing."""
from __future__ import annotations

import importlib
import pkgutil
import types

import fitsketch


def test_no_public_name_shadows_a_module():
    modules = {m.name for m in pkgutil.iter_modules(fitsketch.__path__)}
    clash = sorted(n for n in fitsketch.__all__ if n in modules and not isinstance(getattr(fitsketch, n), types.ModuleType))
    assert clash == []
    import fitsketch.minhash as mh
    import fitsketch.sketch as sk

    assert isinstance(sk, types.ModuleType) and sk.Sketch is fitsketch.Sketch
    assert isinstance(mh, types.ModuleType) and callable(mh.similarity)
    # importing the submodules did not replace the package's functions
    assert callable(fitsketch.sketch_data) and callable(fitsketch.minhash_sets)
    for name in fitsketch.__all__:
        assert hasattr(fitsketch, name), name
    assert importlib.import_module("fitsketch.sketch") is sk


def test_match_repr_is_short_and_says_what_matters(rng):

    from fitsketch.hub import Match

    n = int(rng.integers(4, 200))
    feats = [(f"t{i}", f"t{i}" if i % 2 else f"s{i}", float(rng.random())) for i in range(n)]
    m = Match("model-a", float(rng.random()), "adaptivity", 1.0, feats,
              {"mean_jsd": 0.25, "per_table": list(range(64)), "fallback": "x"}, {"task": "t"})
    r = repr(m)
    assert len(r) < 300 and "\n" not in r
    assert "'model-a'" in r and f"{m.score:.4g}" in r and "adaptivity" in r
    assert f"+{n - 3} more" in r and "t1" in r and "t0~s0" in r and f"t{n - 1}" not in r.replace(f"+{n - 3}", "")
    assert "per_table" not in r and "mean_jsd=0.25" in r
    assert len(m.to_dict()["features"]) == n          # the data itself is all there


def test_sketch_parquet_processes_from_stdin_script(rng, tmp_path):
    """`python -` (no __main__ file) with engine="processes": workers start (spawn) and the sketch
    equals the single-process one."""
    import subprocess
    import sys

    import pandas as pd

    for i in range(2):
        pd.DataFrame({"a": rng.normal(size=int(rng.integers(20, 60))), "b": rng.choice(["x", "y"], 1)[0]}
                     ).to_parquet(tmp_path / f"p{i}.parquet")
    script = (
        "import numpy as np\n"
        "from fitsketch.distributed import sketch_parquet\n"
        f"g = {str(tmp_path / 'p*.parquet')!r}\n"
        "a = sketch_parquet(g, engine='processes', workers=2, progress=False)\n"
        "b = sketch_parquet(g, engine='local', progress=False)\n"
        "assert np.array_equal(a.signatures, b.signatures) and a.n_rows == b.n_rows\n"
        "import __main__; assert __main__.__file__ == '<stdin>'\n"
        "print('same', a.n_rows)\n")
    p = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True, timeout=300,
                       cwd=tmp_path)
    assert p.returncode == 0 and p.stdout.startswith("same"), p.stderr[-3000:]


def test_missing_extra_is_named(monkeypatch, tmp_path):
    import sys

    import pytest

    from fitsketch import simex, workloads

    monkeypatch.setitem(sys.modules, "sklearn", None)       # import sklearn -> ImportError
    with pytest.raises(fitsketch.errors.MissingDependencyError, match=r"fitsketch\[bench\]"):
        workloads.digits_skew(0)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(fitsketch.errors.MissingDependencyError, match=r"fitsketch\[plot\]"):
        simex.heatmap([0, 1], [[0.0, 1.0], [1.0, 0.0]], tmp_path / "h.png")
    assert not (tmp_path / "h.png").exists()
