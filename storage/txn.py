"""``Txn``: typed access to one LMDB transaction of a hub, and the u64 key helpers.

A ``Txn`` is handed out by ``HubStore.read()`` (read-only) and ``HubStore.transact(fn)`` (write).
Databases are named by string (one of ``DBS``); keys are ``bytes`` (1..511 bytes); values are
msgpack via ``codec`` except in the dupsort database ``bands``, whose values are fixed-width
records (8 bytes, or 4 in hubs created at format 4) handled by ``put_dup / get_dups / get_dups_many / delete_dup``. A ``Txn`` belongs to one
thread and is invalid once its ``read()`` block or ``transact`` call ends; iterators returned by
``items`` / ``keys`` must be consumed before then.
"""
from __future__ import annotations

import logging
from typing import Any, Iterator

import lmdb
import numpy as np

from .codec import pack, unpack
from .errors import CodecError, CorruptHubError, SchemaError, StorageError

log = logging.getLogger(__name__)

__all__ = ["Txn", "DBS", "DUPSORT_DBS", "DUP_SIZE", "u64", "from_u64"]

# Named databases of a hub, all opened when the store opens.
DBS = (
    "meta",        # str key -> value: format, created, engine parameters (seeds, sketch config)
    "entries",     # u64 entry id -> entry record
    "names",       # utf-8 name -> u64 entry id
    "signatures",  # u64 entry id -> feature signatures
    "bands",       # LSH band key -> 4- or 8-byte records (dupsort, dupfixed; engine/parts.py posting_bytes)
    "histograms",  # partition histograms
    "embeddings",  # embeddings
    "weights",     # autoencoder weights
    "probes",      # probe descriptors
    "extra",       # anything else
    "profiles",    # u64 entry id -> profile record (engine/profiles.py; format >= 5, before: extra b"p" + id)
    "profile_keys",  # u64 entry id -> stored JS-LSH band keys (engine/profiles.py; format >= 5, before: extra b"k" + id)
    "band_blocks",   # u64 last band key of the block -> compressed block of band postings (engine/band_blocks.py; format >= 6)
)
# databases a hub of an older format lacks until its upgrade (a writable open creates them), with
# the hub format that brought each: a read-only open of such a hub reads them as empty
LATER_DBS = {"profiles": 5, "profile_keys": 5, "band_blocks": 6}
DUPSORT_DBS = frozenset({"bands"})
_DUPS_CHUNK = 1 << 14   # pairs put_dups converts and writes at a time
DUP_SIZE = 8  # bytes per value in a dupsort database
MAX_KEY = 511  # LMDB's default maximum key size


def u64(n: int) -> bytes:
    """Big-endian 8-byte key for ``0 <= n < 2**64``; byte order equals numeric order."""
    if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n < 1 << 64:
        raise ValueError(f"u64 key must be an int in [0, 2**64), got {n!r}")
    return n.to_bytes(8, "big")


def from_u64(b: bytes) -> int:
    """Inverse of ``u64``."""
    if len(b) != 8:
        raise ValueError(f"u64 key must be 8 bytes, got {len(b)}: {bytes(b)!r}")
    return int.from_bytes(b, "big")


def _check_key(key: bytes) -> bytes:
    if not isinstance(key, bytes):
        raise TypeError(f"keys are bytes, got {type(key).__qualname__}: use u64(n) or s.encode()")
    if not 0 < len(key) <= MAX_KEY:
        raise ValueError(f"key length must be 1..{MAX_KEY} bytes, got {len(key)}")
    return key


class Txn:
    """One LMDB transaction over the hub's named databases (see module docstring)."""

    __slots__ = ("_txn", "_dbs", "_write", "_path", "map_full")

    def __init__(self, txn: lmdb.Transaction, dbs: dict, write: bool, path: str):
        self._txn = txn
        self._dbs = dbs
        self._write = write
        self._path = path
        self.map_full = False  # set when a write hit MapFullError; transact() then grows + retries

    # -- internals ----------------------------------------------------------------------------
    def _db(self, db: str, *, dup: bool | None = None):
        try:
            handle = self._dbs[db]
        except KeyError:
            if db in LATER_DBS:
                return None       # a read-only open of an older hub: the database is empty
            raise ValueError(f"unknown database {db!r}; databases are {DBS}") from None
        if dup is True and db not in DUPSORT_DBS:
            raise ValueError(f"{db!r} is not a dupsort database; use get/put (dupsort: {sorted(DUPSORT_DBS)})")
        if dup is False and db in DUPSORT_DBS:
            raise ValueError(f"{db!r} holds 8-byte duplicates; use put_dup/get_dups/delete_dup")
        return handle

    def _wdb(self, db: str, *, dup: bool | None = None):
        """The handle of ``db`` for a write: a database this hub lacks (``LATER_DBS`` of an older hub
        opened read-only) raises instead of passing ``db=None``, LMDB's unnamed main database."""
        h = self._db(db, dup=dup)
        if h is None:
            self._writable()
            raise SchemaError(f"hub at {self._path} has no database {db!r} (a hub of format < {LATER_DBS[db]} "
                              f"opened read-only): open it with readonly=False to upgrade it before writing")
        return h

    def _writable(self) -> None:
        if not self._write:
            raise StorageError(
                f"hub at {self._path}: this is a read-only transaction; write inside store.transact(fn)"
            )

    def _mut(self, op, *args, **kw):
        self._writable()
        try:
            return op(*args, **kw)
        except lmdb.MapFullError:
            self.map_full = True
            raise

    def _decode(self, db: str, key: bytes, raw: bytes) -> Any:
        try:
            return unpack(raw, stored=True)
        except CodecError as e:
            raise CorruptHubError(
                f"hub at {self._path}: record {key!r} in database {db!r} cannot be decoded ({e})"
            ) from e

    # -- values -------------------------------------------------------------------------------
    def get_raw(self, db: str, key: bytes) -> bytes | None:
        h = self._db(db, dup=False)
        return None if h is None else self._txn.get(_check_key(key), db=h)

    def put_raw(self, db: str, key: bytes, value: bytes, overwrite: bool = True, append: bool = False) -> bool:
        """Store ``value`` as-is; returns False if ``overwrite=False`` and the key exists. ``append``:
        a key above every key of ``db`` is appended (LMDB ``MDB_APPEND``: a full page is left full
        instead of split in half, so records keyed by increasing ids fill their pages); any other
        key is stored as without it."""
        if not isinstance(value, bytes):
            raise TypeError(f"put_raw stores bytes, got {type(value).__qualname__}")
        h = self._wdb(db, dup=False)
        if append and self._mut(self._txn.put, _check_key(key), value, db=h, append=True):
            return True
        return self._mut(self._txn.put, _check_key(key), value, db=h, overwrite=overwrite)

    def get(self, db: str, key: bytes) -> Any:
        """Decoded value, or None if absent (CorruptHubError if the stored bytes are bad)."""
        raw = self.get_raw(db, key)
        return None if raw is None else self._decode(db, key, raw)

    def put(self, db: str, key: bytes, obj: Any, overwrite: bool = True) -> bool:
        """Encode and store ``obj``; returns False if ``overwrite=False`` and the key exists."""
        return self.put_raw(db, key, pack(obj), overwrite=overwrite)

    def delete(self, db: str, key: bytes) -> bool:
        """Delete ``key`` (in ``bands``: all its duplicates); returns whether it existed."""
        return self._mut(self._txn.delete, _check_key(key), db=self._wdb(db))

    def exists(self, db: str, key: bytes) -> bool:
        if self._db(db) is None:
            return False
        with self._txn.cursor(db=self._db(db)) as cur:
            return cur.set_key(_check_key(key))

    def first_from(self, db: str, key: bytes) -> tuple[bytes, bytes] | None:
        """The first (key, raw value) of ``db`` whose key is ``>= key`` (LMDB ``set_range``), or None."""
        h = self._db(db, dup=False)
        if h is None:
            return None
        with self._txn.cursor(db=h) as cur:
            return cur.item() if cur.set_range(_check_key(key)) else None

    def last(self, db: str) -> tuple[bytes, bytes] | None:
        """The last (key, raw value) of ``db``, or None when it is empty."""
        h = self._db(db, dup=False)
        if h is None:
            return None
        with self._txn.cursor(db=h) as cur:
            return cur.item() if cur.last() else None

    def count(self, db: str) -> int:
        """Number of records (in ``bands``: of key/value pairs, duplicates included)."""
        h = self._db(db)
        return 0 if h is None else self._txn.stat(h)["entries"]

    def _scan(self, db: str, prefix: bytes, nodup: bool, start: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        if not isinstance(prefix, bytes) or not isinstance(start, bytes):
            raise TypeError(f"prefix and start must be bytes, got {type(prefix).__qualname__}, {type(start).__qualname__}")
        first = max(prefix, start)
        if self._db(db) is None:
            return
        with self._txn.cursor(db=self._db(db)) as cur:
            ok = cur.set_range(first) if first else cur.first()
            if not ok:
                return
            it = cur.iternext_nodup(keys=True, values=True) if nodup else cur.iternext()
            for key, raw in it:
                if not key.startswith(prefix):
                    return
                yield key, raw

    def items(self, db: str, prefix: bytes = b"", start: bytes = b"") -> Iterator[tuple[bytes, Any]]:
        """(key, value) in key order for keys starting with ``prefix`` (and ``>= start``, if given).

        In ``bands`` values are the raw 4- or 8-byte records, one pair per duplicate.
        """
        if db in DUPSORT_DBS:
            yield from self._scan(db, prefix, nodup=False, start=start)
            return
        for key, raw in self._scan(db, prefix, nodup=False, start=start):
            yield key, self._decode(db, key, raw)

    def keys(self, db: str, prefix: bytes = b"", start: bytes = b"") -> Iterator[bytes]:
        """Keys in order (each once, also in ``bands``), starting with ``prefix`` (and ``>= start``, if given)."""
        for key, _ in self._scan(db, prefix, nodup=db in DUPSORT_DBS, start=start):
            yield key

    # -- dupsort (bands) ----------------------------------------------------------------------
    def put_dup(self, db: str, key: bytes, value8: bytes) -> bool:
        """Add the 8-byte record ``value8`` under ``key``; False if that pair already exists."""
        h = self._db(db, dup=True)
        if not isinstance(value8, bytes) or len(value8) != DUP_SIZE:
            raise ValueError(f"{db!r} values are {DUP_SIZE}-byte bytes (use u64(n)), got {value8!r}")
        return self._mut(self._txn.put, _check_key(key), value8, db=h, dupdata=False)  # NODUPDATA: False if pair exists

    def put_dups(self, db: str, keys, values, width: int = DUP_SIZE) -> int:
        """``put_dup(db, u64(keys[i]), u64(values[i]))`` for every i, in order, in C loops of
        ``_DUPS_CHUNK`` pairs (a million pairs' bytes objects at once cost ~25% more): ``keys`` and
        ``values`` are equal-length arrays of integers in [0, 2**64). Returns how many pairs were new.
        ``width`` 4: each value as 4 big-endian bytes (values < 2**32; the band postings of hubs
        created at format 4, engine/parts.py ``Bands``); one key's values are all of one width."""
        h = self._db(db, dup=True)
        keys = np.asarray(keys)
        values = np.asarray(values)
        if keys.shape != values.shape or keys.ndim != 1 or keys.dtype.kind not in "iu" or values.dtype.kind not in "iu":
            raise ValueError(f"put_dups takes two equal-length 1-D integer arrays, got {keys.dtype}{keys.shape} "
                             f"and {values.dtype}{values.shape}")
        if width not in (4, DUP_SIZE) or (width == 4 and len(values) and int(values.max()) >= 1 << 32):
            raise ValueError(f"put_dups writes 4- or 8-byte values (4: each < 2**32), got width {width!r}")
        self._writable()
        added = 0
        vt = ">u8" if width == DUP_SIZE else ">u4"
        with self._txn.cursor(db=h) as cur:
            try:
                for lo in range(0, len(keys), _DUPS_CHUNK):
                    # 8-byte big-endian bytes objects, made in C (V8 items convert to bytes, zero bytes kept)
                    pairs = zip(keys[lo:lo + _DUPS_CHUNK].astype(">u8").view("V8").tolist(),
                                values[lo:lo + _DUPS_CHUNK].astype(vt).view(f"V{width}").tolist())
                    added += cur.putmulti(pairs, dupdata=False)[1]
            except lmdb.MapFullError:
                self.map_full = True
                raise
        return added

    def get_dups(self, db: str, key: bytes) -> list[bytes]:
        """All records (4 or 8 bytes) under ``key``, sorted; [] if absent."""
        return self.get_dups_many(db, [key])[0]

    def get_dups_many(self, db: str, keys: list[bytes]) -> list[list[bytes]]:
        """``[get_dups(db, k) for k in keys]`` with one cursor."""
        h = self._db(db, dup=True)
        out: list[list[bytes]] = []
        with self._txn.cursor(db=h) as cur:
            for key in keys:
                if cur.set_key(_check_key(key)):
                    out.append(list(cur.iternext_dup(keys=False, values=True)))
                else:
                    out.append([])
        return out

    def dups_from(self, db: str, start: bytes, limit: int, width: int) -> tuple[bytes, bool]:
        """The pairs of ``db`` from key ``start`` on, whole keys, until ``limit`` pairs are reached, as
        one buffer of (key, value) records of 8 + ``width`` bytes (LMDB ``MDB_GET_MULTIPLE``: a page
        of values a call instead of one Python object a pair), and whether pairs are left after
        them. Every key must be 8 bytes and every value ``width`` bytes (``CorruptHubError`` when
        the records read do not add up)."""
        h = self._db(db, dup=True)
        keys, n, more = [], 0, False
        with self._txn.cursor(db=h) as cur:
            if not cur.set_range(_check_key(start)):
                return b"", False
            count, add = cur.count, keys.append
            for key in cur.iternext_nodup(keys=True, values=False):
                if n >= limit:
                    more = True
                    break
                add(key)
                n += count()
            if not keys:
                return b"", False
            if {len(k) for k in keys} != {8}:
                raise CorruptHubError(f"hub at {self._path}: a key of database {db!r} is not 8 bytes")
            buf = bytes(cur.getmulti(keys, dupdata=True, dupfixed_bytes=width, keyfixed=True))
        if len(buf) != n * (8 + width):
            raise CorruptHubError(f"hub at {self._path}: database {db!r} holds values of another width than "
                                  f"{width} bytes; restore the hub from a backup")
        return buf, more

    def delete_range(self, db: str, first: bytes, last: bytes) -> int:
        """Delete every key of ``db`` from ``first`` to ``last`` (both included; in ``bands``: with all
        its duplicates) with one cursor; returns how many keys were deleted. What ``delete`` of each
        key does, without a Python call and a key lookup a key (band compaction empties ~90 delta
        keys an entry, engine/band_blocks.py)."""
        h = self._wdb(db)
        first, last = _check_key(first), _check_key(last)
        self._writable()
        n = 0
        with self._txn.cursor(db=h) as cur:
            if not cur.set_range(first):
                return 0
            dup = db in DUPSORT_DBS
            key, delete = cur.key, cur.delete
            try:   # the loop of ``_mut(cur.delete)``, its checks once (~1/3 of the loop's CPU)
                while True:
                    k = key()
                    if not k or k > last:   # b"": the cursor ran off the end
                        return n
                    delete(dupdata=dup)     # moves the cursor to the next key
                    n += 1
            except lmdb.MapFullError:
                self.map_full = True
                raise

    def delete_dup(self, db: str, key: bytes, value8: bytes) -> bool:
        """Remove one record ``value8`` (8 bytes, or 4: ``put_dups(width=4)``) under ``key``; returns whether it existed."""
        h = self._db(db, dup=True)
        if not isinstance(value8, bytes) or len(value8) not in (4, DUP_SIZE):
            raise ValueError(f"{db!r} values are {DUP_SIZE}-byte bytes, got {value8!r}")
        return self._mut(self._txn.delete, _check_key(key), value8, db=h)
