"""Errors raised by fitsketch.storage.

One small hierarchy under ``StorageError``; each subclass carries a stable ``code`` string that
the server sends as ``{"error": code, "message": ...}``. ``storage`` never imports the engine, so
``StorageError`` derives from ``Exception`` only; the engine may re-raise these under its own
``FitsketchError`` classes keyed by ``code``. Messages name the path/key/value and the fix.
"""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)

__all__ = [
    "StorageError",
    "SchemaError",
    "CorruptHubError",
    "HubNotFoundError",
    "HubBusyError",
    "CodecError",
]


class StorageError(Exception):
    """Base class of every storage failure; ``code`` is stable across versions."""

    code = "storage"


class SchemaError(StorageError):
    """The hub was written by a newer format, or an unknown / unsupported older one."""

    code = "schema"


class CorruptHubError(StorageError):
    """The LMDB file is unreadable or truncated, or a stored record cannot be decoded."""

    code = "corrupt"


class HubNotFoundError(StorageError):
    """The path holds no hub and ``create=False`` was given."""

    code = "not_found"


class HubBusyError(StorageError):
    """The hub is already open in this process, or its lock cannot be taken."""

    code = "busy"


class CodecError(StorageError):
    """A value cannot be encoded to, or decoded from, the msgpack wire/disk format."""

    code = "codec"
