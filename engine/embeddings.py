"""Embeddings in the hub: sample and dataset-level vectors in LMDB, FAISS indexes derived from them.

Storage (database ``embeddings``, LMDB is the source of truth; format ``EMBEDDING_FORMAT``):

* ``b"e" + u64(entry_id)`` -> ``{"v", "first", "n", "d", "mean"}``: the entry's sample ids are
  ``first .. first + n - 1``; ``mean`` (d,) float32 is the mean of its unit rows, the entry's
  dataset-level embedding (searched after normalization).
* ``b"s" + u64(entry_id) + u32(chunk)`` -> ``{"v", "x", "norms"}``: rows ``chunk * CHUNK ..`` as
  unit float32 vectors (cosine search) and their raw L2 norms.
* ``meta``: ``b"embedding_dim"`` (fixed by the first stored embedding, cleared when the last one
  is removed), ``b"next_sample_id"`` (global counter: ids are given in insertion order, never
  reused). The hub's ``b"generation"`` (bumped by every add / remove) dates the derived indexes.

Derived indexes (flat, ivf, hnsw, deephash; sample or entry level) live in
engine/embedding_indexes.py: FAISS files beside the hub, dated by the hub's generation,
synchronized or rebuilt when stale (engine/faiss_files.py).

The hub holds one :class:`Embeddings` (``hub._embeddings``); ``hub.nearest``, ``hub.sample`` and
``hub.train_deephash`` are its methods.

``index="auto"``: ``flat`` below ``AUTO_FLAT_LIMIT`` vectors, ``ivf`` from there on: in
bench/bench_embeddings.py (--quick, 50k x 128 clustered, 2-core CPU) IVF reached recall@25 >= 0.95
at 11x flat's queries/s (nprobe 8; 6.6x at the default 16, recall 1.0), HNSW at 8.4x, and the
deep-hash buckets did not beat flat (their buckets merge clusters, so thousands of candidates).
"""
from __future__ import annotations

import logging
import struct
import threading
from dataclasses import dataclass

import numpy as np

from . import deephash as DH
from . import errors as E
from .embedding_indexes import (AUTO_FLAT_LIMIT, DEEPHASH_CANDIDATES, DEEPHASH_RETRAIN_FRACTION,  # noqa: F401
                                HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH, HNSW_M, INDEX_FORMAT, IVF_MIN_PER_LIST,
                                IVF_NPROBE, EmbeddingIndexes, auto_kind, sample_ids, set_params)
from .exact import MISSING_D, MISSING_I, normalize
from .results import Match
from .storage import from_u64, u64
from .validate import MAX_K, _check_count

log = logging.getLogger(__name__)

__all__ = ["Embeddings", "write_embeddings", "delete_embeddings", "check_embedding", "KINDS",
           "EMBEDDING_FORMAT", "INDEX_FORMAT"]

EMBEDDING_FORMAT = 1
KINDS = ("flat", "ivf", "hnsw", "deephash")
LEVELS = ("sample", "entry")
CHUNK = 16_384                    # rows per sample record
MAX_RESULT_SLOTS = 1 << 22        # n_queries x k of one sample-level nearest call (48 MiB of D and I)
_K_E = b"e"
_K_S = b"s"


# ----------------------------------------------------------------------------- writes (in the add txn)
def check_embedding(embedding, n_rows: int | None = None, dim: int | None = None) -> np.ndarray:
    """Validate an ``embedding`` argument: 2-D (n, d) finite numbers, ``n == n_rows`` when given,
    ``d == dim`` when given. Returns it as float32. Call before opening the transaction."""
    try:
        arr = np.asarray(embedding)
    except Exception as e:
        raise E.InvalidArgumentError(f"embedding cannot be read as an array ({e}): pass a (n, d) float array") from None
    if arr.dtype.kind not in "biuf":
        raise E.InvalidArgumentError(f"embedding has dtype {arr.dtype}: pass a (n, d) array of floats")
    if arr.ndim != 2:
        raise E.DimensionError(f"embedding has shape {arr.shape}: expected a 2-D array (n_samples, dim); "
                               f"reshape one vector with x[None, :]")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise E.EmptyDataError(f"embedding has shape {arr.shape}: give at least one row and one column")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).any(axis=1).sum())
        raise E.NonFiniteError(f"embedding has {bad} row(s) with NaN or infinity (or values beyond float32): "
                               f"drop or impute them first")
    if n_rows is not None and arr.shape[0] != n_rows:
        raise E.DimensionError(f"embedding has {arr.shape[0]} rows but the data has {n_rows}: "
                               f"give one embedding row per data row")
    if dim is not None and arr.shape[1] != dim:
        raise E.DimensionError(f"embedding has dimension {arr.shape[1]} but this hub stores dimension {dim}: "
                               f"embed with the same model as the stored entries")
    return arr


def write_embeddings(txn, entry_id: int, embedding, first_sample_id: int | None = None, *,
                     n_rows: int | None = None) -> int:
    """Store ``embedding`` (n, d) of entry ``entry_id`` inside write transaction ``txn``.

    Sample ids ``first .. first + n - 1`` come from meta ``b"next_sample_id"`` (initialized to 0
    when absent) unless ``first_sample_id`` is given (it must not be below the counter). Fixes the
    hub's ``b"embedding_dim"`` on the first call. Returns the first sample id. Does not touch
    ``b"generation"``: the caller's add bumps it once.
    """
    dim = txn.get("meta", b"embedding_dim")
    x = check_embedding(embedding, n_rows=n_rows, dim=dim)
    n, d = x.shape
    nxt = int(txn.get("meta", b"next_sample_id") or 0)
    first = nxt if first_sample_id is None else int(first_sample_id)
    if first < nxt:
        raise E.InvalidArgumentError(f"first_sample_id={first} is below the next free sample id {nxt}: "
                                     f"omit it to take the next one")
    key = u64(entry_id)
    if txn.exists("embeddings", _K_E + key):
        raise E.EntryExistsError(f"entry id {entry_id} already has embeddings: delete_embeddings first")
    xn, norms = normalize(x)                                           # (n, d), (n,)
    for c, lo in enumerate(range(0, n, CHUNK)):
        txn.put("embeddings", _K_S + key + struct.pack(">I", c),
                {"v": EMBEDDING_FORMAT, "x": xn[lo:lo + CHUNK], "norms": norms[lo:lo + CHUNK]})
    txn.put("embeddings", _K_E + key, {"v": EMBEDDING_FORMAT, "first": first, "n": n, "d": d,
                                       "mean": xn.mean(axis=0, dtype=np.float64).astype(np.float32)})
    txn.put("meta", b"next_sample_id", first + n)
    if dim is None:
        txn.put("meta", b"embedding_dim", d)
    return first


def delete_embeddings(txn, entry_id: int) -> bool:
    """Delete entry ``entry_id``'s embeddings inside write transaction ``txn``; whether it had any.
    Clears ``b"embedding_dim"`` when no entry has embeddings any more."""
    key = u64(entry_id)
    if not txn.delete("embeddings", _K_E + key):
        return False
    for k in list(txn.keys("embeddings", _K_S + key)):
        txn.delete("embeddings", k)
    if next(iter(txn.keys("embeddings", _K_E)), None) is None:
        txn.delete("meta", b"embedding_dim")
    return True


# ----------------------------------------------------------------------------- the hub's component
@dataclass
class _Table:
    """What the hub's embeddings look like at one generation (read from the ``e`` records)."""
    generation: int
    dim: int | None
    next_sample_id: int
    entries: np.ndarray            # (E, 3) int64 [entry id, first, n], sorted by first
    names: list                    # (E,) entry names, same order
    metadata: list                 # (E,) entry metadata
    means: np.ndarray              # (E, d) float32 unit dataset-level embeddings
    ids: np.ndarray | None = None  # (N,) int64 sorted sample ids   } loaded on demand
    x: np.ndarray | None = None    # (N, d) float32 unit rows       }

    @property
    def n(self) -> int:
        return int(self.entries[:, 2].sum()) if len(self.entries) else 0


def _read_table(txn, gen: int) -> _Table:
    rows, means = [], []
    for k, rec in txn.items("embeddings", _K_E):
        _check_format(rec, k)
        rows.append((from_u64(k[1:]), rec["first"], rec["n"]))
        means.append(rec["mean"])
    dim = txn.get("meta", b"embedding_dim")
    entries = np.array(rows, dtype=np.int64).reshape(-1, 3)
    order = np.argsort(entries[:, 1], kind="stable")
    entries = entries[order]
    means_a = np.stack([means[i] for i in order]) if rows else np.zeros((0, dim or 0), np.float32)
    names, metadata = [], []
    for eid in entries[:, 0]:
        rec = txn.get("entries", u64(int(eid)))
        names.append(rec["name"] if rec else f"#{eid}")
        metadata.append(rec["metadata"] if rec else {})
    return _Table(gen, dim, int(txn.get("meta", b"next_sample_id") or 0), entries, names, metadata,
                  normalize(means_a)[0] if rows else means_a)


def _read_vectors(txn, t: _Table, entries: np.ndarray | None = None):
    """(ids (N,) int64 sorted, x (N, d) float32) of ``entries`` (default: all of ``t``)."""
    entries = t.entries if entries is None else entries
    n = int(entries[:, 2].sum()) if len(entries) else 0
    x = np.empty((n, t.dim or 0), dtype=np.float32)
    pos = 0
    for eid, _, cnt in entries:
        for k, rec in txn.items("embeddings", _K_S + u64(int(eid))):
            _check_format(rec, k)
            m = rec["x"].shape[0]
            x[pos:pos + m] = rec["x"]
            pos += m
    if pos != n:
        raise E.CorruptHubError(f"hub embeddings hold {pos} rows where the entry records say {n}")
    return sample_ids(entries), x


class Embeddings:
    """Embedding search, a part of a :class:`~fitsketch.Hub` (``hub._embeddings``): reads the
    hub's ``store``, ``path`` and ``config.seed``; holds the table of the stored embeddings at the
    hub's generation and the derived indexes (:class:`~fitsketch.embedding_indexes.EmbeddingIndexes`)."""

    def __init__(self, hub):
        self._hub = hub
        self.lock = threading.RLock()
        self._table: _Table | None = None
        self.indexes = EmbeddingIndexes(self)

    @property
    def store(self):
        return self._hub.store

    @property
    def path(self) -> str:
        return self._hub.path

    @property
    def seed(self) -> int:
        return int(self._hub.config.seed)

    def table(self, *, vectors: bool = False) -> _Table:
        """The current table (re-read when the generation moved); ``vectors`` loads all rows."""
        with self.store.read() as txn:
            gen = int(txn.get("meta", b"generation") or 0)
            t = self._table
            if t is None or t.generation != gen:
                t = _read_table(txn, gen)
                self._table = t
            if vectors and t.x is None:
                t.ids, t.x = _read_vectors(txn, t)
        return t

    def vectors(self, t: _Table, entries: np.ndarray):
        """(sample ids, unit rows) of ``entries`` of table ``t``: from memory when all are loaded."""
        if t.x is not None and len(entries) == len(t.entries):
            return t.ids, t.x
        with self.store.read() as txn:
            return _read_vectors(txn, t, entries)

    # -- public API (Hub's methods) ----------------------------------------------------------------
    def sample(self, sample_id: int) -> tuple[str, int]:
        """``(entry name, row)`` of global sample id ``sample_id`` (as returned in ``I``)."""
        if not isinstance(sample_id, (int, np.integer)) or isinstance(sample_id, bool):
            raise E.InvalidArgumentError(f"sample_id={sample_id!r} is not valid: pass an int from nearest()'s I")
        sid = int(sample_id)
        t = self.table()
        if len(t.entries):
            j = int(np.searchsorted(t.entries[:, 1], sid, side="right")) - 1
            if j >= 0 and sid < t.entries[j, 1] + t.entries[j, 2]:
                return t.names[j], sid - int(t.entries[j, 1])
        raise E.EntryNotFoundError(f"no sample with id {sid} in hub {self.path} (its entry was removed, or the id "
                                   f"was never given): pass ids returned by hub.nearest(...)")

    def nearest(self, xq, k: int = 10, *, index: str = "auto", level: str = "sample",
                nprobe: int | None = None, ef_search: int | None = None, candidates: int | None = None):
        """Cosine nearest neighbours of ``xq`` (nq, d) or (d,) among the stored embeddings.

        ``level="sample"``: ``(D, I)``, ``D`` float32 (nq, k) cosine **similarities**, decreasing
        (FAISS ``IndexFlatIP`` convention), ``I`` int64 (nq, k) global sample ids (see
        :meth:`sample`); slots past the stored count are ``-inf`` / ``-1``. A 1-D ``xq`` is one
        query (shapes stay (1, k)).
        ``level="entry"``: per query, a list of up to ``k`` :class:`fitsketch.Match` over the
        entries' dataset-level (mean) embeddings, ``score`` = cosine similarity; a 1-D ``xq``
        returns the list of that one query.
        ``index``: ``"flat"`` (exact), ``"ivf"`` (``nprobe``), ``"hnsw"`` (``ef_search``),
        ``"deephash"`` (``candidates``: reranked per query), ``"auto"`` (module docstring).
        """
        if index not in ("auto",) + KINDS:
            raise E.InvalidArgumentError(f"index={index!r} is not valid: use 'auto', " + ", ".join(map(repr, KINDS)))
        if level not in LEVELS:
            raise E.InvalidArgumentError(f"level={level!r} is not valid: use 'sample' or 'entry'")
        k = _check_count("k", k, MAX_K)
        for name, v in (("nprobe", nprobe), ("ef_search", ef_search), ("candidates", candidates)):
            if v is not None:
                _check_count(name, v, MAX_K)
        single = np.ndim(xq) == 1
        t = self.table()
        q = np.asarray(xq)
        q = q[None, :] if single else q
        if q.ndim != 2 or q.dtype.kind not in "biuf":
            raise E.DimensionError(f"xq has shape {np.shape(xq)}: pass (n_queries, dim) or (dim,) floats")
        q = q.astype(np.float32)
        if not np.isfinite(q).all():
            raise E.NonFiniteError("xq holds NaN or infinity: pass finite query vectors")
        if t.dim is not None and q.shape[1] != t.dim:
            raise E.DimensionError(f"xq has dimension {q.shape[1]} but this hub stores dimension {t.dim}: "
                                   f"embed the queries with the same model")
        qn, _ = normalize(q)
        if level == "entry":   # a list per query: never longer than the entries held
            return self._nearest_entries(t, qn, min(k, max(len(t.entries), 1)), index, single, nprobe, ef_search)
        if qn.shape[0] * k > MAX_RESULT_SLOTS:
            raise E.LimitExceededError(
                f"{qn.shape[0]} queries x k={k} is {qn.shape[0] * k} result slots, over the limit of "
                f"{MAX_RESULT_SLOTS}: ask for a smaller k (this hub holds {t.n} samples) or fewer queries per call")
        k_all = k
        k = min(k, max(t.n, 1))   # FAISS allocates (nq, k): never more than the samples held
        D = np.full((qn.shape[0], k), MISSING_D, dtype=np.float32)
        I = np.full((qn.shape[0], k), MISSING_I, dtype=np.int64)
        if t.n == 0 or qn.shape[0] == 0:
            return _pad(D, I, k_all)
        kind = auto_kind(t.n) if index == "auto" else index
        with self.lock:
            ld = self.indexes.get("sample", kind)
            if kind == "deephash":
                t = self.table(vectors=True)
                if ld.table is None:
                    ld.table = DH.BucketTable(ld.index, ld.model.bits)
                D, I, _ = DH.search(ld.table, ld.model, t.ids, t.x, qn, k, candidates or DEEPHASH_CANDIDATES)
                return _pad(D, I, k_all)
            index_ = ld.searcher(kind)
            set_params(index_, kind, nprobe, ef_search)
            D, I = index_.search(qn, k)
        D = np.where(I >= 0, D, MISSING_D).astype(np.float32)
        return _pad(D, I, k_all)

    def train_deephash(self, bits: int = 16, epochs: int = 30, *, labels=None, **params) -> dict:
        """(Re)train the deep-hash MLP on the stored sample embeddings and store its weights in
        database ``weights`` (key ``b"deephash"``); ``labels`` (n,) aligned with the sample ids in
        insertion order pick the triplet positives, else exact neighbours do. Other
        :class:`~fitsketch.deephash.DeepHashConfig` fields go in ``params``. Returns a summary."""
        try:
            cfg = DH.DeepHashConfig(bits=bits, epochs=epochs, **params)
        except (TypeError, ValueError) as e:
            raise E.InvalidArgumentError(str(e)) from None
        with self.lock:
            model = self.indexes.train_deephash(cfg, labels)
        return {"bits": model.bits, "dim": model.dim, "trained_n": model.trained_n,
                "generation": model.generation, "epochs": cfg.epochs}

    def _nearest_entries(self, t: _Table, qn: np.ndarray, k: int, index: str, single: bool,
                         nprobe, ef_search):
        if index == "deephash":
            raise E.InvalidArgumentError("index='deephash' searches samples: use level='sample', or "
                                         "index='flat' / 'ivf' / 'hnsw' for entries")
        out = [[] for _ in range(qn.shape[0])]
        if len(t.entries) and qn.shape[0]:
            kind = auto_kind(len(t.entries)) if index == "auto" else index
            with self.lock:
                ld = self.indexes.get("entry", kind)
                index_ = ld.searcher(kind)
                set_params(index_, kind, nprobe, ef_search)
                D, I = index_.search(qn, k)
            row_of = {int(e): j for j, e in enumerate(t.entries[:, 0])}
            for qi in range(qn.shape[0]):
                for s, eid in zip(D[qi], I[qi]):
                    if eid < 0:
                        continue
                    j = row_of[int(eid)]
                    out[qi].append(Match(t.names[j], float(s), "embedding", 1.0, [],
                                         {"index": kind, "entry_id": int(eid), "n_samples": int(t.entries[j, 2])},
                                         t.metadata[j]))
        return out[0] if single else out


# ----------------------------------------------------------------------------- helpers
def _pad(D: np.ndarray, I: np.ndarray, k: int):
    """(D, I) widened to k columns with -inf / -1 (k was cut to the samples held before searching)."""
    if D.shape[1] >= k:
        return D, I
    pad = k - D.shape[1]
    return (np.concatenate([D, np.full((D.shape[0], pad), MISSING_D, np.float32)], axis=1),
            np.concatenate([I, np.full((I.shape[0], pad), MISSING_I, np.int64)], axis=1))


def _check_format(rec, key: bytes) -> None:
    if not isinstance(rec, dict) or rec.get("v") != EMBEDDING_FORMAT:
        v = rec.get("v") if isinstance(rec, dict) else type(rec).__name__
        raise E.CorruptHubError(f"embedding record {key!r} has format {v!r}; this fitsketch reads {EMBEDDING_FORMAT}")
