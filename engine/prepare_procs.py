"""``Hub.add_sketches``' chunks prepared in forked worker processes (issue 21: >= 1,000 entries/s).

A bulk add prepares every entry's records (engine/parts.py ``_prepare_chunk``: histograms, signature
dictionaries, profiles, JS-LSH and band keys, each record packed with zstd) before one write
transaction a batch. About half of that holds the GIL (NumPy's small operations, msgpack, the
codec's per-array Python), so threads gain ~1.2x on 2 cores; processes run it in parallel.

How: the calling process forks ``n`` workers once a call, as soon as the items of the first chunk
are checked (``Hub.add_sketches``), so each worker holds the items (copy-on-write) and is given only
chunk bounds; it builds each chunk's ``NewEntry`` from its items itself (the call's ``source``). The
caller checks the other items while the workers prepare the first chunks, and ``release``s each
chunk once its items passed: a chunk is sent to a worker only then, so no work is ever sized from
an unchecked item, and the caller writes nothing before every item passed (an error there stops the
workers: nothing is written). Checking ~55 us an item on one core while the other waited was ~5 %
of a 2,000-entry call (bench/SUMMARY.md, "Bulk add, fifteenth session").
A worker prepares its chunks in order and sends each chunk's prepared records back as msgpack
bytes (storage/codec.py ``pack``: never pickle), which the caller unpacks into what
``_prepare_chunk`` returns in-process -- the same values, so the same bytes stored
(tests/test_prepare_procs.py). One thread of the caller per worker sends the bounds and receives
the results (the caller writes meanwhile; a worker never waits on a full pipe), at most
``LOOKAHEAD`` batches ahead of the batch being written; the caller writes a batch's chunks as they
come, in the batch's one transaction (engine/parts.py ``_streamed``). At the end each worker sends back the
projection rows it drew (kernels/jslsh.py's memo), so the caller's memo grows as if it had prepared
the chunks itself and the next call's workers start warm.

Fork is used only where it is safe for this work: a POSIX fork start method, the CPU device, and
(``processes=None``) no other Python thread in the process (a thread holding a lock at the fork
would hold it forever in the child); the workers run NumPy, SciPy, zstandard and msgpack only --
no LMDB (the hub's environment is never touched in a child), no torch, no FAISS. A worker's error
is raised by ``add_sketches`` as the same class with the same message (the worker's traceback
attached as its cause), inside its batch's transaction, which is aborted: nothing of that batch is
written, the batches before it are, as with threads; a worker that dies raises ``DistributedError``. Workers are stopped on every exit (terminated where the caller stops early).
"""
from __future__ import annotations

import os
import struct
import threading
import traceback

from . import errors as E
from .kernels._device import usable_cpus
from .storage import pack, unpack

LOOKAHEAD = 2          # batches prepared ahead of the one being written (the threads' path: 2 in flight)
MIN_ENTRIES = 512      # fewer entries in a call: threads (a fork and the workers' first chunk cost ~50 ms)
MAX_PROCESSES = 8

_JOB = None            # (source, config, device) of the call being prepared: set before the fork, read by the workers
_STOP = b""


def fork_ok() -> bool:
    """Whether this platform forks (``multiprocessing``'s "fork" start method)."""
    import multiprocessing as mp

    return hasattr(os, "fork") and "fork" in mp.get_all_start_methods()


def _env_processes() -> int | None:
    forced = os.environ.get("FITSKETCH_PREPARE_PROCESSES", "").strip()
    if not forced:
        return None
    if not forced.isdigit() or int(forced) > 64:
        raise E.InvalidArgumentError(f"FITSKETCH_PREPARE_PROCESSES={forced!r} is not valid: give an integer from 0 "
                                     "(prepare in threads) to 64")
    return int(forced)


def choose(processes: int | None, n_entries: int, device: str) -> int:
    """The worker processes a call of ``n_entries`` prepares in: ``processes`` where given (0: none,
    threads; a positive count needs fork and the CPU device), else ``FITSKETCH_PREPARE_PROCESSES``,
    else ``min(usable CPUs, MAX_PROCESSES)`` where the call has ``MIN_ENTRIES`` or more, the device is
    the CPU, this platform forks and no other Python thread runs; else 0."""
    from .kernels._device import resolve_device

    cpu = resolve_device(device) == "cpu"
    if processes is not None:
        if processes and not (fork_ok() and cpu):
            raise E.InvalidArgumentError(
                f"processes={processes} needs a platform that forks and the CPU device (this hub's device is "
                f"{device!r}): use processes=0 (threads)")
        return processes
    forced = _env_processes()
    if forced is not None:
        return forced if fork_ok() and cpu else 0
    cpus = usable_cpus()
    if cpus < 2 or n_entries < MIN_ENTRIES or not cpu or not fork_ok() or threading.active_count() > 1:
        return 0
    return min(cpus, MAX_PROCESSES)


def _keep_heap() -> None:
    """In a worker: glibc's malloc keeps freed memory and serves large blocks from its heap
    (``mallopt``: M_TRIM_THRESHOLD 1 GiB, M_MMAP_THRESHOLD 32 MiB) instead of returning them to the
    system and mapping fresh pages for the next chunk: each fresh page, or each page of the heap
    shared with the caller since the fork, is a page fault (~45 an entry, ~0.25 ms of system CPU;
    ~31 and ~0.14 ms kept). The worker ends with its call. Nothing where the C library has no mallopt."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
        mallopt(-1, 1 << 30)   # M_TRIM_THRESHOLD
        mallopt(-3, 1 << 25)   # M_MMAP_THRESHOLD (its maximum, 32 MiB)
    except (AttributeError, OSError):   # pragma: no cover - not glibc
        pass


def _worker(conn) -> None:
    """A forked worker: prepares the chunks ``[lo, hi)`` it is sent, in order, and sends each one's
    ``_prepare_chunk`` result packed; on the stop message, the projection rows it drew, then returns."""
    import signal

    from . import parts as P
    from .kernels import jslsh

    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is the caller's: it stops the workers (``close``)
    _keep_heap()
    source, config, device = _JOB
    before = jslsh.row_cache_snapshot()   # the rows drawn here are sent back: the caller's memo absorbs them
    try:
        while True:
            msg = conn.recv_bytes()
            if msg == _STOP:
                conn.send_bytes(b"R" + pack(jslsh.row_cache_export(since=before)))
                return
            lo, hi = struct.unpack("<qq", msg)
            try:
                out = b"K" + pack(P._prepare_chunk(source(lo, hi), config, device, P.STREAMED_SKIP))
            except Exception as e:   # the caller raises it as this class (``_raise``)
                out = b"E" + pack([type(e).__module__, type(e).__qualname__, str(e), traceback.format_exc()])
            conn.send_bytes(out)
    except (EOFError, OSError):   # the caller went away: nothing to send to
        return
    finally:
        conn.close()


class _RemoteTraceback(Exception):
    """The worker's traceback, attached as the cause of the error ``add_sketches`` raises."""

    def __str__(self) -> str:
        return "\n" + self.args[0]


def _raise(payload: bytes):
    """The error a worker sent, as its class (looked up in the modules this process imported; any
    other class, or one that cannot be built from its message, as ``DistributedError``)."""
    import sys

    module, qualname, message, tb = unpack(payload)
    cls = sys.modules.get(module)
    for part in str(qualname).split("."):
        cls = getattr(cls, part, None)
    err = None
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            err = cls(message)
        except Exception:
            err = None
    if err is None or str(err) != message:
        err = E.DistributedError(f"a prepare process failed: {qualname}: {message}")
    raise err from _RemoteTraceback(tb)


class Workers:
    """``n`` forked workers preparing ``chunks`` (``[(lo, hi)]`` of the call's entries, ``PREPARE_CHUNK``
    or fewer, never across a batch) in order; ``result(j)`` waits for chunk ``j`` (taken in order),
    ``close()`` stops them. ``batch_of[j]``: the batch of chunk ``j`` (the lookahead's unit).
    ``source``: a list of NewEntry (chunk ``(lo, hi)`` is ``source[lo:hi]``), or a function ``(lo,
    hi) -> list of NewEntry`` that a worker calls on the data it was forked with. ``ready``: the
    leading entries whose chunks may be sent now (None: all); ``release`` raises it."""

    def __init__(self, source, config, device, n: int, chunks: list, batch_of: list, ready: int | None = None):
        import multiprocessing as mp

        global _JOB
        self.chunks, self.batch_of = chunks, batch_of
        self.ready = chunks[-1][1] if ready is None and chunks else (ready or 0)
        self.results: dict = {}
        self.cv = threading.Condition()
        self.taken = 0              # chunks the caller has taken (``result``)
        self.closing = False
        self.closed = False
        self.rows = []              # the workers' projection rows, absorbed at close
        ctx = mp.get_context("fork")
        self.conns, self.procs, self.threads = [], [], []
        _JOB = (source if callable(source) else (lambda lo, hi: source[lo:hi]), config, device)
        try:
            for w in range(n):
                a, b = ctx.Pipe()
                p = ctx.Process(target=_worker, args=(b,), daemon=True, name=f"fitsketch-prepare-{w}")
                p.start()
                b.close()
                self.conns.append(a)
                self.procs.append(p)
        except BaseException:
            self.close(abort=True)
            raise
        finally:
            _JOB = None             # the parent's reference only; the children hold their copy
        for w in range(n):
            t = threading.Thread(target=self._feed, args=(w,), daemon=True, name=f"fitsketch-prepare-feed-{w}")
            t.start()
            self.threads.append(t)

    def _ahead(self, j: int) -> bool:
        """Whether chunk ``j`` may be sent: its entries released and its batch at most ``LOOKAHEAD``
        past the batch being taken."""
        if self.closing:
            return True
        cur = self.batch_of[min(self.taken, len(self.chunks) - 1)]
        return self.batch_of[j] <= cur + LOOKAHEAD - 1 and self.chunks[j][1] <= self.ready

    def release(self, ready: int) -> None:
        """The first ``ready`` entries were checked: their chunks may be sent to the workers."""
        with self.cv:
            if ready > self.ready:
                self.ready = ready
                self.cv.notify_all()

    def _feed(self, w: int) -> None:
        """Worker ``w``'s chunks (every ``n``-th), one at a time: wait for room, send the bounds, store
        the result; then the stop message and the worker's projection rows."""
        conn, n = self.conns[w], len(self.conns)
        try:
            for j in range(w, len(self.chunks), n):
                with self.cv:
                    while not self._ahead(j):
                        self.cv.wait()
                    if self.closing:
                        return
                conn.send_bytes(struct.pack("<qq", *self.chunks[j]))
                res = conn.recv_bytes()
                with self.cv:
                    self.results[j] = res
                    self.cv.notify_all()
                if res[:1] == b"E":
                    return
            conn.send_bytes(_STOP)
            res = conn.recv_bytes()
            if res[:1] == b"R":
                with self.cv:
                    self.rows.append(res[1:])
        except BaseException as e:   # the worker died (EOF, a broken pipe), or this thread failed: its next chunk fails
            p = self.procs[w]
            p.join(timeout=1.0)
            why = (f"exited (code {p.exitcode})" if isinstance(e, (EOFError, OSError))
                   else f"could not be read ({type(e).__name__}: {e})")
            with self.cv:
                for j in range(w, len(self.chunks), n):
                    if j not in self.results and j >= self.taken:
                        self.results[j] = b"D" + why.encode()
                        break
                self.cv.notify_all()

    def result(self, j: int):
        """Chunk ``j``'s ``_prepare_chunk`` result (chunks are taken in order); a worker's error raised."""
        with self.cv:
            while j not in self.results:
                self.cv.wait()
            res = self.results.pop(j)
            self.taken = j + 1
            self.cv.notify_all()
        kind, body = res[:1], memoryview(res)[1:]   # a view: slicing the bytes would copy a chunk's ~6 MB
        if kind == b"K":
            return unpack(body)
        if kind == b"E":
            _raise(body)
        raise E.DistributedError(
            f"a prepare process {bytes(body).decode()} before returning its chunk -- out of memory, or killed; nothing of "
            "this batch was written: retry, or add with processes=0 (threads)")

    def close(self, abort: bool = False) -> None:
        """Stop the workers: after their last chunk (``abort=False``: they send their projection rows,
        which this process's memo absorbs), or at once (terminated). Once: a second call does nothing."""
        with self.cv:
            if self.closed:
                return
            self.closed = self.closing = True
            self.cv.notify_all()
        if abort:
            for p in self.procs:
                if p.is_alive():
                    p.terminate()
        for t in self.threads:
            t.join()
        for p in self.procs:
            p.join(timeout=5.0)
            if p.is_alive():   # pragma: no cover - a worker that ignores its stop message
                p.terminate()
                p.join()
        for c in self.conns:
            c.close()
        if not abort:
            from .kernels import jslsh

            for r in self.rows:
                jslsh.row_cache_absorb(unpack(r))
