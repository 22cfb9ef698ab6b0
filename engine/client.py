"""``fitsketch.connect(address)``: one entry point to a hub, served or embedded.

    hub = fitsketch.connect("zoo.hub")                  # the server on zoo.hub/fitsketch.sock if it
                                                         # answers, else the hub opened embedded
    hub = fitsketch.connect("/tmp/zoo.sock")            # a Unix socket
    hub = fitsketch.connect("tcp://127.0.0.1:7707", token=secret)
    with hub:
        hub.search(df, k=5)

Like Chroma's single entry point, the caller does not care which one it got: a :class:`Client`
has the same methods, signatures and return types as :class:`fitsketch.Hub` for ``add``,
``add_sketch``, ``search``, ``explain``, ``get``, ``remove``, ``names``, ``len()``, ``in``,
``stats``, ``close`` and the context manager, plus ``ping()``. Server errors are re-raised as
the same :class:`fitsketch.FitsketchError` subclasses.

Data: numeric arrays and dicts of columns are sent as they are; a DataFrame, a pyarrow Table or
a local file path is read here and sent as columns (``remote_paths=True`` sends paths for the
server to read instead, which it does only inside its ``--allow-paths`` directories).

Connection loss: a socket timeout raises :class:`~fitsketch.errors.ConnectionLostError` (the
connection is dropped; the next call opens a new one). A connection the server closed before a
request was sent (restart, idle timeout) is reopened transparently for any operation, nothing
having been sent. A connection lost *after* a request was sent is reopened and the request
retried once only for read operations; a write raises ``ConnectionLostError`` because it may or
may not have been applied: check (``name in hub``) and decide. A Client is thread-safe but
serializes its calls on one connection; give each thread its own Client for parallel requests.
"""
from __future__ import annotations

import itertools
import logging
import os
import socket
import stat
import threading

import numpy as np

from . import errors as E
from .results import Entry, Match
from .plan import Plan, Stage
from .protocol import (
    DEFAULT_MAX_FRAME,
    MAX_FRAME_LIMIT,
    PROTOCOL_VERSION,
    READ_OPS,
    ClosedError,
    encode_data,
    encode_frame,
    error_class,
    recv_frame,
)
from .storage import CodecError as _StorageCodecError

log = logging.getLogger(__name__)

_DROP_AFTER = frozenset({"frame_too_large", "unauthorized", "busy", "connection", "protocol"})


class _Lost(Exception):
    """The connection broke after the request was (possibly) sent."""


def _parse_address(address) -> tuple[str, object]:
    if isinstance(address, os.PathLike):
        address = os.fspath(address)
    if not isinstance(address, str) or not address:
        raise E.InvalidArgumentError(f"address={address!r}: give a socket path, 'tcp://127.0.0.1:PORT' or a hub directory")
    if address.startswith("tcp://"):
        host, sep, port = address[len("tcp://"):].rstrip("/").rpartition(":")
        if not sep or not host or not port.isdigit():
            raise E.InvalidArgumentError(f"address={address!r}: expected tcp://HOST:PORT, e.g. tcp://127.0.0.1:7707")
        return "tcp", (host.strip("[]"), int(port))
    if address.startswith("unix:"):
        address = address[len("unix:"):]
    return "unix", os.path.abspath(address)


class Client:
    """A connection to ``fitsketch serve``; the methods of :class:`fitsketch.Hub` over the wire."""

    def __init__(self, address, *, timeout: float = 30.0, token: str | None = None, remote_paths: bool = False,
                 max_frame: int = MAX_FRAME_LIMIT):
        if timeout is not None and (not isinstance(timeout, (int, float)) or timeout <= 0):
            raise E.InvalidArgumentError(f"timeout={timeout!r}: expected a positive number of seconds (or None)")
        self._kind, self._addr = _parse_address(address)
        self.address = address if isinstance(address, str) else os.fspath(address)
        self.timeout = timeout
        self._token = token
        self.remote_paths = remote_paths
        self._max_in = max_frame                # largest answer accepted
        self._max_out = DEFAULT_MAX_FRAME       # the server's limit, learnt from hello
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._closed = False
        self._config = None
        self.server: dict = {}
        with self._lock:
            self._connect()

    # ------------------------------------------------------------------------ connection
    def _connect(self) -> None:
        family = socket.AF_UNIX if self._kind == "unix" else socket.AF_INET
        if self._kind == "tcp":
            try:
                family = socket.getaddrinfo(*self._addr, type=socket.SOCK_STREAM)[0][0]
            except socket.gaierror as e:
                raise E.ConnectionLostError(f"cannot resolve {self.address!r}: {e}") from None
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._addr)
        except OSError as e:
            sock.close()
            raise E.ConnectionLostError(f"cannot connect to {self.address!r}: {e.strerror or e}: is `fitsketch serve` "
                                        "running there?") from None
        try:
            rid = next(self._ids)
            hello = {"id": rid, "op": "hello", "args": {"protocol": PROTOCOL_VERSION, "token": self._token}}
            info = self._exchange(sock, "hello", rid, encode_frame(hello))
        except _Lost as e:
            sock.close()
            raise E.ConnectionLostError(f"{self.address!r} closed the connection during hello: {e}") from None
        except BaseException:
            sock.close()
            raise
        if not isinstance(info, dict) or info.get("protocol") != PROTOCOL_VERSION:
            sock.close()
            raise E.ProtocolError(f"{self.address!r} answered hello with {info!r}: not a fitsketch {PROTOCOL_VERSION} "
                                  "server")
        self.server = info
        mf = info.get("max_frame")
        self._max_out = mf if type(mf) is int and mf > 0 else DEFAULT_MAX_FRAME
        self._sock = sock

    def _drop(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def _stale(self) -> bool:
        """True when the server has closed this connection (or sent something unasked)."""
        sock = self._sock
        try:
            sock.settimeout(0.0)
            try:
                sock.recv(1, socket.MSG_PEEK)
            finally:
                sock.settimeout(self.timeout)
        except (BlockingIOError, InterruptedError):
            return False            # nothing to read: the connection is alive and in step
        except OSError:
            return True
        return True                 # end of stream, or a frame nobody asked for

    def _exchange(self, sock: socket.socket, op: str, rid: int, frame: bytes):
        try:
            try:
                sock.sendall(frame)
            except (BrokenPipeError, ConnectionResetError):
                pass        # the server closed first; it may have said why (e.g. "busy") before it did
            resp = recv_frame(sock, self._max_in)
        except socket.timeout:
            raise E.ConnectionLostError(f"{self.address!r} did not answer {op!r} within {self.timeout} s "
                                        "(connect(..., timeout=) to wait longer)") from None
        except (ClosedError, ConnectionError) as e:
            raise _Lost(str(e)) from None
        except OSError as e:
            raise _Lost(f"{type(e).__name__}: {e}") from None
        if not isinstance(resp, dict) or not isinstance(resp.get("ok"), bool):
            raise E.ProtocolError(f"{self.address!r} sent a malformed response to {op!r}: {resp!r:.200}")
        if resp["ok"]:
            if resp.get("id") != rid:
                raise E.ProtocolError(f"{self.address!r} answered request {resp.get('id')!r}, expected {rid}")
            return resp.get("result")
        err = resp.get("error") if isinstance(resp.get("error"), dict) else {}
        code, message = err.get("code"), err.get("message", "")
        exc = error_class(code)(str(message))
        exc.server_code = code
        raise exc

    def _call(self, op: str, args: dict):
        with self._lock:
            if self._closed:
                raise E.InvalidArgumentError("this client is closed: connect again with fitsketch.connect(address)")
            rid = next(self._ids)
            try:
                frame = encode_frame({"id": rid, "op": op, "args": args}, self._max_out)
            except _StorageCodecError as e:
                raise E.translate(e) from None
            fresh = False
            if self._sock is not None and self._stale():
                log.info("connection to %s was closed by the server; reconnecting", self.address)
                self._drop()
            if self._sock is None:
                self._connect()
                fresh = True
            try:
                return self._request(frame, op, rid)
            except _Lost as e:
                self._drop()
                if op not in READ_OPS or fresh:
                    raise E.ConnectionLostError(
                        f"lost the connection to {self.address!r} during {op!r} ({e}); a write may or may not have "
                        "been applied: check the hub, then call again (the next call reconnects)") from None
                log.info("connection to %s lost during %r; reconnecting and retrying once", self.address, op)
                self._connect()
                try:
                    return self._request(frame, op, rid)
                except _Lost as e2:
                    self._drop()
                    raise E.ConnectionLostError(f"lost the connection to {self.address!r} twice during {op!r}: "
                                                f"{e2}") from None

    def _request(self, frame: bytes, op: str, rid: int):
        try:
            return self._exchange(self._sock, op, rid, frame)
        except E.ConnectionLostError:      # timeout: a late answer would desynchronize the stream
            self._drop()
            raise
        except E.FitsketchError as e:
            if getattr(e, "server_code", "protocol") in _DROP_AFTER:   # local: a malformed answer
                self._drop()
            raise

    # ------------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._drop()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.address!r}, hub={self.path!r}{', closed' if self._closed else ''})"

    @property
    def path(self) -> str | None:
        """The served hub's directory (on the server's machine)."""
        return self.server.get("hub")

    @property
    def config(self):
        """The hub's :class:`fitsketch.SketchConfig` (build sketches for ``add_sketch`` with it)."""
        if self._config is None:
            from .config import SketchConfig

            self._config = SketchConfig.from_dict(self.stats()["config"])
        return self._config

    def ping(self) -> bool:
        """True if the server answers (raises ``ConnectionLostError`` otherwise)."""
        return bool(self._call("ping", {}).get("pong"))

    # ------------------------------------------------------------------------ reads
    def __len__(self) -> int:
        return int(self._call("len", {}))

    def __contains__(self, name) -> bool:
        if not isinstance(name, str):
            return False
        return bool(self._call("contains", {"name": name}))

    def names(self) -> list[str]:
        return list(self._call("names", {}))

    def get(self, name: str) -> Entry:
        return Entry(**self._call("get", {"name": name}))

    def stats(self) -> dict:
        return self._call("stats", {})

    def warm(self) -> int:
        """:meth:`fitsketch.Hub.warm` on the server: returns once every entry's profile is loaded
        there (a server warms itself as it starts; this waits for that). At 1M entries it can
        take longer than the default timeout: connect with ``timeout=`` to match."""
        return int(self._call("warm", {}))

    def search(self, data, *, k: int = 10, method: str = "auto", where: dict | None = None,
               feature_names=None, embedding=None, embedding_candidates: int = 100, **overrides) -> list[Match]:
        """Rank entries by how well their data fits ``data`` (see :meth:`fitsketch.Hub.search`)."""
        args = self._query_args(data, k, method, where, feature_names, overrides, embedding, embedding_candidates)
        return [_match(d) for d in self._call("search", args)]

    def explain(self, data, *, k: int = 10, method: str = "auto", where: dict | None = None,
                feature_names=None, embedding=None, embedding_candidates: int = 100, **overrides) -> Plan:
        """Run the query on the server and return its plan (see :meth:`fitsketch.Hub.explain`)."""
        d = self._call("explain", self._query_args(data, k, method, where, feature_names, overrides, embedding,
                                                   embedding_candidates))
        return Plan(d["method"], d["k"], [Stage(**s) for s in d["stages"]])

    def class_pool(self, data, *, where: dict | None = None, feature_names=None, **overrides) -> dict:
        """The server's share of what ``method="accuracy"`` pools (see :meth:`fitsketch.Hub.class_pool`)."""
        return self._call("class_pool", self._query_args(data, 1, "accuracy", where, feature_names, overrides))

    def _query_args(self, data, k, method, where, feature_names, overrides, embedding=None,
                    embedding_candidates=100) -> dict:
        from .sketch import Sketch

        if isinstance(data, Sketch):
            args = {"sketch": data.to_record()}
            if feature_names is not None:
                args["feature_names"] = list(feature_names)
        else:
            args = encode_data(data, feature_names, remote_paths=self.remote_paths)
        args.update(k=k, method=method, where=where)
        if embedding is not None:
            args.update(embedding=np.asarray(embedding, dtype=np.float32), embedding_candidates=embedding_candidates)
        if overrides:
            args["params"] = overrides
        return args

    def nearest(self, xq, k: int = 10, *, index: str = "auto", level: str = "sample"):
        """Cosine search over stored embeddings (see :meth:`fitsketch.Hub.nearest`)."""
        r = self._call("nearest", {"xq": np.asarray(xq, dtype=np.float32), "k": k, "index": index,
                                   "level": level})
        if level == "entry":
            if r.get("single"):
                return [_match(d) for d in r["matches"]]
            return [[_match(d) for d in ms] for ms in r["matches"]]
        return np.asarray(r["D"]), np.asarray(r["I"])

    def sample(self, sample_id: int) -> tuple[str, int]:
        name, row = self._call("sample", {"sample_id": int(sample_id)})
        return name, int(row)

    def search_logits(self, query, k: int = 10):
        """Logit-to-logit search (see :meth:`fitsketch.Hub.search_logits`)."""
        from .probelog import LogitMatch

        if isinstance(query, tuple):
            args = {"entry": query[0], "logit": int(query[1]), "k": k}
        else:
            args = {"descriptor": np.asarray(query, dtype=np.float32), "k": k}
        return [LogitMatch(**d) for d in self._call("search_logits", args)]

    # ------------------------------------------------------------------------ writes
    def add(self, name: str, data, *, metadata: dict | None = None, partition_size: int | None = None,
            feature_names=None, progress: bool = False, embedding=None) -> Entry:
        """Sketch ``data`` on the server and register it as ``name`` (``progress`` is ignored)."""
        args = {"name": name, **encode_data(data, feature_names, remote_paths=self.remote_paths),
                "metadata": metadata, "partition_size": partition_size}
        if embedding is not None:
            args["embedding"] = np.asarray(embedding)
        return Entry(**self._call("add", args))

    def add_sketches(self, items, *, batch: int = 1000) -> int:
        """``Hub.add_sketches`` over the socket. Every item is checked here first (shape, a Sketch
        built with this hub's parameters, names unique among the items), then the items go in
        ``add_sketches`` requests of at most ``batch`` entries, fewer when a request would pass the
        server's frame limit. The server checks a request whole and writes it in one transaction, so
        a refused request (a name already in the hub, say) changes nothing, but the requests before it
        stay: the error says how many entries they added. Returns the number of entries added."""
        from .sketch import Sketch
        from .storage import pack

        if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
            raise E.InvalidArgumentError(f"batch={batch!r} is not valid: expected a positive integer")
        key, recs, seen = tuple(self.config.sketch_key()), [], set()
        for i, it in enumerate(items):
            if not isinstance(it, (tuple, list)) or len(it) not in (2, 3) or not isinstance(it[0], str):
                raise E.InvalidArgumentError(f"item {i} is not (name, sketch) or (name, sketch, metadata)")
            if not isinstance(it[1], Sketch):
                raise E.InvalidArgumentError(f"item {i}: sketch must be a fitsketch Sketch, got {type(it[1]).__name__}")
            if tuple(it[1].config_key) != key:
                raise E.InvalidArgumentError(f"item {i} ({it[0]!r}): the sketch was built with other parameters than "
                                             "this hub's: build it with client.config")
            if it[0] in seen:
                raise E.EntryExistsError(f"name {it[0]!r} appears twice in the items: names are unique")
            seen.add(it[0])
            recs.append({"name": it[0], "sketch": it[1].to_record(), "metadata": it[2] if len(it) == 3 else None})
        limit = self._max_out - 1024                # room for the envelope (id, op, arg keys)
        n, chunk, size = 0, [], 0

        def send():
            nonlocal n
            try:
                n += self._call("add_sketches", {"items": chunk, "batch": len(chunk)})
            except E.FitsketchError as e:
                if not n:
                    raise
                err = type(e)(f"{e} (the {n} entries of the requests before this one were added)")
                err.server_code = getattr(e, "server_code", None)
                raise err from None

        for rec in recs:
            nbytes = len(pack(rec))
            if chunk and (len(chunk) == batch or size + nbytes > limit):
                send()
                chunk, size = [], 0
            chunk.append(rec)
            size += nbytes
        if chunk:
            send()
        return n

    def add_sketch(self, name: str, sketch, *, metadata: dict | None = None) -> Entry:
        """Register a sketch built here with ``fitsketch.sketch_data(data, config=client.config)``."""
        from .sketch import Sketch

        if not isinstance(sketch, Sketch):
            raise E.InvalidArgumentError(f"sketch must be a fitsketch Sketch, got {type(sketch).__name__}")
        return Entry(**self._call("add_sketch", {"name": name, "sketch": sketch.to_record(), "metadata": metadata}))

    def remove(self, name: str) -> None:
        self._call("remove", {"name": name})


def _match(d: dict) -> Match:
    return Match(**{**d, "features": [tuple(f) for f in d.get("features", [])]})


def connect(address, *, timeout: float = 30.0, token: str | None = None, remote_paths: bool = False):
    """A :class:`Client` for a served hub, or the embedded :class:`fitsketch.Hub`.

    ``address`` is a Unix socket path (``"unix:PATH"`` also works), ``"tcp://127.0.0.1:PORT"``
    (give ``token``), or a hub directory: if ``<hub>/fitsketch.sock`` exists and a server answers
    on it, a Client talking to it; otherwise the hub is opened (created if missing) in this
    process, as ``fitsketch.open(address)`` does. Both have the same methods.
    """
    if isinstance(address, os.PathLike):
        address = os.fspath(address)
    kw = dict(timeout=timeout, token=token, remote_paths=remote_paths)
    if isinstance(address, str) and (address.startswith("tcp://") or address.startswith("unix:")):
        return Client(address, **kw)
    if not isinstance(address, str) or not address:
        raise E.InvalidArgumentError(f"address={address!r}: give a socket path, 'tcp://127.0.0.1:PORT' or a hub directory")
    try:
        st = os.stat(address)
    except FileNotFoundError:
        st = None
    if st is not None and stat.S_ISSOCK(st.st_mode):
        return Client(address, **kw)
    if st is not None and not stat.S_ISDIR(st.st_mode):
        raise E.InvalidArgumentError(f"address={address!r} is a file, neither a socket nor a hub directory")
    if st is None and address.endswith(".sock"):
        raise E.ConnectionLostError(f"no socket at {address!r}: start the server with `fitsketch serve HUB --socket "
                                    f"{address}`")
    if st is not None:
        sock = os.path.join(address, "fitsketch.sock")
        if os.path.exists(sock):
            try:
                return Client(sock, **kw)
            except E.ConnectionLostError as e:
                log.info("no server answers on %s (%s); opening the hub embedded", sock, e)
    import fitsketch

    return fitsketch.open(address)
