"""The LSH band index of the candidate stage: for each band key, the entries with a non-empty
feature whose MinHash signature has that key (``minhash.feature_band_keys``, the hub's
``lsh_k`` x ``lsh_l``). Derived from the stored signatures since hub format 6 -- an older hub
kept it in LMDB as the ``bands`` postings (9.8 KiB of pages an entry on merged sketches, 2.1 on
real-valued data: bench/SUMMARY.md) -- held in memory and persisted beside the hub as
``<hub>/indexes/bands.fsidx`` (storage/arrayfile.py, like the screen and profile indexes of
engine/indexes.py).

In memory: one posting per distinct (band key, entry), as two arrays sorted by (key, entry id)::

    keys   (n_postings,) uint64    the band key (int64 band keys viewed as uint64)
    eids   (n_postings,) uint32    the entry id (int64 once an id reaches 2**32)
    ids    (n_entries,)  int64     the entries held, ascending

New postings go first to a small delta of the same layout, merged into the main arrays once it
holds over ``1 / DELTA_SHARE`` of them (at least ``DELTA_MIN`` postings): an add between two
searches costs O(its postings + the delta), not a copy of the whole index (95M postings at 100k
merged entries). A lookup is two ``searchsorted`` a query key in each. ``sync`` brings the index to the hub's generation
the way the screen index does (engine/screen.py): entries with ids above the last one held are
found by a range scan of ``entries`` (ids only grow, so their postings go after every held
posting of the same key: one ``np.insert``), and removals by the held count exceeding the hub's
(a key scan then says which).

On disk (``BAND_INDEX_FORMAT``): one uint8 array ``packed``, the storage codec's compressed
pack (``pack(compress=True)``: integer delta or byte shuffle + zstd, lossless, chosen per array;
in chunks of ``FILE_CHUNK`` elements) of ``ids``, the distinct keys ``ukeys`` (uint64, increasing),
``counts`` (uint32, the postings of each) and ``eids``: sorted 64-bit keys delta-code to ~6 bytes
and entry ids to ~1-2 (raw they take 16 bytes a posting where keys are not shared); header ``{v, kind: "bands", hub: {created,
format}, params: {lsh_k, lsh_l}, generation, entries}``. A file is used when it is valid and fits
the hub (the same header rules as indexes._stale), then brought forward; anything else -- another
format, hub or parameters, a generation after the hub's, a failed checksum, keys out of order,
counts that do not add up, an entry id not held -- is logged and the index is rebuilt from the
signatures. Nothing in it is a Python object.
"""
from __future__ import annotations

import logging
import threading

import numpy as np

from . import errors as E
from . import signature_records as _sigrec
from .minhash import feature_band_keys
from .storage import CodecError, from_u64, pack, u64, unpack

log = logging.getLogger(__name__)

BAND_INDEX_FORMAT = 1
SYNC_CHUNK = 1024          # signatures decoded and keyed at a time
DELTA_SHARE = 8            # the delta is merged into the main arrays past 1/8 of them ...
DELTA_MIN = 1 << 16        # ... and this many postings
FILE_CHUNK = 1 << 22       # elements an array chunk of the file (the codec compresses arrays up to 256 MB)
_FILE_ARRAYS = {"ids": np.int64, "ukeys": np.uint64, "counts": np.uint32, "eids": (np.uint32, np.int64)}
_EMPTY_SIG = np.uint32(0xFFFFFFFF)


def entry_postings(sigs: list, eids: list, lsh_k: int, lsh_l: int) -> tuple[np.ndarray, np.ndarray]:
    """(keys uint64, eids int64): one posting per distinct (band key, entry) of the entries'
    non-empty features, sorted by (key, entry id). ``sigs``: each entry's (features, num_perm)
    uint32 signatures."""
    rows = [np.asarray(s)[np.asarray(s)[:, 0] != _EMPTY_SIG] if len(s) else np.asarray(s) for s in sigs]
    n = [len(r) for r in rows]
    if not sum(n):
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    bands = feature_band_keys(np.concatenate([r for r in rows if len(r)]), lsh_k, lsh_l)   # (features, L) int64
    k = bands.reshape(-1).view(np.uint64)
    e = np.repeat(np.asarray(eids, dtype=np.int64), np.asarray(n) * bands.shape[1])
    order = np.lexsort((e, k))
    k, e = k[order], e[order]
    keep = np.ones(len(k), dtype=bool)
    keep[1:] = (k[1:] != k[:-1]) | (e[1:] != e[:-1])
    return k[keep], e[keep]


class BandIndex:
    """The band postings of the entries held (module docstring)."""

    def __init__(self, lsh_k: int, lsh_l: int):
        self.lock = threading.RLock()
        self.lsh_k, self.lsh_l = int(lsh_k), int(lsh_l)
        self.generation = -1
        self.ids = np.zeros(0, np.int64)
        self.keys = np.zeros(0, np.uint64)       # the main arrays
        self.eids = np.zeros(0, np.uint32)
        self._dk = np.zeros(0, np.uint64)        # the delta: postings of entries above the main arrays'
        self._de = np.zeros(0, np.uint32)

    def __len__(self) -> int:
        return len(self.ids)

    # ------------------------------------------------------------------ queries
    def lookup(self, band_keys) -> np.ndarray:
        """The ids (int64, ascending, each once) of the entries holding any of ``band_keys``
        (int64 or uint64 band keys, any shape)."""
        q = np.asarray(band_keys).reshape(-1)
        q = np.unique(q.view(np.uint64) if q.dtype == np.int64 else q.astype(np.uint64))
        with self.lock:
            parts = [(self.keys, self.eids), (self._dk, self._de)]
        found = []
        for keys, eids in parts:
            lo = np.searchsorted(keys, q, side="left")
            n = np.searchsorted(keys, q, side="right") - lo
            total = int(n.sum())
            if total:
                at = np.repeat(lo - (np.cumsum(n) - n), n) + np.arange(total)
                found.append(eids[at].astype(np.int64))
        return np.unique(np.concatenate(found)) if found else np.zeros(0, np.int64)

    def postings(self) -> tuple[np.ndarray, np.ndarray]:
        """(keys, entry ids) of every posting, sorted by (key, entry id): the main arrays and the delta."""
        with self.lock:
            return _merged(self.keys, self.eids, self._dk, self._de)

    # ------------------------------------------------------------------ keeping up with the hub
    def sync(self, txn, generation: int) -> int:
        """Bring the index to ``generation`` (read in ``txn``); returns the entries read or dropped."""
        with self.lock:
            if generation == self.generation:
                return 0
            last = int(self.ids[-1]) if len(self.ids) else -1
            new_ids = [from_u64(k) for k in txn.keys("entries", start=u64(last + 1))]
            ks, es, held = [], [], []
            for lo in range(0, len(new_ids), SYNC_CHUNK):
                chunk, sigs = [], []
                for eid in new_ids[lo:lo + SYNC_CHUNK]:
                    raw = txn.get("signatures", u64(eid))
                    if raw is not None:
                        chunk.append(eid)
                        sigs.append(_sigrec.decode(raw))
                k, e = entry_postings(sigs, chunk, self.lsh_k, self.lsh_l)
                ks.append(k)
                es.append(e)
                held += chunk
            changed = len(held)
            if held:
                self._insert(np.concatenate(ks), np.concatenate(es), np.asarray(held, dtype=np.int64))
            if len(self.ids) > txn.count("entries"):                    # removals
                present = np.fromiter((from_u64(k) for k in txn.keys("entries")), dtype=np.int64)
                keep = np.isin(self.ids, present)
                changed += int((~keep).sum())
                self._drop(self.ids[~keep])
            self.generation = generation
            return changed

    def _insert(self, k: np.ndarray, e: np.ndarray, ids: np.ndarray) -> None:
        """Add the postings (k, e) of entries ``ids``, all above the held ones: into the delta, which
        is merged into the main arrays once it outgrows ``1 / DELTA_SHARE`` of them."""
        if len(k) > 1:
            order = np.lexsort((e, k))
            k, e = k[order], e[order]
        self._dk, self._de = _merged(self._dk, self._de, k, e)
        self.ids = np.concatenate([self.ids, ids])
        if len(self._dk) > max(DELTA_MIN, len(self.keys) // DELTA_SHARE):
            self.keys, self.eids = _merged(self.keys, self.eids, self._dk, self._de)
            self._dk, self._de = np.zeros(0, np.uint64), np.zeros(0, self.eids.dtype)

    def _drop(self, gone: np.ndarray) -> None:
        if not len(gone):
            return
        keep, dkeep = ~np.isin(self.eids, gone), ~np.isin(self._de, gone)
        self.keys, self.eids = self.keys[keep], self.eids[keep]
        self._dk, self._de = self._dk[dkeep], self._de[dkeep]
        self.ids = self.ids[~np.isin(self.ids, gone)]

    # ------------------------------------------------------------------ the file
    def state(self) -> tuple[dict, dict]:
        """(header fields, arrays) of the file (module docstring)."""
        with self.lock:
            (keys, eids), ids = self.postings(), self.ids
            start = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else np.zeros(0, np.int64)
            counts = np.diff(np.r_[start, len(keys)]).astype(np.uint32)
            return ({"v": BAND_INDEX_FORMAT, "kind": "bands", "params": self.params(),
                     "generation": int(self.generation), "entries": len(ids)},
                    {"packed": pack_arrays({"ids": ids, "ukeys": keys[start], "counts": counts, "eids": eids})})

    def params(self) -> dict:
        return {"lsh_k": self.lsh_k, "lsh_l": self.lsh_l}

    @classmethod
    def from_state(cls, meta: dict, a: dict, lsh_k: int, lsh_l: int) -> "BandIndex":
        """The index a file holds, every array checked (``errors.CorruptHubError`` otherwise)."""
        def check(cond, what):
            if not cond:
                raise E.CorruptHubError(f"band index file: {what}; it is derived data: delete it and it is rebuilt")

        idx = cls(lsh_k, lsh_l)
        check(set(a) == {"packed"} and a["packed"].dtype == np.uint8 and a["packed"].ndim == 1, f"arrays {sorted(a)}")
        a = unpack_arrays(a["packed"])
        ids, uk, cnt, eids = a["ids"], a["ukeys"], a["counts"], a["eids"]
        check(ids.dtype == np.int64 and ids.ndim == 1 and len(ids) == meta.get("entries")
              and bool(np.all(np.diff(ids) > 0)) and (len(ids) == 0 or ids[0] >= 0), "entry ids are not increasing")
        check(uk.dtype == np.uint64 and uk.ndim == 1 and bool(np.all(uk[1:] > uk[:-1])), "keys are not increasing")
        check(cnt.dtype == np.uint32 and cnt.shape == uk.shape and bool(np.all(cnt > 0)), "counts are not one "
              "positive count a key")
        check(eids.dtype in (np.uint32, np.int64) and eids.ndim == 1 and int(cnt.sum(dtype=np.int64)) == len(eids),
              "the counts do not add up to the postings")
        keys = np.repeat(uk, cnt.astype(np.int64))
        same = keys[1:] == keys[:-1]
        e64 = eids.astype(np.int64)
        check(bool(np.all(e64[1:][same] > e64[:-1][same])), "a key's entries are not increasing")
        check(bool(np.isin(e64, ids).all()), "a posting of an entry the file does not hold")
        g = meta.get("generation")
        check(isinstance(g, int) and g >= 0, f"generation {g!r}")
        idx.ids, idx.keys, idx.eids, idx.generation = ids, keys, eids, g
        return idx


def _merged(k0: np.ndarray, e0: np.ndarray, k1: np.ndarray, e1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Postings (k0, e0) and (k1, e1), each sorted by (key, entry id), with every entry of the second
    above every entry of the first, as one sorted pair of arrays: the second's go after the first's
    of their key (one ``np.insert``, O(both)). Entry ids stay uint32 below 2**32, int64 from there."""
    if not len(k1):
        return k0, e0
    wide = e0.dtype != np.uint32 or e1.dtype != np.uint32 and int(e1.max()) >= 1 << 32
    dtype = np.int64 if wide else np.uint32
    pos = np.searchsorted(k0, k1, side="right")
    return np.insert(k0, pos, k1), np.insert(e0.astype(dtype, copy=False), pos, e1.astype(dtype))


def pack_arrays(arrays: dict) -> np.ndarray:
    """The file's ``packed`` array: ``arrays`` (name -> 1-D array) compressed by the storage codec, in
    chunks of ``FILE_CHUNK`` elements."""
    return np.frombuffer(pack({name: [a[lo:lo + FILE_CHUNK] for lo in range(0, max(len(a), 1), FILE_CHUNK)]
                               for name, a in arrays.items()}, compress=True), dtype=np.uint8)


def unpack_arrays(buf: np.ndarray) -> dict:
    """``pack_arrays``'s arrays back, each of its expected dtype (``errors.CorruptHubError`` otherwise)."""
    bad = "band index file: {}; it is derived data: delete it and it is rebuilt"
    try:
        d = unpack(buf.tobytes(), stored=True)     # a hub's own derived file: compressed arrays accepted
    except CodecError as e:
        raise E.CorruptHubError(bad.format(f"its arrays cannot be decoded ({e})")) from None
    if not isinstance(d, dict) or set(d) != set(_FILE_ARRAYS):
        raise E.CorruptHubError(bad.format("another set of arrays"))
    out = {}
    for name, want in _FILE_ARRAYS.items():
        parts = d[name]
        if not (isinstance(parts, list) and parts and all(isinstance(x, np.ndarray) and x.ndim == 1
                                                           and x.dtype in np.atleast_1d(want) for x in parts)
                and len({x.dtype for x in parts}) == 1):
            raise E.CorruptHubError(bad.format(f"array {name} is not 1-D of {want}"))
        out[name] = np.concatenate(parts)
    return out


__all__ = ["BandIndex", "BAND_INDEX_FORMAT", "entry_postings"]
