"""The dataset-independent quantizer: values -> integer buckets.

Two datasets sketched apart stay comparable because the rule depends only on the hub's
parameters, never on the data:

* numbers: relative-accuracy logarithmic buckets, as DDSketch does. With
  ``gamma = (1 + alpha) / (1 - alpha)``, a value ``v`` with ``|v| > MIN_ABS`` goes to
  ``k = ceil(log|v| / log gamma)``; the key is ``BIAS + k`` for positive and ``-(BIAS + k)`` for
  negative values, ``0`` for the zero bucket ``|v| <= MIN_ABS``, and NaN, +inf and -inf get
  buckets of their own. Keys fit in int32.
* categorical values and text tokens: a seeded 64-bit hash (pandas' SipHash), folded to
  ``hist_bins`` bins for histograms (plus one bin for missing values).

The MinHash set of every string column (categorical or text) is its set of lower-cased word
tokens, so two columns of the same values match even when one was detected as categorical
("SIGMOD Record") and the other as text ("International Conference on Management of Data");
histograms keep the distinction (whole values for categorical, tokens for text).

Each column becomes a :class:`Column`: the set of its fine buckets (MinHash elements, 32-bit),
and one coarse histogram bucket per occurrence (a row for numbers and categories, a token for
text) with the row it came from.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .config import SketchConfig
from .errors import EmptyColumnError
from .kernels.hashing import hash_tokens, mix64, to_u32

MIN_ABS = 1e-9
BIAS = 1 << 20
NAN_KEY = 1 << 30
POS_INF_KEY = (1 << 30) + 1
NEG_INF_KEY = -((1 << 30) + 1)
_NUMERIC_DOMAIN = 0x6E756D62  # keeps numeric buckets and string hashes apart in MinHash sets
TEXT_MIN_TOKENS = 2.5         # an object column whose values average more tokens than this is text
KINDS = ("numeric", "categorical", "text")


@dataclass
class Column:
    name: str
    kind: str                 # "numeric" | "categorical" | "text"
    set_elems: np.ndarray     # (n_distinct,) int64 in [0, 2**32): MinHash elements, unique
    rows: np.ndarray          # (n_occ,) int64 row of each occurrence
    hist: np.ndarray          # (n_occ,) int32 histogram bucket of each occurrence
    total: float              # sum of finite numeric values (0 for other kinds)
    count: int                # number of finite numeric values (0 for other kinds)


def numeric_keys(values: np.ndarray, accuracy: float) -> np.ndarray:
    """Log-bucket keys (int64, within int32 range) of float values at relative ``accuracy``."""
    v = np.asarray(values, dtype=np.float64)
    lg = math.log((1.0 + accuracy) / (1.0 - accuracy))
    keys = np.zeros(v.shape, dtype=np.int64)
    a = np.abs(v)
    big = np.isfinite(v) & (a > MIN_ABS)
    with np.errstate(divide="ignore", invalid="ignore"):
        k = np.ceil(np.log(a[big]) / lg).astype(np.int64)
    keys[big] = np.where(v[big] > 0, BIAS + k, -(BIAS + k))
    keys[np.isnan(v)] = NAN_KEY
    keys[v == np.inf] = POS_INF_KEY
    keys[v == -np.inf] = NEG_INF_KEY
    return keys


def detect_kind(col: pd.Series) -> str:
    """``numeric`` for numbers/bools/datetimes; ``text`` or ``categorical`` for the rest."""
    if pd.api.types.is_bool_dtype(col) or pd.api.types.is_numeric_dtype(col) or \
            pd.api.types.is_datetime64_any_dtype(col):
        return "numeric"
    nonnull = col.dropna()
    if len(nonnull) == 0:
        return "categorical"
    sample = nonnull.iloc[: 1000]
    if all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in sample):
        return "numeric"
    tokens = sample.astype(str).str.count(r"\w+")
    return "text" if float(tokens.mean()) > TEXT_MIN_TOKENS else "categorical"


def _as_float(col: pd.Series) -> np.ndarray:
    if pd.api.types.is_datetime64_any_dtype(col):
        out = col.astype("int64").to_numpy(dtype=np.float64) / 1e9
        out[col.isna().to_numpy()] = np.nan
        return out
    return pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def quantize_column(name: str, col: pd.Series, config: SketchConfig, kind: str | None = None) -> Column:
    kind = kind or detect_kind(col)
    n = len(col)
    if kind == "numeric":
        v = _as_float(col)
        if np.isnan(v).all():
            raise EmptyColumnError(
                f"column {name!r} has no values (all {n} are missing/NaN): drop it "
                "(df.dropna(axis=1, how='all')) or fill it")
        fine = numeric_keys(v, config.accuracy)
        fine = np.unique(fine[~np.isnan(v)])
        elems = to_u32(mix64(fine.view(np.uint64), config.seed ^ _NUMERIC_DOMAIN))
        finite = np.isfinite(v)
        return Column(name, kind, np.unique(elems), np.arange(n, dtype=np.int64),
                      numeric_keys(v, config.hist_accuracy).astype(np.int32),
                      float(v[finite].sum()), int(finite.sum()))
    missing = col.isna().to_numpy()
    if missing.all():
        raise EmptyColumnError(
            f"column {name!r} has no values (all {n} are missing): drop it or fill it")
    if kind == "categorical":
        values = col.to_numpy(dtype=object)
        rows = np.arange(n, dtype=np.int64)
        h = np.zeros(n, dtype=np.uint64)
        h[~missing] = hash_tokens(np.array([str(x) for x in values[~missing]], dtype=object), config.seed)
        hist = (h % np.uint64(config.hist_bins)).astype(np.int32)
        hist[missing] = config.hist_bins  # one extra bin for missing values
        _, tok_hash = _tokens(col, missing, config.seed)
        elems = np.unique(to_u32(tok_hash)) if tok_hash.size else np.unique(to_u32(h[~missing]))
        return Column(name, kind, elems, rows, hist, 0.0, 0)
    if kind == "text":
        rows, h = _tokens(col, missing, config.seed)
        if h.size == 0:
            raise EmptyColumnError(f"text column {name!r} has no word tokens: drop it or fill it")
        return Column(name, kind, np.unique(to_u32(h)), rows,
                      (h % np.uint64(config.hist_bins)).astype(np.int32), 0.0, 0)
    raise ValueError(f"unknown column kind {kind!r}")


def _tokens(col: pd.Series, missing: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Lower-cased word tokens of a string column: (row of each token, token hash)."""
    toks = col.astype(object).where(~missing, "").astype(str).str.lower().str.findall(r"\w+")
    lengths = toks.str.len().to_numpy(dtype=np.int64)
    flat = np.array([t for ts in toks for t in ts], dtype=object)
    rows = np.repeat(np.arange(len(col), dtype=np.int64), lengths)
    return rows, hash_tokens(flat, seed)
