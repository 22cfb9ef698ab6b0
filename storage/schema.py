"""The on-disk schema of a hub, in one table: every LMDB database, the key shapes it holds, the
record format each is written in, and the module that owns it.

The engine writes and removes an entry as a list of parts (engine/parts.py), each of which names
only its own keys; this table is where those keys are described and where every record format
constant is listed with its value, so that a test (tests/test_schema.py) fails when a record
format changes without an entry here. ``FORMAT_VERSION`` (storage/env.py) is the format of the hub as a whole:
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
    db: str                 # LMDB database (storage/txn.py DBS), or "file" for a derived file beside the hub
    key: str                # the key shape, in words
    record: str             # what the value is
    owner: str              # the module that writes and reads it
    formats: tuple = ()     # ("fitsketch.module.CONSTANT", the format this fitsketch writes) of its versioned parts
    reads: str = ""         # older formats it still reads, and how they are upgraded
    per_entry: bool = True  # written and removed with an entry (an entry part, engine/parts.py)


_E = ("fitsketch.parts.ENTRY_FORMAT", 1)

SCHEMA: tuple[Record, ...] = (
    Record("meta", "b'format'", "the hub's format", "fitsketch.storage.env",
           (("fitsketch.storage.env.FORMAT_VERSION", 6),),
           "formats 1 (histograms of record formats 1 and 2), 2 (no compressed arrays), 3 (8-byte band postings) "
           "and 4 (plain signature records) are read as they are; a writable open upgrades them to 5 (MIGRATIONS[1..4], "
           "records unchanged; MIGRATIONS[3] "
           "writes meta b'posting_bytes' = the width the hub holds: 8, or 4 without postings) so that an older fitsketch refuses the hub at open. Format 3: the "
           "per-entry records written by fitsketch.parts (entries, signatures, histograms, extra) hold their arrays "
           "compressed where that is smaller (codec EXT_PACKED: byte shuffle / integer delta + zstd, lossless); "
           "records of either kind are read alike. Format 4: a hub created at format 4 writes 4-byte band postings. "
           "Format 5: signature records may be per-permutation dictionaries (fitsketch.signature_records) and new "
           "entries store no screen record (extra b'd'; the screen index finds entries by a range scan of entries) "
           "and their profile records in databases profiles / profile_keys (were extra b'p' / b'k'), which a "
           "format-4 hub gets at its upgrade (a read-only open of one reads them as empty). Format 6: band postings "
           "are compacted from database bands (the delta, where adds write) into compressed blocks in database "
           "band_blocks (fitsketch.band_blocks); MIGRATIONS[5] creates it empty and moves nothing; a format-5 hub "
           "read-only reads it as empty",
           per_entry=False),
    Record("meta", "b'created', b'config', b'next_id', b'generation', b'n_features', b'label_kinds', "
           "b'next_sample_id', b'embedding_dim', b'posting_bytes', b'block_postings', b'block_dead'", "msgpack scalars / maps", "fitsketch.hub, fitsketch.parts, "
           "fitsketch.embeddings", per_entry=False),
    Record("entries", "u64(entry id)", "{v, id, name, metadata, features, kinds, n_rows, n_partitions, "
           "partition_size, sums, counts, created, labelled?}", "fitsketch.parts (Core)", (_E,)),
    Record("names", "UTF-8 name (NFC)", "raw u64(entry id)", "fitsketch.parts (Core)"),
    Record("signatures", "u64(entry id)", "{v: 1, sig: (features, num_perm) uint32 MinHash} or, where it packs "
           "smaller, {v: 2, sn, sd, si}: each permutation's distinct values and every feature's index into them",
           "fitsketch.parts (Core), fitsketch.signature_records", (("fitsketch.signature_records.SIG_FORMAT", 2),),
           "record format 1 (every hub) is read as it is; format 2 is written since hub format 5"),
    Record("histograms", "u64(entry id)", "packed partition histograms (partitions.pack_hist)",
           "fitsketch.parts (Core), fitsketch.partitions", (("fitsketch.partitions.HIST_FORMAT", 2),),
           "format 1 (the COO arrays as they are) is read as it is by partitions.unpack_hist"),
    Record("bands", "u64(LSH band key), dupsort", "4 bytes: struct '>I' (entry id) in a hub created at format 4; "
           "8 bytes: struct '>II' (entry id, feature) in a hub of format <= 3 (and kept by its upgrade: meta "
           "b'posting_bytes' = 8, fitsketch.parts.posting_bytes)", "fitsketch.parts (Bands)",
           (("fitsketch.parts.BANDS_FORMAT", 2),),
           "8-byte postings are read as they are (readers use the first 4 bytes, the entry id; another length is "
           "CorruptHubError). Written since 2026-11-30 as one posting per (band key, entry) (8-byte: its feature "
           "the entry's lowest non-empty feature with that key); before, one per (band key, entry, feature). "
           "Removal of an 8-byte hub's entry deletes every (entry, feature) of its keys, so both kinds are removed alike"),
    Record("band_blocks", "u64(the block's last LSH band key)", "bytes of its own layout (fitsketch.band_blocks.encode): "
           "a 14-byte header _HEAD '<BBIII' (block format, codec of storage.codec.compress, distinct keys <= 4096, "
           "postings, bytes of the keys' part), then two compressed parts (zstd, or zlib where pyarrow lacks it) of "
           "little-endian byte planes: the distinct keys' deltas (uint64, the first as it is) and their posting "
           "counts (uint32); the entry ids' gaps within each key (uint32, a key's first id as it is); at most "
           "4,080 bytes (one overflow page) unless one key's postings are larger",
           "fitsketch.band_blocks (compaction; removal through fitsketch.parts (Bands))",
           (("fitsketch.band_blocks.BLOCKS_FORMAT", 1),),
           "since hub format 6; the postings added since the last compaction stay in bands (the delta); "
           "meta b'block_postings' counts the postings the blocks hold"),
    Record("extra", "u64(entry id)", "{v, coverage?, coverage_embedding?, coverage_latent?, classes?}",
           "fitsketch.parts (Extra)", (_E, ("fitsketch.coverage.COVERAGE_FORMAT", 1),
                                       ("fitsketch.coverage_spaces.SPACE_FORMAT", 1),
                                       ("fitsketch.accuracy_records.CLASSES_FORMAT", 1))),
    Record("profiles", "u64(entry id)", "random-projection profile", "fitsketch.parts (Profile), "
           "fitsketch.profiles", (("fitsketch.profiles.PROFILE_FORMAT", 1),),
           "since hub format 5 (its own database, so that adds append it); entries added before: extra b'p' + id"),
    Record("profile_keys", "u64(entry id)", "profile name keys and the stored JS-LSH band keys",
           "fitsketch.parts (Profile), fitsketch.profiles", (("fitsketch.profiles.PROFILE_FORMAT", 1),),
           "since hub format 5; entries added before: extra b'k' + id (fitsketch.profiles.stored_keys); "
           "missing (older hubs): computed from the histograms"),
    Record("extra", "b'p' + u64(entry id)", "random-projection profile (written by hubs of format <= 4)",
           "fitsketch.parts (Profile), fitsketch.profiles", (("fitsketch.profiles.PROFILE_FORMAT", 1),),
           "read where present (fitsketch.profiles.stored_profiles); removed with its entry"),
    Record("extra", "b'k' + u64(entry id)", "profile name keys and the stored JS-LSH band keys (written by "
           "hubs of format <= 4)", "fitsketch.parts (Profile), fitsketch.profiles",
           (("fitsketch.profiles.PROFILE_FORMAT", 1),), "read where present; removed with its entry"),
    Record("extra", "b'd' + u64(entry id)", "dataset-level screen record (derived; written only by hubs of "
           "format <= 4)", "fitsketch.parts (Screen), fitsketch.screen", (("fitsketch.screen.SCREEN_FORMAT", 1),),
           "read where present; missing (entries added since format 5, or before screens): computed from the "
           "histograms and the entry record when the screen index loads the entry (fitsketch.screen.records)"),
    Record("weights", "b'ae:' + u64(entry id)", "{v, simex: [autoencoder records]}", "fitsketch.parts (SimExFleet)",
           (_E, ("fitsketch.autoencoder.AE_FORMAT", 1))),
    Record("weights", "b'deephash'", "the hub's deep-hash model", "fitsketch.embedding_indexes",
           (("fitsketch.deephash.WEIGHTS_FORMAT", 1),), per_entry=False),
    Record("embeddings", "b'e' + u64(entry id); b's' + u64(entry id) + u32(chunk)",
           "the entry's sample-id range and mean; its embedding rows by chunk", "fitsketch.parts (Embeddings), "
           "fitsketch.embeddings", (("fitsketch.embeddings.EMBEDDING_FORMAT", 1),)),
    Record("probes", "b'p' + probe-set name; b'_generation', b'_default'", "ProbeLog probe sets",
           "fitsketch.probelog", (("fitsketch.probelog.PROBE_FORMAT", 1),), per_entry=False),
    Record("probes", "b'd' + u64(entry id)", "ProbeLog descriptors of a hub entry's model",
           "fitsketch.parts (ModelDescriptors), fitsketch.probelog", (("fitsketch.probelog.PROBE_FORMAT", 1),)),
    Record("probes", "b'm' + sha256(model name)[:16]", "ProbeLog descriptors of a model-only entry (add_model)",
           "fitsketch.probelog", (("fitsketch.probelog.PROBE_FORMAT", 1),), per_entry=False),
    Record("file", "<hub>/indexes/<level>-<kind>.faiss + .msgpack sidecar", "FAISS indexes over the embeddings (derived: rebuilt when their "
           "sidecar's format or generation differs)", "fitsketch.embedding_indexes, fitsketch.faiss_files",
           (("fitsketch.embedding_indexes.INDEX_FORMAT", 1),), per_entry=False),
    Record("file", "<hub>/indexes/probelog-<slug>.faiss + .msgpack sidecar", "FAISS indexes over the ProbeLog descriptors (derived)",
           "fitsketch.probelog, fitsketch.faiss_files", (("fitsketch.probelog.INDEX_FORMAT", 1),), per_entry=False),
    Record("file", "<hub>/indexes/screen.fsidx, <hub>/indexes/profiles.fsidx", "the in-memory screen and profile "
           "indexes as named arrays (storage/arrayfile.py; derived: read when their header fits the hub, brought "
           "forward from an earlier generation, rebuilt from LMDB otherwise)", "fitsketch.indexes",
           (("fitsketch.indexes.SEARCH_INDEX_FORMAT", 1), ("fitsketch.storage.arrayfile.ARRAY_FILE_FORMAT", 1)),
           per_entry=False),
    Record("file", "<hub>/indexes/level1.faiss + level1.msgpack sidecar", "the two-level candidate stage's level-1 "
           "IVF over projected dataset-level rows (derived: its sidecar records the format, the hub's identity and "
           "parameters, the row ids and the basis; brought forward after adds, rebuilt otherwise)",
           "fitsketch.coarse, fitsketch.faiss_files", (("fitsketch.coarse.ANN_FORMAT", 1),), per_entry=False),
    Record("wire", "-", "a Sketch as bytes (Sketch.to_bytes, the socket protocol)", "fitsketch.sketch",
           (("fitsketch.sketch.SKETCH_FORMAT", 1),), per_entry=False),
)


def ae_key(entry_key: bytes) -> bytes:
    """The weights-db key of an entry's SimEx fleet (``entry_key``: u64 of the entry id)."""
    return AE_PREFIX + entry_key


def databases() -> list[str]:
    """The LMDB databases the schema describes."""
    return sorted({r.db for r in SCHEMA} - {"file", "wire"})


def formats() -> dict[str, int]:
    """{record format constant: the format this fitsketch writes}: what ``fitsketch.inspect`` reports."""
    return {name: v for r in SCHEMA for name, v in r.formats}
