"""An entry on disk is a list of parts. Each part knows its own keys (storage/schema.py lists them
all) and has three steps: ``prepare`` (outside the transaction: every record computed and
checked, so a failing add leaves the hub unchanged), ``write`` and ``delete`` (inside the one
write transaction of the add or remove). ``Hub.add`` / ``remove`` iterate ``PARTS`` and never name
another subsystem's keys; a new subsystem storing something per entry adds one part here.

Parts are written in list order and deleted in reverse order (the band postings are found from
the stored signatures, the label-kind count from the stored class record, so those are removed
before the records they read).
"""
from __future__ import annotations

import os
import struct
import time
from dataclasses import dataclass

import numpy as np

from . import accuracy as _acc
from . import band_blocks as _blocks
from . import errors as E
from . import profiles as _profiles
from . import screen as _screen
from . import signature_records as _sigrec
from .kernels import ingest as _ingest
from .kernels._device import usable_cpus
from .minhash import feature_band_keys
from .partitions import pack_hist, pack_hists
from .storage import from_u64, pack, u64
from .storage.codec import prefer
from .storage.env import POSTING_BYTES_KEY, held_posting_bytes
from .storage.schema import ae_key

ENTRY_FORMAT = 1   # entry, signature, extra and weights records (storage/schema.py)
_EMPTY_SIG = np.uint32(0xFFFFFFFF)


PAGE = 4096            # LMDB page: a value over ~2 KiB takes whole pages of its own (a 16-byte header each run)
INLINE_MAX = 2000      # values up to about this many bytes share leaf pages with other records
FIT_LEVEL = 15         # zstd level of the second try (0: none); 16+ cost ~2x the CPU for < 1% fewer bytes
FIT_FIRST = 6          # a cheaper level tried before FIT_LEVEL (0: none): its pack kept when it saves the page
                       # and is not near another boundary (scale32: the same pages, retry CPU 1.26 -> 0.55 ms)
FIT_SHARE = 0.06       # tried when <= this share fewer bytes would save a page: level 15 saved 0-12% of a
                       # record's level-1 bytes (signatures 2-4%, histograms 3-12%, coverage 1-7%, JS-LSH keys
                       # 0-12%); 0.1 -> 0.08 cut ~1/3 of the tries for the same pages (bench/SUMMARY.md,
                       # "Bulk add, twelfth session"); 0.08 -> 0.06 ~1/3 of the rest: each page level 15 saved
                       # on real-valued data needed <= 5.2 %, on merged sketches 1 page in 250 entries needed
                       # more ("Bulk add, fourteenth session")
FIT_MAX = 1 << 16      # larger records are packed once: level 15 on a 200,000-row entry's ~0.3 MB cost ~0.3 s CPU (ingest)


def _pages(n: int) -> float:
    """LMDB pages a value of ``n`` bytes costs (overflow pages, or ~its share of a leaf page)."""
    return n / PAGE if n <= INLINE_MAX else -(-(n + 16) // PAGE)


def _near(n: int) -> bool:
    """Whether a record of ``n`` bytes takes whole pages and <= ``FIT_SHARE`` fewer bytes would save one."""
    return INLINE_MAX < n <= FIT_MAX and min(n - INLINE_MAX, (n + 16) % PAGE or PAGE) <= FIT_SHARE * n


# The filter each record field compresses best with (storage/codec.py: 0 the bytes as they are, 2 integer
# delta + byte shuffle), given to ``fit_pack`` so it compresses those arrays once instead of trying both:
# each is the filter that won on both the merged scale32 sketches (600 entries, seed 5) and fresh
# real-valued data (40 ``hub.add`` entries, seed 9), within 0.6 % of the better one's bytes where it lost.
# Fields whose winner changes with the data (the histogram counts ``c``: 0 on merged sketches, 2 on
# real-valued data, ~4 % apart) are still tried both ways (bench/SUMMARY.md, "Bulk add, fourteenth session").
SIG_FILTERS = {"sd": 2, "si": 0}                 # a signature dictionary's sorted values, its indices
HIST_FILTERS = {"b0": 0, "gap": 0, "xv": 0}      # first buckets, gaps, large gaps
KEYS_FILTERS = {"jk_part": 0, "jk_small": 0}     # JS-LSH band keys (hashes)
EXTRA_FILTERS = {"coverage": {"code": 2, "count": 0, "table": 0}}   # row coverage: sorted codes, counts


def _prefer(chosen: dict, obj, hints: dict) -> None:
    """``codec.prefer`` each array of ``obj`` (a dict) named in ``hints`` (a nested dict for a nested record)."""
    for k, flt in hints.items():
        v = obj.get(k)
        if type(flt) is dict:
            if type(v) is dict:
                _prefer(chosen, v, flt)
        elif type(v) is np.ndarray:
            prefer(chosen, v, flt)


def fit_pack(obj, hints: dict | None = None) -> bytes:
    """``obj`` packed with its arrays compressed (storage/codec.py ``compress=True``, lossless),
    fitted to LMDB's pages: a value over ~2 KiB takes whole 4 KiB pages, so one just over a page
    boundary is packed again, first at zstd level ``FIT_FIRST`` (~3x the CPU of level 1), then,
    unless that saved the page and left the record clear of the next boundary, at ``FIT_LEVEL``
    (~10x the CPU of level 1, 5-18% fewer bytes on histogram, coverage, screen and signature
    records); the fewer pages are kept. Decoding is the same for either (the level is not recorded).
    ``hints``: the filter of some of ``obj``'s fields (``SIG_FILTERS`` ...): those arrays are not tried
    with the other filters."""
    chosen = {}   # each array's filter at level 1, the only one tried again (codec.pack)
    if hints and type(obj) is dict:
        _prefer(chosen, obj, hints)
    b = pack(obj, compress=True, filters=chosen)
    if FIT_LEVEL and _near(len(b)):
        for level in ((FIT_FIRST,) if 0 < FIT_FIRST < FIT_LEVEL else ()) + (FIT_LEVEL,):
            c = pack(obj, compress=True, level=level, filters=chosen)
            if _pages(len(c)) < _pages(len(b)):
                b = c
                if not _near(len(b)):
                    break
    return b


def _put(txn, db: str, key: bytes, obj) -> None:
    """Store a per-entry record with its arrays compressed (``fit_pack``; hub format 3):
    signatures, histograms, coverage, profile and screen records are most of an entry's bytes.
    ``obj`` is the record, or its ``fit_pack`` bytes when a part packed it in ``prepare`` (outside
    the transaction, in ``entries_writer``'s threads; records are dicts, never bytes). Appended
    where its key is the database's last (``Txn.put_raw(append=True)``: entry ids grow, so the
    ``entries`` records fill their leaf pages instead of leaving each half empty)."""
    txn.put_raw(db, key, obj if type(obj) is bytes else fit_pack(obj), append=True)


def _sig_record(sig: np.ndarray) -> dict:
    """The stored record of an entry's signatures: its per-permutation dictionary
    (engine/signature_records.py) where that holds fewer bytes before compression than the matrix,
    else the matrix; both decode to ``sig``. (Choosing by packed size instead packs both: +0.8 ms
    an entry of 32 x 128 for the same pages on the ``size`` workloads.) Hub format 5; a format-4
    fitsketch wrote ``_sigrec.plain``."""
    rec = _sigrec.dictionary(sig)
    return rec if sum(np.asarray(v).nbytes for k, v in rec.items() if k != "v") < np.asarray(sig).nbytes \
        else _sigrec.plain(sig)


@dataclass
class NewEntry:
    """What an add brings, checked: the sketch and what was computed beside it."""
    name: str
    sketch: object
    metadata: dict
    fleet: list | None = None        # SimEx autoencoder records
    embedding: np.ndarray | None = None
    probed: tuple | None = None      # (responses, logit labels, probe set) for ProbeLog
    spaces: dict | None = None       # "extra" fields: coverage spaces and the class record


class Part:
    name = ""

    def prepare(self, new: NewEntry, config, device):
        """What ``write`` stores (computed before the transaction), or None: nothing to store."""
        return None

    def write(self, txn, eid: int, new: NewEntry, prepared):
        pass

    def delete(self, txn, eid: int, rec: dict, config) -> None:
        pass

    def prepare_many(self, news: list, config, device, shared: dict) -> list:
        """``prepare`` of every entry of a batch (``Hub.add_sketches``); ``shared`` holds what parts
        of one batch compute once for all of them (profiles._aggregate)."""
        return [self.prepare(new, config, device) for new in news]

    def write_many(self, txn, eids: list, news: list, prepared: list) -> list:
        """``write`` of every entry of a batch, in one transaction."""
        return [self.write(txn, eid, new, prep) for eid, new, prep in zip(eids, news, prepared)]


class Core(Part):
    """The entry record, its name, its feature signatures and its partition histograms."""
    name = "core"

    # prepared: the signature and histogram records' fit_pack bytes (they do not depend on the entry
    # id: packed outside the transaction) and the add time; the entry record holds its id, packed in write

    def prepare(self, new, config, device):
        sk = new.sketch
        return {"sig": fit_pack(_sig_record(sk.signatures), SIG_FILTERS),
                "hist": fit_pack(pack_hist(sk.hist, sk.n_partitions, sk.n_features), HIST_FILTERS), "created": time.time()}

    def prepare_many(self, news, config, device, shared):
        a = _aggregate(news, shared)
        if a is None:
            return super().prepare_many(news, config, device, shared)
        now = time.time()
        packed = pack_hists(a["e"], a["part"], a["feat"], a["bucket"], a["count"],
                            [n.sketch.n_partitions for n in news], [n.sketch.n_features for n in news])
        return [{"sig": fit_pack(_sig_record(n.sketch.signatures), SIG_FILTERS), "hist": fit_pack(h, HIST_FILTERS),
                 "created": now}
                for n, h in zip(news, packed)]

    def write(self, txn, eid, new, prepared):
        sk, k = new.sketch, u64(eid)
        rec = {"v": ENTRY_FORMAT, "id": eid, "name": new.name, "metadata": new.metadata,
               "features": sk.names, "kinds": sk.kinds, "n_rows": sk.n_rows,
               "n_partitions": sk.n_partitions, "partition_size": sk.partition_size,
               "sums": sk.sums, "counts": sk.counts, "created": prepared["created"]}
        if new.spaces and "classes" in new.spaces:
            rec["labelled"] = True   # method="auto" reads class records only of these
        _put(txn, "entries", k, rec)
        txn.put_raw("names", new.name.encode("utf-8"), k)
        _put(txn, "signatures", k, prepared["sig"])
        _put(txn, "histograms", k, prepared["hist"])
        return rec

    def delete(self, txn, eid, rec, config):
        k = u64(eid)
        for db in ("entries", "signatures", "histograms"):
            txn.delete(db, k)
        txn.delete("names", rec["name"].encode("utf-8"))


class Extra(Part):
    """The entry's "extra" record: its row coverage sketch, its coverage spaces and its class record
    (with the hub's label-kind count, which keeps labelled entries on one label vocabulary)."""
    name = "extra"

    def prepare(self, new, config, device):
        sk, spaces = new.sketch, new.spaces
        if sk.coverage is not None or spaces:  # spaces: coverage_spaces records, from add
            cov = {} if sk.coverage is None else {"coverage": sk.coverage}
            return fit_pack({"v": ENTRY_FORMAT, **cov, **(spaces or {})}, EXTRA_FILTERS)   # no entry id in it: packed here
        return None

    def write(self, txn, eid, new, prepared):
        spaces = new.spaces
        if prepared is not None:
            _put(txn, "extra", u64(eid), prepared)
        if spaces and "classes" in spaces:
            count_label_kind(txn, spaces["classes"]["labels"], +1)

    def delete(self, txn, eid, rec, config):
        k = u64(eid)
        classes = (txn.get("extra", k) or {}).get("classes")
        if classes is not None:
            count_label_kind(txn, classes["labels"], -1)
        txn.delete("extra", k)


class SimExFleet(Part):
    """The entry's SimEx autoencoders."""
    name = "simex"

    def write(self, txn, eid, new, prepared):
        if new.fleet is not None:
            txn.put("weights", ae_key(u64(eid)), {"v": ENTRY_FORMAT, "simex": new.fleet})

    def delete(self, txn, eid, rec, config):
        txn.delete("weights", ae_key(u64(eid)))


class Embeddings(Part):
    """The entry's sample embeddings (engine/embeddings.py)."""
    name = "embeddings"

    def write(self, txn, eid, new, prepared):
        if new.embedding is not None:
            from .embeddings import write_embeddings

            write_embeddings(txn, eid, new.embedding, n_rows=new.sketch.n_rows)

    def delete(self, txn, eid, rec, config):
        from .embeddings import delete_embeddings

        delete_embeddings(txn, eid)


class ModelDescriptors(Part):
    """The ProbeLog descriptors of the entry's model (engine/probelog.py)."""
    name = "probelog"

    def write(self, txn, eid, new, prepared):
        if new.probed is not None:
            from .probelog import write_model_descriptors

            responses, labels, pset = new.probed
            write_model_descriptors(txn, eid, new.name, responses, labels, pset)

    def delete(self, txn, eid, rec, config):
        from .probelog import delete_model_descriptors

        delete_model_descriptors(txn, eid)


class Profile(Part):
    """The entry's random-projection profile and stored JS-LSH band keys (engine/profiles.py), in
    databases ``profiles`` and ``profile_keys`` (hub format 5; before, in ``extra``)."""
    name = "profile"

    # prepared: the two records' fit_pack bytes (no entry id in them: packed outside the transaction)

    def prepare(self, new, config, device):
        sk = new.sketch
        prof, keys = _profiles.record(sk.hist, sk.names, sk.n_partitions, config, device)
        return fit_pack(prof), fit_pack(keys, KEYS_FILTERS)

    def prepare_many(self, news, config, device, shared):
        a = _aggregate(news, shared)
        if a is None:
            return super().prepare_many(news, config, device, shared)
        return [(fit_pack(prof), fit_pack(keys, KEYS_FILTERS))
                for prof, keys in _profiles.records([n.sketch for n in news], config, device, agg=a)]

    def write(self, txn, eid, new, prepared):
        prof, prof_keys = prepared
        _put(txn, "profiles", u64(eid), prof)            # hub format 5: appended, each kind in its database
        _put(txn, "profile_keys", u64(eid), prof_keys)

    def delete(self, txn, eid, rec, config):
        for db, k in (("profiles", u64(eid)), ("profile_keys", u64(eid)), ("extra", _profiles.key(eid)),
                      ("extra", _profiles.keys_key(eid))):    # either place (format >= 5, or before)
            txn.delete(db, k)


class Screen(Part):
    """The entry's dataset-level screen record (engine/screen.py): derived from the histograms and
    the entry record, so since hub format 5 it is not stored (3-4 KB, a 4 KiB overflow page an
    entry) -- the screen index computes it when it loads the entry (screen.records) and keeps it in
    ``<hub>/indexes/screen.fsidx``. Entries added before format 5 keep theirs, removed here."""
    name = "screen"

    def delete(self, txn, eid, rec, config):
        txn.delete("extra", _screen.key(eid))


BANDS_FORMAT = 2    # band postings: 1 = 8 bytes (entry id, feature), 2 = 4 bytes (entry id; hubs created at format 4)
POSTING_BYTES = 4   # the width new hubs write (BANDS_FORMAT 2)


def posting_bytes(txn) -> int:
    """The width of the hub's band postings: 4 (the entry id) for a hub created at format 4, 8
    (entry id, feature) for one upgraded from an older format (``meta/posting_bytes``, written by
    its upgrade, storage/env.py). One LMDB key's values must be of one width, so a hub keeps its own."""
    w = txn.get("meta", POSTING_BYTES_KEY)
    if w is not None and (type(w) is not int or w not in (4, 8)):
        raise E.CorruptHubError(f"the hub's meta/posting_bytes record is damaged ({str(w)[:40]}): expected 4 or 8; "
                                "restore the hub from a backup")
    held = held_posting_bytes(txn)   # the stored postings' width wins: LMDB would take values of another width
    if w is None:                # hubs created before creation wrote the record: what they hold, else 4
        return held or POSTING_BYTES
    if held is not None and held != w:
        raise E.CorruptHubError(f"the hub's band postings are {held} bytes but meta/posting_bytes says {w}: the hub "
                                "was written by two fitsketch versions at once; restore it from a backup")
    return w


class Bands(Part):
    """The LSH band postings of the entry's non-empty features: (band key) -> the entry id (4 bytes;
    (entry id, feature), 8 bytes, in hubs upgraded from format <= 3: ``posting_bytes``), one per
    distinct key of the entry (``_postings``), written to the dupsort ``bands`` database (the delta
    of engine/band_blocks.py, whose compaction moves them into blocks); removal deletes them from
    either place."""
    name = "bands"

    # prepared: the entry's distinct band keys and their features (``_keys``; computed with the other
    # parts' records, in add_sketches' workers, not in the write transaction)

    def prepare(self, new, config, device):
        sig = new.sketch.signatures
        return self._keys(feature_band_keys(sig, config.lsh_k, config.lsh_l), np.nonzero(sig[:, 0] != _EMPTY_SIG)[0])

    def prepare_many(self, news, config, device, shared):
        sigs = [n.sketch.signatures for n in news]
        if not sigs:
            return []
        lo = np.cumsum([0] + [len(x) for x in sigs])
        cat = np.concatenate(sigs)
        done = _ingest.band_runs(cat, lo, config.lsh_k, config.lsh_l)   # compiled: _keys' arrays (uint32 signatures)
        if done is not None:
            return done
        bands = feature_band_keys(cat, config.lsh_k, config.lsh_l)   # row-wise: as one at a time
        return [self._keys(bands[lo[i]:lo[i + 1]], np.nonzero(x[:, 0] != _EMPTY_SIG)[0]) for i, x in enumerate(sigs)]

    @staticmethod
    def _keys(bands, nonempty):
        """The entry's distinct band keys of its non-empty features, ascending (uint64), and for each the
        lowest non-empty feature with that key (uint32). The candidate stage reads only the entry id of
        a posting, so one per (key, entry) finds the same entries as one per (key, entry, feature), in
        fewer records: columns of one distribution have equal signatures (a 32-column real-valued
        entry has ~280 distinct keys of 1,024). Removal deletes (entry, feature) for every feature and
        key, so it removes either kind; an older fitsketch reads and removes these postings alike."""
        sel = bands[nonempty]                                       # (features, L) int64
        keys, first = np.unique(sel.reshape(-1).view(np.uint64), return_index=True)   # first: row-major
        return keys, nonempty.astype(np.uint32)[first // max(sel.shape[1], 1)]

    @staticmethod
    def _postings(eid, prepared):
        """One posting per distinct band key of the entry (``_keys``): the keys ascending and the
        postings (entry id << 32) | feature."""
        keys, feats = prepared
        return keys, (np.uint64(eid) << np.uint64(32)) | feats.astype(np.uint64)

    @staticmethod
    def _put(txn, keys, vals) -> None:
        """Store postings ``vals`` ((entry id << 32) | feature) at the hub's width (``posting_bytes``):
        4 bytes keep the entry id only (one posting per (key, entry) either way: ~1/3 fewer pages)."""
        w = posting_bytes(txn)
        txn.put_dups("bands", keys, vals if w == 8 else vals >> np.uint64(32), width=w)

    def write(self, txn, eid, new, prepared):
        self._put(txn, *self._postings(eid, prepared))

    def write_many(self, txn, eids, news, prepared):
        # one sorted insert of the batch's postings: LMDB inserts in key order touch each page once
        if not eids:
            return []
        self._put(txn, *self.sorted_run(eids, prepared))
        return [None] * len(eids)

    def sorted_run(self, eids, prepared) -> tuple[np.ndarray, np.ndarray]:
        """The postings of entries ``eids`` (ascending), sorted by key, stably: the postings come by entry
        id, each entry's by feature, so every key's new values go in ascending -- appended to its
        sorted duplicates (~20% less CPU than in any order)."""
        kv = [self._postings(eid, prep) for eid, prep in zip(eids, prepared)]
        keys, vals = np.concatenate([k for k, _ in kv]), np.concatenate([v for _, v in kv])
        order = np.argsort(keys, kind="stable")
        return keys[order], vals[order]

    def delete(self, txn, eid, rec, config):
        sig = _sigrec.decode(txn.get("signatures", u64(eid)))
        bands = feature_band_keys(sig, config.lsh_k, config.lsh_l)
        nonempty = sig[:, 0] != _EMPTY_SIG
        keys = np.unique(bands[nonempty].reshape(-1).view(np.uint64))
        # its postings still in the delta are deleted; those compacted into blocks (hub format 6: a
        # key's posting is in one place or the other) stay there, dead, counted (band_blocks.removed)
        if posting_bytes(txn) == 4:
            v = struct.pack(">I", eid)
            found = sum(bool(txn.delete_dup("bands", u64(int(bk)), v)) for bk in keys)
        else:
            hit = set()
            for f in np.flatnonzero(nonempty):
                v = struct.pack(">II", eid, f)
                for bk in bands[f]:
                    k = int(bk) & 0xFFFFFFFFFFFFFFFF
                    if txn.delete_dup("bands", u64(k), v):
                        hit.add(k)
            found = len(hit)
        _blocks.removed(txn, len(keys) - found)


PARTS: tuple[Part, ...] = (Core(), Extra(), SimExFleet(), Embeddings(), ModelDescriptors(), Profile(), Screen(),
                           Bands())


def entry_writer(new: NewEntry, config, device, make_entry):
    """The function that writes ``new`` inside a write transaction; every part prepared first. A
    batch of one (``entries_writer``): an entry is stored byte for byte as ``Hub.add_sketches``
    stores it, whatever its batch (tests/test_bulk.py)."""
    write = entries_writer([new], config, device, make_entry)
    return lambda txn: write(txn)[0]


def _aggregate(news: list, shared: dict):
    """The batch's histograms in one COO (profiles._aggregate), computed once for the parts of a
    batch; None when a batch cannot be aggregated (empty, over profiles.BATCH sketches, or a sketch
    of 2^16 features or more: each is then prepared alone)."""
    if "agg" not in shared:
        ok = 0 < len(news) <= _profiles.BATCH and max(n.sketch.n_features for n in news) < 1 << 16
        shared["agg"] = _profiles._aggregate([n.sketch for n in news]) if ok else None
    return shared["agg"]


PREPARE_CHUNK = 256   # entries prepared at once: a 1,000-entry batch's temporaries (5M histogram cells at
                      # 32 x 10) outgrow the caches; 256 at a time cost ~30% less CPU (bench/bench_bulk.py)


def _prepare_threads() -> int:
    """``FITSKETCH_PREPARE_THREADS`` (a positive integer) where set, else 2 where this process may run
    on 2 CPUs or more, else 1."""
    forced = os.environ.get("FITSKETCH_PREPARE_THREADS", "").strip()
    if forced:
        if not forced.isdigit() or int(forced) < 1:
            raise E.InvalidArgumentError(f"FITSKETCH_PREPARE_THREADS={forced!r} is not valid: give a positive "
                                         "integer (1: prepare in the calling thread)")
        return int(forced)
    return min(2, usable_cpus())


PREPARE_THREADS = _prepare_threads()
                      # threads preparing add_sketches' chunks (``batch_writers``) while the calling thread
                      # writes the previous batch: zstd, scipy's sparse products, NumPy's sorts and LMDB
                      # release the GIL; 1: every chunk in the calling thread. ~+34 % entries/s wall for
                      # ~+18 % CPU an entry on 2 idle cores, little or nothing where the other core is busy
                      # (bench/SUMMARY.md, "Bulk add, eleventh session"): Hub.add_sketches(threads=) and
                      # FITSKETCH_PREPARE_THREADS choose. The bytes stored do not depend on it.


def _prepare_chunk(chunk: list, config, device, skip: tuple = ()) -> list:
    """Every part's ``prepare_many`` of ``chunk`` (one list per part, ``PARTS`` order); a part named
    in ``skip`` prepares nothing (None an entry: its caller prepares it, ``_streamed``)."""
    shared = {}
    return [[None] * len(chunk) if p.name in skip else p.prepare_many(chunk, config, device, shared) for p in PARTS]


def _gathered(done: list) -> list:
    """``(part, prepared list)`` for each part, the chunks' ``_prepare_chunk`` results in order."""
    prepared = [(p, []) for p in PARTS]
    for res in done:
        for (_, out), r in zip(prepared, res):
            out += r
    return prepared


def entries_writer(news: list, config, device, make_entry):
    """The function that writes a batch of entries (``Hub.add_sketches``) inside one write
    transaction, every part prepared first for ``PREPARE_CHUNK`` entries at once (``Part.prepare_many``;
    the records that do not hold the entry id are packed there too); the batch is written part by
    part (``Part.write_many``), all or nothing. Stores what ``entry_writer`` of each entry in turn
    stores (tests/test_profiles.py). An entry's records do not depend on its chunk."""
    done = [_prepare_chunk(news[lo:lo + PREPARE_CHUNK], config, device) for lo in range(0, len(news), PREPARE_CHUNK)]
    return _writer(news, _gathered(done), make_entry)


def batch_writers(batches, config, device, make_entry, threads: int | None = None, processes: int = 0,
                  workers=None):
    """``(news, write)`` for each batch (a list of NewEntry) of ``batches``, in order: ``write`` is
    ``entries_writer(news, ...)``. With ``threads`` > 1 (``PREPARE_THREADS``) a batch's chunks are
    prepared in that many threads, and the next batch's while the caller writes this one (at most
    two batches in flight); the records are the same bytes. A chunk's error is raised here, as the
    part raised it, before its batch's ``write`` is yielded: nothing of that batch is written, and
    the batches yielded before stay as the caller wrote them. Close the generator when done
    (``Hub.add_sketches``: ``contextlib.closing``): it stops the threads (waiting for a chunk under way).
    With ``processes`` > 0 (engine/prepare_procs.py ``choose``), the chunks are prepared in that many
    forked processes instead (``batches`` a list: every entry is in the workers from the start), or
    by ``workers`` where the caller forked them already (``process_chunks`` of the batches' sizes; closed
    here, whatever happens)."""
    if processes or workers is not None:
        yield from _process_writers(batches, config, device, make_entry, processes, workers)
        return
    threads = PREPARE_THREADS if threads is None else threads
    if threads <= 1:
        for news in batches:
            yield news, entries_writer(news, config, device, make_entry)
        return
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(threads, thread_name_prefix="fitsketch-prepare")

    def submit(news):   # chunks of at most PREPARE_CHUNK, at least one a thread
        step = max(1, min(PREPARE_CHUNK, -(-len(news) // threads)))
        return news, [pool.submit(_prepare_chunk, news[lo:lo + step], config, device) for lo in range(0, len(news), step)]

    try:
        it = iter(batches)
        nxt = next(it, None)
        pending = None if nxt is None else submit(nxt)
        while pending is not None:
            news, futures = pending
            done = [f.result() for f in futures]       # a chunk's error raised here, nothing of the batch written
            nxt = next(it, None)
            pending = None if nxt is None else submit(nxt)   # prepared while the caller writes this batch
            yield news, _writer(news, _gathered(done), make_entry)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def process_chunks(sizes: list, n: int) -> tuple[list, list]:
    """The chunks ``[(lo, hi)]`` that ``n`` worker processes prepare of batches of ``sizes`` entries
    (numbered across the batches), and each chunk's batch: at most ``PREPARE_CHUNK`` entries, at
    least two chunks a worker a batch (a batch's last chunks finish together), never across a batch."""
    chunks, batch_of, lo = [], [], 0
    for b, size in enumerate(sizes):
        step = max(1, min(PREPARE_CHUNK, -(-size // (2 * n))))
        for s in range(0, size, step):
            chunks.append((lo + s, lo + min(s + step, size)))
            batch_of.append(b)
        lo += size
    return chunks, batch_of


def _process_writers(batches: list, config, device, make_entry, n: int, workers=None):
    """``batch_writers`` with the chunks prepared by ``n`` forked workers (engine/prepare_procs.py), or
    by ``workers`` (forked by the caller, their chunks ``process_chunks`` of the batches): the same
    records (they unpack to what ``_prepare_chunk`` returns here). A batch's ``write`` writes each
    chunk as it comes (``_streamed``), so the last batch is written while its last chunks are
    prepared; a worker's error is raised inside it (the batch's transaction aborted: nothing of it
    written); the workers are stopped on every exit."""
    from . import prepare_procs

    news = [new for batch in batches for new in batch]
    try:
        if workers is None:
            chunks, batch_of = process_chunks([len(b) for b in batches], n)
            if not chunks:
                return
            workers = prepare_procs.Workers(news, config, device, n, chunks, batch_of)
        chunks, batch_of = workers.chunks, workers.batch_of
        if chunks[-1][1] != len(news):
            raise ValueError(f"the workers' chunks cover {chunks[-1][1]} entries, the batches {len(news)}")
    except BaseException:
        if workers is not None:
            workers.close(abort=True)
        raise
    finished = False
    try:
        for b, batch in enumerate(batches):
            yield batch, _streamed(workers, [j for j in range(len(chunks)) if batch_of[j] == b], chunks, news,
                                   make_entry, config, device)
        finished = True
    finally:
        workers.close(abort=not finished)


STREAMED_SKIP = ("bands",)   # the parts a worker does not prepare: ``_streamed`` computes and puts them


def _streamed(workers, js: list, chunks: list, news: list, make_entry, config, device):
    """The write of chunks ``js`` (one batch) in one transaction. The batch's band postings come
    first: their keys computed here from the signatures (``Bands.prepare_many``, ~0.02 ms an entry;
    the workers skip that part, ``STREAMED_SKIP``) and put in one sorted insert (``Bands.write_many``:
    put a chunk at a time, the dupsort delta took ~9% more pages and the hub ~7% more, 39.1 against
    36.4 KiB an entry on scale32) while the workers prepare the chunks; then each chunk's entries
    are written (``_writer``: names checked, ids, parts, counters) as soon as the workers return it.
    The last batch thus ends with its last chunk's records and the commit, not with a million
    postings put on one core after its last chunk while the other waited (~0.2 s of a 2,000-entry
    call: bench/SUMMARY.md, "Bulk add, fifteenth session"). What it stores equals ``_writer`` of the
    whole batch. The band keys and the chunks taken are kept: a transaction run again (the map
    grown) writes them again."""
    lo0, hi0 = chunks[js[0]][0], chunks[js[-1]][1]
    skipped = [p for p in PARTS if p.name in STREAMED_SKIP]
    keys, taken = [], []

    def write(txn):
        if not keys:
            keys.extend(p.prepare_many(news[lo0:hi0], config, device, {}) for p in skipped)
        eid0 = int(txn.get("meta", b"next_id"))
        eids = list(range(eid0, eid0 + hi0 - lo0))   # what _writer gives the chunks, in order
        for p, prep in zip(skipped, keys):
            p.write_many(txn, eids, news[lo0:hi0], prep)
        out = []
        for i, j in enumerate(js):
            if i == len(taken):
                taken.append(workers.result(j))
            lo, hi = chunks[j]
            out += _writer(news[lo:hi], _gathered(taken[i:i + 1]), make_entry, skipped)(txn)
        return out

    return write


def _writer(news: list, prepared: list, make_entry, skip: list = ()):
    """Write ``news`` (each part's ``prepared`` list) and the hub's counters in one transaction; the
    parts in ``skip`` are not written (``_streamed`` wrote them)."""
    def write(txn):
        for new in news:
            if txn.exists("names", new.name.encode("utf-8")):
                raise E.EntryExistsError(f"an entry named {new.name!r} exists: remove it first or choose another name")
        eid0 = int(txn.get("meta", b"next_id"))
        eids = list(range(eid0, eid0 + len(news)))
        recs = None
        for p, prep in prepared:
            if p in skip:
                continue
            r = p.write_many(txn, eids, news, prep)
            recs = r if recs is None else recs     # Core's (the first part): the entry records
        txn.put("meta", b"next_id", eid0 + len(news))
        txn.put("meta", b"generation", int(txn.get("meta", b"generation")) + len(news))
        txn.put("meta", b"n_features", int(txn.get("meta", b"n_features")) + sum(n.sketch.n_features for n in news))
        return [make_entry(r) for r in recs]

    return write


def entry_remover(name: str, config, not_found):
    """The function that removes entry ``name`` inside a write transaction (``not_found()``: the
    error to raise when there is none)."""
    def write(txn):
        k = txn.get_raw("names", name.encode("utf-8"))
        if k is None:
            raise not_found()
        eid = from_u64(k)
        rec = txn.get("entries", k)
        rec = {**rec, "name": name}   # the name it was found under
        for p in reversed(PARTS):
            p.delete(txn, eid, rec, config)
        txn.put("meta", b"generation", int(txn.get("meta", b"generation")) + 1)
        txn.put("meta", b"n_features", int(txn.get("meta", b"n_features")) - len(rec["features"]))

    return write


def label_kinds(txn) -> dict:
    """The hub's count of labelled entries per label kind (``meta/label_kinds``), checked."""
    counts = txn.get("meta", b"label_kinds") or {}
    if not (isinstance(counts, dict) and set(counts) <= {"int", "str"}
            and all(type(c) is int and 0 <= c < 2 ** 63 for c in counts.values())):
        raise E.CorruptHubError(f"the hub's meta/label_kinds record is damaged ({str(counts)[:80]}): expected "
                                "counts of labelled entries by 'int' / 'str'; restore the hub from a backup")
    return counts


def count_label_kind(txn, labels: list, step: int) -> None:
    """Keep the hub's labelled entries on one label kind (int or str), counted in ``meta``: labels
    ``3`` and ``"3"`` would never pool as one class."""
    kind = _acc.label_kind(labels)
    counts = label_kinds(txn)
    other = {"int": "str", "str": "int"}[kind]
    if step > 0 and counts.get(other, 0) > 0:
        raise E.LabelError(f"this hub's labelled entries have {other} labels and these are {kind}s: use one label "
                           f"vocabulary in a hub (map the labels to {other}s)")
    counts[kind] = max(0, counts.get(kind, 0) + step)
    txn.put("meta", b"label_kinds", counts)
