"""What a search method is: the ``Method`` protocol, the ``Query`` it scores and the ``ScoreContext``
it scores in. A method is one object in the registry (engine/methods/__init__.py); the pipeline
(engine/pipeline.py), the planner and the sharded hub ask it what they need to know instead of
comparing method names.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..results import Match, make_match
from ..storage import u64

# what a method may need of a query or of the stored entries
ROWS = "rows"               # the query's rows (a sketch alone is not enough): sharded search ships the data
HISTOGRAMS = "histograms"   # the stored partition histograms
EMBEDDINGS = "embeddings"   # sample embeddings (stored with hub.add(embedding=...), given with the query)
LABELS = "labels"           # class-conditional records of entries registered with labels


@dataclass(frozen=True)
class ShortlistRule:
    """How a method is shortlisted on a large hub (engine/screen.py).

    ``screen``: what the candidate stage computes for every entry -- ``"exact-js"``, ``"l2"``,
    ``"js"`` or ``"adaptivity"`` (the scorers' own formulas over the stored dataset-level
    histograms, means and JS-LSH band keys) -- or None: the method is never shortlisted and every
    entry is scored. ``exact``: the screen is the method's own score, so the stage keeps the
    exhaustive top ``shortlist`` (recall 1 over entries aligned by column name); otherwise it is a
    proxy, and ``measured_recall`` is its recall@10 measured by ``bench.bench_shortlist`` on zoos
    of similar entries (None: not measured). ``margin``: entries screened by a proxy (all of them
    for a proxy rule; for an exact rule those its screen cannot score, e.g. a small query's
    query-time JS-LSH bands) are kept when their proxy score is within ``margin`` of the proxies'
    k-th best, besides the top ``shortlist`` -- the largest gap between the proxy's k-th best and an
    exhaustive top-k entry measured on the tuning zoo, widened (``measured_recall`` is then the
    recall without it, the stated lower bound); at most ``planner.SHORTLIST_MARGIN_CAP x shortlist``
    entries."""
    screen: str | None
    exact: bool = False
    measured_recall: float | None = None
    margin: float | None = None


NO_SHORTLIST = ShortlistRule(None)


@dataclass(frozen=True)
class Query:
    """What one query brings: its sketch, and where it was given as data its frame and the rows
    coded for coverage; a query given as a ``Sketch`` has neither (row-level methods fall back or
    refuse). Built once per search by the pipeline; no scorer changes it or its sketch."""
    sketch: Any                   # fitsketch.sketch.Sketch
    frame: Any = None             # the query as a pandas DataFrame (None: a sketch was given)
    rows: np.ndarray | None = None        # coverage row codes (Sketch.rows of a sketch built here)
    row_owner: np.ndarray | None = None
    embedding: Any = None         # search(embedding=...): a vector or sample embeddings
    mixture: Any = None           # method="accuracy": the query's class mixture, when known
    class_pool: Any = None        # method="accuracy" across shards: the pooled class counts, or "return"

    # the sketch's facts, read by every scorer
    names = property(lambda self: self.sketch.names)
    kinds = property(lambda self: self.sketch.kinds)
    hist = property(lambda self: self.sketch.hist)
    signatures = property(lambda self: self.sketch.signatures)
    sums = property(lambda self: self.sketch.sums)
    counts = property(lambda self: self.sketch.counts)
    n_features = property(lambda self: self.sketch.n_features)
    n_partitions = property(lambda self: self.sketch.n_partitions)
    n_rows = property(lambda self: self.sketch.n_rows)
    partition_size = property(lambda self: self.sketch.partition_size)
    left_out = property(lambda self: getattr(self.sketch, "left_out", None))

    def totals(self):
        return self.sketch.totals()


@dataclass
class ScoreContext:
    """Where a method scores: one read transaction (a consistent snapshot), the hub's stored
    parameters (``config``), the query's parameters (``cfg``: the hub's defaults and the query's
    overrides) and the device. ``score`` runs another registered method on some candidates (the
    fallbacks: coverage and auto score what they cannot by adaptivity)."""
    txn: Any
    config: Any       # the hub's SketchConfig
    cfg: Any          # this query's parameters
    device: str = "auto"

    def score(self, method: str, query: Query, cands: list, cfg=None) -> list[Match]:
        from . import get   # the registry (this package's __init__)

        ctx = self if cfg is None else ScoreContext(self.txn, self.config, cfg, self.device)
        return get(method).score(ctx, query, cands)

    @staticmethod
    def match(rec: dict, al, query: Query, score: float, method: str, evidence: dict) -> Match:
        return make_match(rec, al, query, score, method, evidence)


def unlabelled_group(m: Match) -> bool:
    """method="auto": entries registered without labels rank after the labelled ones."""
    return "registered without labels" in str(m.evidence.get("auto", ""))


class Method:
    """A search method. Subclass it, set the class attributes, implement ``score`` and add one line
    to the registry (engine/methods/__init__.py).

    ``name``: the ``method=`` string. ``needs``: what it reads (``ROWS``, ``HISTOGRAMS``,
    ``EMBEDDINGS``, ``LABELS``); a method needing ``ROWS`` gets the query's data shipped to served
    shards, the others a sketch. ``shortlist``: how the candidate stage screens it on a large hub
    (``NO_SHORTLIST``: every entry is scored). ``score(ctx, query, candidates)`` returns one
    ``Match`` per candidate it scores (higher is better); ``candidates`` are ``(entry record,
    minhash.Alignment)`` pairs that passed the MinHash overlap stage."""
    name: str = ""
    needs: frozenset = frozenset()
    shortlist: ShortlistRule = NO_SHORTLIST

    def screened_as(self, has_labelled, query, cfg) -> str:
        """The method whose shortlist rule screens this one (``has_labelled()``: whether the hub holds
        labelled entries; ``query`` / ``cfg``: the query and its parameters, for methods whose scorer
        depends on them)."""
        return self.name

    def tiebreak(self, m: Match) -> float:
        """Among equal scores, higher first (before overlap and name) when shards merge."""
        return 0.0

    def sort_key(self, m: Match) -> tuple:
        """The order in which matches of this method merge across shards."""
        return (unlabelled_group(m), -m.score, -self.tiebreak(m), -m.overlap, m.name)

    def score(self, ctx: ScoreContext, query: Query, cands: list) -> list[Match]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<method {self.name!r}>"


_SCORE_CHUNK = 1024    # candidates whose histograms are read and scored at a time (exact-js, l2, JS-LSH)


def source_dist(txn, rec: dict, al, n_t: int, per_dataset: bool, hist: dict | None = None):
    """An entry's stored partition histograms as distributions over the query's feature order
    (``hist``: the entry's histograms already read by ``source_hist``, so a scorer that needs two
    views of them reads and decodes them once)."""
    from ..partitions import aligned_distributions   # the kernels: loaded by a search, not by the registry

    fmap = np.full(len(rec["features"]), -1, dtype=np.int64)
    for tj, sf, _ in al.pairs:
        fmap[sf] = tj
    if hist is None:
        hist = source_hist(txn, rec)
    return aligned_distributions(hist, fmap, n_t, per_dataset=per_dataset, n_partitions=rec["n_partitions"])


def source_hist(txn, rec: dict) -> dict:
    """An entry's stored partition histograms, read and unpacked."""
    from ..partitions import unpack_hist

    return unpack_hist(txn.get("histograms", u64(rec["id"])))


def chunks(n: int):
    """``range`` objects of at most ``_SCORE_CHUNK`` candidates: bounded memory however many there are."""
    step = _SCORE_CHUNK   # read at call time: tests shrink it
    for lo in range(0, n, step):
        yield range(lo, min(n, lo + step))
