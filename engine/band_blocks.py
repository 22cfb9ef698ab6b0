"""LSH band postings in compacted blocks (hub format 6): where the candidate stage's band lookups
and an entry's removal find the postings that ``parts.Bands`` writes.

A posting is (band key, entry id): the entry has a non-empty feature whose MinHash signature has
that key (``minhash.feature_band_keys``, one posting per distinct key of an entry). Two places hold
them, both inside the hub's LMDB environment, so every read is paged and every change is
transactional (a search's read transaction sees exactly its snapshot's postings):

* the **delta**: the dupsort database ``bands`` (band key -> 4-byte entry id, or 8-byte (entry id,
  feature) in a hub upgraded from format <= 3, ``parts.posting_bytes``), where every add writes its
  postings as before format 6 -- adds cost what they did;
* the **blocks**: database ``band_blocks``, key = u64 (big-endian) of the *last* band key of the
  block, value = one compressed block of postings sorted by (key, entry id) (``encode``: a 14-byte
  header -- format, codec, keys, postings, bytes of the keys' part -- then, compressed as the storage codec compresses
  arrays, zstd, the byte planes of the distinct keys' deltas, their counts and each key's entry-id
  gaps; a layout of its own rather than ``codec.pack`` because a search decodes hundreds of blocks:
  ~15 us a block against ~90 for three packed arrays). Blocks hold disjoint key ranges in key order, so the only
  block that can hold key ``q`` is the first whose last key is ``>= q`` (one cursor ``set_range``).
  Blocks are cut on key boundaries to at most ``BLOCK_BYTES`` (one 4 KiB LMDB overflow page); a key
  whose postings alone pack larger has a block of its own (several pages).

A lookup (``lookup``) is the delta's ``get_dups_many`` plus, for each block the query's sorted keys
touch, one ``set_range`` and one decode. **Compaction** (``compact``) moves delta postings into
blocks in chunks of key range, each chunk one write transaction that deletes the moved delta keys
and rewrites the blocks they fall into (runs of adjacent touched blocks are merged and cut again,
so blocks stay full): a reader sees every posting exactly once before or after a chunk; memory is
bounded by the chunk (``COMPACT_CHUNK`` delta postings and ``COMPACT_BLOCK_BYTES`` of old blocks),
never the whole index. ``Hub.add`` / ``add_sketches`` (at the end of the call; ``add_sketches`` after its first batch
past the threshold while the next batch is prepared) compact once the delta exceeds
``1 / COMPACT_SHARE`` of the postings the blocks hold (and ``COMPACT_MIN``), at most ``AUTO_STEPS``
chunks a call (an error there is logged: the entries are added); ``Hub.compact()``
compacts everything. **Removal** (``parts.Bands.delete``) deletes the entry's delta postings
and leaves its compacted postings in the blocks, dead: entry ids are never reused (``meta/next_id``),
so a posting whose entry is gone names nothing. ``meta/block_dead`` counts them (``removed``: the
entry's distinct keys that were not in the delta -- a posting is in one place or the other); while it
is above 0 a lookup keeps only the ids of entries the hub holds (one check per distinct id: its
results are exact in every snapshot); compaction drops the dead postings of every block it rewrites
and ``Hub.compact()`` sweeps every block (``sweep``), each taking what it drops off the count, so
it returns to 0 once they are gone. Rewriting each block holding one of the entry's keys at removal
(hub format 6 as first written) cost ~30-40x a format-5 removal (~400 blocks an entry).

The postings the blocks hold, live or dead, are counted in ``meta/block_postings`` (kept by
compaction and sweeps), which the auto-compaction threshold reads. Stored blocks are validated on read (format,
sizes checked from the header before anything is inflated -- at most ``BLOCK_MAX_KEYS`` keys, each
with at most one posting an entry id below ``meta/next_id`` (``ids_bound``), and ``BLOCK_MAX_POSTINGS``
--, keys increasing and ending at the block's key, counts adding up, ids increasing within a key):
anything else is ``CorruptHubError``.
"""
from __future__ import annotations

import logging
import struct

import numpy as np

from . import errors as E
from .storage import CodecError, u64
from .storage.codec import compress, decompress
from .storage.env import held_posting_bytes

log = logging.getLogger(__name__)

BLOCKS_FORMAT = 1
DB = "band_blocks"
DELTA = "bands"
HELD_KEY = b"block_postings"    # meta: the postings the blocks hold (live or dead)
DEAD_KEY = b"block_dead"        # meta: how many of the blocks' postings name removed entries
BLOCK_BYTES = 4080              # a block packs to at most this (one 4 KiB overflow page: value + 16-byte header)
BLOCK_LEVEL = 3                 # zstd level of a block (bench/SUMMARY.md "Size, tenth session")
BLOCK_MAX_POSTINGS = 1 << 26    # a stored block claiming more is damaged (one key's postings: every entry of a 64M hub)
BLOCK_MAX_KEYS = 1 << 12        # keys a block holds at most (random 64-bit keys take over a byte each of BLOCK_BYTES:
                                # _cut never meets it): a stored block's keys part inflates to at most 48 KiB
COMPACT_CHUNK = 1 << 18         # delta postings moved in one write transaction (~2 MB of their ids)
COMPACT_BLOCK_BYTES = 16 << 20  # ... and at most about this many bytes of the old blocks they fall into
COMPACT_SHARE = 8               # add / add_sketches compact once the delta holds over 1/8 of the blocks' postings ...
COMPACT_MIN = 1 << 16           # ... and over this many postings
AUTO_STEPS = 4                  # ... at most this many chunks a call (~1M postings; later adds carry on)
_FILL = 0.97                    # a block's first cut aims at this share of BLOCK_BYTES (its size is then measured)
_EMPTY = np.zeros(0, np.uint64)


# ---------------------------------------------------------------------------------------------- one block
_HEAD = struct.Struct("<BBIII")   # format, codec (storage.codec.compress), keys, postings, bytes of the keys' part


def _planes(a: np.ndarray) -> np.ndarray:
    """The bytes of ``a`` (little-endian) as planes: byte 0 of every element, then byte 1, ... (the
    codec's byte shuffle: the high bytes of small numbers compress to nothing)."""
    return np.ascontiguousarray(a.astype(a.dtype.newbyteorder("<"), copy=False).view(np.uint8)
                                .reshape(len(a), a.itemsize).T).reshape(-1)


def _unplanes(b: np.ndarray, n: int, dtype) -> np.ndarray:
    """The ``n`` elements whose planes ``b`` holds (a plane at a time, as the codec unshuffles)."""
    dt = np.dtype(dtype).newbyteorder("<")
    out = np.empty(n * dt.itemsize, np.uint8)
    for i in range(dt.itemsize):
        out[i::dt.itemsize] = b[i * n:(i + 1) * n]
    return out.view(dt)


def encode(keys: np.ndarray, eids: np.ndarray) -> bytes:
    """One block of postings ``keys`` (uint64, non-decreasing) x ``eids`` (entry ids < 2**32,
    increasing within a key; at least one posting), packed: ``_HEAD``, then two parts compressed as
    the storage codec compresses arrays (``storage.codec.compress``, zstd level ``BLOCK_LEVEL``):
    the byte planes (``_planes``) of the distinct keys' deltas (uint64; the first key as it is) and
    of their counts (uint32), then those of the entry ids' gaps within each key (uint32; a key's
    first id as it is). A lookup whose keys the block lacks decompresses the first part only."""
    keys = np.asarray(keys, dtype=np.uint64)
    eids = np.asarray(eids).astype(np.int64)
    start = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    uk = keys[start]
    counts = np.diff(np.r_[start, len(keys)]).astype(np.uint32)
    gaps = np.diff(eids, prepend=0)
    gaps[start] = eids[start]
    codec, zk = compress(np.concatenate([_planes(np.diff(uk, prepend=np.uint64(0))), _planes(counts)]), BLOCK_LEVEL)
    codec2, ze = compress(_planes(gaps.astype(np.uint32)), BLOCK_LEVEL)
    if codec2 != codec:                   # pragma: no cover - one compressor serves a process
        raise RuntimeError("the storage codec changed compressors between two calls")
    return _HEAD.pack(BLOCKS_FORMAT, codec, len(uk), len(keys), len(zk)) + zk + ze


def _bad(last: int, what) -> E.CorruptHubError:
    return E.CorruptHubError(f"the band block at key {last:#018x} is damaged ({what}): the hub's band "
                             "postings cannot be read; restore the hub from a backup")


def _head(raw: bytes, last: int, most: int = 1 << 32) -> tuple[int, int, int, int]:
    """(codec, keys, postings, bytes of the keys' part) of a stored block, checked before anything is
    inflated: at most ``BLOCK_MAX_KEYS`` keys, each holding at most ``most`` postings (entry ids are
    below it: ``ids_bound``), so a damaged block cannot make a read inflate more than a sound one could."""
    if len(raw) < _HEAD.size:
        raise _bad(last, f"{len(raw)} bytes")
    v, codec, nk, n, nz = _HEAD.unpack_from(raw)
    if v != BLOCKS_FORMAT:
        raise _bad(last, f"format {v}; this fitsketch reads {BLOCKS_FORMAT}")
    if not 0 < nk <= min(n, BLOCK_MAX_KEYS) or n > min(BLOCK_MAX_POSTINGS, nk * most) or _HEAD.size + nz > len(raw):
        raise _bad(last, f"{nk} keys, {n} postings, {nz} bytes of keys")
    return codec, nk, n, nz


def _inflate(raw: bytes, codec: int, size: int, last: int) -> bytes:
    try:
        return decompress(raw, codec, size)
    except CodecError as e:
        raise _bad(last, e) from None


def ids_bound(txn) -> int:
    """The entry ids of the hub's postings are below this (``meta/next_id``; 2**32 in a store without
    it), so a key holds at most this many."""
    n = txn.get("meta", b"next_id")
    return n if type(n) is int and 0 < n <= 1 << 32 else 1 << 32


def decode_keys(raw: bytes, last: int, most: int = 1 << 32) -> tuple[np.ndarray, np.ndarray]:
    """(distinct keys uint64, counts int64) of a stored block whose LMDB key is u64(``last``), entry
    ids below ``most``, checked (``CorruptHubError`` otherwise)."""
    codec, nk, n, nz = _head(raw, last, most)
    body = np.frombuffer(_inflate(raw[_HEAD.size:_HEAD.size + nz], codec, 12 * nk, last), dtype=np.uint8)
    k = np.cumsum(_unplanes(body[:8 * nk], nk, np.uint64), dtype=np.uint64)   # wraps: checked below
    c = _unplanes(body[8 * nk:], nk, np.uint32).astype(np.int64)
    if int(k[-1]) != last or (nk > 1 and not bool((k[1:] > k[:-1]).all())):
        raise _bad(last, "keys not increasing to the block's key")
    if not bool((c > 0).all()) or int(c.sum()) != n or int(c.max()) > most:
        raise _bad(last, "counts do not add up to the postings")
    return k, c


def decode_ids(raw: bytes, last: int, c: np.ndarray, most: int = 1 << 32) -> np.ndarray:
    """The entry ids (uint32, below ``most``) of a stored block whose keys' counts ``decode_keys`` gave, checked."""
    codec, nk, n, nz = _head(raw, last, most)
    g = _unplanes(np.frombuffer(_inflate(raw[_HEAD.size + nz:], codec, 4 * n, last), dtype=np.uint8), n,
                  np.uint32).astype(np.int64)
    start = np.cumsum(c) - c
    up = g > 0
    up[start] = True
    if not bool(up.all()):
        raise _bad(last, "entry ids not increasing within a key")
    cs = np.cumsum(g)
    e = cs - np.repeat(cs[start] - g[start], c)
    if int(e.max()) >= most:
        raise _bad(last, f"an entry id over {most - 1}")
    return e.astype(np.uint32)


def decode(raw: bytes, last: int, most: int = 1 << 32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distinct keys uint64, counts int64, entry ids uint32) of a stored block whose LMDB key is
    u64(``last``), entry ids below ``most``, checked (``CorruptHubError`` otherwise)."""
    k, c = decode_keys(raw, last, most)
    return k, c, decode_ids(raw, last, c, most)


def _above(k: np.ndarray, prev: int, last: int) -> None:
    """Blocks hold disjoint key ranges in key order: a block's first key is above the last key of
    the block read before it (``prev``, -1 for none)."""
    if int(k[0]) <= prev:
        raise _bad(last, f"its first key {int(k[0]):#018x} is not above the previous block's last {prev:#018x}")


def _expand(k: np.ndarray, c: np.ndarray) -> np.ndarray:
    """The key of every posting of a block."""
    return np.repeat(k, c)


def _cut(keys: np.ndarray, eids: np.ndarray) -> list[tuple[int, bytes]]:
    """Postings sorted by (key, entry id) as blocks [(last key, packed)]: cut on key boundaries,
    each packed to at most ``BLOCK_BYTES`` (a key too large alone: a block of its own), the size of
    each first cut estimated from the bytes a posting the previous block took."""
    n = len(keys)
    if not n:
        return []
    ends = np.r_[np.flatnonzero(keys[1:] != keys[:-1]) + 1, n]      # a key's postings end before these
    out, i, per = [], 0, None
    while i < n:
        lo = int(np.searchsorted(ends, i, side="right"))             # the first key end after i
        top = min(lo + BLOCK_MAX_KEYS, len(ends)) - 1                 # the block's last key end at most
        want = n if per is None else i + max(1, int(BLOCK_BYTES * _FILL / per))
        j = int(ends[min(max(lo, int(np.searchsorted(ends, want, side="right")) - 1), top)])
        while True:
            b = encode(keys[i:j], eids[i:j])
            if len(b) <= BLOCK_BYTES or j == ends[lo]:
                break
            want = i + max(1, int((j - i) * BLOCK_BYTES * _FILL / len(b)))
            j = int(ends[min(max(lo, int(np.searchsorted(ends, want, side="right")) - 1), top)])
        out.append((int(keys[j - 1]), b))
        per = len(b) / (j - i)
        i = j
    return out


# ---------------------------------------------------------------------------------------------- reads
def delta_ids(dups: list) -> np.ndarray:
    """The entry ids of one band's delta postings: 4 bytes (entry id) or 8 (entry id, feature),
    big-endian (parts.posting_bytes), read as one array instead of one ``int.from_bytes`` a posting (a query of
    a 1k-entry hub of one schema met ~2M postings: 2 s of its 3 s)."""
    widths = set(map(len, dups))
    if not widths <= {4, 8}:
        bad = min(widths - {4, 8})
        raise E.CorruptHubError(f"a band posting of {bad} bytes (expected 4 or 8): the hub's "
                                "bands database is damaged; restore the hub from a backup")
    if widths == {4}:
        return np.frombuffer(b"".join(dups), dtype=">u4").astype(np.int64)
    if widths == {8}:
        return (np.frombuffer(b"".join(dups), dtype=">u8") >> np.uint64(32)).astype(np.int64)
    return np.array([int.from_bytes(v[:4], "big") for v in dups], dtype=np.int64)


def _blocks_over(txn, q: np.ndarray):
    """(block key, last, stored bytes, the slice of ``q`` it alone can hold) for each block that
    the sorted distinct keys ``q`` (uint64) touch, in key order."""
    i, n = 0, len(q)
    while i < n:
        hit = txn.first_from(DB, u64(int(q[i])))
        if hit is None:
            return
        bkey, raw = hit
        last = int.from_bytes(bkey, "big")
        j = int(np.searchsorted(q, np.uint64(last), side="right"))
        yield bkey, last, raw, slice(i, j)
        i = j


def _keys(band_keys) -> np.ndarray:
    """Band keys (int64 as ``feature_band_keys`` gives them, or uint64; any shape) as sorted distinct uint64."""
    a = np.asarray(band_keys).reshape(-1)
    return np.unique(a.view(np.uint64) if a.dtype == np.int64 else a.astype(np.uint64))


def lookup(txn, band_keys) -> np.ndarray:
    """The ids (int64, ascending, each once) of the entries holding any of ``band_keys`` (int64 or
    uint64 band keys, any shape): the delta's postings and the blocks' (``_lookup_blocks``), those of
    removed entries left out."""
    q = _keys(band_keys)
    found = [delta_ids(d) for d in txn.get_dups_many(DELTA, [u64(int(b)) for b in q]) if d] \
        if txn.count(DELTA) else []                            # a compacted hub: no delta to look in
    found.append(_lookup_blocks([(last, raw) for _, last, raw, _ in _blocks_over(txn, q)], q, ids_bound(txn)))
    ids = np.unique(np.concatenate(found))
    if len(ids) and dead(txn) != 0:                           # removed entries' postings may remain in the blocks
        ids = ids[_live(txn, ids)]
    return ids


def _gather(buf: np.ndarray, at: np.ndarray, stride: np.ndarray, width: int, dtype) -> np.ndarray:
    """Elements whose byte j lies at ``buf[at + j * stride]`` (byte planes, ``_planes``), as ``dtype``."""
    b = np.empty((len(at), width), np.uint8)
    for j in range(width):                  # a plane at a time: half the time of one 2-D fancy index
        b[:, j] = buf[at + j * stride]
    return b.view(np.dtype(dtype).newbyteorder("<")).reshape(-1)


def _lookup_blocks(blocks: list, q: np.ndarray, most: int = 1 << 32) -> np.ndarray:
    """The entry ids (int64) under keys ``q`` (sorted distinct uint64) in ``blocks`` [(last key,
    stored bytes)], in key order, decoded together: a search touches hundreds of blocks, and
    numpy's cost a call, not a block's bytes, is most of a block decoded alone. Every block's keys
    and counts are checked as ``decode_keys`` checks them; the entry ids of the matched keys as
    ``decode_ids`` checks them (the ids of other keys are not decompressed)."""
    if not blocks:
        return np.zeros(0, np.int64)
    heads, parts = [], []
    for last, raw in blocks:
        h = _head(raw, last, most)                # bounds what it inflates: 12 bytes a key, 4 a posting
        heads.append(h)
        parts.append(_inflate(raw[_HEAD.size:_HEAD.size + h[3]], h[0], 12 * h[1], last))
    nks = np.array([h[1] for h in heads], dtype=np.int64)
    ns = np.array([h[2] for h in heads], dtype=np.int64)
    lasts = np.array([last for last, _ in blocks], dtype=np.uint64)
    buf = np.frombuffer(b"".join(parts), dtype=np.uint8)
    kstart = np.cumsum(nks) - nks                               # each block's first key, of all blocks' keys
    blk = np.repeat(np.arange(len(blocks)), nks)
    local = np.arange(len(blk)) - kstart[blk]
    at = 12 * kstart[blk] + local
    kd = _gather(buf, at, nks[blk], 8, np.uint64)
    c = _gather(buf, at + 8 * nks[blk], nks[blk], 4, np.uint32).astype(np.int64)
    cs = np.cumsum(kd, dtype=np.uint64)                        # wraps; each block's keys restart below
    k = cs - np.r_[np.uint64(0), cs[kstart[1:] - 1]][blk]
    kend = kstart + nks - 1
    bad = np.flatnonzero(k[kend] != lasts)
    if len(bad):
        raise _bad(int(lasts[bad[0]]), "keys not increasing to the block's key")
    down = np.flatnonzero(k[1:] <= k[:-1])                     # blocks hold increasing, disjoint key ranges
    if len(down):
        raise _bad(int(lasts[blk[down[0] + 1]]), "keys not increasing to the block's key")
    bad = np.flatnonzero((np.add.reduceat(c, kstart) != ns) | (np.minimum.reduceat(c, kstart) <= 0)
                         | (np.maximum.reduceat(c, kstart) > most))
    if len(bad):
        raise _bad(int(lasts[bad[0]]), "counts do not add up to the postings")
    pos = np.minimum(np.searchsorted(k, q), len(k) - 1)
    pos = np.unique(pos[k[pos] == q])                          # the matched keys, of all blocks' keys
    if not len(pos):
        return np.zeros(0, np.int64)
    # the matched keys' entry ids: each block's postings' gaps, decompressed where a key matched
    pstart = np.cumsum(c) - c                                  # each key's first posting, of all blocks'
    used = np.unique(blk[pos])
    ioff = np.zeros(len(blocks), dtype=np.int64)
    ids_parts, o = [], 0
    for b in used.tolist():
        _, raw = blocks[b]
        codec, nk, n, nz = heads[b]
        ids_parts.append(_inflate(raw[_HEAD.size + nz:], codec, 4 * n, int(lasts[b])))
        ioff[b] = o
        o += 4 * n
    ibuf = np.frombuffer(b"".join(ids_parts), dtype=np.uint8)
    cnt = c[pos]
    kb = blk[pos]
    first = np.cumsum(cnt) - cnt                               # each matched key's first, of the postings read
    t = np.arange(int(cnt.sum())) - np.repeat(first, cnt)      # a posting's place within its key
    tb = np.repeat(kb, cnt)
    at = ioff[tb] + np.repeat(pstart[pos] - pstart[kstart[kb]], cnt) + t
    g = _gather(ibuf, at, ns[tb], 4, np.uint32).astype(np.int64)
    bad = np.flatnonzero((g <= 0) & (t > 0))
    if len(bad):
        raise _bad(int(lasts[tb[bad[0]]]), "entry ids not increasing within a key")
    gs = np.cumsum(g)
    ids = gs - np.repeat(gs[first] - g[first], cnt)
    if int(ids.max()) >= most:
        raise _bad(int(lasts[tb[int(np.argmax(ids))]]), f"an entry id over {most - 1}")
    return ids


def _count(txn, key: bytes, what: str) -> int:
    n = txn.get("meta", key)
    if n is None:
        return 0
    if type(n) is not int or n < 0:
        raise E.CorruptHubError(f"the hub's meta/{key.decode()} record is damaged ({str(n)[:40]}): expected {what}; "
                                "restore the hub from a backup")
    return n


def held(txn) -> int:
    """The postings the blocks hold, live or dead (``meta/block_postings``; 0 in a hub without blocks)."""
    return _count(txn, HELD_KEY, "a count")


def dead(txn) -> int | None:
    """How many of the blocks' postings name removed entries (``meta/block_dead``; 0 when none), or
    None when that record is damaged: unknown, so lookups check liveness until ``sweep`` counts again."""
    n = txn.get("meta", DEAD_KEY)
    if n is None:
        return 0
    return n if type(n) is int and 0 <= n < (1 << 62) else None


def due(txn) -> bool:
    """Whether the delta has outgrown the blocks (``COMPACT_SHARE``, ``COMPACT_MIN``): what makes an add compact."""
    return txn.count(DELTA) > max(COMPACT_MIN, held(txn) // COMPACT_SHARE)


# ---------------------------------------------------------------------------------------------- writes
def removed(txn, n: int) -> None:
    """An entry is being removed and ``n`` of its postings stay in the blocks, dead (those of its
    distinct band keys that were not in the delta, where ``parts.Bands`` deleted the rest): counted
    in ``meta/block_dead``, which lookups read to decide whether to check liveness."""
    d = dead(txn)
    if n > 0 and d is not None and txn.last(DB) is not None:   # unknown stays unknown (lookups check) until a sweep
        txn.put("meta", DEAD_KEY, d + int(n))


def _drop_dead(txn, n: int) -> None:
    """``n`` dead postings were dropped from the blocks: the count follows (never below 0)."""
    d = dead(txn)
    if n > 0 and d:
        txn.put("meta", DEAD_KEY, max(0, d - n))


def _decode_run(blocks: list, most: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(keys uint64, entry ids int64) of each posting of adjacent ``blocks`` [(bkey, last, raw)],
    decoded and checked (entry ids below ``most``, each block's keys above the one before)."""
    got, prev = [], -1
    for _, last, raw in blocks:
        k, c, e = decode(raw, last, most)
        _above(k, prev, last)
        prev = last
        got.append((_expand(k, c), e.astype(np.int64)))
    return got


def _rewrite(txn, blocks: list, got: list, alive: np.ndarray) -> tuple[int, int]:
    """Replace adjacent ``blocks`` [(bkey, last, raw)] decoded as ``got`` [(keys, ids)] by blocks of
    their postings whose ``alive`` mask is set (cut again); returns (postings before, after)."""
    ks, es, before = [], [], 0
    for (bkey, _, _), (k, e) in zip(blocks, got):
        before += len(e)
        ks.append(k)
        es.append(e)
        txn.delete(DB, bkey)
    keys, eids = np.concatenate(ks)[alive], np.concatenate(es)[alive]
    if len(keys):
        for new_last, blob in _cut(keys, eids):
            txn.put_raw(DB, u64(new_last), blob)
    return before, len(keys)


def _sweep_step(txn, start: int) -> int | None:
    """Drop the dead postings of the blocks from block key ``start`` on (about ``COMPACT_BLOCK_BYTES``
    of them, adjacent: merged and cut again); returns the block key to continue from, or None at the end."""
    blocks, size, most = [], 0, ids_bound(txn)
    hit = txn.first_from(DB, u64(start))
    while hit is not None and (not blocks or size + len(hit[1]) <= COMPACT_BLOCK_BYTES):
        bkey, raw = hit
        last = int.from_bytes(bkey, "big")
        blocks.append((bkey, last, raw))
        size += len(raw)
        hit = None if last == (1 << 64) - 1 else txn.first_from(DB, u64(last + 1))
    if not blocks:
        return None
    got = _decode_run(blocks, most)
    alive = _live(txn, np.concatenate([e for _, e in got]))
    if not alive.all():
        before, after = _rewrite(txn, blocks, got, alive)
        txn.put("meta", HELD_KEY, held(txn) - before + after)
        _drop_dead(txn, before - after)
    last = blocks[-1][1]
    return None if hit is None or last == (1 << 64) - 1 else last + 1


def sweep(store) -> int:
    """Drop the dead postings of every block (one write transaction per ``COMPACT_BLOCK_BYTES`` of
    blocks), each step taking what it drops off ``meta/block_dead`` (which then ends at the postings
    of entries removed meanwhile); returns the write transactions run. A damaged count is replaced
    first by the postings the blocks hold (a bound); after the sweep the count is set to 0 if no entry
    was added or removed meanwhile (every dead posting was then dropped)."""
    with store.read() as txn:
        d, mark = dead(txn), txn.get("meta", b"generation")
    if d == 0:
        return 0
    steps = 0
    if d is None:
        store.transact(lambda txn: txn.put("meta", DEAD_KEY, held(txn)))
        steps += 1
    start = 0
    while start is not None:
        start = store.transact(lambda txn, s=start: _sweep_step(txn, s))
        steps += 1

    def settle(txn):            # every dead posting swept, unless an entry came or went meanwhile
        if txn.get("meta", b"generation") == mark and dead(txn) != 0:
            txn.put("meta", DEAD_KEY, 0)

    store.transact(settle)
    return steps + 1


def _take_delta(txn, start: int, chunk: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """(keys uint64, entry ids int64) of the delta's postings from key ``start``, whole keys, about
    ``chunk`` of them, and whether postings are left after them."""
    width = held_posting_bytes(txn)
    if width is None:
        return _EMPTY, np.zeros(0, np.int64), False
    if width not in (4, 8):
        raise E.CorruptHubError(f"a band posting of {width} bytes (expected 4 or 8): the hub's bands database "
                                "is damaged; restore the hub from a backup")
    buf, more = txn.dups_from(DELTA, u64(start), chunk, width)
    rec = np.frombuffer(buf, dtype=np.dtype([("k", ">u8"), ("e", ">u4"), ("f", f"V{width - 4}")]))
    return rec["k"].astype(np.uint64), rec["e"].astype(np.int64), more


def _live(txn, eids: np.ndarray) -> np.ndarray:
    """Which of the postings' entry ids ``eids`` name an entry the hub holds (a mask): a removal leaves
    its postings in the blocks (``removed``); compaction and sweeps drop them."""
    u, inv = np.unique(eids, return_inverse=True)
    ok = np.fromiter((txn.exists("entries", u64(int(i))) for i in u), dtype=bool, count=len(u))
    return ok[inv]


def _unique_sorted(a: np.ndarray) -> np.ndarray:
    """``np.unique(a)``, in one pass where ``a`` is already ascending (the delta's keys, read in key order)."""
    if len(a) > 1 and not np.all(a[1:] >= a[:-1]):
        return np.unique(a)
    return a[np.r_[True, a[1:] != a[:-1]]] if len(a) else a


def _by_key_and_id(keys: np.ndarray, eids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``keys, eids`` ordered by (key, id), as ``np.lexsort((eids, keys))`` orders them. Compaction gives the
    old blocks' postings (sorted by (key, id)) then the delta's (sorted too, and newer: an add writes
    its postings to the delta, so a key's delta ids follow its block ids): a stable sort by key alone,
    which merges the two runs (~1/4 of lexsort's time), orders them by (key, id) whenever that holds
    -- checked; lexsort where it does not (a hub upgraded from format 5, or damaged)."""
    order = np.argsort(keys, kind="stable")
    k, e = keys[order], eids[order]
    if len(k) > 1 and not np.all((k[1:] != k[:-1]) | (e[1:] >= e[:-1])):
        order = np.lexsort((eids, keys))
        k, e = keys[order], eids[order]
    return k, e


def _compact_step(txn, start: int, chunk: int) -> int | None:
    """Move the delta's postings from key ``start`` (about ``chunk``, whole keys) into the blocks;
    returns the key to continue from, or None when the delta holds nothing from ``start``."""
    dk, de, more = _take_delta(txn, start, chunk)
    if not len(dk):
        return None
    uq = _unique_sorted(dk)
    # the blocks the delta keys fall into, in runs of adjacent blocks: [[(bkey, last, raw)], ...] with
    # the delta keys of each run; keys above every block join the last block
    runs, run_keys, i, old_bytes, prev_last = [], [], 0, 0, None
    while i < len(uq):
        hit = txn.first_from(DB, u64(int(uq[i])))
        tail = hit is None
        if tail:
            hit = txn.last(DB)
            j = len(uq)
        if hit is not None:
            bkey, raw = hit
            last = int.from_bytes(bkey, "big")
            j = len(uq) if tail else int(np.searchsorted(uq, np.uint64(last), side="right"))
            if runs and runs[-1][-1][0] == bkey:             # the tail's block, touched just before
                run_keys[-1] = (run_keys[-1][0], j)
                i = j
                continue
            if old_bytes and old_bytes + len(raw) > COMPACT_BLOCK_BYTES:
                more = True                                  # the rest in the next step
                break
            old_bytes += len(raw)
            nxt = None if prev_last is None or prev_last == (1 << 64) - 1 else txn.first_from(DB, u64(prev_last + 1))
            if runs and nxt is not None and nxt[0] == bkey:
                runs[-1].append((bkey, last, raw))
                run_keys[-1] = (run_keys[-1][0], j)
            else:
                runs.append([(bkey, last, raw)])
                run_keys.append((i, j))
            prev_last = last
        else:                                                # no blocks yet
            runs.append([])
            run_keys.append((i, j))
        i = j
    taken_to = uq[i - 1]                                      # every delta key <= this one is moved
    sel = dk <= taken_to
    dk, de = dk[sel], de[sel]
    moved_held, most = 0, ids_bound(txn)
    olds = [_decode_run(blocks, most) for blocks in runs]     # each run's blocks decoded: [[(keys, ids)]]
    # removals leave their postings in the blocks (dead): one check of each distinct id of the step
    # (an entry's postings lie in hundreds of blocks: a check a block's ids was 3/4 of the CPU)
    held_ids = [e for got in olds for _, e in got]
    alive, at = (_live(txn, np.concatenate(held_ids)) if held_ids else None), 0
    for blocks, got, (a, b) in zip(runs, olds, run_keys):
        lo, hi = (np.searchsorted(dk, uq[a], side="left"), np.searchsorted(dk, uq[b - 1], side="right"))
        ks, es = [dk[lo:hi]], [de[lo:hi]]
        for (bkey, _, _), (kk, e) in zip(blocks, got):
            live = alive[at:at + len(e)]
            at += len(e)
            moved_held -= len(e)
            ks.append(kk[live])
            es.append(e[live])
            txn.delete(DB, bkey)
        keys, eids = _by_key_and_id(np.concatenate(ks[1:] + ks[:1]), np.concatenate(es[1:] + es[:1]))
        keep = np.r_[True, (keys[1:] != keys[:-1]) | (eids[1:] != eids[:-1])]
        keys, eids = keys[keep], eids[keep]
        moved_held += len(keys)
        for new_last, blob in _cut(keys, eids):
            txn.put_raw(DB, u64(new_last), blob)
    gone = txn.delete_range(DELTA, u64(int(dk[0])), u64(int(taken_to)))   # the delta read from dk[0] on: its keys
    if gone != i:                                                           # up to taken_to are uq[:i], no others
        raise E.CorruptHubError(f"band compaction deleted {gone} delta keys where it read {i}: the hub's bands "
                                "database is damaged (or this is a fitsketch bug); nothing was changed: restore "
                                "the hub from a backup and report it")
    txn.put("meta", HELD_KEY, held(txn) + moved_held)
    _drop_dead(txn, 0 if alive is None else int(len(alive) - np.count_nonzero(alive)))
    return int(taken_to) + 1 if more and int(taken_to) < (1 << 64) - 1 else None


def compact(store, chunk: int = COMPACT_CHUNK, most: int | None = None) -> int:
    """Move every delta posting into the blocks, one write transaction per chunk of key range
    (``_compact_step``), or only the first ``most`` chunks (an add's share, ``AUTO_STEPS``: the next
    call starts again from the lowest key the delta holds); returns the transactions run. Readers
    and other writers run between chunks."""
    start, steps = 0, 0
    while start is not None and (most is None or steps < most):
        start = store.transact(lambda txn, s=start: _compact_step(txn, s, chunk))
        steps += 1
    return steps
