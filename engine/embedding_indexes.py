"""The FAISS indexes derived from a hub's embeddings, and its deep-hash model (engine/embeddings.py).

Files: ``<hub>/indexes/<level>-<kind>.faiss`` + ``.msgpack`` sidecar ``{"v": INDEX_FORMAT, "kind",
"level", "generation", "dim", "ntotal", "entries" (E, 3) int64 [entry id, first, n], "params"}``,
read and written through engine/faiss_files.py.

* ``flat``: ``IndexIDMap2(IndexFlatIP)`` on unit vectors: exact cosine.
* ``ivf``: ``IndexIDMap2(IndexIVFFlat)``, inner product, ``nlist = sqrt(n)`` (at least 39 points
  per list), ``nprobe`` = ``IVF_NPROBE`` unless given.
* ``hnsw``: ``IndexIDMap2(IndexHNSWFlat(M=32))``, inner product, ``efConstruction = 40``,
  ``efSearch`` = ``HNSW_EF_SEARCH`` unless given.
* ``deephash``: ``IndexBinaryIDMap2(IndexBinaryFlat)`` of deep-hash codes, bucketed in memory
  (engine/deephash.py) + cosine rerank; weights in database ``weights`` under ``b"deephash"``.

IDs are global sample ids (entry ids at ``level="entry"``). When the sidecar's generation is not
the hub's, the index is synchronized from the entry list it holds: removed entries go out with
``remove_ids`` (flat, ivf, deephash) or by a rebuild (hnsw: FAISS cannot delete from it), new
entries are added. IVF is retrained when ``sqrt(n)`` moves 2x from its ``nlist``; the deep hash is
retrained when more than ``DEEPHASH_RETRAIN_FRACTION`` of the samples it was trained on changed
(added + removed), or when its weights come from an older training recipe (``deephash.TRAINER``). A missing or unreadable index is rebuilt from LMDB.
"""
from __future__ import annotations

import dataclasses
import logging
import zlib
from dataclasses import dataclass

import faiss
import numpy as np

from . import deephash as DH
from . import errors as E
from . import faiss_files

log = logging.getLogger(__name__)

INDEX_FORMAT = 1
AUTO_FLAT_LIMIT = 10_000          # index="auto": flat below this many vectors, ivf above
HNSW_M = 32                       # graph degree
HNSW_EF_CONSTRUCTION = 40         # FAISS default
HNSW_EF_SEARCH = 64               # default search depth (bench --quick: recall@25 0.985 on 50k clustered)
IVF_NPROBE = 16                   # default lists probed
IVF_MIN_PER_LIST = 39             # FAISS k-means wants >= 39 training points per centroid
DEEPHASH_CANDIDATES = 1024        # default candidates a deep-hash query reranks (its cap)
DEEPHASH_RETRAIN_FRACTION = 0.25  # retrain when added + removed samples > this * trained samples


@dataclass
class Loaded:
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


def sample_ids(entries: np.ndarray) -> np.ndarray:
    """The global sample ids (N,) int64 of ``entries`` (E, 3) [entry id, first, n]."""
    if len(entries) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([np.arange(f, f + n, dtype=np.int64) for _, f, n in entries])


class EmbeddingIndexes:
    """The derived indexes of one :class:`~fitsketch.embeddings.Embeddings` (its ``table()``,
    ``vectors()``, ``store``, ``path`` and ``seed``), kept in memory and on disk. Callers hold the
    embeddings' lock."""

    def __init__(self, emb):
        self._emb = emb
        self.loaded: dict = {}        # (level, kind) -> Loaded
        self.model = None             # the deep-hash model last read / trained
        self.model_generation = -1    # generation at which `model` was checked

    def get(self, level: str, kind: str) -> Loaded:
        """The up-to-date index (level, kind): from memory, else disk, synchronized or rebuilt."""
        t = self._emb.table()
        ld = self.loaded.get((level, kind))
        if ld is None or ld.meta["generation"] != t.generation:
            disk = self._load(level, kind, t)
            if disk is not None and (ld is None or disk.meta["generation"] == t.generation):
                ld = disk
        if kind == "deephash":
            model = self.deephash_model(t)
            if ld is not None and ld.meta.get("params", {}).get("model") != _model_tag(model):
                ld = None
        else:
            model = None
        if ld is not None and ld.meta["generation"] == t.generation:
            if ld.model is None:
                ld.model = model
            self.loaded[(level, kind)] = ld
            return ld
        ld = self._sync(level, kind, t, ld, model)
        self.loaded[(level, kind)] = ld
        self._save(level, kind, ld)
        return ld

    # -- the deep hash ---------------------------------------------------------------------------
    def train_deephash(self, cfg, labels=None):
        """Train the deep-hash model on every stored sample, store its weights, forget its index."""
        t = self._emb.table(vectors=True)
        if t.n == 0:
            raise E.EmptyDataError("the hub stores no embeddings to train the deep hash on: add some first")
        if labels is not None:
            labels = np.asarray(labels)
            if labels.shape != (t.n,):
                raise E.DimensionError(f"labels has shape {labels.shape}: expected ({t.n},), one per stored sample")
        try:
            model = DH.train(t.x, labels, config=cfg, seed=int(self._emb.seed))
        except ValueError as e:
            raise E.InvalidArgumentError(str(e)) from None
        model.trained_n, model.trained_hwm, model.generation = t.n, t.next_sample_id, t.generation
        rec = model.to_record()
        try:
            self._emb.store.transact(lambda txn: txn.put("weights", b"deephash", rec))
        except Exception as e:  # a read-only hub keeps the model in memory only
            log.warning("hub at %s: deep-hash weights not stored (%s); kept in memory", self._emb.path, e)
        self.model, self.model_generation = model, t.generation
        self.loaded.pop(("sample", "deephash"), None)
        return model

    def deephash_model(self, t):
        """The stored model, trained first when absent or when too much changed since training."""
        if self.model is not None and self.model_generation == t.generation and self.model.dim == t.dim:
            return self.model
        with self._emb.store.read() as txn:
            rec = txn.get("weights", b"deephash")
        try:
            model = DH.DeepHashModel.from_record(rec) if rec is not None else self.model
        except (ValueError, KeyError, TypeError) as e:
            raise E.CorruptHubError(f"hub at {self._emb.path}: deep-hash weights cannot be read ({e}): "
                                    f"retrain with hub.train_deephash()") from None
        legacy = model is not None and model.trainer < DH.TRAINER   # older recipe: collapsing codes
        if model is not None and model.dim == t.dim and not legacy:
            # live samples with ids below the training high-water mark existed at training
            kept = int(np.minimum(t.entries[:, 2], np.maximum(model.trained_hwm - t.entries[:, 1], 0)).sum())
            changed = (t.n - kept) + (model.trained_n - kept)          # added + removed samples
            if changed <= DEEPHASH_RETRAIN_FRACTION * model.trained_n:
                self.model, self.model_generation = model, t.generation
                return model
            log.info("deep hash: %d of %d trained samples changed: retraining", changed, model.trained_n)
        cfg = model.config if model is not None else DH.DeepHashConfig()
        if legacy:
            log.info("deep hash: weights from training recipe %d (now %d): retraining", model.trainer, DH.TRAINER)
            cfg = dataclasses.replace(cfg, balance=DH.DeepHashConfig.balance, decorrelate=DH.DeepHashConfig.decorrelate)
        model = self.train_deephash(cfg)
        self.model_generation = t.generation
        return model

    # -- files -----------------------------------------------------------------------------------
    def paths(self, level: str, kind: str) -> tuple[str, str]:
        return faiss_files.paths(self._emb.path, f"{level}-{kind}")

    def _load(self, level: str, kind: str, t) -> Loaded | None:
        def decode(index, meta):
            if index.ntotal != meta["ntotal"]:
                return None
            meta["entries"] = np.asarray(meta["entries"], dtype=np.int64).reshape(-1, 3)
            return Loaded(index, meta)

        return faiss_files.load(*self.paths(level, kind), fmt=INDEX_FORMAT, binary=kind == "deephash",
                                accept=lambda m: m.get("kind") == kind and m.get("dim") == t.dim, decode=decode)

    def _save(self, level: str, kind: str, ld: Loaded) -> None:
        faiss_files.save(*self.paths(level, kind), ld.index, ld.meta, binary=kind == "deephash")

    # -- building ----------------------------------------------------------------------------------
    def _sync(self, level: str, kind: str, t, ld: Loaded | None, model) -> Loaded:
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
                ok = ok and 0.5 <= nlist_for(n_after) / ld.meta["params"]["nlist"] <= 2.0
            if ok:
                if len(gone):
                    ld.index.remove_ids(sample_ids(gone))
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
        return Loaded(index, {"v": INDEX_FORMAT, "kind": kind, "level": level, "generation": t.generation,
                              "dim": t.dim, "ntotal": int(index.ntotal), "entries": target,
                              "params": params}, model)

    def _vectors(self, level: str, t, entries: np.ndarray):
        if level == "entry":
            row_of = {int(e): j for j, e in enumerate(t.entries[:, 0])}
            rows = np.array([row_of[int(e)] for e in entries[:, 0]], dtype=np.int64)
            return entries[:, 0].copy(), t.means[rows]
        return self._emb.vectors(t, entries)

    def _build(self, kind: str, x: np.ndarray, ids: np.ndarray, model):
        d = x.shape[1]
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
            nlist = nlist_for(len(ids))
            quant = faiss.IndexFlatIP(d)
            base = faiss.IndexIVFFlat(quant, d, nlist, faiss.METRIC_INNER_PRODUCT)
            base.cp.seed = int(self._emb.seed)
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


# ----------------------------------------------------------------------------- helpers
_GPUS: list = []


def _num_gpus() -> int:
    if not _GPUS:
        _GPUS.append(faiss.get_num_gpus() if hasattr(faiss, "index_cpu_to_all_gpus") else 0)
    return _GPUS[0]


def auto_kind(n: int) -> str:
    """``index="auto"``: flat below ``AUTO_FLAT_LIMIT`` vectors, ivf from there on."""
    return "flat" if n < AUTO_FLAT_LIMIT else "ivf"


def nlist_for(n: int) -> int:
    return max(1, min(int(round(np.sqrt(max(n, 1)))), n // IVF_MIN_PER_LIST))


def set_params(index, kind: str, nprobe, ef_search) -> None:
    """A query's ``nprobe`` (ivf) or ``ef_search`` (hnsw) on ``index``, the defaults when None."""
    base = faiss.downcast_index(index.index) if hasattr(index, "id_map") else index
    if kind == "ivf":
        base.nprobe = min(int(nprobe or IVF_NPROBE), base.nlist)
    elif kind == "hnsw":
        base.hnsw.efSearch = int(ef_search or HNSW_EF_SEARCH)


def _model_tag(model) -> list:
    """What ties a deep-hash index file to the model whose codes it holds: the model's counters and
    shape, its training recipe and a CRC-32 of its weights (a model retrained at the same generation
    -- another epoch count, or an older recipe's weights retrained on first use -- has other codes)."""
    crc = 0
    for w in (model.W1, model.b1, model.W2, model.b2):
        crc = zlib.crc32(np.ascontiguousarray(w, dtype=np.float32).tobytes(), crc)
    return [model.generation, model.trained_hwm, model.trained_n, model.bits, int(model.W1.shape[1]),
            int(model.trainer), crc]
