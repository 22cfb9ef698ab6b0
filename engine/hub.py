"""The hub: a directory holding an LMDB environment of entries and their sketches.

Writes: every ``add`` / ``remove`` is one LMDB transaction covering the entry record, its name,
its feature signatures, its LSH band keys and its partition histograms, so after a crash the
hub holds the whole entry or none of it. All validation and sketching happen before the
transaction opens, so a failed ``add`` leaves the hub exactly as it was.

Reads: ``search`` scores inside one read transaction and sees one consistent snapshot; the
profile shortlist (or the embedding stage) before it is read earlier, so entries it names that
were removed since are skipped (the plan says how many). Stored records that an older
fitsketch accepted without checks and that a scorer cannot use are skipped and named in the plan.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import struct
import time
import unicodedata
from dataclasses import dataclass, field

import numpy as np

from . import errors as E
from . import accuracy as _acc
from . import profiles as _profiles
from . import screen as _screen
from .config import METHODS, QUERY_PARAMS, SketchConfig
from .jslsh import (adaptivity_scores, below_one_step, exact_js_scores, graded_adaptivity, js_lsh_scores,
                    lsh_band_keys, own_keys, query_partition_size)
from .minhash import (Alignment, align_from_similarity, distribution_overlap, feature_band_keys, feature_dists,
                      hist_totals, is_generic, row_similarity, similarity)
from .partitions import aligned_distributions, pack_hist, unpack_hist
from .planner import (SHORTLIST_MARGIN_CAP, Plan, Stage, choose_candidate_stage, order_filter_first, shortlist_rule,
                      use_shortlist)
from .data import to_frame
from .embeddings import EmbeddingsMixin, check_embedding, delete_embeddings, write_embeddings
from .probelog import ProbeLogMixin, delete_model_descriptors, write_model_descriptors
from .sketch import Sketch, build_sketch, check_sketch
from .storage import HubStore, from_u64, u64

log = logging.getLogger(__name__)

ENTRY_FORMAT = 1
_NAME_MAX = 511  # LMDB's key size limit: a name is a key of the names database
_AE_PREFIX = b"ae:"  # weights-db keys of SimEx fleets: b"ae:" + entry id


@dataclass(frozen=True)
class Entry:
    """A registered model (or bare dataset) and what the hub knows of its data."""
    name: str
    id: int
    metadata: dict
    features: list[str]
    kinds: list[str]
    n_rows: int
    n_partitions: int
    partition_size: int
    created: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Match:
    """One search result. ``score`` is higher-is-better for every method; ``evidence`` holds the
    method's raw numbers; ``features`` the matched (target feature, source feature, similarity)."""
    name: str
    score: float
    method: str
    overlap: float
    features: list[tuple[str, str, float]] = field(default_factory=list)
    evidence: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["features"] = [list(f) for f in self.features]
        return d

    def __repr__(self) -> str:  # short: a few matched features and evidence values, not all of them
        feats = ", ".join(t if t == src else f"{t}~{src}" for t, src, _ in self.features[:3])
        more = f", +{len(self.features) - 3} more" if len(self.features) > 3 else ""
        ev = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v!r}" for k, v in
                       list((k, v) for k, v in self.evidence.items() if isinstance(v, (int, float, str)))[:3])
        return (f"Match({self.name!r}, score={self.score:.4g}, method={self.method!r}, overlap={self.overlap:.2f}, "
                f"features=[{feats}{more}]" + (f", evidence={{{ev}}}" if ev else "") + ")")


def _check_path(path) -> str:
    """A hub path as str: a non-empty str or os.PathLike of str, not under a regular file."""
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if not isinstance(path, str) or not path or "\x00" in path:
        raise E.InvalidArgumentError(f"path={path!r} is not a hub path: give the hub's directory as a non-empty str "
                                     "or pathlib.Path (not bytes, not '')")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise E.InvalidArgumentError(f"path={path!r} holds a lone surrogate: give a path UTF-8 can encode") from None
    parent = os.path.dirname(os.path.abspath(path))
    while parent and not os.path.exists(parent):
        parent, last = os.path.dirname(parent), parent
        if parent == last:
            break
    if parent and os.path.exists(parent) and not os.path.isdir(parent):
        raise E.InvalidArgumentError(f"path={path!r} is inside {parent!r}, which is a file: a hub is a directory")
    return path


def _check_name(name) -> str:
    """``name`` in Unicode normal form NFC (names that differ only by normalization are one entry)."""
    if isinstance(name, str):
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise E.InvalidArgumentError(f"name={name!r} holds a lone surrogate, which UTF-8 cannot encode: "
                                         "decode the name properly") from None
        name = unicodedata.normalize("NFC", name)
    if not isinstance(name, str) or not name or len(name.encode("utf-8")) > _NAME_MAX or "\x00" in name:
        raise E.InvalidArgumentError(
            f"name={name!r} is not valid: give a non-empty str of at most {_NAME_MAX} UTF-8 bytes without NUL")
    return name


_META_SCALARS = (type(None), bool, int, float, str, bytes)
_META_MAX_DEPTH = 256


def _plain(v, depth: int = 0):
    """A metadata value as plain msgpack data: None, bool, int, float, str, bytes, and lists / dicts
    (str keys) of them; NumPy scalars become Python ones. Anything else (a NumPy array, which
    ``where=`` could not compare) raises CodecError."""
    if depth > _META_MAX_DEPTH:
        raise E.InvalidArgumentError(f"metadata is nested deeper than {_META_MAX_DEPTH} levels")
    if isinstance(v, np.generic) and not isinstance(v, (np.void, np.object_)) and v.dtype.kind in "biuf":
        v = v.item()
    if isinstance(v, str):
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            raise E.InvalidArgumentError(f"metadata string {v!r} holds a lone surrogate, which UTF-8 cannot "
                                         "encode") from None
        return v
    if isinstance(v, _META_SCALARS):
        return v
    if isinstance(v, (list, tuple)):
        return [_plain(x, depth + 1) for x in v]
    if isinstance(v, dict):
        if not all(isinstance(k, str) for k in v):
            raise E.InvalidArgumentError("metadata dicts must have str keys")
        return {_plain(k, depth + 1): _plain(x, depth + 1) for k, x in v.items()}
    raise E.CodecError(
        f"metadata value of type {type(v).__name__} is not accepted: use None, bool, int, float, str, bytes, "
        "and lists / dicts of them (convert NumPy arrays with .tolist())")


def _check_metadata(metadata) -> dict:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) for k in metadata):
        raise E.InvalidArgumentError(
            f"metadata must be a dict with str keys, got {type(metadata).__name__}: e.g. {{'task': 'em', 'accuracy': 0.9}}")
    metadata = _plain(metadata)
    from .storage import pack

    try:
        pack(metadata)
    except Exception as e:
        raise E.CodecError(f"metadata cannot be stored: {e}: use str, numbers, bools, None, bytes, lists, dicts") from e
    return metadata


def _translated(fn):
    """Public hub reads raise FitsketchError subclasses, never a storage- or kernel-layer class."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except E.FitsketchError:
            raise
        except Exception as e:
            new = E.translate(e)
            if new is e:
                raise
            raise new from None
    return wrapper


AUTO_LABEL_FREE = "adaptivity"   # what method="auto" scores entries without labels by
# Limits on what one request may ask for (issue 23): each is refused with LimitExceededError
# naming it, before anything is sized from the request.
MAX_K = 1_000_000          # k of search / explain / nearest, embedding_candidates
MAX_JSLSH_K = 64           # JS-LSH hashes per band (the hub default is 4)
MAX_JSLSH_L = 1024         # JS-LSH bands (the hub default is 32)
MAX_JSLSH_HASHES = 4096    # jslsh_k * jslsh_l: projections computed per histogram
MAX_QUERY_COLUMNS = 2048   # columns of a query: the MinHash stage compares each with every stored feature
MAX_FEATURE_PAIRS = 1 << 23  # (query column, stored feature) pairs one search verifies (~1 us each)


def _check_count(name: str, v, limit: int) -> int:
    if not isinstance(v, (int, np.integer)) or isinstance(v, (bool, np.bool_)) or v < 1:
        raise E.InvalidArgumentError(f"{name}={v!r} is not valid: expected a positive integer")
    if v > limit:
        raise E.LimitExceededError(f"{name}={v!r} is over the limit of {limit}: ask for at most {limit}")
    return int(v)


_VERIFY_CHUNK = 4096   # entries whose signatures are read and compared at a time
_SCORE_CHUNK = 1024    # candidates whose histograms are read and scored at a time (exact-js, l2, JS-LSH)


def _meta_match(md, where: dict) -> bool:
    """Whether stored metadata ``md`` equals ``where`` on each of its keys (False for a stored value
    that does not compare to a bool, e.g. an array stored by an older fitsketch)."""
    if not isinstance(md, dict):
        return False
    for wk, wv in where.items():
        v = md.get(wk)
        if isinstance(v, np.ndarray):
            return False
        try:
            if not bool(v == wv):
                return False
        except (ValueError, TypeError):
            return False
    return True


def _record_problem(rec) -> str | None:
    """Why an entry record is unusable by a search (None when it is consistent): what an older
    fitsketch accepted without checks and a scorer would meet as a raw error or a huge allocation."""
    from .sketch import MAX_ROWS

    if not isinstance(rec, dict):
        return "the entry record is not a map"
    feats, kinds = rec.get("features"), rec.get("kinds")
    if not (isinstance(feats, list) and isinstance(kinds, list) and len(feats) == len(kinds)):
        return "features / kinds are not lists of one length"
    n_rows, n_parts, m = rec.get("n_rows"), rec.get("n_partitions"), rec.get("partition_size")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (n_rows, n_parts, m)) or m < 1 \
            or not 0 <= n_rows <= MAX_ROWS or not -(-n_rows // m) <= n_parts <= n_rows:
        return f"n_rows={n_rows!r}, n_partitions={n_parts!r}, partition_size={m!r} are inconsistent"
    for key in ("sums", "counts"):
        if np.shape(rec.get(key)) != (len(feats),):
            return f"{key} has shape {np.shape(rec.get(key))}, not ({len(feats)},)"
    return None


def _width(data) -> int:
    """Columns of ``data`` when it says so cheaply (0 when it does not)."""
    if isinstance(data, dict):
        return len(data)
    cols = getattr(data, "columns", None)
    if cols is not None and hasattr(cols, "__len__"):
        return len(cols)
    shape = getattr(data, "shape", None)
    if isinstance(shape, tuple) and len(shape) == 2:
        return int(shape[1])
    return 0


def _check_query_columns(n: int) -> None:
    if n > MAX_QUERY_COLUMNS:
        raise E.LimitExceededError(
            f"the query has {n} columns, over the limit of {MAX_QUERY_COLUMNS} (each is compared with every "
            f"stored feature): query with the columns that matter, at most {MAX_QUERY_COLUMNS}")


def _live_ids(txn, ids: set, plan: Plan) -> set:
    """The ids of ``ids`` still in the hub in this read transaction's snapshot: the shortlist (or the
    embedding stage) was read in an earlier transaction, and entries removed since are skipped."""
    live = {key for key in ids if txn.exists("entries", key)}
    if len(live) < len(ids) and plan.stages:
        plan.stages[-1].detail += f"; {len(ids) - len(live)} removed since, skipped"
    return live


def _dup(entry_id: int, feat: int) -> bytes:
    return struct.pack(">II", entry_id, feat)


class Hub(EmbeddingsMixin, ProbeLogMixin):
    """A fitsketch hub. Open with :func:`fitsketch.open`; use as a context manager."""

    def __init__(self, path: str | os.PathLike, *, create: bool = True, config: SketchConfig | None = None,
                 readonly: bool = False, device: str = "auto", map_size: int = 1 << 26):
        if config is not None and not isinstance(config, SketchConfig):
            raise E.InvalidArgumentError(f"config must be a SketchConfig, got {type(config).__name__}")
        from .kernels._device import resolve_device

        path = _check_path(path)
        try:
            resolve_device(device)
            self._store = HubStore(path, create=create, readonly=readonly, map_size=map_size)
        except Exception as e:
            raise E.translate(e) from None
        self.path = str(path)
        self.device = device
        meta = self._store.meta()
        if "config" not in meta:
            if readonly:
                raise E.CorruptHubError(f"hub at {self.path} has no sketch configuration: open it writable once")
            cfg = config or SketchConfig()
            self._store.init_meta({"config": cfg.to_dict(), "next_id": 1, "generation": 0, "n_features": 0})
            meta = self._store.meta()
        self.config = SketchConfig.from_dict(meta["config"])
        if config is not None and config.sketch_key() != self.config.sketch_key():
            self.close()
            raise E.InvalidArgumentError(
                f"hub at {self.path} was created with sketch parameters {self.config.to_dict()}; "
                "open it without config= (or with the same one), or create a new hub")

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        store = getattr(self, "_store", None)
        if store is not None:
            store.close()
            self._store = None

    def __enter__(self) -> "Hub":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Hub({self.path!r}, entries={len(self) if self._store else 'closed'})"

    @property
    def store(self) -> HubStore:
        if self._store is None:
            raise E.InvalidArgumentError("this hub is closed: open it again with fitsketch.open(path)")
        return self._store

    # ------------------------------------------------------------------ reads
    @_translated
    def __len__(self) -> int:
        with self.store.read() as txn:
            return txn.count("names")

    @_translated
    def __contains__(self, name) -> bool:
        try:
            name = _check_name(name)
        except E.InvalidArgumentError:
            return False  # no entry can have such a name
        with self.store.read() as txn:
            return txn.exists("names", name.encode("utf-8"))

    @_translated
    def names(self) -> list[str]:
        with self.store.read() as txn:
            return [k.decode("utf-8") for k in txn.keys("names")]

    @_translated
    def get(self, name: str) -> Entry:
        name = _check_name(name)
        with self.store.read() as txn:
            raw = txn.get_raw("names", name.encode("utf-8"))
            if raw is None:
                raise E.EntryNotFoundError(f"no entry named {name!r} in hub {self.path}: see hub.names()")
            return self._entry(txn.get("entries", raw))

    @_translated
    def stats(self) -> dict:
        meta = self.store.meta()
        return {"path": self.path, "entries": len(self), "generation": meta.get("generation", 0),
                "features": meta.get("n_features", 0), "bytes": self.store.env_bytes(),
                "config": self.config.to_dict()}

    @staticmethod
    def _entry(rec: dict) -> Entry:
        if not isinstance(rec, dict) or rec.get("v") != ENTRY_FORMAT:
            raise E.CorruptHubError(f"entry record has format {rec.get('v') if isinstance(rec, dict) else rec!r}; "
                                    f"this fitsketch reads {ENTRY_FORMAT}")
        return Entry(rec["name"], rec["id"], rec["metadata"], list(rec["features"]), list(rec["kinds"]),
                     rec["n_rows"], rec["n_partitions"], rec["partition_size"], rec["created"])

    # ------------------------------------------------------------------ writes
    def add(self, name: str, data, *, metadata: dict | None = None, partition_size: int | None = None,
            feature_names=None, progress: bool = False, autoencoder: bool = False, labels=None,
            image_shape=None, ae_config=None, embedding=None, model=None, logit_labels=None,
            probe_set: str | None = None, validation=None, confusion=None, class_accuracy=None) -> Entry:
        """Sketch ``data`` and register it as entry ``name`` in one transaction.

        ``autoencoder=True`` also trains a SimEx autoencoder on the numeric columns (one per class
        when ``labels`` -- an array, or the name of a column, which is then not a feature -- are
        given; a convolutional one when ``image_shape=(C, H, W)``), stored with the entry.
        ``embedding`` (one row per data row) stores sample embeddings for ``hub.nearest``.
        ``model`` (a callable or torch module returning logits) is run on the hub's probe set and
        one ProbeLog descriptor per logit is stored, for ``search_logits`` / ``search_concept``.

        ``labels`` also store class-conditional sketches for ``method="accuracy"``
        (engine/accuracy.py), with the model's per-class performance from the first given of
        ``model=`` + ``validation=(data, labels)`` (its confusion matrix; on a hub without a probe
        set ``model=`` serves only this), ``confusion=`` or ``class_accuracy={label: recall}``, else
        a fallback from the class counts (flagged in the evidence).
        """
        _check_name(name)
        metadata = _check_metadata(metadata)
        if name in self:
            raise E.EntryExistsError(f"an entry named {name!r} exists: remove it first or choose another name")
        df, labels = _acc.with_labels(data, labels, feature_names)
        if labels is None and (validation is not None or confusion is not None or class_accuracy is not None):
            raise E.InvalidArgumentError("validation=, confusion= and class_accuracy= describe a model's per-class "
                                         "performance: pass the training labels= too")
        if embedding is not None:
            embedding = check_embedding(embedding, n_rows=len(df))
        probed = None
        if model is not None and (validation is None or probe_set is not None or self.probe_sets()):
            probed = (self.probe(model, probe_set), logit_labels, probe_set)
        elif model is None and logit_labels is not None:
            raise E.InvalidArgumentError("logit_labels describe a model's outputs: pass model= too")
        sketch = build_sketch(df, self.config, partition_size=partition_size, device=self.device, progress=progress)
        classes = None
        if labels is not None:
            classes = _acc.class_record(df, labels, sketch.names, sketch.kinds, self.config)
            classes["perf"] = _acc.performance(classes, model=model, validation=validation, logit_labels=logit_labels,
                                               confusion=confusion, class_accuracy=class_accuracy,
                                               columns=sketch.names, feature_names=feature_names)
        fleet = None
        if autoencoder:
            from . import simex

            cfg = ae_config or simex.AEConfig(seed=self.config.seed)
            cols = [n for n, k in zip(sketch.names, sketch.kinds) if k == "numeric"]
            if not cols:
                raise E.UnsupportedDataError("autoencoder=True needs numeric columns and the data has none")
            X_ae = simex.numeric_matrix(df, columns=cols)
            ae_labels = None if labels is None else np.asarray(labels.tolist())
            trained = simex.train_fleet(X_ae, ae_labels, image_shape=image_shape, config=cfg, feature_names=cols)
            fleet = [r.to_record() for r in trained]
        # coverage spaces (engine/coverage_spaces.py): codes of the sample embeddings and of the
        # autoencoders' latents, stored in the entry's "extra" record in the same transaction
        spaces = {}
        if embedding is not None or fleet is not None:
            from . import coverage_spaces as _spaces

            ckw = dict(seed=self.config.seed, bits=self.config.coverage_bits, tables=self.config.coverage_tables,
                       device=self.device)
            if embedding is not None:
                spaces["coverage_embedding"] = _spaces.embedding_record(embedding, **ckw)
            if fleet is not None:
                spaces["coverage_latent"] = _spaces.latent_record(X_ae, ae_labels, trained, **ckw)
        if classes is not None:
            spaces["classes"] = classes
        return self._add(name, sketch, metadata, fleet, embedding, probed, spaces)

    def add_sketch(self, name: str, sketch: Sketch, *, metadata: dict | None = None, model=None, validation=None,
                   logit_labels=None, confusion=None, class_accuracy=None) -> Entry:
        """Register a sketch built elsewhere (``fitsketch.sketch_data``) as entry ``name``. A sketch built
        with ``labels=`` takes the model's per-class performance as :meth:`add` does."""
        self._check_sketch(sketch)
        spaces = None
        if sketch.classes is not None:
            classes = _acc.check_record({**sketch.classes, "perf": None}, sketch.n_features)
            classes["perf"] = _acc.performance(classes, model=model, validation=validation, logit_labels=logit_labels,
                                               confusion=confusion, class_accuracy=class_accuracy,
                                               columns=sketch.names)
            spaces = {"classes": classes}
        elif any(v is not None for v in (validation, confusion, class_accuracy)):
            raise E.InvalidArgumentError("validation=, confusion= and class_accuracy= describe a model's per-class "
                                         "performance: build the sketch with fitsketch.sketch_data(data, labels=...)")
        return self._add(name, sketch, _check_metadata(metadata), None, spaces=spaces)

    def add_sketches(self, items, *, batch: int = 1000, progress: bool = False) -> int:
        """Register many prebuilt sketches: ``items`` yields ``(name, sketch)`` or ``(name, sketch,
        metadata)``. Entries are written ``batch`` to a transaction (each entry whole, a batch all or
        nothing), which amortizes the commit's sync (~5 ms) over the batch. Every item is checked
        before anything is written (types, parameters, names unique and not in the hub), so bad input
        leaves the hub unchanged. Returns the number of entries added."""
        items = list(items)
        checked, seen = [], set()
        for i, it in enumerate(items):
            if not isinstance(it, (tuple, list)) or len(it) not in (2, 3):
                raise E.InvalidArgumentError(f"item {i} is {type(it).__name__}: give (name, sketch) or "
                                             "(name, sketch, metadata) tuples")
            name, sk = _check_name(it[0]), it[1]
            if name in seen:
                raise E.EntryExistsError(f"name {name!r} appears twice in the items: names are unique")
            seen.add(name)
            self._check_sketch(sk)
            md = _check_metadata(it[2] if len(it) == 3 else None)   # also: storable by msgpack
            checked.append((name, sk, md))
        if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
            raise E.InvalidArgumentError(f"batch={batch!r} is not valid: expected a positive integer")
        with self.store.read() as txn:
            taken = [n for n in seen if txn.exists("names", n.encode("utf-8"))]
        if taken:
            raise E.EntryExistsError(f"entries named {sorted(taken)[:5]} exist: remove them first or choose other names")
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(checked), desc="add", unit="entry")
        try:
            for lo in range(0, len(checked), batch):
                chunk = [self._writer(name, sk, md, None) for name, sk, md in checked[lo:lo + batch]]
                self._transact(lambda txn, chunk=chunk: [w(txn) for w in chunk])
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
        return len(checked)

    def _check_sketch(self, sketch) -> None:
        if not isinstance(sketch, Sketch):
            raise E.InvalidArgumentError(f"sketch must be a fitsketch Sketch, got {type(sketch).__name__}")
        if tuple(sketch.config_key) != self.config.sketch_key():
            raise E.InvalidArgumentError(
                "the sketch was built with other parameters than this hub's: build it with hub.config")
        check_sketch(sketch, self.config)   # every array's shape and range: no entry can break a search

    def _add(self, name: str, sketch: Sketch, metadata: dict, fleet: list | None, embedding=None,
             probed=None, spaces: dict | None = None) -> Entry:
        return self._transact(self._writer(name, sketch, metadata, fleet, embedding, probed, spaces))

    def _writer(self, name: str, sketch: Sketch, metadata: dict, fleet: list | None, embedding=None,
                probed=None, spaces: dict | None = None):
        """The function that writes entry ``name`` inside a write transaction (all checks done first)."""
        name = _check_name(name)
        metadata = _check_metadata(metadata)
        self._check_sketch(sketch)
        bands = feature_band_keys(sketch.signatures, self.config.lsh_k, self.config.lsh_l)
        nonempty = np.nonzero(sketch.signatures[:, 0] != np.uint32(0xFFFFFFFF))[0]
        prof, prof_keys = _profiles.record(sketch.hist, sketch.names, sketch.n_partitions, self.config, self.device)
        screen_rec = _screen.record(sketch.hist, sketch.names, sketch.sums, sketch.counts, self.config.seed)
        packed_hist = pack_hist(sketch.hist, sketch.n_partitions, sketch.n_features)
        created = time.time()
        if sketch.classes is not None and not (spaces and "classes" in spaces):   # add_sketches: no performance
            classes = _acc.check_record({**sketch.classes, "perf": None}, sketch.n_features)
            spaces = {**(spaces or {}), "classes": {**classes, "perf": _acc.performance(classes, columns=sketch.names)}}

        def write(txn):
            key = name.encode("utf-8")
            if txn.exists("names", key):
                raise E.EntryExistsError(f"an entry named {name!r} exists: remove it first or choose another name")
            eid = int(txn.get("meta", b"next_id"))
            rec = {"v": ENTRY_FORMAT, "id": eid, "name": name, "metadata": metadata,
                   "features": sketch.names, "kinds": sketch.kinds, "n_rows": sketch.n_rows,
                   "n_partitions": sketch.n_partitions, "partition_size": sketch.partition_size,
                   "sums": sketch.sums, "counts": sketch.counts, "created": created}
            if spaces and "classes" in spaces:
                rec["labelled"] = True   # method="auto" reads class records only of these
            k = u64(eid)
            txn.put("entries", k, rec)
            txn.put_raw("names", key, k)
            txn.put("signatures", k, {"v": ENTRY_FORMAT, "sig": sketch.signatures})
            txn.put("histograms", k, packed_hist)
            if sketch.coverage is not None or spaces:  # spaces: coverage_spaces records, from add
                cov = {} if sketch.coverage is None else {"coverage": sketch.coverage}
                txn.put("extra", k, {"v": ENTRY_FORMAT, **cov, **(spaces or {})})
            if spaces and "classes" in spaces:
                _count_label_kind(txn, spaces["classes"]["labels"], +1)
            if fleet is not None:
                txn.put("weights", _AE_PREFIX + k, {"v": ENTRY_FORMAT, "simex": fleet})
            if embedding is not None:
                write_embeddings(txn, eid, embedding, n_rows=sketch.n_rows)
            if probed is not None:
                responses, labels, pset = probed
                write_model_descriptors(txn, eid, name, responses, labels, pset)
            txn.put("extra", _profiles.key(eid), prof)
            txn.put("extra", _profiles.keys_key(eid), prof_keys)
            txn.put("extra", _screen.key(eid), screen_rec)
            sel = bands[nonempty]                                       # (features, L) int64
            txn.put_dups("bands", sel.reshape(-1).view(np.uint64),
                         np.repeat((np.uint64(eid) << np.uint64(32)) | nonempty.astype(np.uint64), sel.shape[1]))
            txn.put("meta", b"next_id", eid + 1)
            txn.put("meta", b"generation", int(txn.get("meta", b"generation")) + 1)
            txn.put("meta", b"n_features", int(txn.get("meta", b"n_features")) + sketch.n_features)
            return self._entry(rec)

        return write

    def remove(self, name: str) -> None:
        """Delete entry ``name`` and all its sketches in one transaction."""
        name = _check_name(name)
        cfg = self.config

        def write(txn):
            key = name.encode("utf-8")
            k = txn.get_raw("names", key)
            if k is None:
                raise E.EntryNotFoundError(f"no entry named {name!r} in hub {self.path}: see hub.names()")
            eid = from_u64(k)
            rec = txn.get("entries", k)
            sig = txn.get("signatures", k)["sig"]
            bands = feature_band_keys(sig, cfg.lsh_k, cfg.lsh_l)
            for f in range(sig.shape[0]):
                if sig[f, 0] == np.uint32(0xFFFFFFFF):
                    continue
                v = _dup(eid, f)
                for bk in bands[f]:
                    txn.delete_dup("bands", u64(int(bk) & 0xFFFFFFFFFFFFFFFF), v)
            classes = (txn.get("extra", k) or {}).get("classes")
            if classes is not None:
                _count_label_kind(txn, classes["labels"], -1)
            for db in ("entries", "signatures", "histograms", "extra"):
                txn.delete(db, k)
            txn.delete("extra", _profiles.key(eid))
            txn.delete("extra", _profiles.keys_key(eid))
            txn.delete("extra", _screen.key(eid))
            txn.delete("weights", _AE_PREFIX + k)
            delete_embeddings(txn, eid)
            delete_model_descriptors(txn, eid)
            txn.delete("names", key)
            txn.put("meta", b"generation", int(txn.get("meta", b"generation")) + 1)
            txn.put("meta", b"n_features", int(txn.get("meta", b"n_features")) - len(rec["features"]))

        self._transact(write)

    def compact(self) -> dict:
        """Rewrite the hub's file to its live size (removed entries' pages are otherwise kept, for
        reuse, and the file never shrinks): a compacting copy, then an atomic swap, under the
        writer lock. Needs the hub to itself: with another process on it (``fitsketch serve``, a
        reader) it raises HubBusyError and changes nothing. Returns {"before", "after"} in bytes."""
        try:
            before, after = self.store.compact()
        except E.FitsketchError:
            raise
        except Exception as e:
            raise E.translate(e) from None
        return {"before": before, "after": after}

    def _transact(self, fn):
        try:
            return self.store.transact(fn)
        except E.FitsketchError:
            raise
        except Exception as e:
            raise E.translate(e) from None

    # ------------------------------------------------------------------ search
    @_translated
    def search(self, data, *, k: int = 10, method: str = "auto", where: dict | None = None,
               feature_names=None, embedding=None, embedding_candidates: int = 100, **overrides) -> list[Match]:
        """Rank entries by how well their data fits ``data``; see DESIGN.md for the methods.

        ``embedding`` (a vector, or sample embeddings whose mean is taken) adds a FAISS candidate
        stage: only the ``embedding_candidates`` entries whose dataset-level embedding is nearest
        go on to the MinHash overlap stage.
        """
        matches, _ = self._search(data, k=k, method=method, where=where, feature_names=feature_names,
                                  overrides=overrides, embedding=embedding, n_emb=embedding_candidates)
        return matches

    @_translated
    def explain(self, data, *, k: int = 10, method: str = "auto", where: dict | None = None,
                feature_names=None, embedding=None, embedding_candidates: int = 100, **overrides) -> Plan:
        """Run the query and return its plan with estimated and actual counts and times per stage."""
        _, plan = self._search(data, k=k, method=method, where=where, feature_names=feature_names,
                               overrides=overrides, embedding=embedding, n_emb=embedding_candidates)
        return plan

    @_translated
    def class_pool(self, data, *, where: dict | None = None, feature_names=None, **overrides) -> dict:
        """This hub's share of what ``method="accuracy"`` pools for ``data``: the labelled candidates'
        class-conditional counts per (class, query column, bucket). A sharded hub sums the shards'
        pools (``accuracy.merge_pools``) and passes the sum back as ``search(..., class_pool=)``, so
        every shard estimates the query's class mixture from all entries, as one hub would."""
        if not self._has_labelled():   # no labelled entry: nothing to pool
            return _acc.merge_pools([])
        try:
            pl, _ = self._search(data, k=1, method="accuracy", where=where, feature_names=feature_names,
                                 overrides={**overrides, "class_pool": "return"})
        except E.NoSharedFeaturesError:
            pl = []
        if not isinstance(pl, dict):   # no candidate: an empty pool
            pl = _acc.merge_pools([])
        return pl

    def _query_config(self, method, k, where, overrides) -> SketchConfig:
        if method not in METHODS:
            raise E.UnknownMethodError(f"method={method!r} is not a search method: use one of {', '.join(METHODS)}")
        _check_count("k", k, MAX_K)
        if where is not None and not isinstance(where, dict):
            raise E.InvalidArgumentError(f"where must be a dict of metadata equalities, got {type(where).__name__}")
        if where:
            _check_metadata(where)     # plain values: equality with stored metadata is a bool
        aliases = {"loss": "simex_loss", "normalize": "simex_normalize"}
        overrides = {aliases.get(k, k): v for k, v in overrides.items()}
        bad = sorted(set(overrides) - set(QUERY_PARAMS))
        if bad:
            raise E.InvalidArgumentError(f"unknown search parameters {bad}: per-query parameters are {list(QUERY_PARAMS)}")
        cfg = self.config.replace(**overrides)
        if cfg.jslsh_k > MAX_JSLSH_K or cfg.jslsh_l > MAX_JSLSH_L or cfg.jslsh_k * cfg.jslsh_l > MAX_JSLSH_HASHES:
            raise E.LimitExceededError(
                f"jslsh_k={cfg.jslsh_k}, jslsh_l={cfg.jslsh_l} are over the limits: jslsh_k <= {MAX_JSLSH_K}, "
                f"jslsh_l <= {MAX_JSLSH_L} and jslsh_k * jslsh_l <= {MAX_JSLSH_HASHES} (the hub's are "
                f"{self.config.jslsh_k} and {self.config.jslsh_l})")
        return cfg

    def _search(self, data, *, k, method, where, feature_names, overrides, embedding=None, n_emb=100):
        overrides = dict(overrides)
        mixture = overrides.pop("mixture", None)   # method="accuracy": the query's class mixture, when known
        class_pool = overrides.pop("class_pool", None)   # method="accuracy" across shards (engine/sharded.py)
        if class_pool is not None and class_pool != "return":
            class_pool = _acc.check_pool(class_pool)
        cfg = self._query_config(method, k, where, overrides)
        if embedding is not None:
            n_emb = _check_count("embedding_candidates", n_emb, MAX_K)
        plan = Plan(method, k)
        _check_query_columns(_width(data))      # before anything is built from a wide input
        with plan.run(Stage("sketch", "quantize + MinHash + partition histograms of the query")) as st:
            if isinstance(data, Sketch):
                _check_query_columns(data.n_features)
                if tuple(data.config_key) != self.config.sketch_key():
                    raise E.InvalidArgumentError(
                        "the query sketch was built with other parameters than this hub's: build it with hub.config")
                # a sketch carries no rows, wherever it was built: coverage and simex fall back or refuse
                target = dataclasses.replace(data, rows=None, row_owner=None, frame=None)
            else:
                frame = to_frame(data, feature_names)
                _check_query_columns(frame.shape[1])
                target = build_sketch(frame, self.config, device=self.device, partition_size=query_partition_size(
                    len(frame), self.config.partition_size, cfg.query_min_partitions, cfg.query_partition_rows),
                    skip_empty=True)
                target.frame = frame
                if target.left_out:
                    st.detail += f"; left out query columns without values: {target.left_out}"
            st.actual = target.n_partitions
        allowed = None
        if embedding is not None:
            q = np.asarray(embedding, dtype=np.float64)
            q = q.mean(axis=0) if q.ndim == 2 else q
            with plan.run(Stage("embedding", f"FAISS nearest dataset-level embeddings, top {n_emb}",
                                estimated=n_emb)) as st:
                near = self.nearest(q, n_emb, level="entry")
                allowed = {u64(int(m.evidence["entry_id"])) for m in near}
                st.actual = len(allowed)
        if allowed is None:
            allowed = self._shortlist(target, cfg, self._screened_as(method), plan, where, k)
        with self.store.read() as txn:
            n_stored = int(txn.get("meta", b"n_features") or 0)
            n_entries = txn.count("names")
            if n_entries == 0:
                return [], plan
            if allowed is not None:   # only the shortlisted entries' features are compared
                allowed = _live_ids(txn, allowed, plan)
                n_stored = n_stored * len(allowed) // max(n_entries, 1)
            mode, reason, cost = choose_candidate_stage(n_stored, target.n_features, cfg.lsh_l)
            cands = self._candidates(txn, target, cfg, mode, reason, where, allowed, plan,
                                     n_entries if allowed is None else len(allowed))
            if not cands:
                raise E.NoSharedFeaturesError(
                    f"no entry shares features with the query (overlap > {cfg.overlap_threshold} with "
                    f"feature similarity >= {cfg.feature_threshold} by {cfg.match}"
                    + (f", metadata {where}" if where else "") + (", shortlist" if allowed else "")
                    + "): lower feature_threshold / overlap_threshold, or check the columns")
            with plan.run(Stage("score", f"{method} over aligned features", estimated=len(cands))) as st:
                if class_pool == "return":   # Hub.class_pool: the pooled class counts, not matches
                    return self._score(txn, target, cands, cfg, method, class_pool=class_pool), plan
                scored, damaged = self._score_healthy(txn, target, cands, cfg, method, embedding, mixture=mixture,
                                                      class_pool=class_pool)
                if damaged:
                    st.detail += (f"; skipped {len(damaged)} damaged entr{'y' if len(damaged) == 1 else 'ies'} "
                                  f"({'; '.join(damaged[:5])}): remove and re-add them")
                st.actual = len(scored)
                picked = sorted({m.evidence["auto"] for m in scored if "auto" in m.evidence})
                if picked:
                    st.detail += "; auto: " + " | ".join(picked)
                fell = next((m.evidence["fallback"] for m in scored if "fallback" in m.evidence), None)
                if fell:
                    st.detail += f"; fell back to adaptivity: {fell}"
        with plan.run(Stage("rerank", f"sort by score, cut to k={k}", estimated=min(k, len(scored)))) as st:
            scored.sort(key=lambda m: (m.evidence.get("_group", 0), -m.score, -m.evidence.get("_tiebreak", 0.0),
                                       -m.overlap, m.name))
            out = scored[:k]
            for m in out:
                m.evidence.pop("_tiebreak", None)
                m.evidence.pop("_group", None)
                self._features(m)
            st.actual = len(out)
        return out, plan

    def _score_healthy(self, txn, target, cands, cfg, method, embedding, **kw):
        """``(matches, damaged)``: the candidates scored together, less those whose stored records are
        damaged (entries written before records were checked on the way in, issue 23): a cheap
        check of each entry record first; if scoring still fails on a lower-layer error, each
        candidate is scored alone to find the damaged ones and the rest are scored together."""
        damaged, ok = [], []
        for rec, al in cands:
            why = _record_problem(rec)
            if why:
                damaged.append(f"{rec.get('name')!r}: {why}" if isinstance(rec, dict) else why)
            else:
                ok.append((rec, al))
        if not ok:
            if damaged:
                raise E.DamagedRecordError(f"every candidate entry is damaged ({'; '.join(damaged[:5])}): "
                                           "remove and re-add them")
            return [], damaged
        try:
            return self._score(txn, target, ok, cfg, method, embedding=embedding, **kw), damaged
        except E.FitsketchError as e:
            if not isinstance(e, E.CorruptHubError):
                raise
        except Exception:  # noqa: BLE001 - a damaged record met by a scorer: found below
            pass
        healthy = []
        for rec, al in ok:
            try:
                self._score(txn, target, [(rec, al)], cfg, method, embedding=embedding, **kw)
            except E.FitsketchError as e:
                if not isinstance(e, E.CorruptHubError):
                    raise
                damaged.append(f"{rec['name']!r}: {e}")
            except Exception as e:  # noqa: BLE001
                damaged.append(f"{rec['name']!r}: {type(e).__name__}: {e}")
            else:
                healthy.append((rec, al))
        log.warning("search skipped damaged entries: %s", "; ".join(damaged[:5]))
        if not healthy:
            raise E.DamagedRecordError(f"every candidate entry is damaged ({'; '.join(damaged[:5])}): "
                                       "remove and re-add them")
        return self._score(txn, target, healthy, cfg, method, embedding=embedding, **kw), damaged

    def _profile_index(self) -> _profiles.ProfileIndex:
        idx = self.__dict__.get("_profile_idx")
        if idx is None:
            idx = self.__dict__.setdefault("_profile_idx", _profiles.ProfileIndex())
        return idx

    def _synced_profiles(self, *, build_index: bool = False) -> _profiles.ProfileIndex:
        """The in-memory profile index, brought to the hub's current generation."""
        idx = self._profile_index()
        with self.store.read() as txn:
            gen = int(txn.get("meta", b"generation") or 0)

            def missing(eid):
                rec, hist = txn.get("entries", u64(eid)), txn.get("histograms", u64(eid))
                hist = None if hist is None else unpack_hist(hist)
                return None if rec is None or hist is None else _profiles.record(
                    hist, rec["features"], rec["n_partitions"], self.config, self.device)[0]

            idx.sync(txn, gen, missing)
        if build_index:
            idx.build()
        return idx

    def _synced_screen(self) -> _screen.ScreenIndex:
        """The in-memory screen index (engine/screen.py), brought to the hub's current generation;
        entries stored without a screen record (older hubs) are computed from their histograms."""
        idx = self.__dict__.get("_screen_idx")
        if idx is None:
            idx = self.__dict__.setdefault("_screen_idx", _screen.ScreenIndex(int(self.config.jslsh_l),
                                                                              self.config.hist_accuracy))
        with self.store.read() as txn:
            gen = int(txn.get("meta", b"generation") or 0)

            def missing(eid):
                rec, hist = txn.get("entries", u64(eid)), txn.get("histograms", u64(eid))
                if rec is None or hist is None:
                    return None
                hist = unpack_hist(hist)
                keys = txn.get("extra", _profiles.keys_key(eid)) or _profiles.record(
                    hist, rec["features"], rec["n_partitions"], self.config, self.device)[1]
                return _screen.record(hist, rec["features"], rec["sums"], rec["counts"], self.config.seed), keys

            idx.sync(txn, gen, missing)
        return idx

    @_translated
    def warm(self) -> int:
        """Load what a first search would otherwise load: every entry's screen data and profile and
        the FAISS index over the profiles (14 s at 200k entries on 2 cores for the profiles, linear
        in the entries; bench/SUMMARY.md). Returns the number of entries in memory.

        A search loads whatever is missing on its own; call this after opening a big hub so the
        first query is not the slow one. ``fitsketch serve`` does it in the background as it starts."""
        self._synced_screen()
        return len(self._synced_profiles(build_index=True))

    def _screened_as(self, method: str) -> str:
        """The method whose shortlist rule applies: ``auto`` on a hub without labelled entries
        scores (and so is screened) exactly as the label-free default."""
        if method != "auto":
            return method
        return "accuracy" if self._has_labelled() else AUTO_LABEL_FREE

    def _has_labelled(self) -> bool:
        """Whether the hub holds an entry registered with labels (the label-kind counts in meta)."""
        with self.store.read() as txn:
            return any((txn.get("meta", b"label_kinds") or {}).values())

    def _shortlist(self, target: Sketch, cfg: SketchConfig, method: str, plan: Plan, where=None,
                   k: int = 10) -> set | None:
        """Ids (u64 keys) of the entries the candidate stage keeps, or None when the planner scores
        every entry (planner.use_shortlist). ``cfg.shortlist_screen``: "exact" screens every entry
        with the method's own score (engine/screen.py, planner.shortlist_rule), "profile" keeps the
        ``cfg.shortlist`` nearest random-projection profiles (engine/profiles.py)."""
        n_entries = len(self)
        use, why = use_shortlist(n_entries, cfg.shortlist, method, filtered=bool(where))
        if not use:
            return None
        seed = self.config.seed
        used = sorted({int(f) for f in np.asarray(target.hist["feat"], dtype=np.int64)})
        t_keys = _profiles.name_keys([target.names[f] for f in used], seed)
        if cfg.shortlist_screen == "profile":
            with plan.run(Stage("shortlist", f"entry profiles nearest to the query's, top {cfg.shortlist} by "
                                f"inner product ({why}); recall not held on similar entries: "
                                "shortlist_screen='exact' holds it", estimated=cfg.shortlist)) as st:
                idx = self._synced_profiles()
                if not idx.shares_names(t_keys):
                    st.detail += "; skipped: no stored profile has a feature named like the query's, every entry is scored"
                    st.actual = n_entries
                    return None
                ids, _ = idx.top(_profiles.profile(target.hist, target.names, seed), cfg.shortlist)
                st.actual = len(ids)
            return {u64(int(i)) for i in ids}
        rule = shortlist_rule(method)
        with plan.run(Stage("shortlist", f"screen: {rule.screen} of every entry from stored dataset-level "
                            f"histograms ({why})", estimated=cfg.shortlist)) as st:
            idx = self._synced_screen()
            if not idx.shares_names(t_keys):
                st.detail += "; skipped: no stored entry has a feature named like the query's, every entry is scored"
                st.actual = n_entries
                return None
            own = None
            small = target.n_rows < self.config.partition_size * cfg.query_min_partitions   # scored with more bands
            if rule.screen in ("js", "adaptivity") and not small and [float(cfg.jslsh_r), int(cfg.jslsh_k),
                                                                      int(cfg.jslsh_l)] == \
                    [float(self.config.jslsh_r), int(self.config.jslsh_k), int(self.config.jslsh_l)]:
                kw = dict(seed=seed, r=cfg.jslsh_r, k=cfg.jslsh_k, l=cfg.jslsh_l, device=self.device)
                own = (own_keys(target.hist, target.n_features, target.n_partitions, per_dataset=True, **kw),
                       own_keys(target.hist, target.n_features, target.n_partitions, per_dataset=False, **kw)
                       if rule.screen == "adaptivity" else None)
            scr = idx.scores(target, rule.screen, seed=seed, t_keys=own)
            ids, info = _screen.choose(scr, rule, cfg.shortlist, k, SHORTLIST_MARGIN_CAP * cfg.shortlist)
            st.actual = len(ids)
            text, st.recall = _screen.describe(info, rule, method, cfg.shortlist, k, n_entries)
            st.detail += text
        return {u64(int(i)) for i in ids}

    def _candidates(self, txn, target: Sketch, cfg: SketchConfig, mode: str, reason: str, where: dict | None,
                    allowed: set | None, plan: Plan, n_in: int):
        """[(entry record, Alignment)] of the entries whose overlap with the target passes t1.

        Stage order by cost (planner.order_filter_first): a metadata filter reads one small record
        per entry, so it runs before an exact signature scan (which compares every stored feature)
        and after an LSH lookup (which already cut the entries to those colliding in some band).
        """
        recs: dict[bytes, dict] = {}

        def run_filter(keys, estimated):
            with plan.run(Stage("filter", f"metadata where {where}", estimated=estimated)) as st:
                keep = []
                for key in keys:
                    rec = recs.get(key) or txn.get("entries", key)
                    if rec is not None and _meta_match(rec.get("metadata"), where):
                        recs[key] = rec
                        keep.append(key)
                st.actual = len(keep)
            return keep

        ids = None if allowed is None else sorted(allowed)
        if where and order_filter_first(mode):
            ids = run_filter(ids if ids is not None else list(txn.keys("entries")), n_in)
        with plan.run(Stage("candidates", f"MinHash overlap by {mode}: {reason}; "
                            f"t2={cfg.feature_threshold} ({cfg.match}), t1={cfg.overlap_threshold}",
                            estimated=n_in if ids is None else len(ids))) as st:
            if mode == "scan":
                keys = list(txn.keys("signatures")) if ids is None else list(ids)
            else:
                bands = feature_band_keys(target.signatures, cfg.lsh_k, cfg.lsh_l)
                lookups = [u64(int(b) & 0xFFFFFFFFFFFFFFFF) for b in bands.reshape(-1)]
                hits = set()
                for dups in txn.get_dups_many("bands", lookups):
                    for v in dups:
                        hits.add(u64(struct.unpack(">II", v)[0]))
                if ids is not None:
                    hits &= set(ids)
                keys = sorted(hits)
            out = []
            pairs = 0
            for lo in range(0, len(keys), _VERIFY_CHUNK):   # bounded memory however many entries are verified
                chunk = keys[lo:lo + _VERIFY_CHUNK]
                sigs = [txn.get("signatures", key)["sig"] for key in chunk]
                pairs += target.n_features * sum(sg.shape[0] for sg in sigs)
                if pairs > MAX_FEATURE_PAIRS:
                    raise E.LimitExceededError(
                        f"the query's {target.n_features} columns would be compared with over "
                        f"{pairs // max(target.n_features, 1)} stored features, over the limit of {MAX_FEATURE_PAIRS} "
                        f"(query column, stored feature) pairs: query with fewer columns, or narrow the entries "
                        f"with where=")
                for key, rec, al in self._verify(txn, target, cfg, chunk, sigs, recs):
                    recs[key] = rec
                    out.append((key, al))
            st.actual = len(out)
        if where and not order_filter_first(mode):
            kept = set(run_filter([key for key, _ in out], len(out)))
            out = [(key, al) for key, al in out if key in kept]
        return [(recs[key], al) for key, al in out]

    @staticmethod
    def _verify(txn, target: Sketch, cfg: SketchConfig, keys: list, sigs: list, recs: dict):
        """(key, entry record, Alignment) of the entries among ``keys`` whose overlap passes t1."""
        # entries with the target's columns in its order align by the identity (minhash.
        # align_from_similarity): only the T same-name similarities are needed
        rec_of = [recs.get(key) or txn.get("entries", key) for key in keys]
        same = [i for i, rec in enumerate(rec_of) if rec["features"] == target.names]
        other = [i for i, rec in enumerate(rec_of) if rec["features"] != target.names]
        als = {}
        if same:
            diag = row_similarity(target.signatures, np.stack([sigs[i] for i in same]), cfg.match)
            for i, d in zip(same, diag):
                als[i] = Alignment([(j, j, float(d[j])) for j in range(len(d))], len(d))
        if other:
            sim = similarity(target.signatures, np.concatenate([sigs[i] for i in other]), cfg.match)
            t_num = np.array([k == "numeric" for k in target.kinds], dtype=bool)
            t_dists = None
            named = {n for n in target.names if not is_generic(n)}
            lo = 0
            for i in other:
                hi = lo + sigs[i].shape[0]
                block = sim[:, lo:hi]
                lo = hi
                s_names = rec_of[i]["features"]
                # numeric pairs not matched by name: sharing buckets is not enough, the value
                # distributions must overlap too (minhash.distribution_overlap)
                s_num = np.array([k == "numeric" for k in rec_of[i]["kinds"]], dtype=bool)
                by_name = np.zeros(block.shape, dtype=bool)
                s_index = {n: j for j, n in enumerate(s_names)}
                for a, t in enumerate(target.names):
                    if t in named and t in s_index:
                        by_name[a, s_index[t]] = True
                need = (block >= cfg.feature_threshold) & t_num[:, None] & s_num[None, :] & ~by_name
                if need.any():
                    if t_dists is None:
                        t_dists = feature_dists(target.totals())
                    s_dists = feature_dists(hist_totals(unpack_hist(txn.get("histograms", keys[i]))))
                    block = block.copy()
                    for a, b in zip(*np.nonzero(need)):
                        block[a, b] = min(block[a, b], distribution_overlap(t_dists.get(int(a)), s_dists.get(int(b))))
                if (block >= cfg.feature_threshold).any() or set(s_names) & named:
                    als[i] = align_from_similarity(target.names, s_names, block, cfg.feature_threshold)
        for i, key in enumerate(keys):
            al = als.get(i)
            if al is not None and al.pairs and al.overlap > cfg.overlap_threshold:
                yield key, rec_of[i], al

    def _score(self, txn, target: Sketch, cands, cfg: SketchConfig, method: str, embedding=None,
               mixture=None, class_pool=None) -> list[Match]:
        if method in ("auto", "accuracy"):
            return self._score_accuracy(txn, target, cands, cfg, auto=method == "auto", mixture=mixture,
                                        class_pool=class_pool)
        if method == "coverage":  # these two never read the partition histograms
            return self._score_coverage(txn, target, cands, cfg, embedding)
        if method == "simex":
            return self._score_simex(txn, target, cands, cfg)
        n_t = target.n_features
        t_map = np.arange(n_t, dtype=np.int64)
        per_dataset = method != "adaptivity"
        t_dist = aligned_distributions(target.hist, t_map, n_t, per_dataset=per_dataset,
                                       n_partitions=target.n_partitions)
        results = []
        if method in ("adaptivity", "js"):
            # a small query (cut into partitions sized from it): more, wider bands unless it set its own
            small = target.n_rows < self.config.partition_size * cfg.query_min_partitions
            if small and (cfg.jslsh_l, cfg.jslsh_r) == (self.config.jslsh_l, self.config.jslsh_r):
                cfg = cfg.replace(jslsh_l=cfg.small_query_jslsh_l, jslsh_r=cfg.small_query_jslsh_r)
            scores = self._jslsh_scores(txn, target, cands, cfg, method, t_dist)
            if method == "adaptivity":
                n_p = target.n_partitions
                lsh = [graded_adaptivity(matched, agree, n_p) for _, agree, matched in scores]
                step = 1.0 / (cfg.jslsh_l * n_p * (n_p + 1))   # the scores are multiples of it
            else:
                lsh = [score for score, _ in scores]
                step = 1.0 / cfg.jslsh_l
            # a small query grades every entry by closeness under the LSH step; a larger one only the
            # entries at 0 (the others keep their stored-key fast path)
            close = self._closeness(txn, target, cands, lsh, every=small)
            for i, ((rec, al), sc) in enumerate(zip(cands, scores)):
                if method == "adaptivity":
                    ev = {"adaptivity": sc[0], "matched_partitions": sc[2], "target_partitions": target.n_partitions,
                          "target_partition_rows": target.partition_size, "source_partitions": rec["n_partitions"],
                          "band_agreement": sc[1]}
                else:
                    ev = {"bands_collided": sc[1]}
                ev.update(bands=cfg.jslsh_l, bucket_width=cfg.jslsh_r)
                score = lsh[i]
                if i in close:   # 1 - exact JS, under the LSH step: no ties, no 0 on small queries
                    ev["closeness"] = close[i]
                    score += below_one_step(close[i], step)
                results.append(self._match(rec, al, target, score, method, ev))
            return results
        for lo in range(0, len(cands), _SCORE_CHUNK):   # bounded memory: the dense matrix is per chunk
            chunk = cands[lo:lo + _SCORE_CHUNK]
            s_dists = [self._source_dist(txn, rec, al, n_t, per_dataset) for rec, al in chunk]
            if method == "exact-js":
                js = exact_js_scores([t_dist] + s_dists)
                for (rec, al), v in zip(chunk, js):
                    results.append(self._match(rec, al, target, 1.0 - float(v), method, {"js_divergence": float(v)}))
            elif method == "l2":
                for (rec, al), sd in zip(chunk, s_dists):
                    d, ev = _l2(target, t_dist, rec, al, sd, self.config.hist_accuracy)
                    results.append(self._match(rec, al, target, -d, method, {"l2_distance": d, **ev}))
        return results

    def _closeness(self, txn, target: Sketch, cands, lsh: list[float], every: bool = False) -> dict[int, float]:
        """{candidate index: 1 - exact JS divergence of the dataset-level distributions} for every
        candidate, or (``every=False``) for those whose LSH score is 0 (only those histograms are
        read). It never depends on the other candidates, so shards merge to the one hub's order."""
        need = [i for i, v in enumerate(lsh) if every or v == 0.0]
        if not need:
            return {}
        n_t = target.n_features
        t_dist = aligned_distributions(target.hist, np.arange(n_t, dtype=np.int64), n_t, per_dataset=True)
        out = {}
        for lo in range(0, len(need), _SCORE_CHUNK):
            part = need[lo:lo + _SCORE_CHUNK]
            js = exact_js_scores([t_dist] + [self._source_dist(txn, *cands[i], n_t, True) for i in part])
            out.update({i: 1.0 - float(v) for i, v in zip(part, js)})
        return out

    @staticmethod
    def _source_dist(txn, rec: dict, al: Alignment, n_t: int, per_dataset: bool):
        fmap = np.full(len(rec["features"]), -1, dtype=np.int64)
        for tj, sf, _ in al.pairs:
            fmap[sf] = tj
        hist = unpack_hist(txn.get("histograms", u64(rec["id"])))
        return aligned_distributions(hist, fmap, n_t, per_dataset=per_dataset, n_partitions=rec["n_partitions"])

    def _jslsh_scores(self, txn, target: Sketch, cands, cfg: SketchConfig, method: str, t_dist) -> list:
        """adaptivity_scores / js_lsh_scores of every candidate, in order.

        A candidate whose alignment is the identity over all of its and the target's features is
        compared through the band keys stored with it (engine/profiles.py, ``own_keys``) when the
        query uses the hub's JS-LSH parameters: its histograms are not read or projected. The
        others are projected together with the target at query time (one batched product).
        """
        per_dataset = method != "adaptivity"
        n_t = target.n_features
        field = "jk_data" if per_dataset else "jk_part"
        params = [float(cfg.jslsh_r), int(cfg.jslsh_k), int(cfg.jslsh_l)]
        stored_ok = params == [float(self.config.jslsh_r), int(self.config.jslsh_k), int(self.config.jslsh_l)]
        stored, slow = {}, []
        for i, (rec, al) in enumerate(cands):
            if stored_ok and len(rec["features"]) == n_t == len(al.pairs) and all(t == s for t, s, _ in al.pairs):
                prof = txn.get("extra", _profiles.keys_key(rec["id"]))
                if prof is not None and prof.get("jk_params") == params and field in prof:
                    stored[i] = np.asarray(prof[field])
                    continue
            slow.append(i)
        score = adaptivity_scores if method == "adaptivity" else js_lsh_scores
        out = [None] * len(cands)
        if stored:
            t_own = own_keys(target.hist, n_t, target.n_partitions, per_dataset=per_dataset, seed=self.config.seed,
                             r=cfg.jslsh_r, k=cfg.jslsh_k, l=cfg.jslsh_l, device=self.device)
            for i, v in zip(stored, score(t_own, list(stored.values()))):
                out[i] = v
        if slow:
            for lo in range(0, len(slow), _SCORE_CHUNK):
                part = slow[lo:lo + _SCORE_CHUNK]
                s_dists = [self._source_dist(txn, *cands[i], n_t, per_dataset) for i in part]
                keys, offs = lsh_band_keys([t_dist] + s_dists, seed=self.config.seed, r=cfg.jslsh_r,
                                           k=cfg.jslsh_k, l=cfg.jslsh_l, device=self.device)
                s_keys = [keys[offs[j]:offs[j + 1]] for j in range(1, len(offs) - 1)]
                for i, v in zip(part, score(keys[offs[0]:offs[1]], s_keys)):
                    out[i] = v
        return out

    def _score_accuracy(self, txn, target: Sketch, cands, cfg: SketchConfig, *, auto: bool, mixture=None,
                        class_pool=None):
        """Predicted accuracy of each labelled candidate's model on the query (engine/accuracy.py).

        ``auto``: the labelled candidates are ranked by predicted accuracy, the others after them by
        the label-free default (``AUTO_LABEL_FREE``); with no labelled candidate (or a query without
        its rows), every candidate is scored label-free."""
        labelled, rest = [], []
        for rec, al in cands:
            cl = (txn.get("extra", u64(rec["id"])) or {}).get("classes") if rec.get("labelled") else None
            if cl is not None:
                labelled.append((rec, al, _acc.check_record(cl, len(rec["features"]))))
            else:
                rest.append((rec, al))
        frame = getattr(target, "frame", None)
        why = None
        if class_pool == "return":   # Hub.class_pool: this hub's share of the pooled class-conditionals
            labels = sorted({c for _, _, cl in labelled for c in cl["labels"]}, key=_acc._sort_key)
            return _acc.merge_pools([_acc.pool([(cl, {sf: tj for tj, sf, _ in al.pairs}) for _, al, cl in labelled],
                                               labels, target.names)])
        if class_pool is not None and not class_pool["labels"]:
            why = "no entry (of any shard) was registered with labels"
        elif class_pool is not None and not labelled:
            # a shard without labelled candidates while other shards have some: its entries are the
            # unlabelled group (auto), or nothing (accuracy), as in one hub holding every entry
            if not auto:
                return []
            out = self._score(txn, target, cands, cfg, AUTO_LABEL_FREE)
            for m in out:
                m.evidence["auto"] = f"{AUTO_LABEL_FREE}: registered without labels, ranked after the labelled entries"
                m.evidence["_group"] = 1
            return out
        elif not labelled:
            why = "no candidate entry was registered with labels"
        elif frame is None and mixture is None:
            why = "the query is a sketch without its rows (pass the data)"
        if why is not None:
            if not auto:
                raise E.NoLabelsError(f"method='accuracy' cannot score: {why}; register entries with "
                                      "hub.add(..., labels=...) or use method='auto'")
            out = self._score(txn, target, cands, cfg, AUTO_LABEL_FREE)
            for m in out:
                m.evidence["auto"] = f"{AUTO_LABEL_FREE}: {why}"
            return out
        labels = sorted({c for _, _, cl in labelled for c in cl["labels"]}, key=_acc._sort_key)
        pl = None
        if class_pool is not None:   # the pool of every shard (ShardedHub), instead of this hub's own
            pl = class_pool
            labels = sorted(set(labels) | set(pl["labels"]), key=_acc._sort_key)
        if mixture is not None:
            pi = _acc.check_mixture(mixture, labels)
            extra = [c for c in _acc.canonical(np.array(list(mixture), dtype=object)).tolist() if c not in set(labels)]
            if extra:   # classes no entry saw: every model scores 0 on them
                labels = labels + extra
                pi = _acc.check_mixture(mixture, labels)
            ll = np.zeros((0, len(labels)))
        else:
            if pl is None:
                pl = _acc.merge_pools([_acc.pool([(cl, {sf: tj for tj, sf, _ in al.pairs}) for _, al, cl in labelled],
                                                 labels, target.names)])
            pl = _acc.merge_pools([pl, {**pl, "labels": labels, "cls": pl["cls"][:0], "col": pl["col"][:0],
                                        "bucket": pl["bucket"][:0], "count": pl["count"][:0], "entries": 0}])
            labels = pl["labels"]
            used = sorted({j for j, n in enumerate(target.names) if n in set(pl["columns"])})
            qb = _acc.query_buckets(frame, target.names, target.kinds, used, self.config)
            ll = _acc.loglik(qb, len(frame), pl, target.names, cfg.accuracy_temperature)
            pi = None
        pi, acc, interval = _acc.estimate(ll, labels, [cl["perf"] for _, _, cl in labelled], mixture=pi,
                                          bootstrap=cfg.accuracy_bootstrap, seed=self.config.seed)
        top = np.argsort(-pi, kind="stable")[:5]
        mix = {str(labels[i]): round(float(pi[i]), 4) for i in top if pi[i] > 0}
        results = []
        for i, (rec, al, cl) in enumerate(labelled):
            r = _acc.recall_vector(cl["perf"], labels)
            contrib = pi * r
            seen = set(cl["labels"])
            ev = {"predicted_accuracy": float(acc[i]), "mixture": mix,
                  "mixture_source": "given" if mixture is not None else "EM over pooled class-conditionals",
                  "contributions": {str(labels[j]): round(float(contrib[j]), 4)
                                    for j in np.argsort(-contrib, kind="stable")[:5] if contrib[j] > 0},
                  "unseen_class_share": round(float(sum(p for c, p in zip(labels, pi) if c not in seen)), 4),
                  "performance": cl["perf"]["source"],
                  "pooled_entries": pl["entries"] if pl is not None else len(labelled)}
            if interval is not None:
                ev["interval"] = [round(float(interval[i, 0]), 4), round(float(interval[i, 1]), 4)]
            if cl["perf"]["source"].startswith("fallback"):
                ev["fallback"] = "no model performance was registered: recall guessed from class counts"
            if auto:
                ev["auto"] = "accuracy: registered with labels"
            results.append(self._match(rec, al, target, float(acc[i]), "accuracy", ev))
        if auto and rest:
            for m in self._score(txn, target, rest, cfg, AUTO_LABEL_FREE):
                m.evidence["auto"] = f"{AUTO_LABEL_FREE}: registered without labels, ranked after the labelled entries"
                m.evidence["_group"] = 1
                results.append(m)
        return results

    def _score_simex(self, txn, target: Sketch, cands, cfg: SketchConfig) -> list[Match]:
        """-min over the entry's autoencoders of the target's reconstruction loss, in batched passes."""
        from . import simex

        frame = getattr(target, "frame", None)
        if frame is None:
            raise E.InvalidArgumentError("method='simex' needs the target's rows: pass the data itself, not a sketch")
        groups: dict[tuple, list] = {}
        skipped = []
        for rec, al in cands:
            stored = txn.get("weights", _AE_PREFIX + u64(rec["id"]))
            if stored is None:
                skipped.append(rec["name"])
                continue
            records = [simex.AERecord.from_record(r) for r in stored["simex"]]
            t_of = {rec["features"][sf]: target.names[tj] for tj, sf, _ in al.pairs}
            cols = tuple(t_of.get(f) for f in (records[0].features or []))
            if None in cols:
                skipped.append(rec["name"])
                continue
            groups.setdefault(cols, []).append((rec, al, records))
        if not groups:
            raise E.InvalidArgumentError(
                "no candidate entry has an autoencoder over columns the query has: register entries with "
                "hub.add(..., autoencoder=True)" + (f" (without one: {skipped[:5]})" if skipped else ""))
        results = []
        for cols, members in groups.items():
            X = simex.numeric_matrix(frame, columns=list(cols))
            flat = [r for _, _, records in members for r in records]
            deltas = simex.delta(X, flat, loss=cfg.simex_loss, normalize=cfg.simex_normalize, device=self.device,
                                 relative=cfg.simex_relative)
            rel = simex.relative_used(flat, cfg.simex_loss) if cfg.simex_relative else np.zeros(len(flat), bool)
            i = 0
            for rec, al, records in members:
                d = deltas[i:i + len(records)]
                r = rel[i:i + len(records)]
                i += len(records)
                ev = {"delta": float(d.min()), "loss": cfg.simex_loss, "normalized": cfg.simex_normalize,
                      "relative_to_own_error": bool(r.all()), "autoencoders": len(records)}
                if cfg.simex_relative and not r.all():
                    ev["fallback"] = ("an autoencoder of this entry has no stored own error (added before it was "
                                      "stored, or loss='ssim'): divided by its mean norm instead")
                if records[0].label is not None:
                    ev["closest_class"] = records[int(np.argmin(d))].label
                results.append(self._match(rec, al, target, simex.entry_score(d), "simex", ev))
        return results

    def _score_coverage(self, txn, target: Sketch, cands, cfg: SketchConfig, embedding=None) -> list[Match]:
        """Coverage of the target's rows by each candidate; adaptivity (with the entry's own reason in
        its evidence) for each entry coverage cannot score."""
        from . import coverage as _cov

        if cfg.coverage_space != "rows":  # sample embeddings or autoencoder latents
            results, reason = self._score_coverage_space(txn, target, cands, cfg, embedding)
            if reason is None:
                return results
            if not cfg.coverage_fallback:
                raise E.FeatureMismatchError(
                    f"method='coverage' with coverage_space={cfg.coverage_space!r} cannot score every candidate: "
                    f"{reason}; pass coverage_fallback=True to fall back to adaptivity, filter entries with "
                    "where=, or use coverage_space='rows'")
            log.info("coverage (%s) falls back to adaptivity: %s", cfg.coverage_space, reason)
            out = self._score(txn, target, cands, cfg, "adaptivity")
            for m in out:
                m.evidence["fallback"] = f"coverage_space={cfg.coverage_space!r}: {reason}"
            return out
        plans, fallback = [], []   # fallback: (candidate, that entry's own reason)
        no_rows = None if target.rows is not None else "the query is a sketch without its rows (pass the data)"
        for rec, al in cands:
            if no_rows is not None:
                fallback.append(((rec, al), no_rows))
                continue
            cov = (txn.get("extra", u64(rec["id"])) or {}).get("coverage")
            t_of = {sf: tj for tj, sf, _ in al.pairs}
            missing = [rec["features"][f] for f in range(len(rec["features"])) if f not in t_of]
            kinds_differ = [rec["features"][f] for f, tj in t_of.items()
                            if (rec["kinds"][f] == "numeric") != (target.kinds[tj] == "numeric")
                            or (rec["kinds"][f] != "numeric" and rec["kinds"][f] != target.kinds[tj])]
            if cov is None or missing or kinds_differ:
                fallback.append(((rec, al), f"entry {rec['name']!r} " + (
                    f"has columns {missing} the target lacks" if missing else
                    f"has columns {kinds_differ} of another kind in the target" if kinds_differ else
                    "has no coverage sketch")))
                continue
            owner = np.asarray(target.row_owner)
            cols = np.concatenate([np.flatnonzero(owner == t_of[f]) for f in range(len(rec["features"]))])
            plans.append((rec, al, cov, cols))
        if fallback and not cfg.coverage_fallback:
            raise E.FeatureMismatchError(
                f"method='coverage' needs the query's rows over every column of each candidate entry: "
                f"{fallback[0][1]}; pass coverage_fallback=True to fall back to adaptivity for such entries, "
                "or filter entries with where=")
        out = []
        if fallback:   # per entry: only the entries coverage cannot score are scored by adaptivity
            log.info("coverage falls back to adaptivity for %d of %d entries: %s", len(fallback), len(cands),
                     fallback[0][1])
            out = self._score(txn, target, [c for c, _ in fallback], cfg, "adaptivity")
            for m, ((rec, al), why) in zip(out, fallback):
                m.evidence["fallback"] = f"scored by adaptivity: coverage needs the entry's whole feature set; {why}"
                if plans:   # ranked beside coverage scores: an entry the query covers in part counts in part
                    share = len(al.pairs) / max(len(rec["features"]), 1)
                    m.evidence.update(fallback_score=m.score, entry_columns_matched=share)
                    m.score *= share
        results = out
        for rec, al, cov, cols in plans:
            per_table = _cov.score(target.rows[:, cols], cov, seed=self.config.seed, tau=cfg.coverage_tau,
                                   device=self.device, mode=cfg.coverage_score, resolution=cfg.coverage_resolution,
                                   rho=cfg.coverage_rho)
            how = ({"tau": cfg.coverage_tau} if cfg.coverage_score == "count" else
                   {"resolution_bits": min(cfg.coverage_resolution, int(cov["bits"])), "rho": cfg.coverage_rho})
            results.append(self._match(rec, al, target, float(per_table.mean()), "coverage", {
                "covered_share": float(per_table.mean()), "per_table": [round(float(x), 4) for x in per_table],
                "coverage_score": cfg.coverage_score, **how, "target_rows": target.n_rows}))
        return results

    def _score_coverage_space(self, txn, target: Sketch, cands, cfg: SketchConfig, embedding):
        """``(matches, None)`` scored in ``cfg.coverage_space``, or ``([], reason)`` when some candidate
        cannot be (engine/coverage_spaces.py)."""
        from . import coverage_spaces as _spaces

        space = cfg.coverage_space
        kw = dict(seed=self.config.seed, tau=cfg.coverage_tau, device=self.device)
        stored = [(rec, al, (txn.get("extra", u64(rec["id"])) or {}).get(f"coverage_{space}")) for rec, al in cands]
        results = []
        if space == "embedding":
            if embedding is None or np.ndim(embedding) != 2:
                raise E.InvalidArgumentError(
                    f"coverage_space='embedding' codes the query's sample embeddings, got embedding="
                    f"{'None' if embedding is None else f'of shape {np.shape(embedding)}'}: pass embedding=(n, d), "
                    "one row per query sample, embedded like the entries' (it also drives the FAISS shortlist)")
            q = check_embedding(embedding)
            lacking = [rec["name"] for rec, _, r in stored if r is None]
            if lacking:
                return [], f"entry {lacking[0]!r} has no embedding coverage sketch (add it with embedding=)"
            per = _spaces.embedding_coverage(q, [r for _, _, r in stored], **kw)
            for (rec, al, _), pt in zip(stored, per):
                results.append(self._match(rec, al, target, float(pt.mean()), "coverage", {
                    "covered_share": float(pt.mean()), "per_table": [round(float(x), 4) for x in pt],
                    "tau": cfg.coverage_tau, "target_rows": int(q.shape[0]), "space": space}))
            return results, None
        from . import simex

        frame = getattr(target, "frame", None)
        if frame is None:
            return [], "the query is a sketch without its rows (pass the data)"
        groups: dict[tuple, list] = {}
        for rec, al, lat in stored:
            weights = txn.get("weights", _AE_PREFIX + u64(rec["id"]))
            if weights is None:
                return [], f"entry {rec['name']!r} has no autoencoder (add it with autoencoder=True)"
            if lat is None:
                return [], f"entry {rec['name']!r} has no latent coverage sketch (added before coverage spaces: add it again)"
            records = [simex.AERecord.from_record(r) for r in weights["simex"]]
            t_of = {rec["features"][sf]: target.names[tj] for tj, sf, _ in al.pairs}
            cols = tuple(t_of.get(f) for f in (records[0].features or []))
            if not cols or None in cols:
                return [], f"entry {rec['name']!r} has an autoencoder over columns the query lacks"
            groups.setdefault(cols, []).append((rec, al, records, lat))
        for cols, members in groups.items():
            X = simex.numeric_matrix(frame, columns=list(cols))
            scored = _spaces.latent_coverage(X, [(records, lat) for _, _, records, lat in members], **kw)
            for (rec, al, records, _), sc in zip(members, scored):
                pt = sc["per_table"]
                ev = {"covered_share": float(pt.mean()), "per_table": [round(float(x), 4) for x in pt],
                      "tau": cfg.coverage_tau, "target_rows": int(X.shape[0]), "space": space,
                      "autoencoders": len(records)}
                if records[0].label is not None:
                    ev["closest_class"] = records[int(np.argmax(sc["per_ae"]))].label
                results.append(self._match(rec, al, target, float(pt.mean()), "coverage", ev))
        return results, None

    @staticmethod
    def _match(rec, al: Alignment, target: Sketch, score: float, method: str, evidence: dict) -> Match:
        # the matched-features list is built for the k matches that are returned, not for every
        # candidate (the rerank stage calls _features)
        evidence["_features"] = (target.names, rec["features"], al.pairs)
        if getattr(target, "left_out", None):
            evidence["query_columns_left_out"] = list(target.left_out)   # all missing: not scored
        return Match(rec["name"], float(score), method, al.overlap, [], evidence, rec["metadata"])

    @staticmethod
    def _features(m: Match) -> None:
        t_names, s_names, pairs = m.evidence.pop("_features")
        m.features = [(t_names[t], s_names[s], round(sim, 4)) for t, s, sim in pairs]


def _count_label_kind(txn, labels: list, step: int) -> None:
    """Keep the hub's labelled entries on one label kind (int or str), counted in ``meta``: labels
    ``3`` and ``"3"`` would never pool as one class."""
    kind = _acc.label_kind(labels)
    counts = txn.get("meta", b"label_kinds") or {}
    other = {"int": "str", "str": "int"}[kind]
    if step > 0 and counts.get(other, 0) > 0:
        raise E.LabelError(f"this hub's labelled entries have {other} labels and these are {kind}s: use one label "
                           f"vocabulary in a hub (map the labels to {other}s)")
    counts[kind] = max(0, counts.get(kind, 0) + step)
    txn.put("meta", b"label_kinds", counts)


_L2_UNCOVERED = 4.0   # squared distance of a query feature an entry does not cover: two spreads apart


def _bucket_values(bucket: np.ndarray, accuracy: float) -> np.ndarray:
    """A representative value of each histogram bucket of the numeric quantizer (quantize.numeric_keys
    at ``accuracy``): the geometric middle of ``(gamma^(k-1), gamma^k]``, 0 for the zero bucket, NaN
    for the NaN / infinity buckets."""
    from .quantize import BIAS, NAN_KEY

    b = np.asarray(bucket, dtype=np.int64)
    k = np.abs(b) - BIAS
    gamma = (1.0 + accuracy) / (1.0 - accuracy)
    with np.errstate(over="ignore"):
        v = np.sign(b) * gamma ** (k - 0.5)
    return np.where(b == 0, 0.0, np.where(np.abs(b) >= NAN_KEY, np.nan, v))


def _per_feature(dist, n: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """{aligned feature: (buckets, probabilities)} of a dataset-level ``Distributions``."""
    j = dist.key >> 32
    out = {}
    for f in np.unique(j):
        sel = j == f
        out[int(f)] = ((dist.key[sel] & 0xFFFFFFFF) - (1 << 31), dist.value[sel] * n)
    return out


def _l2(target: Sketch, t_dist, rec: dict, al: Alignment, s_dist, accuracy: float = 0.1) -> tuple[float, dict]:
    """Root mean over the query's features of a squared distance, comparable across entries that
    match different numbers of columns: a matched numeric feature contributes its difference of
    means in units of the pooled spread (standard deviations from the histograms), a matched
    categorical / text feature twice the squared L2 distance of its normalized histograms (in
    [0, 4]), and a query feature the entry does not cover ``_L2_UNCOVERED`` (two spreads apart)."""
    n = max(target.n_features, 1)
    t_counts, s_counts = target.counts, np.asarray(rec["counts"])
    t_sums, s_sums = target.sums, np.asarray(rec["sums"])
    tf, sf_ = _per_feature(t_dist, n), _per_feature(s_dist, n)
    sq, numeric = 0.0, 0
    for tj, sf, _ in al.pairs:
        tb, tp = tf.get(tj, (np.zeros(0, np.int64), np.zeros(0)))
        sb, sp = sf_.get(tj, (np.zeros(0, np.int64), np.zeros(0)))
        if t_counts[tj] > 0 and s_counts[sf] > 0:
            mt, ms = t_sums[tj] / t_counts[tj], s_sums[sf] / s_counts[sf]
            var = []
            for b, p, m in ((tb, tp, mt), (sb, sp, ms)):
                v = _bucket_values(b, accuracy)
                ok = np.isfinite(v)
                w = p[ok].sum()
                var.append(float((p[ok] * (v[ok] - m) ** 2).sum() / w) if w > 0 else 0.0)
            sd = max(np.sqrt((var[0] + var[1]) / 2), 1e-3 * (abs(mt) + abs(ms)), 1e-12)
            sq += ((mt - ms) / sd) ** 2
            numeric += 1
        else:
            pt = dict(zip(tb.tolist(), tp.tolist()))
            ps = dict(zip(sb.tolist(), sp.tolist()))
            sq += 2.0 * sum((pt.get(c, 0.0) - ps.get(c, 0.0)) ** 2 for c in set(pt) | set(ps))
    uncovered = n - len(al.pairs)
    sq += _L2_UNCOVERED * uncovered
    return float(np.sqrt(sq / n)), {"matched_features": len(al.pairs), "uncovered_query_features": uncovered,
                                    "scaled_by_spread": numeric}
