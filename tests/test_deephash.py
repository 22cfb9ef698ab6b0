"""Deep hashing (Meta4): training, codes, weight records, bucket search and the hub's use of them."""
import math

import numpy as np
import pytest

import fitsketch
from fitsketch import deephash as DH
from fitsketch import errors as E
from fitsketch.embeddings import DEEPHASH_RETRAIN_FRACTION
from fitsketch.exact import exact_search, normalize, recall_at_k, synthetic_embeddings
from fitsketch.storage import pack, unpack

from test_embeddings import _add, _fill

FAST = DH.DeepHashConfig(bits=16, epochs=3, max_train=2_000)


_Hub = fitsketch.Hub  # its train_deephash / nearest are those of its Embeddings component


@pytest.fixture
def hub(tmp_path):
    h = _Hub(tmp_path / "hub")
    yield h
    h.close()


def _data(n, d=16, n_clusters=10, seed=0):
    x, lab = synthetic_embeddings(n, d, n_clusters, seed)
    return normalize(x)[0], lab


def test_training_is_reproducible_and_codes_are_packed_signs():
    x, _ = _data(1_500)
    a = DH.train(x, config=FAST, seed=7)
    b = DH.train(x, config=FAST, seed=7)
    for name in ("W1", "b1", "W2", "b2"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    c = DH.train(x, config=FAST, seed=8)
    assert not np.array_equal(a.W1, c.W1)
    codes = a.encode(x)
    assert codes.dtype == np.uint8 and codes.shape == (1_500, 2)
    h = np.maximum(x @ a.W1 + a.b1, 0) @ a.W2 + a.b2
    assert np.array_equal(np.unpackbits(codes, axis=1), (h > 0).astype(np.uint8))


def test_weights_record_roundtrips_through_msgpack():
    x, lab = _data(600)
    m = DH.train(x, lab, config=DH.DeepHashConfig(bits=8, epochs=1), seed=1)
    back = DH.DeepHashModel.from_record(unpack(pack(m.to_record())))
    assert np.array_equal(back.encode(x), m.encode(x)) and back.config == m.config
    with pytest.raises(ValueError, match="format"):
        DH.DeepHashModel.from_record({**m.to_record(), "v": 99})


def test_config_is_checked():
    for bad in ({"bits": 12}, {"bits": 72}, {"epochs": 0}):
        with pytest.raises(ValueError):
            DH.DeepHashConfig(**bad)


def test_max_radius():
    assert DH.max_radius(16) == 16                         # the whole 2^16 cube
    assert DH.max_radius(32) == 4                          # 41,449 buckets; radius 5 is 242,825
    assert sum(math.comb(64, r) for r in range(DH.max_radius(64) + 1)) <= 1 << 16


def test_search_widens_until_enough_candidates():
    x, _ = _data(2_000)
    m = DH.train(x, config=FAST, seed=0)
    ids = np.arange(2_000, dtype=np.int64) * 2 + 10        # non-contiguous ids, sorted
    table = DH.BucketTable(DH.build_index(m, x, ids), m.bits)
    assert table.counts.sum() == 2_000 and np.array_equal(np.sort(table.ids), ids)
    D, I, st = DH.search(table, m, ids, x, x[:30], 5, candidates=300)
    assert st["mean_candidates"] >= 300 and st["fallback"] == 0
    r = max(st["radius_hist"])                              # the ball is the union of whole buckets
    codes = np.unpackbits(m.encode(x), axis=1)
    q0 = np.unpackbits(m.encode(x[:1]), axis=1)
    assert sum(st["radius_hist"].values()) == 30 and (codes != q0).sum(1).min() == 0 and r >= 0
    assert set(I.ravel()) <= set(ids.tolist())
    assert (I[:, 0] == ids[:30]).all()                     # a stored vector finds itself first
    np.testing.assert_allclose(D[:, 0], 1.0, atol=1e-5)
    assert (np.diff(D, axis=1) <= 1e-7).all()
    # k larger than the database: every id once, then -1 / -inf
    small = DH.BucketTable(DH.build_index(m, x[:3], ids[:3]), m.bits)
    D, I, _ = DH.search(small, m, ids[:3], x[:3], x[:2], 5, candidates=1)
    assert (I[:, 3:] == -1).all() and np.isneginf(D[:, 3:]).all()


def test_hub_deephash_recall(hub):
    x, _ = synthetic_embeddings(20_200, 32, 50, seed=0)
    xb, xq = x[:20_000], x[20_000:]
    _fill(hub, xb, [20_000])
    hub.train_deephash(bits=16, epochs=30, max_train=10_000)
    _, I_gt = exact_search(xb, xq, 10)
    _, I = hub.nearest(xq, 10, index="deephash", candidates=1_024)
    assert recall_at_k(I, I_gt, 10) >= 0.9


def test_weights_stored_and_reused(hub, monkeypatch):
    x, _ = _data(1_000)
    _fill(hub, x, [1_000])
    hub.train_deephash(bits=8, epochs=2)
    with hub.store.read() as txn:
        rec = txn.get("weights", b"deephash")
    assert rec["v"] == DH.WEIGHTS_FORMAT and rec["W2"].shape == (256, 8) and rec["trained_n"] == 1_000
    D1, I1 = hub.nearest(x[:5], 3, index="deephash")

    def no_train(*a, **kw):
        raise AssertionError("retrained without need")

    monkeypatch.setattr(DH, "train", no_train)
    _add(hub, "few", x[:10])                               # 1% more: under the retrain fraction
    D2, I2 = hub.nearest(x[:5], 3, index="deephash")
    assert I2.shape == (5, 3)


def test_retrains_when_much_changed(hub):
    x, _ = _data(1_000)
    _fill(hub, x[:400], [400])
    hub.nearest(x[:2], 3, index="deephash")                # trains on first use
    with hub.store.read() as txn:
        assert txn.get("weights", b"deephash")["trained_n"] == 400
    _add(hub, "more", x[400:400 + int(400 * DEEPHASH_RETRAIN_FRACTION) + 50])
    hub.nearest(x[:2], 3, index="deephash")
    with hub.store.read() as txn:
        assert txn.get("weights", b"deephash")["trained_n"] == 550


def test_train_deephash_errors(hub):
    with pytest.raises(E.EmptyDataError):
        hub.train_deephash()
    _add(hub, "a", np.eye(4))
    with pytest.raises(E.InvalidArgumentError):
        hub.train_deephash(bits=12)
    with pytest.raises(E.DimensionError):
        hub.train_deephash(bits=8, labels=[0, 1])
    assert hub.train_deephash(bits=8, epochs=1, labels=[0, 0, 1, 1])["trained_n"] == 4
