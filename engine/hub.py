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

import contextlib
import functools
import logging
import os

from . import accuracy as _acc
from . import adding as _adding
from . import band_blocks as _blocks
from . import errors as E
from . import parts as _parts
from . import pipeline as _pipeline
from . import prepare_procs as _prepare_procs
from . import profiles as _profiles
from . import screen as _screen
from .config import SketchConfig
from .embeddings import Embeddings
from .indexes import SearchIndexes
from .methods.accuracy import LABEL_FREE
from .plan import Plan
from .probelog import ProbeLog
from .results import Entry, Match  # noqa: F401 - their old home
from .sketch import Sketch, check_sketch
from .storage import HubStore
from .storage.schema import AE_PREFIX
from .validate import (MAX_JSLSH_HASHES, MAX_JSLSH_K, MAX_JSLSH_L, MAX_K,  # noqa: F401 - their old home
                       MAX_QUERY_COLUMNS, _check_count, _check_metadata, _check_name, _check_path)

log = logging.getLogger(__name__)

ENTRY_FORMAT = _parts.ENTRY_FORMAT
_AE_PREFIX = AE_PREFIX  # weights-db keys of SimEx fleets: b"ae:" + entry id (storage/schema.py)


def _translated(fn):
    """Public hub reads raise FitsketchError subclasses, never a storage- or kernel-layer class."""
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


def _part(component: str, fn):
    """The Hub method that calls method ``fn`` of its component ``component`` (same signature,
    same docstring): embeddings and ProbeLog are parts the hub holds, not bases."""
    name = fn.__name__

    @functools.wraps(fn)
    def method(self, *args, **kwargs):
        return getattr(getattr(self, component), name)(*args, **kwargs)

    method.__qualname__ = f"Hub.{name}"
    return method


AUTO_LABEL_FREE = LABEL_FREE   # what method="auto" scores entries without labels by (engine/methods/accuracy.py)


class Hub:
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
        self._indexes = SearchIndexes(self.config, device)
        self._embeddings = Embeddings(self)      # hub.nearest, .sample, .train_deephash
        self._probelog = ProbeLog(self)          # hub.add_probes, .add_model, .search_logits, ...
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
        a fallback from the class counts (flagged in the evidence). ``confusion=`` given with ``model=``
        + ``validation=`` (whole counts, e.g. a cross-validated confusion over the training rows) is
        added to the validation's confusion.
        """
        return self._add(*_adding.prepare(
            self, name, data, metadata=metadata, partition_size=partition_size, feature_names=feature_names,
            progress=progress, autoencoder=autoencoder, labels=labels, image_shape=image_shape, ae_config=ae_config,
            embedding=embedding, model=model, logit_labels=logit_labels, probe_set=probe_set, validation=validation,
            confusion=confusion, class_accuracy=class_accuracy))

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
                                               columns=sketch.names, kinds=sketch.kinds, config=self.config)
            spaces = {"classes": classes}
        elif any(v is not None for v in (validation, confusion, class_accuracy)):
            raise E.InvalidArgumentError("validation=, confusion= and class_accuracy= describe a model's per-class "
                                         "performance: build the sketch with fitsketch.sketch_data(data, labels=...)")
        return self._add(name, sketch, _check_metadata(metadata), None, spaces=spaces)

    def add_sketches(self, items, *, batch: int = 1000, progress: bool = False, threads: int | None = None,
                     processes: int | None = None) -> int:
        """Register many prebuilt sketches: ``items`` yields ``(name, sketch)`` or ``(name, sketch,
        metadata)``. Entries are written ``batch`` to a transaction (each entry whole, a batch all or
        nothing), which amortizes the commit's sync (~5 ms) over the batch. Every item is checked
        before anything is written (types, parameters, names unique and not in the hub), so bad input
        leaves the hub unchanged. Each batch's records are computed and packed while the batch before
        is written (the same bytes whatever does it; a failure there leaves its batch unwritten,
        the batches before it written): in ``processes`` forked worker processes
        (engine/prepare_procs.py; default: one a usable CPU for a call of 512 entries or more on the
        CPU device with no other thread running, or ``FITSKETCH_PREPARE_PROCESSES``; 0: none), else in
        ``threads`` threads (default ``parts.PREPARE_THREADS``: 2 on a machine of 2 CPUs or more, or
        ``FITSKETCH_PREPARE_THREADS``; 1 uses less CPU on a busy machine). The band postings are
        compacted when due, once a call (engine/band_blocks.py): after the first batch past which
        it is due while the next batch is prepared, else at the end of the call.
        Returns the number of entries added."""
        items = list(items)
        if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
            raise E.InvalidArgumentError(f"batch={batch!r} is not valid: expected a positive integer")
        if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or not 1 <= threads <= 64):
            raise E.InvalidArgumentError(f"threads={threads!r} is not valid: expected an integer from 1 to 64 (or None)")
        if processes is not None and (not isinstance(processes, int) or isinstance(processes, bool)
                                      or not 0 <= processes <= 64):
            raise E.InvalidArgumentError(f"processes={processes!r} is not valid: expected an integer from 0 to 64 "
                                         "(or None)")
        procs = _prepare_procs.choose(processes, len(items), self.device)   # before tqdm starts its monitor thread
        sizes = [min(batch, len(items) - lo) for lo in range(0, len(items), batch)]
        chunks, batch_of = _parts.process_chunks(sizes, procs) if procs else ([], [])
        ends = {hi for _, hi in chunks}
        workers = None   # forked once the first chunk's items passed: they prepare while the rest are checked
        try:
            checked, seen = [], set()
            for i, it in enumerate(items):
                checked.append(self._check_item(i, it, seen))
                if i + 1 in ends:
                    if workers is None:
                        workers = _prepare_procs.Workers(self._item_entries(items), self.config, self.device, procs,
                                                         chunks, batch_of, ready=i + 1)
                    else:
                        workers.release(i + 1)
            kinds = {_acc.label_kind(sk.classes["labels"]) for _, sk, _ in checked if sk.classes is not None}
            with self.store.read() as txn:
                taken = [n for n in seen if txn.exists("names", n.encode("utf-8"))]
                held = {k for k, c in _parts.label_kinds(txn).items() if c > 0} if kinds else set()
            if taken:
                raise E.EntryExistsError(f"entries named {sorted(taken)[:5]} exist: remove them first or choose other "
                                         "names")
            if len(kinds | held) > 1:   # checked here, not in a later batch's write (parts.count_label_kind)
                raise E.LabelError(f"the items' labelled sketches{' and the hub' if held else ''} have int and str "
                                   "labels: use one label vocabulary in a hub (map the labels to one kind)")
            # every entry built (its class record's performance included) before anything is written: an
            # error there leaves the hub unchanged, whatever the threads
            news = [self._new_entry(name, sk, md, None, checked=True) for name, sk, md in checked]
        except BaseException:
            if workers is not None:
                workers.close(abort=True)
            raise
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(checked), desc="add", unit="entry")
        batches = [news[lo:lo + batch] for lo in range(0, len(news), batch)]
        compacted = False
        try:   # each batch prepared at once, the next one in threads while this one is written (parts.batch_writers)
            with contextlib.closing(_parts.batch_writers(batches, self.config, self.device, self._entry,
                                                         threads, procs, workers)) as writers:
                for k, (chunk, write) in enumerate(writers):
                    self._transact(write, reserve=_adding.batch_bytes([n.sketch for n in chunk], self.config))
                    if bar is not None:
                        bar.update(len(chunk))
                    if not compacted and k + 1 < len(batches):   # the next batch is being prepared meanwhile
                        compacted = self._compact_bands_if_due()
        finally:
            if workers is not None:
                workers.close(abort=True)   # nothing where batch_writers closed them (every exit but a generator never started)
            if bar is not None:
                bar.close()
        if not compacted:   # once a call: a bulk load's postings are moved once, not every batch
            self._compact_bands_if_due()
        return len(checked)

    def _check_item(self, i: int, it, seen: set) -> tuple:
        """Item ``i`` of ``add_sketches`` checked: ``(name, sketch, metadata)``; its name added to ``seen``."""
        if not isinstance(it, (tuple, list)) or len(it) not in (2, 3):
            raise E.InvalidArgumentError(f"item {i} is {type(it).__name__}: give (name, sketch) or "
                                         "(name, sketch, metadata) tuples")
        name, sk = _check_name(it[0]), it[1]
        if name in seen:
            raise E.EntryExistsError(f"name {name!r} appears twice in the items: names are unique")
        seen.add(name)
        self._check_sketch(sk)
        return name, sk, _check_metadata(it[2] if len(it) == 3 else None)   # also: storable by msgpack

    def _item_entries(self, items: list):
        """``(lo, hi) -> the NewEntry of items[lo:hi]``, as ``add_sketches`` builds them from checked items:
        what a forked worker (engine/prepare_procs.py) calls on its copy of ``items``, for chunks of
        items the caller checked (it sends no other)."""
        def entries(lo: int, hi: int) -> list:
            return [self._new_entry(_check_name(it[0]), it[1], _check_metadata(it[2] if len(it) == 3 else None), None,
                                    checked=True) for it in items[lo:hi]]

        return entries

    def _check_sketch(self, sketch) -> None:
        if not isinstance(sketch, Sketch):
            raise E.InvalidArgumentError(f"sketch must be a fitsketch Sketch, got {type(sketch).__name__}")
        if tuple(sketch.config_key) != self.config.sketch_key():
            raise E.InvalidArgumentError(
                "the sketch was built with other parameters than this hub's: build it with hub.config")
        check_sketch(sketch, self.config)   # every array's shape and range: no entry can break a search
        if sketch.classes is not None:      # before any write (add_sketches writes in batches)
            try:
                _acc.check_record({**sketch.classes, "perf": None}, sketch.n_features)
            except (E.CorruptHubError, TypeError):
                raise E.InvalidArgumentError(
                    "the sketch's class record (Sketch.classes) is malformed: build the sketch with "
                    "fitsketch.sketch_data(..., labels=...) or merge sketches that were") from None

    def _add(self, name: str, sketch: Sketch, metadata: dict, fleet: list | None, embedding=None,
             probed=None, spaces: dict | None = None) -> Entry:
        entry = self._transact(self._writer(name, sketch, metadata, fleet, embedding, probed, spaces))
        self._compact_bands_if_due()
        return entry

    def _compact_bands_if_due(self) -> bool:
        """Compact the band postings (engine/band_blocks.py) once the postings added since the last
        compaction outgrow ``1 / COMPACT_SHARE`` of those compacted (and ``COMPACT_MIN``), at most
        ``AUTO_STEPS`` chunks of ``COMPACT_CHUNK`` postings a call (the next add carries on: the first
        add after upgrading a large hub does not move its whole index). It runs after the add has
        committed, so a failure (a damaged block, a full disk) is logged, not raised -- a retry of the
        add would meet EntryExistsError -- and the next add or ``hub.compact()`` tries again; Ctrl-C
        is re-raised, the entries committed before it added. Returns whether it was due (and tried).
        ``add_sketches`` runs it after the first batch past which it is due while the workers prepare
        the next batch, else at the end of the call: its one core's work then overlaps theirs."""
        due = False
        try:
            with self.store.read() as txn:
                due = _blocks.due(txn)
            if due:
                _blocks.compact(self.store, most=_blocks.AUTO_STEPS)
        except Exception as e:
            log.warning("hub at %s: the entries were added, but compacting their band postings failed (%s: %s); "
                        "searches read them uncompacted: the next add or hub.compact() retries", self.path,
                        type(e).__name__, e)
        except KeyboardInterrupt:
            log.warning("hub at %s: interrupted while compacting the band postings; the entries committed before "
                        "were added", self.path)
            raise
        return due

    def _writer(self, name: str, sketch: Sketch, metadata: dict, fleet: list | None, embedding=None,
                probed=None, spaces: dict | None = None):
        """The function that writes entry ``name`` inside a write transaction (all checks done first)."""
        return _parts.entry_writer(self._new_entry(name, sketch, metadata, fleet, embedding, probed, spaces),
                                   self.config, self.device, self._entry)

    def _new_entry(self, name: str, sketch: Sketch, metadata: dict, fleet: list | None, embedding=None,
                   probed=None, spaces: dict | None = None, checked: bool = False) -> _parts.NewEntry:
        if not checked:   # add_sketches checked every name, metadata and sketch before writing any
            name = _check_name(name)
            metadata = _check_metadata(metadata)
            self._check_sketch(sketch)
        if sketch.classes is not None and not (spaces and "classes" in spaces):   # add_sketches: no performance
            classes = _acc.check_record({**sketch.classes, "perf": None}, sketch.n_features)
            spaces = {**(spaces or {}), "classes": {**classes, "perf": _acc.performance(classes, columns=sketch.names)}}
        return _parts.NewEntry(name, sketch, metadata, fleet, embedding, probed, spaces)

    def remove(self, name: str) -> None:
        """Delete entry ``name`` and all its sketches in one transaction."""
        name = _check_name(name)
        self._transact(_parts.entry_remover(name, self.config, lambda: E.EntryNotFoundError(
            f"no entry named {name!r} in hub {self.path}: see hub.names()")))

    def compact(self, *, file: bool = True) -> dict:
        """Move the band postings added since the last compaction into their compressed blocks
        (engine/band_blocks.py: one write transaction per chunk of key range; readers and other
        processes carry on) and drop removed entries' postings from every block, then, with ``file=True``, rewrite the hub's file to its live size
        (removed entries' pages are otherwise kept, for reuse, and the file never shrinks): a
        compacting copy, then an atomic swap, under the writer lock. The file step needs the hub to
        itself: with another process on it (``fitsketch serve``, a reader) it raises HubBusyError before
        writing anything (checked first, so a caller retrying on it does not grow the file each time;
        ``file=False`` compacts the postings alone, beside other processes). Returns
        {"band_transactions", "before", "after"} (bytes; before = after without ``file``)."""
        try:
            if file and not self.store.readonly and not self.store.alone():
                raise E.HubBusyError(f"hub at {self.path} is open in another process (a server or a reader): stop "
                                     f"it, then compact (or compact(file=False): the band postings only)")
            steps = _blocks.compact(self.store) + _blocks.sweep(self.store)   # then removed entries' postings
            if not file:
                n = self.store.env_bytes()
                return {"band_transactions": steps, "before": n, "after": n}
            before, after = self.store.compact()
        except E.FitsketchError:
            raise
        except Exception as e:
            raise E.translate(e) from None
        return {"band_transactions": steps, "before": before, "after": after}

    def _transact(self, fn, reserve: int = 0):
        try:
            return self.store.transact(fn, reserve=reserve)
        except E.FitsketchError:
            raise
        except Exception as e:
            raise E.translate(e) from None

    # ------------------------------------------------------------------ components
    sample = _part("_embeddings", Embeddings.sample)
    nearest = _part("_embeddings", Embeddings.nearest)
    train_deephash = _part("_embeddings", Embeddings.train_deephash)
    add_probes = _part("_probelog", ProbeLog.add_probes)
    probe_set = _part("_probelog", ProbeLog.probe_set)
    probes = _part("_probelog", ProbeLog.probes)
    probe_sets = _part("_probelog", ProbeLog.probe_sets)
    probe = _part("_probelog", ProbeLog.probe)
    add_model = _part("_probelog", ProbeLog.add_model)
    remove_model = _part("_probelog", ProbeLog.remove_model)
    model_logits = _part("_probelog", ProbeLog.model_logits)
    models = _part("_probelog", ProbeLog.models)
    search_logits = _part("_probelog", ProbeLog.search_logits)
    search_concept = _part("_probelog", ProbeLog.search_concept)
    concept_descriptors = _part("_probelog", ProbeLog.concept_descriptors)
    probelog_index_paths = _part("_probelog", ProbeLog.probelog_index_paths)

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
        matches, plan = self._search(data, k=k, method=method, where=where, feature_names=feature_names,
                                     overrides=overrides, embedding=embedding, n_emb=embedding_candidates)
        plan.matches, plan.source = matches, (self, data, {"feature_names": feature_names, "where": where,
                                                           "overrides": overrides})
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

    def _search(self, data, *, k, method, where, feature_names, overrides, embedding=None, n_emb=100):
        return _pipeline.search(self, data, k=k, method=method, where=where, feature_names=feature_names,
                                overrides=overrides, embedding=embedding, n_emb=n_emb)

    def _profile_index(self) -> _profiles.ProfileIndex:
        return self._indexes.profile_index()

    def _synced_profiles(self, *, build_index: bool = False) -> _profiles.ProfileIndex:
        return self._indexes.profiles(self.store, build_index=build_index)

    def _synced_screen(self) -> _screen.ScreenIndex:
        return self._indexes.screen(self.store)

    @_translated
    def warm(self) -> int:
        """Load what a first search would otherwise load: every entry's screen data and profile and
        the FAISS index over the profiles, and write both to ``<hub>/indexes/*.fsidx`` so the next
        open reads them instead of every record (44k entries: 47.8 s rebuilt, 0.18 s from the
        files; bench/SUMMARY.md). Returns the number of entries in memory.

        A search loads whatever is missing on its own; call this after opening a big hub so the
        first query is not the slow one. ``fitsketch serve`` does it in the background as it starts."""
        self._synced_screen()
        return len(self._synced_profiles(build_index=True))

    def _has_labelled(self) -> bool:
        """Whether the hub holds an entry registered with labels (the label-kind counts in meta)."""
        with self.store.read() as txn:
            return any(_parts.label_kinds(txn).values())


_count_label_kind = _parts.count_label_kind   # its old home
