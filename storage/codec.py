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

Compressed arrays (hub records only): ``pack(obj, compress=True)`` writes each NumPy array of
``MIN_COMPRESS`` .. ``MAX_UNPACKED`` bytes as ``ExtType(2, payload)`` when that is smaller, where
``payload`` is msgpack ``[dtype.str, shape, filter, codec, raw]``: ``raw`` is the C-contiguous
bytes after ``filter`` (0 none; 1 byte shuffle: byte i of every element, then byte i + 1, ...; 2
integer delta in the array's own dtype, wrapping, then byte shuffle), compressed by ``codec`` (1
zstd -- through the ``zstandard`` package where installed, else pyarrow; any zstd frame decodes, so
neither library's exact frames are part of the format --, 2 zlib). Lossless: the same dtype, shape and bytes come back. Only
``unpack(data, stored=True)`` (a hub's records, storage/txn.py) accepts them: data from a socket
or a file may not expand by a compression ratio. The decompressed size is checked against the
shape (at most ``MAX_UNPACKED`` bytes) before anything is decompressed.

Every failure, in either direction, is raised as ``CodecError``: unsupported types, ints outside
the 64-bit range, nesting deeper than msgpack's limits, truncated or trailing bytes, malformed
array payloads.
"""
from __future__ import annotations

import logging
import math
import threading
from typing import Any

import msgpack
import numpy as np

from .errors import CodecError

log = logging.getLogger(__name__)

__all__ = ["pack", "unpack", "compress", "decompress", "prefer", "EXT_NDARRAY", "EXT_PACKED", "ALLOWED_KINDS"]

EXT_NDARRAY = 1  # msgpack ExtType code of a NumPy array / scalar
EXT_PACKED = 2   # msgpack ExtType code of a filtered, compressed NumPy array (pack(compress=True))
MIN_COMPRESS = 512          # smaller arrays are stored as they are (each decompression costs ~5 us)
MAX_UNPACKED = 1 << 28      # larger arrays are stored as they are; a larger claimed size is refused
ZSTD_LEVEL = 1             # level 3 is ~1.5x the CPU for ~3% fewer bytes on hub records
_FILTERS = (0, 1, 2)        # none, byte shuffle, integer delta + byte shuffle
_ZSTD, _ZLIB = 1, 2
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


def _zstd(level: int | None = None):
    """pyarrow's zstd codec at ``level`` (``ZSTD_LEVEL`` by default; pyarrow is a dependency), or
    None where this build lacks it. The level is not recorded: any level decompresses alike."""
    level = ZSTD_LEVEL if level is None else level
    if level not in _ZSTD_CODEC:
        try:
            import pyarrow as pa

            _ZSTD_CODEC[level] = pa.Codec("zstd", compression_level=level) if pa.Codec.is_available("zstd") else False
        except ImportError:   # pragma: no cover - pyarrow is a dependency
            _ZSTD_CODEC[level] = False
    return _ZSTD_CODEC[level] or None


_ZSTD_CODEC: dict = {}   # zstd level -> pyarrow codec (False where this build lacks zstd)


def _shuffled(a: np.ndarray) -> np.ndarray:
    """Byte i of every element of C-contiguous ``a``, for i = 0 .. itemsize - 1, as a uint8 array (a
    plane at a time: ~8x faster than a transposed copy for 2-byte elements; no bytes copy made)."""
    if a.itemsize == 1:
        return a
    u = a.reshape(-1).view(np.uint8)
    out = np.empty((a.itemsize, len(u) // a.itemsize), dtype=np.uint8)
    for i in range(a.itemsize):
        out[i] = u[i::a.itemsize]
    return out


def _unshuffle(b: bytes, itemsize: int) -> bytearray:
    if itemsize == 1:
        return bytearray(b)
    planes = np.frombuffer(b, dtype=np.uint8).reshape(itemsize, -1)
    out = np.empty(len(b), dtype=np.uint8)
    for i in range(itemsize):
        out[i::itemsize] = planes[i]
    return bytearray(out.data)


def _filtered(a: np.ndarray, flt: int) -> np.ndarray:
    """The bytes ``flt`` makes of ``a`` (C order), as a C-contiguous buffer that the compressors read
    in place (``a`` itself for filter 0 when it is C-contiguous: no copy of the bytes)."""
    a = np.ascontiguousarray(a)
    if flt == 2:
        flat = a.reshape(-1)
        d = np.empty_like(flat)
        d[:1] = flat[:1]
        np.subtract(flat[1:], flat[:-1], out=d[1:])          # wraps in the dtype: exact inverse by cumsum
        return _shuffled(d)
    return a if flt == 0 else _shuffled(a)


def _unfiltered(raw: bytes, dtype: np.dtype, count: int, flt: int) -> np.ndarray:
    if flt == 0:
        return np.frombuffer(bytearray(raw), dtype=dtype, count=count)
    a = np.frombuffer(_unshuffle(raw, dtype.itemsize), dtype=dtype, count=count)
    if flt == 2:
        if dtype.itemsize < 8:   # summed in 64 bits and cut to the dtype: the same wrapped sums, faster
            a = np.cumsum(a, dtype=np.int64).astype(dtype)
        else:
            np.cumsum(a, dtype=dtype, out=a)
    return a


try:   # optional: the same zstd frames as pyarrow's codec (both call ZSTD_compress's parameters), faster
    import zstandard as _zstandard
except ImportError:   # pragma: no cover - then pyarrow's codec
    _zstandard = None
USE_ZSTANDARD = True              # False: pyarrow's codec only (tests/test_codec_zstd.py compares the two)
_CONTEXTS = threading.local()     # per thread: zstd level -> zstandard.ZstdCompressor (not shareable by threads)


def _context(level: int):
    """This thread's ``zstandard`` compressor at ``level``, made once: pyarrow's codec creates and
    frees a zstd context on every call (~10 us at level 1, a third of compressing a 5 KB array),
    this one keeps it. It writes the frame pyarrow writes (content size, no checksum, no
    dictionary) and releases the GIL while it compresses (engine/parts.py prepares in threads)."""
    cs = getattr(_CONTEXTS, "by_level", None)
    if cs is None:
        cs = _CONTEXTS.by_level = {}
    c = cs.get(level)
    if c is None:   # None where pyarrow has no zstd: what it cannot read back (``_inflate``) is not written
        c = cs[level] = _zstd(level) and _zstandard.ZstdCompressor(
            level=level, write_content_size=True, write_checksum=False, write_dict_id=False)
    return c or None


def _compress(b, level: int | None = None) -> tuple[int, bytes]:
    """``b`` (bytes or a C-contiguous buffer) compressed: ``(codec, bytes)``."""
    c = _context(ZSTD_LEVEL if level is None else level) if _zstandard is not None and USE_ZSTANDARD else None
    if c is not None:
        return _ZSTD, c.compress(b)
    z = _ZSTD_CODEC.get(ZSTD_LEVEL if level is None else level)
    if z is None:
        z = _zstd(level)
    if z:
        return _ZSTD, z.compress(b, asbytes=True)
    import zlib

    return _ZLIB, zlib.compress(b, 6 if level is None or level <= ZSTD_LEVEL else 9)


def compress(b, level: int | None = None) -> tuple[int, bytes]:
    """``b`` (bytes or a C-contiguous buffer) compressed as the compressed arrays are: ``(codec,
    bytes)``, codec 1 zstd (zstandard or pyarrow) or 2 zlib where neither has zstd. For records that
    lay out their own bytes (engine/band_blocks.py); read back by ``decompress``."""
    return _compress(b, level)


def decompress(raw, codec: int, size: int) -> bytes:
    """The ``size`` bytes ``compress`` made ``raw`` of with ``codec``; ``CodecError`` when ``raw`` is
    not that (malformed, another size, an unknown codec, or ``size`` over ``MAX_UNPACKED``)."""
    if codec not in (_ZSTD, _ZLIB) or not 0 <= size <= MAX_UNPACKED:
        raise CodecError(f"malformed compressed payload: codec {codec}, {size} bytes (codecs {_ZSTD}, {_ZLIB}; "
                         f"at most {MAX_UNPACKED} bytes)")
    return _inflate(raw, codec, size, "malformed compressed payload", f"{size} bytes expected",
                    f"more than its {size} bytes")


def _inflate(raw, codec: int, size: int, what: str, need: str, more: str) -> bytes:
    """``decompress`` without the argument checks; ``CodecError`` messages ``what: need, decompressed
    to n`` / ``what: more`` (the compressed arrays' words, ``_decode_packed``, as they always read)."""
    try:
        if codec == _ZSTD:
            z = _zstd()
            if z is None:
                raise CodecError("this record is zstd-compressed and this pyarrow build has no zstd: "
                                 "install a pyarrow wheel from PyPI")
            out = z.decompress(raw, decompressed_size=size, asbytes=True)
        else:
            import zlib

            d = zlib.decompressobj()
            out = d.decompress(raw, max(size, 1))   # max_length 0 would mean "no limit"
            if d.unconsumed_tail or not d.eof:
                raise CodecError(f"{what}: {more}")
    except CodecError:
        raise
    except Exception as e:          # pyarrow raises OSError / ArrowException, zlib zlib.error
        raise CodecError(f"{what}: {type(e).__name__}: {e}") from e
    if len(out) != size:
        raise CodecError(f"{what}: {need}, decompressed to {len(out)}")
    return out


def _tries(dtype: np.dtype) -> tuple:
    """The filters ``pack(compress=True)`` tries on an array of ``dtype``, keeping the smaller: the bytes
    as they are (repeated rows: signatures of merged or alike columns), and integer delta + shuffle
    (sorted codes, positions, small counts) or, for floats, the shuffle alone; the shuffle alone on
    integers came within ~1% of the better of these on hub records."""
    return (0, 2) if dtype.kind in "iu" else (0, 1) if dtype.itemsize > 1 else (0,)


def prefer(memo: dict, a: np.ndarray, flt: int) -> None:
    """Have a ``pack(obj, compress=True, filters=memo)`` of an ``obj`` holding array ``a`` use filter
    ``flt`` for it without trying the others (one compression instead of two): for a record field whose
    best filter is known (engine/parts.py ``fit_pack``'s hints). Ignored where ``flt`` is not one that
    pack would try on ``a``'s dtype. ``a`` must not change before the pack."""
    if isinstance(a, np.ndarray) and flt in _tries(a.dtype):
        memo[id(a)] = (a, flt, None, (a.dtype, a.shape))


def _encode_packed(a: np.ndarray, level: int | None = None, memo: dict | None = None):
    """``a`` as ``ExtType(2)`` with the filter that compresses it best, or as ``ExtType(1)`` when
    none makes it smaller (or it is outside ``MIN_COMPRESS`` .. ``MAX_UNPACKED`` bytes). ``memo``
    (``pack(filters=)``): the filter chosen for this array object by an earlier pack with the same
    memo, or given by ``prefer``, is the only one tried (on the filtered bytes that pack kept); the chosen one is recorded,
    ``id(a) -> (a, filter, filtered bytes, (dtype, shape))``. The memo serves packs of arrays whose
    values do not change between them (``fit_pack`` packs one record twice in a row)."""
    _check_dtype(a.dtype)
    if not MIN_COMPRESS <= a.nbytes <= MAX_UNPACKED:
        return _encode_array(a)
    orig, a = a, np.ascontiguousarray(a)
    filters = _tries(a.dtype)
    seen = None if memo is None else memo.get(id(orig))
    if seen is not None and (seen[0] is not orig or seen[3] != (orig.dtype, orig.shape)):
        seen = None     # another object under this id, or this one re-typed / reshaped in place: not its bytes
    if seen is not None:
        filters = (seen[1],)
    best = None
    for flt in filters:
        # the filtered bytes the first pack kept (not computed again for a pack at another level; None: a
        # filter given by ``prefer``, not computed yet)
        buf = seen[2] if seen is not None and seen[2] is not None else _filtered(a, flt)
        codec, z = _compress(buf, level)
        if best is None or len(z) < len(best[2]):
            best = (flt, codec, z, buf)
    if memo is not None:
        # the array held (its id stays its own while the memo lives); its values must not change between packs
        memo[id(orig)] = (orig, best[0], best[3], (orig.dtype, orig.shape))
    if len(best[2]) + 8 >= a.nbytes:
        return _encode_array(a)
    payload = msgpack.packb([a.dtype.str, [int(n) for n in a.shape], best[0], best[1], best[2]], use_bin_type=True)
    return msgpack.ExtType(EXT_PACKED, payload)


def _default_packed(obj: Any, level: int | None = None, memo: dict | None = None) -> Any:
    if isinstance(obj, np.ndarray):
        return _encode_packed(obj, level, memo)
    if isinstance(obj, np.generic):
        return _encode_array(np.asarray(obj))
    return _default(obj)


def pack(obj: Any, compress: bool = False, level: int | None = None, filters: dict | None = None) -> bytes:
    """Encode ``obj`` to msgpack bytes; raises ``CodecError`` for anything not storable.
    ``compress=True`` (hub records; read back only by ``unpack(stored=True)``) compresses the
    arrays that it makes smaller, losslessly (the module's docstring), with zstd at ``level``
    (``ZSTD_LEVEL`` by default; 1 .. 22, higher is smaller and slower; not recorded).
    ``filters``: a dict shared by packs of the same ``obj`` (engine/parts.py ``fit_pack``): the
    first records each array's best filter, a later one tries only that filter (half the
    compressions; at a high level those are most of the time)."""
    if level is not None and not (type(level) is int and 1 <= level <= 22):
        raise CodecError(f"zstd level {level!r} is outside 1 .. 22")
    default = _default
    if compress:
        default = (_default_packed if level is None and filters is None
                   else (lambda o: _default_packed(o, level, filters)))
    try:
        return msgpack.packb(obj, use_bin_type=True, strict_types=True, default=default)
    except CodecError:
        raise
    except (TypeError, ValueError, OverflowError) as e:  # ValueError: nesting too deep
        raise CodecError(
            f"cannot encode value of type {type(obj).__qualname__}: {e}; accepted: {_ACCEPTED}"
        ) from e


_DTYPES: dict[str, np.dtype] = {}     # dtype strings already parsed and accepted


def _decode_array(payload: bytes, packed: bool = False, budget: list | None = None) -> np.ndarray:
    try:
        parts = msgpack.unpackb(payload, raw=False, use_list=True)
    except (ValueError, TypeError, msgpack.ExtraData) as e:
        raise CodecError(f"malformed array payload: {e}") from e
    if packed:
        if not (isinstance(parts, list) and len(parts) == 5):
            raise CodecError("malformed compressed array payload: expected [dtype, shape, filter, codec, bytes]")
        dstr, shape, flt, codec, raw = parts
        if flt not in _FILTERS or codec not in (_ZSTD, _ZLIB) or type(flt) is not int or type(codec) is not int:
            raise CodecError(f"malformed compressed array payload: unknown filter {flt!r} or codec {codec!r}")
    else:
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
    if packed:
        if budget is not None:
            need = count * dtype.itemsize
            if need > budget[0]:
                raise CodecError(f"malformed compressed record: its arrays claim more than "
                                 f"max({MAX_UNPACKED}, {RECORD_EXPANSION} x the record's bytes) decoded bytes")
            budget[0] -= need
        return _decode_packed(raw, dtype, shape, count, flt, codec)
    if count * dtype.itemsize != len(raw):
        raise CodecError(
            f"malformed array payload: shape {shape} of {dstr} needs "
            f"{count * dtype.itemsize} bytes, got {len(raw)}"
        )
    # a writable copy: frombuffer over a bytearray (3x faster than frombuffer(...).copy() on the
    # small arrays of a record); reshape only when not 1-D
    a = np.frombuffer(bytearray(raw), dtype=dtype, count=count)
    return a if len(shape) == 1 else a.reshape(shape)


def _decode_packed(raw: bytes, dtype: np.dtype, shape: list, count: int, flt: int, codec: int) -> np.ndarray:
    size = count * dtype.itemsize
    if size > MAX_UNPACKED or (flt == 2 and dtype.kind not in "iu"):
        raise CodecError(f"malformed compressed array payload: shape {shape} of {dtype.str} with filter {flt} "
                         f"(at most {MAX_UNPACKED} bytes, delta only on integers)")
    out = _inflate(raw, codec, size, "malformed compressed array payload",
                   f"shape {shape} of {dtype.str} needs {size} bytes", f"more than the {size} bytes of its shape")
    a = _unfiltered(out, dtype, count, flt)
    return a if len(shape) == 1 else a.reshape(shape)


def _ext_hook(code: int, data: bytes) -> Any:
    if code == EXT_NDARRAY:
        return _decode_array(data)
    raise CodecError(f"unknown msgpack extension type {code}; this fitsketch knows only {EXT_NDARRAY} here"
                     + (" (compressed arrays are read from a hub's records only)" if code == EXT_PACKED else ""))


RECORD_EXPANSION = 64   # a record's compressed arrays decode to at most max(MAX_UNPACKED, this x its bytes)


def _stored_hook(n_bytes: int):
    """The ext hook of one stored record: each compressed array is charged against the record's
    budget before it is decompressed, so no record (however many arrays it claims) decodes to
    more than max(MAX_UNPACKED, RECORD_EXPANSION x its own size)."""
    left = [max(MAX_UNPACKED, RECORD_EXPANSION * n_bytes)]

    def hook(code: int, data: bytes) -> Any:
        if code == EXT_PACKED:
            return _decode_array(data, packed=True, budget=left)
        return _ext_hook(code, data)

    return hook


def unpack(data: bytes, stored: bool = False) -> Any:
    """Decode bytes written by ``pack``; raises ``CodecError`` on any malformed input.
    ``stored=True`` (a hub's records) also reads the compressed arrays of ``pack(compress=True)``."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CodecError(f"unpack expects bytes, got {type(data).__qualname__}")
    try:
        return msgpack.unpackb(
            data, raw=False, strict_map_key=False, use_list=True,
            ext_hook=_stored_hook(len(data)) if stored else _ext_hook
        )
    except CodecError:
        raise
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.UnpackException) as e:
        # ValueError covers FormatError, StackError, truncated input and bad UTF-8
        raise CodecError(f"cannot decode {len(data)} bytes: {type(e).__name__}: {e}") from e
