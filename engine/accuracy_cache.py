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
their per-class sum), the
(entries, classes) matrix of stored recalls and the entries' keys: ~1 KB an entry (no class
record is kept). ``MAX_SCHEMAS`` query schemas per generation, least recently used dropped. The
arrays are read-only: a caller that writes into a pool it was given gets an error, not a changed
cache."""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from . import errors as E

MAX_SCHEMAS = 4             # query schemas (tuples of column names) held per generation


@dataclass(frozen=True)
class ScreenData:
    keys: list              # (E,) u64 keys of the labelled entries sharing a column name with the query
    pool: dict | None       # their class pool over the query's columns (accuracy.class_pool_of); None if E = 0
    recalls: np.ndarray     # (E, len(pool["labels"])) stored recalls (accuracy.recall_vector), read-only
    given: np.ndarray       # (E,) bool: registered with class_accuracy= (screened exactly)
    damaged: frozenset      # keys of labelled entries whose class record is malformed (kept: the scorer names them)
    labelled: frozenset     # keys of every labelled entry


def screen_data(txn, names: list[str]) -> ScreenData:
    """The stage's data for a query with columns ``names``, read from the hub (the reference: what
    the stage computed per query before this cache)."""
    from . import accuracy as A
    from .storage import u64

    col_of = {n: j for j, n in enumerate(names)}
    entries, damaged, labelled = [], set(), set()
    for key in txn.keys("entries"):
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
    if not entries:
        return ScreenData([], None, np.zeros((0, 0)), np.zeros(0, bool), frozenset(damaged), frozenset(labelled))
    labels = sorted({c for _, cl, _, _ in entries for c in cl["labels"]}, key=A._sort_key)
    pl = A.class_pool_of([(cl, feats, fmap) for _, cl, fmap, feats in entries], labels, names)
    recalls = np.stack([A.recall_vector(cl["perf"], pl["labels"]) for _, cl, _, _ in entries])
    given = np.array([cl["perf"]["source"] == "class_accuracy" for _, cl, _, _ in entries], dtype=bool)
    parts = (pl.get("gauss") or {}).get("parts") or []
    comb = ()
    if parts:   # the class Gaussians summed once (accuracy_gauss.combined), not per query
        from .accuracy_gauss import combined

        pl["gauss"] = {**pl["gauss"], "_combined": combined(pl["gauss"])}
        comb = pl["gauss"]["_combined"][1:]
    for a in (recalls, given, pl["col"], pl["cls"], pl["bucket"], pl["count"], *comb,
              *(p[x] for p in parts for x in ("n", "mean", "scatter"))):
        a.setflags(write=False)
    return ScreenData([key for key, _, _, _ in entries], pl, recalls, given, frozenset(damaged), frozenset(labelled))


class ScreenCache:
    """:func:`screen_data` per query schema, for the hub's current generation (one per Hub:
    engine/indexes.py ``SearchIndexes.accuracy``)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.generation = None
        self._data: OrderedDict = OrderedDict()

    def get(self, txn, names: list[str]) -> ScreenData:
        """The stage's data for ``names`` at the generation of ``txn``'s snapshot."""
        gen = int(txn.get("meta", b"generation") or 0)
        key = tuple(names)
        with self.lock:
            if gen == self.generation and key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
        data = screen_data(txn, names)       # outside the lock: other schemas are served meanwhile
        with self.lock:
            if gen != self.generation:
                if self.generation is not None and gen < self.generation:
                    return data              # an older snapshot than the cache's: not kept
                self._data.clear()
                self.generation = gen
            self._data[key] = data
            while len(self._data) > MAX_SCHEMAS:
                self._data.popitem(last=False)
        return data
