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
import hmac
import logging
import os
import selectors
import signal
import socket
import sys
import threading
import time

from . import errors as E
from . import server_sockets as sockets
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
)
from .server_ops import HANDLERS  # noqa: F401 - the allow-list, also at its old import path
from .server_sockets import LOCK_NAME, SOCKET_NAME, parse_listen  # noqa: F401 - their old import path

log = logging.getLogger(__name__)

_CLOSE_AFTER = frozenset({"frame_too_large", "unauthorized", "busy", "connection"})


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
            if len(os.fsencode(self.socket_path)) > sockets.UNIX_PATH_MAX:
                raise E.InvalidArgumentError(
                    f"socket path {self.socket_path!r} is {len(os.fsencode(self.socket_path))} bytes; Unix sockets "
                    f"allow {sockets.UNIX_PATH_MAX}: pass a shorter --socket, e.g. /tmp/fitsketch-{os.getpid()}.sock")
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
            sockets.shutdown(c.sock)
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
        self._lock_fd = sockets.take_hub_lock(self.hub_path)

    def _bind(self) -> socket.socket:
        if self.listen is not None:
            s = sockets.bind_tcp(self.listen)
            self.address = s.getsockname()[:2]
            return s
        self._sock_lock_fd, self._sock_lock_path = sockets.take_socket_lock(self.socket_path)
        s, self._sock_id = sockets.bind_unix(self.socket_path)
        self.address = self.socket_path
        return s

    def _release(self) -> None:
        for s in (self._listener, self._wake_r, self._wake_w):
            if s is not None:
                with contextlib.suppress(OSError):
                    s.close()
        self._listener = self._wake_r = self._wake_w = None
        self._unlink_socket()
        if self._sock_lock_fd is not None:
            sockets.release_socket_lock(self._sock_lock_fd, self._sock_lock_path)
            self._sock_lock_fd = None
        if self.hub is not None:
            with contextlib.suppress(Exception):
                self.hub.close()
            self.hub = None
        if self._lock_fd is not None:
            sockets.release_hub_lock(self._lock_fd)
            self._lock_fd = None

    def _unlink_socket(self) -> None:
        if self._sock_id is not None:
            sockets.unlink_socket(self.socket_path, self._sock_id)
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
            sockets.shutdown(evict.sock)
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
        sockets.shutdown(sock)
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
            sockets.shutdown(sock)
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


def cmd_serve(args) -> None:
    if args.listen is None and args.token_file is not None:
        raise E.InvalidArgumentError("--token-file is for --listen HOST:PORT; the Unix socket is protected by its mode")
    if args.listen is not None and args.token_file is None:
        raise E.InvalidArgumentError("--listen needs --token-file F: TCP clients must present the secret in F")
    token = sockets.read_token(args.token_file) if args.token_file else None
    server = Server(args.hub, socket_path=args.socket, listen=args.listen, token=token, max_frame=args.max_frame,
                    allow_paths=args.allow_paths, allow_remote=args.allow_remote,
                    max_connections=args.max_connections, idle_timeout=args.idle_timeout, device=args.device,
                    warm=args.warm)
    server.start()
    print(f"fitsketch: serving {server.hub_path} on {server.url()} (pid {os.getpid()})", flush=True)
    server.serve_forever()


def main(argv=None) -> int:
    """``python -m fitsketch.server HUB [options]``: the ``serve`` command on its own, with the
    CLI's error handling (a FitsketchError is one line and status 2) but not the CLI module."""
    p = argparse.ArgumentParser(prog="python -m fitsketch.server", description="serve a hub on a Unix socket or "
                                "a loopback TCP port (the same as `fitsketch serve`)")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress and full tracebacks")
    _add_serve_arguments(p)
    try:
        args = p.parse_args(argv)
    except SystemExit as e:   # --help, or a bad argument (one line, status 2)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        cmd_serve(args)
    except E.FitsketchError as e:
        print(f"fitsketch: error [{e.code}]: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - the entry point's last line of defence: one line, no traceback
        if args.verbose:
            import traceback

            traceback.print_exc()
        print(f"fitsketch: unexpected error: {type(e).__name__}: {e} (run with -v for details)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
