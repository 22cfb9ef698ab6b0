"""The ingest fast paths of issue 21 against the paths they replace, on fresh random inputs
(exact: every byte of the sketch, every code, every float32 value):

* ``engine="local"`` reading each Parquet row group once for both passes
  (``parquet_units.local_first_pass``: the unit's sketch but its codes kept between the passes)
  against the two-pass path every other engine takes (``LOCAL_CACHE_BYTES = 0``) and a budget
  that keeps only some units;
* the compiled centring of coverage rows (``rowcodes.centered_f32``) against its NumPy definition;
* the compiled sign packing of row codes against the NumPy loop (``_row_codes_numpy`` without it).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fitsketch import distributed as D
from fitsketch import parquet_units as PU
from fitsketch.config import SketchConfig
from fitsketch.kernels import rowcodes as R
from fitsketch.storage import unpack

SCHEMA = pa.schema([("x", pa.float64()), ("big", pa.float64()), ("k", pa.int64()), ("color", pa.string()),
                    ("text", pa.string())])
WORDS = np.array("the quick brown fox jumps over a lazy dog Alpha beta gamma delta x_1 2024".split())


def _frame(rng, n: int) -> pd.DataFrame:
    x = rng.normal(0, 3.0, n)
    x[rng.random(n) < 0.1] = np.nan
    big = rng.lognormal(0, 40, n) * rng.choice([-1.0, 1.0], n)        # beyond float32 after centring
    big[rng.random(n) < 0.05] = np.inf
    cat = rng.choice(np.array(["red", "green", "blue", "teal", None], dtype=object), n)
    text = [None if rng.random() < 0.1 else " ".join(rng.choice(WORDS, rng.integers(0, 7))) for _ in range(n)]
    return pd.DataFrame({"x": x, "big": big, "k": rng.integers(-5, 20, n), "color": cat, "text": text})


@pytest.fixture
def parquet_set(rng, tmp_path):
    """2-3 files of random row-group sizes (1 row, odd sizes, not multiples of the partition size);
    one file's first group has no value of x (legal in a unit); every column has a value somewhere."""
    files = []
    for i in range(int(rng.integers(2, 4))):
        groups = [int(g) for g in rng.choice([1, 7, 33, 61, 120], int(rng.integers(1, 4)))]
        df = _frame(rng, sum(groups))
        if i == 0:
            df.loc[: groups[0] - 1, "x"] = np.nan
        df.loc[len(df) - 1, ["x", "color"]] = [1.5, "red"]            # a value in every column
        df.loc[len(df) - 1, "text"] = "last row"
        table = pa.Table.from_pandas(df, schema=SCHEMA, preserve_index=False)    # one schema in every file
        path = tmp_path / f"part-{i}.parquet"
        with pq.ParquetWriter(path, table.schema) as w:
            start = 0
            for g in groups:
                w.write_table(table.slice(start, g))
                start += g
        files.append(str(path))
    return files


@pytest.mark.parametrize("shuffle", [True, False])
def test_local_one_read_equals_the_two_pass_path(parquet_set, monkeypatch, shuffle):
    cfg = SketchConfig(partition_size=16)
    assert len(D.plan(parquet_set).units) >= 2

    def run(budget):
        monkeypatch.setattr(PU, "LOCAL_CACHE_BYTES", budget)
        return D.sketch_parquet(parquet_set, config=cfg, engine="local", progress=False, shuffle=shuffle)

    ref = run(0).to_bytes()                                   # every unit read twice (the other engines' way)
    assert run(1 << 30).to_bytes() == ref                     # every unit read once
    p = D.plan(parquet_set)
    first = p.units[0].num_rows * (3 + 2 * 8) * 8             # room for the first unit's rows only
    assert run(first).to_bytes() == ref


@pytest.mark.parametrize("workers", [2, 3, 5])
def test_local_threads_equal_one_thread(parquet_set, monkeypatch, workers):
    """``engine="local"`` on several threads (units sketched side by side, results in unit order)
    against one thread: the same bytes, whether every unit, some or none keep their rows."""
    cfg = SketchConfig(partition_size=16)
    p = D.plan(parquet_set)
    first = p.units[0].num_rows * (3 + 2 * 8) * 8

    def run(budget, n):
        monkeypatch.setattr(PU, "LOCAL_CACHE_BYTES", budget)
        return D.sketch_parquet(parquet_set, config=cfg, engine="local", progress=False, workers=n).to_bytes()

    for budget in (1 << 30, first, 0):
        assert run(budget, workers) == run(budget, 1)


def test_local_threads_raise_a_unit_error_as_one_thread_does(parquet_set, monkeypatch):
    """A unit that fails on a worker thread raises its own error here (type and message), in
    both passes."""
    from fitsketch.errors import UnreadableFileError

    p = D.plan(parquet_set)
    bad = p.units[len(p.units) // 2]
    for budget, name in ((1 << 30, "_unit_pending"), (0, "unit_sketch")):
        real = getattr(PU, name)

        def failing(spec, real=real):
            if (spec["file_index"], spec["row_group"]) == (bad.file_index, bad.row_group):
                raise UnreadableFileError(f"unit {bad.row_group} of {bad.path} broke")
            return real(spec)

        with monkeypatch.context() as m:
            m.setattr(PU, "LOCAL_CACHE_BYTES", budget)
            m.setattr(PU, name, failing)
            if name == "unit_sketch":                      # pass 2 calls the name distributed imported
                m.setattr(D, name, failing)
            for workers in (1, 3):
                with pytest.raises(UnreadableFileError, match=f"unit {bad.row_group} of .* broke"):
                    D.sketch_parquet(parquet_set, config=SketchConfig(partition_size=16), engine="local",
                                     progress=False, workers=workers)


@pytest.mark.parametrize("n", [0, 1, 2, 7, 40])
def test_ordered_map_keeps_order_and_bounds_work_in_flight(rng, n):
    """``parquet_units.ordered_map``: map's results in order whatever order the threads finish in,
    at most ``2 * workers`` items started and not yet handed back, nothing started after an error."""
    import threading
    import time

    for workers in (1, 2, 4):
        delays = rng.uniform(0, 0.002, n)
        lock = threading.Lock()
        started, handed, most = [], [0], [0]

        def fn(i):
            with lock:
                started.append(i)
                most[0] = max(most[0], len(started) - handed[0])
            time.sleep(delays[i])
            return i * i

        out = []
        for v in PU.ordered_map(fn, range(n), workers):
            out.append(v)
            handed[0] += 1
        assert out == [i * i for i in range(n)]
        assert most[0] <= max(1, 2 * workers)

        if n >= 2:
            fail_at = int(rng.integers(0, n))
            seen = []

            def boom(i):
                with lock:
                    seen.append(i)
                if i == fail_at:
                    raise KeyError(f"item {i}")
                return i

            with pytest.raises(KeyError, match=f"item {fail_at}"):
                list(PU.ordered_map(boom, range(n), workers))
            assert max(seen) <= fail_at + 2 * workers       # items past the window never started


def test_finish_unit_equals_unit_sketch(parquet_set):
    cfg = SketchConfig(partition_size=8)
    p = D.plan(parquet_set)
    kinds = D.detect_kinds(p)
    specs = [{"columns": p.columns, "kinds": kinds, "config": cfg.to_dict(), "threads": None, "path": u.path,
              "file_index": u.file_index, "row_group": u.row_group, "num_rows": u.num_rows, "partition_size": 8,
              "shuffle": True, "device": "cpu"} for u in p.units]
    stats, pending = PU.local_first_pass(specs)
    assert sorted(pending) == list(range(len(specs)))
    for i, spec in enumerate(specs):
        want = unpack(PU.unit_stats(spec))
        for k in ("sum", "count", "keys"):
            assert np.array_equal(stats[i][k], want[k]) and stats[i][k].dtype == want[k].dtype, k
    center = D._center_of(stats)
    for i, spec in enumerate(specs):
        got = PU.finish_unit(pending[i], spec, center)
        assert got.rows is None
        assert got.to_bytes() == PU.unit_sketch({**spec, "center": center})


@pytest.mark.parametrize("n", [0, 1, 7, 1559, 4099])
def test_centered_f32_equals_numpy(rng, n):
    if R._c is None:
        pytest.skip("the compiled kernel is not built")
    d = int(rng.integers(1, 40))
    X = rng.normal(0, 1, (n, d)) * 10.0 ** rng.integers(-3, 60, (n, d))   # up to ~1e60: beyond float32
    X[rng.random((n, d)) < 0.1] = np.nan
    X[rng.random((n, d)) < 0.03] = np.inf
    X[rng.random((n, d)) < 0.03] = -np.inf
    c = rng.normal(0, 1, d) * 10.0 ** rng.integers(-3, 45, d)
    c[rng.random(d) < 0.2] = 0.0
    got, want = R.centered_f32(X, c), R.centered_f32_numpy(X, c)
    assert got.dtype == want.dtype == np.float32 and got.shape == want.shape
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))          # bit for bit (signed zeros too)


@pytest.mark.parametrize("n", [0, 1, 9, 1000, R.ROW_BLOCK + 777])
def test_sign_packing_equals_numpy_loop(rng, monkeypatch, n):
    if R._c is None:
        pytest.skip("the compiled kernel is not built")
    d = int(rng.integers(1, 30))
    T, B = int(rng.integers(1, 9)), int(rng.integers(1, R.MAX_BITS + 1))
    x = rng.normal(0, 1, (n, d)).astype(np.float32)
    x[rng.random((n, d)) < 0.05] = 0.0                          # projections of exactly 0 (not > 0)
    a = rng.normal(0, 1, (T, B, d)).astype(np.float32)
    if n:
        x[0] = 0.0
        x[-1, 0] = np.nan                                       # NaN projections: bit clear
    got = R._row_codes_numpy(x, a)
    monkeypatch.setattr(R, "_c", None)
    want = R._row_codes_numpy(x, a)
    assert got.dtype == want.dtype == np.int64 and np.array_equal(got, want)


@pytest.mark.parametrize("n", [0, 1, 5, 8191, 8193, 20011])
def test_numeric_row_transform_equals_numpy(rng, monkeypatch, n):
    """coverage.row_matrix's plain numeric columns through the compiled sign-multiply against NumPy:
    every value bit for bit (NaN as NaN), with +-0, +-inf, NaN, huge and tiny values, ints."""
    from fitsketch import coverage as C

    if C._c is None:
        pytest.skip("the compiled kernel is not built")
    v = rng.normal(0, 1, n) * 10.0 ** rng.integers(-12, 300, n)
    for value, share in ((0.0, 0.05), (-0.0, 0.05), (np.nan, 0.05), (np.inf, 0.02), (-np.inf, 0.02)):
        v[rng.random(n) < share] = value
    df = pd.DataFrame({"a": v, "b": rng.integers(-9, 9, n), "c": rng.choice(["x y", "z"], n),
                       "d": v[::-1].astype(np.float32)})
    kinds = ["numeric", "numeric", "text", "numeric"]
    got = C.row_matrix(df, kinds, 3)
    monkeypatch.setattr(C, "_c", None)
    want = C.row_matrix(df, kinds, 3)
    assert np.array_equal(got[1], want[1]) and got[2] == want[2]
    X, Y = got[0], want[0]
    assert X.shape == Y.shape and np.array_equal(np.isnan(X), np.isnan(Y))
    ok = ~np.isnan(Y)
    assert np.array_equal(X[ok].view(np.uint64), Y[ok].view(np.uint64))       # signed zeros too


@pytest.mark.parametrize("n", [0, 1, 2, 7, 8193, 30001])
def test_numeric_buckets_compiled_equals_numpy(rng, monkeypatch, n):
    """quantize.numeric_buckets through the compiled pass against the NumPy blocks: the same set of
    fine keys and the same coarse keys, with NaN, +-inf, +-0, values at and below MIN_ABS, huge ones,
    many distinct keys (the kernel's set grows) and accuracies of the config's range."""
    from fitsketch import quantize as Q

    if Q._c is None or not hasattr(Q._c, "numeric_buckets"):
        pytest.skip("the compiled kernel is not built")
    v = rng.normal(0, 1, n) * 10.0 ** rng.integers(-15, 300, n)
    plain = rng.random(n) < 0.3                              # ordinary rounded values: many repeats
    v[plain] = np.round(rng.normal(0, 50, n), 2)[plain]
    for value, share in ((0.0, 0.03), (-0.0, 0.03), (np.nan, 0.05), (np.inf, 0.02), (-np.inf, 0.02),
                         (Q.MIN_ABS, 0.02), (-Q.MIN_ABS * 1.0000001, 0.02)):
        v[rng.random(n) < share] = value
    acc, hist_acc = float(rng.uniform(0.001, 0.05)), float(rng.uniform(0.05, 0.3))
    fine, coarse = Q.numeric_buckets(v, acc, hist_acc)
    monkeypatch.setattr(Q, "_c", None)
    fine_ref, coarse_ref = Q.numeric_buckets(v, acc, hist_acc)
    assert coarse.dtype == coarse_ref.dtype == np.int32 and np.array_equal(coarse, coarse_ref)
    assert fine.dtype == fine_ref.dtype == np.int64
    assert len(fine) == len(set(fine.tolist())) and np.array_equal(np.sort(fine), np.sort(fine_ref))
    # and both are the definition's keys
    assert np.array_equal(coarse, Q.numeric_keys_reference(v, hist_acc).astype(np.int32))
    assert np.array_equal(np.sort(fine), np.unique(Q.numeric_keys_reference(v[~np.isnan(v)], acc)))


@pytest.mark.parametrize("n", [1, 2, 9, 1000, 4099])
@pytest.mark.parametrize("kind", ["categorical", "text"])
def test_string_row_transform_equals_numpy(rng, monkeypatch, n, kind):
    """coverage.column_block of a string column through the compiled pass against NumPy's
    bincount / norm: every value bit for bit, NaN in the same places (missing values, rows
    without a word token), tokens cancelling to 0 in a dimension."""
    from fitsketch import coverage as C
    from fitsketch.quantize import shared_tokens

    if C._c is None or not hasattr(C._c, "hashed_rows"):
        pytest.skip("the compiled kernel is not built")
    words = np.array(WORDS.tolist() + ["", "...", "été", "x x x x"], dtype=object)
    vals = [None if rng.random() < 0.1 else " ".join(rng.choice(words, rng.integers(0, 9))) for _ in range(n)]
    col = pd.Series(vals, dtype=object)
    with shared_tokens():
        got, gk = C.column_block("col", col, kind, 11)
    monkeypatch.setattr(C, "_c", None)
    with shared_tokens():
        want, wk = C.column_block("col", col, kind, 11)
    assert np.array_equal(gk, wk) and got.shape == want.shape == (n, C.HASH_DIMS)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    assert np.array_equal(got[ok].view(np.uint64), want[ok].view(np.uint64))


@pytest.mark.parametrize("n", [1, 3, 2000])
def test_token_hash_cache_equals_hashing_every_token(rng, n):
    """The compiled tokenizer's cache of short tokens' hashes (kernels/_cminhash.c ascii_tokens)
    against the NumPy tokenizer + hashing each distinct token: over 4,096 distinct tokens (cache
    slots are overwritten), tokens of 1-16 bytes sharing prefixes (differing only in bytes 9-16 or
    in length), tokens longer than 16 bytes, upper case."""
    import pyarrow as pa

    from fitsketch import quantize as Q

    if Q._c is None:
        pytest.skip("the compiled kernel is not built")
    alphabet = np.array(list("abcXYZ019_"))
    lens = rng.integers(1, 24, 6 * n)
    toks = ["".join(rng.choice(alphabet, k)) for k in lens]
    toks += ["abcdefgh" + "".join(rng.choice(alphabet, int(k))) for k in rng.integers(0, 9, n)]   # 8-16 bytes
    toks += ["abcdefgh"[:int(k)] for k in rng.integers(1, 9, n)]                                 # prefixes
    rng.shuffle(toks)
    vals = [" ".join(toks[i:i + 5]) + (" -- " if i % 3 else "") for i in range(0, len(toks), 5)]
    arr = pa.array(vals, type=pa.large_string())
    seed = int(rng.integers(0, 2**31))
    rows, h = Q._ascii_token_hashes(arr, seed)
    rows_ref, tok = Q._ascii_tokens(arr)
    assert np.array_equal(rows, rows_ref)
    assert np.array_equal(h, Q._hash_unique(tok, seed))


@pytest.mark.parametrize("n", [0, 1, 2, 7, 1559, 50001])
def test_unit_stats_compiled_equals_numpy(rng, monkeypatch, n):
    """parquet_units._stats (pass 1's per-dimension sums and counts; one compiled pass when built)
    against its NumPy definition, bit for bit: NaN, +-inf, signed zeros, magnitudes that make the
    order of additions matter, one column (NumPy's pairwise sum) and many; and without the kernel."""
    d = int(rng.choice([1, 2, 3, 21, int(rng.integers(1, 40))]))
    X = rng.normal(0, 1, (n, d)) * 10.0 ** rng.integers(-8, 17, (n, d))
    X[rng.random((n, d)) < 0.15] = np.nan
    X[rng.random((n, d)) < 0.01] = np.inf
    X[rng.random((n, d)) < 0.01] = -np.inf
    X[rng.random((n, d)) < 0.05] = -0.0
    if n and d > 1:
        X[:, 1] = -0.0                                  # a column of -0.0 only: both sides give NumPy's sum of it
        X[0, 0] = np.nan                                # a NaN first row starts the sum at +0.0
    keys = rng.integers(0, 1 << 40, d)
    want = PU._stats_numpy(X, keys)
    for kernel in (True, False):
        if not kernel:
            monkeypatch.setattr(R, "_c", None)
        got = PU._stats(X, keys)
        assert got["sum"].dtype == np.float64 and got["count"].dtype == np.int64
        assert got["sum"].tobytes() == want["sum"].tobytes()
        assert np.array_equal(got["count"], want["count"]) and np.array_equal(got["keys"], want["keys"])


def test_unit_stats_kernel_refuses_sizes_its_buffers_do_not_hold():
    """nan_col_sums checks n, d against the buffers before it writes: with n = 0 a huge d once passed
    (d * 8 overflowed to 0) and the zeroing loop wrote past 1-element outputs."""
    if R._c is None:
        pytest.skip("compiled kernels not built")
    for n, d in ((0, 2**61), (0, 2**62 + 1), (1, 2**61), (0, 2)):
        with pytest.raises(ValueError, match="nan_col_sums"):
            R._c.nan_col_sums(np.zeros(0), n, d, np.zeros(1), np.zeros(1, np.int64))
