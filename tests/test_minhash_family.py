"""The MinHash hash family is a recorded hub parameter: new hubs use multiply-shift (ms64), a hub
written before families were recorded (tests/data/hub_before_families, made by fitsketch at
6159ab5 from tests/_family_data.py) reads as mod61, opens, keeps its signatures bit for bit and
searches exactly as a hub rebuilt today with mod61; sketches of different families never meet."""
from __future__ import annotations

import gzip
import os
import shutil

import numpy as np
import pytest

import fitsketch
from fitsketch import errors as E
from fitsketch.config import SketchConfig

from _family_data import frames, query

OLD = os.path.join(os.path.dirname(__file__), "data", "hub_before_families.lmdb.gz")
METHODS = [m for m in fitsketch.METHODS if m not in ("simex", "accuracy", "auto")]


def _old_hub(tmp_path):
    path = tmp_path / "old"
    path.mkdir()
    with gzip.open(OLD, "rb") as src, open(path / "hub.lmdb", "wb") as dst:
        shutil.copyfileobj(src, dst)
    return path


def _signatures(hub) -> dict:
    out = {}
    with hub.store.read() as txn:
        for name in hub.names():
            k = txn.get_raw("names", name.encode("utf-8"))
            out[name] = fitsketch.signature_records.decode(txn.get("signatures", k))
    return out


def test_config_family_defaults_and_validation():
    assert SketchConfig().minhash_family == "ms64"                      # new hubs: the fast family
    legacy = {k: v for k, v in SketchConfig().to_dict().items() if k != "minhash_family"}
    assert SketchConfig.from_dict(legacy).minhash_family == "mod61"     # stored before families
    assert SketchConfig.from_dict(SketchConfig().to_dict()) == SketchConfig()
    assert SketchConfig().replace(seed=3).minhash_family == "ms64"
    with pytest.raises(E.InvalidArgumentError, match="minhash_family"):
        SketchConfig(minhash_family="sha1")
    old, new = SketchConfig(minhash_family="mod61"), SketchConfig()
    assert len(old.sketch_key()) == 9 and old.sketch_key() == new.sketch_key()[:9]  # old keys unchanged
    assert new.sketch_key()[-1] == "ms64" and old.sketch_key() != new.sketch_key()


def test_hub_before_families_opens_and_searches_as_before(tmp_path):
    with fitsketch.open(_old_hub(tmp_path)) as old:
        assert old.config.minhash_family == "mod61" and len(old) == 5
        cfg = old.config
        old_sigs = _signatures(old)
        old_results = {m: [x.to_dict() for x in old.search(query(), method=m)] for m in METHODS}
    # today's code, told the old family, rebuilds the same hub: same signatures, same answers
    with fitsketch.open(tmp_path / "again", config=cfg) as again:
        for name, df in frames():
            again.add(name, df)
        sigs = _signatures(again)
        assert sigs.keys() == old_sigs.keys()
        for name in sigs:
            np.testing.assert_array_equal(sigs[name], old_sigs[name])
        assert {m: [x.to_dict() for x in again.search(query(), method=m)] for m in METHODS} == old_results
    # the default family signs the same data differently (so the two must never be compared)
    with fitsketch.open(tmp_path / "new", config=cfg.replace(minhash_family="ms64")) as new:
        for name, df in frames():
            new.add(name, df)
        assert new.config.minhash_family == "ms64"
        assert all((_signatures(new)[n] != old_sigs[n]).any() for n in old_sigs)
        assert len(new.search(query())) > 0


def test_sketches_of_another_family_are_refused(tmp_path):
    name, df = frames()[0]
    with fitsketch.open(_old_hub(tmp_path)) as old:
        cfg = old.config
        with pytest.raises(E.FitsketchError, match="sketch"):
            old.add_sketch("new-family", fitsketch.sketch_data(df, cfg.replace(minhash_family="ms64")))
        assert "new-family" not in old and len(old) == 5                # unchanged
        old.add_sketch("same-family", fitsketch.sketch_data(df, cfg))
        assert "same-family" in old
    with pytest.raises(E.InvalidArgumentError, match="sketch parameters"):
        fitsketch.open(tmp_path / "old", config=cfg.replace(minhash_family="ms64"))
