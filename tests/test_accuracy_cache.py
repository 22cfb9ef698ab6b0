"""The accuracy stage's per-generation cache (engine/accuracy_cache.py): searches through a warm
cache equal searches with it disabled (the reference: the stage reading every record per query) --
names, scores, mixture, interval, evidence and what the stage kept -- across adds, removes and query
schemas, and the cached pool cannot be written into."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import fitsketch
from fitsketch import accuracy_cache as AC

MEANS = np.array([5.0, 10.0, 15.0])
D = 4
KW = dict(k=4, method="accuracy", shortlist=2, accuracy_bootstrap=3)   # the stage runs above 4 x 2 entries


def _rows(rng, y, cols=None):
    cols = cols or [f"x{i}" for i in range(D)]
    return pd.DataFrame(rng.normal(MEANS[y][:, None], 1.5, size=(len(y), len(cols))), columns=cols)


def _model(X, y):
    cls = np.unique(y)
    means = np.stack([X[y == c].mean(axis=0) for c in cls])
    return lambda V: -((np.asarray(V, np.float64)[:, None, :] - means[None, :, :]) ** 2).sum(axis=2)


def _add(hub, rng, name, perf):
    pi = rng.dirichlet(np.full(3, 0.7))
    y = rng.choice(3, 120, p=pi)
    y[:3] = [0, 1, 2]
    X = _rows(rng, y)
    if perf == "class_accuracy":
        hub.add(name, X, labels=y, class_accuracy={c: float(rng.uniform(0.3, 1.0)) for c in range(3)})
    elif perf == "unlabelled":
        hub.add(name, X)
    else:
        yv = rng.choice(3, 60, p=pi)
        noisy = X.to_numpy() + rng.normal(0, float(rng.uniform(0.5, 4.0)), X.shape)
        hub.add(name, X, labels=y, model=_model(noisy, y), validation=(_rows(rng, yv), yv))


def _answer(hub, q):
    plan = hub.explain(q, **KW)
    st = next(s for s in plan.stages if s.name == "shortlist")
    return ([(m.name, m.score, m.evidence.get("mixture"), m.evidence.get("interval"), m.evidence.get("contributions"),
              m.evidence.get("pooled_entries")) for m in plan.matches], st.actual, st.detail)


def _uncached(hub, q, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(AC.ScreenCache, "get", lambda self, txn, names: AC.screen_data(txn, names))
        return _answer(hub, q)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("gauss_bytes", [AC.MAX_GAUSS_BYTES, 0])   # 0: only the Gaussians' sum is kept
def test_warm_cache_answers_as_every_record_read(tmp_path, seed, gauss_bytes, monkeypatch):
    monkeypatch.setattr(AC, "MAX_GAUSS_BYTES", gauss_bytes)
    rng = np.random.default_rng(seed)
    kinds = ["validation"] * 7 + ["class_accuracy"] * 3 + ["unlabelled"] * 2
    with fitsketch.open(tmp_path / "h", create=True) as hub:
        for i, kind in enumerate(rng.permutation(kinds)):
            _add(hub, rng, f"e{i:02d}", kind)
        q = _rows(rng, rng.choice(3, 150, p=rng.dirichlet(np.ones(3))))
        q2 = q[["x2", "x0", "x3"]]                   # another schema: other columns, other order
        for step in range(4):
            for query in (q, q2, q):                  # cold, the other schema, warm again
                assert _answer(hub, query) == _uncached(hub, query, monkeypatch)
            assert hub._indexes.accuracy.generation is not None
            with hub.store.read() as txn:
                gp = hub._indexes.accuracy.get(txn, list(q.columns)).pool["gauss"]
            assert gp is not None and (gp["parts"] is None) == (gauss_bytes == 0)
            if step == 0:
                _add(hub, rng, "new", "validation")   # a new generation: the cache must see the entry
            elif step == 1:
                hub.remove("e03")
            elif step == 2:
                _add(hub, rng, "new2", "class_accuracy")


def test_the_cached_pool_is_read_only(tmp_path):
    rng = np.random.default_rng(4)
    with fitsketch.open(tmp_path / "h", create=True) as hub:
        for i in range(10):
            _add(hub, rng, f"e{i}", "validation")
        q = _rows(rng, rng.choice(3, 80))
        hub.search(q, **KW)
        with hub.store.read() as txn:
            data = hub._indexes.accuracy.get(txn, list(q.columns))
        assert len(data.keys) == 10 and data.pool["entries"] == 10
        for a in (data.recalls, data.bound, data.pool["count"], data.pool["cls"]):
            with pytest.raises(ValueError):
                a[...] = 0
        # the same object serves the next query of the schema; another schema gets its own
        with hub.store.read() as txn:
            assert hub._indexes.accuracy.get(txn, list(q.columns)) is data
            assert hub._indexes.accuracy.get(txn, ["x1"]) is not data


def test_schemas_beyond_the_limit_are_dropped_least_recent_first(tmp_path, monkeypatch):
    monkeypatch.setattr(AC, "MAX_SCHEMAS", 2)
    rng = np.random.default_rng(5)
    with fitsketch.open(tmp_path / "h", create=True) as hub:
        for i in range(4):
            _add(hub, rng, f"e{i}", "validation")
        cache = hub._indexes.accuracy
        with hub.store.read() as txn:
            a = cache.get(txn, ["x0"])
            cache.get(txn, ["x1"])
            assert cache.get(txn, ["x0"]) is a       # used again: now the most recent
            cache.get(txn, ["x2"])                   # drops ["x1"]
            assert cache.get(txn, ["x0"]) is a
            assert list(cache._data) == [("x2",), ("x0",)]


def test_the_held_bytes_are_bounded_least_recent_dropped_first(tmp_path, monkeypatch):
    """nbytes counts the arrays held (pool, recalls) and the performance records; beyond
    MAX_CACHE_BYTES in all the least recently used schema is dropped, and a schema larger than the
    limit alone is answered but not held."""
    rng = np.random.default_rng(6)
    with fitsketch.open(tmp_path / "h", create=True) as hub:
        for i in range(4):
            _add(hub, rng, f"e{i}", "validation")
        cache = hub._indexes.accuracy
        with hub.store.read() as txn:
            a = cache.get(txn, ["x0", "x1"])
            assert AC.nbytes(a) >= a.recalls.nbytes + AC.PERF_BYTES * len(a.keys) + a.pool["count"].nbytes
            b_size = AC.nbytes(AC.screen_data(txn, ["x1", "x2"]))
            monkeypatch.setattr(AC, "MAX_CACHE_BYTES", AC.nbytes(a) + b_size - 1)   # not both
            b = cache.get(txn, ["x1", "x2"])
            assert list(cache._data) == [("x1", "x2")] and cache.get(txn, ["x1", "x2"]) is b
            monkeypatch.setattr(AC, "MAX_CACHE_BYTES", 1)       # a new schema alone is too large
            c = cache.get(txn, ["x2", "x3"])
            assert ("x2", "x3") not in cache._data and list(cache._data) == [("x1", "x2")]
            ref = AC.screen_data(txn, ["x2", "x3"])
            assert c.keys == ref.keys and np.array_equal(c.recalls, ref.recalls)


def test_the_cached_gaussians_are_summed_once_and_equal_a_fresh_sum(tmp_path):
    """A hub added with numeric columns carries class Gaussians: the cache keeps their per-class sum
    (accuracy_gauss.combined), equal to summing the parts again, and a pool received from outside
    (check_gauss_pool) never carries it."""
    from fitsketch import accuracy_gauss as G

    rng = np.random.default_rng(6)
    with fitsketch.open(tmp_path / "h", create=True) as hub:
        for i in range(10):
            _add(hub, rng, f"e{i}", "validation")
        q = _rows(rng, rng.choice(3, 80))
        with hub.store.read() as txn:
            gp = hub._indexes.accuracy.get(txn, list(q.columns)).pool["gauss"]
    assert gp is not None and "_combined" in gp
    fresh = G.combined({k: v for k, v in gp.items() if k != "_combined"})
    assert gp["_combined"][0] == fresh[0]
    for a, b in zip(gp["_combined"][1:], fresh[1:]):
        np.testing.assert_array_equal(a, b)
    assert G.merge_gauss_pools([gp]) is gp
    assert "_combined" not in G.check_gauss_pool(gp)
    labels = [0, 1, 2]
    np.testing.assert_array_equal(G.gauss_loglik(q, gp, labels),
                                  G.gauss_loglik(q, {k: v for k, v in gp.items() if k != "_combined"}, labels))


def _same(a, b):
    """Two ScreenData (or pools) hold equal numbers."""
    if isinstance(a, dict) or isinstance(b, dict):
        assert isinstance(a, dict) and isinstance(b, dict) and set(a) == set(b), (a.keys(), b.keys())
        for k in a:
            _same(a[k], b[k])
    elif isinstance(a, (list, tuple)) and not isinstance(a, (bytes, str)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _same(x, y)
    elif isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        np.testing.assert_array_equal(a, b)
        assert np.asarray(a).dtype == np.asarray(b).dtype
    else:
        assert a == b


@pytest.mark.parametrize("seed", [0, 1])
def test_extended_after_adds_equals_read_whole(tmp_path, seed):
    """Entries added since: the cache reads and pools them alone (accuracy_cache.extend); every
    number equals reading every entry (screen_data), including a class no entry had, an entry
    without labels, one sharing no column and one without a class Gaussian (a missing value: the
    union then has none); a remove reads every entry again."""
    rng = np.random.default_rng(seed)
    with fitsketch.open(tmp_path / "h", create=True) as hub:
        for i in range(5):
            _add(hub, rng, f"e{i}", "validation")
        names = [f"x{i}" for i in range(D)]
        cache = hub._indexes.accuracy

        def check():
            with hub.store.read() as txn:
                got, ref = cache.get(txn, names), AC.screen_data(txn, names)
            for f in ("keys", "recalls", "bound", "given", "damaged", "labelled", "last_key", "n_entries", "generation"):
                _same(getattr(got, f), getattr(ref, f))
            _same(got.pool, ref.pool)
            return got

        check()
        _add(hub, rng, "a1", "class_accuracy")
        _add(hub, rng, "a2", "unlabelled")
        first = check()
        y = np.array([0, 1, 2, 3] * 30)                                      # a new class, 3
        hub.add("a3", _rows(rng, y % 3), labels=y, class_accuracy={c: 0.8 for c in range(4)})
        check()
        hub.add("other", pd.DataFrame({"z": rng.normal(size=60)}), labels=np.array([0, 1] * 30),
                class_accuracy={0: 0.5, 1: 0.5})                             # shares no column
        check()
        assert "_combined" in check().pool["gauss"]
        X = _rows(rng, np.array([0, 1, 2] * 20))
        X.loc[3, "x1"] = np.nan                                              # no class Gaussian (a missing value)
        hub.add("nogauss", X, labels=np.array([0, 1, 2] * 20), class_accuracy={0: .9, 1: .8, 2: .7})
        got = check()
        assert got.pool["gauss"] is None
        assert len(got.keys) == len(first.keys) + 2                          # a3 and nogauss
        hub.remove("e2")
        got = check()
        assert len(got.keys) == len(first.keys) + 1


@pytest.mark.parametrize("seed", [0, 1])
def test_read_in_chunks_equals_one_read(tmp_path, seed, monkeypatch):
    """screen_data reads READ_CHUNK entries at a time and merges their pools: every number equals
    one read of all of them (chunks of 1, 3 and 4 entries over 11, some unlabelled, one sharing no
    column, one without a class Gaussian), and a cache brought forward over more adds than a chunk
    equals a whole read."""
    rng = np.random.default_rng(seed)
    names = [f"x{i}" for i in range(D)]
    with fitsketch.open(tmp_path / "h", create=True) as hub:
        for i in range(7):
            _add(hub, rng, f"e{i}", ("validation", "class_accuracy", "unlabelled")[i % 3])
        hub.add("other", pd.DataFrame({"z": rng.normal(size=60)}), labels=np.array([0, 1] * 30),
                class_accuracy={0: 0.5, 1: 0.5})
        y = np.array([0, 1, 2, 3] * 30)
        hub.add("four", _rows(rng, y % 3), labels=y, class_accuracy={c: 0.8 for c in range(4)})
        for i in range(2):
            _add(hub, rng, f"f{i}", "validation")
        with hub.store.read() as txn:
            monkeypatch.setattr(AC, "READ_CHUNK", 10 ** 9)
            whole = AC.screen_data(txn, names)
            for chunk in (1, 3, 4):
                monkeypatch.setattr(AC, "READ_CHUNK", chunk)
                got = AC.screen_data(txn, names)
                for f in ("keys", "recalls", "bound", "labels", "given", "damaged", "labelled", "last_key",
                          "n_entries", "generation"):
                    _same(getattr(got, f), getattr(whole, f))
                _same(got.pool, whole.pool)
        monkeypatch.setattr(AC, "READ_CHUNK", 2)
        cache = hub._indexes.accuracy
        with hub.store.read() as txn:
            cache.get(txn, names)
        for i in range(4):                                                  # more adds than a chunk
            _add(hub, rng, f"g{i}", "validation")
        with hub.store.read() as txn:
            got, ref = cache.get(txn, names), AC.screen_data(txn, names)
        for f in ("keys", "recalls", "bound", "given", "labelled", "last_key", "n_entries"):
            _same(getattr(got, f), getattr(ref, f))
        _same(got.pool, ref.pool)
        assert len(got.keys) == 12                      # 5 + "four" + 2 + 4 labelled sharing columns


def test_a_class_only_a_performance_names_does_not_make_every_add_read_all(tmp_path, monkeypatch):
    """An entry whose class_accuracy= names a class no entry trained on (7) widens the recalls' and
    bounds' classes once; later adds are still read alone (extend), not every entry again, and equal
    a whole read."""
    rng = np.random.default_rng(2)
    names = [f"x{i}" for i in range(D)]
    with fitsketch.open(tmp_path / "h", create=True) as hub:
        for i in range(3):
            _add(hub, rng, f"e{i}", "validation")
        y = np.array([0, 1, 2] * 30)
        hub.add("seven", _rows(rng, y), labels=y, class_accuracy={0: 0.5, 1: 0.5, 2: 0.5, 7: 0.9})
        cache = hub._indexes.accuracy
        with hub.store.read() as txn:
            assert 7 in cache.get(txn, names).labels
        reads = []
        whole = AC.screen_data
        monkeypatch.setattr(AC, "screen_data", lambda *a: reads.append(1) or whole(*a))
        _add(hub, rng, "later", "validation")
        with hub.store.read() as txn:
            got = cache.get(txn, names)
            ref = whole(txn, names)
    assert reads == []
    for f in ("keys", "recalls", "bound", "labels", "given", "labelled", "last_key", "n_entries"):
        _same(getattr(got, f), getattr(ref, f))
    _same(got.pool, ref.pool)
