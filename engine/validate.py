"""Validators of what comes from outside (paths, names, metadata, counts, query width) and the
limits on one request (issue 23). Each raises a named ``fitsketch.errors`` class, before anything
is sized from the input. Used by the hub, the pipeline, embeddings and ProbeLog alike."""
from __future__ import annotations

import os
import unicodedata

import numpy as np

from . import errors as E

_NAME_MAX = 511  # LMDB's key size limit: a name is a key of the names database


def _check_path(path) -> str:
    """A hub path as str: a non-empty str or os.PathLike of str, not under a regular file."""
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if not isinstance(path, str) or not path or "\x00" in path:
        raise E.InvalidArgumentError(f"path={path!r} is not a hub path: give the hub's directory as a non-empty str "
                                     "or pathlib.Path (not bytes, not '')")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise E.InvalidArgumentError(f"path={path!r} holds a lone surrogate: give a path UTF-8 can encode") from None
    parent = os.path.dirname(os.path.abspath(path))
    while parent and not os.path.exists(parent):
        parent, last = os.path.dirname(parent), parent
        if parent == last:
            break
    if parent and os.path.exists(parent) and not os.path.isdir(parent):
        raise E.InvalidArgumentError(f"path={path!r} is inside {parent!r}, which is a file: a hub is a directory")
    return path


def _check_name(name) -> str:
    """``name`` in Unicode normal form NFC (names that differ only by normalization are one entry)."""
    if isinstance(name, str):
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise E.InvalidArgumentError(f"name={name!r} holds a lone surrogate, which UTF-8 cannot encode: "
                                         "decode the name properly") from None
        name = unicodedata.normalize("NFC", name)
    if not isinstance(name, str) or not name or len(name.encode("utf-8")) > _NAME_MAX or "\x00" in name:
        raise E.InvalidArgumentError(
            f"name={name!r} is not valid: give a non-empty str of at most {_NAME_MAX} UTF-8 bytes without NUL")
    return name


_META_SCALARS = (type(None), bool, int, float, str, bytes)
_META_MAX_DEPTH = 256


def _plain(v, depth: int = 0):
    """A metadata value as plain msgpack data: None, bool, int, float, str, bytes, and lists / dicts
    (str keys) of them; NumPy scalars become Python ones. Anything else (a NumPy array, which
    ``where=`` could not compare) raises CodecError."""
    if depth > _META_MAX_DEPTH:
        raise E.InvalidArgumentError(f"metadata is nested deeper than {_META_MAX_DEPTH} levels")
    if isinstance(v, np.generic) and not isinstance(v, (np.void, np.object_)) and v.dtype.kind in "biuf":
        v = v.item()
    if isinstance(v, str):
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            raise E.InvalidArgumentError(f"metadata string {v!r} holds a lone surrogate, which UTF-8 cannot "
                                         "encode") from None
        return v
    if isinstance(v, _META_SCALARS):
        return v
    if isinstance(v, (list, tuple)):
        return [_plain(x, depth + 1) for x in v]
    if isinstance(v, dict):
        if not all(isinstance(k, str) for k in v):
            raise E.InvalidArgumentError("metadata dicts must have str keys")
        return {_plain(k, depth + 1): _plain(x, depth + 1) for k, x in v.items()}
    raise E.CodecError(
        f"metadata value of type {type(v).__name__} is not accepted: use None, bool, int, float, str, bytes, "
        "and lists / dicts of them (convert NumPy arrays with .tolist())")


def _check_metadata(metadata) -> dict:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) for k in metadata):
        raise E.InvalidArgumentError(
            f"metadata must be a dict with str keys, got {type(metadata).__name__}: e.g. {{'task': 'em', 'accuracy': 0.9}}")
    metadata = _plain(metadata)
    from .storage import pack   # msgpack only: storage sits below

    try:
        pack(metadata)
    except Exception as e:
        raise E.CodecError(f"metadata cannot be stored: {e}: use str, numbers, bools, None, bytes, lists, dicts") from e
    return metadata


# Limits on what one request may ask for (issue 23): each is refused with LimitExceededError
# naming it, before anything is sized from the request.
MAX_K = 1_000_000          # k of search / explain / nearest, embedding_candidates
MAX_JSLSH_K = 64           # JS-LSH hashes per band (the hub default is 4)
MAX_JSLSH_L = 1024         # JS-LSH bands (the hub default is 32)
MAX_JSLSH_HASHES = 4096    # jslsh_k * jslsh_l: projections computed per histogram
MAX_QUERY_COLUMNS = 2048   # columns of a query: the MinHash stage compares each with every stored feature


def _check_count(name: str, v, limit: int) -> int:
    if not isinstance(v, (int, np.integer)) or isinstance(v, (bool, np.bool_)) or v < 1:
        raise E.InvalidArgumentError(f"{name}={v!r} is not valid: expected a positive integer")
    if v > limit:
        raise E.LimitExceededError(f"{name}={v!r} is over the limit of {limit}: ask for at most {limit}")
    return int(v)


def _width(data) -> int:
    """Columns of ``data`` when it says so cheaply (0 when it does not)."""
    if isinstance(data, dict):
        return len(data)
    cols = getattr(data, "columns", None)
    if cols is not None and hasattr(cols, "__len__"):
        return len(cols)
    shape = getattr(data, "shape", None)
    if isinstance(shape, tuple) and len(shape) == 2:
        return int(shape[1])
    return 0


def _check_query_columns(n: int) -> None:
    if n > MAX_QUERY_COLUMNS:
        raise E.LimitExceededError(
            f"the query has {n} columns, over the limit of {MAX_QUERY_COLUMNS} (each is compared with every "
            f"stored feature): query with the columns that matter, at most {MAX_QUERY_COLUMNS}")
