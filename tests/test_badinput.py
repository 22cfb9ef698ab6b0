"""Bad input: whatever ``hub.add`` / ``hub.search`` are given, they either work or raise a
``fitsketch.FitsketchError`` subclass (never another exception type), and a failed call leaves the
hub byte-for-byte unchanged (every key and value of every database, read through the hub's own
read transaction). Then damaged hub files: opening and reading them gives a FitsketchError (or
works), never a raw lmdb exception, a crash of the interpreter or a hang -- probed in forked
workers so a segfault fails the test instead of killing the runner.

Property tests: 40 examples each by default, 500 under ``-m slow``.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import _hubcheck as hc
import fitsketch
from fitsketch.config import QUERY_PARAMS

# the default suite (CI) replays the same examples every run (derandomize); `-m slow` explores
FAST = settings(max_examples=40, deadline=None, database=None, derandomize=True,
                suppress_health_check=list(HealthCheck))
SLOW = settings(max_examples=500, deadline=None, database=None, suppress_health_check=list(HealthCheck))

TRIED = {"add": 0, "search": 0}


@pytest.fixture(scope="module")
def hub():
    d = tempfile.mkdtemp(prefix="fsbad")
    with fitsketch.open(os.path.join(d, "hub")) as h:
        for n in ("base-0", "base-1"):
            h.add(n, hc.make_frame(n))
        yield h
    shutil.rmtree(d, ignore_errors=True)


# ------------------------------------------------------------------------------- strategies
CELLS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2 ** 70), 2 ** 70), st.floats(), st.text(max_size=12),
    st.binary(max_size=8), st.complex_numbers(), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.lists(st.integers(), max_size=3), st.sampled_from([float("nan"), float("inf"), -float("inf"), pd.NA, pd.NaT]),
    st.datetimes(), st.decimals(allow_nan=True), st.tuples(st.integers()), st.frozensets(st.integers(), max_size=2),
)
COL_NAMES = st.one_of(st.text(max_size=10), st.integers(-5, 5), st.just(""), st.floats(allow_nan=False),
                      st.sampled_from(["a", "b", "c", "ß", "名前", "😀", "a\x00b", " "]), st.none(), st.booleans())


def _homogeneous(n):
    return st.one_of(
        st.lists(st.floats(), min_size=n, max_size=n),
        st.lists(st.integers(-(2 ** 64), 2 ** 64), min_size=n, max_size=n),
        st.lists(st.text(max_size=20), min_size=n, max_size=n),
        st.lists(st.sampled_from(["red", "green", None]), min_size=n, max_size=n),
        hnp.arrays(hnp.scalar_dtypes(), n),
        st.lists(CELLS, min_size=n, max_size=n),                         # mixed types in a column
    )


@st.composite
def dict_data(draw):
    n = draw(st.integers(0, 60))
    ragged = draw(st.booleans()) and draw(st.booleans())
    cols = draw(st.lists(COL_NAMES, max_size=4))
    return {c: draw(_homogeneous(draw(st.integers(0, 60)) if ragged else n)) for c in cols}


@st.composite
def frame_data(draw):
    n = draw(st.integers(0, 60))
    names = draw(st.lists(st.sampled_from(["a", "b", "c", "x", 0, 1, "ü"]), max_size=4))  # duplicates happen
    cols = [pd.Series(draw(_homogeneous(n)), dtype=object if draw(st.booleans()) else None) for _ in names]
    df = pd.concat(cols, axis=1, ignore_index=True) if cols else pd.DataFrame(index=range(n))
    if cols:
        df.columns = names
    return df


ARRAYS = hnp.arrays(
    dtype=st.one_of(hnp.scalar_dtypes(), hnp.unicode_string_dtypes(max_len=5), hnp.byte_string_dtypes(max_len=5),
                    hnp.datetime64_dtypes(), hnp.timedelta64_dtypes(), st.just(np.dtype("O")),
                    st.just(np.dtype([("x", "f4"), ("y", "i2")]))),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6))


@st.composite
def object_arrays(draw):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=5))
    a = np.empty(shape, dtype=object)
    for idx in np.ndindex(shape):
        a[idx] = draw(CELLS)
    return a


OTHER = st.one_of(st.none(), st.integers(), st.floats(), st.binary(max_size=20), st.text(max_size=30),
                  st.lists(st.lists(st.integers(), max_size=3), max_size=3), st.frozensets(st.integers()),
                  st.just(pd.Series([1.0, 2.0, 3.0])), st.just(pd.Series([], dtype=float)),
                  st.just("/nonexistent/x.csv"), st.just("/"), st.just("/dev/null"), st.just("/etc/passwd"),
                  st.just(b"/etc/passwd"), st.just(Ellipsis), st.just(object()), st.just(range(5)))

DATA = st.one_of(dict_data(), frame_data(), ARRAYS, object_arrays(), OTHER)
NAMES = st.one_of(st.text(max_size=20), st.just(""), st.just("x" * 1025), st.just("é" * 600), st.just("a\x00"),
                  st.just("x" * 511), st.just("x" * 1024),
                  st.integers(), st.none(), st.binary(max_size=4))
FEATURE_NAMES = st.one_of(st.none(), st.lists(COL_NAMES, max_size=5), st.just("abc"), st.integers())
META_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2 ** 70), 2 ** 70), st.floats(), st.text(max_size=8),
              st.binary(max_size=8), st.just(object()), st.just({1, 2}), st.just(np.arange(3)),
              st.just(np.array([{"a": 1}], dtype=object)), st.complex_numbers()),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.one_of(st.text(max_size=4), st.integers()), c, max_size=3),
    max_leaves=6)
METADATA = st.one_of(st.none(), st.dictionaries(st.text(max_size=6), META_VALUES, max_size=3), META_VALUES)


def _search_kwargs():
    params = st.dictionaries(
        st.sampled_from(list(QUERY_PARAMS) + ["bogus", "loss", "normalize"]),
        st.one_of(st.floats(), st.integers(-3, 10 ** 6), st.booleans(), st.text(max_size=6), st.none()), max_size=2)
    return st.fixed_dictionaries({}, optional={
        "k": st.one_of(st.integers(-2, 60), st.booleans(), st.floats(), st.none(), st.text(max_size=2)),
        "method": st.one_of(st.sampled_from(list(fitsketch.METHODS) + ["", "bogus", "ADAPTIVITY"]), st.integers()),
        "where": st.one_of(st.none(), st.dictionaries(st.text(max_size=4), META_VALUES, max_size=2),
                           st.lists(st.integers(), max_size=2)),
    }).flatmap(lambda kw: params.map(lambda p: {**kw, **p}))


# ------------------------------------------------------------------------------- fixed bugs
# Each was found by this suite, pinned by a strict xfail, fixed, and is now a regression test.


def test_non_utf8_bytes_column_is_text_not_a_crash(hub):
    """Was: bytes values that are not UTF-8 reached ``astype(str)`` and raised UnicodeDecodeError.
    Now to_frame decodes bytes with backslash escapes: the add works."""
    data = {"a": [b"\x00\xff", b"", b"abc"] * 3}
    e = _add(hub, "edge", data)
    assert e is not None and (e.n_rows, e.kinds, e.features) == (9, ["categorical"], ["a"])
    _search(hub, data)


def test_signaling_nan_decimals_are_missing_values_not_a_crash(hub):
    """Was: a Decimal('sNaN') reached pandas' isna, which raised decimal.InvalidOperation (found by
    test_add_any_data when another module's settings changed the examples). Now to_frame turns
    Decimals into floats, a NaN of either kind into NaN: the column is numeric, the add works."""
    from decimal import Decimal

    data = {"a": [Decimal("sNaN"), Decimal("1.5"), Decimal("-sNaN"), Decimal("NaN"), Decimal(2)] * 3}
    e = _add(hub, "dec", data)
    assert e is not None and e.n_rows == 15
    assert e.kinds == ["numeric"]
    _search(hub, data)


def test_non_iterable_feature_names_raise_a_named_error(hub):
    """Was: ``feature_names=0`` raised TypeError from a list comprehension."""
    with pytest.raises(fitsketch.errors.InvalidArgumentError, match="feature_names"):
        hub.add("edge", np.zeros((5, 2)), feature_names=0)
    _search(hub, np.zeros((5, 2)), feature_names=0)


# ------------------------------------------------------------------------------- the checks
def _assert_says_what_and_how(e: Exception) -> None:
    """A named error: a subclass (never the bare base) carrying its class's stable ``code``, and a
    message of its own -- a sentence (4 words or more) saying what was wrong -- not the code, the
    class name, a repr of Python internals or a traceback."""
    msg = str(e)
    name = type(e).__name__
    assert type(e) is not fitsketch.FitsketchError, f"bare FitsketchError: {e!r}"
    assert e.code == type(e).code and e.code != fitsketch.FitsketchError.code, f"{name} lost its code: {e!r}"
    assert msg.strip() not in ("", e.code, name), f"{name} says nothing: {e!r}"
    assert len(msg.split()) >= 4, f"{name} says too little: {e!r}"
    assert "Traceback" not in msg and " object at 0x" not in msg, f"{name} leaks internals: {e!r}"


def _add(hub, name, data, **kw):
    TRIED["add"] += 1
    before = hc.dump(hub)
    try:
        entry = hub.add(name, data, **kw)
    except fitsketch.FitsketchError as e:
        _assert_says_what_and_how(e)
        assert hc.dump(hub) == before, f"failed add ({type(e).__name__}: {e}) changed the hub"
        return None
    hc.check_hub(hub)
    assert entry.name == name and name in hub
    hub.remove(name)                          # keep the module's hub small
    return entry


def _search(hub, data, **kw):
    TRIED["search"] += 1
    before = hc.dump(hub)
    try:
        out = hub.search(data, **kw)
        assert isinstance(out, list) and all(isinstance(m, fitsketch.Match) for m in out)
        assert all(np.isfinite(m.score) or np.isinf(m.score) for m in out)
    except fitsketch.FitsketchError as e:
        _assert_says_what_and_how(e)
    assert hc.dump(hub) == before, "search changed the hub"


@FAST
@given(data=DATA, feature_names=FEATURE_NAMES)
def test_add_any_data(hub, data, feature_names):
    _add(hub, "new", data, feature_names=feature_names)


@FAST
@given(data=DATA, feature_names=FEATURE_NAMES)
def test_search_any_data(hub, data, feature_names):
    _search(hub, data, feature_names=feature_names)


@pytest.mark.parametrize("op", ["add", "get", "contains", "remove"])
def test_names_over_lmdbs_key_limit_raise_named_errors(hub, op):
    """Was: names of 512-1024 bytes passed the hub's check and LMDB raised ValueError."""
    name = "m" * 600
    if op == "add":
        assert _add(hub, name, hc.make_frame("q")) is None  # refused with a FitsketchError
    elif op == "get":
        with pytest.raises(fitsketch.FitsketchError):
            hub.get(name)
    elif op == "contains":
        assert name not in hub
    else:
        with pytest.raises(fitsketch.FitsketchError):
            hub.remove(name)


@FAST
@given(name=NAMES, metadata=METADATA, partition_size=st.one_of(st.none(), st.integers(-3, 100), st.floats(),
                                                               st.booleans(), st.text(max_size=2)))
def test_add_any_name_metadata_partition_size(hub, name, metadata, partition_size):
    _add(hub, name, hc.make_frame("q"), metadata=metadata, partition_size=partition_size)


@FAST
@given(kw=_search_kwargs())
def test_search_any_arguments(hub, kw):
    _search(hub, hc.make_frame("base-0"), **kw)


@pytest.mark.slow
@SLOW
@given(data=DATA, feature_names=FEATURE_NAMES)
def test_add_any_data_many(hub, data, feature_names):
    _add(hub, "new", data, feature_names=feature_names)


@pytest.mark.slow
@SLOW
@given(data=DATA, feature_names=FEATURE_NAMES, kw=_search_kwargs())
def test_search_any_data_and_arguments_many(hub, data, feature_names, kw):
    _search(hub, data, feature_names=feature_names, **kw)


@pytest.mark.slow
@SLOW
@given(name=NAMES, metadata=METADATA)
def test_add_any_name_metadata_many(hub, name, metadata):
    _add(hub, name, hc.make_frame("q"), metadata=metadata)


# ------------------------------------------------------------------------- named edge cases
MB = 1 << 20
EDGE = {
    "empty dict": {},
    "empty frame": pd.DataFrame(),
    "one row": pd.DataFrame({"a": [1.0], "b": ["x"]}),
    "nan column": {"a": [np.nan] * 10, "b": list(range(10))},
    "inf column": {"a": [np.inf, -np.inf] * 5},
    "nan and inf mixed": {"a": [np.nan, np.inf, -np.inf, 1.0, 2.0] * 4},
    "mixed types": {"a": [1, "x", 2.5, None, b"z", {"k": 1}, [1], True] * 3},
    "ragged dict": {"a": [1, 2, 3], "b": [1, 2]},
    "scalar columns": {"a": 1, "b": 2},
    "huge string cell": {"a": ["x" * MB, "y", "z"], "b": [1, 2, 3]},
    "huge column name": {"n" * MB: [1, 2, 3]},
    "complex array": np.ones((10, 2), dtype=complex),
    "complex column": {"a": np.arange(10) * 1j},
    "object array of dicts": np.array([[{"a": 1}, {"b": 2}]] * 5, dtype=object),
    "bytes column": {"a": [b"\x00", b"", b"abc"] * 3},
    "bytes array": np.array([[b"ab", b"cd"]] * 4),
    "duplicate columns": pd.DataFrame([[1, 2], [3, 4]], columns=["a", "a"]),
    "int and str named alike": {1: [1, 2], "1": [3, 4]},
    "unicode": {"名前": ["😀", "ß", "\u202e", "\x00"] * 3, "é": [1, 2, 3, 4] * 3},
    "0-d array": np.array(3.0),
    "1-d array": np.arange(10.0),
    "3-d array": np.arange(60.0).reshape(5, 3, 4),
    "5-d array": np.zeros((2, 1, 1, 1, 3)),
    "(0, 3) array": np.zeros((0, 3)),
    "(3, 0) array": np.zeros((3, 0)),
    "structured array": np.zeros((4, 2), dtype=[("x", "f4"), ("y", "i2")]),
    "datetime array": np.array([["2020-01-01"]] * 4, dtype="datetime64[D]"),
    "bool array": np.ones((6, 2), dtype=bool),
    "float16 array": np.ones((6, 2), dtype=np.float16),
    "uint64 max": np.full((5, 1), np.iinfo(np.uint64).max, dtype=np.uint64),
    "int beyond int64": {"a": [2 ** 70, 1, 2]},
    "pandas nullable": pd.DataFrame({"a": pd.array([1, None, 3], dtype="Int64"),
                                     "b": pd.array([True, None, False], dtype="boolean")}),
    "categorical": pd.DataFrame({"a": pd.Categorical(["x", "y", "x"])}),
    "multiindex columns": pd.DataFrame([[1, 2]], columns=pd.MultiIndex.from_tuples([("a", "x"), ("a", "y")])),
    "sparse": pd.DataFrame({"a": pd.arrays.SparseArray([0, 0, 1, 0])}),
    "interval": pd.DataFrame({"a": pd.interval_range(0, 4)}),
    "period": pd.DataFrame({"a": pd.period_range("2020", periods=3, freq="D")}),
    "tz datetimes": pd.DataFrame({"a": pd.date_range("2020", periods=3, tz="UTC")}),
    "timedelta": pd.DataFrame({"a": pd.to_timedelta([1, 2, 3], unit="s")}),
    "series": pd.Series([1.0, 2.0, 3.0], name="s"),
    "list of lists": [[1, 2], [3, 4]],
    "set": {1, 2, 3},
    "generator": (i for i in range(3)),
}


@pytest.mark.parametrize("label", list(EDGE))
def test_named_edge_cases(hub, label):
    data = EDGE[label]
    _add(hub, "edge", data)
    _search(hub, data)


def test_huge_names_and_metadata(hub):
    _add(hub, "n" * MB, hc.make_frame("q"))
    _add(hub, "big-meta", hc.make_frame("q"), metadata={"blob": "x" * MB, "bytes": b"\x00" * MB})
    _add(hub, "deep-meta", hc.make_frame("q"), metadata={"d": _nested(200)})


def _nested(depth):
    d = {}
    for _ in range(depth):
        d = {"x": d}
    return d


def test_add_with_autoencoder_bad_inputs(hub):
    from fitsketch.simex import AEConfig

    tiny = AEConfig(**hc.TINY_AE)
    for data, kw in [({"c": ["a", "b"] * 10}, {}),                        # no numeric column
                     ({"a": [1.0, 2.0, 3.0]}, {}),                         # too few samples
                     ({"a": [np.nan] * 20, "b": list(range(20))}, {}),
                     (hc.make_frame("q"), {"labels": "nope"}),
                     (hc.make_frame("q"), {"labels": [1, 2]}),
                     (hc.make_frame("q"), {"labels": "c"}),
                     (hc.make_frame("q"), {"image_shape": (3, 4, 5)}),
                     (hc.make_frame("q"), {"embedding": np.zeros((3, 2))}),
                     (hc.make_frame("q"), {"embedding": np.full((50, 4), np.nan)})]:
        _add(hub, "ae", data, autoencoder=True, ae_config=tiny, **kw)


# ------------------------------------------------------------------------------ damaged files
PROBE = r'''
import json, os, sys, traceback


def probe(hub, out):
    sys.path.insert(0, os.environ["FS_TESTS_DIR"])
    import _hubcheck as hc
    import fitsketch

    steps = []
    def run(what, fn):
        try:
            fn()
            steps.append([what, "ok"])
            return True
        except fitsketch.FitsketchError as e:
            steps.append([what, type(e).__name__])
        except AssertionError as e:            # a logically damaged hub: noted, not a crash
            steps.append([what, "inconsistent: " + str(e)[:200]])
        except BaseException as e:
            steps.append([what, "RAW " + type(e).__module__ + "." + type(e).__name__ + ": " + str(e)[:300]])
        return False

    run("inspect", lambda: fitsketch.inspect(hub))
    for readonly in (True, False):
        box = {}
        if not run(f"open readonly={readonly}", lambda: box.setdefault("h", fitsketch.open(hub, readonly=readonly,
                                                                                           create=False))):
            continue
        h = box["h"]
        try:
            run("names", lambda: box.setdefault("names", h.names()))
            run("len", lambda: len(h))
            for n in box.get("names", [])[:50]:
                run("get", lambda: h.get(n))
            run("check", lambda: hc.check_hub(h))
            run("dump", lambda: hc.dump(h))
            run("search", lambda: h.search(hc.make_frame("e-1"), method="exact-js"))
            run("search lsh", lambda: h.search(hc.make_frame("e-2")))
            if not readonly:
                run("add", lambda: h.add("after", hc.make_frame("after")))
                run("remove", lambda: h.remove(box.get("names", ["x"])[0]))
        finally:
            run("close", h.close)
    with open(out, "w") as f:
        json.dump(steps, f)
'''


def _make_hub(path, n=40):
    with fitsketch.open(path) as h:
        for i in range(n):
            h.add(f"e-{i}", hc.make_frame(f"e-{i}"), metadata={"i": i})
        for i in range(0, n, 3):
            h.remove(f"e-{i}")                # free pages, a deeper tree


def _corruptions(size, page, rng):
    mid = lambda: int(rng.integers(2, max(3, size // page - 1)))  # noqa: E731 - a page in the middle
    return {
        "truncated to half": lambda f: f.truncate(size // 2),
        "truncated to two pages": lambda f: f.truncate(2 * page),
        "truncated to 100 bytes": lambda f: f.truncate(100),
        "meta page 0 zeroed": lambda f: (f.seek(0), f.write(b"\0" * page)),
        "both meta pages zeroed": lambda f: (f.seek(0), f.write(b"\0" * 2 * page)),
        "meta pages random": lambda f: (f.seek(0), f.write(rng.bytes(2 * page))),
        "one middle page random": lambda f: (f.seek(mid() * page), f.write(rng.bytes(page))),
        "three middle pages random": lambda f: [(f.seek(mid() * page), f.write(rng.bytes(page))) for _ in range(3)],
        "middle page zeroed": lambda f: (f.seek(mid() * page), f.write(b"\0" * page)),
        "page headers flipped": lambda f: [(f.seek(p * page), f.write(rng.bytes(16))) for p in range(2, size // page)],
        "random bytes flipped": lambda f: [(f.seek(int(o)), f.write(rng.bytes(1)))
                                           for o in rng.integers(0, size, 64)],
        "last page cut": lambda f: f.truncate(size - page),
    }


def _probe_all(tmp_path, rounds: int, labels=None, seed=None):
    rng = np.random.default_rng(seed)
    seed = int(rng.integers(1 << 31)) if seed is None else seed
    rng = np.random.default_rng(seed)
    pristine = tmp_path / "pristine"
    if not pristine.exists():
        _make_hub(pristine)
    file = pristine / "hub.lmdb"
    size, page = os.path.getsize(file), os.sysconf("SC_PAGE_SIZE")
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    z = hc.zygote()
    outcomes, raw, crashed = {}, [], []
    for r in range(rounds):
        for i, (label, damage) in enumerate(_corruptions(size, page, rng).items()):
            if labels is not None and label not in labels:
                continue
            case = tmp_path / f"c{r}-{i}"
            shutil.copytree(pristine, case)
            with open(case / "hub.lmdb", "r+b") as f:
                damage(f)
            out, log = case / "out.json", case / "probe.log"
            pid = z.spawn(script, "probe", log, hub=str(case), out=str(out))
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not out.exists() and not hc.exited(pid):
                time.sleep(0.02)
            if not out.exists():
                try:
                    os.kill(pid, signal.SIGKILL)      # our own unreaped worker (dead or hung)
                except ProcessLookupError:
                    pass
            rc = z.wait(pid)
            if rc != 0 or not out.exists():
                crashed.append((label, rc, log.read_text()[-2000:] if log.exists() else ""))
                continue
            steps = json.loads(out.read_text())
            outcomes[label if rounds == 1 else f"{r}:{label}"] = steps
            raw += [(label, s) for s in steps if s[1].startswith("RAW")]
            shutil.rmtree(case, ignore_errors=True)
    print(f"\ndamaged hubs (seed {seed}): {len(outcomes) + len(crashed)} probed, crashes/hangs "
          f"{[(c[0], c[1]) for c in crashed]}, raw exceptions {sorted({(l, s[0], s[1][:90]) for l, s in raw})}")
    return outcomes, raw, crashed


HEADER_DAMAGE = ["truncated to 100 bytes", "meta page 0 zeroed", "both meta pages zeroed", "meta pages random",
                 "page headers flipped"]
RANDOM_DAMAGE = ["one middle page random", "three middle pages random", "middle page zeroed",
                 "random bytes flipped", "last page cut"]


def test_damaged_meta_pages_are_refused_on_open(tmp_path):
    outcomes, raw, crashed = _probe_all(tmp_path, rounds=1, labels=HEADER_DAMAGE)
    assert not crashed and not raw
    for label in HEADER_DAMAGE:
        for what, result in outcomes[label]:
            if what.startswith(("inspect", "open")):
                assert result in ("CorruptHubError", "SchemaError"), (label, what, result)


@pytest.mark.parametrize("label", ["truncated to half", "truncated to two pages"])
def test_truncated_hub_file_is_detected_not_a_sigbus(tmp_path, label):
    """Was a SIGBUS: LMDB read past the end of a truncated file; now refused on open."""
    outcomes, raw, crashed = _probe_all(tmp_path, rounds=1, labels=[label], seed=1)
    assert not crashed, f"the interpreter crashed on a damaged hub: {[(c[0], c[1]) for c in crashed]}"
    assert not raw, raw


@pytest.mark.slow
@pytest.mark.xfail(strict=False, reason="bug: random page damage can make LMDB abort (SIGABRT from mdb_assert) and "
                   "reads raise raw lmdb.CorruptedError (storage/txn.py does not translate it; engine/hub.py read "
                   "methods do not call E.translate); outcome depends on which pages are hit")
def test_random_page_damage_never_crashes_or_leaks_raw_errors(tmp_path):
    outcomes, raw, crashed = _probe_all(tmp_path, rounds=8, labels=RANDOM_DAMAGE)
    assert not crashed, f"the interpreter crashed or hung on a damaged hub: {[(c[0], c[1]) for c in crashed]}"
    assert not raw, f"raw (non-fitsketch) exceptions from a damaged hub: {raw}"


def test_empty_hub_file_is_not_silently_recreated(tmp_path):
    """A hub.lmdb truncated to 0 bytes: open(create=False) says there is no hub."""
    path = tmp_path / "h"
    _make_hub(path, n=3)
    os.truncate(path / "hub.lmdb", 0)
    with pytest.raises(fitsketch.errors.HubNotFoundError):
        fitsketch.open(path, create=False)


def test_empty_image_array_raises_empty_data(hub):
    """Was: a 3-D array with no elements failed in reshape with a raw ValueError (found by
    test_search_any_data in CI-like run)."""
    for arr in (np.zeros((0, 0, 0)), np.zeros((3, 0, 2)), np.array([], dtype=object).reshape(0, 0, 0)):
        with pytest.raises(fitsketch.errors.EmptyDataError):
            hub.search(arr)
        assert _add(hub, "e", arr) is None


def test_fixed_width_bytes_arrays_are_decoded(hub):
    """Was: an ``S``-dtype NumPy array or column of non-UTF-8 bytes raised UnicodeDecodeError."""
    arr = np.array([[b"\x80"], [b"ab"], [b"ab"]], dtype="S2")
    e = _add(hub, "s", arr)
    assert e is not None and (e.n_rows, e.kinds, e.features) == (3, ["categorical"], ["f0"])
    e = _add(hub, "t", pd.DataFrame({"a": arr[:, 0]}))
    assert e is not None and (e.n_rows, e.kinds, e.features) == (3, ["categorical"], ["a"])
    _search(hub, arr)
