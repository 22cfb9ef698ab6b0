"""``fitsketch serve HUB``: one hub behind a local socket (protocol in :mod:`fitsketch.protocol`).

    fitsketch serve zoo.hub                                   # Unix socket zoo.hub/fitsketch.sock
    fitsketch serve zoo.hub --socket /tmp/zoo.sock
    fitsketch serve zoo.hub --listen 127.0.0.1:7707 --token-file ~/.fitsketch-token
    python -m fitsketch.server zoo.hub ...                    # the same, without the CLI

Security. The Unix socket is created with mode 0600 (only the owner can connect). TCP listens
on loopback only (``--allow-remote`` to bind another address: there is no TLS, the token
travels in clear) and every connection must present the token from ``--token-file`` in its
hello. The server never reads a file named by a client unless started with
``--allow-paths DIR`` and the path resolves inside such a directory. Requests reach the hub
only through the allow-list :data:`HANDLERS`; values are msgpack (never pickle).

Hostile clients. Until its hello (and token) succeed, a connection may send frames of at most
64 KiB decoding to at most 1,024 values, and must say hello within ``auth_timeout`` (5 s) of
connecting or is closed; such connections share ``max_pending`` (16) slots of their own, the
oldest dropped for a newcomer, so connections that never authenticate cannot keep out a client
that does. Afterwards a frame is read as it arrives (never allocated from its header) and
decodes to at most ``protocol.MAX_ITEMS`` values. The socket path is locked (``<socket>.lock``,
an exclusive ``flock`` held while the server lives): a second server on it gets
``SocketInUseError``, even while the first is stopped with its backlog full.

Concurrency. One thread per connection, at most ``max_connections`` authenticated ones (over
the cap: an error frame with code ``"busy"``, then close) plus ``max_pending`` before hello. One :class:`fitsketch.Hub` is shared: reads run in
parallel (LMDB read transactions), writes are serialized by the hub's store lock. A connection
idle for ``idle_timeout`` seconds is closed. One server per hub: an exclusive ``flock`` on
``<hub>/server.lock``.

Shutdown (``stop()``, SIGTERM, SIGINT): stop accepting and remove the socket file, close idle
connections, let requests in flight finish (up to ``shutdown_grace`` seconds), close the hub.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import hmac
import ipaddress
import logging
import os
import selectors
import signal
import socket
import stat
import sys
import threading
import time


from . import errors as E
from .protocol import (
    DEFAULT_MAX_FRAME,
    MAX_FRAME_LIMIT,
    MAX_ITEMS,
    OPS,
    PREAUTH_MAX_FRAME,
    PREAUTH_MAX_ITEMS,
    PROTOCOL_VERSION,
    ClosedError,
    InternalError,
    UnauthorizedError,
    check_args,
    encode_frame,
    error_body,
    ok_body,
    recv_frame,
    resolve_path,
    sketch_from_wire,
)

log = logging.getLogger(__name__)

SOCKET_NAME = "fitsketch.sock"
LOCK_NAME = "server.lock"
_UNIX_PATH_MAX = 107          # sun_path is 108 bytes including the NUL
_CLOSE_AFTER = frozenset({"frame_too_large", "unauthorized", "busy", "connection"})


# ------------------------------------------------------------------------------- operations
def _data(server: "Server", args: dict):
    data = args["data"]
    if isinstance(data, str):
        data = resolve_path(data, server.allow_paths)
    return data


def _query(server: "Server", args: dict) -> dict:
    if ("data" in args) == ("sketch" in args):
        raise E.InvalidArgumentError("search: give exactly one of 'data' or 'sketch'")
    q = sketch_from_wire(args["sketch"]) if "sketch" in args else _data(server, args)
    kw_names = ("k", "method", "where", "feature_names", "embedding", "embedding_candidates")
    kw = {k: args[k] for k in kw_names if k in args}
    params = args.get("params", {})
    if not all(isinstance(k, str) and k not in ("data", *kw_names) for k in params):
        raise E.InvalidArgumentError(f"search: params must map per-query parameter names (str, none of "
                                     f"{['data', *kw_names]}) to values, got keys {sorted(map(str, params))}")
    return {"data": q, **kw, **params}


def _op_ping(server, hub, args):
    return {"pong": True}


def _op_warm(server, hub, args):
    return hub.warm()     # waits for the start-up warm if it still runs (the profile index's lock)


def _op_stats(server, hub, args):
    return hub.stats()


def _op_add(server, hub, args):
    kw = {k: args[k] for k in ("metadata", "partition_size", "feature_names", "embedding") if k in args}
    return hub.add(args["name"], _data(server, args), **kw).to_dict()


def _wire_sketch(hub, rec):
    sk = sketch_from_wire(rec)
    if sk.signatures.shape[1] != hub.config.num_perm:
        raise E.InvalidArgumentError(f"sketch record is malformed: signatures have {sk.signatures.shape[1]} "
                                     f"columns, this hub's num_perm is {hub.config.num_perm}")
    return sk


def _op_add_sketch(server, hub, args):
    return hub.add_sketch(args["name"], _wire_sketch(hub, args["sketch"]), metadata=args.get("metadata")).to_dict()


def _op_add_sketches(server, hub, args):
    items = []
    for i, it in enumerate(args["items"]):
        if (not isinstance(it, dict) or set(it) - {"name", "sketch", "metadata"} or not isinstance(it.get("name"), str)
                or not isinstance(it.get("sketch"), dict) or not isinstance(it.get("metadata"), (dict, type(None)))):
            raise E.InvalidArgumentError(f"add_sketches: item {i} is not a map {{name: str, sketch: map, metadata?: "
                                         "map | null}}")
        try:
            sk = _wire_sketch(hub, it["sketch"])
        except E.InvalidArgumentError as e:
            raise E.InvalidArgumentError(f"add_sketches: item {i} ({it['name']!r}): {e}") from None
        items.append((it["name"], sk, it.get("metadata")))
    return hub.add_sketches(items, batch=args.get("batch", 1000))


def _op_search(server, hub, args):
    q = _query(server, args)
    return [m.to_dict() for m in hub.search(q.pop("data"), **q)]


def _op_explain(server, hub, args):
    q = _query(server, args)
    return hub.explain(q.pop("data"), **q).to_dict()


def _op_class_pool(server, hub, args):
    q = _query(server, args)
    q.pop("k", None)
    q.pop("method", None)
    return hub.class_pool(q.pop("data"), **q)


def _op_get(server, hub, args):
    return hub.get(args["name"]).to_dict()


def _op_remove(server, hub, args):
    hub.remove(args["name"])
    return None


def _op_names(server, hub, args):
    return hub.names()


def _op_len(server, hub, args):
    return len(hub)


def _op_contains(server, hub, args):
    return args["name"] in hub


def _op_nearest(server, hub, args):
    kw = {k: args[k] for k in ("k", "index", "level") if k in args}
    out = hub.nearest(args["xq"], **kw)
    if kw.get("level", "sample") == "entry":
        if out and isinstance(out[0], list):
            return {"matches": [[m.to_dict() for m in ms] for ms in out]}
        return {"matches": [m.to_dict() for m in out], "single": True}
    D, I = out
    return {"D": D, "I": I}


def _op_sample(server, hub, args):
    return list(hub.sample(args["sample_id"]))


def _op_search_logits(server, hub, args):
    if "descriptor" in args:
        query = args["descriptor"]
    elif "entry" in args and "logit" in args:
        query = (args["entry"], args["logit"])
    else:
        raise E.InvalidArgumentError("search_logits needs entry + logit, or a descriptor")
    return [dict(m.__dict__) for m in hub.search_logits(query, k=args.get("k", 10))]


# The allow-list: an op not in here does not exist. Never getattr(hub, op).
HANDLERS = {
    "ping": _op_ping,
    "stats": _op_stats,
    "add": _op_add,
    "add_sketch": _op_add_sketch,
    "add_sketches": _op_add_sketches,
    "search": _op_search,
    "explain": _op_explain,
    "get": _op_get,
    "remove": _op_remove,
    "names": _op_names,
    "len": _op_len,
    "contains": _op_contains,
    "nearest": _op_nearest,
    "sample": _op_sample,
    "search_logits": _op_search_logits,
    "warm": _op_warm,
    "class_pool": _op_class_pool,
}
if tuple(HANDLERS) != OPS:  # pragma: no cover - keep protocol.OPS and this allow-list in step
    raise ImportError(f"server HANDLERS {tuple(HANDLERS)} differ from protocol.OPS {OPS}")


def _flock_or_holder(fd: int) -> str | None:
    """Take an exclusive non-blocking ``flock`` on ``fd``: None when taken; when another process
    holds it, ``fd`` is closed and the text naming the holder (`` (pid N)`` when it wrote its pid,
    else empty) is returned. Other OS errors close ``fd`` and propagate."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return None
    except OSError as e:
        other = ""
        with contextlib.suppress(OSError, ValueError):
            other = f" (pid {int(os.pread(fd, 32, 0).decode().strip())})"
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return other
        raise


# ------------------------------------------------------------------------------ addresses
def parse_listen(listen, allow_remote: bool = False) -> tuple[str, int]:
    """``"HOST:PORT"`` or ``(host, port)`` -> (host, port); refuses non-loopback hosts."""
    if isinstance(listen, str):
        host, sep, port = listen.rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit():
            raise E.InvalidArgumentError(f"--listen {listen!r} is not HOST:PORT, e.g. 127.0.0.1:7707")
        listen = (host, int(port))
    if not (isinstance(listen, tuple) and len(listen) == 2 and isinstance(listen[1], int)
            and 0 <= listen[1] < 65536):
        raise E.InvalidArgumentError(f"listen={listen!r} is not (host, port), e.g. ('127.0.0.1', 7707)")
    host, port = listen
    if not allow_remote:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as e:
            raise E.InvalidArgumentError(f"--listen host {host!r} cannot be resolved: {e}") from None
        addrs = {ipaddress.ip_address(i[4][0].split("%")[0]) for i in infos}
        if not addrs or not all(a.is_loopback for a in addrs):
            raise E.InvalidArgumentError(
                f"--listen host {host!r} is not a loopback address ({sorted(map(str, addrs))}): the protocol has "
                "no encryption; use 127.0.0.1, or pass --allow-remote if you really mean it")
    return host, port


class _Conn:
    __slots__ = ("sock", "peer", "busy", "thread", "authed", "since")

    def __init__(self, sock, peer):
        self.sock = sock
        self.peer = peer
        self.busy = False
        self.thread = None
        self.authed = False               # hello (and its token) succeeded
        self.since = time.monotonic()


class Server:
    """A hub served over a Unix socket (default) or loopback TCP with a token.

    ``start()`` returns once the socket listens (serving in background threads);
    ``serve_forever()`` blocks until ``stop()`` or (in the main thread) SIGTERM / SIGINT.
    """

    def __init__(self, hub_path, socket_path=None, listen=None, token=None, max_frame: int = DEFAULT_MAX_FRAME,
                 allow_paths=None, *, allow_remote: bool = False, max_connections: int = 64,
                 idle_timeout: float = 300.0, shutdown_grace: float = 10.0, device: str = "auto",
                 create: bool = True, warm: bool = True, auth_timeout: float = 5.0, max_pending: int = 16):
        if socket_path is not None and listen is not None:
            raise E.InvalidArgumentError("give socket_path or listen, not both")
        if type(max_frame) is not int or not 16 <= max_frame <= MAX_FRAME_LIMIT:
            raise E.InvalidArgumentError(f"max_frame={max_frame!r} is not valid: expected an int in "
                                         f"[16, {MAX_FRAME_LIMIT}] (bytes)")
        if type(max_connections) is not int or max_connections < 1:
            raise E.InvalidArgumentError(f"max_connections={max_connections!r}: expected a positive int")
        if type(max_pending) is not int or max_pending < 1:
            raise E.InvalidArgumentError(f"max_pending={max_pending!r}: expected a positive int")
        if not isinstance(auth_timeout, (int, float)) or not 0 < auth_timeout <= 300:
            raise E.InvalidArgumentError(f"auth_timeout={auth_timeout!r}: expected seconds in (0, 300]")
        self.hub_path = os.path.abspath(os.fspath(hub_path))
        self.listen = None
        self.socket_path = None
        if listen is not None:
            self.listen = parse_listen(listen, allow_remote)
            if not isinstance(token, str) or not token:
                raise E.InvalidArgumentError("TCP needs a token: give token= (or --token-file F with a secret in it)")
        else:
            self.socket_path = os.path.abspath(os.fspath(socket_path or os.path.join(self.hub_path, SOCKET_NAME)))
            if len(os.fsencode(self.socket_path)) > _UNIX_PATH_MAX:
                raise E.InvalidArgumentError(
                    f"socket path {self.socket_path!r} is {len(os.fsencode(self.socket_path))} bytes; Unix sockets "
                    f"allow {_UNIX_PATH_MAX}: pass a shorter --socket, e.g. /tmp/fitsketch-{os.getpid()}.sock")
        self.token = token
        self.max_frame = max_frame
        self.allow_paths = [os.path.realpath(os.fspath(p)) for p in (allow_paths or [])]
        for p in self.allow_paths:
            if not os.path.isdir(p):
                raise E.InvalidArgumentError(f"--allow-paths {p!r} is not a directory")
        self.max_connections = max_connections
        self.max_pending = max_pending
        self.auth_timeout = float(auth_timeout)
        self.idle_timeout = idle_timeout
        self.shutdown_grace = shutdown_grace
        self.device = device
        self.create = create
        self.warm = warm
        self.warmed = threading.Event()     # set once the start-up warm (hub.warm) is over, or skipped
        self._warm_thread = None
        self.hub = None
        self.address = None            # socket path, or (host, port) actually bound
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._conns: set[_Conn] = set()
        self._stopping = False
        self._started = False
        self._stopped = threading.Event()
        self._stop_requested = threading.Event()
        self._lock_fd = None
        self._sock_lock_fd = None
        self._sock_lock_path = None
        self._listener = None
        self._sock_id = None
        self._wake_r = self._wake_w = None
        self._accept_thread = None

    # ------------------------------------------------------------------------ lifecycle
    def start(self) -> "Server":
        """Open the hub, take the server lock, listen; return once connections are accepted."""
        if self._started:
            raise E.InvalidArgumentError("this Server was started already: create a new one")
        self._started = True
        import fitsketch

        try:
            self.hub = fitsketch.open(self.hub_path, create=self.create, device=self.device)
            self._take_lock()
            self._listener = self._bind()
            self._wake_r, self._wake_w = socket.socketpair()
        except BaseException:
            self._release()
            raise
        self._accept_thread = threading.Thread(target=self._accept_loop, name="fitsketch-accept", daemon=True)
        self._accept_thread.start()
        if self.warm:
            self._warm_thread = threading.Thread(target=self._warm, name="fitsketch-warm", daemon=True)
            self._warm_thread.start()
        else:
            self.warmed.set()
        log.info("serving hub %s on %s (pid %d)", self.hub_path, self.url(), os.getpid())
        return self

    def _warm(self) -> None:
        """Load the hub's profiles and profile index while the socket already serves, so the first
        search does not pay for it (a query arriving meanwhile waits on the index, as it would)."""
        t0 = time.perf_counter()
        try:
            n = self.hub.warm()
        except Exception as e:     # not fatal: the first search loads them and reports the error
            log.warning("warming hub %s failed (%s: %s); the first search will load the profiles",
                        self.hub_path, type(e).__name__, e)
        else:
            log.info("hub %s warm: %d entry profiles in memory in %.1f s", self.hub_path, n,
                     time.perf_counter() - t0)
        finally:
            self.warmed.set()

    def url(self) -> str:
        """The address to give :func:`fitsketch.connect`."""
        if self.socket_path:
            return self.address
        host, port = self.address
        return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"

    def serve_forever(self, handle_signals: bool | None = None) -> None:
        """Serve until ``stop()`` (or SIGTERM / SIGINT when run in the main thread)."""
        if not self._started:
            self.start()
        main = threading.current_thread() is threading.main_thread()
        handle_signals = main if handle_signals is None else handle_signals and main
        old = {}
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                old[sig] = signal.signal(sig, self._on_signal)
        try:
            while not self._stop_requested.wait(0.5) and not self._stopped.is_set():
                pass
        finally:
            self.stop()
            for sig, h in old.items():
                signal.signal(sig, h)

    def _on_signal(self, signum, frame) -> None:
        log.info("signal %d: shutting down", signum)
        self._stop_requested.set()

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting, remove the socket, finish requests in flight (bounded), close the hub."""
        grace = self.shutdown_grace if grace is None else grace
        with self._lock:
            if self._stopping:
                already = True
            else:
                already = False
                self._stopping = True
                idle = [c for c in self._conns if not c.busy]
        if already:
            self._stopped.wait(grace + 5)
            return
        self._stop_requested.set()
        if self._wake_w is not None:
            with contextlib.suppress(OSError):
                self._wake_w.send(b"x")
        if self._accept_thread is not None:
            self._accept_thread.join(5)
        for c in idle:      # wakes their recv(); they can still say "shutting down" to a late request
            with contextlib.suppress(OSError):
                c.sock.shutdown(socket.SHUT_RD)
        with self._idle:
            self._idle.wait_for(lambda: not self._conns, timeout=grace)    # requests in flight finish
            left = list(self._conns)
        for c in left:
            _shutdown(c.sock)
        for c in left:
            if c.thread is not None and c.thread is not threading.current_thread():
                c.thread.join(2)
        busy = [c for c in left if c.thread is not None and c.thread.is_alive()]
        if self._warm_thread is not None:     # loading profiles reads the hub: do not close it underneath
            self._warm_thread.join(grace)
            if self._warm_thread.is_alive():
                busy.append(self._warm_thread)
        if busy:
            log.warning("%d request(s) or the start-up warm still running after %.1f s; leaving the hub open "
                        "(LMDB keeps it consistent)", len(busy), grace)
            self.hub = None
        self._release()
        self._stopped.set()
        log.info("server on hub %s stopped", self.hub_path)

    def __enter__(self) -> "Server":
        if not self._started:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------------ resources
    def _take_lock(self) -> None:
        path = os.path.join(self.hub_path, LOCK_NAME)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        other = _flock_or_holder(fd)
        if other is not None:
            raise E.HubBusyError(
                f"another fitsketch server{other} already serves hub at {self.hub_path}: stop it, or talk to it "
                f"with fitsketch.connect({self.hub_path!r})")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _bind(self) -> socket.socket:
        if self.listen is not None:
            host, port = self.listen
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
            s = socket.socket(family, socket.SOCK_STREAM)
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((host, port))
                s.listen(128)
            except OSError as e:
                s.close()
                raise E.HubBusyError(f"cannot listen on {host}:{port}: {e.strerror}: choose another port") from None
            self.address = s.getsockname()[:2]
            return s
        path = self.socket_path
        self._take_socket_lock(path)
        self._clear_stale_socket(path)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.bind(path)
            os.chmod(path, 0o600)          # before listen(): nobody can connect in between
            st = os.stat(path)
            self._sock_id = (st.st_dev, st.st_ino)
            s.listen(128)
        except OSError as e:
            s.close()
            raise E.HubBusyError(f"cannot listen on {path}: {e.strerror}") from None
        self.address = path
        return s

    def _take_socket_lock(self, path: str) -> None:
        """An exclusive ``flock`` on ``<socket>.lock``, held while this server lives: a second server
        on the same socket path is refused however the first one is doing (even stopped with its
        backlog full, when a connect() probe would time out and call the socket stale)."""
        lock_path = path + ".lock"
        while True:
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as e:
                raise E.HubBusyError(f"cannot listen on {path}: cannot create its lock file {lock_path}: "
                                     f"{e.strerror}") from None
            other = _flock_or_holder(fd)
            if other is not None:
                raise E.SocketInUseError(
                    f"socket {path!r} is in use by another fitsketch server{other} (it holds {lock_path}): "
                    "choose another --socket, or stop that server")
            try:        # the lock file may have been removed by the server that held it, since we opened it
                same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._sock_lock_fd, self._sock_lock_path = fd, lock_path

    @staticmethod
    def _clear_stale_socket(path: str) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise E.InvalidArgumentError(f"socket path {path!r} exists and is not a socket: remove it or choose another")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError:
            log.info("removing stale socket %s", path)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return
        finally:
            probe.close()
        raise E.HubBusyError(f"socket {path!r} is in use by another server: choose another --socket")

    def _release(self) -> None:
        for s in (self._listener, self._wake_r, self._wake_w):
            if s is not None:
                with contextlib.suppress(OSError):
                    s.close()
        self._listener = self._wake_r = self._wake_w = None
        self._unlink_socket()
        if self._sock_lock_fd is not None:     # removed while still held: see _take_socket_lock
            with contextlib.suppress(OSError):
                os.unlink(self._sock_lock_path)
            os.close(self._sock_lock_fd)
            self._sock_lock_fd = None
        if self.hub is not None:
            with contextlib.suppress(Exception):
                self.hub.close()
            self.hub = None
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def _unlink_socket(self) -> None:
        if self._sock_id is None:
            return
        with contextlib.suppress(OSError):
            st = os.lstat(self.socket_path)
            if (st.st_dev, st.st_ino) == self._sock_id:   # still ours, not a newer server's
                os.unlink(self.socket_path)
        self._sock_id = None

    # ------------------------------------------------------------------------ serving
    def _accept_loop(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ)
        sel.register(self._wake_r, selectors.EVENT_READ)
        try:
            while not self._stopping:
                for key, _ in sel.select():
                    if key.fileobj is self._wake_r or self._stopping:
                        return
                    try:
                        sock, peer = self._listener.accept()
                    except OSError as e:
                        log.warning("accept failed: %s", e)
                        continue
                    self._admit(sock, peer)
        finally:
            sel.close()
            with contextlib.suppress(OSError):
                self._listener.close()
            self._unlink_socket()

    def _admit(self, sock: socket.socket, peer) -> None:
        """Authenticated connections hold up to ``max_connections`` slots; connections that have not
        said hello yet share ``max_pending`` others (the oldest is dropped for a newcomer), so
        connections that never authenticate cannot keep a client with the token out."""
        evict = None
        with self._lock:
            full = sum(c.authed for c in self._conns) >= self.max_connections
            if not full and not self._stopping:
                pending = sorted((c for c in self._conns if not c.authed), key=lambda c: c.since)
                if len(pending) >= self.max_pending:
                    evict = pending[0]
                    self._conns.discard(evict)
                conn = _Conn(sock, peer)
                self._conns.add(conn)
                conn.thread = threading.Thread(target=self._serve_conn, args=(conn,), daemon=True,
                                               name=f"fitsketch-conn-{sock.fileno()}")
                conn.thread.start()
        if evict is not None:       # its thread sees the end of stream and cleans up
            log.info("dropping the oldest connection that has not said hello: %d are waiting (max_pending)",
                     self.max_pending)
            _shutdown(evict.sock)
        if not full and not self._stopping:
            return
        log.warning("refusing a connection: %d connections open (max %d)", len(self._conns), self.max_connections)
        self._reply_and_close(sock, error_body(None, E.HubBusyError(
            f"the server has its maximum of {self.max_connections} connections open: retry later, or close "
            "idle clients")))

    def _reply_and_close(self, sock, body) -> None:
        with contextlib.suppress(OSError):
            sock.settimeout(1.0)
            sock.sendall(encode_frame(body))
        _shutdown(sock)
        sock.close()

    def _serve_conn(self, conn: _Conn) -> None:
        sock = conn.sock
        hello = False
        try:
            while True:
                try:
                    if conn.authed:
                        sock.settimeout(self.idle_timeout)
                        req = recv_frame(sock, self.max_frame, max_items=MAX_ITEMS)
                    else:      # small frames, few values, a deadline: nothing is sized from a stranger's header
                        req = recv_frame(sock, min(PREAUTH_MAX_FRAME, self.max_frame),
                                         deadline=conn.since + self.auth_timeout,
                                         max_items=PREAUTH_MAX_ITEMS)
                except socket.timeout:
                    self._send(sock, error_body(None, E.ConnectionLostError(
                        f"connection idle for {self.idle_timeout:g} s: closed by the server (reconnect)" if conn.authed
                        else f"no hello within {self.auth_timeout:g} s of connecting: closed by the server")))
                    return
                except (ClosedError, OSError):
                    if self._stopping:      # woken by stop(): a request sent just now gets an answer
                        self._send(sock, error_body(None, E.ConnectionLostError(
                            "the server is shutting down: reconnect when it is back")))
                    return
                except E.FrameTooLargeError as e:
                    self._send(sock, error_body(None, e))
                    return
                except E.ProtocolError as e:
                    self._send(sock, error_body(None, e))
                    if not hello:
                        return
                    continue
                with self._lock:
                    if self._stopping:
                        stopping = True
                    else:
                        stopping = False
                        conn.busy = True
                if stopping:
                    self._send(sock, error_body(_req_id(req), E.ConnectionLostError(
                        "the server is shutting down: reconnect when it is back")))
                    return
                try:
                    body, hello, close = self._respond(req, hello)
                    if hello and not conn.authed:
                        close = self._promote(conn, body) or close
                    if not self._send(sock, body):
                        return
                finally:
                    with self._idle:
                        conn.busy = False
                        self._idle.notify_all()
                if close or self._stopping:
                    return
        finally:
            _shutdown(sock)
            sock.close()
            with self._lock:
                self._conns.discard(conn)
                self._idle.notify_all()

    def _promote(self, conn: _Conn, body: dict) -> bool:
        """Move a connection whose hello succeeded to an authenticated slot; True (and ``body``
        turned into a "busy" error) when they are all taken."""
        with self._lock:
            if conn in self._conns and sum(c.authed for c in self._conns) < self.max_connections:
                conn.authed = True
                return False
        err = error_body(body.get("id"), E.HubBusyError(
            f"the server has its maximum of {self.max_connections} connections open: retry later, or close "
            "idle clients"))
        body.clear()
        body.update(err)
        return True

    def _send(self, sock, body) -> bool:
        """Send one response; an answer too large or not encodable becomes an error frame."""
        rid = body.get("id")
        try:
            frame = encode_frame(body, self.max_frame)
        except E.FrameTooLargeError:
            frame = encode_frame(error_body(rid, E.FrameTooLargeError(
                f"the answer is over this server's --max-frame of {self.max_frame} bytes: ask for less "
                "(smaller k) or restart the server with a larger --max-frame")))
        except Exception as e:  # noqa: BLE001 - a result msgpack cannot carry
            log.exception("cannot encode the response to request %r", rid)
            frame = encode_frame(error_body(rid, InternalError(f"the answer cannot be encoded: {e}")))
        try:
            sock.sendall(frame)
            return True
        except OSError:
            return False

    def _respond(self, req, hello: bool) -> tuple[dict, bool, bool]:
        """(response body, hello done, close the connection after sending)."""
        rid = _req_id(req)
        try:
            if not isinstance(req, dict):
                raise E.ProtocolError(f"a request must be a map {{id, op, args}}, got {type(req).__name__}")
            op, args = req.get("op"), req.get("args", {})
            if not isinstance(op, str):
                raise E.ProtocolError(f"request 'op' must be a str, got {type(op).__name__}")
            if rid is None and "id" in req:
                raise E.ProtocolError(f"request 'id' must be an int, got {type(req['id']).__name__}")
            if op == "hello":
                return ok_body(rid, self._hello(args)), True, False
            if not hello:
                raise E.ProtocolError(f"the first request must be 'hello' with protocol {PROTOCOL_VERSION}, got {op!r}")
            handler = HANDLERS.get(op)
            if handler is None:
                raise E.ProtocolError(f"unknown op {op!r}: this server allows {', '.join(OPS)}")
            hub = self.hub
            if hub is None:
                raise E.ConnectionLostError("the server is shutting down: reconnect when it is back")
            result = handler(self, hub, check_args(op, args))
            return ok_body(rid, result), hello, False
        except E.FitsketchError as e:
            code = e.code
            return error_body(rid, e), hello, code in _CLOSE_AFTER or not hello
        except Exception as e:  # noqa: BLE001 - answer, log, keep serving
            t = E.translate(e)
            if not isinstance(t, E.FitsketchError):
                log.exception("unexpected error in request %r", rid)
                return error_body(rid, InternalError(f"{type(e).__name__}: {e}")), hello, False
            return error_body(rid, t), hello, False

    def _hello(self, args) -> dict:
        import fitsketch

        if not isinstance(args, dict):
            raise E.ProtocolError("hello: args must be a map {protocol, token}")
        version = args.get("protocol")
        if version != PROTOCOL_VERSION or isinstance(version, bool):
            raise E.ProtocolError(f"hello: protocol {version!r} is not supported: this server speaks "
                                  f"{PROTOCOL_VERSION}; use a matching fitsketch")
        if self.token is not None:
            token = args.get("token")
            if not isinstance(token, str) or not hmac.compare_digest(token.encode("utf-8"), self.token.encode("utf-8")):
                raise UnauthorizedError("hello: missing or wrong token: pass token= to fitsketch.connect "
                                        "(the secret in the server's --token-file)")
        return {"protocol": PROTOCOL_VERSION, "fitsketch": fitsketch.__version__, "hub": self.hub_path,
                "max_frame": self.max_frame}


def _req_id(req):
    if isinstance(req, dict):
        rid = req.get("id")
        if type(rid) is int:
            return rid
    return None


def _shutdown(sock) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


# ------------------------------------------------------------------------------------ CLI
def _add_serve_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("hub", help="the hub directory (created if missing)")
    where = s.add_mutually_exclusive_group()
    where.add_argument("--socket", metavar="PATH", help=f"Unix socket path (default: HUB/{SOCKET_NAME})")
    where.add_argument("--listen", metavar="HOST:PORT", help="loopback TCP address instead; needs --token-file")
    s.add_argument("--token-file", metavar="F", help="file holding the secret TCP clients must send")
    s.add_argument("--max-frame", type=int, default=DEFAULT_MAX_FRAME, metavar="BYTES",
                   help=f"largest request or answer in bytes (default {DEFAULT_MAX_FRAME})")
    s.add_argument("--allow-remote", action="store_true", help="allow --listen on a non-loopback address")
    s.add_argument("--allow-paths", action="append", metavar="DIR",
                   help="let clients name data files inside DIR (repeatable); by default no path is read")
    s.add_argument("--max-connections", type=int, default=64)
    s.add_argument("--idle-timeout", type=float, default=300.0, metavar="SECONDS")
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    s.add_argument("--no-warm", dest="warm", action="store_false",
                   help="do not load the entry profiles at start (by default a background thread does, so the "
                        "first search of a big hub is not the slow one)")
    s.set_defaults(fn=cmd_serve)


def add_serve_parser(sub) -> argparse.ArgumentParser:
    """Add ``serve`` to the CLI's subparsers (``fitsketch serve HUB ...``)."""
    s = sub.add_parser("serve", help="serve a hub on a Unix socket or a loopback TCP port")
    _add_serve_arguments(s)
    return s


def _read_token(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
        mode = os.stat(path).st_mode
    except OSError as e:
        raise E.InvalidArgumentError(f"--token-file {path!r} cannot be read: {e.strerror}") from None
    if not token:
        raise E.InvalidArgumentError(f"--token-file {path!r} is empty: put a long random secret in it, e.g. "
                                     "python -c 'import secrets; print(secrets.token_urlsafe(32))'")
    if mode & 0o077:
        log.warning("--token-file %s is readable by other users (mode %o): chmod 600 it", path, mode & 0o777)
    return token


def cmd_serve(args) -> None:
    if args.listen is None and args.token_file is not None:
        raise E.InvalidArgumentError("--token-file is for --listen HOST:PORT; the Unix socket is protected by its mode")
    if args.listen is not None and args.token_file is None:
        raise E.InvalidArgumentError("--listen needs --token-file F: TCP clients must present the secret in F")
    token = _read_token(args.token_file) if args.token_file else None
    server = Server(args.hub, socket_path=args.socket, listen=args.listen, token=token, max_frame=args.max_frame,
                    allow_paths=args.allow_paths, allow_remote=args.allow_remote,
                    max_connections=args.max_connections, idle_timeout=args.idle_timeout, device=args.device,
                    warm=args.warm)
    server.start()
    print(f"fitsketch: serving {server.hub_path} on {server.url()} (pid {os.getpid()})", flush=True)
    server.serve_forever()


def main(argv=None) -> int:
    """``python -m fitsketch.server HUB [options]``: the ``serve`` command on its own (the CLI's
    ``fitsketch serve``, with the same error handling)."""
    from .cli import main as cli_main

    argv = list(sys.argv[1:] if argv is None else argv)
    flags = [a for a in argv if a in ("-v", "--verbose")]
    return cli_main(flags[:1] + ["serve"] + [a for a in argv if a not in ("-v", "--verbose")])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
