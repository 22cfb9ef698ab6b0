"""A file of named NumPy arrays with a msgpack header: how derived in-memory indexes are kept
beside a hub (engine/indexes.py), so that opening a large hub does not re-read every record.

Layout (little-endian)::

    MAGIC (8 bytes) | u64 header length | msgpack header | zero padding to 64 | arrays, each at a
    64-byte aligned offset from the data start (the first multiple of 64 after the header)

Header: ``{"v": ARRAY_FILE_FORMAT, "meta": {...caller's msgpack values...}, "arrays":
[[name, dtype.str, shape, offset, nbytes, crc32], ...]}``.

Nothing read is trusted: the magic, the format, every dtype (numeric and bool only, as the codec),
every shape (non-negative, its size matching ``nbytes``), every offset (aligned, inside the file,
after the header, not overlapping) and every array's CRC-32 are checked; any failure raises
``CorruptHubError`` naming the file (a caller treats the file as missing and rebuilds it). No Python-object
serialization. Files are written to a temporary name and ``os.replace``d, so a reader sees the old file
or the new one, never a half-written one.

Depends only on the standard library, numpy and msgpack (the storage layer's rule).
"""
from __future__ import annotations

import contextlib
import math
import mmap
import os
import threading
import zlib

import numpy as np

from .codec import ALLOWED_KINDS, pack, unpack
from .errors import CodecError, CorruptHubError

__all__ = ["ARRAY_FILE_FORMAT", "write_arrays", "read_arrays"]

ARRAY_FILE_FORMAT = 1
MAGIC = b"FSKARR\x00\x01"
_ALIGN = 64
_MAX_HEADER = 64 << 20           # a header this large is not one this module wrote
_CRC_BLOCK = 64 << 20            # CRC computed block by block (no second copy of a big array)


def _bytes(a: np.ndarray) -> np.ndarray:
    """The C-contiguous array's bytes as a flat uint8 view (empty and 0-d arrays included)."""
    return a.reshape(-1).view(np.uint8)


def _crc(a: np.ndarray) -> int:
    mv = memoryview(_bytes(a))
    c = 0
    for lo in range(0, len(mv), _CRC_BLOCK):
        c = zlib.crc32(mv[lo:lo + _CRC_BLOCK], c)
    return c


def _pad(n: int) -> int:
    return (-n) % _ALIGN


def write_arrays(path: str, meta: dict, arrays: dict[str, np.ndarray]) -> int:
    """Write ``arrays`` (name -> numeric / bool array) and ``meta`` (msgpack values) to ``path``
    atomically. Returns the bytes written. Raises OSError when the file cannot be written."""
    entries, offset, blobs = [], 0, []
    for name, a in arrays.items():
        a = np.ascontiguousarray(a)
        if a.dtype.kind not in ALLOWED_KINDS or a.dtype.fields is not None:
            raise CodecError(f"array {name!r} of dtype {a.dtype} cannot be stored in an array file")
        a = a.astype(a.dtype.newbyteorder("<"), copy=False) if a.dtype.byteorder == ">" else a
        entries.append([str(name), a.dtype.str, [int(s) for s in a.shape], offset, int(a.nbytes), _crc(a)])
        blobs.append(a)
        offset += a.nbytes + _pad(a.nbytes)
    header = pack({"v": ARRAY_FILE_FORMAT, "meta": meta, "arrays": entries})
    start = len(MAGIC) + 8 + len(header)
    start += _pad(start)                              # offsets count from here (the data start)
    tmp = f"{path}.tmp{os.getpid()}.{threading.get_ident()}"
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(MAGIC + len(header).to_bytes(8, "little") + header)
            f.write(b"\0" * (start - f.tell()))
            for e, a in zip(entries, blobs):
                f.seek(start + e[3])
                f.write(memoryview(_bytes(a)))
            total = start + offset
            f.truncate(total)                          # the padding after the last array (or an empty one)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return total


def read_arrays(path: str) -> tuple[dict, dict[str, np.ndarray]]:
    """``(meta, arrays)`` of a file written by ``write_arrays``, every part checked (module
    docstring). Raises FileNotFoundError when there is no file, CorruptHubError when it is not a
    valid array file.

    The file is memory-mapped copy-on-write and the arrays are views of the map: the page cache's
    pages are used as they are, where reading into new arrays zero-filled and copied every page
    (a 1.2 GB screen index: 3.9 s wall from the page cache, 0.5 s mapped and checksummed; bench/SUMMARY.md
    "Warm-up, tenth session"). The arrays are writable; a write copies its page privately and never
    reaches the file. Writers replace these files (``os.replace``), never change them in place, so a
    mapped file stays what was checked; like the LMDB file beside it, a hub's files must not be
    edited in place while a process has them open."""
    def bad(why: str) -> CorruptHubError:
        return CorruptHubError(f"array file {path} is not valid ({why}); it is derived data: delete it and "
                               f"it is rebuilt")

    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < len(MAGIC) + 8:
            raise bad("not an array file: wrong magic")
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)   # the map outlives the descriptor
    with contextlib.suppress(AttributeError, OSError):   # read ahead: every byte is checksummed below
        buf.madvise(mmap.MADV_WILLNEED)
    head = buf[:len(MAGIC) + 8]
    if head[:len(MAGIC)] != MAGIC:
        raise bad("not an array file: wrong magic")
    hlen = int.from_bytes(head[len(MAGIC):], "little")
    if hlen > min(_MAX_HEADER, size - len(head)):
        raise bad(f"header of {hlen} bytes in a file of {size}")
    try:
        header = unpack(buf[len(head):len(head) + hlen])
    except CodecError as e:
        raise bad(f"header: {e}") from None
    if not isinstance(header, dict) or header.get("v") != ARRAY_FILE_FORMAT:
        raise bad(f"format {header.get('v') if isinstance(header, dict) else '?'}, this fitsketch reads "
                  f"{ARRAY_FILE_FORMAT}")
    meta, entries = header.get("meta"), header.get("arrays")
    if not isinstance(meta, dict) or not isinstance(entries, list):
        raise bad("header without meta or arrays")
    data = len(head) + hlen
    data += _pad(data)
    out, end = {}, 0
    def order(e):   # by offset; anything malformed first, where the checks below refuse it
        return e[3] if isinstance(e, list) and len(e) == 6 and type(e[3]) is int else -1

    for e in sorted(entries, key=order):
        if not (isinstance(e, list) and len(e) == 6 and isinstance(e[0], str) and isinstance(e[1], str)
                and isinstance(e[2], list) and all(isinstance(v, int) for v in e[3:])
                and all(isinstance(s, int) and s >= 0 for s in e[2])):
            raise bad("malformed array entry")
        name, dts, shape, off, nbytes, crc = e
        try:
            dt = np.dtype(dts)
        except (TypeError, ValueError):
            raise bad(f"array {name!r}: dtype {dts!r}") from None
        if dt.kind not in ALLOWED_KINDS or dt.fields is not None or dt.subdtype is not None:
            raise bad(f"array {name!r}: dtype {dts!r} is not numeric")
        if name in out or math.prod(shape) * dt.itemsize != nbytes or off % _ALIGN \
                or off < end or data + off + nbytes > size:
            raise bad(f"array {name!r}: shape {shape}, offset {off}, {nbytes} bytes do not fit the file")
        if nbytes:
            a = np.frombuffer(buf, dtype=dt, count=nbytes // dt.itemsize, offset=data + off).reshape(shape)
        else:
            a = np.empty(shape, dtype=dt)
        if _crc(a) != crc:
            raise bad(f"array {name!r} fails its checksum")
        out[name] = a
        end = off + nbytes
    if size != data + end + _pad(end):
        raise bad(f"{size} bytes, the header describes {data + end + _pad(end)}")
    return meta, out
