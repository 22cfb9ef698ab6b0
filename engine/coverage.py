"""Coverage: an asymmetric, sample-level fit score (beyond the papers).

Adaptivity asks at partition granularity, over per-feature marginals, how much of the target a
source has seen. Coverage asks it per row, over the features jointly:

1. a row transform that does not depend on the data: numbers ``sign(v) * log1p(|v|)`` (scale-
   free; NaN -> the centre), each string column feature-hashed into ``HASH_DIMS`` signed
   dimensions (whole values for categorical columns, word tokens for text, L2-normalized);
2. centred by the entry's own mean of the transformed rows (stored with the sketch);
3. random-hyperplane codes of ``coverage_bits`` bits in ``coverage_tables`` tables, the
   hyperplane column of a dimension keyed by (hub seed, column name, dimension), so a target
   coded with the entry's stored centre lands in the entry's space;
4. per entry, counts of rows per (table, code) -- integers, mergeable by addition (parts coded
   around different centres -- sketched independently -- keep one group of counts per centre,
   see :func:`merge` and :func:`score`);
5. ``coverage = mean_t sum_b min(p_target(b), p_source(b) / rho)`` over the cells of the first
   ``coverage_resolution`` hyperplanes (``coverage_score="share"``, the default: the share of the
   target's mass that falls where the source has at least ``rho`` times the target's share of
   rows; see ``share_score``), or ``mean_t sum_b p_target(b) * min(1, n_source(b) / tau)``
   (``coverage_score="count"``, the first definition: the share of the target's mass that falls
   where the source has seen at least ``tau`` rows).

Coverage applies when the target has every column the entry was coded over (matched by the
MinHash alignment, so renamed columns work); an entry it cannot score is scored by adaptivity
instead, with that entry's own reason in its evidence (the others keep their coverage).
"""
from __future__ import annotations

import functools
import warnings

import numpy as np
import pandas as pd

from .kernels import ingest as _ingest
from .kernels.hashing import hash_tokens
from .kernels.rowcodes import _c
from .kernels.rowcodes import (centered_f32, code_counts, coverage_score, hyperplanes, narrow_counts, row_codes,
                               row_codes_centered)

COVERAGE_FORMAT = 1
HASH_DIMS = 8


@functools.lru_cache(maxsize=4096)
def _col_key(name: str, seed: int) -> int:
    """A column's hyperplane key (memoized: each unit of a Parquet dataset asks for every column's)."""
    return int(hash_tokens(np.array([name], dtype=object), seed)[0] >> np.uint64(8))


def column_block(name: str, col: pd.Series, kind: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Transformed values of one column: ``(n, width)`` float64 with NaN for missing, and keys."""
    key = _col_key(name, seed)
    n = len(col)
    if kind == "numeric":
        from .quantize import _as_float

        v = _as_float(col)
        with np.errstate(invalid="ignore"):
            x = np.sign(v) * np.log1p(np.minimum(np.abs(v), 1e300))
        return x.reshape(n, 1), np.array([key * 16], dtype=np.int64)
    rows, h = _string_tokens(col, kind, seed)
    keys = key * 16 + 1 + np.arange(HASH_DIMS, dtype=np.int64)
    if _c is not None and hasattr(_c, "hashed_rows") and HASH_DIMS == 8:     # the same values, compiled
        out = np.empty((n, HASH_DIMS), dtype=np.float64)
        _c.hashed_rows(np.ascontiguousarray(rows, dtype=np.int64), np.ascontiguousarray(h, dtype=np.uint64), out, n)
        return out, keys
    dim = (h % np.uint64(HASH_DIMS)).astype(np.int64)
    sign = np.where((h >> np.uint64(63)) == 1, -1.0, 1.0)
    # sums of +-1 are exact in float64: the same as np.add.at(out, (rows, dim), sign), in one pass
    out = np.bincount(rows * HASH_DIMS + dim, weights=sign, minlength=n * HASH_DIMS).reshape(n, HASH_DIMS)
    out = out.astype(np.float64, copy=False)          # (no weights at all: bincount gives int64)
    # the entries are integers, so their squares' sum is exact in any order: the norm np.linalg.norm
    # gives, without its temporaries; then scaled in place, NaN where the row has no value
    norm = np.sqrt(np.einsum("ij,ij->i", out, out))
    out /= np.maximum(norm, 1e-12)[:, None]
    out[norm == 0] = np.nan
    return out, keys


def _string_tokens(col: pd.Series, kind: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, hash) of each hashed item of a string column: its whole values (categorical) or tokens."""
    from .quantize import _tokens, _value_hashes

    missing = col.isna().to_numpy()
    if kind == "categorical":
        return np.flatnonzero(~missing), _value_hashes(col, missing, seed)   # hash_tokens of str(v), distinct values once
    return _tokens(col, missing, seed)


def row_matrix(df: pd.DataFrame, kinds: list[str], seed: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """All columns transformed: ``X`` (n, D) with NaN for missing, hyperplane keys (D,), column of each dim.

    The same values as concatenating :func:`column_block` of every column; the plain int / float
    columns are transformed together as one (n, k) block, written into a preallocated ``X``."""
    n = len(df)
    widths = [1 if kind == "numeric" else HASH_DIMS for kind in kinds]
    start = np.concatenate([[0], np.cumsum(widths)]).astype(np.int64)
    X = np.empty((n, int(start[-1])), dtype=np.float64)
    keys, owner, plain = [], [], []
    for i, ((name, col), kind) in enumerate(zip(df.items(), kinds)):
        dt = col.dtype
        if kind == "numeric" and isinstance(dt, np.dtype) and dt.kind in "fiu":
            plain.append(i)
            keys.append(np.array([_col_key(name, seed) * 16], dtype=np.int64))
        elif kind != "numeric" and _category_block_into(name, col, kind, seed, X, int(start[i])):
            keys.append(_col_key(name, seed) * 16 + 1 + np.arange(HASH_DIMS, dtype=np.int64))   # written into X
        elif kind != "numeric" and HASH_DIMS == 8 and _ingest.hashed_rows_at(*_string_tokens(col, kind, seed), X,
                                                                              int(start[i])):
            keys.append(_col_key(name, seed) * 16 + 1 + np.arange(HASH_DIMS, dtype=np.int64))   # written into X
        else:
            x, k = column_block(name, col, kind, seed)
            X[:, start[i]:start[i + 1]] = x
            keys.append(k)
        owner.extend([i] * widths[i])
    # the plain columns in one compiled pass over blocks of rows (libm's log1p, NumPy's bit for bit)
    # (every plain column float64 at once: int / float32 columns cost a copy each, ~n x 8 bytes, while
    # the pass runs; the frame's float64 columns are read as they are)
    if plain and _ingest.enabled() and _ingest.numeric_rows([df.iloc[:, i].to_numpy(dtype=np.float64) for i in plain],
                                                            [int(start[i]) for i in plain], X):
        plain = []
    with np.errstate(invalid="ignore"):
        for i in plain:                 # sign(v) * log1p(min(|v|, 1e300)), blocks of rows into X's column
            v = np.ascontiguousarray(df.iloc[:, i].to_numpy(dtype=np.float64))
            for s in range(0, n, _ROWS):
                vc = v[s:s + _ROWS]
                t = np.abs(vc)
                np.minimum(t, 1e300, out=t)
                np.log1p(t, out=t)
                if _c is not None and hasattr(_c, "sign_mul_col"):     # the same product, compiled
                    _c.sign_mul_col(vc, t, X, len(vc), X.shape[1], int(start[i]), s)
                else:
                    np.multiply(np.sign(vc), t, out=X[s:s + _ROWS, start[i]])
    return X, (np.concatenate(keys) if keys else np.zeros(0, np.int64)), owner


def _category_block_into(name: str, col: pd.Series, kind: str, seed: int, X: np.ndarray, at: int) -> bool:
    """A Categorical of str (``quantize._str_categories``): :func:`column_block` of its categories,
    one row each, gathered by code into columns ``at .. at + HASH_DIMS - 1`` of ``X`` (a missing
    value's row NaN, as the row of a value without items is): the same rows as of the values
    written out, each row's dimensions a function of its value alone. False (nothing written) for
    any other column."""
    from .quantize import _str_categories

    if not isinstance(col.dtype, pd.CategoricalDtype):   # before isna: every string column passes here
        return False
    cats = _str_categories(col, col.isna().to_numpy())
    if cats is None:
        return False
    codes, values = cats
    block, _ = column_block(name, values, kind, seed)
    table = np.empty((len(values) + 1, HASH_DIMS), dtype=np.float64)
    table[:-1] = block
    table[-1] = np.nan                       # code -1: a missing value
    if not _ingest.take_rows_at(table, codes, X, at):          # the same gather, compiled: no (n, 8) temporary
        X[:, at:at + HASH_DIMS] = np.take(table, codes, axis=0)
    return True


_ROWS = 8192     # rows per block of the elementwise passes: temporaries stay in cache and are reused


def nanmean_rows(X: np.ndarray) -> np.ndarray:
    """``np.nanmean(X, axis=0)`` of a C-ordered (n, D) float64 matrix, bit for bit, in blocks of rows
    (NumPy sums down the rows one after another: each block's sum starts from the running one, so
    the additions are the same; no column-sized copy with NaN replaced). NaN where a column holds
    no number, as nanmean gives (without its warning)."""
    X = np.ascontiguousarray(X, dtype=np.float64)
    n, d = X.shape
    if d >= 2 and _c is not None and hasattr(_c, "nan_col_sums"):    # the same sums row after row, compiled
        tot, cnt = np.empty(d, dtype=np.float64), np.empty(d, dtype=np.int64)
        _c.nan_col_sums(X, n, d, tot, cnt)
        with np.errstate(invalid="ignore", divide="ignore"):
            return tot / cnt
    if d == 1:   # one contiguous column: NumPy sums it pairwise, not row after row; the copy is small
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.nansum(X, axis=0) / (n - np.isnan(X).sum(axis=0))
    step = max(1, (1 << 15) // max(d, 1))           # ~256 KiB of rows a block
    buf = np.empty((min(step, n) + 1, d), dtype=np.float64)
    tot = np.zeros(d, dtype=np.float64)
    cnt = np.zeros(d, dtype=np.int64)
    first = True
    for s in range(0, n, step):
        blk = X[s:s + step]
        m = len(blk)
        nan = np.isnan(blk)
        cnt += m - nan.sum(axis=0)
        if first:                                   # nanmean's sum starts with the first row itself
            b = buf[:m]
            b[:] = blk
            np.copyto(b, 0.0, where=nan)
            first = False
        else:
            b = buf[:m + 1]
            b[0] = tot
            b[1:] = blk
            np.copyto(b[1:], 0.0, where=nan)
        tot = np.add.reduce(b, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return tot / cnt


def build(X: np.ndarray, keys: np.ndarray, *, seed: int, bits: int, tables: int, center=None,
          device: str = "auto") -> dict:
    """The coverage sketch of transformed rows ``X`` (NaN = missing)."""
    if center is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-missing dimension: NaN, centre 0 below
            center = nanmean_rows(X) if X.shape[0] else np.zeros(X.shape[1])
    center = np.nan_to_num(np.asarray(center, dtype=np.float64))
    codes = _encode(X, keys, center, seed=seed, bits=bits, tables=tables, device=device)
    return {"v": COVERAGE_FORMAT, "keys": keys.astype(np.int64), "center": center, "bits": bits,
            "tables": tables, **code_counts(codes)}


def encode(X: np.ndarray, keys: np.ndarray, center: np.ndarray, *, seed: int, bits: int, tables: int,
           device: str = "auto") -> np.ndarray:
    """Codes ``(tables, n)`` of rows centred by ``center``; missing values sit at the centre."""
    return _encode(X, keys, center, seed=seed, bits=bits, tables=tables, device=device).astype(np.int64, copy=False)


def _encode(X, keys, center, *, seed: int, bits: int, tables: int, device: str = "auto") -> np.ndarray:
    """:func:`encode`'s codes, int32 on the CPU: (X - center) rounded to fp32, NaN -> 0, a block of
    rows at a time (rowcodes.row_codes_centered)."""
    return row_codes_centered(X, center, _planes(seed, tables, bits, keys), device=device)


PLANES_MEMO_BYTES = 4 << 20    # hyperplanes above this are drawn again each call, not memoized


def _planes(seed: int, tables: int, bits: int, keys) -> np.ndarray:
    """``hyperplanes(seed, tables, bits, keys)``, memoized (read-only): every entry of a schema is
    coded with the same ones, and drawing them costs ~0.5 ms (6,144 Box-Muller pairs). Arrays above
    ``PLANES_MEMO_BYTES`` (e.g. 503 MB at tables 65,536, bits 30, 64 dimensions) are drawn as before,
    so the memo's 64 entries hold at most ~256 MB (the default 8 tables x 12 bits x 64 dims: 24 KB)."""
    k = np.ascontiguousarray(keys, dtype=np.int64)
    if int(tables) * int(bits) * len(k) * 4 > PLANES_MEMO_BYTES:   # float32 (tables, bits, dims)
        a = hyperplanes(seed, tables, bits, k)
        a.setflags(write=False)
        return a
    return _planes_of(int(seed), int(tables), int(bits), k.tobytes())


@functools.lru_cache(maxsize=64)
def _planes_of(seed: int, tables: int, bits: int, kb: bytes) -> np.ndarray:
    a = hyperplanes(seed, tables, bits, np.frombuffer(kb, dtype=np.int64))
    a.setflags(write=False)
    return a


MAX_GROUPS = 16   # coverage centres one merged sketch may carry


def groups(rec: dict) -> list[dict]:
    """The record's count groups: ``[{"center", "table", "code", "count"}, ...]``. A sketch built in
    one piece (or from parts that shared ``coverage_center``) has one; a merge of parts coded around
    different centres keeps one group per centre (the first in the record's top level, the others
    under ``"more"``)."""
    first = {k: rec[k] for k in ("center", "table", "code", "count")}
    return [first, *rec.get("more", [])]


def _sum_counts(a: dict, b: dict) -> dict:
    tables = np.concatenate([a["table"], b["table"]]).astype(np.int64)
    codes = np.concatenate([a["code"], b["code"]]).astype(np.int64)
    counts = np.concatenate([a["count"], b["count"]]).astype(np.int64)
    top = int(codes.max()) + 1 if len(codes) else 0
    cells = (int(tables.max()) + 1) * top if len(codes) else 0
    if len(codes) and int(tables.min()) >= 0 and int(codes.min()) >= 0 and cells <= max(1 << 16, 4 * len(codes)):
        # few cells (T x 2^bits, e.g. 8 x 4,096): summed in a dense array, no sort of the keys; every
        # cell either record holds is kept (a stored zero count too), in (table, code) order, as below
        flat = tables * top + codes
        present = np.zeros(cells, dtype=bool)
        present[flat] = True
        nz = np.flatnonzero(present)
        uniq = (nz // top) * (1 << 32) + nz % top
        total = np.bincount(flat, weights=counts, minlength=cells)[nz]
    else:
        uniq, inv = np.unique(tables * (1 << 32) + codes, return_inverse=True)
        total = np.bincount(inv, weights=counts, minlength=len(uniq))
    # summed counts of the union, as narrow as code_counts stores them (merged sketches were uint32)
    summed = narrow_counts(np.minimum(total, 2 ** 32 - 1))
    table_t = np.result_type(a["table"].dtype, b["table"].dtype)
    code_t = np.result_type(a["code"].dtype, b["code"].dtype)
    return {"center": a["center"], "table": (uniq >> 32).astype(table_t),
            "code": (uniq & 0xFFFFFFFF).astype(code_t), "count": summed}


def merge(a: dict, b: dict) -> dict:
    """Coverage counts of the rows of both sketches. Groups with the same centre add their counts
    (exactly the counts of the union); a part coded around another centre -- parts of one dataset
    sketched independently -- is kept as a group of its own, scored by :func:`score` as the sum of
    the groups' counts at the target row's code in each group's space."""
    if not np.array_equal(a["keys"], b["keys"]) or a["bits"] != b["bits"] or a["tables"] != b["tables"]:
        raise ValueError("coverage sketches were coded over different columns or code sizes: merge sketches "
                         "of the same columns built with the same SketchConfig")
    out = groups(a)
    for g in groups(b):
        for i, h in enumerate(out):
            if np.array_equal(h["center"], g["center"]):
                out[i] = _sum_counts(h, g)
                break
        else:
            out.append(g)
    if len(out) > MAX_GROUPS:
        raise ValueError(f"the merged coverage sketch would hold {len(out)} coverage centres (at most {MAX_GROUPS}): "
                         "build the parts with one shared coverage_center (fitsketch.sketch_data(..., "
                         "coverage_center=...)), e.g. the first part's sketch.coverage['center']")
    rec = {k: v for k, v in a.items() if k != "more"}
    rec.update(out[0])
    if len(out) > 1:
        rec["more"] = out[1:]
    return rec


def score(X_target: np.ndarray, rec: dict, *, seed: int, tau: float, device: str = "auto", mode: str = "count",
          resolution: int = 6, rho: float = 1.0) -> np.ndarray:
    """Per-table coverage of target rows (already in the entry's column order) by entry ``rec``:
    ``mode="count"`` the share of the target's mass in codes where the source has >= ``tau`` rows;
    ``mode="share"`` (:func:`share_score`) at ``resolution`` bits with ratio ``rho``.

    Several count groups (a merge of parts coded around different centres): in count mode the mean
    over target rows of ``min(1, sum_g n_g(code_g(row)) / tau)`` -- the source's count at a row is
    the sum of each part's count at the row's code in that part's space (for one group the two
    definitions are equal); in share mode each group's share score, weighted by its rows."""
    keys, bits, tables = np.asarray(rec["keys"]), int(rec["bits"]), int(rec["tables"])
    res = min(int(resolution), bits)
    if not rec.get("more"):
        codes = encode(X_target, keys, np.asarray(rec["center"]), seed=seed, bits=bits, tables=tables,
                       device=device)
        if mode == "share":
            return share_score(codes, rec, tables, res, rho)
        return coverage_score(code_counts(codes), rec, tables, tau)
    n = X_target.shape[0]
    if n == 0:
        return np.zeros(tables, dtype=np.float64)
    if mode == "share":
        out, weight = np.zeros(tables, dtype=np.float64), 0.0
        for g in groups(rec):
            codes = encode(X_target, keys, np.asarray(g["center"], dtype=np.float64), seed=seed, bits=bits,
                           tables=tables, device=device)
            w = float(np.asarray(g["count"], dtype=np.float64).sum())
            out += w * share_score(codes, g, tables, res, rho)
            weight += w
        return out / max(weight, 1.0)
    from .kernels.rowcodes import source_counts

    table = np.repeat(np.arange(tables, dtype=np.int64)[:, None], n, axis=1)
    total = np.zeros((tables, n), dtype=np.float64)
    for g in groups(rec):
        codes = encode(X_target, keys, np.asarray(g["center"], dtype=np.float64), seed=seed, bits=bits,
                       tables=tables, device=device)
        total += source_counts(g, table, codes)
    return np.minimum(1.0, total / tau).mean(axis=1)


def share_score(codes: np.ndarray, rec: dict, tables: int, resolution: int, rho: float) -> np.ndarray:
    """Per table ``t``: ``sum_b min(p_target(b), p_source(b) / rho)`` over the cells ``b`` of the first
    ``resolution`` hyperplanes (codes masked to their low bits, counts summed), with ``p`` each
    side's share of rows: how much of the target's mass falls where the source has at least
    ``rho`` times the target's share of rows (``rho = 1``: the histogram intersection).

    Why not counts (mode "count"): hyperplanes through the entry's centre cut space into cones, so
    a target shifted away from the centre falls into the few cones that point its way, where any
    source has rows: a count-based score calls such a target covered, and one spread like the
    source (over many sparse cells) less covered. Shares over coarse cells compare how the mass is
    spread (bench/bench_sanity.py: the median-split check)."""
    mask = np.int64((1 << resolution) - 1)
    T, n = codes.shape
    out = np.zeros(tables, dtype=np.float64)
    if n == 0:
        return out
    tk = (np.arange(T, dtype=np.int64)[:, None] << np.int64(32)) + (np.asarray(codes, dtype=np.int64) & mask)
    t_keys, t_cnt = np.unique(tk.reshape(-1), return_counts=True)
    sk = (np.asarray(rec["table"], dtype=np.int64) << np.int64(32)) + (np.asarray(rec["code"], dtype=np.int64) & mask)
    s_keys, s_inv = np.unique(sk, return_inverse=True)
    s_cnt = np.bincount(s_inv, weights=np.asarray(rec["count"], dtype=np.float64), minlength=len(s_keys))
    s_tot = np.bincount((s_keys >> 32).astype(np.int64), weights=s_cnt, minlength=tables)
    common, i, j = np.intersect1d(t_keys, s_keys, assume_unique=True, return_indices=True)
    tab = (common >> 32).astype(np.int64)
    pt = t_cnt[i] / n
    ps = s_cnt[j] / np.maximum(s_tot[tab], 1.0)
    np.add.at(out, tab, np.minimum(pt, ps / rho))
    return out
