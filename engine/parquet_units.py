"""Parquet files as units of work for :mod:`fitsketch.distributed`: the plan (files, row groups,
one schema, the column kinds; steps 1-3 of that module's docstring) and the map tasks a worker
runs on one row group (the coverage statistics of pass 1, the unit's sketch of pass 2). A map
task takes a small dict and returns msgpack bytes, never pickle; the functions live here so that
spawned workers import them from this module, not from the parent's ``__main__``."""
from __future__ import annotations

import functools
import glob as _glob
import os
from dataclasses import dataclass

import numpy as np

from . import errors as E
from .config import SketchConfig
from .sketch import Sketch, build_sketch

__all__ = ["Unit", "ParquetPlan", "resolve_files", "plan", "detect_kinds", "unit_stats", "unit_sketch",
           "sketch_frame", "KIND_SAMPLE", "local_first_pass", "finish_unit", "LOCAL_CACHE_BYTES",
           "ordered_map"]

KIND_SAMPLE = 1000        # values detect_kind looks at (quantize.detect_kind samples the first 1000)
UnreadableFileError = E.UnreadableFileError
SchemaDriftError = E.SchemaDriftError


# ----------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class Unit:
    """One map task: a row group of one file."""
    index: int          # position in unit order
    file_index: int
    path: str
    row_group: int
    num_rows: int


@dataclass
class ParquetPlan:
    files: list[str]
    columns: list[str]
    units: list[Unit]
    n_rows: int
    n_bytes: int        # uncompressed bytes of the row groups (Parquet metadata)


def resolve_files(paths_or_glob) -> list[str]:
    """Sorted file list from a path, a glob, a directory (its ``*.parquet``) or a list of those."""
    items = [paths_or_glob] if isinstance(paths_or_glob, (str, os.PathLike)) else list(paths_or_glob)
    if not items:
        raise E.InvalidArgumentError("paths_or_glob is empty: give Parquet paths or a glob like 'data/*.parquet'")
    out: list[str] = []
    for p in items:
        if not isinstance(p, (str, os.PathLike)):
            raise E.InvalidArgumentError(f"paths_or_glob holds {p!r}: give str paths or globs")
        p = os.fspath(p)
        if os.path.isdir(p):
            out.extend(sorted(_glob.glob(os.path.join(p, "*.parquet"))))
        elif _glob.has_magic(p):
            hits = sorted(_glob.glob(p))
            if not hits:
                raise UnreadableFileError(f"no file matches {p!r}: check the glob")
            out.extend(hits)
        else:
            out.append(p)
    if not out:
        raise UnreadableFileError(f"no Parquet file in {paths_or_glob!r}: give files or a glob like 'dir/*.parquet'")
    return sorted(dict.fromkeys(out))


def plan(paths_or_glob, columns=None) -> ParquetPlan:
    """Read every file's footer: check readability and schema, list the units. Reads no data."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = resolve_files(paths_or_glob)
    if columns is not None:
        if isinstance(columns, str) or not all(isinstance(c, str) for c in columns) or not columns:
            raise E.InvalidArgumentError(f"columns={columns!r} is not valid: give a non-empty list of column names")
        columns = list(columns)
    ref_types, units, n_rows, n_bytes = None, [], 0, 0
    for i, path in enumerate(files):
        if not os.path.isfile(path):
            raise UnreadableFileError(f"data file {path!r} does not exist: check the path or glob")
        try:
            pf = pq.ParquetFile(path)
            schema, md = pf.schema_arrow, pf.metadata
        except (OSError, pa.ArrowException, ValueError) as e:
            raise UnreadableFileError(f"cannot read {path!r} as Parquet: {e}") from None
        types = {f.name: f.type for f in schema}
        if ref_types is None:
            if columns is None:
                columns = list(schema.names)
            missing = [c for c in columns if c not in types]
            if missing:
                raise E.InvalidArgumentError(f"columns {missing} are not in {path!r}: its columns are {schema.names}")
            if len(set(columns)) != len(columns):
                raise E.DuplicateFeatureError(f"columns={columns!r} has duplicates: name each column once")
            ref_types, ref_path = {c: types[c] for c in columns}, path
        missing = [c for c in columns if c not in types]
        if missing:
            raise SchemaDriftError(f"file {path!r} lacks columns {missing} that {ref_path!r} has: give files of "
                                   f"one schema, or select shared columns with columns=[...]")
        changed = [(c, str(ref_types[c]), str(types[c])) for c in columns if types[c] != ref_types[c]]
        if changed:
            desc = ", ".join(f"{c!r} is {new} (was {old})" for c, old, new in changed)
            raise SchemaDriftError(f"file {path!r} changes column types: {desc} in {ref_path!r}: rewrite the files "
                                   f"with one schema (pyarrow: table.cast(schema)) or leave those columns out")
        for g in range(md.num_row_groups):
            rg = md.row_group(g)
            if rg.num_rows == 0:
                continue
            units.append(Unit(len(units), i, path, g, rg.num_rows))
            n_rows += rg.num_rows
            n_bytes += rg.total_byte_size
    if not units:
        raise E.EmptyDataError(f"the {len(files)} Parquet file(s) hold no rows: give data with at least one row")
    return ParquetPlan(files, columns, units, n_rows, n_bytes)


def detect_kinds(p: ParquetPlan) -> list[str]:
    """Each column's kind from its first KIND_SAMPLE non-missing values in unit order (reads only
    the string-like columns of the first row groups)."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .quantize import detect_kind

    schema = pq.read_schema(p.files[0])
    kinds = {}
    todo = []
    for c in p.columns:
        t = schema.field(c).type
        if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or \
                pa.types.is_temporal(t) or pa.types.is_decimal(t):
            kinds[c] = "numeric"
        else:
            todo.append(c)
    samples = {c: [] for c in todo}
    have = dict.fromkeys(todo, 0)
    for u in p.units:
        need = [c for c in todo if have[c] < KIND_SAMPLE]
        if not need:
            break
        tab = _read_unit(u.path, u.row_group, need)
        for c in need:
            s = tab.column(c).to_pandas().dropna()
            s = s.iloc[: KIND_SAMPLE - have[c]]
            samples[c].append(s)
            have[c] += len(s)
    for c in todo:
        s = pd.concat(samples[c], ignore_index=True) if samples[c] else pd.Series([], dtype=object)
        kinds[c] = detect_kind(s)
    return [kinds[c] for c in p.columns]


# ----------------------------------------------------------------------------- map tasks
def _read_unit(path: str, row_group: int, columns: list[str], dictionary=()):
    """Row group ``row_group`` of ``path``; the string columns named in ``dictionary`` read as
    Arrow dictionaries (pandas Categoricals), as Parquet usually stores them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path, read_dictionary=list(dictionary) or None)
        return pf.read_row_group(row_group, columns=columns)
    except (OSError, pa.ArrowException, ValueError) as e:
        raise UnreadableFileError(f"cannot read row group {row_group} of {path!r}: {e}") from None


# a dictionary column with more distinct values than rows / DICTIONARY_MAX_SHARE is decoded to plain strings
DICTIONARY_MAX_SHARE = 2


def _dictionary_columns(spec: dict) -> list[str]:
    """The columns a unit reads as dictionaries: the categorical ones whose values are strings.
    Their hashes, tokens and hashed dimensions are then computed once per distinct value
    (``quantize._str_categories``), the same values as of the rows; Parquet stores such columns
    dictionary-encoded, so they are read without writing every string out. Text columns (mostly
    distinct values) are read plain."""
    try:
        st = os.stat(spec["path"])
    except OSError:
        return []                        # _read_unit raises the named error
    return list(_dictionary_columns_of(spec["path"], tuple(spec["columns"]), tuple(spec["kinds"]),
                                       (st.st_mtime_ns, st.st_size)))


@functools.lru_cache(maxsize=64)
def _dictionary_columns_of(path: str, columns: tuple, kinds: tuple, version=None) -> tuple:
    """(``version``: the file's mtime and size, so a rewritten file's schema is read again.)"""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException, ValueError):
        return ()                        # _read_unit raises the named error
    out = []
    for c, kind in zip(columns, kinds):
        t = schema.field(c).type if c in schema.names else None
        if kind == "categorical" and t is not None and (pa.types.is_string(t) or pa.types.is_large_string(t)):
            out.append(c)
    return tuple(out)


def _unit_frame(spec: dict):
    from .data import to_frame

    dictionary = spec.get("dictionary")
    if dictionary is None:
        dictionary = _dictionary_columns(spec)
    tab = _read_unit(spec["path"], spec["row_group"], spec["columns"], dictionary)
    for c in dictionary:   # mostly distinct values (ids): per-category work saves nothing, a Categorical costs
        col = tab.column(c)
        if sum(len(ch.dictionary) for ch in col.chunks) * DICTIONARY_MAX_SHARE > max(len(col), 1):
            tab = tab.set_column(tab.schema.get_field_index(c), c, col.cast(col.type.value_type))
    # split_blocks: each column its own block (no copy of the numeric columns into one 2-D block)
    return to_frame(tab.to_pandas(split_blocks=True))


def _threads(n: int | None) -> None:
    if n:
        import torch

        if torch.get_num_threads() != n:
            torch.set_num_threads(n)


def unit_stats(spec: dict) -> bytes:
    """Map task of pass 1: per-dimension sums and non-missing counts of the coverage transform."""
    from . import coverage as _cov
    from .storage import pack

    _threads(spec.get("threads"))
    df = _unit_frame(spec)
    X, keys, _ = _cov.row_matrix(df, spec["kinds"], spec["config"]["seed"])       # (n, D)
    return pack(_stats(X, keys))


def _stats(X: np.ndarray, keys: np.ndarray) -> dict:
    """Per dimension of the transformed rows ``X`` (n, D): the sum of the non-NaN values and their
    count (``_stats_numpy``, the definition; compiled in one pass over X when built, the same bits)."""
    from .kernels.rowcodes import _c

    X = np.asarray(X)
    if _c is not None and hasattr(_c, "nan_col_sums") and X.ndim == 2 and X.shape[1] >= 2 \
            and X.dtype == np.float64 and X.flags.c_contiguous:
        # (D >= 2: NumPy sums a C-ordered matrix down its rows one row after another, as the kernel
        # does; a single column it sums pairwise)
        total, count = np.empty(X.shape[1]), np.empty(X.shape[1], dtype=np.int64)
        _c.nan_col_sums(X, X.shape[0], X.shape[1], total, count)
        return {"sum": total, "count": count, "keys": keys.astype(np.int64)}
    return _stats_numpy(X, keys)


def _stats_numpy(X: np.ndarray, keys: np.ndarray) -> dict:
    ok = ~np.isnan(X)
    return {"sum": np.where(ok, X, 0.0).sum(axis=0), "count": ok.sum(axis=0).astype(np.int64),
            "keys": keys.astype(np.int64)}


def unit_sketch(spec: dict) -> bytes:
    """Map task of pass 2: the unit's sketch as msgpack bytes (``Sketch.to_bytes``)."""
    _threads(spec.get("threads"))
    df = _unit_frame(spec)
    cfg = SketchConfig.from_dict(spec["config"])
    seed_key = (spec["file_index"], spec["row_group"]) if spec["shuffle"] else None
    return sketch_frame(df, cfg, spec["kinds"], partition_size=spec["partition_size"], shuffle_key=seed_key,
                        coverage_center=spec["center"], device=spec["device"]).to_bytes()


# ----------------------------------------------------------------------------- one process (engine="local")
LOCAL_CACHE_BYTES = 1 << 30   # transformed rows (float64) engine="local" keeps between its two passes


def ordered_map(fn, items, workers: int):
    """``map(fn, items)`` in order, on ``workers`` threads of this process (the compiled kernels,
    pyarrow and NumPy's large operations release the GIL), at most ``2 * workers`` items in flight so
    memory stays bounded; ``workers <= 1`` runs in the calling thread. An exception of ``fn`` is
    raised here as it was raised (the same type and message as in one thread), after the items in
    flight have finished; items not yet started are never started."""
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        for it in items:
            yield fn(it)
        return
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fitsketch-unit") as pool:
        window: deque = deque()
        nxt = 0
        try:
            while nxt < len(items) or window:
                while nxt < len(items) and len(window) < 2 * workers:
                    window.append(pool.submit(fn, items[nxt]))
                    nxt += 1
                yield window.popleft().result()
        finally:
            for f in window:
                f.cancel()


def local_first_pass(specs: list[dict], on_unit=None, workers: int = 1) -> tuple[list[dict], dict[int, Sketch]]:
    """Pass 1 of ``engine="local"`` in one read of each unit: the coverage statistics of
    :func:`unit_stats` (the same arrays) and, while the units' transformed rows fit in
    :data:`LOCAL_CACHE_BYTES`, the unit's whole sketch but its coverage codes (``coverage=False``;
    the rows kept), so pass 2 only codes those units (:func:`finish_unit`) instead of reading,
    quantizing and transforming them again. Units past the budget get :func:`unit_stats` here and
    :func:`unit_sketch` in pass 2, as the other engines do. ``specs`` are pass 2's (with
    ``partition_size``, ``shuffle``, ``device``; ``center`` unused); ``workers`` threads sketch
    units side by side (:func:`ordered_map`: the same results, in unit order). Returns (stats per
    unit in order, {unit index: pending sketch})."""
    from .coverage import HASH_DIMS
    from .storage import unpack

    # which units keep their rows: decided up front from the row counts in the footers (a unit's
    # rows take 8 bytes x rows x width, what it then holds), so the choice is the same on any thread count
    keep, used = [], 0
    for spec in specs:
        width = sum(1 if k == "numeric" else HASH_DIMS for k in spec["kinds"])
        rows = spec.get("num_rows")
        need = None if rows is None else 8 * int(rows) * width
        keep.append(need is not None and used + need <= LOCAL_CACHE_BYTES)
        used += need if keep[-1] else 0

    def one(i: int):
        spec = specs[i]
        if not keep[i]:
            return unpack(unit_stats(spec)), None
        sk = _unit_pending(spec)
        return _stats(sk.rows, _pending_keys(sk, spec)), sk

    stats: list[dict] = []
    pending: dict[int, Sketch] = {}
    for i, (st, sk) in enumerate(ordered_map(one, range(len(specs)), workers)):
        stats.append(st)
        if sk is not None:
            pending[i] = sk
        if on_unit is not None:
            on_unit(i)
    return stats, pending


def _pending_keys(sk: Sketch, spec: dict) -> np.ndarray:
    from .sketch import _coverage_keys

    return _coverage_keys(tuple(sk.names), tuple(sk.kinds), spec["config"]["seed"])


def _unit_pending(spec: dict) -> Sketch:
    _threads(spec.get("threads"))
    df = _unit_frame(spec)
    cfg = SketchConfig.from_dict(spec["config"])
    seed_key = (spec["file_index"], spec["row_group"]) if spec["shuffle"] else None
    return build_sketch(df, cfg, partition_size=spec["partition_size"], kinds=list(spec["kinds"]), shuffle=False,
                        shuffle_key=seed_key, device=spec["device"], quantize=_quantize, coverage=False)


def finish_unit(sk: Sketch, spec: dict, center) -> Sketch:
    """A pending unit sketch of :func:`local_first_pass` coded around ``center``: what
    ``Sketch.from_bytes(unit_sketch(spec))`` gives for that centre."""
    from .sketch import finish_coverage

    return finish_coverage(sk, SketchConfig.from_dict(spec["config"]), center, device=spec["device"])


def _quantize(name, col, config: SketchConfig, kind: str):
    """``quantize_column`` with a fixed kind. A column with no value (or no token) in this unit but
    some elsewhere is legal: it adds no MinHash element, and its rows land where the whole-dataset
    quantizer puts missing values (NaN bucket / missing bin / no token). Columns empty in every
    unit are refused after the merge."""
    from .quantize import NAN_KEY, Column, quantize_column

    try:
        return quantize_column(name, col, config, kind=kind)
    except E.EmptyColumnError:
        n = len(col)
        none = np.zeros(0, np.int64)
        if kind == "numeric":
            return Column(name, kind, none, np.arange(n, dtype=np.int64), np.full(n, NAN_KEY, np.int32), 0.0, 0)
        if kind == "categorical":
            return Column(name, kind, none, np.arange(n, dtype=np.int64), np.full(n, config.hist_bins, np.int32),
                          0.0, 0)
        return Column(name, kind, none, none, np.zeros(0, np.int32), 0.0, 0)


def sketch_frame(df, config: SketchConfig, kinds: list[str], *, partition_size: int, shuffle_key=None,
                 coverage_center=None, device: str = "auto") -> Sketch:
    """``build_sketch`` of one unit with the column kinds fixed (same kernels, same layout).

    ``shuffle_key=(file_index, row_group)`` shuffles rows with a generator seeded by
    ``(config.seed, *shuffle_key)``; ``None`` keeps them in order.
    """
    return build_sketch(df, config, partition_size=partition_size, kinds=list(kinds), shuffle=False,
                        shuffle_key=shuffle_key, coverage_center=coverage_center, device=device,
                        quantize=_quantize)
