"""Hostile requests and bad states (issue 23): each ends in a named error or a correct answer, and
the hub keeps serving other queries.

Consistent snapshots (a search racing a remove), bounded parameters, validated sketches and
metadata, damaged stored records skipped by searches, errors that tell the truth, compaction.
The socket server's attacks live in tests/test_hardening_server.py.
"""
from __future__ import annotations

import os
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
    items = [(f"e{i:02d}", fitsketch.sketch_data(_frame(rng, shift=i % 6), hub.config)) for i in range(24)]
    hub.add_sketches(items)
    yield hub, rng
    hub.close()


# ------------------------------------------------------------------------ 1. consistent snapshots
def test_search_skips_entries_removed_after_the_shortlist(small_hub, monkeypatch):
    """Deterministic race: every shortlisted entry but one is removed between the shortlist's
    transaction and the scoring transaction; the search answers from what is left."""
    hub, rng = small_hub
    q = _frame(rng, shift=0)
    from fitsketch import pipeline

    original = pipeline.shortlist
    removed = []

    def racing_shortlist(self, *a, **kw):
        ids = original(self, *a, **kw)
        assert ids is not None and len(ids) >= 2   # + a small query's proxy margin (planner)
        with self.store.read() as txn:
            names = sorted(txn.get("entries", key)["name"] for key in ids)
        self.remove(names[0])
        removed.append(names[0])
        return ids

    monkeypatch.setattr(pipeline, "shortlist", racing_shortlist)
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
        sketches[n] = fitsketch.sketch_data(_frame(np.random.default_rng(len(n)), shift=1), hub.config)
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
    sk = fitsketch.sketch_data(wide, hub.config)
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
        ("coverage table negative", cov(table=sk.coverage["table"].astype(np.int16) - 1)),
        ("coverage code negative", cov(code=-sk.coverage["code"].astype(np.int32) - 1)),
        ("coverage count negative", cov(count=sk.coverage["count"].astype(np.int64) * -1)),
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
    good = fitsketch.sketch_data(_frame(rng, n=1200), hub.config)
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
    sk = fitsketch.sketch_data(_frame(rng), hub.config)
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
    hub.add_sketch("tagged", fitsketch.sketch_data(q, hub.config), metadata={"task": "x"})
    assert [m.name for m in hub.search(q, k=30, where={"task": "x"})] == ["tagged"]
    hub.remove(victims[0])                      # and the entries can be removed
    assert victims[0] not in hub


# ------------------------------------------------------------------------ 6. errors that tell the truth
def test_writes_on_a_readonly_handle_say_read_only(small_hub, tmp_path):
    hub, rng = small_hub
    path, names = hub.path, hub.names()
    sk = fitsketch.sketch_data(_frame(rng), hub.config)
    hub.close()
    with fitsketch.open(path, readonly=True) as ro:
        for write in (lambda: ro.add("n", _frame(rng)), lambda: ro.add_sketch("n", sk), lambda: ro.remove(names[0]),
                      lambda: ro.add_sketches([("n", sk)]), ro.compact):
            with pytest.raises(E.ReadOnlyHubError, match="readonly"):
                write()
        assert ro.names() == names


_READONLY_CHILD = r'''
import json, os, sys
import numpy as np, pandas as pd
import fitsketch
from fitsketch import errors as E

path, scratch = sys.argv[1], sys.argv[2]
q = pd.DataFrame({"a": np.linspace(-1, 1, 40), "b": np.arange(40) % 6})
with fitsketch.open(scratch) as h:          # import what a search imports lazily, before dropping rights
    h.add("x", q)
    h.search(q, method="coverage")
if os.geteuid() == 0:
    os.setgid(65534)
    os.setuid(65534)
out = {}
try:
    fitsketch.open(path)
    out["writable"] = "opened"
except E.FitsketchError as e:
    out["writable"] = [e.code, str(e)]
with fitsketch.open(path, readonly=True) as h:
    out["names"] = h.names()
    out["top"] = [m.name for m in h.search(q, k=3)]
    try:
        h.add("new", q)
    except E.FitsketchError as e:
        out["add"] = e.code
print(json.dumps(out))
'''


def test_read_only_directory_opens_readonly_and_says_what_to_do(tmp_path, rng):
    import json
    import shutil
    import subprocess
    import sys
    import tempfile

    root = tempfile.mkdtemp(dir="/tmp", prefix="fro")
    try:
        os.chmod(root, 0o755)
        path = os.path.join(root, "hub")
        with fitsketch.open(path) as hub:
            hub.add_sketches([(f"e{i}", fitsketch.sketch_data(_frame(rng, shift=i), hub.config)) for i in range(4)])
            names, top = hub.names(), [m.name for m in hub.search(
                pd.DataFrame({"a": np.linspace(-1, 1, 40), "b": np.arange(40) % 6}), k=3)]
        for d, _, files in os.walk(path):
            for f in files:
                os.chmod(os.path.join(d, f), 0o444)
            os.chmod(d, 0o555)
        res = subprocess.run([sys.executable, "-c", _READONLY_CHILD, path, str(tmp_path / "scratch")],
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        out = json.loads(res.stdout.strip().splitlines()[-1])
        code, msg = out["writable"]
        assert code == "read_only" and "readonly=True" in msg and "corrupt" not in msg.lower()
        assert out["names"] == names and out["top"] == top and out["add"] == "read_only"
    finally:
        for d, _, _ in os.walk(root):
            os.chmod(d, 0o755)
        shutil.rmtree(root, ignore_errors=True)


_DISK_FULL_CHILD = r'''
import json, os, resource, signal, sys
import numpy as np, pandas as pd
import fitsketch
from fitsketch import errors as E

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)     # writes past RLIMIT_FSIZE fail with EFBIG instead
rng = np.random.default_rng(int(sys.argv[2]))
out = {"added": []}
with fitsketch.open(sys.argv[1]) as hub:
    hub.add("first", pd.DataFrame({"a": rng.normal(size=100)}))
    resource.setrlimit(resource.RLIMIT_FSIZE, (hub.store.env_bytes(), resource.RLIM_INFINITY))
    try:
        for i in range(300):
            hub.add(f"e{i}", pd.DataFrame({"a": rng.normal(size=2000), "b": rng.integers(0, 1000, 2000)}))
            out["added"].append(f"e{i}")
    except E.FitsketchError as e:
        out["error"] = [e.code, str(e), isinstance(e, OSError)]
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    out["names"] = sorted(hub.names())
    hub.add("after", pd.DataFrame({"a": rng.normal(size=100)}))
    out["after"] = "after" in hub
print(json.dumps(out))
'''


def test_disk_full_is_a_named_error_and_nothing_is_half_written(tmp_path, rng):
    import json
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-c", _DISK_FULL_CHILD, str(tmp_path / "h"), str(int(rng.integers(1 << 30)))],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    code, msg, is_oserror = out["error"]
    assert code == "disk_full" and "nothing was written" in msg and is_oserror
    assert out["names"] == sorted(["first", *out["added"]]) and out["after"]
    import _hubcheck as hc

    with fitsketch.open(tmp_path / "h") as hub:      # every invariant holds after the failed commit
        hc.check_hub(hub)
        assert sorted(hub.names()) == sorted(out["names"] + ["after"])


def test_index_write_failure_leaves_no_temporary_files(tmp_path, rng, monkeypatch):
    hub = fitsketch.open(tmp_path / "h")
    embs = {f"e{i}": rng.normal(size=(9, 4)).astype(np.float32) for i in range(3)}
    for name, x in embs.items():
        hub.add(name, _frame(rng, n=9), embedding=x)
    from fitsketch import faiss_files

    def full_disk(src, dst):
        # the temporary file is written when the disk fills up (the sidecar cannot follow)
        assert os.path.exists(src) and ".tmp" in src
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(faiss_files.os, "replace", full_disk)
    xq = rng.normal(size=(2, 4)).astype(np.float32)
    D, I = hub.nearest(xq, k=4, index="flat")          # answered from the index kept in memory

    def unit(a):
        return a / np.linalg.norm(a, axis=-1, keepdims=True)

    allx = unit(np.concatenate(list(embs.values())))
    ref = np.sort(unit(xq) @ allx.T, axis=1)[:, ::-1][:, :4]
    assert np.allclose(D, ref, atol=1e-5)
    for qi in range(2):
        for d, sid in zip(D[qi], I[qi]):
            name, row = hub.sample(int(sid))
            assert abs(float(unit(xq[qi]) @ unit(embs[name][row])) - d) < 1e-5
    idx_dir = tmp_path / "h" / "indexes"
    assert not [f for f in (os.listdir(idx_dir) if idx_dir.exists() else []) if ".tmp" in f]
    hub.close()


@pytest.mark.parametrize("path", [None, b"..", "", 3, "bad\udc80path"])
def test_open_refuses_bad_paths(path):
    with pytest.raises(E.InvalidArgumentError, match="path"):
        fitsketch.open(path)


def test_open_under_a_file_is_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    for p in (f / "child", f / "a" / "b"):
        with pytest.raises(E.InvalidArgumentError, match="which is a file"):
            fitsketch.open(p)
    with pytest.raises(E.HubNotFoundError):
        fitsketch.open(f)
    assert sorted(os.listdir(tmp_path)) == ["file"]


def test_lone_surrogates_are_named_errors(small_hub):
    hub, rng = small_hub
    before = (hub.names(), hub.stats()["generation"])
    for data in ({"a\udc80": [1.0, 2.0, 3.0]}, {"a": ["x\udc80", "y", "z"]},
                 {"a": np.array(["x\udc80", "y"], dtype=object)}):
        with pytest.raises(E.InvalidArgumentError, match="surrogate"):
            hub.add("n", data)
        with pytest.raises(E.InvalidArgumentError, match="surrogate"):
            hub.search(data)
        with pytest.raises(E.InvalidArgumentError, match="surrogate"):
            fitsketch.sketch_data(data)
    with pytest.raises(E.InvalidArgumentError, match="surrogate"):
        hub.add("bad\udc80name", _frame(rng))
    assert "bad\udc80name" not in hub
    assert (hub.names(), hub.stats()["generation"]) == before


def test_names_are_nfc_normalized(small_hub):
    import unicodedata

    hub, rng = small_hub
    nfc, nfd = unicodedata.normalize("NFC", "café-ṩ"), unicodedata.normalize("NFD", "café-ṩ")
    assert nfc != nfd
    e = hub.add(nfd, _frame(rng))
    assert e.name == nfc and nfc in hub and nfd in hub
    with pytest.raises(E.EntryExistsError):
        hub.add(nfc, _frame(rng))
    with pytest.raises(E.EntryExistsError):
        hub.add_sketches([(nfc, fitsketch.sketch_data(_frame(rng), hub.config))])
    with pytest.raises(E.EntryExistsError, match="twice"):
        hub.add_sketches([("x" + nfc, fitsketch.sketch_data(_frame(rng), hub.config)),
                          ("x" + nfd, fitsketch.sketch_data(_frame(rng), hub.config))])
    assert hub.get(nfd).name == nfc and [n for n in hub.names() if n.startswith("caf")] == [nfc]
    hub.remove(nfd)
    assert nfc not in hub


def test_complex_columns_are_refused(small_hub):
    hub, rng = small_hub
    before = hub.names()
    for data in ({"a": np.arange(10) * 1j, "b": np.arange(10.0)}, np.ones((10, 2), dtype=complex),
                 pd.DataFrame({"z": rng.normal(size=5) + 1j * rng.normal(size=5)})):
        with pytest.raises(E.UnsupportedDataError, match="complex"):
            hub.add("c", data)
        with pytest.raises(E.UnsupportedDataError, match="complex"):
            hub.search(data)
        with pytest.raises(E.UnsupportedDataError, match="complex"):
            fitsketch.sketch_data(data)
    assert hub.names() == before


# ------------------------------------------------------------------------------------- compaction
def test_compact_brings_a_churned_hub_back_to_its_live_size(tmp_path, rng):
    import _hubcheck as hc

    hub = fitsketch.open(tmp_path / "h")
    keep = [(f"k{i}", fitsketch.sketch_data(_frame(rng, n=300, shift=i % 5), hub.config)) for i in range(10)]
    churn = [(f"c{i}", fitsketch.sketch_data(_frame(rng, n=300, shift=i % 5), hub.config)) for i in range(400)]
    hub.add_sketches(keep[:5])
    hub.add_sketches(churn)
    hub.add_sketches(keep[5:])
    for name, _ in churn:
        hub.remove(name)
    q = _frame(rng, n=100, shift=2)
    ref = [(m.name, m.score) for m in hub.search(q, k=10, method="exact-js")]
    churned = hub.store.env_bytes()
    with fitsketch.open(tmp_path / "fresh") as fresh:        # the same live data, never churned
        fresh.add_sketches(keep)
        live = fresh.store.env_bytes()
    out = hub.compact()
    assert out == {"band_transactions": 1, "before": churned, "after": hub.store.env_bytes()}
    assert out["after"] <= 1.5 * live < churned
    assert [(m.name, m.score) for m in hub.search(q, k=10, method="exact-js")] == ref
    hc.check_hub(hub)
    hub.add_sketch("later", churn[0][1])           # writable after the swap
    hub.close()
    with fitsketch.open(tmp_path / "h") as again:
        assert sorted(again.names()) == sorted([n for n, _ in keep] + ["later"])


def test_compact_refuses_while_another_process_has_the_hub_open(tmp_path, rng):
    import subprocess
    import sys

    hub = fitsketch.open(tmp_path / "h")
    hub.add_sketches([(f"e{i}", fitsketch.sketch_data(_frame(rng), hub.config)) for i in range(3)])
    child = subprocess.Popen([sys.executable, "-c", "import sys, fitsketch\nh = fitsketch.open(sys.argv[1], "
                              "readonly=True)\nprint(len(h), flush=True)\nsys.stdin.read()", str(tmp_path / "h")],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "3"
        size = hub.store.env_bytes()
        with hub.store.read() as txn:
            delta = txn.count("bands")
        with pytest.raises(E.HubBusyError, match="another process"):
            hub.compact()
        assert hub.store.env_bytes() == size and len(hub) == 3
        with hub.store.read() as txn:                 # nothing written: the band postings not compacted either
            assert txn.count("bands") == delta > 0
        assert not [f for f in os.listdir(tmp_path / "h") if "compact" in f]
    finally:
        child.communicate("", timeout=60)
    assert hub.compact()["after"] <= size
    assert len(hub) == 3
    hub.close()


def test_cli_compact(tmp_path, rng):
    import json
    import subprocess
    import sys

    with fitsketch.open(tmp_path / "h") as hub:
        hub.add_sketches([(f"e{i}", fitsketch.sketch_data(_frame(rng, n=300), hub.config)) for i in range(60)])
        for i in range(55):
            hub.remove(f"e{i}")
        churned = hub.store.env_bytes()
    res = subprocess.run([sys.executable, "-m", "fitsketch.cli", "compact", str(tmp_path / "h"), "--json"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout)
    assert out["before"] == churned and out["after"] < churned
    assert fitsketch.inspect(tmp_path / "h")["entries"] == 5


def test_feature_pair_budget_bounds_the_minhash_stage(small_hub, monkeypatch):
    """The candidate stage compares query columns with the stored features it verifies: past
    MAX_FEATURE_PAIRS (8.4M, ~10 s) pairs the search is refused, naming the limit. An entry with the
    query's columns in the query's order aligns by the identity and costs one pair per column; any
    other entry costs every (query column, stored feature) pair."""
    import fitsketch.candidates as H

    hub, rng = small_hub
    same = _frame(rng)                                 # a, b like every entry: 2 pairs x 24 entries = 48
    swapped = same[["b", "a"]]                         # other order: 2 x 2 pairs x 24 entries = 96
    ref = {id(q): [(m.name, m.score) for m in hub.search(q, k=5, shortlist=0)] for q in (same, swapped)}
    for q, need in ((same, 48), (swapped, 96)):
        monkeypatch.setattr(H, "MAX_FEATURE_PAIRS", need - 1)
        with pytest.raises(E.LimitExceededError, match=str(need - 1)):
            hub.search(q, k=5, shortlist=0)
        monkeypatch.setattr(H, "MAX_FEATURE_PAIRS", need)
        assert [(m.name, m.score) for m in hub.search(q, k=5, shortlist=0)] == ref[id(q)]


def test_empty_npy_file_is_a_named_error(small_hub, tmp_path):
    hub, rng = small_hub
    empty = tmp_path / "empty.npy"
    empty.write_bytes(b"")
    truncated = tmp_path / "trunc.npy"
    np.save(truncated, rng.normal(size=(50, 3)))
    truncated.write_bytes(truncated.read_bytes()[:20])
    for f in (empty, truncated):
        for call in (lambda: hub.add("n", str(f)), lambda: hub.search(str(f)), lambda: fitsketch.sketch_data(str(f))):
            with pytest.raises(E.UnsupportedDataError):
                call()
    assert "n" not in hub
