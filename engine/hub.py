"""The hub: a directory holding an LMDB environment of entries and their sketches.

Writes: every ``add`` / ``remove`` is one LMDB transaction covering the entry record, its name,
its feature signatures, its LSH band keys and its partition histograms, so after a crash the
hub holds the whole entry or none of it. All validation and sketching happen before the
transaction opens, so a failed ``add`` leaves the hub exactly as it was.

Reads: ``search`` runs inside one read transaction and sees one consistent snapshot.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import struct
import time
from dataclasses import dataclass, field

import numpy as np

from . import errors as E
from . import profiles as _profiles
from .config import METHODS, QUERY_PARAMS, SketchConfig
from .jslsh import adaptivity_scores, exact_js_scores, js_lsh_scores, lsh_band_keys, own_keys
from .minhash import Alignment, align_from_similarity, feature_band_keys, row_similarity, similarity
from .partitions import aligned_distributions, pack_hist, unpack_hist
from .planner import Plan, Stage, choose_candidate_stage, order_filter_first, use_shortlist
from .data import to_frame
from .embeddings import EmbeddingsMixin, check_embedding, delete_embeddings, write_embeddings
from .probelog import ProbeLogMixin, delete_model_descriptors, write_model_descriptors
from .sketch import Sketch, build_sketch
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


def _check_name(name) -> str:
    if not isinstance(name, str) or not name or len(name.encode("utf-8")) > _NAME_MAX or "\x00" in name:
        raise E.InvalidArgumentError(
            f"name={name!r} is not valid: give a non-empty str of at most {_NAME_MAX} UTF-8 bytes without NUL")
    return name


def _check_metadata(metadata) -> dict:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) for k in metadata):
        raise E.InvalidArgumentError(
            f"metadata must be a dict with str keys, got {type(metadata).__name__}: e.g. {{'task': 'em', 'accuracy': 0.9}}")
    from .storage import pack

    try:
        pack(metadata)
    except Exception as e:
        raise E.CodecError(f"metadata cannot be stored: {e}: use str, numbers, bools, None, lists, dicts, bytes or NumPy arrays") from e
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


_VERIFY_CHUNK = 4096   # entries whose signatures are read and compared at a time
_SCORE_CHUNK = 1024    # candidates whose histograms are read and scored at a time (exact-js, l2, JS-LSH)


def _dup(entry_id: int, feat: int) -> bytes:
    return struct.pack(">II", entry_id, feat)


class Hub(EmbeddingsMixin, ProbeLogMixin):
    """A fitsketch hub. Open with :func:`fitsketch.open`; use as a context manager."""

    def __init__(self, path: str | os.PathLike, *, create: bool = True, config: SketchConfig | None = None,
                 readonly: bool = False, device: str = "auto", map_size: int = 1 << 26):
        if config is not None and not isinstance(config, SketchConfig):
            raise E.InvalidArgumentError(f"config must be a SketchConfig, got {type(config).__name__}")
        from .kernels._device import resolve_device

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
        if not isinstance(name, str) or not name or len(name.encode("utf-8")) > _NAME_MAX:
            return False  # no entry can have such a name
        with self.store.read() as txn:
            return txn.exists("names", name.encode("utf-8"))

    @_translated
    def names(self) -> list[str]:
        with self.store.read() as txn:
            return [k.decode("utf-8") for k in txn.keys("names")]

    @_translated
    def get(self, name: str) -> Entry:
        _check_name(name)
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
            probe_set: str | None = None) -> Entry:
        """Sketch ``data`` and register it as entry ``name`` in one transaction.

        ``autoencoder=True`` also trains a SimEx autoencoder on the numeric columns (one per class
        when ``labels`` -- an array, or the name of a column, which is then not a feature -- are
        given; a convolutional one when ``image_shape=(C, H, W)``), stored with the entry.
        ``embedding`` (one row per data row) stores sample embeddings for ``hub.nearest``.
        ``model`` (a callable or torch module returning logits) is run on the hub's probe set and
        one ProbeLog descriptor per logit is stored, for ``search_logits`` / ``search_concept``.
        """
        _check_name(name)
        metadata = _check_metadata(metadata)
        if name in self:
            raise E.EntryExistsError(f"an entry named {name!r} exists: remove it first or choose another name")
        df = to_frame(data, feature_names)
        if isinstance(labels, str):
            if labels not in df.columns:
                raise E.InvalidArgumentError(f"labels={labels!r} is not a column of the data: columns are {list(df.columns)}")
            labels, df = df[labels].to_numpy(), df.drop(columns=[labels])
            if df.shape[1] == 0:
                raise E.EmptyDataError("the data has no column besides the labels: give at least one feature")
        if labels is not None and not autoencoder:
            raise E.InvalidArgumentError("labels are used by the SimEx autoencoders: pass autoencoder=True too")
        if labels is not None and len(labels) != len(df):
            raise E.DimensionError(f"labels has {len(labels)} values for {len(df)} rows: give one label per row")
        if embedding is not None:
            embedding = check_embedding(embedding, n_rows=len(df))
        probed = None
        if model is not None:
            probed = (self.probe(model, probe_set), logit_labels, probe_set)
        elif logit_labels is not None:
            raise E.InvalidArgumentError("logit_labels describe a model's outputs: pass model= too")
        sketch = build_sketch(df, self.config, partition_size=partition_size, device=self.device, progress=progress)
        fleet = None
        if autoencoder:
            from . import simex

            cfg = ae_config or simex.AEConfig(seed=self.config.seed)
            cols = [n for n, k in zip(sketch.names, sketch.kinds) if k == "numeric"]
            if not cols:
                raise E.UnsupportedDataError("autoencoder=True needs numeric columns and the data has none")
            X_ae = simex.numeric_matrix(df, columns=cols)
            trained = simex.train_fleet(X_ae, labels, image_shape=image_shape, config=cfg, feature_names=cols)
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
                spaces["coverage_latent"] = _spaces.latent_record(X_ae, labels, trained, **ckw)
        return self._add(name, sketch, metadata, fleet, embedding, probed, spaces)

    def add_sketch(self, name: str, sketch: Sketch, *, metadata: dict | None = None) -> Entry:
        """Register a sketch built elsewhere (``fitsketch.sketch_data``) as entry ``name``."""
        return self._add(name, sketch, _check_metadata(metadata), None)

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
            name, sk = it[0], it[1]
            _check_name(name)
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

    def _add(self, name: str, sketch: Sketch, metadata: dict, fleet: list | None, embedding=None,
             probed=None, spaces: dict | None = None) -> Entry:
        return self._transact(self._writer(name, sketch, metadata, fleet, embedding, probed, spaces))

    def _writer(self, name: str, sketch: Sketch, metadata: dict, fleet: list | None, embedding=None,
                probed=None, spaces: dict | None = None):
        """The function that writes entry ``name`` inside a write transaction (all checks done first)."""
        _check_name(name)
        metadata = _check_metadata(metadata)
        self._check_sketch(sketch)
        bands = feature_band_keys(sketch.signatures, self.config.lsh_k, self.config.lsh_l)
        nonempty = np.nonzero(sketch.signatures[:, 0] != np.uint32(0xFFFFFFFF))[0]
        prof, prof_keys = _profiles.record(sketch.hist, sketch.names, sketch.n_partitions, self.config, self.device)
        packed_hist = pack_hist(sketch.hist, sketch.n_partitions, sketch.n_features)
        created = time.time()

        def write(txn):
            key = name.encode("utf-8")
            if txn.exists("names", key):
                raise E.EntryExistsError(f"an entry named {name!r} exists: remove it first or choose another name")
            eid = int(txn.get("meta", b"next_id"))
            rec = {"v": ENTRY_FORMAT, "id": eid, "name": name, "metadata": metadata,
                   "features": sketch.names, "kinds": sketch.kinds, "n_rows": sketch.n_rows,
                   "n_partitions": sketch.n_partitions, "partition_size": sketch.partition_size,
                   "sums": sketch.sums, "counts": sketch.counts, "created": created}
            k = u64(eid)
            txn.put("entries", k, rec)
            txn.put_raw("names", key, k)
            txn.put("signatures", k, {"v": ENTRY_FORMAT, "sig": sketch.signatures})
            txn.put("histograms", k, packed_hist)
            if sketch.coverage is not None or spaces:  # spaces: coverage_spaces records, from add
                cov = {} if sketch.coverage is None else {"coverage": sketch.coverage}
                txn.put("extra", k, {"v": ENTRY_FORMAT, **cov, **(spaces or {})})
            if fleet is not None:
                txn.put("weights", _AE_PREFIX + k, {"v": ENTRY_FORMAT, "simex": fleet})
            if embedding is not None:
                write_embeddings(txn, eid, embedding, n_rows=sketch.n_rows)
            if probed is not None:
                responses, labels, pset = probed
                write_model_descriptors(txn, eid, name, responses, labels, pset)
            txn.put("extra", _profiles.key(eid), prof)
            txn.put("extra", _profiles.keys_key(eid), prof_keys)
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
        _check_name(name)
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
            for db in ("entries", "signatures", "histograms", "extra"):
                txn.delete(db, k)
            txn.delete("extra", _profiles.key(eid))
            txn.delete("extra", _profiles.keys_key(eid))
            txn.delete("weights", _AE_PREFIX + k)
            delete_embeddings(txn, eid)
            delete_model_descriptors(txn, eid)
            txn.delete("names", key)
            txn.put("meta", b"generation", int(txn.get("meta", b"generation")) + 1)
            txn.put("meta", b"n_features", int(txn.get("meta", b"n_features")) - len(rec["features"]))

        self._transact(write)

    def _transact(self, fn):
        try:
            return self.store.transact(fn)
        except E.FitsketchError:
            raise
        except Exception as e:
            raise E.translate(e) from None

    # ------------------------------------------------------------------ search
    @_translated
    def search(self, data, *, k: int = 10, method: str = "adaptivity", where: dict | None = None,
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
    def explain(self, data, *, k: int = 10, method: str = "adaptivity", where: dict | None = None,
                feature_names=None, embedding=None, embedding_candidates: int = 100, **overrides) -> Plan:
        """Run the query and return its plan with estimated and actual counts and times per stage."""
        _, plan = self._search(data, k=k, method=method, where=where, feature_names=feature_names,
                               overrides=overrides, embedding=embedding, n_emb=embedding_candidates)
        return plan

    def _query_config(self, method, k, where, overrides) -> SketchConfig:
        if method not in METHODS:
            raise E.UnknownMethodError(f"method={method!r} is not a search method: use one of {', '.join(METHODS)}")
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise E.InvalidArgumentError(f"k={k!r} is not valid: expected a positive integer")
        if where is not None and not isinstance(where, dict):
            raise E.InvalidArgumentError(f"where must be a dict of metadata equalities, got {type(where).__name__}")
        aliases = {"loss": "simex_loss", "normalize": "simex_normalize"}
        overrides = {aliases.get(k, k): v for k, v in overrides.items()}
        bad = sorted(set(overrides) - set(QUERY_PARAMS))
        if bad:
            raise E.InvalidArgumentError(f"unknown search parameters {bad}: per-query parameters are {list(QUERY_PARAMS)}")
        return self.config.replace(**overrides)

    def _search(self, data, *, k, method, where, feature_names, overrides, embedding=None, n_emb=100):
        cfg = self._query_config(method, k, where, overrides)
        if embedding is not None and (not isinstance(n_emb, int) or isinstance(n_emb, bool) or n_emb < 1):
            raise E.InvalidArgumentError(f"embedding_candidates={n_emb!r} is not valid: expected a positive integer")
        plan = Plan(method, k)
        with plan.run(Stage("sketch", "quantize + MinHash + partition histograms of the query")) as st:
            if isinstance(data, Sketch):
                if tuple(data.config_key) != self.config.sketch_key():
                    raise E.InvalidArgumentError(
                        "the query sketch was built with other parameters than this hub's: build it with hub.config")
                # a sketch carries no rows, wherever it was built: coverage and simex fall back or refuse
                target = dataclasses.replace(data, rows=None, row_owner=None, frame=None)
            else:
                frame = to_frame(data, feature_names)
                target = build_sketch(frame, self.config, device=self.device)
                target.frame = frame
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
            allowed = self._shortlist(target, cfg, method, plan, where)
        with self.store.read() as txn:
            n_stored = int(txn.get("meta", b"n_features") or 0)
            n_entries = txn.count("names")
            if n_entries == 0:
                return [], plan
            if allowed is not None:   # only the shortlisted entries' features are compared
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
                scored = self._score(txn, target, cands, cfg, method, embedding=embedding)
                st.actual = len(scored)
                fell = next((m.evidence["fallback"] for m in scored if "fallback" in m.evidence), None)
                if fell:
                    st.detail += f"; fell back to adaptivity: {fell}"
        with plan.run(Stage("rerank", f"sort by score, cut to k={k}", estimated=min(k, len(scored)))) as st:
            scored.sort(key=lambda m: (-m.score, -m.evidence.get("_tiebreak", 0.0), -m.overlap, m.name))
            out = scored[:k]
            for m in out:
                m.evidence.pop("_tiebreak", None)
                self._features(m)
            st.actual = len(out)
        return out, plan

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

    @_translated
    def warm(self) -> int:
        """Load what a first search would otherwise load: every entry's profile and the FAISS index
        over them (14 s at 200k entries on 2 cores, linear in the entries; bench/SUMMARY.md). Returns
        the number of profiles in memory.

        A search loads whatever is missing on its own; call this after opening a big hub so the
        first query is not the slow one. ``fitsketch serve`` does it in the background as it starts."""
        return len(self._synced_profiles(build_index=True))

    def _shortlist(self, target: Sketch, cfg: SketchConfig, method: str, plan: Plan, where=None) -> set | None:
        """Ids (u64 keys) of the ``cfg.shortlist`` entries with the nearest profiles, or None when
        the planner scores every entry (engine/profiles.py, planner.use_shortlist)."""
        n_entries = len(self)
        use, why = use_shortlist(n_entries, cfg.shortlist, method, filtered=bool(where))
        if not use:
            return None
        seed = self.config.seed
        with plan.run(Stage("shortlist", f"entry profiles nearest to the query's, top {cfg.shortlist} by "
                            f"inner product ({why})", estimated=cfg.shortlist)) as st:
            idx = self._synced_profiles()
            used = sorted({int(f) for f in np.asarray(target.hist["feat"], dtype=np.int64)})
            if not idx.shares_names(_profiles.name_keys([target.names[f] for f in used], seed)):
                st.detail += "; skipped: no stored profile has a feature named like the query's, every entry is scored"
                st.actual = n_entries
                return None
            ids, _ = idx.top(_profiles.profile(target.hist, target.names, seed), cfg.shortlist)
            st.actual = len(ids)
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
                    if all(rec["metadata"].get(wk) == wv for wk, wv in where.items()):
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
            for lo in range(0, len(keys), _VERIFY_CHUNK):   # bounded memory however many entries are verified
                chunk = keys[lo:lo + _VERIFY_CHUNK]
                sigs = [txn.get("signatures", key)["sig"] for key in chunk]
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
            lo = 0
            for i in other:
                hi = lo + sigs[i].shape[0]
                block = sim[:, lo:hi]
                lo = hi
                if (block >= cfg.feature_threshold).any() or set(rec_of[i]["features"]) & set(target.names):
                    als[i] = align_from_similarity(target.names, rec_of[i]["features"], block, cfg.feature_threshold)
        for i, key in enumerate(keys):
            al = als.get(i)
            if al is not None and al.pairs and al.overlap > cfg.overlap_threshold:
                yield key, rec_of[i], al

    def _score(self, txn, target: Sketch, cands, cfg: SketchConfig, method: str, embedding=None) -> list[Match]:
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
            scores = self._jslsh_scores(txn, target, cands, cfg, method, t_dist)
            if method == "adaptivity":
                for (rec, al), (score, agree, matched) in zip(cands, scores):
                    results.append(self._match(rec, al, target, score, method, {
                        "matched_partitions": matched, "target_partitions": target.n_partitions,
                        "source_partitions": rec["n_partitions"], "band_agreement": agree, "_tiebreak": agree}))
            else:
                for (rec, al), (score, c) in zip(cands, scores):
                    results.append(self._match(rec, al, target, score, method,
                                               {"bands_collided": c, "bands": cfg.jslsh_l}))
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
                    d = _l2(target, t_dist, rec, al, sd)
                    results.append(self._match(rec, al, target, -d, method, {"l2_distance": d}))
        return results

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
            deltas = simex.delta(X, flat, loss=cfg.simex_loss, normalize=cfg.simex_normalize, device=self.device)
            i = 0
            for rec, al, records in members:
                d = deltas[i:i + len(records)]
                i += len(records)
                ev = {"delta": float(d.min()), "loss": cfg.simex_loss, "normalized": cfg.simex_normalize,
                      "autoencoders": len(records)}
                if records[0].label is not None:
                    ev["closest_class"] = records[int(np.argmin(d))].label
                results.append(self._match(rec, al, target, simex.entry_score(d), "simex", ev))
        return results

    def _score_coverage(self, txn, target: Sketch, cands, cfg: SketchConfig, embedding=None) -> list[Match]:
        """Coverage of the target's rows by each candidate; adaptivity for all when one cannot."""
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
        plans = []
        reason = None if target.rows is not None else "the query is a sketch without its rows (pass the data)"
        for rec, al in (cands if reason is None else []):
            cov = (txn.get("extra", u64(rec["id"])) or {}).get("coverage")
            t_of = {sf: tj for tj, sf, _ in al.pairs}
            missing = [rec["features"][f] for f in range(len(rec["features"])) if f not in t_of]
            kinds_differ = [rec["features"][f] for f, tj in t_of.items()
                            if (rec["kinds"][f] == "numeric") != (target.kinds[tj] == "numeric")
                            or (rec["kinds"][f] != "numeric" and rec["kinds"][f] != target.kinds[tj])]
            if cov is None or missing or kinds_differ:
                reason = (f"entry {rec['name']!r} " + (f"has columns {missing} the target lacks" if missing else
                          f"has columns {kinds_differ} of another kind in the target" if kinds_differ else
                          "has no coverage sketch"))
                break
            owner = np.asarray(target.row_owner)
            cols = np.concatenate([np.flatnonzero(owner == t_of[f]) for f in range(len(rec["features"]))])
            plans.append((rec, al, cov, cols))
        if reason is not None and not cfg.coverage_fallback:
            raise E.FeatureMismatchError(
                f"method='coverage' needs the query's rows over every column of each candidate entry: {reason}; "
                "pass coverage_fallback=True to fall back to adaptivity, or filter entries with where=")
        if reason is not None:
            log.info("coverage falls back to adaptivity: %s", reason)
            out = self._score(txn, target, cands, cfg, "adaptivity")
            for m in out:
                m.evidence["fallback"] = f"coverage needs the entry's whole feature set; {reason}"
            return out
        results = []
        for rec, al, cov, cols in plans:
            per_table = _cov.score(target.rows[:, cols], cov, seed=self.config.seed, tau=cfg.coverage_tau,
                                   device=self.device)
            results.append(self._match(rec, al, target, float(per_table.mean()), "coverage", {
                "covered_share": float(per_table.mean()), "per_table": [round(float(x), 4) for x in per_table],
                "tau": cfg.coverage_tau, "target_rows": target.n_rows}))
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
        return Match(rec["name"], float(score), method, al.overlap, [], evidence, rec["metadata"])

    @staticmethod
    def _features(m: Match) -> None:
        t_names, s_names, pairs = m.evidence.pop("_features")
        m.features = [(t_names[t], s_names[s], round(sim, 4)) for t, s, sim in pairs]


def _l2(target: Sketch, t_dist, rec: dict, al: Alignment, s_dist) -> float:
    """L2 distance between feature means over aligned features (histograms for non-numeric ones)."""
    sq = 0.0
    t_counts, s_counts = target.counts, np.asarray(rec["counts"])
    t_sums, s_sums = target.sums, np.asarray(rec["sums"])
    nonnum = []
    for tj, sf, _ in al.pairs:
        if t_counts[tj] > 0 and s_counts[sf] > 0:
            sq += (t_sums[tj] / t_counts[tj] - s_sums[sf] / s_counts[sf]) ** 2
        else:
            nonnum.append(tj)
    if nonnum:
        n = max(target.n_features, 1)
        for j in nonnum:
            tv = {int(kk): v for kk, v in zip(t_dist.key[(t_dist.key >> 32) == j], t_dist.value[(t_dist.key >> 32) == j])}
            sv = {int(kk): v for kk, v in zip(s_dist.key[(s_dist.key >> 32) == j], s_dist.value[(s_dist.key >> 32) == j])}
            sq += sum(((tv.get(c, 0.0) - sv.get(c, 0.0)) * n) ** 2 for c in set(tv) | set(sv))
    return float(np.sqrt(sq))
