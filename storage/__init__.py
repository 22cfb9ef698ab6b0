"""fitsketch.storage: the on-disk layer of a hub (LMDB environment, msgpack codec, formats).

Depends only on the standard library, numpy, lmdb and msgpack; never on the engine or kernels.

    from fitsketch.storage import HubStore, u64
    with HubStore(path) as store:
        store.transact(lambda txn: txn.put("entries", u64(1), {"name": "m"}))
        with store.read() as txn:
            txn.get("entries", u64(1))
"""
from __future__ import annotations

import logging

from .codec import pack, unpack
from .env import FORMAT_VERSION, HubStore, inspect
from .errors import (
    CodecError,
    CorruptHubError,
    HubBusyError,
    HubNotFoundError,
    SchemaError,
    StorageError,
)
from .txn import DBS, Txn, from_u64, u64

log = logging.getLogger(__name__)

__all__ = [
    "CodecError",
    "CorruptHubError",
    "DBS",
    "FORMAT_VERSION",
    "HubBusyError",
    "HubNotFoundError",
    "HubStore",
    "SchemaError",
    "StorageError",
    "Txn",
    "from_u64",
    "inspect",
    "pack",
    "u64",
    "unpack",
]
