"""The hub's in-memory search indexes, one component the Hub holds: the profile index
(engine/profiles.py) and the screen index (engine/screen.py), each brought to the hub's current
generation before use. Entries stored without a profile or screen record (older hubs) are
computed from their histograms.

Persisted beside the hub (derived data, like the FAISS indexes of engine/embeddings.py): reading
every entry's records back from LMDB costs ~70 s at a million entries, so each index is also kept
as ``<hub>/indexes/screen.fsidx`` and ``<hub>/indexes/profiles.fsidx`` (storage/arrayfile.py: named
NumPy arrays and a msgpack header, every array checksummed, no pickle). The header records
``SEARCH_INDEX_FORMAT``, the index's own layout (its class and attribute names), the hub's
identity (``created``, ``format``) and the parameters the index depends on (seed, ``jslsh_l``,
``hist_accuracy``), and the generation and entries it holds. On first use the file is read and
checked: another format, layout, hub or parameters, a generation after the hub's, a wrong entry
count at the hub's generation, a failed checksum or inconsistent arrays -> ignored (rebuilt from
LMDB). A file of an earlier generation is loaded and brought forward like the in-memory index
(entries added since by a range scan over ids, removed ones by a key scan: ids only grow). The
file is rewritten after a sync that read at least ``max(SAVE_MIN_CHANGES, SAVE_FRACTION * n)``
entries from LMDB or dropped as many since it was last written or read, and by ``hub.warm()``
whenever it loaded anything; a hub directory that cannot be written keeps its indexes in memory
only. Like the FAISS files, the check dates a file by the hub's identity and generation, not its
contents: restoring ``hub.lmdb`` alone from a backup and adding to it until it reaches the
file's generation again would pass it, so delete ``indexes/`` when restoring a hub by parts.
"""
from __future__ import annotations

import logging
import os

import faiss
import numpy as np

from . import accuracy_cache as _accuracy_cache
from . import coarse as _coarse
from . import faiss_files as _faiss_files
from . import profiles as _profiles
from . import screen as _screen
from .growable import Grow
from .partitions import unpack_hist
from .storage import CorruptHubError, from_u64, u64
from .storage.arrayfile import read_arrays, write_arrays

log = logging.getLogger(__name__)

SEARCH_INDEX_FORMAT = 1
SAVE_MIN_CHANGES = 2_000      # entries read from LMDB (or dropped) since the file: rewrite it from here
SAVE_FRACTION = 0.05          # ... or this share of the index, whichever is larger

# the attributes each index class holds; the file stores exactly these (another set: not persisted)
_SCREEN_GROW = ("ids", "_schema", "_f_lo", "_p_lo", "_jk_ok", "_jk_data", "_fi_name", "_fi_row", "_fi_lo",
                "_fi_mean", "_fi_sq", "_fi_live", "_fi_var", "_col", "_p", "_fi", "_plog", "_part_keys",
                "_part_row", "_jks_ok")
# a small query's js keys (screen.py): parameters and rows exist once an entry carried them
_SCREEN_ATTRS = frozenset(_SCREEN_GROW + ("lock", "generation", "l", "accuracy", "_names", "_coords",
                                          "_schema_id", "_schema_names", "_jks_params", "_jks_data"))
_PROFILE_ATTRS = frozenset(("lock", "generation", "n", "_ids", "_x", "_schema", "_schema_id", "_schema_names",
                            "_schema_live", "_faiss", "_faiss_n", "_trained_n"))
_PROFILE_OPTIONAL = frozenset(("_quantizer",))


class SearchIndexes:
    def __init__(self, config, device: str):
        self._config, self._device = config, device
        self._profiles: _profiles.ProfileIndex | None = None
        self._screen: _screen.ScreenIndex | None = None
        self._changes = {"profiles": 0, "screen": 0}   # entries read / dropped since the file
        # method="accuracy"'s candidate stage: the labelled entries' pool and recalls per generation
        self.accuracy = _accuracy_cache.ScreenCache()

    def profile_index(self) -> _profiles.ProfileIndex:
        """The profile index as it is (not synced)."""
        if self._profiles is None:
            self._profiles = _profiles.ProfileIndex()
        return self._profiles

    def profiles(self, store, *, build_index: bool = False) -> _profiles.ProfileIndex:
        """The in-memory profile index, brought to the hub's current generation."""
        config, device = self._config, self._device
        if self._profiles is None:
            self._profiles = self._load("profiles", store) or _profiles.ProfileIndex()
        idx = self._profiles
        with store.read() as txn:
            gen = int(txn.get("meta", b"generation") or 0)

            def missing(eid):
                rec, hist = txn.get("entries", u64(eid)), txn.get("histograms", u64(eid))
                hist = None if hist is None else unpack_hist(hist)
                return None if rec is None or hist is None else _profiles.record(
                    hist, rec["features"], rec["n_partitions"], config, device)[0]

            with idx.lock:
                if idx.generation != gen:
                    before = _ids_state(idx.ids)
                    idx.sync(txn, gen, missing)
                    self._count("profiles", before, idx.ids)
        if build_index:                 # hub.warm(): both files written whenever anything was loaded
            idx.build()
            if self._screen is not None:
                self._maybe_save("screen", store, self._screen, force=True)
                root = getattr(store, "path", None)      # a level-1 IVF file (two-level stage): read it now
                if root is not None and os.path.exists(_faiss_files.paths(root, "level1")[1]):
                    self.level1(store)
        self._maybe_save("profiles", store, idx, force=build_index)
        return idx

    def screen(self, store) -> _screen.ScreenIndex:
        """The in-memory screen index, brought to the hub's current generation."""
        config, device = self._config, self._device
        if self._screen is None:
            self._screen = self._load("screen", store) or _screen.ScreenIndex(int(config.jslsh_l),
                                                                               config.hist_accuracy)
        idx = self._screen
        with store.read() as txn:
            gen = int(txn.get("meta", b"generation") or 0)

            def missing(eids):
                # entries without a stored screen record (every one added since hub format 5): computed
                todo = []
                for eid in eids:
                    rec, hist = txn.get("entries", u64(eid)), txn.get("histograms", u64(eid))
                    if rec is not None and hist is not None:
                        todo.append((eid, rec, unpack_hist(hist)))
                recs = _screen.records([h for _, _, h in todo], [r["features"] for _, r, _ in todo],
                                       [r["sums"] for _, r, _ in todo], [r["counts"] for _, r, _ in todo], config.seed)
                return {eid: (srec, _profiles.stored_keys(txn, eid) or _profiles.record(
                    hist, rec["features"], rec["n_partitions"], config, device)[1])
                    for (eid, rec, hist), srec in zip(todo, recs)}

            with idx.lock:
                if idx.generation != gen:
                    before = _ids_state(idx.ids.v)
                    idx.sync(txn, gen, missing)
                    self._count("screen", before, idx.ids.v)
        self._maybe_save("screen", store, idx)
        return idx

    def level1(self, store):
        """The two-level stage's level-1 IVF (engine/coarse.py ``Level1Ann``) over the synced screen
        index, read from ``<hub>/indexes/level1.faiss`` when that file serves this hub and index, else
        built (and written); None below ``coarse.ANN_MIN_ENTRIES`` entries."""
        idx = self.screen(store)
        root = getattr(store, "path", None)
        if root is None:
            return _coarse.level1(idx)
        fpath, mpath = _faiss_files.paths(root, "level1")

        def ident() -> dict:
            with store.read() as txn:
                return {"hub": self._hub_identity(txn), "params": self._params()}

        want = ident()

        def load():
            return _faiss_files.load(fpath, mpath, fmt=_coarse.ANN_FORMAT,
                                     accept=lambda m: m.get("hub") == want["hub"] and m.get("params") == want["params"],
                                     decode=lambda index, meta: _coarse.Level1Ann.decode(index, meta, idx))

        return _coarse.level1(idx, load=load,
                              save=lambda ann: _faiss_files.save(fpath, mpath, ann.index, ann.meta(want)))

    # ------------------------------------------------------------------ persistence
    @staticmethod
    def _file(kind: str, store) -> str | None:
        path = getattr(store, "path", None)          # the hub directory (none: not persisted)
        return None if path is None else os.path.join(path, "indexes", f"{kind}.fsidx")

    def _count(self, kind: str, before: tuple[int, int], ids: np.ndarray) -> None:
        n0, last = before
        added = int(len(ids) - np.searchsorted(ids, last, side="right")) if len(ids) else 0
        self._changes[kind] += added + max(n0 + added - len(ids), 0)

    def _params(self) -> dict:
        c = self._config
        return {"seed": int(c.seed), "jslsh_l": int(c.jslsh_l), "hist_accuracy": float(c.hist_accuracy)}

    def _hub_identity(self, txn) -> dict:
        return {"created": txn.get("meta", b"created"), "format": txn.get("meta", b"format")}

    def _maybe_save(self, kind: str, store, idx, force: bool = False) -> None:
        path = self._file(kind, store)
        n = len(idx)
        if path is None or self._changes[kind] <= 0 or (
                not force and self._changes[kind] < max(SAVE_MIN_CHANGES, SAVE_FRACTION * n)):
            return
        with idx.lock, store.read() as txn:
            if idx.generation != int(txn.get("meta", b"generation") or 0):
                return                                    # the hub moved on: saved at a later sync
            try:
                state = (_screen_state if kind == "screen" else _profile_state)(idx)
            except _NotPersisted as e:
                log.info("%s index not persisted: %s", kind, e)
                self._changes[kind] = -(1 << 62)
                return
            meta = {"v": SEARCH_INDEX_FORMAT, "kind": kind, "layout": state.pop("__layout__"),
                    "hub": self._hub_identity(txn), "params": self._params(),
                    "generation": int(idx.generation), "entries": n, **state.pop("__meta__")}
            try:
                nbytes = write_arrays(path, meta, state)
            except OSError as e:              # a read-only hub directory or a full disk: kept in memory
                log.warning("%s index not written to %s (%s); kept in memory", kind, path, e)
                self._changes[kind] = -(1 << 62)
                return
            self._changes[kind] = 0
            log.info("%s index of %d entries (generation %d) written to %s, %.1f MB", kind, n, idx.generation,
                     path, nbytes / 1e6)

    def _load(self, kind: str, store):
        """The index read from its file, or None (no file, or one not valid for this hub: logged)."""
        path = self._file(kind, store)
        if path is None:
            return None
        try:
            meta, arrays = read_arrays(path)
            with store.read() as txn:
                gen = int(txn.get("meta", b"generation") or 0)
                why = _stale(meta, kind, self._hub_identity(txn), self._params(), gen, txn.count("entries"))
            if why:
                log.info("%s index file %s not used: %s; rebuilt from the hub", kind, path, why)
                return None
            idx = (_screen_from if kind == "screen" else _profile_from)(meta, arrays, self._config)
        except FileNotFoundError:
            return None
        except (CorruptHubError, _NotPersisted, KeyError, TypeError, ValueError, IndexError, RuntimeError) as e:
            log.warning("%s index file %s not used (%s); rebuilt from the hub", kind, path, e)
            return None
        log.info("%s index of %d entries (generation %d) read from %s", kind, len(idx), idx.generation, path)
        return idx


class _NotPersisted(Exception):
    """The index's layout is not the one this module stores, or its file is inconsistent."""


def _ids_state(ids: np.ndarray) -> tuple[int, int]:
    return len(ids), (int(ids[-1]) if len(ids) else -1)


def _stale(meta: dict, kind: str, hub: dict, params: dict, gen: int, n_entries: int) -> str:
    """Why a file's header does not fit this hub ('' when it does)."""
    if meta.get("v") != SEARCH_INDEX_FORMAT or meta.get("kind") != kind:
        return f"format {meta.get('v')} / kind {meta.get('kind')!r}, this fitsketch writes {SEARCH_INDEX_FORMAT}"
    if meta.get("hub") != hub:
        return "written for another hub (its creation time or format differs)"
    if meta.get("params") != params:
        return f"parameters {meta.get('params')} are not the hub's {params}"
    g = meta.get("generation")
    if not isinstance(g, int) or g > gen:
        return f"generation {g} is newer than the hub's {gen}"
    if g == gen and meta.get("entries") != n_entries:
        return f"{meta.get('entries')} entries at generation {g}, the hub holds {n_entries}"
    return ""


def _layout(obj, known: frozenset, optional: frozenset = frozenset()) -> list[str]:
    have = set(vars(obj))
    if not known <= have or have - known - optional:
        raise _NotPersisted(f"{type(obj).__name__} holds {sorted(have ^ known)} this module does not store")
    return [type(obj).__name__] + sorted(known)


def _ragged(seqs) -> tuple[np.ndarray, np.ndarray]:
    """(values, offsets) of a list of int sequences."""
    lens = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    off = np.zeros(len(seqs) + 1, dtype=np.int64)
    np.cumsum(lens, out=off[1:])
    vals = np.fromiter((int(v) for s in seqs for v in s), dtype=np.int64, count=int(off[-1]))
    return vals, off


def _unragged(vals: np.ndarray, off: np.ndarray, n: int) -> list[np.ndarray]:
    off = np.asarray(off, dtype=np.int64)
    if off.shape != (n + 1,) or off[0] != 0 or np.any(np.diff(off) < 0) or off[-1] != len(vals):
        raise _NotPersisted("ragged offsets are inconsistent")
    return [vals[off[i]:off[i + 1]] for i in range(n)]


def _check(cond: bool, what: str) -> None:
    if not cond:
        raise _NotPersisted(what)


# ---------------------------------------------------------------------- screen index
def _screen_state(idx: _screen.ScreenIndex) -> dict:
    layout = _layout(idx, _SCREEN_ATTRS)
    names_v, names_off = _ragged(idx._schema_names)
    st = {f"g{name}": getattr(idx, name).v for name in _SCREEN_GROW}
    st.update(names_keys=idx._names.keys, names_ids=idx._names.ids, coords_keys=idx._coords.keys,
              coords_ids=idx._coords.ids, schema_names=names_v, schema_off=names_off)
    st["__layout__"] = layout
    st["__meta__"] = {"l": int(idx.l), "accuracy": float(idx.accuracy), "jks_params": idx._jks_params}
    if idx._jks_data is not None:
        st["jks_data"] = idx._jks_data.v
    return st


def _screen_from(meta: dict, a: dict, config) -> _screen.ScreenIndex:
    idx = _screen.ScreenIndex(int(config.jslsh_l), config.hist_accuracy)
    _check(meta.get("layout") == _layout(idx, _SCREEN_ATTRS), "another screen index layout")
    _check(meta.get("l") == idx.l and meta.get("accuracy") == idx.accuracy, "other JS-LSH bands or accuracy")
    for name in _SCREEN_GROW:
        g = getattr(idx, name)
        v = a[f"g{name}"]
        _check(v.dtype == g.a.dtype and v.shape[1:] == g.a.shape[1:], f"array {name} has dtype {v.dtype}, "
               f"shape {v.shape}")
        g.a, g.n = v, len(v)
    n = idx.ids.n
    n_fi, n_z, n_p = idx._fi_row.n, idx._col.n, idx._part_row.n
    for g in ("_schema", "_f_lo", "_p_lo", "_jk_ok", "_jk_data"):
        _check(getattr(idx, g).n == n, f"{g} is not one per entry")
    for g in ("_fi_name", "_fi_lo", "_fi_mean", "_fi_sq", "_fi_live", "_fi_var"):
        _check(getattr(idx, g).n == n_fi, f"{g} is not one per feature instance")
    for g in ("_p", "_fi", "_plog"):
        _check(getattr(idx, g).n == n_z, f"{g} is not one per stored non-zero")
    _check(idx._part_keys.n == n_p, "_part_keys is not one per partition")
    _check(idx._jks_ok.n == n, "_jks_ok is not one per entry")
    jp = meta.get("jks_params")
    if jp is None:
        _check("jks_data" not in a and not idx._jks_ok.v.any(), "small-query keys without their parameters")
    else:
        _check(isinstance(jp, list) and len(jp) == 3 and all(isinstance(x, (int, float)) for x in jp)
               and isinstance(jp[2], int) and 0 < jp[2] <= 4096, "small-query key parameters are malformed")
        v = a.get("jks_data")
        _check(v is not None and v.dtype == np.uint32 and v.shape == (n, jp[2]), "small-query keys are not one "
               "row of the bands per entry")
        idx._jks_params = list(jp)
        idx._jks_data = Grow(np.uint32, jp[2])
        idx._jks_data.a, idx._jks_data.n = v, len(v)
    ids = idx.ids.v
    _check(n == meta.get("entries") and bool(np.all(np.diff(ids) > 0)) and (n == 0 or ids[0] >= 0),
           "entry ids are not increasing")
    for nm in ("names", "coords"):
        k, i = a[f"{nm}_keys"], a[f"{nm}_ids"]
        _check(k.dtype == np.int64 and i.dtype == np.int32 and k.shape == i.shape and k.ndim == 1
               and bool(np.all(np.diff(k) > 0)) and np.array_equal(np.sort(i), np.arange(len(i))),
               f"interned {nm} are inconsistent")
        it = getattr(idx, f"_{nm}")
        it.keys, it.ids = k, i
    n_names, n_coords = len(idx._names), len(idx._coords)
    sn = a["schema_names"]
    schemas = _unragged(sn, a["schema_off"], len(a["schema_off"]) - 1)
    _check(all(len(s) == 0 or (s.min() >= 0 and s.max() < n_names) for s in schemas), "schema names out of range")
    idx._schema_names = [s.astype(np.int32) for s in schemas]
    idx._schema_id = {tuple(s.tolist()): i for i, s in enumerate(idx._schema_names)}
    _check(len(idx._schema_id) == len(schemas), "repeated schemas")

    def within(x, lo, hi, what):
        _check(len(x) == 0 or (int(x.min()) >= lo and int(x.max()) < hi), f"{what} out of range")

    within(idx._schema.v, 0, len(schemas), "schema ids")
    within(idx._fi_name.v, 0, n_names, "feature names")
    within(idx._fi_row.v, 0, n, "feature rows")
    within(idx._col.v, 0, n_coords, "coordinates")
    within(idx._fi.v, 0, n_fi, "non-zero features")
    within(idx._part_row.v, 0, n, "partition rows")
    _check(bool(np.all(np.diff(idx._fi_row.v) >= 0)) and bool(np.all(np.diff(idx._fi.v) >= 0))
           and bool(np.all(np.diff(idx._part_row.v) >= 0)), "rows are not grouped")
    # each group's first row is exactly where its rows start (offsets that merely look monotone
    # would pass a weaker check and give wrong screens after the next remove)
    for lo, rows, m, what in ((idx._f_lo.v, idx._fi_row.v, n, "_f_lo"), (idx._fi_lo.v, idx._fi.v, n_fi, "_fi_lo"),
                              (idx._p_lo.v, idx._part_row.v, n, "_p_lo")):
        _check(np.array_equal(lo, np.searchsorted(rows, np.arange(m))), f"{what} offsets are inconsistent")
    idx.generation = int(meta["generation"])
    return idx


# ---------------------------------------------------------------------- profile index
def _profile_state(idx: _profiles.ProfileIndex) -> dict:
    layout = _layout(idx, _PROFILE_ATTRS, _PROFILE_OPTIONAL)
    n = idx.n
    tuples = list(idx._schema_id.items())
    tv, toff = _ragged([t for t, _ in tuples])
    sv, soff = _ragged([sorted(s) for s in idx._schema_names])
    st = {"ids": idx.ids, "x": idx.x, "schema": idx._schema[:n], "tuples": tv, "tuple_off": toff,
          "tuple_sid": np.array([s for _, s in tuples], dtype=np.int64), "names": sv, "names_off": soff,
          "live": np.asarray(idx._schema_live, dtype=np.int64)}
    ivf = idx._faiss is not None and isinstance(idx._faiss, faiss.IndexIVFFlat) and idx._faiss_n == n
    if ivf:
        st["faiss"] = faiss.serialize_index(idx._faiss)
    st["__layout__"] = layout
    st["__meta__"] = {"trained_n": int(idx._trained_n) if ivf else 0}
    return st


def _profile_from(meta: dict, a: dict, config) -> _profiles.ProfileIndex:
    idx = _profiles.ProfileIndex()
    _check(meta.get("layout") == _layout(idx, _PROFILE_ATTRS, _PROFILE_OPTIONAL), "another profile index layout")
    ids, x, schema = a["ids"], a["x"], a["schema"]
    n = len(ids)
    _check(n == meta.get("entries") and ids.dtype == np.int64 and bool(np.all(np.diff(ids) > 0))
           and (n == 0 or ids[0] >= 0), "entry ids are not increasing")
    _check(x.dtype == np.float32 and x.shape == (n, _profiles.PROFILE_DIM) and bool(np.isfinite(x).all()),
           "profiles are not (n, dim) float32")
    names = _unragged(a["names"], a["names_off"], len(a["names_off"]) - 1)
    n_schema = len(names)
    _check(schema.dtype == np.int32 and schema.shape == (n,) and (n == 0 or (schema.min() >= 0
                                                                             and schema.max() < n_schema)),
           "schema ids out of range")
    live = a["live"]
    _check(live.shape == (n_schema,) and np.array_equal(live, np.bincount(schema, minlength=n_schema)),
           "live counts do not match the entries")
    tuples = _unragged(a["tuples"], a["tuple_off"], len(a["tuple_off"]) - 1)
    sid = a["tuple_sid"]
    _check(sid.shape == (len(tuples),) and (len(sid) == 0 or (sid.min() >= 0 and sid.max() < n_schema)),
           "schema tuples out of range")
    idx._ids, idx._x, idx._schema, idx.n = ids, np.ascontiguousarray(x), schema, n
    idx._schema_names = [frozenset(v.tolist()) for v in names]
    idx._schema_live = live.tolist()
    idx._schema_id = {tuple(t.tolist()): int(s) for t, s in zip(tuples, sid)}
    _check(all(frozenset(t) == idx._schema_names[s] for t, s in idx._schema_id.items()), "schema tuples differ")
    if "faiss" in a:
        index = faiss.deserialize_index(np.asarray(a["faiss"], dtype=np.uint8))
        _check(isinstance(index, faiss.IndexIVFFlat) and index.ntotal == n and index.d == _profiles.PROFILE_DIM,
               "the stored FAISS index does not hold these profiles")
        _check_ivf_holds(index, idx._x)
        index.nprobe = _profiles.IVF_NPROBE
        idx._faiss, idx._faiss_n, idx._trained_n = index, n, int(meta.get("trained_n", n))
    idx.generation = int(meta["generation"])
    return idx


def _check_ivf_holds(index, x: np.ndarray) -> None:
    """The IVF's lists hold every profile exactly once, under its row as id, with its exact vector:
    ``ProfileIndex.top`` maps the ids the index returns through ``ids[...]``, so an id out of range
    would raise there and a permuted one would answer with another entry."""
    n, d = x.shape
    il = index.invlists
    seen = np.zeros(n, dtype=bool)
    for lst in range(index.nlist):
        sz = int(il.list_size(lst))
        if sz == 0:
            continue
        ids = faiss.rev_swig_ptr(il.get_ids(lst), sz).copy()
        _check(bool(np.all((ids >= 0) & (ids < n))) and not seen[ids].any()
               and len(np.unique(ids)) == sz, "the stored FAISS index holds other ids")
        codes = faiss.rev_swig_ptr(il.get_codes(lst), sz * index.code_size).copy()
        _check(np.array_equal(codes.view(np.float32).reshape(sz, d), x[ids]),
               "the stored FAISS index holds other vectors")
        seen[ids] = True
    _check(bool(seen.all()), "the stored FAISS index misses profiles")


__all__ = ["SearchIndexes", "SEARCH_INDEX_FORMAT", "from_u64"]
