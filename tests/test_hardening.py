"""Hostile requests and bad states (issue 23): each ends in a named error or a correct answer, and
the hub keeps serving other queries.

Consistent snapshots (a search racing a remove), bounded parameters, validated sketches and
metadata, damaged stored records skipped by searches, errors that tell the truth, compaction.
The socket server's attacks live in tests/test_hardening_server.py.
"""
from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest

import fitsketch
from fitsketch import errors as E


def _frame(rng, n=40, shift=0.0):
    return pd.DataFrame({"a": rng.normal(shift, 1.0, n), "b": rng.integers(0, 6, n) + int(shift)})


@pytest.fixture
def small_hub(tmp_path, rng):
    """A hub of 24 two-column entries (over 4 x shortlist=2, so shortlist=2 runs the profile stage)."""
    hub = fitsketch.open(tmp_path / "h")
    items = [(f"e{i:02d}", fitsketch.sketch(_frame(rng, shift=i % 6), hub.config)) for i in range(24)]
    hub.add_sketches(items)
    yield hub, rng
    hub.close()


# ------------------------------------------------------------------------ 1. consistent snapshots
def test_search_skips_entries_removed_after_the_shortlist(small_hub, monkeypatch):
    """Deterministic race: every shortlisted entry but one is removed between the shortlist's
    transaction and the scoring transaction; the search answers from what is left."""
    hub, rng = small_hub
    q = _frame(rng, shift=0)
    original = fitsketch.Hub._shortlist
    removed = []

    def racing_shortlist(self, *a, **kw):
        ids = original(self, *a, **kw)
        assert ids is not None and len(ids) == 2
        with self.store.read() as txn:
            names = sorted(txn.get("entries", key)["name"] for key in ids)
        self.remove(names[0])
        removed.append(names[0])
        return ids

    monkeypatch.setattr(fitsketch.Hub, "_shortlist", racing_shortlist)
    for method in ("adaptivity", "js", "exact-js", "l2", "coverage"):
        plan = hub.explain(q, k=5, method=method, shortlist=2)
        short = next(s for s in plan.stages if s.name == "shortlist")
        assert "1 removed since, skipped" in short.detail
        ms = hub.search(q, k=5, method=method, shortlist=2)
        got = {m.name for m in ms}
        assert got and not got & set(removed)
        assert got <= set(hub.names())


def test_search_racing_removes_in_a_thread(small_hub):
    """A thread removes and re-adds entries while another searches with the shortlist on: every
    search answers (no TypeError, no internal error) and names only entries the hub held."""
    hub, rng = small_hub
    sketches = {n: None for n in hub.names()}
    q = _frame(rng, shift=1)
    for n in list(sketches)[:12]:
        sketches[n] = fitsketch.sketch(_frame(np.random.default_rng(len(n)), shift=1), hub.config)
    stop = threading.Event()
    errors = []

    def churn():
        try:
            while not stop.is_set():
                for n, sk in sketches.items():
                    if sk is None:
                        continue
                    hub.remove(n)
                    hub.add_sketch(n, sk)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    t = threading.Thread(target=churn)
    t.start()
    try:
        answered = 0
        for _ in range(40):
            try:
                ms = hub.search(q, k=3, method="adaptivity", shortlist=2)
            except E.NoSharedFeaturesError:    # every shortlisted entry was removed: a named answer
                continue
            assert all(m.name in sketches for m in ms)
            answered += 1
    finally:
        stop.set()
        t.join()
    assert not errors
    assert answered > 0


# ------------------------------------------------------------------------ 2. bounded parameters
@pytest.mark.parametrize("kw", [dict(k=10**9), dict(k=1_000_001), dict(jslsh_l=10**7), dict(jslsh_k=10**7),
                                dict(jslsh_k=64, jslsh_l=1024), dict(jslsh_l=1025), dict(jslsh_k=65)])
def test_search_refuses_parameters_over_the_limits(small_hub, kw):
    hub, rng = small_hub
    q = _frame(rng)
    for fn in (hub.search, hub.explain):
        with pytest.raises(E.LimitExceededError) as ei:
            fn(q, **kw)
        assert "limit" in str(ei.value)
    # at the limits the search answers, and the hub still serves ordinary queries
    assert hub.search(q, k=10**6, jslsh_k=64, jslsh_l=64)
    assert len(hub.search(q, k=3)) == 3


def test_embedding_candidates_and_nearest_are_bounded(tmp_path, rng):
    hub = fitsketch.open(tmp_path / "h")
    embs = {}
    for i in range(5):
        embs[f"e{i}"] = rng.normal(size=(7 + i, 4)).astype(np.float32)
        hub.add(f"e{i}", _frame(rng, n=7 + i), embedding=embs[f"e{i}"])
    n_samples = sum(len(e) for e in embs.values())
    xq = rng.normal(size=(3, 4)).astype(np.float32)
    # sample level: k over the samples held is answered at the documented shape, padded with -inf / -1
    D, I = hub.nearest(xq, k=1000)
    assert D.shape == I.shape == (3, 1000)
    assert (I[:, :n_samples] >= 0).all() and (I[:, n_samples:] == -1).all() and np.isneginf(D[:, n_samples:]).all()
    D2, I2 = hub.nearest(xq, k=n_samples)
    assert np.array_equal(I2, I[:, :n_samples])
    with pytest.raises(E.LimitExceededError):
        hub.nearest(xq, k=10**9)
    with pytest.raises(E.LimitExceededError):
        hub.nearest(np.repeat(xq, 400, axis=0), k=10**4)     # 1200 x 10^4 slots
    # entry level: never more matches than entries
    ms = hub.nearest(xq[0], k=10**6, level="entry")
    assert sorted(m.name for m in ms) == sorted(embs)
    with pytest.raises(E.LimitExceededError):
        hub.nearest(xq[0], k=10**9, level="entry")
    q = _frame(rng)
    with pytest.raises(E.LimitExceededError):
        hub.search(q, embedding=xq[0], embedding_candidates=10**9)
    got = hub.search(q, k=10, embedding=xq[0], embedding_candidates=10**6)    # clamped to the 5 entries
    ref = hub.search(q, k=10, embedding=xq[0], embedding_candidates=5)
    assert [(m.name, m.score) for m in got] == [(m.name, m.score) for m in ref] and len(ref) == 5
    hub.close()


def test_wide_query_is_refused_with_the_column_limit(small_hub):
    hub, rng = small_hub
    from fitsketch.hub import MAX_QUERY_COLUMNS

    wide = pd.DataFrame(rng.normal(size=(1, MAX_QUERY_COLUMNS + 1)), columns=[f"c{i}" for i in range(MAX_QUERY_COLUMNS + 1)])
    with pytest.raises(E.LimitExceededError) as ei:
        hub.search(wide)
    assert str(MAX_QUERY_COLUMNS) in str(ei.value)
    sk = fitsketch.sketch(wide, hub.config)
    with pytest.raises(E.LimitExceededError):
        hub.search(sk)
    # the widest allowed query is answered (its 'a' / 'b' columns match the entries)
    ok = wide.iloc[:, :MAX_QUERY_COLUMNS - 2].assign(a=[0.1], b=[1])
    assert hub.search(ok, k=2)


# ------------------------------------------------------------------- 4. records validated on the way in
def _mutations(sk):
    """(what, function turning a copy of ``sk`` into a malformed sketch)."""
    def cov(**kw):
        def f(s):
            s.coverage = {**s.coverage, **kw}
        return f

    def hist(key, fn):
        def f(s):
            s.hist = {**s.hist, key: fn(s.hist[key].copy())}
        return f

    return [
        ("coverage keys of other columns", cov(keys=sk.coverage["keys"][::-1].copy())),
        ("coverage keys too short", cov(keys=sk.coverage["keys"][:-1], center=sk.coverage["center"][:-1])),
        ("coverage bits=30", cov(bits=30)),
        ("coverage tables=65536", cov(tables=65536)),
        ("coverage code out of range", cov(code=sk.coverage["code"].astype(np.int64) + (1 << 20))),
        ("coverage center not finite", cov(center=np.full_like(sk.coverage["center"], np.nan))),
        ("unsorted histogram", hist("bucket", lambda a: a[::-1].copy())),
        ("histogram part out of range", hist("part", lambda a: a + 10**6)),
        ("histogram feat out of range", hist("feat", lambda a: a + 5)),
        ("histogram count 0", hist("count", lambda a: a * 0)),
        ("histogram arrays of two lengths", hist("count", lambda a: a[:-1])),
        ("n_partitions=2**33", lambda s: setattr(s, "n_partitions", 2**33)),
        ("n_partitions > n_rows", lambda s: setattr(s, "n_partitions", s.n_rows + 1)),
        ("n_rows=2**50", lambda s: setattr(s, "n_rows", 2**50)),
        ("signatures of another width", lambda s: setattr(s, "signatures", s.signatures[:, :7].copy())),
        ("signatures as float", lambda s: setattr(s, "signatures", s.signatures.astype(np.float64))),
        ("negative counts", lambda s: setattr(s, "counts", -s.counts)),
        ("kinds unknown", lambda s: setattr(s, "kinds", ["blob"] * len(s.kinds))),
        ("two features of one name", lambda s: setattr(s, "names", [s.names[0]] * len(s.names))),
    ]


def test_malformed_sketches_are_refused_and_leave_the_hub_unchanged(small_hub):
    import copy

    hub, rng = small_hub
    good = fitsketch.sketch(_frame(rng, n=1200), hub.config)
    before = (hub.names(), hub.stats()["generation"])
    for what, mutate in _mutations(good):
        bad = copy.deepcopy(good)
        mutate(bad)
        for add in (lambda: hub.add_sketch("new", bad), lambda: hub.add_sketches([("ok", good), ("new", bad)])):
            with pytest.raises(E.InvalidArgumentError, match="malformed"):
                add()
        # the same bytes through Sketch.from_bytes: a named error there or on add (float signatures
        # holding the same integers are read back as the uint32 they were)
        if what == "signatures as float":
            assert np.array_equal(fitsketch.Sketch.from_bytes(bad.to_bytes()).signatures, good.signatures)
        else:
            with pytest.raises(E.InvalidArgumentError):
                hub.add_sketch("new", fitsketch.Sketch.from_bytes(bad.to_bytes()))
        assert (hub.names(), hub.stats()["generation"]) == before, what
    hub.add_sketch("new", fitsketch.Sketch.from_bytes(good.to_bytes()))       # the unmutated one is accepted
    assert hub.search(_frame(rng), k=3, method="coverage")


@pytest.mark.parametrize("rec", [
    {"v": 1}, {"v": 1, "config_key": 3, "partition_size": "x", "names": 5, "kinds": [], "signatures": 1,
               "sums": [], "counts": [], "n_rows": 1, "n_partitions": 1, "hist": "x"},
    "not a map", [1, 2, 3],
])
def test_from_bytes_of_malformed_records_is_a_named_error(rec):
    from fitsketch.storage import pack

    with pytest.raises(E.InvalidArgumentError):
        fitsketch.Sketch.from_bytes(pack(rec))
    with pytest.raises(E.FitsketchError):
        fitsketch.Sketch.from_bytes(b"\xc1garbage")


def test_metadata_is_plain_data(small_hub):
    hub, rng = small_hub
    sk = fitsketch.sketch(_frame(rng), hub.config)
    with pytest.raises(E.CodecError, match="tolist"):
        hub.add_sketch("m", sk, metadata={"task": np.array([1, 2, 3])})
    with pytest.raises(E.CodecError):
        hub.add_sketch("m", sk, metadata={"nested": [{"a": np.zeros(2)}]})
    with pytest.raises(E.InvalidArgumentError, match="surrogate"):
        hub.add_sketch("m", sk, metadata={"task": "bad\udc80"})
    assert "m" not in hub
    e = hub.add_sketch("m", sk, metadata={"acc": np.float32(0.5), "n": np.int64(3), "tags": ("a", "b")})
    assert e.metadata == {"acc": 0.5, "n": 3, "tags": ["a", "b"]} and type(hub.get("m").metadata["n"]) is int
    assert [m.name for m in hub.search(_frame(rng), k=30, where={"n": 3})] == ["m"]
    with pytest.raises(E.CodecError):
        hub.search(_frame(rng), where={"task": np.array([1, 2, 3])})


def _poison(hub, name, fn):
    """Damage entry ``name`` in place, as an older fitsketch without these checks could have stored it."""
    from fitsketch.storage import u64

    def write(txn):
        key = txn.get_raw("names", name.encode("utf-8"))
        fn(txn, key)
    hub.store.transact(write)


def test_search_skips_damaged_entries_and_says_so(small_hub):
    hub, rng = small_hub
    q = _frame(rng, n=60, shift=0)
    ref = {m: [x.name for x in hub.search(q, k=30, method=m, shortlist=0)] for m in ("adaptivity", "coverage", "l2")}
    victims = ref["coverage"][:3]

    def bad_parts(txn, key):
        rec = txn.get("entries", key)
        txn.put("entries", key, {**rec, "n_partitions": 2**33})

    def bad_cov(txn, key):
        extra = txn.get("extra", key)
        cov = extra["coverage"]
        txn.put("extra", key, {**extra, "coverage": {**cov, "keys": cov["keys"][:-1], "center": cov["center"][:-1]}})

    def bad_meta(txn, key):
        rec = txn.get("entries", key)
        txn.put("entries", key, {**rec, "metadata": {"task": np.array([1, 2, 3])}})

    _poison(hub, victims[0], bad_parts)
    _poison(hub, victims[1], bad_cov)
    _poison(hub, victims[2], bad_meta)
    for method, skipped in (("adaptivity", [victims[0]]), ("l2", [victims[0]]), ("coverage", victims[:2])):
        plan = hub.explain(q, k=30, method=method, shortlist=0)
        score = next(s for s in plan.stages if s.name == "score")
        assert all(repr(v) in score.detail for v in skipped) and "damaged" in score.detail, (method, score.detail)
        got = [m.name for m in hub.search(q, k=30, method=method, shortlist=0)]
        assert got == [n for n in ref[method] if n not in skipped], method
    # the damaged metadata fails every where= equality instead of raising
    hub.add_sketch("tagged", fitsketch.sketch(q, hub.config), metadata={"task": "x"})
    assert [m.name for m in hub.search(q, k=30, where={"task": "x"})] == ["tagged"]
    hub.remove(victims[0])                      # and the entries can be removed
    assert victims[0] not in hub
