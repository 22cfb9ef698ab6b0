"""Stored sketch parameters and per-query defaults (engine/config.py): a query's parameters are a
``QueryConfig`` checked as ``SketchConfig`` checks them; shards must share only the stored ones."""
import dataclasses

import numpy as np
import pandas as pd
import pytest

import fitsketch
from fitsketch import config as C
from fitsketch import sharded as S
from fitsketch.errors import InvalidArgumentError


def test_the_two_kinds_partition_the_fields():
    names = [f.name for f in dataclasses.fields(C.SketchConfig)]
    assert sorted(C.STORED_PARAMS + C.QUERY_PARAMS) == sorted(names)
    assert not set(C.STORED_PARAMS) & set(C.QUERY_PARAMS)
    assert [f.name for f in dataclasses.fields(C.QueryConfig)] == [n for n in names if n in C.QUERY_PARAMS]


def test_query_defaults_carry_the_hub_values_and_the_checks():
    cfg = C.SketchConfig(shortlist=7, simex_normalize=True, seed=3)
    q = cfg.query_defaults()
    assert q.shortlist == 7 and q.simex_normalize is True and not hasattr(q, "seed")
    assert cfg.query_defaults(jslsh_l=64).jslsh_l == 64 and q.replace(coverage_tau=2.0).coverage_tau == 2.0
    for bad in ({"shortlist": -1}, {"coverage_space": "pixels"}, {"match": "cosine"}, {"jslsh_r": 0}):
        with pytest.raises(InvalidArgumentError, match=next(iter(bad))):
            cfg.query_defaults(**bad)
    assert cfg.stored() == {k: getattr(cfg, k) for k in C.STORED_PARAMS} and cfg.stored()["seed"] == 3


def test_shards_differing_only_in_query_defaults_merge(tmp_path):
    rng = np.random.default_rng(5)
    frames = [pd.DataFrame({"a": rng.normal(s, 1, 200), "b": rng.normal(-s, 1, 200)}) for s in (0, 1, 2, 3)]
    q = pd.DataFrame({"a": rng.normal(0.5, 1, 150), "b": rng.normal(-0.5, 1, 150)})
    base = C.SketchConfig(partition_size=50)
    fitsketch.open(tmp_path / "a", config=base).close()
    fitsketch.open(tmp_path / "b", config=base.replace(shortlist=64, feature_threshold=0.4)).close()
    with fitsketch.open(tmp_path / "one", config=base) as one:
        for i, f in enumerate(frames):
            one.add(f"e{i}", f)
        want = [(m.name, m.score) for m in one.search(q, k=4, method="js")]
    with S.open_sharded([tmp_path / "a", tmp_path / "b"]) as sh:
        for i, f in enumerate(frames):
            sh.add(f"e{i}", f)
        assert [(m.name, m.score) for m in sh.search(q, k=4, method="js")] == want
    fitsketch.open(tmp_path / "c", config=base.replace(seed=1)).close()
    with pytest.raises(S.ShardConfigError, match="seed"):
        S.open_sharded([tmp_path / "a", tmp_path / "c"])
