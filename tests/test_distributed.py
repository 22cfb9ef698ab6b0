"""Distributed sketching: merge laws, distributed == local == one build_sketch, errors.

Tolerances: every integer part (signatures, histograms, counts, n_rows, coverage counts) is
compared with ``array_equal``. ``sums`` (float64) are equal bit for bit between engines (one
fixed merge tree) and within rtol 1e-12 where the grouping of the additions differs
(associativity, commutativity, one build_sketch over the concatenated frame).
"""
from __future__ import annotations

import multiprocessing as mp
import sys
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import fitsketch
from fitsketch import distributed as D
from fitsketch.config import SketchConfig
from fitsketch.errors import EmptyColumnError, EntryExistsError
from fitsketch.sketch import build_sketch

HIST = ("part", "feat", "bucket", "count")
COV = ("table", "code", "count", "keys", "center")
CFG = SketchConfig(partition_size=50)
WORDS = np.array("the quick brown fox jumps over a lazy dog while alpha beta gamma delta sing".split())


def _frame(rng, n: int, shift: float = 0.0) -> pd.DataFrame:
    x = rng.normal(shift, 3.0, n)
    x[rng.random(n) < 0.05] = np.nan
    cat = rng.choice(np.array(["red", "green", "blue", "teal", None], dtype=object), n)
    text = [" ".join(rng.choice(WORDS, rng.integers(3, 8))) for _ in range(n)]
    if n and np.isnan(x).all():   # a column without any value is refused: keep one (a 1-row frame hit it)
        x[0] = shift
    if n and all(c is None for c in cat):
        cat[0] = "red"
    return pd.DataFrame({"x": x, "k": rng.integers(0, 20, n), "color": cat, "text": text})


def assert_same(a, b, *, sums: str = "exact", hist: bool = True):
    assert a.names == b.names and a.kinds == b.kinds
    assert a.n_rows == b.n_rows and a.n_partitions == b.n_partitions
    assert np.array_equal(a.signatures, b.signatures)
    assert np.array_equal(a.counts, b.counts)
    if sums == "exact":
        assert np.array_equal(a.sums, b.sums)
    else:
        np.testing.assert_allclose(a.sums, b.sums, rtol=1e-12, atol=0)
    if hist:
        for k in HIST:
            assert np.array_equal(a.hist[k], b.hist[k]), k
            assert a.hist[k].dtype == b.hist[k].dtype, k
    ta, tb = a.totals(), b.totals()
    for k in ("feat", "bucket", "count"):
        assert np.array_equal(ta[k], tb[k]), k
    for k in COV:
        assert np.array_equal(a.coverage[k], b.coverage[k]), k


# ----------------------------------------------------------------------------- merge laws
@pytest.fixture
def three(rng):
    frames = [_frame(rng, int(n), shift=i) for i, n in enumerate(rng.integers(1, 180, 3))]
    center = build_sketch(pd.concat(frames), CFG).coverage["center"]   # parts of one dataset share it
    return [build_sketch(f, CFG, coverage_center=center) for f in frames]


def test_merge_is_associative(three):
    a, b, c = three
    assert_same(a.merge(b).merge(c), a.merge(b.merge(c)), sums="rtol")


def test_merge_is_commutative_for_order_free_parts_only(three):
    a, b, _ = three
    ab, ba = a.merge(b), b.merge(a)
    assert_same(ab, ba, sums="rtol", hist=False)      # signatures, counts, totals, coverage
    if a.n_partitions and b.n_partitions and not all(np.array_equal(a.hist[k], b.hist[k]) for k in HIST):
        # partitions are ordered: b.merge(a) lists b's partitions first
        assert not all(np.array_equal(ab.hist[k], ba.hist[k]) for k in HIST)
    first_a = ab.hist["part"] < a.n_partitions
    assert np.array_equal(ab.hist["bucket"][first_a], a.hist["bucket"])
    assert np.array_equal(ba.hist["bucket"][~(ba.hist["part"] < b.n_partitions)], a.hist["bucket"])


def test_empty_like_is_a_two_sided_identity(three):
    for s in three:
        e = D.empty_like(s)
        assert e.n_rows == 0 and e.n_partitions == 0
        assert_same(e.merge(s), s)
        assert_same(s.merge(e), s)
        assert_same(e.merge(e).merge(s), s)


def test_merge_of_aligned_halves_is_the_sketch_of_the_whole(rng):
    df = _frame(rng, 4 * CFG.partition_size)
    center = build_sketch(df, CFG).coverage["center"]
    halves = [build_sketch(df.iloc[:100], CFG, shuffle=False, coverage_center=center),
              build_sketch(df.iloc[100:].reset_index(drop=True), CFG, shuffle=False, coverage_center=center)]
    assert_same(halves[0].merge(halves[1]), build_sketch(df, CFG, shuffle=False, coverage_center=center),
                sums="rtol")


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 9])
def test_tree_merge_is_the_same_whatever_the_arrival_order(rng, n):
    df = _frame(rng, 20 * n)
    center = build_sketch(df, CFG).coverage["center"]
    parts = [build_sketch(df.iloc[20 * i:20 * (i + 1)].reset_index(drop=True), CFG, coverage_center=center)
             for i in range(n)]
    ref = D.merge_all(parts)
    seq = parts[0]
    for p in parts[1:]:
        seq = seq.merge(p)
    assert_same(ref, seq, sums="rtol")
    for _ in range(3):
        tree = D._TreeMerge(n)
        for i in rng.permutation(n):
            tree.add(int(i), parts[i])
        assert_same(tree.result(), ref)               # bit for bit, sums included


# ----------------------------------------------------------------------------- datasets
@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """3 files x (3, 2, 3) row groups of 100 rows (multiples of partition_size), 4 column kinds."""
    d = tmp_path_factory.mktemp("pq")
    rng = np.random.default_rng(7)
    frames = []
    for i, groups in enumerate((3, 2, 3)):
        df = _frame(rng, 100 * groups, shift=i)
        if i == 1:
            df.loc[:99, "x"] = np.nan                 # a row group without any value of x
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), d / f"part-{i}.parquet", row_group_size=100)
        frames.append(df)
    return d, pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def pool():
    with ProcessPoolExecutor(2, mp_context=mp.get_context("spawn")) as p:
        yield p


def test_plan_lists_row_groups_in_order(dataset):
    d, whole = dataset
    p = D.plan(str(d / "*.parquet"))
    assert [(u.file_index, u.row_group) for u in p.units] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1),
                                                              (2, 0), (2, 1), (2, 2)]
    assert p.n_rows == len(whole) and p.columns == list(whole.columns)
    assert D.detect_kinds(p) == ["numeric", "numeric", "categorical", "text"]


def test_local_equals_one_build_sketch_of_all_rows(dataset):
    d, whole = dataset
    loc = D.sketch_parquet(str(d / "*.parquet"), config=CFG, engine="local", progress=False, shuffle=False)
    ref = build_sketch(whole, CFG, shuffle=False, coverage_center=loc.coverage["center"])
    assert_same(loc, ref, sums="rtol")
    # the centre of the first pass is the data's mean (up to float grouping)
    np.testing.assert_allclose(loc.coverage["center"], build_sketch(whole, CFG).coverage["center"],
                               rtol=1e-12, atol=1e-15)


def test_processes_equal_local_bit_for_bit(dataset, pool):
    d, _ = dataset
    files = sorted(str(p) for p in d.glob("*.parquet"))
    loc = D.sketch_parquet(files, config=CFG, engine="local", progress=False)
    dist = D.sketch_parquet(files, config=CFG, engine=pool, progress=False)
    assert_same(dist, loc)
    assert dist.n_partitions == 16


def test_shuffle_is_seeded_per_unit(dataset):
    d, _ = dataset
    a = D.sketch_parquet(str(d), config=CFG, engine="local", progress=False)
    b = D.sketch_parquet(str(d), config=CFG, engine="local", progress=False)
    flat = D.sketch_parquet(str(d), config=CFG, engine="local", progress=False, shuffle=False)
    assert_same(a, b)
    assert_same(a, flat, hist=False)                  # same rows, other partitions
    assert not np.array_equal(a.hist["count"], flat.hist["count"])


def test_sketch_registers_and_searches_like_in_memory_data(dataset, tmp_path):
    d, whole = dataset
    with fitsketch.open(tmp_path / "h.hub", config=CFG) as hub:
        D.add_parquet(hub, "pq", str(d / "*.parquet"), engine="local", progress=False)
        hub.add("mem", whole)
        assert hub.get("pq").n_rows == len(whole)
        got = {m.name: m.score for m in hub.search(whole.iloc[:200], k=2, method="exact-js")}
        assert got["pq"] == pytest.approx(got["mem"], abs=1e-9)
        with pytest.raises(EntryExistsError):
            D.add_parquet(hub, "pq", str(d / "*.parquet"), engine="local", progress=False)


@pytest.mark.slow
def test_ray_equals_local_bit_for_bit(dataset):
    ray = pytest.importorskip("ray")
    d, _ = dataset
    loc = D.sketch_parquet(str(d), config=CFG, engine="local", progress=False)
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        got = D.sketch_parquet(str(d), config=CFG, engine="ray", progress=False)
    finally:
        ray.shutdown()
    assert_same(got, loc)


# ----------------------------------------------------------------------------- errors
def _write(path, df, **kw):
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path, **kw)


def test_missing_ray_is_a_clear_error(dataset, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(D.MissingDependencyError, match=r"fitsketch\[ray\].*engine='processes'"):
        D.sketch_parquet(str(dataset[0]), config=CFG, engine="ray", progress=False)


def test_bad_paths_and_unreadable_files(tmp_path):
    with pytest.raises(D.UnreadableFileError, match="no file matches"):
        D.sketch_parquet(str(tmp_path / "*.parquet"), engine="local")
    with pytest.raises(D.UnreadableFileError, match="does not exist"):
        D.sketch_parquet([str(tmp_path / "nope.parquet")], engine="local")
    _write(tmp_path / "a.parquet", pd.DataFrame({"x": [1.0, 2.0]}))
    (tmp_path / "b.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(D.UnreadableFileError, match="b.parquet"):
        D.sketch_parquet(str(tmp_path / "*.parquet"), engine="local")
    with pytest.raises(fitsketch.errors.InvalidArgumentError, match="engine="):
        D.sketch_parquet(str(tmp_path / "a.parquet"), engine="spark")


@pytest.mark.parametrize("other, match", [
    (pd.DataFrame({"x": [1.0, 2.0]}), r"lacks columns \['y'\]"),
    (pd.DataFrame({"x": [1.0, 2.0], "y": [1, 2]}), r"'y' is int64 \(was (large_)?string\)"),
])
def test_schema_drift_is_refused_before_any_work(tmp_path, other, match):
    _write(tmp_path / "a.parquet", pd.DataFrame({"x": [1.0, 2.0], "y": ["u", "v"]}))
    _write(tmp_path / "b.parquet", other)
    with fitsketch.open(tmp_path / "h.hub", config=CFG) as hub:
        with pytest.raises(D.SchemaDriftError, match=match):
            D.add_parquet(hub, "e", str(tmp_path / "*.parquet"), engine="local", progress=False)
        assert len(hub) == 0
    # selecting the shared columns works
    assert D.sketch_parquet(str(tmp_path / "*.parquet"), engine="local", columns=["x"], progress=False).n_rows == 4


def test_a_column_empty_everywhere_is_refused(tmp_path):
    _write(tmp_path / "a.parquet", pd.DataFrame({"x": [1.0, 2.0], "y": [np.nan, np.nan]}))
    with pytest.raises(EmptyColumnError, match=r"\['y'\]"):
        D.sketch_parquet(str(tmp_path / "a.parquet"), engine="local", progress=False)


def test_worker_failure_leaves_the_hub_unchanged(dataset, tmp_path, pool, monkeypatch):
    """A file that breaks after planning: the worker reading it raises; nothing is registered."""
    _, whole = dataset
    for i in range(3):
        _write(tmp_path / f"p{i}.parquet", whole.iloc[100 * i:100 * (i + 1)])
    real = D.detect_kinds

    def detect_then_break(p):
        kinds = real(p)
        (tmp_path / "p2.parquet").write_bytes(b"gone")
        return kinds

    monkeypatch.setattr(D, "detect_kinds", detect_then_break)
    with fitsketch.open(tmp_path / "h.hub", config=CFG) as hub:
        gen = hub.stats()["generation"]
        with pytest.raises(D.UnreadableFileError, match="p2.parquet"):
            D.add_parquet(hub, "e", str(tmp_path / "p*.parquet"), engine=pool, progress=False)
        assert len(hub) == 0 and hub.stats()["generation"] == gen


@pytest.mark.slow
def test_ray_shutdown_mid_job_is_a_clear_error_and_writes_nothing(dataset, tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    real = D._TreeMerge.add

    def add_then_lose_cluster(self, *a, **kw):
        ray.shutdown()
        return real(self, *a, **kw)

    monkeypatch.setattr(D._TreeMerge, "add", add_then_lose_cluster)
    with fitsketch.open(tmp_path / "h.hub", config=CFG) as hub:
        with pytest.raises(D.DistributedError, match="nothing was written"):
            D.add_parquet(hub, "e", str(dataset[0]), engine="ray", workers=2, progress=False,
                          coverage_center=np.zeros(18))
        assert len(hub) == 0
    assert not ray.is_initialized()
