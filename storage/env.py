"""``HubStore``: one LMDB environment per hub, with versioned meta, atomic writes, a growing map.

Layout: a hub is a directory; the environment is the single file ``<hub>/hub.lmdb`` (lock file
``<hub>/hub.lmdb-lock``) holding the named databases in ``DBS``. ``meta`` carries ``format``
(``FORMAT_VERSION`` at creation), ``created`` (unix time) and the engine's parameters
(``init_meta``).

Versions: a hub of a newer format is refused (``SchemaError``); an older one is upgraded on a
writable open by the chain ``MIGRATIONS[v]`` (``_upgrade_v1_to_v2(txn)`` style, v -> v+1, all
in one write transaction) or refused if the chain is incomplete or the open is read-only.

Concurrency: one write transaction at a time in a process (a lock; LMDB serializes writers
across processes), any number of concurrent readers across threads and processes. When the
map is full, ``transact`` aborts, doubles the map once no read transaction of this process is
active, and re-runs ``fn``. LMDB forbids opening one environment twice in a process, so a
second ``HubStore`` on an open hub raises ``HubBusyError``.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import threading
import time
import weakref
from typing import Any, Callable, Iterator, TypeVar

import lmdb

from . import schema
from .codec import unpack
from .errors import CodecError, CorruptHubError, HubBusyError, HubNotFoundError, SchemaError, StorageError
from .txn import DBS, DUPSORT_DBS, LATER_DBS, Txn

log = logging.getLogger(__name__)

__all__ = ["HubStore", "FORMAT_VERSION", "MIGRATIONS", "inspect", "ENV_FILE", "ReadOnlyError", "DiskFullError"]

FORMAT_VERSION = 6  # format written by this fitsketch; bump with a MIGRATIONS entry (and storage/schema.py)
ENV_FILE = "hub.lmdb"
MAX_DBS = 16
MAX_READERS = 126


def _upgrade_v1_to_v2(txn: Txn) -> None:
    """Format 2: histograms may be of record format 2 (partitions.HIST_FORMAT). A format-1 hub's
    records are all read as they are, so nothing is rewritten: the new format number makes a
    fitsketch that reads only format 1 refuse the hub at open instead of failing at the first
    histogram of record format 2 it meets."""


def _upgrade_v2_to_v3(txn: Txn) -> None:
    """Format 3: per-entry records may hold compressed arrays (codec ``EXT_PACKED``, written by
    engine/parts.py). Records of format 2 are read as they are (nothing rewritten: a hub's entries
    may be of either kind); the number makes an older fitsketch refuse the hub at open."""


def _upgrade_v3_to_v4(txn: Txn) -> None:
    """Format 4: a hub created at format 4 writes its band postings as 4 bytes (the entry id;
    engine/parts.py ``Bands``). An older hub keeps writing postings of the width it holds (8 bytes;
    one LMDB key's values must be of one width), recorded here as ``meta/posting_bytes``; one
    without postings takes 4. Nothing is rewritten and readers take either width; the number makes
    an older fitsketch refuse the hub at open."""
    if txn.get("meta", POSTING_BYTES_KEY) is None:
        txn.put("meta", POSTING_BYTES_KEY, 4 if held_posting_bytes(txn) in (None, 4) else 8)


def _upgrade_v4_to_v5(txn: Txn) -> None:
    """Format 5: an entry's signatures may be stored as a per-permutation dictionary (record format 2,
    engine/signature_records.py), and new entries store no screen record (engine/screen.py: derived
    from the histograms; the screen index finds entries by their ids, where an older fitsketch
    found them by their screen records and would miss these), and profile / profile-keys records
    go to their own databases (``LATER_DBS``, created by this writable open; an older hub's records
    in ``extra`` stay where they are and are read there). Format-4 records are read as they are, so
    nothing is rewritten; the number makes an older fitsketch refuse the hub at open."""


def _upgrade_v5_to_v6(txn: Txn) -> None:
    """Format 6: band postings are moved, a key range at a time, from the dupsort ``bands`` database
    (where adds still write them) into compressed blocks in database ``band_blocks`` (engine/band_blocks.py,
    created by this writable open), and the candidate stage and removal read both. An older fitsketch
    would read only ``bands`` and miss every moved posting, hence the number. The blocks start empty:
    nothing is moved here (the next compaction moves the postings)."""


POSTING_BYTES_KEY = b"posting_bytes"   # meta: the band postings' width of a hub upgraded from format <= 3


def held_posting_bytes(txn: Txn) -> int | None:
    """The width of the first band posting the hub holds (every one has it: one LMDB key's values
    are of one width, and a hub writes one width); None when it holds none."""
    it = txn.items("bands")
    first = next(it, None)
    it.close()
    return None if first is None else len(first[1])

# from-version v -> fn(txn) upgrading a hub from format v to v + 1 (storage/schema.py lists why)
MIGRATIONS: dict[int, Callable[[Txn], None]] = {1: _upgrade_v1_to_v2, 2: _upgrade_v2_to_v3, 3: _upgrade_v3_to_v4,
                                                4: _upgrade_v4_to_v5, 5: _upgrade_v5_to_v6}
# formats this fitsketch reads as they are: a read-only open of such a hub works without upgrading it
READ_AS_IS = frozenset({1, 2, 3, 4, 5})

T = TypeVar("T")
_OPEN: "weakref.WeakValueDictionary[str, HubStore]" = weakref.WeakValueDictionary()
_OPEN_LOCK = threading.Lock()


class ReadOnlyError(StorageError):
    """A write on a store opened read-only, or a hub whose files cannot be written."""

    code = "read_only"


class DiskFullError(StorageError, OSError):
    """The disk (or the process's file size limit) is full: the transaction was not committed."""

    code = "disk_full"


def _disk_full(e: BaseException) -> bool:
    if isinstance(e, lmdb.DiskError):                      # ENOSPC
        return True
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return True
    return isinstance(e, lmdb.Error) and any(m in str(e) for m in ("No space left", "File too large",
                                                                    "Disk quota exceeded"))


def _exclusive(fd: int) -> bool:
    """An exclusive fcntl lock on byte 0 of an LMDB lock file: False when another process has the
    environment open (LMDB holds a shared lock there in each)."""
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
        return True
    except OSError:
        return False


def _translate(path: str, e: lmdb.Error) -> StorageError:
    if isinstance(e, (lmdb.LockError, lmdb.ReadersFullError)) or "already open" in str(e):
        return HubBusyError(f"hub at {path} is busy ({e}); close other handles or retry")
    return CorruptHubError(
        f"hub at {path} is not a readable LMDB environment ({type(e).__name__}: {e}); "
        f"restore it from a backup or remove the directory"
    )


def _check_format(path: str, fmt: Any) -> int:
    if type(fmt) is not int or fmt < 1:
        raise SchemaError(
            f"hub at {path} has unknown format {fmt!r}; this fitsketch reads formats "
            f"1..{FORMAT_VERSION}: it was not written by fitsketch or is damaged"
        )
    if fmt > FORMAT_VERSION:
        raise SchemaError(
            f"hub at {path} was written by format {fmt}; this fitsketch reads up to "
            f"{FORMAT_VERSION}: upgrade fitsketch"
        )
    return fmt


def _check_size(env: lmdb.Environment, file: str) -> None:
    """Refuse a file shorter than the pages its meta page says are in use: LMDB would read past
    the end through its memory map and the process would die of SIGBUS (a truncated copy)."""
    need = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    have = os.path.getsize(file)
    if have < need:
        env.close()
        raise CorruptHubError(f"{file} is truncated: {have} bytes, but its pages in use need {need}; "
                              f"restore the hub from a backup")


def _meta_key(k: str) -> bytes:
    if not isinstance(k, str) or not k:
        raise ValueError(f"meta keys are non-empty str, got {k!r}")
    return k.encode("utf-8")


class HubStore:
    """The LMDB environment of one hub directory. See the module docstring."""

    def __init__(self, path: str | os.PathLike, *, create: bool = True, readonly: bool = False,
                 map_size: int = 1 << 26):
        self.path = os.path.abspath(os.fspath(path))
        self.readonly = bool(readonly)
        self.created = False  # True if this call created the hub
        self.lockless = False  # True when opened read-only without LMDB's lock file (read-only files)
        self._file = os.path.join(self.path, ENV_FILE)
        self._env: lmdb.Environment | None = None
        self._dbs: dict[str, Any] = {}
        self._write_lock = threading.Lock()
        self._writer: int | None = None  # thread id inside transact()
        self._cond = threading.Condition()
        self._readers = 0
        self._resizing = False
        self._local = threading.local()  # .n: open read() blocks of this store in this thread
        self._lockfd: int | None = None  # our descriptor of LMDB's lock file (``_lock_fd``)

        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise HubNotFoundError(f"{self.path} is a file; a hub is a directory holding {ENV_FILE}")
        existed = os.path.isfile(self._file) and os.path.getsize(self._file) > 0
        if not existed and (not create or readonly):
            why = "create=False" if not create else "readonly=True cannot create one"
            raise HubNotFoundError(f"no hub at {self.path} ({why}); create it with create=True")
        if not existed:
            try:
                os.makedirs(self.path, exist_ok=True)
            except PermissionError as e:
                raise ReadOnlyError(f"cannot create a hub at {self.path}: {e.strerror}: choose a writable "
                                    f"directory") from None
        self._key = os.path.realpath(self.path)
        with _OPEN_LOCK:
            if _OPEN.get(self._key) is not None:
                raise HubBusyError(
                    f"hub at {self.path} is already open in this process; reuse that HubStore "
                    f"or close() it first (LMDB forbids opening one environment twice)"
                )
            _OPEN[self._key] = self
        try:
            self._open(existed, map_size)
        except BaseException:
            self.close()
            raise

    # -- opening ------------------------------------------------------------------------------
    def _open_env(self, map_size: int) -> lmdb.Environment:
        """The environment; a hub whose files cannot be written (a read-only directory or mount,
        where LMDB cannot use its lock file) opens with ``readonly=True`` without the lock file
        (``self.lockless``): nothing can write it then, so readers need no reader table."""
        kw = dict(subdir=False, max_dbs=MAX_DBS, map_size=int(map_size), readonly=self.readonly,
                  max_readers=MAX_READERS)
        try:
            return lmdb.open(self._file, lock=True, **kw)
        except lmdb.ReadonlyError as e:                      # EACCES / EROFS
            if not self.readonly:
                raise ReadOnlyError(
                    f"hub at {self.path} cannot be opened for writing ({e.__class__.__name__}: {e}): its files "
                    f"or directory are read-only; open it with readonly=True to read it, or make it writable "
                    f"(chmod -R u+w {self.path})") from None
            log.info("hub at %s: lock file not writable (%s); reading it without the lock", self.path, e)
            self.lockless = True
            return lmdb.open(self._file, lock=False, **kw)

    def _reopen(self, map_size: int) -> None:
        """Open the environment again with its databases (after compact's swap, or a failed grow)."""
        self._env = self._open_env(map_size)
        self._open_dbs(create=False)

    def _open(self, existed: bool, map_size: int) -> None:
        try:
            self._env = self._open_env(map_size)
            if not existed:
                self._create()
                return
            _check_size(self._env, self._file)
            try:
                meta = self._env.open_db(b"meta", create=False)
            except lmdb.NotFoundError:
                raise CorruptHubError(f"{self._file} is an LMDB file without a meta database; "
                                      f"it is not a fitsketch hub") from None
            with self._env.begin(db=meta, buffers=False) as txn:
                raw = txn.get(b"format")
        except lmdb.Error as e:
            raise _translate(self.path, e) from e
        self._dbs = {"meta": meta}
        if raw is None:
            raise CorruptHubError(f"hub at {self.path} has no format record in meta; "
                                  f"creation was interrupted or it is not a fitsketch hub")
        try:
            fmt = _check_format(self.path, unpack(raw))
        except CodecError as e:
            raise CorruptHubError(f"hub at {self.path}: meta record 'format' cannot be decoded ({e})") from e
        self._format = fmt
        upgrade = fmt < FORMAT_VERSION and not (self.readonly and fmt in READ_AS_IS)
        if upgrade:
            self._upgrade_plan(fmt)
        self._open_dbs(create=not self.readonly)
        if upgrade:
            self._migrate_alone(fmt)
            self._format = FORMAT_VERSION

    def _open_dbs(self, create: bool) -> None:
        """Open every database of ``DBS``; a hub of an older format opened read-only lacks the
        ``LATER_DBS`` of later formats (its upgrade creates them): those it lacks are read as empty
        (storage/txn.py)."""
        fmt = getattr(self, "_format", FORMAT_VERSION)   # the hub's format as opened (_open)
        for name in DBS:
            dup = name in DUPSORT_DBS
            try:
                self._dbs[name] = self._env.open_db(name.encode(), create=create, dupsort=dup, dupfixed=dup)
            except lmdb.NotFoundError:
                if name in LATER_DBS and fmt < LATER_DBS[name]:
                    continue
                raise CorruptHubError(f"hub at {self.path} lacks database {name!r}; it is damaged") from None

    def _create(self) -> None:
        self._open_dbs(create=True)
        now = time.time()
        def create(t):
            t.put("meta", b"format", FORMAT_VERSION)
            t.put("meta", b"created", now)
            if FORMAT_VERSION >= 4:     # its band postings' width (engine/parts.py POSTING_BYTES), read back by posting_bytes
                t.put("meta", POSTING_BYTES_KEY, 4)
        self.transact(create)
        self.created = True
        log.info("created hub at %s (format %d)", self.path, FORMAT_VERSION)

    def _upgrade_plan(self, fmt: int) -> None:
        missing = [v for v in range(fmt, FORMAT_VERSION) if v not in MIGRATIONS]
        if missing:
            raise SchemaError(
                f"hub at {self.path} was written by format {fmt}; this fitsketch reads format "
                f"{FORMAT_VERSION} and has no upgrade from format {missing[0]}: rebuild the hub "
                f"or use an older fitsketch"
            )
        if self.readonly:
            raise SchemaError(
                f"hub at {self.path} was written by format {fmt}; this fitsketch reads format "
                f"{FORMAT_VERSION}: open it once with readonly=False to upgrade it"
            )

    def _lock_fd(self) -> int:
        """This store's descriptor of LMDB's lock file, opened once and closed after the environment
        (``close``): closing any descriptor of a file drops every fcntl lock the process holds on it,
        LMDB's shared lock on byte 0 included, so one is never closed while the environment is open."""
        if self._lockfd is None:
            self._lockfd = os.open(self._file + "-lock", os.O_RDWR | os.O_CLOEXEC)
        return self._lockfd

    def alone(self) -> bool:
        """Whether no other process has the hub open (``_exclusive`` on the lock file, as ``compact``
        checks), this process's shared lock left as it was. A writable store only."""
        fd = self._lock_fd()
        if not _exclusive(fd):
            return False
        fcntl.lockf(fd, fcntl.LOCK_SH, 1, 0)      # back to the shared lock LMDB holds
        return True

    def _migrate_alone(self, fmt: int) -> None:
        """``_migrate`` holding the exclusive lock on the lock file: an upgrade across format 6 with
        another process on the hub would leave a fitsketch of format 5 reading and writing only the
        delta of the band postings (blind searches, stale postings left in the blocks, its compact()
        dropping the blocks), and a process cannot tell another's version, so it waits for none:
        ``HubBusyError`` with the hub unchanged. Processes opening meanwhile wait for the lock."""
        fd = self._lock_fd()
        if not _exclusive(fd):
            raise HubBusyError(
                f"hub at {self.path} is of format {fmt} and open in another process (a server, a reader, "
                f"an older fitsketch); upgrading it to format {FORMAT_VERSION} needs it alone: stop the other "
                f"fitsketch processes, then open it again")
        try:
            self._migrate(fmt)
        finally:
            fcntl.lockf(fd, fcntl.LOCK_SH, 1, 0)

    def _migrate(self, fmt: int) -> None:
        def run(txn: Txn) -> None:
            for v in range(fmt, FORMAT_VERSION):
                MIGRATIONS[v](txn)
            txn.put("meta", b"format", FORMAT_VERSION)

        self.transact(run)
        log.warning("upgraded hub at %s from format %d to %d (storage/schema.py); a fitsketch older than this "
                    "one no longer opens it", self.path, fmt, FORMAT_VERSION)

    # -- meta ---------------------------------------------------------------------------------
    def init_meta(self, params: dict) -> None:
        """Write the engine's parameters into ``meta`` once, in one transaction.

        Keys are str, values anything ``codec.pack`` accepts. Refuses keys already present
        (``format``, ``created`` and earlier parameters), so seeds cannot be overwritten.
        """
        items = [(_meta_key(k), v) for k, v in dict(params).items()]

        def write(txn: Txn) -> None:
            taken = [k.decode() for k, _ in items if txn.exists("meta", k)]
            if taken:
                raise StorageError(f"hub at {self.path}: meta already holds {taken}; "
                                   f"meta parameters are written once, at creation")
            for k, v in items:
                txn.put("meta", k, v)

        self.transact(write)

    def meta(self) -> dict:
        """Everything in ``meta`` as {str: value}."""
        with self.read() as txn:
            return {k.decode("utf-8"): v for k, v in txn.items("meta")}

    # -- transactions -------------------------------------------------------------------------
    def _live(self) -> lmdb.Environment:
        if self._env is None:
            raise StorageError(f"hub at {self.path} is closed")
        return self._env

    @contextlib.contextmanager
    def read(self) -> Iterator[Txn]:
        """A read-only snapshot: ``with store.read() as txn: txn.get("entries", u64(1))``."""
        env = self._live()
        while True:
            with self._cond:
                while self._resizing:
                    self._cond.wait()
                self._readers += 1
            self._local.n = self._own_reads() + 1
            try:
                try:
                    txn = env.begin(write=False, buffers=False)
                except lmdb.MapResizedError:  # another process grew the map
                    txn = None
                if txn is not None:
                    try:
                        yield Txn(txn, self._dbs, False, self.path)
                    except lmdb.CorruptedError as e:  # a damaged page met while reading
                        raise CorruptHubError(f"hub at {self.path} is damaged ({e}); restore it from a "
                                              f"backup") from e
                    finally:
                        txn.abort()
                    return
            finally:
                self._local.n -= 1
                with self._cond:
                    self._readers -= 1
                    self._cond.notify_all()
            self._resize(0)

    def _own_reads(self) -> int:
        return getattr(self._local, "n", 0)

    @contextlib.contextmanager
    def _paused(self, drain: bool) -> Iterator[None]:
        """Hold new read() blocks at the gate; with ``drain``, also wait out the active ones.

        A write abort runs paused: py-lmdb 3.0 lets a stream of reader threads starve
        ``Transaction.abort`` of its environment lock for seconds. A remap runs drained.
        """
        if drain and self._own_reads():
            raise StorageError(
                f"hub at {self.path}: the map must grow but this thread holds an open read() "
                f"transaction; close it before calling transact()"
            )
        with self._cond:
            self._resizing = True
            try:
                while drain and self._readers:
                    self._cond.wait()
                yield
            finally:
                self._resizing = False
                self._cond.notify_all()

    def _resize(self, new_size: int, abort: lmdb.Transaction | None = None) -> None:
        """Abort ``abort``, then set_mapsize with no read txn of this process active.

        ``new_size`` 0 adopts the size another process grew the file to.
        """
        with self._paused(drain=True):
            if abort is not None:
                with contextlib.suppress(lmdb.Error):
                    abort.abort()
            env = self._live()
            old = env.info()["map_size"]
            try:
                env.set_mapsize(new_size)
            except lmdb.Error as e:
                # py-lmdb invalidates an environment whose set_mapsize failed (ENOMEM under an
                # address-space limit): reopen it at its old size, so the hub stays usable, and say so
                with contextlib.suppress(lmdb.Error):
                    env.close()
                self._env = None
                self._reopen(old)
                raise DiskFullError(
                    f"hub at {self.path}: the map cannot grow from {old} to {new_size} bytes "
                    f"({e.__class__.__name__}: {e}); nothing was written: free memory or disk space, or "
                    f"write fewer entries at a time") from e

    def _reserve(self, env: lmdb.Environment, nbytes: int) -> None:
        """Double the map (as a full map does) until ``nbytes`` more fit past the pages in use, so
        that a large transaction is not aborted and run again from scratch when it fills the map
        (a 1,000-entry ``add_sketches`` batch redid all its records' encoding). Skipped while this
        thread holds a read() (the map cannot grow then; transact's retry still covers it)."""
        info = env.info()
        size = info["map_size"]
        want = (info["last_pgno"] + 1) * env.stat()["psize"] + int(nbytes)
        if want <= size or self._own_reads():
            return
        while size < want:
            size *= 2
        log.info("hub at %s: growing the map to %d bytes for a %d-byte write", self.path, size, nbytes)
        try:
            self._resize(size)
        except DiskFullError as e:   # best effort: the estimate is generous; the map-full retry still applies
            log.info("%s; writing without growing first", e)

    def transact(self, fn: Callable[[Txn], T], reserve: int = 0) -> T:
        """Run ``fn(txn)`` in one write transaction, commit once, return its result.

        Any exception from ``fn`` aborts (nothing is written) and is re-raised. If the map is
        full, the transaction is aborted, the map doubled and ``fn`` run again from scratch:
        ``fn`` must depend only on its inputs and the txn (no side effects outside it).
        ``reserve``: bytes the transaction is expected to add; the map is grown for them first.
        """
        env = self._live()
        if self.readonly:
            raise ReadOnlyError(f"hub at {self.path} is open readonly; reopen with readonly=False to write")
        if self._writer == threading.get_ident():
            raise StorageError("transact() called inside transact(); use the txn passed to fn")
        with self._write_lock:
            self._writer = threading.get_ident()
            try:
                if reserve > 0:
                    self._reserve(env, reserve)
                while True:
                    env = self._live()          # a failed grow reopens the environment
                    try:
                        raw = env.begin(write=True, buffers=False)
                    except lmdb.MapResizedError:
                        self._resize(0)
                        continue
                    txn = Txn(raw, self._dbs, True, self.path)
                    try:
                        result = fn(txn)
                        if not txn.map_full:
                            raw.commit()
                            return result
                    except lmdb.MapFullError:
                        txn.map_full = True
                    except BaseException as e:
                        if not txn.map_full:  # else fn swallowed MapFullError, then failed
                            with self._paused(drain=False), contextlib.suppress(lmdb.Error):
                                raw.abort()
                            if _disk_full(e):
                                raise DiskFullError(
                                    f"hub at {self.path}: the disk is full ({e}); nothing was written: free "
                                    f"space (or raise the file size limit) and retry") from e
                            raise
                    size = env.info()["map_size"] * 2
                    log.info("hub at %s: map full, growing to %d bytes and retrying", self.path, size)
                    self._resize(size, abort=raw)
            finally:
                self._writer = None

    # -- compaction ---------------------------------------------------------------------------
    def compact(self) -> tuple[int, int]:
        """Rewrite ``hub.lmdb`` to its live pages (LMDB keeps the pages of removed records for reuse
        but never shrinks the file): a compacting copy (``env.copy(compact=True)``), an atomic
        ``os.replace``, a reopen, all under the writer lock. The hub must be this process's alone:
        an exclusive ``fcntl`` lock on byte 0 of the lock file (where every process with the
        environment open holds a shared one) is taken first, so another process with it open (a
        server, a reader) raises ``HubBusyError`` with nothing changed, and one opening it meanwhile
        waits. Returns (bytes before, bytes after)."""
        env = self._live()
        if self.readonly:
            raise ReadOnlyError(f"hub at {self.path} is open readonly; reopen with readonly=False to compact it")
        if self._own_reads():
            raise StorageError(f"hub at {self.path}: compact() inside a read() block; call it outside")
        tmp = self._file + ".compact.tmp"
        before = os.path.getsize(self._file)
        busy = HubBusyError(f"hub at {self.path} is open in another process (a server or a reader): stop it, then "
                            f"compact")
        with self._write_lock:
            fd = self._lock_fd()      # kept open: closing it would drop LMDB's own locks in this process
            if not _exclusive(fd):
                raise busy
            try:
                self._copy_live(env, tmp)
            except Exception as e:
                fcntl.lockf(fd, fcntl.LOCK_SH, 1, 0)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                if _disk_full(e):
                    raise DiskFullError(f"hub at {self.path}: the disk is full while compacting ({e}); the "
                                        f"hub is unchanged: free space and retry") from e
                raise
            with self._paused(drain=True):
                map_size = env.info()["map_size"]
                env.close()     # closing LMDB's descriptor drops this process's locks on the file:
                self._env = None
                try:            # take ours again; someone who got in meanwhile keeps the old file
                    swapped = _exclusive(fd)
                    if swapped:
                        os.replace(tmp, self._file)
                finally:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(tmp)
                    self._reopen(map_size)   # LMDB takes the lock again (shared once open)
            if not swapped:
                raise busy
        after = os.path.getsize(self._file)
        log.info("compacted hub at %s: %d -> %d bytes", self.path, before, after)
        return before, after

    def _copy_live(self, env: lmdb.Environment, path: str) -> None:
        """Every record of every database into a new environment at ``path``, in key order (so its
        pages are full). LMDB's own ``env.copy(compact=True)`` crashes the process (SIGSEGV, py-lmdb
        3.0) on this hub's dupsort/dupfixed ``bands`` database, so the copy is made record by record."""
        size = max(env.info()["map_size"], 2 * os.path.getsize(self._file))
        dst = lmdb.open(path, subdir=False, max_dbs=MAX_DBS, map_size=size, lock=False, sync=False,
                        metasync=False)
        try:
            with env.begin(buffers=False) as src, dst.begin(write=True) as out:
                for name in DBS:
                    dup = name in DUPSORT_DBS
                    ddb = dst.open_db(name.encode(), txn=out, create=True, dupsort=dup, dupfixed=dup)
                    cur = src.cursor(self._dbs[name])
                    if cur.first():
                        out.cursor(ddb).putmulti(cur.iternext(keys=True, values=True), dupdata=dup,
                                                 append=not dup)
            dst.sync(True)
        finally:
            dst.close()

    # -- info / lifecycle ---------------------------------------------------------------------
    def env_bytes(self) -> int:
        """Size of hub.lmdb on disk."""
        return os.path.getsize(self._file)

    def stat(self) -> dict[str, int]:
        """Entry count per database."""
        with self.read() as txn:
            return {name: txn.count(name) for name in DBS}

    def close(self) -> None:
        """Close the environment (idempotent); waits for this process's writers and readers."""
        if self._writer == threading.get_ident():
            raise StorageError(f"hub at {self.path}: close() called inside transact(); close after it returns")
        env, self._env = self._env, None
        if env is not None:
            own = self._own_reads()  # this thread's open read() blocks are invalidated, not awaited
            with self._write_lock, self._cond:
                while self._readers > own:
                    self._cond.wait()
                env.close()
        if self._lockfd is not None:      # after the environment (``_lock_fd``)
            os.close(self._lockfd)
            self._lockfd = None
        with _OPEN_LOCK:
            if _OPEN.get(self._key) is self:
                del _OPEN[self._key]

    def __enter__(self) -> "HubStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._env is None else ("readonly" if self.readonly else "open")
        return f"HubStore({self.path!r}, {state})"


def inspect(path: str | os.PathLike) -> dict:
    """Read a hub's header (meta and entry count) without opening it as a store.

    Returns {"path", "format", "entries", "bytes", "record_formats", <meta keys>}: ``record_formats``
    are the record formats this fitsketch writes (storage/schema.py). Opens the file read-only
    without the lock file (or reuses this process's open handle), so it never blocks writers;
    while another process writes, the counts are a best-effort snapshot.
    """
    path = os.path.abspath(os.fspath(path))
    file = os.path.join(path, ENV_FILE)
    if not os.path.isfile(file) or os.path.getsize(file) == 0:
        raise HubNotFoundError(f"no hub at {path} (no {ENV_FILE})")
    with _OPEN_LOCK:
        store = _OPEN.get(os.path.realpath(path))
    if store is not None and store._env is not None:
        meta = store.meta()
        with store.read() as txn:
            entries = txn.count("entries")
    else:
        try:
            env = lmdb.open(file, subdir=False, max_dbs=MAX_DBS, readonly=True, lock=False)
        except lmdb.Error as e:
            raise _translate(path, e) from e
        _check_size(env, file)
        try:
            try:
                dbs = {n: env.open_db(n.encode(), create=False) for n in ("meta", "entries")}
            except lmdb.NotFoundError:
                raise CorruptHubError(f"{file} lacks the meta/entries databases; not a fitsketch hub") from None
            with env.begin(buffers=False) as raw:
                txn = Txn(raw, dbs, False, path)
                meta = {k.decode("utf-8"): v for k, v in txn.items("meta")}
                entries = txn.count("entries")
        except lmdb.Error as e:
            raise _translate(path, e) from e
        finally:
            env.close()
    out = {"path": path, "format": _check_format(path, meta.get("format")),
           "entries": entries, "bytes": os.path.getsize(file), "record_formats": schema.formats()}
    for k, v in meta.items():
        out.setdefault(k, v)
    return out
