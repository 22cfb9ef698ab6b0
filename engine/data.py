"""Reading user data into one shape: a pandas DataFrame with unique string column names.

Accepted: pandas DataFrame, pyarrow Table, NumPy array (2-D, or N-D images flattened to one
feature per pixel), dict of equal-length columns, or a path to CSV / TSV / Parquet / NPY.
Files are read by pandas / pyarrow; ``.npy`` with ``allow_pickle=False``.
"""
from __future__ import annotations

import csv
import os
import warnings
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import DuplicateFeatureError, EmptyDataError, InvalidArgumentError, UnsupportedDataError

_ACCEPTED = "a pandas DataFrame, a pyarrow Table, a NumPy array, a dict of columns, or a path to .csv/.tsv/.parquet/.npy"


SNIFF_BYTES = 1 << 16
DELIMITERS = ",;\t|"


class OneColumnWarning(UserWarning):
    """A CSV file parsed into a single column whose name holds another likely delimiter."""


def sniff_sep(path: str | os.PathLike, default: str = ",") -> str:
    """The field delimiter of a delimited text file, guessed by :class:`csv.Sniffer` from its
    first 64 KiB among ``, ; TAB |`` (``default`` when the sample is not conclusive)."""
    import gzip

    p = Path(path)
    try:
        opener = gzip.open if p.suffix.lower() == ".gz" else open
        with opener(p, "rt", encoding="utf-8", errors="replace", newline="") as f:
            sample = f.read(SNIFF_BYTES)
    except OSError:
        return default
    lines = sample.splitlines()
    if len(sample) >= SNIFF_BYTES and len(lines) > 1:
        sample = "\n".join(lines[:-1])  # the last line may be cut
    try:
        return csv.Sniffer().sniff(sample, delimiters=DELIMITERS).delimiter
    except csv.Error:
        return default


def check_sep(sep) -> str | None:
    if sep is None or (isinstance(sep, str) and sep in ("auto", "")):
        return None
    if not isinstance(sep, str) or len(sep) != 1 or sep in "\"\r\n":
        raise InvalidArgumentError(f"sep={sep!r} is not a field delimiter: give one character such as ',' ';' "
                                   "'|' or '\\t', or 'auto' to guess it")
    return sep


def warn_one_column(df: pd.DataFrame, path, sep: str) -> None:
    if df.shape[1] == 1:
        name = str(df.columns[0])
        others = [d for d in DELIMITERS if d != sep and d in name]
        if others:
            warnings.warn(f"{str(path)!r} parsed into one column named {name[:60]!r} with delimiter {sep!r}; "
                          f"if its fields are separated by {others[0]!r}, pass sep={others[0]!r}",
                          OneColumnWarning, stacklevel=3)


def csv_options(path: str | os.PathLike, sep=None) -> dict:
    """``pandas.read_csv`` keyword arguments for a delimited file: its delimiter (``sep``, or
    sniffed when ``sep`` is None / ``"auto"``; TAB for .tsv)."""
    sep = check_sep(sep)
    if sep is None:
        name = str(path).lower()
        sep = "\t" if ".tsv" in name else sniff_sep(path)
    return {"sep": sep}


def read_path(path: str | os.PathLike, sep=None) -> pd.DataFrame | np.ndarray:
    """Read a data file; ``sep`` is the CSV / TSV field delimiter (None or "auto": sniffed)."""
    p = Path(path)
    if not p.exists():
        raise UnsupportedDataError(f"data path {str(p)!r} does not exist: pass an existing file ({_ACCEPTED})")
    suffix = "".join(p.suffixes[-2:]).lower() if p.suffix.lower() in (".gz", ".bz2", ".zip", ".xz") else p.suffix.lower()
    try:
        if suffix.startswith((".csv", ".tsv")):
            kw = csv_options(p, sep)
            df = pd.read_csv(p, **kw)
            warn_one_column(df, p, kw["sep"])
            return df
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(p)
        if suffix == ".npy":
            return np.load(p, allow_pickle=False)
    except (ValueError, OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise UnsupportedDataError(f"could not read {str(p)!r}: {e}") from e
    raise UnsupportedDataError(f"data path {str(p)!r} has suffix {suffix!r}: use .csv, .tsv, .parquet or .npy")


def to_frame(data, feature_names=None) -> pd.DataFrame:
    """Normalize ``data`` to a DataFrame with unique ``str`` column names; never empty."""
    if isinstance(data, (str, os.PathLike)):
        data = read_path(data)
    if type(data).__module__.startswith("pyarrow") and hasattr(data, "to_pandas"):
        data = data.to_pandas()
    if isinstance(data, pd.Series):
        data = data.to_frame()
    if isinstance(data, dict):
        lengths = {k: len(v) if hasattr(v, "__len__") else None for k, v in data.items()}
        if any(n is None for n in lengths.values()):
            bad = [k for k, n in lengths.items() if n is None]
            raise UnsupportedDataError(f"dict data: columns {bad!r} are not sequences: give each column as a list or array")
        if len(set(lengths.values())) > 1:
            raise InvalidArgumentError(f"dict data: columns have different lengths {lengths}: give equal-length columns")
        data = pd.DataFrame({str(k): (np.asarray(v) if isinstance(v, np.ndarray) else list(v)) for k, v in data.items()})
        if len({str(k) for k in lengths}) != len(lengths):
            raise DuplicateFeatureError("dict data: two keys have the same string name: rename one")
    if isinstance(data, np.ndarray):
        data = _array_to_frame(data, feature_names)
    elif feature_names is not None:
        raise InvalidArgumentError("feature_names is only for NumPy arrays: name DataFrame columns directly")
    if not isinstance(data, pd.DataFrame):
        raise UnsupportedDataError(f"data of type {type(data).__name__} is not supported: pass {_ACCEPTED}")
    names = [str(c) for c in data.columns]
    if len(set(names)) != len(names):
        dups = sorted({n for n in names if names.count(n) > 1})
        raise DuplicateFeatureError(f"duplicate column names {dups}: each feature needs a unique name")
    if data.shape[1] == 0:
        raise EmptyDataError("data has no columns: give at least one feature")
    if data.shape[0] == 0:
        raise EmptyDataError("data has no rows: give at least one row")
    if list(data.columns) != names:
        data = data.set_axis(names, axis=1)
    return _decode_bytes(data)


def _decode_bytes(df: pd.DataFrame) -> pd.DataFrame:
    """bytes values become str (UTF-8; undecodable bytes as backslash escapes), so every later
    step sees text: b"abc" and "abc" are the same value, b"\\xff" is the text "\\xff". Decimal
    values become floats (a signaling NaN becomes NaN: pandas' own missing-value checks raise
    decimal.InvalidOperation on it)."""
    out = None
    for name in df.columns:
        col = df[name]
        if getattr(col.dtype, "kind", "") not in "OS":
            continue
        # one pass in C: all-str (the common text column) and all-number columns need nothing
        if pd.api.types.infer_dtype(col, skipna=False) not in ("bytes", "mixed", "mixed-integer", "decimal"):
            continue
        col = col.astype(object)
        if not col.map(lambda v: isinstance(v, (bytes, bytearray, Decimal))).any():
            continue
        if out is None:
            out = df.copy()
        out[name] = col.map(_plain)
    return df if out is None else out


def _plain(v):
    if isinstance(v, (bytes, bytearray)):
        return bytes(v).decode("utf-8", "backslashreplace")
    if isinstance(v, Decimal):
        return float("nan") if v.is_nan() else float(v)
    return v


def _array_to_frame(arr: np.ndarray, feature_names) -> pd.DataFrame:
    if arr.dtype.kind not in "biufOUS":
        raise UnsupportedDataError(f"array dtype {arr.dtype} is not supported: use numbers or strings")
    if arr.ndim == 1:
        raise InvalidArgumentError(
            f"1-D array of shape {arr.shape}: give a 2-D (rows, features) array, e.g. x.reshape(-1, 1)")
    if arr.ndim == 0:
        raise InvalidArgumentError("0-D array: give a 2-D (rows, features) array")
    if arr.ndim > 2:  # images: one feature per pixel position
        if arr.size == 0:
            raise EmptyDataError(f"array of shape {arr.shape} is empty: give at least one row and one feature")
        arr = arr.reshape(arr.shape[0], -1)
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise EmptyDataError(f"array of shape {arr.shape} is empty: give at least one row and one feature")
    if feature_names is None:
        feature_names = [f"f{i}" for i in range(arr.shape[1])]
    if isinstance(feature_names, (str, bytes)) or not hasattr(feature_names, "__iter__"):
        raise InvalidArgumentError(
            f"feature_names={feature_names!r} is not a sequence of names: give one name per column")
    feature_names = [str(n) for n in feature_names]
    if len(feature_names) != arr.shape[1]:
        raise InvalidArgumentError(
            f"feature_names has {len(feature_names)} names for {arr.shape[1]} columns: give one name per column")
    if len(set(feature_names)) != len(feature_names):
        raise DuplicateFeatureError("feature_names has duplicates: each feature needs a unique name")
    return pd.DataFrame(arr, columns=feature_names)
