"""What the candidate stage of ``method="accuracy"`` reads of every labelled entry, held per hub
generation (engine/accuracy.py ``screen``).

The stage ranks every labelled entry sharing a column name with the query by its stored recalls
times the query's EM mixture over the *pool* of all their class records. Reading and decoding those
records and pooling them cost ~8 s CPU a query at 10k labelled entries (~80 % of the search), yet
none of it depends on the query's rows: only on the hub's entries (dated by the hub's
``b"generation"``, bumped by every add and remove) and on the query's column names (which entry
feature pools into which query column). :class:`ScreenData` is that part, computed by exactly the
code the stage ran before (``class_pool_of``, ``recall_vector``, the same entry order), so the
stage's scores are bit-identical with or without it (tests/test_accuracy_cache.py); the query's
rows then cost an EM over the pool and one matrix product.

Held: the pool (histograms summed per class and query column, and the class Gaussians' parts with
their per-class sum), the (entries, classes) matrices of stored recalls and of recall bounds
(accuracy_bound.py: what makes the stage exact), the entries' keys and
performance records: ~1-2 KB an entry without class Gaussians (their parts ~9-22 KB more, up to
``MAX_GAUSS_BYTES``); the recalls matrix is dense over the union of every entry's classes. At most
``MAX_SCHEMAS`` query schemas and ``MAX_CACHE_BYTES`` in all, least recently used dropped. After adds only the new entries are read and pooled
(:func:`extend`); after a remove every entry is read again. The arrays are read-only: a caller
that writes into a pool it was given gets an error, not a changed cache."""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from . import errors as E
from .accuracy_bound import recall_bound

MAX_SCHEMAS = 4             # query schemas (tuples of column names) held
MAX_CACHE_BYTES = 1 << 30   # bytes held over all schemas (estimated, :func:`nbytes`): least recently used
#                             dropped beyond it; a schema's data larger than this alone is used, not held
PERF_BYTES = 1024           # an entry's performance record held, estimated (measured ~0.7 KB with a confusion)
# the class Gaussians' parts kept per schema (~22 KB an entry of 10 classes; 2.2 GB at 100k): above
# this only their per-class sum is kept (all a query reads), and an add reads every entry again
MAX_GAUSS_BYTES = 256 << 20
READ_CHUNK = 2048           # entries read and pooled at a time (screen_data): their class records then dropped


@dataclass(frozen=True)
class ScreenData:
    keys: list              # (E,) u64 keys of the labelled entries sharing a column name with the query
    pool: dict | None       # their class pool over the query's columns (accuracy.class_pool_of); None if E = 0
    recalls: np.ndarray     # (E, len(labels)) stored recalls (accuracy.recall_vector; a given mixture's exact screen), read-only
    given: np.ndarray       # (E,) bool: registered with class_accuracy= (screened exactly)
    damaged: frozenset      # keys of labelled entries whose class record is malformed (kept: the scorer names them)
    labelled: frozenset     # keys of every labelled entry
    perfs: list = ()        # (E,) the entries' performance records (recalls again when a class is added)
    last_key: bytes = b""   # the largest entry key read (entry ids only grow)
    n_entries: int = 0      # entries of the hub when read
    generation: int = -1    # the hub generation read
    bound: np.ndarray | None = None   # (E, len(labels)) recall bounds (accuracy_bound.recall_bound), read-only
    labels: list = ()       # the classes of recalls and bound: the pool's and every class a performance record names


def _read(txn, names: list[str], after: bytes = b"", limit: int | None = None) -> tuple[list, set, set, bytes]:
    """``(entries, damaged, labelled, last key)`` of the hub's entries with a key after ``after``
    (the first ``limit`` of them, labelled or not, when given): entries [(key, class record,
    {entry feature: query column}, entry features)] of the labelled ones sharing a column name
    with the query."""
    from . import accuracy as A
    from .storage import u64

    col_of = {n: j for j, n in enumerate(names)}
    entries, damaged, labelled, last = [], set(), set(), after
    seen = 0
    for key in txn.keys("entries", start=after):
        if key <= after:
            continue
        if limit is not None and seen >= limit:
            break
        seen += 1
        last = max(last, key)
        rec = txn.get("entries", key)
        if not rec or not rec.get("labelled"):
            continue
        labelled.add(key)
        fmap = {sf: col_of[n] for sf, n in enumerate(rec.get("features") or []) if n in col_of}
        if not fmap:
            continue
        try:
            cl = A.check_record((txn.get("extra", u64(rec["id"])) or {}).get("classes"), len(rec["features"]))
        except E.CorruptHubError:
            damaged.add(key)
            continue
        entries.append((key, cl, fmap, rec["features"]))
    return entries, damaged, labelled, last


def _freeze(pl: dict, recalls: np.ndarray, given: np.ndarray) -> dict:
    """The pool with its class Gaussians' per-class sum (accuracy_gauss.combined, summed once, not
    per query), and every array read-only."""
    parts = (pl.get("gauss") or {}).get("parts") or []
    comb = ()
    if parts:
        from .accuracy_gauss import combined

        pl = {**pl, "gauss": {**pl["gauss"], "_combined": combined({**pl["gauss"], "_combined": None})}}
        comb = pl["gauss"]["_combined"][1:]
        if sum(p[x].nbytes for p in parts for x in ("n", "mean", "scatter")) > MAX_GAUSS_BYTES:
            pl["gauss"] = {**pl["gauss"], "parts": None}      # extend() then reads every entry again
            parts = []
    for a in (recalls, given, pl["col"], pl["cls"], pl["bucket"], pl["count"], *comb,
              *(p[x] for p in parts for x in ("n", "mean", "scatter"))):
        a.setflags(write=False)
    return pl


def screen_data(txn, names: list[str]) -> ScreenData:
    """The stage's data for a query with columns ``names``, read from the hub (the reference: what
    the stage computed per query before this cache). Read ``READ_CHUNK`` entries at a time: each
    chunk's class records are pooled and merged into the pool so far (``merge_pools``, as
    :func:`extend` merges; the same sums), and only what the recalls and bounds need of them is
    kept -- holding every decoded class record (~0.1-0.2 MB each on digits) ran a 100k-entry hub
    out of 24 GB of memory."""
    from . import accuracy as A

    gen = int(txn.get("meta", b"generation") or 0)
    n = txn.count("entries")
    pl, keys, slim, damaged, labelled, last = None, [], [], set(), set(), b""
    while True:
        entries, dmg, lab, nxt = _read(txn, names, last, READ_CHUNK)
        damaged |= dmg
        labelled |= lab
        if nxt == last:
            break
        last = nxt
        if entries:
            labels = sorted({c for _, cl, _, _ in entries for c in cl["labels"]}, key=A._sort_key)
            new = A.class_pool_of([(cl, feats, fmap) for _, cl, fmap, feats in entries], labels, names)
            pl = new if pl is None else _merged(pl, new)
            keys += [key for key, _, _, _ in entries]
            slim += [{"labels": cl["labels"], "counts": cl["counts"], "perf": cl["perf"]} for _, cl, _, _ in entries]
    if pl is None:
        return ScreenData([], None, np.zeros((0, 0)), np.zeros(0, bool), frozenset(damaged), frozenset(labelled),
                          [], last, n, gen, np.zeros((0, 0)), [])
    given = np.array([cl["perf"]["source"] == "class_accuracy" for cl in slim], dtype=bool)
    blabels = bound_labels(pl["labels"], slim)
    bound, recalls = _bounds(slim, blabels)
    return ScreenData(keys, _freeze(pl, recalls, given), recalls, given, frozenset(damaged), frozenset(labelled),
                      [cl["perf"] for cl in slim], last, n, gen, bound, blabels)


def _merged(old: dict, new: dict) -> dict:
    """The pool of old + new entries (``merge_pools``; an unfrozen ``old``, or one whose Gaussians'
    parts were kept): the Gaussians only where both carry them."""
    from . import accuracy as A

    base = {**old, "gauss": None if old.get("gauss") is None else
            {k: v for k, v in old["gauss"].items() if k != "_combined"}}
    if old.get("gauss") is None:   # some old entry lacks a Gaussian: the union has none
        new = {**new, "gauss": None}
    pl = A.merge_pools([base, new])
    if pl.get("gauss") is None:
        pl["gauss"] = None
    return pl


def bound_labels(pool_labels: list, records: list) -> list:
    """The classes a bound covers: the pool's (trained on by some entry) and every class an entry's
    performance names (``class_accuracy=`` / a confusion may name a class it was not trained on; the
    scorer reads that recall when the query's mixture -- given, or another shard's pool -- has it)."""
    from .accuracy import _sort_key

    return sorted(set(pool_labels) | {c for cl in records for c in cl["perf"]["labels"]}, key=_sort_key)


def _bounds(records: list, labels: list) -> tuple[np.ndarray, np.ndarray]:
    """(recall bounds, stored recalls) of ``records`` over ``labels``, read-only."""
    from . import accuracy as A

    bound = recall_bound(records, labels)
    stored = np.stack([A.recall_vector(cl["perf"], labels) for cl in records]) if records else np.zeros((0, len(labels)))
    bound.setflags(write=False)
    stored.setflags(write=False)
    return bound, stored


def extend(txn, old: ScreenData, names: list[str]) -> ScreenData | None:
    """``old`` brought to the generation of ``txn`` by reading only the entries added since (their
    keys are larger: ids only grow), or None when an entry was removed since (then it is read
    again whole). The pool of old + new entries is ``merge_pools`` of the two (integer counts: the
    same sums; the Gaussians' parts in the same canonical order), the recalls and recall bounds
    the old rows with the new ones below (every entry read again when a class was added: the
    bounds need the class records): equal to :func:`screen_data` (tests/test_accuracy_cache.py)."""
    from . import accuracy as A

    gen = int(txn.get("meta", b"generation") or 0)
    n = txn.count("entries")
    added = sum(1 for k in txn.keys("entries", start=old.last_key) if k > old.last_key)
    if n != old.n_entries + added:          # a removal: the old pool holds an entry no longer there
        return None
    if added > READ_CHUNK:                  # many adds: read in chunks, as a whole read does
        return screen_data(txn, names)
    entries, damaged, labelled, last = _read(txn, names, old.last_key)
    if not entries:
        return ScreenData(old.keys, old.pool, old.recalls, old.given, old.damaged | damaged, old.labelled | labelled,
                          old.perfs, last, n, gen, old.bound, old.labels)
    if old.pool is None or (old.pool.get("gauss") is not None and old.pool["gauss"].get("parts") is None):
        return screen_data(txn, names)      # nothing pooled yet, or the Gaussians' parts were not kept
    labels = sorted({c for _, cl, _, _ in entries for c in cl["labels"]}, key=A._sort_key)
    new = A.class_pool_of([(cl, feats, fmap) for _, cl, fmap, feats in entries], labels, names)
    pl = _merged(old.pool, new)
    records = [cl for _, cl, _, _ in entries]
    if bound_labels(list(old.labels) + pl["labels"], records) != list(old.labels):
        return screen_data(txn, names)      # a class no entry had: every bound again (from the class records)
    perfs = list(old.perfs) + [cl["perf"] for _, cl, _, _ in entries]
    b_new, r_new = _bounds(records, list(old.labels))
    bound, recalls = np.vstack([old.bound, b_new]), np.vstack([old.recalls, r_new])
    bound.setflags(write=False)
    given = np.concatenate([old.given, [cl["perf"]["source"] == "class_accuracy" for _, cl, _, _ in entries]])
    return ScreenData(old.keys + [key for key, _, _, _ in entries], _freeze(pl, recalls, given), recalls, given,
                      old.damaged | damaged, old.labelled | labelled, perfs, last, n, gen, bound, list(old.labels))


def nbytes(d: ScreenData) -> int:
    """Estimated bytes ``d`` holds: its arrays (the pool's, the class Gaussians' parts and sum, the
    recalls), ``PERF_BYTES`` a performance record and ~100 bytes a key."""
    def arrays(x) -> int:
        if isinstance(x, np.ndarray):
            return x.nbytes
        if isinstance(x, dict):
            return sum(arrays(v) for v in x.values())
        if isinstance(x, (list, tuple)):
            return sum(arrays(v) for v in x)
        return 0
    return (arrays(d.pool) + d.recalls.nbytes + arrays(d.bound) + d.given.nbytes
            + PERF_BYTES * len(d.perfs) + 100 * (len(d.keys) + len(d.labelled)))


class ScreenCache:
    """:func:`screen_data` per query schema, brought to the hub's current generation when asked
    (one per Hub: engine/indexes.py ``SearchIndexes.accuracy``): entries added since are read and
    pooled alone (:func:`extend`), a removal reads every entry again."""

    def __init__(self):
        self.lock = threading.Lock()
        self._data: OrderedDict = OrderedDict()
        self._bytes: dict = {}              # nbytes of each held schema's data, counted once when stored

    @property
    def generation(self):
        """The newest generation held (None when empty)."""
        with self.lock:
            return max((d.generation for d in self._data.values()), default=None)

    def get(self, txn, names: list[str]) -> ScreenData:
        """The stage's data for ``names`` at the generation of ``txn``'s snapshot."""
        gen = int(txn.get("meta", b"generation") or 0)
        key = tuple(names)
        with self.lock:
            old = self._data.get(key)
            if old is not None and old.generation == gen:
                self._data.move_to_end(key)
                return old
        data = None
        if old is not None and old.generation < gen:   # outside the lock: other schemas are served meanwhile
            data = extend(txn, old, names)
        if data is None:
            data = screen_data(txn, names)
        size = nbytes(data)
        with self.lock:
            cur = self._data.get(key)
            if size > MAX_CACHE_BYTES:                   # too large to hold: used for this search only
                self._data.pop(key, None)
                self._bytes.pop(key, None)
            elif cur is None or cur.generation <= gen:   # never replaced by an older snapshot's
                self._data[key] = data
                self._bytes[key] = size
                self._data.move_to_end(key)
            while len(self._data) > MAX_SCHEMAS or (len(self._data) > 1
                                                    and sum(self._bytes.values()) > MAX_CACHE_BYTES):
                self._bytes.pop(self._data.popitem(last=False)[0])
        return data
