"""The fitsketch socket protocol, version 1: framing, requests, responses, data on the wire.

Transport. A Unix domain socket (default ``<hub>/fitsketch.sock``, mode 0600: the file
permissions are the access control) or a loopback TCP port (a token is required). Both carry
the same frames.

Frames. Every message is one frame: a 4-byte big-endian unsigned length ``n`` followed by ``n``
bytes of msgpack body, encoded and decoded only by :func:`fitsketch.storage.pack` /
:func:`fitsketch.storage.unpack` (plain msgpack; a NumPy array travels as extension type 1
holding ``[dtype.str, shape, raw bytes]``; never pickle). The receiver checks ``n`` against its
maximum frame size (default 64 MiB, ``--max-frame``) *before* reading the body; an oversize
frame gets an error frame with code ``"frame_too_large"`` and the connection is closed (the
stream cannot be resynchronized without reading the body). The body is read as it arrives (a
buffer never grows past the bytes received) and decoded under msgpack's ``max_*_len`` limits
and a count of values (``MAX_ITEMS``); until hello succeeds a frame is at most 64 KiB
(``PREAUTH_MAX_FRAME``) of at most 1,024 values.

Requests and responses (one outstanding request per connection, answered in order)::

    request  {"id": int, "op": str, "args": {str: value}}
    success  {"id": int, "ok": true,  "result": value}
    failure  {"id": int, "ok": false, "error": {"code": str, "message": str}}

``code`` is the stable code of a :class:`fitsketch.FitsketchError` subclass
(``fitsketch.errors.BY_CODE[code]``); the client re-raises that class. ``id`` echoes the
request's id (``null`` when the request was too malformed to have one).

Hello. The first request on every connection must be ``op "hello"`` with
``{"protocol": 1, "token": str | null}``; the answer is
``{"protocol": 1, "fitsketch": version, "hub": path, "max_frame": int}``. A wrong protocol
version, a request before hello, or (on TCP) a missing or wrong token gets an error frame
(``"protocol"`` or ``"unauthorized"``) and the connection is closed. Tokens are compared in
constant time (``hmac.compare_digest``).

Operations (an explicit allow-list; nothing else is reachable). Arguments are keyword
arguments of the :class:`fitsketch.Hub` method of the same name::

    op           args                                                   result
    ping         {}                                                     {"pong": true}
    stats        {}                                                     Hub.stats() dict
    add          name, data, metadata?, partition_size?, feature_names?, Entry.to_dict()
                 embedding? (models and autoencoder training stay embedded-only)
    add_sketch   name, sketch (Sketch.to_record() map), metadata?       Entry.to_dict()
    add_sketches items ([{name, sketch, metadata?}, ...]), batch?           int (entries added): Hub.add_sketches,
                 every item checked before any is written, ``batch`` entries per transaction
    search       data | sketch, k?, method?, where?, feature_names?,    [Match.to_dict(), ...]
                 params? (per-query overrides, e.g. feature_threshold,
                 coverage_space), embedding?, embedding_candidates?
    explain      same as search                                          Plan.to_dict()
    get          name                                                   Entry.to_dict()
    remove       name                                                   null
    names        {}                                                     [str, ...]
    len          {}                                                     int
    contains     name                                                   bool
    nearest      xq (ndarray), k?, index?, level?                       {"D", "I"} | [[Match.to_dict()]]
    sample       sample_id                                              [entry name, row]
    search_logits entry + logit | descriptor (ndarray), k?              [LogitMatch as a map, ...]
    warm         {}                                                     int: Hub.warm(), profiles in memory

``data`` on the wire is one of

* a map of columns ``{name: list | ndarray}`` (what a pandas DataFrame becomes);
* a 2-D (or N-D image) NumPy array of a numeric dtype, with ``feature_names`` optional;
* a path string. The server reads a path only when it was started with ``--allow-paths DIR``
  and the path is absolute and resolves (symlinks followed) inside one of those directories;
  otherwise the request fails with ``"invalid_argument"``. :class:`fitsketch.client.Client`
  therefore reads local files itself and sends their columns, unless created with
  ``remote_paths=True``.

Unknown ops and argument names, and arguments of the wrong type, fail with ``"protocol"`` /
``"invalid_argument"`` and the connection stays open. Errors the server did not expect are
answered with code ``"internal"`` (logged with a traceback on the server).
"""
from __future__ import annotations

import logging
import os
import socket
import struct
import time

import msgpack
import numpy as np

from . import errors as E
from .storage import CodecError, pack, unpack
from .storage.codec import _ext_hook

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
DEFAULT_MAX_FRAME = 64 << 20          # bytes of body per frame
PREAUTH_MAX_FRAME = 64 << 10          # bytes of body per frame until hello (and its token) succeed
PREAUTH_MAX_ITEMS = 1024              # values a frame may decode to until then
MAX_FRAME_LIMIT = (1 << 32) - 1      # what a 4-byte length can say
_HEADER = struct.Struct(">I")

OPS = ("ping", "stats", "add", "add_sketch", "add_sketches", "search", "explain", "get", "remove", "names", "len",
       "contains", "nearest", "sample", "search_logits", "warm", "class_pool")
READ_OPS = frozenset({"ping", "stats", "search", "explain", "get", "names", "len", "contains", "nearest",
                      "sample", "search_logits", "warm", "class_pool"})


UnauthorizedError = E.UnauthorizedError
InternalError = E.InternalError


def error_class(code) -> type[E.FitsketchError]:
    """The error class for a code received on the wire (``FitsketchError`` when unknown)."""
    if not isinstance(code, str):
        return E.FitsketchError
    return E.BY_CODE.get(code) or E.FitsketchError


class ClosedError(Exception):
    """The peer closed the connection (cleanly between frames, or in the middle of one)."""

    def __init__(self, message: str, clean: bool):
        super().__init__(message)
        self.clean = clean


# ---------------------------------------------------------------------------------- framing
def encode_frame(obj, max_frame: int = MAX_FRAME_LIMIT) -> bytes:
    """Header + body of ``obj``; ``FrameTooLargeError`` if the body exceeds ``max_frame``."""
    body = pack(obj)
    if len(body) > max_frame:
        raise E.FrameTooLargeError(
            f"a frame of {len(body)} bytes is over the limit of {max_frame} bytes: send less data per "
            "call (fewer rows, or a sketch built with fitsketch.sketch_data), or raise the server's --max-frame")
    return _HEADER.pack(len(body)) + body


_RECV_CHUNK = 1 << 20     # a body is read (and its buffer grown) at most this many bytes at a time
MAX_ITEMS = 1 << 21       # containers + their elements one request may decode to: ~70 bytes each in Python,
#                           so ~150 MB and ~3 s of decoding (the garbage collector) at worst


def _recv_exact(sock: socket.socket, n: int, what: str, started: bool, deadline: float | None = None) -> bytearray:
    """``n`` bytes from ``sock``. The buffer grows with what arrives, never to what a header announced
    before the bytes are there; ``deadline`` (time.monotonic()) bounds the whole read."""
    buf = bytearray()
    while len(buf) < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout(f"{what}: deadline passed")
            sock.settimeout(left)
        chunk = sock.recv(min(n - len(buf), _RECV_CHUNK))
        if not chunk:
            clean = not buf and not started
            raise ClosedError(f"connection closed {'between frames' if clean else f'inside a {what}'}"
                              f" ({len(buf)} of {n} bytes)", clean)
        buf += chunk
    return buf


def decode_body(body, max_items: int | None = None):
    """A frame body decoded by the hub codec's rules; with ``max_items``, msgpack's own length limits
    (``max_array_len`` ...) and a count of containers and elements bound what the body may
    decode to, whatever its size (an array of empty arrays is ~70 bytes of Python per byte)."""
    if max_items is None:
        try:
            return unpack(body)
        except CodecError as e:
            raise E.ProtocolError(f"frame body is not valid msgpack: {e}") from None
    seen = [0]

    def counted(obj):        # list_hook / object_hook: once per container, after it is built
        seen[0] += 1 + len(obj)
        if seen[0] > max_items:
            raise _TooMany
        return obj

    n = len(body)
    try:
        return msgpack.unpackb(body, raw=False, strict_map_key=False, use_list=True, ext_hook=_ext_hook,
                               list_hook=counted, object_hook=counted, max_str_len=n, max_bin_len=n,
                               max_ext_len=n, max_array_len=max_items, max_map_len=max_items)
    except _TooMany:
        raise E.FrameTooLargeError(f"the frame decodes to over {max_items} values: send fewer values per call "
                                   "(numeric columns as NumPy arrays travel as one value)") from None
    except CodecError as e:
        raise E.ProtocolError(f"frame body is not valid msgpack: {e}") from None
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
        raise E.ProtocolError(f"frame body is not valid msgpack (or over its limits): {e}") from None


class _TooMany(Exception):
    pass


def recv_frame(sock: socket.socket, max_frame: int, *, deadline: float | None = None,
               max_items: int | None = None):
    """Read one frame and decode it.

    Raises ``ClosedError`` on end of stream, ``FrameTooLargeError`` (checked from the length
    prefix, before any of the body is read; or a body decoding to over ``max_items`` values),
    ``ProtocolError`` for a body that is not valid msgpack, and ``socket.timeout`` / ``OSError``
    from the socket (``socket.timeout`` too once ``deadline``, a time.monotonic() value, passes).
    """
    (n,) = _HEADER.unpack(_recv_exact(sock, _HEADER.size, "frame header", False, deadline))
    if n > max_frame:
        raise E.FrameTooLargeError(f"frame of {n} bytes is over the limit of {max_frame} bytes "
                                   "(--max-frame; before hello, 64 KiB): send less data per call")
    return decode_body(_recv_exact(sock, n, "frame body", True, deadline), max_items)


def error_body(req_id, exc: BaseException) -> dict:
    code = getattr(exc, "code", None) if isinstance(exc, E.FitsketchError) else InternalError.code
    return {"id": req_id, "ok": False, "error": {"code": code, "message": str(exc)}}


def ok_body(req_id, result) -> dict:
    return {"id": req_id, "ok": True, "result": result}


# ------------------------------------------------------------------------------ data on the wire
def _column(v):
    """A column value as it goes on the wire: a numeric ndarray or a list."""
    if hasattr(v, "to_numpy") and not isinstance(v, np.ndarray):   # pandas Series / Index
        v = v.to_numpy()
    if isinstance(v, np.ndarray):
        if v.dtype.kind in "biufc" and v.dtype.fields is None:
            return v
        return v.tolist()
    if isinstance(v, (list, tuple)):
        if v and isinstance(v[0], (np.generic, int, float)) and not isinstance(v[0], (bool, np.bool_)):
            try:
                a = np.asarray(v)
            except (ValueError, TypeError):
                return list(v)
            if a.dtype.kind in "iuf" and a.ndim == 1:
                return a
        return list(v)
    return v  # not a sequence: the server answers as the embedded hub would


def _frame_columns(df) -> dict:
    out = {}
    for name, col in df.items():
        dtype = col.dtype
        if isinstance(dtype, np.dtype) and dtype.kind in "biufc":
            out[name] = col.to_numpy()
        else:
            out[name] = [None if _is_na(x) else x for x in col.tolist()]
    return out


def _is_na(x) -> bool:
    import pandas as pd

    return x is pd.NA or x is pd.NaT


def encode_data(data, feature_names=None, *, remote_paths: bool = False) -> dict:
    """``{"data": ..., "feature_names"?: ...}`` for a request, from anything ``Hub.add`` takes.

    Numeric NumPy arrays and dicts of columns go as they are (the server validates them exactly
    as the embedded hub does); paths are read here (or sent as absolute paths with
    ``remote_paths=True``); everything else (DataFrame, pyarrow Table, string arrays...) is
    normalized here by :func:`fitsketch.data.to_frame` and sent as columns.
    """
    out: dict = {}
    if isinstance(data, np.ndarray) and data.dtype.kind in "biufc" and data.dtype.fields is None:
        out["data"] = data
        if feature_names is not None:
            out["feature_names"] = [str(n) for n in feature_names]
        return out
    if isinstance(data, dict):
        out["data"] = {(k if isinstance(k, str) else str(k)): _column(v) for k, v in data.items()}
        if len(out["data"]) != len(data):
            raise E.DuplicateFeatureError("dict data: two keys have the same string name: rename one")
        if feature_names is not None:
            out["feature_names"] = [str(n) for n in feature_names]
        return out
    if isinstance(data, (str, os.PathLike)) and remote_paths:
        out["data"] = os.path.abspath(os.fspath(data))
        if feature_names is not None:
            out["feature_names"] = [str(n) for n in feature_names]
        return out
    from .data import to_frame

    out["data"] = _frame_columns(to_frame(data, feature_names))
    return out


def resolve_path(path: str, allow_paths) -> str:
    """``path`` if it is absolute and resolves inside one of ``allow_paths``; else InvalidArgumentError."""
    if not allow_paths:
        raise E.InvalidArgumentError(
            f"data={path!r}: this server does not read files (it was started without --allow-paths DIR): "
            "send the data itself (fitsketch.connect reads local files for you)")
    if "\x00" in path or not os.path.isabs(path):
        raise E.InvalidArgumentError(f"data={path!r}: give an absolute path inside one of the --allow-paths "
                                     f"directories {list(allow_paths)}")
    real = os.path.realpath(path)
    for d in allow_paths:
        root = os.path.realpath(d)
        if os.path.commonpath([real, root]) == root:
            return real
    raise E.InvalidArgumentError(f"data={path!r} resolves to {real!r}, outside the --allow-paths directories "
                                 f"{list(allow_paths)}: move the file there or send the data itself")


# ------------------------------------------------------------------------- argument checking
_OPT_DICT = (dict, type(None))
_DATA = (dict, np.ndarray, str)
ARGS: dict[str, dict[str, tuple]] = {
    "ping": {},
    "stats": {},
    "names": {},
    "len": {},
    "warm": {},
    "get": {"name": (str, True)},
    "remove": {"name": (str, True)},
    "contains": {"name": (str, True)},
    "add": {"name": (str, True), "data": (_DATA, True), "metadata": (_OPT_DICT, False),
            "partition_size": ((int, type(None)), False), "feature_names": ((list, type(None)), False),
            "embedding": ((np.ndarray, type(None)), False)},
    "add_sketch": {"name": (str, True), "sketch": (dict, True), "metadata": (_OPT_DICT, False)},
    "add_sketches": {"items": (list, True), "batch": (int, False)},
    "search": {"data": (_DATA, False), "sketch": (dict, False), "k": (int, False), "method": (str, False),
               "where": (_OPT_DICT, False), "feature_names": ((list, type(None)), False),
               "params": (dict, False), "embedding": (np.ndarray, False), "embedding_candidates": (int, False)},
}
ARGS["explain"] = ARGS["search"]
ARGS["class_pool"] = ARGS["search"]   # method="accuracy" across shards: a shard's pooled class counts
ARGS["nearest"] = {"xq": (np.ndarray, True), "k": (int, False), "index": (str, False), "level": (str, False)}
ARGS["sample"] = {"sample_id": (int, True)}
ARGS["search_logits"] = {"entry": (str, False), "logit": (int, False), "descriptor": (np.ndarray, False),
                         "k": (int, False)}


def _type_names(types) -> str:
    types = types if isinstance(types, tuple) else (types,)
    names = {dict: "a map", np.ndarray: "a NumPy array", str: "a str", int: "an int", list: "a list",
             type(None): "null"}
    return " or ".join(names.get(t, t.__name__) for t in types)


def check_args(op: str, args) -> dict:
    if not isinstance(args, dict):
        raise E.InvalidArgumentError(f"op {op!r}: args must be a map, got {type(args).__name__}")
    spec = ARGS[op]
    unknown = sorted(str(k) for k in args if k not in spec)
    if unknown:
        raise E.InvalidArgumentError(f"op {op!r}: unknown arguments {unknown}; it takes {sorted(spec)}")
    for name, (types, required) in spec.items():
        if name not in args:
            if required:
                raise E.InvalidArgumentError(f"op {op!r}: argument {name!r} is required")
            continue
        v = args[name]
        allowed = types if isinstance(types, tuple) else (types,)
        if not isinstance(v, allowed) or (isinstance(v, bool) and bool not in allowed):
            raise E.InvalidArgumentError(
                f"op {op!r}: argument {name!r} must be {_type_names(types)}, got {type(v).__name__}")
    return args


def _check_coverage_record(cov, bad) -> None:
    """The coverage part of a wire sketch (fitsketch.coverage.build's record), fully checked."""
    if not (isinstance(cov, dict) and {"v", "keys", "center", "bits", "tables", "table", "code", "count"} <= set(cov)):
        raise bad("coverage must be a map with v, keys, center, bits, tables, table, code, count")
    keys, center = cov["keys"], cov["center"]
    if not (isinstance(keys, np.ndarray) and keys.ndim == 1 and keys.dtype.kind in "iu"
            and isinstance(center, np.ndarray) and center.shape == keys.shape and center.dtype.kind == "f"
            and np.isfinite(center).all()):
        raise bad("coverage keys / center must be 1-D arrays of one length (integer / finite float)")
    bits, tables = cov["bits"], cov["tables"]
    if not (type(bits) is int and 1 <= bits <= 30 and type(tables) is int and 1 <= tables <= 65536):
        raise bad("coverage bits must be in 1..30 and tables in 1..65536")
    more = cov.get("more", [])
    from .coverage import MAX_GROUPS

    if not (isinstance(more, list) and len(more) < MAX_GROUPS):
        raise bad(f"coverage more must be a list of at most {MAX_GROUPS - 1} count groups")
    for g in [cov, *more]:
        if not (isinstance(g, dict) and {"center", "table", "code", "count"} <= set(g)):
            raise bad("each coverage count group must be a map with center, table, code, count")
        c = g["center"]
        if not (isinstance(c, np.ndarray) and c.shape == keys.shape and c.dtype.kind == "f" and np.isfinite(c).all()):
            raise bad("coverage center must be a finite float array as long as keys")
        arrs = [g["table"], g["code"], g["count"]]
        if not all(isinstance(a, np.ndarray) and a.ndim == 1 and a.dtype.kind in "iu" and len(a) == len(arrs[0])
                   for a in arrs):
            raise bad("coverage table / code / count must be 1-D integer arrays of one length")
        if len(arrs[0]) and (arrs[0].min() < 0 or arrs[0].max() >= tables or arrs[1].min() < 0
                             or arrs[1].max() >= (1 << bits)):
            raise bad("coverage table / code out of range")


def sketch_from_wire(rec: dict):
    """A Sketch from its wire record, validated so a bad record cannot reach the hub."""
    from .sketch import SKETCH_FORMAT, sketch_from_record

    def bad(why):
        return E.InvalidArgumentError(f"sketch record is malformed: {why}; send Sketch.to_record()")

    need = {"v", "config_key", "partition_size", "names", "kinds", "signatures", "sums", "counts",
            "n_rows", "n_partitions", "hist"}
    missing = sorted(need - set(rec))
    if missing:
        raise bad(f"missing {missing}")
    if rec["v"] != SKETCH_FORMAT:
        raise bad(f"format {rec['v']!r} is not {SKETCH_FORMAT}")
    names, kinds = rec["names"], rec["kinds"]
    if not (isinstance(names, list) and isinstance(kinds, list) and len(names) == len(kinds)
            and all(isinstance(x, str) for x in names + kinds)):
        raise bad("names and kinds must be lists of str of equal length")
    n = len(names)
    for key in ("partition_size", "n_rows", "n_partitions"):
        if type(rec[key]) is not int or rec[key] < 0:
            raise bad(f"{key} must be a non-negative int")
    if not isinstance(rec["config_key"], list):
        raise bad("config_key must be a list")
    sig = rec["signatures"]
    if not (isinstance(sig, np.ndarray) and sig.ndim == 2 and sig.shape[0] == n and sig.dtype.kind in "iu"):
        raise bad(f"signatures must be an integer array of shape ({n}, num_perm)")
    for key in ("sums", "counts"):
        a = rec[key]
        if not (isinstance(a, np.ndarray) and a.shape == (n,) and a.dtype.kind in "iuf"):
            raise bad(f"{key} must be a numeric array of shape ({n},)")
    hist = rec["hist"]
    if not (isinstance(hist, dict) and set(hist) == {"part", "feat", "bucket", "count"}):
        raise bad("hist must be a map with part, feat, bucket, count")
    arrs = list(hist.values())
    if not all(isinstance(a, np.ndarray) and a.ndim == 1 and a.dtype.kind in "iu" and len(a) == len(arrs[0])
               for a in arrs):
        raise bad("hist arrays must be 1-D integer arrays of one length")
    if len(arrs[0]) and (hist["feat"].min() < 0 or hist["feat"].max() >= n or hist["part"].min() < 0
                         or hist["part"].max() >= rec["n_partitions"]):
        raise bad("hist feat / part out of range")
    cov = rec.get("coverage")
    if cov is not None:
        _check_coverage_record(cov, bad)
    try:
        sk = sketch_from_record(rec)
    except (KeyError, TypeError, ValueError) as e:
        raise bad(f"{type(e).__name__}: {e}") from None
    sk.hist = {"part": hist["part"].astype(np.int32), "feat": hist["feat"].astype(np.int32),
               "bucket": hist["bucket"].astype(np.int32), "count": hist["count"].astype(np.uint32)}
    return sk
