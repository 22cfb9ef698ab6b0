"""SimEx through the hub: add(autoencoder=True), search(method="simex"), persistence, errors."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import fitsketch
from fitsketch import errors as E
from fitsketch.simex import AEConfig


def _data(rng, n, shift):
    return pd.DataFrame({"a": rng.normal(shift, 1, n), "b": rng.normal(-shift, 1, n), "c": rng.normal(0, 1, n),
                         "y": rng.integers(0, 2, n)})


def test_simex_search_through_the_hub(tmp_path):
    rng = np.random.default_rng()
    cfg = AEConfig(epochs=15, time_cap_s=10)
    path = tmp_path / "h"
    with fitsketch.open(path) as hub:
        for name, shift in (("near", 0.0), ("far", 6.0)):
            hub.add(name, _data(rng, 200, shift), autoencoder=True, labels="y", ae_config=cfg)
        hub.add("no-ae", _data(rng, 200, 0.0).drop(columns=["y"]))
        assert hub.get("near").features == ["a", "b", "c"]  # the label column is not a feature
        q = _data(rng, 80, 0.0).drop(columns=["y"])
        res = hub.search(q, method="simex", k=5)
        assert [m.name for m in res] == ["near", "far"]  # "no-ae" has no autoencoder
        assert res[0].evidence["autoencoders"] == 2 and res[0].evidence["closest_class"] in (0, 1)
        assert res[0].score == pytest.approx(-res[0].evidence["delta"])
        raw = hub.search(q, method="simex", normalize=False)
        assert raw[0].evidence["normalized"] is False
        with pytest.raises(E.InvalidArgumentError, match="simex_loss"):
            hub.search(q, method="simex", loss="l1")
    with fitsketch.open(path) as hub:  # weights survive close / reopen: the same scores
        again = hub.search(q, method="simex", k=5)
        assert [m.to_dict() for m in again] == [m.to_dict() for m in res]
        hub.remove("near")
        with hub.store.read() as txn:
            assert sum(1 for k in txn.keys("weights") if k.startswith(b"ae:")) == 1


def test_simex_add_errors_leave_hub_unchanged(tmp_path):
    rng = np.random.default_rng()
    with fitsketch.open(tmp_path / "h") as hub:
        df = _data(rng, 30, 0.0)
        with pytest.raises(E.LabelError, match="single class"):   # labels alone are fine (method="accuracy")
            hub.add("x", df.assign(y=0), labels="y")
        with pytest.raises(E.InvalidArgumentError, match="not a column"):
            hub.add("x", df, autoencoder=True, labels="nope")
        with pytest.raises(E.TooFewSamplesError):
            hub.add("x", df.iloc[:5].assign(y=[0, 1, 0, 1, 0]), autoencoder=True, labels="y")   # two classes
        with pytest.raises(E.DimensionError, match="one label per row"):
            hub.add("x", df.drop(columns=["y"]), autoencoder=True, labels=[0, 1])
        assert len(hub) == 0
