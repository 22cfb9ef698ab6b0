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
