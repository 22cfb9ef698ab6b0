"""The on-disk schema of a hub, in one table: every LMDB database, the key shapes it holds, the
record format each is written in, and the module that owns it.

The engine writes and removes an entry as a list of parts (engine/parts.py), each of which names
only its own keys; this table is where those keys are described and where the format constants
they write are listed, so that a test (tests/test_schema.py) fails when a record format changes
without an entry here. ``FORMAT_VERSION`` (storage/env.py) is the format of the hub as a whole:
it is bumped with an upgrade function in ``MIGRATIONS`` whenever a record a previous fitsketch
cannot read may be written, so that older code refuses the hub at open instead of failing at the
first read.

Depends only on the standard library (the storage layer's rule).
"""
from __future__ import annotations

from typing import NamedTuple

AE_PREFIX = b"ae:"        # weights-db keys of SimEx fleets: b"ae:" + entry id (u64)


class Record(NamedTuple):
    """One kind of record: where it lives, its key shape, its format and its owner."""
    db: str                 # LMDB database (storage/txn.py DBS)
    key: str                # the key shape, in words
    record: str             # what the value is
    owner: str              # the module that writes and reads it
    format_name: str | None = None   # "module.CONSTANT" of the record's format (None: unversioned)
    format: int | None = None        # the format this fitsketch writes
    reads: tuple = ()                # formats this fitsketch reads (besides ``format``)
    upgrade: str = ""                # how records of an older format are brought up (or read as they are)
    per_entry: bool = True           # written and removed with an entry (an entry part)


SCHEMA: tuple[Record, ...] = (
    Record("meta", "b'format', b'created', b'config', b'next_id', b'generation', b'n_features', "
           "b'label_kinds', ...", "msgpack scalars / maps", "storage.env, engine.hub",
           "storage.env.FORMAT_VERSION", 2, (1,),
           "MIGRATIONS[1]: format 1 hubs hold histogram records of formats 1 and 2, both read; the "
           "upgrade only marks the hub so that a fitsketch reading format 1 refuses it at open",
           per_entry=False),
    Record("entries", "u64(entry id)", "entry record {v, id, name, metadata, features, kinds, n_rows, "
           "n_partitions, partition_size, sums, counts, created, labelled?}", "engine.parts",
           "engine.parts.ENTRY_FORMAT", 1),
    Record("names", "UTF-8 name (NFC)", "raw u64(entry id)", "engine.parts"),
    Record("signatures", "u64(entry id)", "{v, sig: (features, num_perm) uint32 MinHash}", "engine.parts",
           "engine.parts.ENTRY_FORMAT", 1),
    Record("histograms", "u64(entry id)", "packed partition histograms (partitions.pack_hist)",
           "engine.partitions", "engine.partitions.HIST_FORMAT", 2, (1,),
           "format 1 records are read as they are (partitions.unpack_hist)"),
    Record("bands", "u64(LSH band key) dupsort", "struct '>II' (entry id, feature)", "engine.parts"),
    Record("extra", "u64(entry id)", "{v, coverage?, coverage_embedding?, coverage_latent?, classes?}",
           "engine.parts (coverage, coverage_spaces, accuracy)", "engine.parts.ENTRY_FORMAT", 1),
    Record("extra", "b'p' + u64(entry id)", "random-projection profile", "engine.profiles",
           "engine.profiles.FORMAT", None),
    Record("extra", "b'k' + u64(entry id)", "profile name keys and stored JS-LSH band keys",
           "engine.profiles", "engine.profiles.KEYS_FORMAT", None),
    Record("extra", "b'd' + u64(entry id)", "dataset-level screen record", "engine.screen",
           "engine.screen.FORMAT", None),
    Record("weights", "b'ae:' + u64(entry id)", "{v, simex: [AERecord records]}", "engine.parts (simex)",
           "engine.parts.ENTRY_FORMAT", 1),
    Record("embeddings", "see engine/embeddings.py", "sample embeddings per entry", "engine.embeddings",
           "engine.embeddings.*_FORMAT", None),
    Record("probelog", "see engine/probelog.py", "probe sets and model descriptors", "engine.probelog",
           "engine.probelog.*_FORMAT", None, per_entry=True),
)


def ae_key(entry_key: bytes) -> bytes:
    """The weights-db key of an entry's SimEx fleet (``entry_key``: u64 of the entry id)."""
    return AE_PREFIX + entry_key


def databases() -> list[str]:
    return sorted({r.db for r in SCHEMA})


def formats() -> dict[str, int | None]:
    """{record format constant: the format this fitsketch writes}: what ``fitsketch.inspect`` reports."""
    return {r.format_name: r.format for r in SCHEMA if r.format_name and "*" not in r.format_name}
