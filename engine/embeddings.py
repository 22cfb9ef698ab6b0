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

Derived indexes (``<hub>/indexes/<level>-<kind>.faiss`` in FAISS's own format, written to a temp
file then ``os.replace``d, plus ``.msgpack`` sidecar ``{"v", "kind", "level", "generation",
"dim", "ntotal", "entries" (E, 3) int64 [entry id, first, n], "params"}``):

* ``flat``: ``IndexIDMap2(IndexFlatIP)`` on unit vectors: exact cosine.
* ``ivf``: ``IndexIDMap2(IndexIVFFlat)``, inner product, ``nlist = sqrt(n)`` (at least 39 points
  per list), ``nprobe`` = ``IVF_NPROBE`` unless given.
* ``hnsw``: ``IndexIDMap2(IndexHNSWFlat(M=32))``, inner product, ``efConstruction = 40``,
  ``efSearch`` = ``HNSW_EF_SEARCH`` unless given.
* ``deephash``: ``IndexBinaryIDMap2(IndexBinaryFlat)`` of deep-hash codes, bucketed in memory
  (engine/deephash.py) + cosine rerank; weights in database ``weights`` under ``b"deephash"``.
  ``candidates`` = ``DEEPHASH_CANDIDATES`` unless given.

IDs are global sample ids (entry ids at ``level="entry"``). When the sidecar's generation is not
the hub's, the index is synchronized from the entry list it holds: removed entries go out with
``remove_ids`` (flat, ivf, deephash) or by a rebuild (hnsw: FAISS cannot delete from it), new
entries are added. IVF is retrained when ``sqrt(n)`` moves 2x from its ``nlist``; the deep hash is
retrained when more than ``DEEPHASH_RETRAIN_FRACTION`` of the samples it was trained on changed
(added + removed). A missing or unreadable index is rebuilt from LMDB.

``index="auto"``: ``flat`` below ``AUTO_FLAT_LIMIT`` vectors, ``ivf`` from there on: in
bench/bench_embeddings.py (--quick, 50k x 128 clustered, 2-core CPU) IVF reached recall@25 >= 0.95
at 11x flat's queries/s (nprobe 8; 6.6x at the default 16, recall 1.0), HNSW at 8.4x, and the
deep-hash buckets did not beat flat (their buckets merge clusters, so thousands of candidates).
"""
from __future__ import annotations

import contextlib
import logging
import os
import struct
import threading
from dataclasses import dataclass, field

import faiss
import numpy as np

from . import deephash as DH
from . import errors as E
from .exact import MISSING_D, MISSING_I, normalize
from .storage import from_u64, pack, u64, unpack

log = logging.getLogger(__name__)

__all__ = ["EmbeddingsMixin", "write_embeddings", "delete_embeddings", "check_embedding", "KINDS",
           "EMBEDDING_FORMAT", "INDEX_FORMAT"]

EMBEDDING_FORMAT = 1
INDEX_FORMAT = 1
KINDS = ("flat", "ivf", "hnsw", "deephash")
LEVELS = ("sample", "entry")
CHUNK = 16_384                    # rows per sample record
AUTO_FLAT_LIMIT = 10_000          # index="auto": flat below this many vectors, ivf above
HNSW_M = 32                       # graph degree
HNSW_EF_CONSTRUCTION = 40         # FAISS default
HNSW_EF_SEARCH = 64               # default search depth (bench --quick: recall@25 0.985 on 50k clustered)
IVF_NPROBE = 16                   # default lists probed
IVF_MIN_PER_LIST = 39             # FAISS k-means wants >= 39 training points per centroid
DEEPHASH_CANDIDATES = 512         # default minimum candidates a deep-hash query reranks
DEEPHASH_RETRAIN_FRACTION = 0.25  # retrain when added + removed samples > this * trained samples
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


# ----------------------------------------------------------------------------- derived state
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


@dataclass
class _Loaded:
    index: object                  # faiss index (dense or binary)
    meta: dict                     # sidecar contents
    model: object = None           # DeepHashModel for kind deephash
    gpu: object = None             # GPU clone of a flat / ivf index (only with faiss.get_num_gpus() > 0)
    table: object = None           # deep-hash BucketTable (codes grouped by value), built on demand

    def searcher(self, kind: str):
        """The index to search: a GPU clone for flat / ivf when FAISS sees a GPU, else the CPU one."""
        if kind in ("flat", "ivf") and _num_gpus() > 0:
            if self.gpu is None:
                self.gpu = faiss.index_cpu_to_all_gpus(self.index)
            return self.gpu
        return self.index


@dataclass
class _State:
    lock: threading.RLock = field(default_factory=threading.RLock)
    table: _Table | None = None
    indexes: dict = field(default_factory=dict)   # (level, kind) -> _Loaded
    model: object = None                          # the deep-hash model last read / trained
    model_generation: int = -1                    # generation at which `model` was checked


def _sample_ids(entries: np.ndarray) -> np.ndarray:
    if len(entries) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([np.arange(f, f + n, dtype=np.int64) for _, f, n in entries])


class EmbeddingsMixin:
    """Embedding search for ``Hub`` (uses ``self.store``, ``self.path``, ``self.config.seed``)."""

    # -- state ----------------------------------------------------------------------------------
    def _emb(self) -> _State:
        st = self.__dict__.get("_emb_state")
        if st is None:
            st = self.__dict__.setdefault("_emb_state", _State())
        return st

    def _emb_table(self, *, vectors: bool = False) -> _Table:
        """The current table (re-read when the generation moved); ``vectors`` loads all rows."""
        st = self._emb()
        with self.store.read() as txn:
            gen = int(txn.get("meta", b"generation") or 0)
            t = st.table
            if t is None or t.generation != gen:
                t = self._read_table(txn, gen)
                st.table = t
            if vectors and t.x is None:
                t.ids, t.x = self._read_vectors(txn, t)
        return t

    @staticmethod
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

    @staticmethod
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
        return _sample_ids(entries), x

    # -- public API -----------------------------------------------------------------------------
    def sample(self, sample_id: int) -> tuple[str, int]:
        """``(entry name, row)`` of global sample id ``sample_id`` (as returned in ``I``)."""
        if not isinstance(sample_id, (int, np.integer)) or isinstance(sample_id, bool):
            raise E.InvalidArgumentError(f"sample_id={sample_id!r} is not valid: pass an int from nearest()'s I")
        sid = int(sample_id)
        t = self._emb_table()
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
        from .validate import MAX_K, _check_count

        k = _check_count("k", k, MAX_K)
        for name, v in (("nprobe", nprobe), ("ef_search", ef_search), ("candidates", candidates)):
            if v is not None:
                _check_count(name, v, MAX_K)
        single = np.ndim(xq) == 1
        t = self._emb_table()
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
        kind = _auto(t.n) if index == "auto" else index
        with self._emb().lock:
            ld = self._index("sample", kind)
            if kind == "deephash":
                t = self._emb_table(vectors=True)
                if ld.table is None:
                    ld.table = DH.BucketTable(ld.index, ld.model.bits)
                D, I, _ = DH.search(ld.table, ld.model, t.ids, t.x, qn, k, candidates or DEEPHASH_CANDIDATES)
                return _pad(D, I, k_all)
            index_ = ld.searcher(kind)
            _set_params(index_, kind, nprobe, ef_search)
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
        with self._emb().lock:
            model = self._train_deephash(cfg, labels)
            self._emb().indexes.pop(("sample", "deephash"), None)
        return {"bits": model.bits, "dim": model.dim, "trained_n": model.trained_n,
                "generation": model.generation, "epochs": cfg.epochs}

    # -- deep hash ------------------------------------------------------------------------------
    def _train_deephash(self, cfg, labels=None):
        t = self._emb_table(vectors=True)
        if t.n == 0:
            raise E.EmptyDataError("the hub stores no embeddings to train the deep hash on: add some first")
        if labels is not None:
            labels = np.asarray(labels)
            if labels.shape != (t.n,):
                raise E.DimensionError(f"labels has shape {labels.shape}: expected ({t.n},), one per stored sample")
        try:
            model = DH.train(t.x, labels, config=cfg, seed=int(self.config.seed))
        except ValueError as e:
            raise E.InvalidArgumentError(str(e)) from None
        model.trained_n, model.trained_hwm, model.generation = t.n, t.next_sample_id, t.generation
        rec = model.to_record()
        try:
            self.store.transact(lambda txn: txn.put("weights", b"deephash", rec))
        except Exception as e:  # a read-only hub keeps the model in memory only
            log.warning("hub at %s: deep-hash weights not stored (%s); kept in memory", self.path, e)
        self._emb().model, self._emb().model_generation = model, t.generation
        return model

    def _deephash_model(self, t: _Table):
        """The stored model, trained first when absent or when too much changed since training."""
        st = self._emb()
        if st.model is not None and st.model_generation == t.generation and st.model.dim == t.dim:
            return st.model
        with self.store.read() as txn:
            rec = txn.get("weights", b"deephash")
        try:
            model = DH.DeepHashModel.from_record(rec) if rec is not None else st.model
        except (ValueError, KeyError, TypeError) as e:
            raise E.CorruptHubError(f"hub at {self.path}: deep-hash weights cannot be read ({e}): "
                                    f"retrain with hub.train_deephash()") from None
        if model is not None and model.dim == t.dim:
            # live samples with ids below the training high-water mark existed at training
            kept = int(np.minimum(t.entries[:, 2], np.maximum(model.trained_hwm - t.entries[:, 1], 0)).sum())
            changed = (t.n - kept) + (model.trained_n - kept)          # added + removed samples
            if changed <= DEEPHASH_RETRAIN_FRACTION * model.trained_n:
                st.model, st.model_generation = model, t.generation
                return model
            log.info("deep hash: %d of %d trained samples changed: retraining", changed, model.trained_n)
        cfg = model.config if model is not None else DH.DeepHashConfig()
        model = self._train_deephash(cfg)
        st.model_generation = t.generation
        return model

    # -- indexes --------------------------------------------------------------------------------
    def _index_paths(self, level: str, kind: str) -> tuple[str, str]:
        base = os.path.join(self.path, "indexes", f"{level}-{kind}")
        return base + ".faiss", base + ".msgpack"

    def _index(self, level: str, kind: str) -> _Loaded:
        """The up-to-date index (level, kind): from memory, else disk, synchronized or rebuilt."""
        st = self._emb()
        t = self._emb_table()
        ld = st.indexes.get((level, kind))
        if ld is None or ld.meta["generation"] != t.generation:
            disk = self._load(level, kind, t)
            if disk is not None and (ld is None or disk.meta["generation"] == t.generation):
                ld = disk
        if kind == "deephash":
            model = self._deephash_model(t)
            if ld is not None and ld.meta.get("params", {}).get("model") != _model_tag(model):
                ld = None
        else:
            model = None
        if ld is not None and ld.meta["generation"] == t.generation:
            if ld.model is None:
                ld.model = model
            st.indexes[(level, kind)] = ld
            return ld
        ld = self._sync(level, kind, t, ld, model)
        st.indexes[(level, kind)] = ld
        self._save(level, kind, ld)
        return ld

    def _load(self, level: str, kind: str, t: _Table) -> _Loaded | None:
        fpath, mpath = self._index_paths(level, kind)
        try:
            with open(mpath, "rb") as f:
                meta = unpack(f.read())
            if not isinstance(meta, dict) or meta.get("v") != INDEX_FORMAT or meta.get("kind") != kind \
                    or meta.get("dim") != t.dim:
                log.info("index %s: sidecar of another format / kind / dimension: rebuilding", mpath)
                return None
            index = faiss.read_index_binary(fpath) if kind == "deephash" else faiss.read_index(fpath)
            if index.ntotal != meta["ntotal"]:
                log.info("index %s holds %d vectors, sidecar says %d: rebuilding", fpath, index.ntotal, meta["ntotal"])
                return None
            meta["entries"] = np.asarray(meta["entries"], dtype=np.int64).reshape(-1, 3)
            return _Loaded(index, meta)
        except FileNotFoundError:
            return None
        except Exception as e:  # unreadable derived data is rebuilt from LMDB
            log.warning("index %s cannot be read (%s): rebuilding", fpath, e)
            return None

    def _save(self, level: str, kind: str, ld: _Loaded) -> None:
        fpath, mpath = self._index_paths(level, kind)
        tmps = [f"{p}.tmp{os.getpid()}.{threading.get_ident()}" for p in (fpath, mpath)]
        try:
            os.makedirs(os.path.dirname(fpath), exist_ok=True)
            (faiss.write_index_binary if kind == "deephash" else faiss.write_index)(ld.index, tmps[0])
            os.replace(tmps[0], fpath)
            with open(tmps[1], "wb") as f:
                f.write(pack(ld.meta))
            os.replace(tmps[1], mpath)
        except (OSError, RuntimeError) as e:
            # a read-only hub directory or a full disk (FAISS raises RuntimeError): the index is
            # derived data, kept in memory only, and no temporary file is left behind
            for tmp in tmps:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            log.warning("index %s not written (%s); kept in memory", fpath, e)

    def _sync(self, level: str, kind: str, t: _Table, ld: _Loaded | None, model) -> _Loaded:
        """Bring ``ld`` (or nothing) to generation ``t.generation``: incremental when FAISS allows."""
        target = t.entries if level == "sample" else np.stack(
            [t.entries[:, 0], t.entries[:, 0], np.ones(len(t.entries), np.int64)], axis=1).reshape(-1, 3)
        if ld is not None:
            old = ld.meta["entries"]
            gone = old[~np.isin(old[:, 0], target[:, 0])]
            new = target[~np.isin(target[:, 0], old[:, 0])]
            n_after = int(target[:, 2].sum())
            ok = not (len(gone) and kind == "hnsw")
            if kind == "ivf":  # retrain when sqrt(n) moved 2x from the trained nlist
                ok = ok and 0.5 <= _nlist(n_after) / ld.meta["params"]["nlist"] <= 2.0
            if ok:
                if len(gone):
                    ld.index.remove_ids(_sample_ids(gone))
                if len(new):
                    ids, x = self._vectors(level, t, new)
                    if kind == "deephash":
                        DH.add(ld.index, model, x, ids)
                    else:
                        ld.index.add_with_ids(x, ids)
                log.info("index %s-%s: %d entries out, %d in (generation %d -> %d)", level, kind,
                         len(gone), len(new), ld.meta["generation"], t.generation)
                ld.meta.update(generation=t.generation, ntotal=int(ld.index.ntotal), entries=target)
                ld.model, ld.gpu, ld.table = model, None, None
                return ld
        ids, x = self._vectors(level, t, target)
        index, params = self._build(kind, x, ids, model)
        log.info("index %s-%s: built over %d vectors (generation %d)", level, kind, len(ids), t.generation)
        return _Loaded(index, {"v": INDEX_FORMAT, "kind": kind, "level": level, "generation": t.generation,
                               "dim": t.dim, "ntotal": int(index.ntotal), "entries": target,
                               "params": params}, model)

    def _vectors(self, level: str, t: _Table, entries: np.ndarray):
        if level == "entry":
            row_of = {int(e): j for j, e in enumerate(t.entries[:, 0])}
            rows = np.array([row_of[int(e)] for e in entries[:, 0]], dtype=np.int64)
            return entries[:, 0].copy(), t.means[rows]
        if t.x is not None and len(entries) == len(t.entries):
            return t.ids, t.x
        with self.store.read() as txn:
            return self._read_vectors(txn, t, entries)

    def _build(self, kind: str, x: np.ndarray, ids: np.ndarray, model):
        d = x.shape[1]
        seed = int(self.config.seed)
        if kind == "deephash":
            return DH.build_index(model, x, ids), {"model": _model_tag(model)}
        if kind == "flat":
            base, params = faiss.IndexFlatIP(d), {}
        elif kind == "hnsw":
            base = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
            base.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            base.hnsw.efSearch = HNSW_EF_SEARCH
            params = {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION}
        else:
            nlist = _nlist(len(ids))
            quant = faiss.IndexFlatIP(d)
            base = faiss.IndexIVFFlat(quant, d, nlist, faiss.METRIC_INNER_PRODUCT)
            base.cp.seed = seed
            base.nprobe = min(IVF_NPROBE, nlist)
            if len(ids):
                base.train(x)
            base.own_fields = True
            quant.this.disown()
            params = {"nlist": nlist}
        index = faiss.IndexIDMap2(base)
        index.own_fields = True
        base.this.disown()
        if len(ids):
            for lo in range(0, len(ids), 1 << 18):
                index.add_with_ids(x[lo:lo + (1 << 18)], ids[lo:lo + (1 << 18)])
        return index, params

    def _nearest_entries(self, t: _Table, qn: np.ndarray, k: int, index: str, single: bool,
                         nprobe, ef_search):
        from .results import Match

        if index == "deephash":
            raise E.InvalidArgumentError("index='deephash' searches samples: use level='sample', or "
                                         "index='flat' / 'ivf' / 'hnsw' for entries")
        out = [[] for _ in range(qn.shape[0])]
        if len(t.entries) and qn.shape[0]:
            kind = _auto(len(t.entries)) if index == "auto" else index
            with self._emb().lock:
                ld = self._index("entry", kind)
                index_ = ld.searcher(kind)
                _set_params(index_, kind, nprobe, ef_search)
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
MAX_RESULT_SLOTS = 1 << 22   # n_queries x k of one sample-level nearest call (48 MiB of D and I)


def _pad(D: np.ndarray, I: np.ndarray, k: int):
    """(D, I) widened to k columns with -inf / -1 (k was cut to the samples held before searching)."""
    if D.shape[1] >= k:
        return D, I
    pad = k - D.shape[1]
    return (np.concatenate([D, np.full((D.shape[0], pad), MISSING_D, np.float32)], axis=1),
            np.concatenate([I, np.full((I.shape[0], pad), MISSING_I, np.int64)], axis=1))


_GPUS: list = []


def _num_gpus() -> int:
    if not _GPUS:
        _GPUS.append(faiss.get_num_gpus() if hasattr(faiss, "index_cpu_to_all_gpus") else 0)
    return _GPUS[0]


def _auto(n: int) -> str:
    return "flat" if n < AUTO_FLAT_LIMIT else "ivf"


def _nlist(n: int) -> int:
    return max(1, min(int(round(np.sqrt(max(n, 1)))), n // IVF_MIN_PER_LIST))


def _set_params(index, kind: str, nprobe, ef_search) -> None:
    base = faiss.downcast_index(index.index) if hasattr(index, "id_map") else index
    if kind == "ivf":
        base.nprobe = min(int(nprobe or IVF_NPROBE), base.nlist)
    elif kind == "hnsw":
        base.hnsw.efSearch = int(ef_search or HNSW_EF_SEARCH)


def _model_tag(model) -> list:
    return [model.generation, model.trained_hwm, model.trained_n, model.bits, int(model.W1.shape[1])]


def _check_format(rec, key: bytes) -> None:
    if not isinstance(rec, dict) or rec.get("v") != EMBEDDING_FORMAT:
        v = rec.get("v") if isinstance(rec, dict) else type(rec).__name__
        raise E.CorruptHubError(f"embedding record {key!r} has format {v!r}; this fitsketch reads {EMBEDDING_FORMAT}")
