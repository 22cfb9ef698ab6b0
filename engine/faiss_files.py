"""Derived FAISS index files beside a hub: one helper for the embeddings' and ProbeLog's indexes.

An index is data derived from LMDB (the source of truth), kept as two files under
``<hub>/indexes/``: ``<stem>.faiss`` in FAISS's own format and ``<stem>.msgpack``, a sidecar
dict that says what the index was built from. Every sidecar carries ``"v"``, the format of its
owner (``embedding_indexes.INDEX_FORMAT``, ``probelog.INDEX_FORMAT``); the owner adds what dates
the index (the generation it was built at) and what it holds.

* :func:`save` writes both files to temporary names and ``os.replace``\\ s them, the index file
  first. The sidecar records the index file's size and CRC-32 (``"file"``), so a pair whose
  halves come from two saves -- a crash or another process between the two renames -- is
  noticed when read and rebuilt. A read-only hub directory or a full disk is not an error:
  the index is kept in memory only (a warning), and no temporary file is left behind.
* :func:`load` returns the owner's object, or None whenever the files cannot serve: missing, of
  another format, stale or built for other data (the owner's ``accept``), unreadable, or not
  matching their sidecar (the owner's ``decode``). The owner then rebuilds from LMDB and saves.
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
import zlib
from typing import Callable

import faiss
import numpy as np

from .storage import pack, unpack

log = logging.getLogger(__name__)

__all__ = ["paths", "load", "save"]

INDEX_DIR = "indexes"


def paths(root: str, stem: str) -> tuple[str, str]:
    """``(index file, sidecar file)`` of index ``stem`` of the hub at ``root``."""
    base = os.path.join(root, INDEX_DIR, stem)
    return base + ".faiss", base + ".msgpack"


def load(fpath: str, mpath: str, *, fmt: int, accept: Callable[[dict], bool], decode: Callable, binary: bool = False):
    """The owner's object from files ``fpath`` / ``mpath``, or None when they must be rebuilt.

    The sidecar must be a dict of format ``fmt`` for which ``accept(meta)`` holds (checked before
    the index file is read); then ``decode(index, meta)`` builds the owner's object, or returns
    None when the index does not match its sidecar. ``binary``: a ``faiss.IndexBinary``."""
    try:
        with open(mpath, "rb") as f:
            meta = unpack(f.read())
        # the index file's size and CRC-32 (save's own record; sidecars written before it: None)
        want = meta.pop("file", None) if isinstance(meta, dict) else None
        if not isinstance(meta, dict) or meta.get("v") != fmt or not accept(meta):
            log.info("index %s: sidecar of another format, generation or data: rebuilding", mpath)
            return None
        with open(fpath, "rb") as f:
            raw = f.read()
        if want is not None and want != {"size": len(raw), "crc32": zlib.crc32(raw)}:
            log.info("index %s is not the one its sidecar %s was saved with: rebuilding", fpath, mpath)
            return None
        buf = np.frombuffer(raw, dtype=np.uint8)
        index = faiss.deserialize_index_binary(buf) if binary else faiss.deserialize_index(buf)
        out = decode(index, meta)
        if out is None:
            log.info("index %s does not match its sidecar %s: rebuilding", fpath, mpath)
        return out
    except FileNotFoundError:
        return None
    except Exception as e:  # noqa: BLE001 - unreadable derived data is rebuilt from LMDB
        log.warning("index %s cannot be read (%s): rebuilding", fpath, e)
        return None


def save(fpath: str, mpath: str, index, meta: dict, *, binary: bool = False) -> bool:
    """Write ``index`` and its sidecar ``meta`` (a dict with ``"v"``) atomically; whether they
    were written (False: kept in memory only, with a warning)."""
    tmps = [f"{p}.tmp{os.getpid()}.{threading.get_ident()}" for p in (fpath, mpath)]
    try:
        os.makedirs(os.path.dirname(fpath), exist_ok=True)
        raw = (faiss.serialize_index_binary if binary else faiss.serialize_index)(index).tobytes()
        with open(tmps[0], "wb") as f:
            f.write(raw)
        os.replace(tmps[0], fpath)
        with open(tmps[1], "wb") as f:
            f.write(pack({**meta, "file": {"size": len(raw), "crc32": zlib.crc32(raw)}}))
        os.replace(tmps[1], mpath)
        return True
    except (OSError, RuntimeError) as e:
        # a read-only hub directory or a full disk (FAISS raises RuntimeError): the index is
        # derived data, kept in memory only, and no temporary file is left behind
        for tmp in tmps:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        log.warning("index %s not written (%s); kept in memory", fpath, e)
        return False
