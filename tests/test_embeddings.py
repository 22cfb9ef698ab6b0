"""Embeddings in the hub and the FAISS indexes derived from them (engine/embeddings.py, exact.py).

Tolerances: similarities are float32; D from FAISS vs the NumPy reference: atol 1e-5, rtol 0.
Integer results (ids) are compared exactly. Shapes include 0, 1, 7, 97 and k > n.
"""
import os

import numpy as np
import pytest

import fitsketch
from fitsketch import errors as E
from fitsketch.embedding_indexes import EmbeddingIndexes
from fitsketch.embeddings import write_embeddings
from fitsketch.exact import exact_search, normalize, recall_at_k, synthetic_embeddings

ATOL = 1e-5


_Hub = fitsketch.Hub  # its nearest / sample are those of its Embeddings component


# -- the only place that knows how embeddings get into the hub (switch to hub.add(..., embedding=))
def _add(hub, name, emb, metadata=None):
    emb = np.asarray(emb)
    n = emb.shape[0] if emb.ndim == 2 else 1
    return hub.add(name, {"a": np.arange(n, dtype=float), "b": np.arange(n, dtype=float) % 3},
                   metadata=metadata, embedding=emb)


def _remove(hub, name):
    hub.remove(name)


@pytest.fixture
def hub(tmp_path):
    h = _Hub(tmp_path / "hub")
    yield h
    h.close()


def _fill(hub, xb, sizes):
    lo = 0
    for i, s in enumerate(sizes):
        _add(hub, f"e{i}", xb[lo:lo + s])
        lo += s


def _clustered(n, nq, d=32, n_clusters=50, seed=0):
    x, _ = synthetic_embeddings(n + nq, d, n_clusters, seed)
    return x[:n], x[n:]


# ----------------------------------------------------------------------------- exact.py
def test_exact_search_is_the_definition(rng):
    xb = rng.integers(-2, 3, size=(60, 5)).astype(np.float32)         # many mathematical ties
    xb[3] = 0                                                          # a zero row: similarity 0
    xb[[10, 40, 50]] = xb[20]                                          # exact ties: copies, and a
    xb[30] = 2 * xb[20]                                                # multiple (same unit row)
    xq = rng.integers(-2, 3, size=(9, 5)).astype(np.float32)
    D, I = exact_search(xb, xq, 70)
    nb = xb / np.maximum(np.linalg.norm(xb, axis=1, keepdims=True), 1e-30)
    nq = xq / np.maximum(np.linalg.norm(xq, axis=1, keepdims=True), 1e-30)
    for i in range(9):
        sim = (nb @ nq[i]).astype(np.float32)
        got = I[i, :60]
        assert sorted(got.tolist()) == list(range(60))
        np.testing.assert_allclose(D[i, :60], sim[got], atol=ATOL, rtol=0)
        # sorted by (-D, row): equal similarities go to the smaller row
        assert all((D[i, j], -got[j]) > (D[i, j + 1], -got[j + 1]) for j in range(59))
        # the reference order wherever the reference similarities differ by more than float noise
        # (two rows with mathematically equal cosines may round apart differently in a matrix
        # product and a matrix-vector product)
        pos = np.empty(60, dtype=np.int64)
        pos[got] = np.arange(60)
        apart = sim[:, None] > sim[None, :] + 2 * ATOL
        assert (pos[:, None] < pos[None, :])[apart].all()
        # copies of one unit row tie exactly, so they come by row number
        assert len(set(D[i, pos[[10, 20, 30, 40, 50]]].tolist())) == 1
        assert [r for r in got if r in (10, 20, 30, 40, 50)] == [10, 20, 30, 40, 50]
        assert (I[i, 60:] == -1).all() and np.isneginf(D[i, 60:]).all()
    D5, I5 = exact_search(xb, xq, 5)
    assert np.array_equal(I5, I[:, :5])


def test_recall_at_k():
    gt = np.array([[1, 2, 3], [4, 5, -1]])
    assert recall_at_k(gt, gt, 3) == 1.0
    assert recall_at_k(np.array([[3, 9, 9], [5, -1, -1]]), gt, 3) == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert recall_at_k(np.zeros((0, 3)), np.zeros((0, 3)), 3) == 1.0


def test_synthetic_embeddings_seeded_and_prefix_stable():
    a, la = synthetic_embeddings(70_000, 8, 5, seed=3)
    b, lb = synthetic_embeddings(100, 8, 5, seed=3)
    assert np.array_equal(a[:100], b) and np.array_equal(la[:100], lb)
    c, _ = synthetic_embeddings(100, 8, 5, seed=4)
    assert not np.array_equal(b, c)


# ----------------------------------------------------------------------------- flat == exact
@pytest.mark.parametrize("n,sizes", [(0, []), (1, [1]), (7, [7]), (97, [40, 1, 56])])
def test_flat_equals_exact(hub, rng, n, sizes):
    d = 16
    xb = rng.standard_normal((n, d)).astype(np.float32) * rng.uniform(0.1, 5, size=(n, 1)).astype(np.float32)
    xq = rng.standard_normal((13, d)).astype(np.float32)
    _fill(hub, xb, sizes)
    for k in (1, 5, n + 3):
        D, I = hub.nearest(xq, k, index="flat")
        De, Ie = exact_search(xb, xq, k)                  # sample ids = rows: inserted in order
        assert D.dtype == np.float32 and I.dtype == np.int64 and D.shape == I.shape == (13, k)
        assert np.array_equal(I, Ie)
        np.testing.assert_allclose(D[I >= 0], De[Ie >= 0], atol=ATOL, rtol=0)
        assert np.isneginf(D[I < 0]).all()
    D, I = hub.nearest(xq[0], 3, index="auto")            # one 1-D query: (1, k)
    assert I.shape == (1, 3) and np.array_equal(I[0], exact_search(xb, xq[:1], 3)[1][0])
    assert hub.nearest(np.zeros((0, d)), 4)[1].shape == (0, 4)


def test_sample_ids_map_back(hub, rng):
    _add(hub, "a", rng.standard_normal((3, 4)))
    _add(hub, "b", rng.standard_normal((5, 4)))
    assert [hub.sample(i) for i in (0, 2, 3, 7)] == [("a", 0), ("a", 2), ("b", 0), ("b", 4)]
    for bad in (8, 10**9):
        with pytest.raises(E.EntryNotFoundError):
            hub.sample(bad)
    with pytest.raises(E.InvalidArgumentError):
        hub.sample("3")


# ----------------------------------------------------------------------------- approximate indexes
@pytest.mark.parametrize("kind,bound", [("ivf", 0.90), ("hnsw", 0.95)])
def test_ann_recall(hub, kind, bound):
    xb, xq = _clustered(20_000, 200)
    _fill(hub, xb, [8_000, 12_000])
    _, I_gt = exact_search(xb, xq, 10)
    _, I = hub.nearest(xq, 10, index=kind)
    assert recall_at_k(I, I_gt, 10) >= bound
    _, I = hub.nearest(xq, 10, index="auto")              # n >= AUTO_FLAT_LIMIT: ivf
    assert recall_at_k(I, I_gt, 10) >= 0.95


@pytest.mark.parametrize("kind", ["flat", "ivf", "deephash"])
def test_rebuild_after_deleting_index_files_is_identical(tmp_path, kind):
    xb, xq = _clustered(3_000, 20, d=16, n_clusters=10)
    path = tmp_path / "hub"
    with _Hub(path) as h:
        _fill(h, xb, [1_000, 2_000])
        D1, I1 = h.nearest(xq, 10, index=kind)
    files = os.listdir(path / "indexes")
    assert f"sample-{kind}.faiss" in files and f"sample-{kind}.msgpack" in files
    for f in files:
        os.remove(path / "indexes" / f)
    with _Hub(path) as h:
        D2, I2 = h.nearest(xq, 10, index=kind)
    assert np.array_equal(I1, I2)
    np.testing.assert_allclose(D1, D2, atol=ATOL, rtol=0)


def test_index_is_loaded_from_disk_not_rebuilt(tmp_path, monkeypatch):
    xb, xq = _clustered(2_000, 10, d=16)
    path = tmp_path / "hub"
    with _Hub(path) as h:
        _fill(h, xb, [2_000])
        D1, I1 = h.nearest(xq, 5, index="ivf")

    def no_build(*a, **kw):
        raise AssertionError("the index was rebuilt although its file is current")

    monkeypatch.setattr(EmbeddingIndexes, "_build", no_build)
    with _Hub(path) as h:
        D2, I2 = h.nearest(xq, 5, index="ivf")
    assert np.array_equal(I1, I2)


def test_unreadable_index_file_is_rebuilt(tmp_path):
    xb, xq = _clustered(500, 10, d=8)
    path = tmp_path / "hub"
    with _Hub(path) as h:
        _fill(h, xb, [500])
        D1, I1 = h.nearest(xq, 5, index="flat")
    (path / "indexes" / "sample-flat.faiss").write_bytes(b"garbage")
    with _Hub(path) as h:
        assert np.array_equal(h.nearest(xq, 5, index="flat")[1], I1)


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw", "deephash"])
def test_stale_generation_is_synchronized(hub, rng, kind):
    xb, xq = _clustered(2_000, 5, d=16, n_clusters=10)
    _fill(hub, xb, [2_000])
    hub.nearest(xq, 5, index=kind)
    new = rng.standard_normal((3, 16)).astype(np.float32)
    _add(hub, "new", new)                                  # generation moves on
    D, I = hub.nearest(new, 1, index=kind)
    assert I[:, 0].tolist() == [2_000, 2_001, 2_002]
    np.testing.assert_allclose(D[:, 0], 1.0, atol=ATOL)
    assert hub.sample(2_001) == ("new", 1)
    from fitsketch.storage import unpack
    side = unpack((hub_path(hub) / "indexes" / f"sample-{kind}.msgpack").read_bytes())
    assert side["generation"] == hub.stats()["generation"] and side["ntotal"] == 2_003


def hub_path(hub):
    from pathlib import Path
    return Path(hub.path)


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw", "deephash"])
def test_remove_keeps_index_in_sync(hub, rng, kind):
    xb, xq = _clustered(1_500, 15, d=16, n_clusters=10)
    _fill(hub, xb, [500, 500, 500])
    hub.nearest(xq, 10, index=kind)
    _remove(hub, "e1")                                     # ids 500..999 go
    keep = np.r_[0:500, 1000:1500]
    D, I = hub.nearest(xq, 10, index=kind)
    assert not ((I >= 500) & (I < 1000)).any()
    if kind == "flat":
        De, Ie = exact_search(xb[keep], xq, 10)
        assert np.array_equal(I, keep[Ie])
        np.testing.assert_allclose(D, De, atol=ATOL, rtol=0)
    with pytest.raises(E.EntryNotFoundError):
        hub.sample(700)
    assert hub.sample(1000) == ("e2", 0)


# ----------------------------------------------------------------------------- entry level
def test_entry_level_search(hub, rng):
    centres, _ = normalize(rng.standard_normal((3, 24)))
    for i, c in enumerate(centres):
        _add(hub, f"m{i}", c + 0.05 * rng.standard_normal((20 + i, 24)), metadata={"task": f"t{i}"})
    res = hub.nearest(centres[1], 3, level="entry")
    assert [m.name for m in res][0] == "m1" and len(res) == 3
    top = res[0]
    assert isinstance(top, fitsketch.Match) and top.method == "embedding" and top.overlap == 1.0
    assert top.metadata == {"task": "t1"} and top.evidence["index"] == "flat" and top.score > 0.99
    assert [m.score for m in res] == sorted((m.score for m in res), reverse=True)
    both = hub.nearest(centres[[2, 0]], 1, level="entry", index="hnsw")
    assert [[m.name for m in r] for r in both] == [["m2"], ["m0"]]
    _remove(hub, "m1")
    assert [m.name for m in hub.nearest(centres[1], 5, level="entry")] != [] and \
        "m1" not in [m.name for m in hub.nearest(centres[1], 5, level="entry")]


def test_empty_hub(hub):
    D, I = hub.nearest(np.ones((2, 5)), 3)
    assert (I == -1).all() and np.isneginf(D).all()
    assert hub.nearest(np.ones(5), 3, level="entry") == []


# ----------------------------------------------------------------------------- errors
def test_embedding_errors_leave_the_hub_unchanged(hub, rng):
    e = hub.add("x", {"a": np.arange(4.0)})

    def write(emb, n_rows=4):
        return hub.store.transact(lambda txn: write_embeddings(txn, e.id, emb, n_rows=n_rows))

    for bad, err in ((np.ones((3, 2)), E.DimensionError), (np.array([[1.0, np.nan]] * 4), E.NonFiniteError)):
        with pytest.raises(err):  # through hub.add: checked before the transaction, nothing written
            hub.add("y", {"a": np.arange(4.0)}, embedding=bad)
        assert "y" not in hub
    for bad, err in ((np.ones(4), E.DimensionError), (np.ones((4, 2, 2)), E.DimensionError),
                     (np.ones((3, 2)), E.DimensionError), (np.zeros((0, 3)), E.EmptyDataError),
                     (np.array([[1.0, np.nan]] * 4), E.NonFiniteError),
                     (np.array([[1.0, np.inf]] * 4), E.NonFiniteError),
                     (np.array([["a", "b"]] * 4), E.InvalidArgumentError)):
        with pytest.raises(err):
            write(bad)
    with hub.store.read() as txn:
        assert txn.count("embeddings") == 0 and txn.get("meta", b"next_sample_id") is None
    _add(hub, "y", rng.standard_normal((2, 6)))
    with pytest.raises(E.DimensionError, match="dimension 5 but this hub stores dimension 6"):
        _add(hub, "z", rng.standard_normal((2, 5)))


def test_query_errors(hub, rng):
    _add(hub, "y", rng.standard_normal((5, 6)))
    with pytest.raises(E.DimensionError):
        hub.nearest(np.ones((2, 5)))
    with pytest.raises(E.DimensionError):
        hub.nearest(np.ones((2, 2, 6)))
    with pytest.raises(E.NonFiniteError):
        hub.nearest(np.full(6, np.nan))
    for kw in ({"index": "lsh"}, {"level": "model"}, {"k": 0}, {"k": 2.5}, {"nprobe": 0}):
        with pytest.raises(E.InvalidArgumentError):
            hub.nearest(np.ones(6), **kw)
    with pytest.raises(E.InvalidArgumentError, match="level='sample'"):
        hub.nearest(np.ones(6), level="entry", index="deephash")


def test_dimension_is_released_when_the_last_embedding_goes(hub, rng):
    _add(hub, "a", rng.standard_normal((2, 6)))
    _remove(hub, "a")
    _add(hub, "b", rng.standard_normal((2, 3)))            # a new dimension is accepted
    assert hub.nearest(np.ones(3), 2)[1].tolist() == [[2, 3]] or \
        sorted(hub.nearest(np.ones(3), 2)[1][0].tolist()) == [2, 3]
