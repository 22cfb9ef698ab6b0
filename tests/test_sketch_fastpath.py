"""The vectorized paths of sketching against the definitions they replace, bit for bit.

* ``quantize._tokens`` (Arrow + NumPy word tokenizer, distinct tokens hashed once) against
  ``quantize._tokens_reference`` (pandas ``str.lower().str.findall(r"\\w+")``, every token hashed);
* ``quantize._value_hashes`` against hashing ``str(v)`` of every non-missing value;
* ``coverage.column_block`` (bincount) against the ``np.add.at`` scatter it replaced;
* the bit packing of ``kernels.rowcodes._row_codes_torch`` against the int64 multiply-and-sum;
* whole sketches with the fast paths against sketches with the reference paths forced.

Inputs are random string columns of every storage (pyarrow ``str``, Python ``string``, object,
categorical, sliced Arrow arrays), mixing ASCII words, punctuation, case, missing values and
non-ASCII text (Unicode word rules and case mapping), of sizes 0, 1 and odd ones.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import fitsketch
from fitsketch import coverage as cov
from fitsketch import quantize as Q
from fitsketch.config import SketchConfig
from fitsketch.kernels import rowcodes as rc
from fitsketch.kernels.hashing import hash_tokens

SIZES = [0, 1, 2, 7, 97, 1001]
ASCII_PIECES = ["alpha", "Beta", "GAMMA", "x_1", "42", "a-b", "c.d", "__", "e'f", "  ", "", "\t", "Z9z",
                "hello,world", "!?", "snake_Case_2", "-", "MiXeD"]
OTHER_PIECES = ["café", "İstanbul", "straße", "\u212a", "東京 大阪", "naïve", "ǅungla", "ﬁne", "١٢٣",
                "e\u0301", "😀 ok", "ΣΊΣΥΦΟΣ", "ı", "Ⅻ"]


def random_strings(rng, n: int, non_ascii: float, missing: float) -> list:
    out = []
    for _ in range(n):
        if rng.random() < missing:
            out.append(None)
            continue
        k = int(rng.integers(0, 6))
        pool = [OTHER_PIECES if rng.random() < non_ascii else ASCII_PIECES for _ in range(k)]
        seps = rng.choice([" ", "  ", ",", "-", "", "\n", "/"], k)
        out.append("".join(str(rng.choice(p)) + str(s) for p, s in zip(pool, seps)))
    return out


def columns(rng, n: int):
    """The same random values in every storage the fast path reads, plus slices of Arrow arrays."""
    for non_ascii, missing in ((0.0, 0.0), (0.0, 0.3), (0.2, 0.1), (1.0, 0.0)):
        vals = random_strings(rng, n, non_ascii, missing)
        yield pd.Series(vals, dtype="str")
        yield pd.Series(vals, dtype="string[python]")
        yield pd.Series(vals, dtype=object)
        yield pd.Series(vals, dtype="category")
        yield pd.Series(vals + ["a b", "c"], dtype="str").iloc[2:].reset_index(drop=True)   # sliced Arrow array
        yield pd.Series([np.nan if v is None else v for v in vals], dtype=object)
    # not all str: the reference path, unchanged
    yield pd.Series([1, "a b", 2.5, None, True, b"x y"][: max(n, 0)] * (n // 6 + 1), dtype=object).iloc[:n]


def check_same(col: pd.Series, seed: int) -> None:
    missing = col.isna().to_numpy()
    rows, h = Q._tokens(col, missing, seed)
    r_rows, r_h = Q._tokens_reference(col, missing, seed)
    assert rows.dtype == r_rows.dtype == np.int64 and h.dtype == r_h.dtype == np.uint64
    assert np.array_equal(rows, r_rows), (col.dtype, col.tolist()[:5])
    assert np.array_equal(h, r_h), (col.dtype, col.tolist()[:5])
    vh = Q._value_hashes(col, missing, seed)
    ref = hash_tokens(np.array([str(x) for x in col.to_numpy(dtype=object)[~missing]], dtype=object), seed)
    assert vh.dtype == np.uint64 and np.array_equal(vh, ref)


@pytest.fixture(params=["compiled", "numpy"])
def tokenizer(request, monkeypatch):
    """Both ASCII tokenizers: the compiled one (kernels/_cminhash.c) and the NumPy one."""
    if request.param == "numpy":
        monkeypatch.setattr(Q, "_c", None)
    elif Q._c is None:
        pytest.skip("the compiled kernel is not built")
    return request.param


@pytest.mark.parametrize("n", SIZES)
def test_tokens_and_value_hashes_equal_reference(n, tokenizer):
    rng = np.random.default_rng()
    seed = int(rng.integers(0, 2**31))
    for col in columns(rng, n):
        check_same(col, seed)


def test_compiled_tokenizer_refuses_bad_offsets():
    if Q._c is None:
        pytest.skip("the compiled kernel is not built")
    data = b"ab cd"
    for offs in ([0, 6], [3, 2], [-1, 2], []):
        with pytest.raises(ValueError):
            Q._c.count_ascii_tokens(data, np.array(offs, dtype=np.int64))
    assert Q._c.count_ascii_tokens(data, np.array([0], dtype=np.int64)) == 0   # no values
    offs = np.array([0, 2, 5], dtype=np.int64)
    assert Q._c.count_ascii_tokens(data, offs) == 2
    with pytest.raises(ValueError):     # output smaller than the tokens
        Q._c.ascii_tokens(data, offs, b"0" * 16, np.empty(1, np.int64), np.empty(1, np.uint64))


def test_tokens_equal_reference_on_edge_values(tokenizer):
    vals = ["", " ", "A", "_", "a_b-C", "ÀB", "abc déf GHI", "x\u0000y", "\x7f", "tab\tsep", "İ", "ß",
            "\u212a", None, "ends with space ", "  lead", "9", "a" * 300]
    for dtype in ("str", object, "string[python]"):
        check_same(pd.Series(vals, dtype=dtype), 7)
        for i in range(len(vals)):
            check_same(pd.Series(vals[i:i + 1], dtype=dtype), 7)
    check_same(pd.Series([None, None], dtype="str"), 1)
    check_same(pd.Series([], dtype="str"), 1)


def ref_column_block(name, col, kind, seed):
    """column_block as it was: ``np.add.at`` into zeros, every value hashed."""
    key = cov._col_key(name, seed)
    n = len(col)
    missing = col.isna().to_numpy()
    out = np.zeros((n, cov.HASH_DIMS), dtype=np.float64)
    if kind == "categorical":
        rows = np.flatnonzero(~missing)
        h = hash_tokens(np.array([str(x) for x in col.to_numpy(dtype=object)[~missing]], dtype=object), seed)
    else:
        rows, h = Q._tokens_reference(col, missing, seed)
    dim = (h % np.uint64(cov.HASH_DIMS)).astype(np.int64)
    sign = np.where((h >> np.uint64(63)) == 1, -1.0, 1.0)
    np.add.at(out, (rows, dim), sign)
    norm = np.linalg.norm(out, axis=1, keepdims=True)
    out = np.where(norm > 0, out / np.maximum(norm, 1e-12), np.nan)
    return out, key * 16 + 1 + np.arange(cov.HASH_DIMS, dtype=np.int64)


@pytest.mark.parametrize("n", SIZES)
def test_column_block_equals_reference(n):
    rng = np.random.default_rng()
    seed = int(rng.integers(0, 2**31))
    for col in columns(rng, n):
        for kind in ("categorical", "text"):
            x, k = cov.column_block("c", col, kind, seed)
            rx, rk = ref_column_block("c", col, kind, seed)
            assert x.dtype == rx.dtype and x.shape == rx.shape
            assert np.array_equal(x, rx, equal_nan=True) and np.array_equal(k, rk)


@pytest.mark.parametrize("bits", [1, 5, 12, 24, 25, 30])
@pytest.mark.parametrize("n", [0, 1, 97, 1001])
def test_row_code_packing_equals_int64_sum(bits, n):
    rng = np.random.default_rng()
    x = torch.from_numpy(rng.standard_normal((n, 9)).astype(np.float32))
    a = torch.from_numpy(rng.standard_normal((3, bits, 9)).astype(np.float32))
    proj = torch.einsum("nd,tbd->tnb", x, a)
    ref = ((proj > 0).to(torch.int64) * (2 ** torch.arange(bits, dtype=torch.int64))).sum(dim=-1)
    got = rc._row_codes_torch(x, a)
    assert got.dtype == torch.int64 and torch.equal(got, ref)
    if n:
        assert int(got.max()) < 2**bits


@pytest.mark.parametrize("bits", [1, 5, 8, 9, 12, 16, 24, 25, 30])
@pytest.mark.parametrize("n", [0, 1, 97, 1001, (1 << 15) - 1, (1 << 15) + 1, 3 * (1 << 15) + 7])
def test_numpy_row_code_packing_equals_int64_sum(bits, n):
    """The CPU path (products over blocks of 32,768 rows, bit packing by shifted ORs) equals the
    multiply-and-sum of the signs of one product of all rows."""
    rng = np.random.default_rng()
    d, T = int(rng.integers(1, 20)), int(rng.integers(1, 5))
    x = rng.standard_normal((n, d)).astype(np.float32)
    a = rng.standard_normal((T, bits, d)).astype(np.float32)
    proj = (a.reshape(T * bits, d) @ x.T).T.reshape(n, T, bits)
    ref = ((proj > 0).astype(np.int64) * (2 ** np.arange(bits, dtype=np.int64))).sum(axis=-1).T
    got = rc._row_codes_numpy(x, a)
    assert got.dtype == np.int64 and got.shape == (T, n) and np.array_equal(got, ref)


def test_sketch_with_fast_paths_equals_sketch_with_reference_paths(monkeypatch):
    rng = np.random.default_rng()
    for n in (1, 7, 501):
        cat = ["First value"] + random_strings(rng, n - 1, 0.1, 0.1)       # never all missing
        df = pd.DataFrame({"x": rng.standard_normal(n), "cat": pd.Series(cat, dtype="str"),
                           "txt": pd.Series([" ".join(random_strings(rng, 4, 0.1, 0.0)) + " w1 w2 w3"
                                             for _ in range(n)], dtype=object)})
        cfg = SketchConfig(seed=int(rng.integers(0, 2**31)))
        fast = fitsketch.sketch_data(df, cfg, partition_size=50)
        with monkeypatch.context() as m:
            m.setattr(Q, "_arrow_strings", lambda col: None)
            slow = fitsketch.sketch_data(df, cfg, partition_size=50)
        assert fast.kinds == slow.kinds
        assert fast.to_bytes() == slow.to_bytes()
        assert np.array_equal(fast.rows, slow.rows, equal_nan=True)


@pytest.mark.parametrize("n", [0, 1, 2, 17, 500])
def test_the_ascii_check_of_a_data_buffer_equals_arrows_per_value_check(rng, n):
    """``quantize._ascii_bytes`` (one max over the values' bytes) against ``pc.string_is_ascii`` on
    every value: the same answer on arrays and slices of them (non-zero offsets), nulls, empty
    strings, one non-ASCII character anywhere."""
    import pyarrow as pa
    import pyarrow.compute as pc

    words = np.array(["a", "Bc", "", "x_1", "café", "ÉLAN", "zz top", "\x7f", "Straße"], dtype=object)
    for _ in range(8):
        vals = words[rng.integers(0, 4 if rng.random() < 0.5 else len(words), n)].astype(object)
        vals[rng.random(n) < 0.1] = None
        arr = pa.array(vals, type=pa.large_string())
        if n > 2 and rng.random() < 0.5:
            s = int(rng.integers(0, n // 2))
            arr = arr.slice(s, int(rng.integers(0, n - s + 1)))
        want = bool(pc.all(pc.fill_null(pc.string_is_ascii(arr), True)).as_py() is not False)
        assert Q._ascii_bytes(arr) == want
