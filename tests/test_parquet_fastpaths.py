"""The Parquet sketch path's fast paths (issue 21, ">= 50 MB/s in one process") against the paths
they replace, on fresh random inputs, exactly (every byte of a sketch, every float64 bit of the
row matrix, every token, hash and bucket):

* string columns read as Arrow dictionaries (pandas Categoricals of str): their hashes, tokens
  and hashed coverage dimensions computed once per category and gathered by code
  (``quantize._str_categories``, ``coverage._category_block_into``) against the same values
  written out row by row; missing values, unused categories, non-ASCII values, values without a
  word token, the empty string, 0 / 1 / odd numbers of rows, both string kinds;
* ``sketch_parquet`` reading the categorical columns as dictionaries against reading them plain,
  on files written with and without dictionary encoding.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fitsketch import coverage as C
from fitsketch import distributed as D
from fitsketch import parquet_units as PU
from fitsketch import quantize as Q
from fitsketch.config import SketchConfig
from fitsketch.errors import EmptyColumnError
from fitsketch.sketch import build_sketch

VOCAB = np.array(["red", "Green", "blue teal", "x_1 2024", "", "!!", "café au lait", "ÉLAN", "a-b-c", "the lazy dog",
                  "Straße", "z"], dtype=object)


def _values(rng, n: int, k: int) -> np.ndarray:
    """n values of k vocabulary words (some joined), about 15% missing."""
    vocab = VOCAB[rng.permutation(len(VOCAB))[:k]]
    out = vocab[rng.integers(0, len(vocab), n)].astype(object)
    out[rng.random(n) < 0.15] = None
    return out


def _pair(rng, n: int, k: int):
    """The same values as a plain str column and as a Categorical (with an unused category at times)."""
    vals = _values(rng, n, k)
    plain = pd.Series(vals, dtype=object)
    cats = sorted({v for v in vals if v is not None} | ({"never used"} if rng.random() < 0.5 else set()))
    cat = pd.Series(pd.Categorical(vals, categories=rng.permutation(np.array(cats, dtype=object)) if cats else []))
    return plain, cat


def _same_column(a, b):
    assert (a.name, a.kind, a.total, a.count, a.all_rows) == (b.name, b.kind, b.total, b.count, b.all_rows)
    for f in ("set_elems", "rows", "hist"):
        x, y = getattr(a, f), getattr(b, f)
        assert x.dtype == y.dtype and np.array_equal(x, y), f


def _same_bits(x: np.ndarray, y: np.ndarray):
    assert x.shape == y.shape and x.dtype == y.dtype
    assert np.array_equal(np.isnan(x), np.isnan(y))
    assert np.array_equal(x[~np.isnan(x)].view(np.int64), y[~np.isnan(y)].view(np.int64))


@pytest.mark.parametrize("n", [0, 1, 2, 7, 333, 4099])
@pytest.mark.parametrize("kind", ["categorical", "text"])
def test_categorical_column_equals_its_values_written_out(rng, n, kind):
    cfg = SketchConfig(seed=int(rng.integers(0, 1 << 31)))
    for _ in range(3):
        plain, cat = _pair(rng, n, int(rng.integers(1, len(VOCAB) + 1)))
        missing = cat.isna().to_numpy()
        if (~missing).any():
            assert Q._str_categories(cat, missing) is not None           # the fast path is taken
        try:
            want = Q.quantize_column("c", plain, cfg, kind=kind)
        except EmptyColumnError:
            with pytest.raises(EmptyColumnError):
                Q.quantize_column("c", cat, cfg, kind=kind)
            continue
        _same_column(Q.quantize_column("c", cat, cfg, kind=kind), want)
        r1, h1 = Q._tokens(cat, missing, cfg.seed)
        r0, h0 = Q._tokens_reference(plain, missing, cfg.seed)
        assert np.array_equal(r1, r0) and np.array_equal(h1, h0)
        assert np.array_equal(Q._value_hashes(cat, missing, cfg.seed), Q._value_hashes(plain, missing, cfg.seed))


@pytest.mark.parametrize("n", [1, 5, 61, 2050])
def test_row_matrix_and_sketch_of_categoricals_equal_plain_columns(rng, n):
    cfg = SketchConfig(seed=int(rng.integers(0, 1 << 31)), partition_size=int(rng.choice([1, 4, 16])))
    while True:
        c1, k1 = _pair(rng, n, int(rng.integers(1, 5)))
        c2, k2 = _pair(rng, n, int(rng.integers(3, len(VOCAB) + 1)))
        if c1.notna().any() and c2.str.contains(r"\w", regex=True).fillna(False).any():
            break
    x = rng.normal(0, 2, n)
    plain = pd.DataFrame({"x": x, "cat": c1, "text": c2})
    cats = pd.DataFrame({"x": x, "cat": k1, "text": k2})
    kinds = ["numeric", "categorical", "text"]
    X0, keys0, own0 = C.row_matrix(plain, kinds, cfg.seed)
    X1, keys1, own1 = C.row_matrix(cats, kinds, cfg.seed)
    _same_bits(X1, X0)
    assert np.array_equal(keys1, keys0) and own1 == own0
    want = build_sketch(plain, cfg, kinds=kinds).to_bytes()
    assert build_sketch(cats, cfg, kinds=kinds).to_bytes() == want


def test_categoricals_of_other_values_take_the_plain_path(rng):
    cfg = SketchConfig()
    vals = rng.integers(0, 5, 40)
    cat = pd.Series(pd.Categorical(vals))
    assert Q._str_categories(cat, cat.isna().to_numpy()) is None
    _same_column(Q.quantize_column("c", cat, cfg, kind="categorical"),
                 Q.quantize_column("c", pd.Series(vals.astype(object)), cfg, kind="categorical"))
    mixed = pd.Series(pd.Categorical(np.array(["a", 1, "b", None], dtype=object)))    # str and int categories
    assert Q._str_categories(mixed, mixed.isna().to_numpy()) is None
    _same_column(Q.quantize_column("c", mixed, cfg, kind="categorical"),
                 Q.quantize_column("c", pd.Series(np.array(["a", 1, "b", None], dtype=object)), cfg, kind="categorical"))


def _frame(rng, n: int) -> pd.DataFrame:
    return pd.DataFrame({"x": rng.normal(0, 3, n), "k": rng.integers(-3, 9, n),
                         "color": _values(rng, n, int(rng.integers(1, 6))),
                         "text": [None if rng.random() < 0.1 else " ".join(rng.choice(["the", "quick", "fox", "Ünï"],
                                                                                       int(rng.integers(0, 6))))
                                  for _ in range(n)]})


@pytest.mark.parametrize("dictionary", [True, False])
@pytest.mark.parametrize("share", [0, 2, 10 ** 9])   # never / the default / always decode back to plain
def test_sketch_parquet_with_dictionary_columns_equals_plain_reads(rng, tmp_path, monkeypatch, dictionary, share):
    monkeypatch.setattr(PU, "DICTIONARY_MAX_SHARE", share)
    schema = pa.schema([("x", pa.float64()), ("k", pa.int64()), ("color", pa.string()), ("text", pa.string())])
    files = []
    for i in range(int(rng.integers(1, 4))):
        groups = [int(g) for g in rng.choice([1, 7, 33, 120], int(rng.integers(1, 4)))]
        df = _frame(rng, sum(groups))
        df.loc[len(df) - 1, ["color", "text"]] = ["red", "some words here"]
        table = pa.Table.from_pandas(df, schema=schema, preserve_index=False)
        path = tmp_path / f"part-{i}.parquet"
        with pq.ParquetWriter(path, schema, use_dictionary=dictionary) as w:
            start = 0
            for g in groups:
                w.write_table(table.slice(start, g))
                start += g
        files.append(str(path))
    kinds = D.detect_kinds(D.plan(files))
    cfg = SketchConfig(partition_size=int(rng.choice([4, 16])))
    PU._dictionary_columns_of.cache_clear()
    cols = ("x", "k", "color", "text")
    want = tuple(c for c, k in zip(cols, kinds) if k == "categorical")      # the string columns of that kind
    assert PU._dictionary_columns_of(files[0], cols, tuple(kinds)) == want
    got = D.sketch_parquet(files, config=cfg, engine="local", progress=False).to_bytes()
    monkeypatch.setattr(PU, "_dictionary_columns_of", lambda *a: ())       # every column read plain
    assert D.sketch_parquet(files, config=cfg, engine="local", progress=False).to_bytes() == got


# ----------------------------------------------------------------------------- fused row codes
@pytest.mark.parametrize("n", [0, 1, 3, 517, 33_001])
def test_fused_row_codes_equal_the_blas_product_off_the_rounding_edge(rng, monkeypatch, n):
    """The opt-in fused codes (``rowcodes.FUSED_CODES``) against the BLAS product (the default) on
    rows like the coverage transform's (bounded, NaN -> the centre): equal wherever no projection is
    within float32 rounding of zero; the portable loop equal to the AVX2 one bit for bit."""
    from fitsketch.kernels import rowcodes as R

    if R._c is None or not hasattr(R._c, "fma_codes"):
        pytest.skip("compiled kernel not built")
    assert not R.FUSED_CODES
    for _ in range(2 if n > 1000 else 6):
        d = int(rng.integers(1, 40))
        tables, bits = int(rng.integers(1, 10)), int(rng.choice([1, 3, 7, 12, 30]))
        X = rng.normal(0, 1, (n, d)) * rng.choice([1.0, 1e-3, 30.0], d)
        X[rng.random((n, d)) < 0.05] = np.nan
        center = rng.normal(0, 0.5, d)
        a = R.hyperplanes(int(rng.integers(0, 1 << 31)), tables, bits, rng.integers(0, 1 << 40, d))
        want = R.row_codes_centered(X, center, a, device="cpu")                       # BLAS (the default)
        Z = R.centered_f32(X, center)
        proj = np.einsum("nd,tbd->tnb", Z.astype(np.float64), a.astype(np.float64))
        edge = (np.abs(proj) < 1e-4 * (1 + np.abs(Z).sum(axis=1))[None, :, None]).any(axis=2)
        with monkeypatch.context() as m:
            m.setattr(R, "FUSED_CODES", True)
            got = R.row_codes_centered(X, center, a, device="cpu")
            got32 = R.row_codes(Z, a, device="cpu")
        assert got.dtype == want.dtype == np.int32 and got32.dtype == np.int64
        assert np.array_equal(got[~edge], want[~edge]) and np.array_equal(got32, got)
        assert np.array_equal(R._fma_codes(X, center, a, scalar=True, force=True), got)      # the portable loop
        assert np.array_equal(R._fma_codes(Z, None, a, scalar=True, force=True), got)


def test_fused_row_codes_refuse_buffers_too_small():
    from fitsketch.kernels import rowcodes as R

    if R._c is None or not hasattr(R._c, "fma_codes"):
        pytest.skip("compiled kernel not built")
    X, c, at, out = np.zeros((4, 3)), np.zeros(3), np.zeros((3, 8), np.float32), np.zeros((2, 4), np.int32)
    R._c.fma_codes(X, c, at, out, 4, 3, 2, 4, 8, 4, 0, True)                          # fits
    for args in [(5, 3, 2, 4, 8, 5, 0), (4, 3, 2, 4, 8, 4, 1), (4, 3, 3, 4, 8, 4, 0), (4, 3, 2, 31, 64, 4, 0),
                 (4, 3, 2, 4, 12, 4, 0), (4, 4, 2, 4, 8, 4, 0)]:
        with pytest.raises(ValueError):
            R._c.fma_codes(X, c, at, out, *args, True)


# ----------------------------------------------------------------------------- hashed dimensions
@pytest.mark.parametrize("n", [0, 1, 2, 9, 1000])
def test_hashed_rows_in_row_order_and_shuffled_equal_numpy(rng, monkeypatch, n):
    """The compiled hashed dimensions of a string column (one pass when the items come in row order,
    as tokenizers give them; scattered otherwise) against coverage.column_block's NumPy definition."""
    from fitsketch.kernels import ingest as I

    if C._c is None or not hasattr(C._c, "hashed_rows"):
        pytest.skip("compiled kernel not built")
    per_row = rng.integers(0, 5, n) * (rng.random(n) < 0.8)            # rows without an item: NaN
    rows = np.repeat(np.arange(n, dtype=np.int64), per_row)
    h = rng.integers(0, 1 << 63, len(rows), dtype=np.int64).astype(np.uint64) * np.uint64(2) + \
        rng.integers(0, 2, len(rows)).astype(np.uint64)
    dim = (h % np.uint64(8)).astype(np.int64)
    sign = np.where((h >> np.uint64(63)) == 1, -1.0, 1.0)
    want = np.bincount(rows * 8 + dim, weights=sign, minlength=n * 8).reshape(n, 8).astype(np.float64)
    norm = np.sqrt(np.einsum("ij,ij->i", want, want))
    want /= np.maximum(norm, 1e-12)[:, None]
    want[norm == 0] = np.nan
    for order in (np.arange(len(rows)), rng.permutation(len(rows))):
        X = np.full((n, 11), 7.0)
        assert I.hashed_rows_at(rows[order], h[order], X, 2)
        _same_bits(X[:, 2:10], want)
        assert (X[:, :2] == 7.0).all() and (X[:, 10:] == 7.0).all()          # other columns untouched


@pytest.mark.parametrize("n", [0, 1, 2, 9, 1000])
def test_category_rows_gathered_in_place_equal_numpy_take(rng, n):
    """The compiled gather of a categorical column's per-category rows into the row matrix
    (``ingest.take_rows_at``, used by ``coverage._category_block_into``) against ``np.take``'s
    values written into the same columns: every bit, NaN rows included, other columns untouched."""
    from fitsketch.kernels import ingest as I

    if I._c is None or not hasattr(I._c, "take_rows_at"):
        pytest.skip("compiled kernel not built")
    for _ in range(5):
        k = int(rng.integers(1, 40))                   # k - 1 categories and the missing row
        w = int(rng.integers(1, 9))
        table = rng.normal(0, 1, (k, w))
        table[-1] = np.nan
        table[rng.random((k, w)) < 0.05] = np.nan
        codes = rng.integers(-1, k - 1, n) if k > 1 else np.full(n, -1)
        d = w + int(rng.integers(0, 5))
        at = int(rng.integers(0, d - w + 1))
        X = np.full((n, d), 7.0)
        assert I.take_rows_at(table, codes, X, at)
        want = np.full((n, d), 7.0)
        want[:, at:at + w] = np.take(table, codes, axis=0, mode="wrap")
        _same_bits(X, want)
    X = np.zeros((3, 8))
    for bad in (np.array([0, 1, 5]), np.array([0, -2, 1])):          # past the table / below -1: refused
        with pytest.raises(ValueError):
            I._c.take_rows_at(np.zeros((5, 8)), bad, X, 3, 8, 0, 8)
    with pytest.raises(ValueError):                                   # columns past the row matrix
        I._c.take_rows_at(np.zeros((5, 8)), np.zeros(3, np.int64), X, 3, 8, 1, 8)


@pytest.mark.parametrize("n", [0, 1, 2, 7, 3000])
def test_coverage_counts_summed_densely_equal_the_sorted_union(rng, n):
    """``coverage._sum_counts`` (a dense array over few cells, np.unique over many) against the
    definition: the sorted union of both records' (table, code) cells, counts added, every cell
    either holds kept (a zero count too), types as before."""
    for _ in range(6):
        records = []
        tables = int(rng.integers(1, 12))
        codes = int(rng.choice([2, 64, 4096, 1 << 20, 1 << 31]))
        for m in (n, int(rng.integers(0, n + 1))):
            cells = np.unique(rng.integers(0, tables, m) * (1 << 32) + rng.integers(0, codes, m))
            cnt = rng.integers(0, 300, len(cells)) * (rng.random(len(cells)) < 0.97)   # a few zero counts
            records.append({"center": np.zeros(2), "table": (cells >> 32).astype(np.uint8),
                            "code": (cells & 0xFFFFFFFF).astype(np.uint16 if codes <= 4096 else np.uint32),
                            "count": C.narrow_counts(cnt)})
        a, b = records if rng.random() < 0.5 else records[::-1]
        got = C._sum_counts(a, b)
        union = {}
        for r in (a, b):
            for t, c, k in zip(r["table"].tolist(), r["code"].tolist(), r["count"].tolist()):
                union[(t, c)] = union.get((t, c), 0) + k
        keys = sorted(union)
        assert got["table"].tolist() == [t for t, _ in keys] and got["code"].tolist() == [c for _, c in keys]
        assert got["count"].tolist() == [union[k] for k in keys]
        assert got["count"].dtype == C.narrow_counts(np.array([union[k] for k in keys], np.int64)).dtype
        assert got["table"].dtype == np.uint8 and got["code"].dtype == b["code"].dtype


@pytest.mark.parametrize("room", [0, 3, 1 << 22])
def test_tokens_with_and_without_the_counting_pass(rng, monkeypatch, room):
    """The compiled tokenizer's output whether it counts the tokens first (a column over
    ``TOKEN_ROOM``) or writes into room for the most the bytes can hold, against the definition."""
    if Q._c is None:
        pytest.skip("compiled kernel not built")
    monkeypatch.setattr(Q, "TOKEN_ROOM", room)
    words = np.array(["a", "bb", "C_d", "x1", "", " ", "--", "Zeta", "a.b", "9"], dtype=object)
    for n in (1, 2, 17, 500):
        vals = pd.Series([" ".join(rng.choice(words, int(rng.integers(0, 6)))) for _ in range(n)], dtype=object)
        missing = np.zeros(n, dtype=bool)
        r1, h1 = Q._tokens_fast(vals, missing, 7)
        r0, h0 = Q._tokens_reference(vals, missing, 7)
        assert np.array_equal(r1, r0) and np.array_equal(h1, h0)


@pytest.mark.parametrize("kind", ["categorical", "text"])
def test_unused_categories_are_never_hashed(rng, kind):
    """A Categorical whose categories include many no row holds (a slice of a big one), one of them not
    encodable as UTF-8: the same sketch as the values written out (they were hashed, and refused)."""
    vals = _values(rng, int(rng.integers(1, 200)), int(rng.integers(1, len(VOCAB) + 1)))
    if all(v is None for v in vals):
        vals[0] = "red"
    extra = [f"unused {i}" for i in range(int(rng.integers(1, 3000)))] + ["bad \ud800"]
    cats = sorted({v for v in vals if v is not None}) + extra
    order = rng.permutation(len(cats))
    cat = pd.Series(pd.Categorical(vals, categories=pd.Index(np.array(cats, dtype=object)[order], dtype=object)))
    cfg = SketchConfig()
    try:
        want = build_sketch(pd.DataFrame({"c": pd.Series(vals, dtype=object)}), cfg, kinds=[kind]).to_bytes()
    except EmptyColumnError:        # no word token in any value: refused either way
        with pytest.raises(EmptyColumnError):
            build_sketch(pd.DataFrame({"c": cat}), cfg, kinds=[kind])
        return
    assert build_sketch(pd.DataFrame({"c": cat}), cfg, kinds=[kind]).to_bytes() == want
