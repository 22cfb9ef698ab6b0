"""msgpack codec for hub values: ``pack(obj) -> bytes`` and ``unpack(data) -> obj``.

Wire/disk format (msgpack only; no Python-object serialization):

* plain msgpack with ``use_bin_type=True`` (str and bytes stay distinct), decoded with
  ``raw=False, strict_map_key=False`` (int map keys are allowed);
* a NumPy array or NumPy scalar travels as ``ExtType(1, payload)`` where ``payload`` is itself
  msgpack ``[dtype.str, shape, raw]``: ``dtype.str`` keeps the byte order (``"<f4"``), ``shape``
  is a list of ints and ``raw`` the C-contiguous bytes. Only numeric and bool dtypes (kinds
  ``b i u f c``) are accepted; object, string, void/structured and datetime dtypes raise
  ``CodecError``.

Round-trip rules (what comes back is not always the same Python type):

* tuples come back as lists; dict/list/str/bytes/int/float subclasses come back as the base type;
  ``bytearray`` and ``memoryview`` come back as ``bytes``;
* arrays come back as writable, C-contiguous copies with the same dtype (byte order included)
  and shape; NumPy scalars come back as 0-d arrays of their dtype (``a[()]`` gives the scalar).

Every failure, in either direction, is raised as ``CodecError``: unsupported types, ints outside
the 64-bit range, nesting deeper than msgpack's limits, truncated or trailing bytes, malformed
array payloads.
"""
from __future__ import annotations

import logging
import math
from typing import Any

import msgpack
import numpy as np

from .errors import CodecError

log = logging.getLogger(__name__)

__all__ = ["pack", "unpack", "EXT_NDARRAY", "ALLOWED_KINDS"]

EXT_NDARRAY = 1  # msgpack ExtType code of a NumPy array / scalar
ALLOWED_KINDS = frozenset("biufc")  # bool, signed, unsigned, float, complex
_ACCEPTED = (
    "None, bool, int (64-bit), float, str, bytes, list/tuple, dict, and NumPy arrays or "
    "scalars of bool/int/uint/float/complex dtype"
)


def _check_dtype(dtype: np.dtype) -> None:
    if dtype.kind not in ALLOWED_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise CodecError(
            f"cannot store a NumPy array of dtype {dtype} (kind {dtype.kind!r}); only "
            f"bool/int/uint/float/complex dtypes are accepted: convert it first, e.g. "
            f"a.astype(np.float32), or store strings as a list of str"
        )


def _encode_array(a: np.ndarray) -> msgpack.ExtType:
    _check_dtype(a.dtype)
    payload = msgpack.packb(
        [a.dtype.str, [int(n) for n in a.shape], a.tobytes(order="C")], use_bin_type=True
    )
    return msgpack.ExtType(EXT_NDARRAY, payload)


def _default(obj: Any) -> Any:
    """Called by the packer (strict_types=True) for everything that is not an exact base type."""
    if isinstance(obj, np.ndarray):
        return _encode_array(obj)
    if isinstance(obj, np.generic):
        return _encode_array(np.asarray(obj))
    if isinstance(obj, tuple):
        return list(obj)
    if isinstance(obj, bool):  # bool subclasses cannot exist, kept for clarity
        return bool(obj)
    if isinstance(obj, int):
        if type(obj) is int:
            raise CodecError(
                f"integer {obj} is outside the 64-bit range msgpack can store; "
                f"store it as a str or split it"
            )
        return int(obj)
    if isinstance(obj, float):
        return float(obj)
    if isinstance(obj, str):
        return str(obj)
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return bytes(obj)
    if isinstance(obj, dict):
        return dict(obj)
    if isinstance(obj, list):
        return list(obj)
    raise CodecError(f"cannot store a value of type {type(obj).__qualname__}; accepted: {_ACCEPTED}")


def pack(obj: Any) -> bytes:
    """Encode ``obj`` to msgpack bytes; raises ``CodecError`` for anything not storable."""
    try:
        return msgpack.packb(obj, use_bin_type=True, strict_types=True, default=_default)
    except CodecError:
        raise
    except (TypeError, ValueError, OverflowError) as e:  # ValueError: nesting too deep
        raise CodecError(
            f"cannot encode value of type {type(obj).__qualname__}: {e}; accepted: {_ACCEPTED}"
        ) from e


_DTYPES: dict[str, np.dtype] = {}     # dtype strings already parsed and accepted


def _decode_array(payload: bytes) -> np.ndarray:
    try:
        parts = msgpack.unpackb(payload, raw=False, use_list=True)
    except (ValueError, TypeError, msgpack.ExtraData) as e:
        raise CodecError(f"malformed array payload: {e}") from e
    if not (isinstance(parts, list) and len(parts) == 3):
        raise CodecError("malformed array payload: expected [dtype, shape, bytes]")
    dstr, shape, raw = parts
    if not isinstance(dstr, str) or not isinstance(raw, bytes) or not isinstance(shape, list):
        raise CodecError("malformed array payload: expected [str dtype, list shape, bytes]")
    dtype = _DTYPES.get(dstr)
    if dtype is None:
        try:
            dtype = np.dtype(dstr)
        except TypeError as e:
            raise CodecError(f"malformed array payload: unknown dtype {dstr!r}") from e
        _check_dtype(dtype)
        if len(_DTYPES) < 256:          # the few dtypes a hub uses; bounded against hostile input
            _DTYPES[dstr] = dtype
    if len(shape) == 1 and type(shape[0]) is int and shape[0] >= 0:      # the common case, checked as below
        count = shape[0]
    elif not all(type(n) is int and n >= 0 for n in shape) or len(shape) > 64:
        raise CodecError(f"malformed array payload: bad shape {shape!r}")
    else:
        count = math.prod(shape)
    if count * dtype.itemsize != len(raw):
        raise CodecError(
            f"malformed array payload: shape {shape} of {dstr} needs "
            f"{count * dtype.itemsize} bytes, got {len(raw)}"
        )
    # a writable copy: frombuffer over a bytearray (3x faster than frombuffer(...).copy() on the
    # small arrays of a record); reshape only when not 1-D
    a = np.frombuffer(bytearray(raw), dtype=dtype, count=count)
    return a if len(shape) == 1 else a.reshape(shape)


def _ext_hook(code: int, data: bytes) -> Any:
    if code == EXT_NDARRAY:
        return _decode_array(data)
    raise CodecError(f"unknown msgpack extension type {code}; this fitsketch knows only {EXT_NDARRAY}")


def unpack(data: bytes) -> Any:
    """Decode bytes written by ``pack``; raises ``CodecError`` on any malformed input."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CodecError(f"unpack expects bytes, got {type(data).__qualname__}")
    try:
        return msgpack.unpackb(
            data, raw=False, strict_map_key=False, use_list=True, ext_hook=_ext_hook
        )
    except CodecError:
        raise
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.UnpackException) as e:
        # ValueError covers FormatError, StackError, truncated input and bad UTF-8
        raise CodecError(f"cannot decode {len(data)} bytes: {type(e).__name__}: {e}") from e
