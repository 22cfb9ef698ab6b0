# ProbeLog in the hub: probe sets, the logit descriptors of models, and logit / concept search
# (Kahana et al., "Can this Model Also Recognize Dogs?"). The descriptors, the probing of a model
# and the collaborative completion are defined in engine/probelog_descriptors.py; this module
# holds their records and the hub's component, :class:`ProbeLog` (``hub._probelog``), whose
# public methods are the hub's (``hub.add_probes``, ``hub.search_logits``, ...).
#
# Storage (LMDB database ``probes``; every record carries its format ``v``):
#   b"_generation"        -> int, bumped by every write below (dates the derived FAISS indexes)
#   b"_default"           -> str, the default probe set (the first added, or default=True)
#   b"p" + name (utf-8)   -> probe set {"v", "name", "kind", "x" float32 (n_probes, ...) | None,
#                            "texts" list[str] | None, "digest", "created"}; immutable
#   b"d" + u64(entry id)  -> descriptors of a hub entry (written by ``write_model_descriptors``
#                            inside hub.add's transaction)
#   b"m" + sha256(name)[:16] -> descriptors of a model-only entry (``add_model`` of a name that is
#                            not a hub entry); listed by search but not by hub.names()
#   descriptor record: {"v", "name", "entry_id" | None, "probe_set", "digest", "desc" float32
#                       (n_logits, n_probes), "labels" list | None, "measured" bool (n_probes,),
#                       "metadata", "created"}
# Derived index per probe set: <hub>/indexes/probelog-<slug>.faiss (faiss.write_index) + a
# .msgpack sidecar {"v", "generation", "probe_set", "keys", "offsets", "names", "labels"},
# both read and written through engine/faiss_files.py; stale, missing or unreadable -> rebuilt from LMDB.
from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
import zlib
from dataclasses import dataclass, field

import faiss
import numpy as np

from . import errors as E
from . import faiss_files
from .exact import normalize
from .probelog_descriptors import (ALS_ITERS, BATCH, RIDGE, complete_responses, descriptors,  # noqa: F401
                                   make_probes, probe_model)
from .storage import pack, u64
from .validate import _check_metadata, _check_name

log = logging.getLogger(__name__)

__all__ = [
    "INDEX_FORMAT",
    "PROBE_FORMAT",
    "LogitMatch",
    "ModelLogits",
    "ProbeLog",
    "ProbeSet",
    "complete_responses",
    "delete_model_descriptors",
    "descriptors",
    "make_probes",
    "probe_model",
    "write_model_descriptors",
]

PROBE_FORMAT = 1          # format of probe-set and descriptor records
INDEX_FORMAT = 1          # format of the index sidecar
KINDS = ("tabular", "image", "text")
DEFAULT_RANK = 16         # rank of the collaborative-probing completion (capped by the data)
_SET_NAME_MAX = 200
_DB = "probes"
_K_GEN, _K_DEFAULT = b"_generation", b"_default"
_K_SET, _K_DESC, _K_MODEL = b"p", b"d", b"m"


# ----------------------------------------------------------------------------- value types
@dataclass(frozen=True)
class ProbeSet:
    """A stored probe set. ``x`` is the model input (None for a text-only set: models get ``texts``)."""
    name: str
    kind: str
    x: np.ndarray | None            # (n_probes, ...) float32
    texts: list[str] | None
    digest: str
    default: bool
    created: float

    @property
    def n_probes(self) -> int:
        return len(self.texts) if self.x is None else int(self.x.shape[0])

    @property
    def inputs(self):
        """What a model is run on: ``x`` if stored, else the texts."""
        return self.texts if self.x is None else self.x


@dataclass(frozen=True)
class ModelLogits:
    """The stored descriptors of one model (hub entry or model-only)."""
    name: str
    entry_id: int | None            # None for a model-only entry
    probe_set: str
    descriptors: np.ndarray         # (n_logits, n_probes) float32
    labels: list | None
    measured: np.ndarray            # (n_probes,) bool: probes the model was run on
    metadata: dict = field(default_factory=dict)

    @property
    def n_logits(self) -> int:
        return int(self.descriptors.shape[0])


@dataclass
class LogitMatch:
    """One logit found by ``search_logits`` / ``search_concept``; ``score`` is the cosine of the
    descriptors (= Pearson correlation of the responses over the probes), higher is better."""
    name: str
    logit: int
    label: str | None
    score: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)


# ----------------------------------------------------------------------------- records (in a txn)
def _model_key(name: str) -> bytes:
    return _K_MODEL + hashlib.sha256(name.encode("utf-8")).digest()[:16]


def _bump(txn) -> None:
    txn.put(_DB, _K_GEN, int(txn.get(_DB, _K_GEN) or 0) + 1)


def _check_rec(rec, key: bytes) -> dict:
    if not isinstance(rec, dict) or rec.get("v") != PROBE_FORMAT:
        v = rec.get("v") if isinstance(rec, dict) else rec
        raise E.SchemaError(f"probes record {key!r} has format {v!r}; this fitsketch reads {PROBE_FORMAT}: "
                            f"upgrade fitsketch")
    return rec


def _read_set(txn, name: str | None) -> dict:
    if name is None:
        name = txn.get(_DB, _K_DEFAULT)
        if name is None:
            raise E.InvalidArgumentError("this hub has no probe set: add one first with "
                                         "hub.add_probes('probes', make_probes(held_out_data, 500, seed=0))")
    if not isinstance(name, str) or not name:
        raise E.InvalidArgumentError(f"probe_set={name!r}: pass the name of a probe set (see hub.probe_sets())")
    rec = txn.get(_DB, _K_SET + name.encode("utf-8"))
    if rec is None:
        raise E.EntryNotFoundError(f"no probe set named {name!r} in this hub: see hub.probe_sets()")
    return _check_rec(rec, _K_SET + name.encode("utf-8"))


def _check_labels(labels, n_logits: int):
    if labels is None:
        return None
    if isinstance(labels, (str, bytes)) or not hasattr(labels, "__len__"):
        raise E.InvalidArgumentError(f"logit_labels must be a list of str, got {type(labels).__name__}")
    labels = [None if v is None else str(v) for v in labels]
    if len(labels) != n_logits:
        raise E.DimensionError(f"logit_labels has {len(labels)} labels for {n_logits} logits: give one per logit")
    return labels


def write_model_descriptors(txn, entry_id: int | None, name: str, responses, logit_labels=None,
                            probe_set: str | None = None, *, metadata: dict | None = None,
                            rank: int | None = None) -> dict:
    """Store the descriptors of model ``name``'s responses (n_probes, n_logits) inside write
    transaction ``txn`` (hub.add calls it with the new ``entry_id``; ``entry_id=None`` stores a
    model-only entry). NaN rows of ``responses`` are probes the model was not run on: they are
    completed from the other descriptors on the probe set (collaborative probing). A model-only
    record of the same name is replaced by the hub entry's. Returns the record."""
    ps = _read_set(txn, probe_set)
    r = np.asarray(responses, dtype=np.float64)
    n_probes = len(ps["texts"]) if ps["x"] is None else ps["x"].shape[0]
    if r.ndim != 2 or r.shape[0] != n_probes:
        raise E.DimensionError(f"responses has shape {r.shape} but probe set {ps['name']!r} has {n_probes} probes: "
                               f"compute them with hub.probe(model, probe_set={ps['name']!r})")
    labels = _check_labels(logit_labels, r.shape[1])
    measured = ~np.isnan(r).any(axis=1)                              # (n_probes,)
    desc = descriptors(np.where(measured[:, None], r, np.nan))        # (n_logits, n_probes)
    if not measured.all():
        desc = _complete_in_hub(txn, ps, desc, measured, rank)
    key = _model_key(name) if entry_id is None else _K_DESC + u64(int(entry_id))
    if entry_id is not None:
        txn.delete(_DB, _model_key(name))
    rec = {"v": PROBE_FORMAT, "name": name, "entry_id": None if entry_id is None else int(entry_id),
           "probe_set": ps["name"], "digest": ps["digest"], "desc": desc, "labels": labels,
           "measured": measured, "metadata": metadata or {}, "created": time.time()}
    txn.put(_DB, key, rec)
    _bump(txn)
    return rec


def delete_model_descriptors(txn, entry_id: int) -> bool:
    """Delete hub entry ``entry_id``'s descriptors inside ``txn`` (hub.remove); whether it had any."""
    ok = txn.delete(_DB, _K_DESC + u64(int(entry_id)))
    if ok:
        _bump(txn)
    return ok


def _stored(txn, probe_set: str):
    """[(key, record)] of every descriptor record on ``probe_set``, in key order."""
    out = []
    for prefix in (_K_DESC, _K_MODEL):
        for k, rec in txn.items(_DB, prefix):
            if _check_rec(rec, k)["probe_set"] == probe_set:
                out.append((k, rec))
    return out


def _complete_in_hub(txn, ps: dict, desc: np.ndarray, measured: np.ndarray, rank: int | None) -> np.ndarray:
    rows = [np.where(rec["measured"][None, :], rec["desc"], np.nan) for _, rec in _stored(txn, ps["name"])]
    if not rows:
        raise E.InvalidArgumentError(
            f"probe_fraction < 1 completes missing responses from other models on probe set {ps['name']!r}, "
            f"and it has none: add the first models with probe_fraction=1")
    hub = np.concatenate(rows)                                        # (n_stored_logits, n_probes)
    full = int(np.isfinite(hub).all(axis=1).sum())
    r = rank or max(1, min(DEFAULT_RANK, hub.shape[0], int(measured.sum()) // 2))
    done = complete_responses(np.concatenate([hub, desc]), r)[hub.shape[0]:]
    log.debug("completed %d logits from %d stored (%d fully measured), rank %d", desc.shape[0], hub.shape[0], full, r)
    return descriptors(done.T)


# ----------------------------------------------------------------------------- the hub's component
@dataclass
class _Index:
    generation: int
    index: faiss.Index
    keys: list                      # record keys, one per stored model
    offsets: np.ndarray             # (n_models + 1,) first index row of each model
    names: list                     # model name per record
    labels: list                    # logit labels (list | None) per record


class ProbeLog:
    """ProbeLog search, a part of a :class:`~fitsketch.Hub` (``hub._probelog``): reads and writes
    the hub's ``store``; holds the FAISS index of each probe set (dated by the ``probes``
    database's generation) and the embeddings of text probe sets. See the module header."""

    def __init__(self, hub):
        self._hub = hub
        self.lock = threading.RLock()
        self.indexes: dict[str, _Index] = {}
        self.text_cache: dict = {}  # (digest, encoder) -> (n_probes, dim) unit probe embeddings

    @property
    def store(self):
        return self._hub.store

    @property
    def path(self) -> str:
        return self._hub.path

    def _transact(self, fn):
        return self._hub._transact(fn)   # one write transaction, lower-layer errors translated

    # -- probe sets -----------------------------------------------------------------------------
    def add_probes(self, name: str, probes=None, *, kind: str = "tabular", texts=None,
                   default: bool = False) -> ProbeSet:
        """Store probe set ``name`` (n_probes, ...) float once; the hub's first set is its default
        (or the one added with ``default=True``). ``kind="text"`` takes ``texts`` (one str per
        probe; with ``probes=None`` models are run on the texts themselves). Probe sets are
        immutable: re-adding the same content is a no-op, other content raises EntryExistsError."""
        if not isinstance(name, str) or not name or len(name.encode("utf-8")) > _SET_NAME_MAX or "\x00" in name:
            raise E.InvalidArgumentError(f"name={name!r}: give a non-empty str of at most {_SET_NAME_MAX} UTF-8 bytes")
        if kind not in KINDS:
            raise E.InvalidArgumentError(f"kind={kind!r}: use one of {', '.join(KINDS)}")
        x = None
        if probes is not None:
            x = np.asarray(probes)
            if x.dtype.kind not in "biuf":
                raise E.InvalidArgumentError(f"probes has dtype {x.dtype}: pass a float array (n_probes, ...)")
            if x.ndim < 1 or x.shape[0] < 2:
                raise E.DimensionError(f"probes has shape {x.shape}: pass (n_probes, ...) with n_probes >= 2")
            x = np.ascontiguousarray(x, dtype=np.float32)
            if not np.isfinite(x).all():
                raise E.NonFiniteError("probes hold NaN or infinity: pass finite probe inputs")
        if texts is not None:
            if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
                raise E.InvalidArgumentError("texts must be a list of str, one per probe")
            texts = list(texts)
            if x is not None and len(texts) != x.shape[0]:
                raise E.DimensionError(f"texts has {len(texts)} items for {x.shape[0]} probes: give one per probe")
            if x is None and len(texts) < 2:
                raise E.DimensionError("texts needs >= 2 probes")
        if x is None and texts is None:
            raise E.InvalidArgumentError("give probes (an array) or, for kind='text', texts")
        if kind != "text" and x is None:
            raise E.InvalidArgumentError(f"kind={kind!r} needs a probes array; texts alone are for kind='text'")
        h = hashlib.sha256(pack([kind, x, texts]))
        rec = {"v": PROBE_FORMAT, "name": name, "kind": kind, "x": x, "texts": texts,
               "digest": h.hexdigest(), "created": time.time()}
        key = _K_SET + name.encode("utf-8")

        def write(txn):
            old = txn.get(_DB, key)
            if old is not None and _check_rec(old, key)["digest"] != rec["digest"]:
                raise E.EntryExistsError(f"probe set {name!r} exists with other probes; stored descriptors depend on "
                                         f"it, so it is immutable: add the new probes under another name")
            if old is None:
                txn.put(_DB, key, rec)
            if default or txn.get(_DB, _K_DEFAULT) is None:
                txn.put(_DB, _K_DEFAULT, name)
            return self._probe_set(old or rec, txn.get(_DB, _K_DEFAULT))

        return self._transact(write)

    @staticmethod
    def _probe_set(rec: dict, default) -> ProbeSet:
        return ProbeSet(rec["name"], rec["kind"], rec["x"], rec["texts"], rec["digest"], rec["name"] == default,
                        rec["created"])

    def probe_set(self, name: str | None = None) -> ProbeSet:
        """Probe set ``name`` (default: the hub's default set)."""
        with self.store.read() as txn:
            return self._probe_set(_read_set(txn, name), txn.get(_DB, _K_DEFAULT))

    def probes(self, name: str | None = None) -> np.ndarray:
        """The probe inputs of set ``name`` (n_probes, ...) float32; a text-only set gives its texts
        as a 1-D object array."""
        ps = self.probe_set(name)
        return ps.x if ps.x is not None else np.asarray(ps.texts, dtype=object)

    def probe_sets(self) -> list[str]:
        with self.store.read() as txn:
            return [k[1:].decode("utf-8") for k in txn.keys(_DB, _K_SET)]

    # -- models ---------------------------------------------------------------------------------
    def probe(self, model, probe_set: str | None = None, *, fraction: float = 1.0, seed: int = 0,
              name: str = "") -> np.ndarray:
        """``model``'s responses (n_probes, n_logits) on a stored probe set (hub.add calls this
        before its transaction). ``fraction < 1`` runs it on a seeded subset of
        ``ceil(fraction * n_probes)`` probes (the seed mixes in ``name``) and leaves NaN rows."""
        ps = self.probe_set(probe_set)
        n = ps.n_probes
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
            raise E.InvalidArgumentError(f"probe_fraction={fraction!r}: pass a number in (0, 1]")
        if fraction >= 1:
            return probe_model(model, ps.inputs)
        m = max(2, int(np.ceil(fraction * n)))
        rng = np.random.default_rng([int(seed), zlib.crc32(name.encode("utf-8"))])
        rows = np.sort(rng.choice(n, size=m, replace=False))
        inp = [ps.inputs[i] for i in rows] if ps.x is None else ps.x[rows]
        sub = probe_model(model, inp)
        out = np.full((n, sub.shape[1]), np.nan, dtype=np.float32)
        out[rows] = sub
        return out

    def add_model(self, name: str, model, *, probe_set: str | None = None, logit_labels=None,
                  metadata: dict | None = None, probe_fraction: float = 1.0, rank: int | None = None,
                  seed: int = 0) -> ModelLogits:
        """Probe ``model`` and store its logit descriptors under ``name``, without training data.

        A name that is a hub entry (``hub.add(name, data)``) without descriptors gets them; any
        other name becomes a *model-only* entry: found by ``search_logits`` / ``search_concept``
        but not listed by ``hub.names()``. ``probe_fraction < 1`` runs the model on that share of
        the probes and completes the rest from the hub's other models (rank ``rank``).
        """
        _check_name(name)
        metadata = _check_metadata(metadata)
        resp = self.probe(model, probe_set, fraction=probe_fraction, seed=seed, name=name)
        _check_labels(logit_labels, resp.shape[1])

        def write(txn):
            eid = txn.get_raw("names", name.encode("utf-8"))
            if eid is not None:
                if txn.exists(_DB, _K_DESC + eid):
                    raise E.EntryExistsError(f"entry {name!r} already has logit descriptors: hub.remove it first")
                if metadata:
                    raise E.InvalidArgumentError(f"{name!r} is a hub entry: its metadata was set by hub.add; omit metadata")
            elif txn.exists(_DB, _model_key(name)):
                raise E.EntryExistsError(f"a model named {name!r} exists: hub.remove_model it first or choose another name")
            rec = write_model_descriptors(txn, None if eid is None else int.from_bytes(eid, "big"), name, resp,
                                          logit_labels, probe_set, metadata=metadata, rank=rank)
            return self._model_logits(rec)

        return self._transact(write)

    def remove_model(self, name: str) -> None:
        """Delete ``name``'s descriptors (a model-only entry, or the descriptors of a hub entry,
        also those left behind by a ``hub.remove`` that did not call ``delete_model_descriptors``)."""
        def write(txn):
            keys = [_model_key(name)] + [k for k, rec in txn.items(_DB, _K_DESC) if rec.get("name") == name]
            if not sum(txn.delete(_DB, k) for k in keys):
                raise E.EntryNotFoundError(f"no model named {name!r} has logit descriptors in hub {self.path}")
            _bump(txn)

        self._transact(write)

    @staticmethod
    def _model_logits(rec: dict) -> ModelLogits:
        return ModelLogits(rec["name"], rec["entry_id"], rec["probe_set"], rec["desc"], rec["labels"],
                           rec["measured"], rec["metadata"])

    def _find(self, txn, name: str) -> tuple[bytes, dict]:
        if not isinstance(name, str) or not name:
            raise E.InvalidArgumentError(f"entry name {name!r}: pass a str")
        eid = txn.get_raw("names", name.encode("utf-8"))
        for key in ([_K_DESC + eid] if eid is not None else []) + [_model_key(name)]:
            rec = txn.get(_DB, key)
            if rec is not None and _check_rec(rec, key)["name"] == name:
                return key, rec
        why = "is a hub entry without a model: register its logits with hub.add_model(name, model)" \
            if eid is not None else "is neither a hub entry nor a model: see hub.names() / hub.models()"
        raise E.EntryNotFoundError(f"{name!r} {why}")

    def model_logits(self, name: str) -> ModelLogits:
        """The stored descriptors, labels and measured-probe mask of model ``name``."""
        with self.store.read() as txn:
            return self._model_logits(self._find(txn, name)[1])

    def models(self) -> list[str]:
        """Names of every model with logit descriptors (hub entries and model-only), sorted."""
        with self.store.read() as txn:
            return sorted(rec["name"] for p in (_K_DESC, _K_MODEL) for _, rec in txn.items(_DB, p))

    # -- search ---------------------------------------------------------------------------------
    def search_logits(self, query, k: int = 10, *, probe_set: str | None = None) -> list[LogitMatch]:
        """The ``k`` stored logits most similar to ``query``: ``(entry_name, logit_index)`` (that
        logit itself is left out) or a descriptor / response vector (n_probes,) on ``probe_set``
        (default set) that is z-scored first. Cosine over descriptors, best first."""
        _check_k(k)
        skip = None
        if isinstance(query, tuple) and len(query) == 2 and isinstance(query[0], str):
            name, j = query
            with self.store.read() as txn:
                key, rec = self._find(txn, name)
            n_logits = rec["desc"].shape[0]
            if isinstance(j, bool) or not isinstance(j, (int, np.integer)) or not 0 <= j < n_logits:
                raise E.InvalidArgumentError(f"logit index {j!r} is out of range: {name!r} has logits 0..{n_logits - 1}")
            q, set_name, skip = rec["desc"][int(j)], rec["probe_set"], (key, int(j))
        else:
            q = np.asarray(query)
            if q.dtype.kind not in "biuf":
                raise E.InvalidArgumentError("query must be (entry_name, logit_index) or a descriptor vector (n_probes,)")
            set_name = self.probe_set(probe_set).name
            q = self._query_vector(q, set_name)
        return self._search_index(q, set_name, k, skip)

    def _query_vector(self, q: np.ndarray, set_name: str) -> np.ndarray:
        n = self.probe_set(set_name).n_probes
        if q.shape != (n,):
            raise E.DimensionError(f"query has shape {q.shape} but probe set {set_name!r} has {n} probes: pass ({n},)")
        if not np.isfinite(q).all():
            raise E.NonFiniteError("query holds NaN or infinity: pass a finite descriptor")
        return descriptors(q[:, None])[0]

    def search_concept(self, text: str, encoder, k: int = 10, probe_set: str | None = None) -> list[LogitMatch]:
        """Zero-shot: the ``k`` logits that best match concept ``text``. ``encoder`` (list[str] ->
        (n, dim), e.g. ``fitsketch.text_encoder.MiniLMEncoder()``) embeds the concept and the
        probe set's texts; the concept's descriptor is its z-scored cosine to each probe."""
        _check_k(k)
        if not isinstance(text, str) or not text.strip():
            raise E.InvalidArgumentError(f"text={text!r}: pass a non-empty concept, e.g. 'dog'")
        q = self.concept_descriptors([text], encoder, probe_set)[0]
        return self._search_index(q, self.probe_set(probe_set).name, k, None)

    def concept_descriptors(self, texts: list[str], encoder, probe_set: str | None = None) -> np.ndarray:
        """Descriptors (n_texts, n_probes) float32 of concepts ``texts`` (see ``search_concept``)."""
        ps = self.probe_set(probe_set)
        if ps.texts is None:
            raise E.InvalidArgumentError(f"probe set {ps.name!r} has no texts: concept search needs a text probe set "
                                         f"(hub.add_probes(name, kind='text', texts=[...]))")
        if not callable(encoder):
            raise E.InvalidArgumentError("encoder must be a callable list[str] -> (n, dim) embeddings")
        with self.lock:
            pe = self.text_cache.get((ps.digest, encoder))
            if pe is None:
                pe = _unit(_embed(encoder, ps.texts), "probe texts")           # (n_probes, dim)
                if len(self.text_cache) >= 4:
                    self.text_cache.pop(next(iter(self.text_cache)))
                self.text_cache[(ps.digest, encoder)] = pe
        ce = _unit(_embed(encoder, list(texts)), "concepts")                 # (n_texts, dim)
        if ce.shape[1] != pe.shape[1]:
            raise E.DimensionError(f"encoder gave dimension {ce.shape[1]} for concepts, {pe.shape[1]} for probes")
        return descriptors((ce @ pe.T).T)                                     # (n_texts, n_probes)

    def _search_index(self, q: np.ndarray, set_name: str, k: int, skip) -> list[LogitMatch]:
        with self.lock:
            ix = self._index(set_name)
            if ix.index.ntotal == 0:
                return []
            xq, _ = normalize(q[None, :])
            D, I = ix.index.search(xq, min(k + (skip is not None), ix.index.ntotal))
        hits = []
        for d, i in zip(D[0], I[0]):
            if i < 0:
                continue
            m = int(np.searchsorted(ix.offsets, i, side="right") - 1)
            if skip is not None and (ix.keys[m], int(i - ix.offsets[m])) == skip:
                continue
            hits.append((m, int(i - ix.offsets[m]), float(d)))
        return [LogitMatch(ix.names[m], j, ix.labels[m][j] if ix.labels[m] else None, d) for m, j, d in hits[:k]]

    # -- the FAISS index ------------------------------------------------------------------------
    def probelog_index_paths(self, probe_set: str) -> tuple[str, str]:
        slug = re.sub(r"[^A-Za-z0-9_.-]", "_", probe_set)[:40]
        tag = hashlib.sha256(probe_set.encode("utf-8")).hexdigest()[:8]
        return faiss_files.paths(self.store.path, f"probelog-{slug}-{tag}")

    def _index(self, set_name: str) -> _Index:
        with self.store.read() as txn:
            gen = int(txn.get(_DB, _K_GEN) or 0)
            ix = self.indexes.get(set_name)
            if ix is not None and ix.generation == gen:
                return ix
            ix = self._load_index(set_name, gen)
            if ix is None:
                ix = _build_index(txn, set_name, gen)
                faiss_files.save(*self.probelog_index_paths(set_name), ix.index, {
                    "v": INDEX_FORMAT, "generation": ix.generation, "probe_set": set_name, "keys": ix.keys,
                    "offsets": ix.offsets, "names": ix.names, "labels": ix.labels})
        self.indexes[set_name] = ix
        return ix

    def _load_index(self, set_name: str, gen: int) -> _Index | None:
        def decode(index, meta):
            offsets = np.asarray(meta["offsets"], dtype=np.int64)
            if index.ntotal != offsets[-1]:
                return None
            return _Index(gen, index, list(meta["keys"]), offsets, list(meta["names"]), list(meta["labels"]))

        return faiss_files.load(*self.probelog_index_paths(set_name), fmt=INDEX_FORMAT, decode=decode,
                                accept=lambda m: m.get("generation") == gen and m.get("probe_set") == set_name)


def _build_index(txn, set_name: str, gen: int) -> _Index:
    ps = _read_set(txn, set_name)
    n_probes = len(ps["texts"]) if ps["x"] is None else ps["x"].shape[0]
    recs = _stored(txn, set_name)
    index = faiss.IndexFlatIP(n_probes)
    if recs:
        index.add(normalize(np.concatenate([r["desc"] for _, r in recs]))[0])
    offsets = np.cumsum([0] + [r["desc"].shape[0] for _, r in recs]).astype(np.int64)
    log.info("probelog index %r: %d logits of %d models (generation %d)", set_name, index.ntotal, len(recs), gen)
    return _Index(gen, index, [k for k, _ in recs], offsets, [r["name"] for _, r in recs],
                  [r["labels"] for _, r in recs])


def _check_k(k) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise E.InvalidArgumentError(f"k={k!r} is not valid: expected a positive integer")


def _embed(encoder, texts: list[str]) -> np.ndarray:
    e = np.asarray(encoder(texts), dtype=np.float32)
    if e.ndim != 2 or e.shape[0] != len(texts):
        raise E.DimensionError(f"the encoder returned shape {e.shape} for {len(texts)} texts: expected (n, dim)")
    return e


def _unit(e: np.ndarray, what: str) -> np.ndarray:
    if not np.isfinite(e).all():
        raise E.NonFiniteError(f"the encoder returned NaN or infinity for the {what}")
    return normalize(e)[0]
