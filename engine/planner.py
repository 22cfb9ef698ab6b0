"""Query plans: the stages a search runs, chosen from hub statistics, printable (``explain``).

A plan is built before the query runs (with estimated candidate counts and costs) and filled
in while it runs (actual counts and time per stage), like SQL's EXPLAIN ANALYZE.

Stages: FAISS embedding shortlist (when the query brings an embedding) or, on a large hub, the
candidate stage (``use_shortlist``; the method's ``ShortlistRule`` says how: engine/screen.py
computes its own score for every entry, or engine/profiles.py's random projections when the
query asks ``shortlist_screen="profile"``) -> metadata filter and
MinHash overlap (by scanning every stored feature signature or through the banded LSH tables),
in the order their costs give (``order_filter_first``) -> scoring (adaptivity / coverage / js /
exact-js / l2 / simex) -> rerank and cut to k. The candidate stage scans when the hub holds few features (the scan is
exact and cheaper than ``n_target_features * lsh_l`` random lookups plus verification) and uses
the LSH tables otherwise.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field

SCAN_FEATURE_LIMIT = 50_000  # stored features up to which the candidate stage scans them all
SHORTLIST_FACTOR = 4         # the profile shortlist runs above SHORTLIST_FACTOR x shortlist entries
SHORTLIST_MARGIN_CAP = 8     # a proxy's margin keeps at most SHORTLIST_MARGIN_CAP x shortlist entries


@dataclass
class Stage:
    name: str
    detail: str
    estimated: int | None = None     # estimated rows (entries or features) out of this stage
    actual: int | None = None
    ms: float | None = None
    recall: float | None = None      # candidate stages: estimated recall of the exhaustive top k


@dataclass
class Plan:
    method: str
    k: int
    stages: list[Stage] = field(default_factory=list)

    @contextmanager
    def run(self, stage: Stage):
        self.stages.append(stage)
        t0 = time.perf_counter()
        try:
            yield stage
        finally:
            stage.ms = (time.perf_counter() - t0) * 1e3

    def to_dict(self) -> dict:
        return {"method": self.method, "k": self.k,
                "stages": [dict(s.__dict__) for s in self.stages]}

    def __str__(self) -> str:
        lines = [f"plan: method={self.method} k={self.k}"]
        for i, s in enumerate(self.stages):
            est = "-" if s.estimated is None else str(s.estimated)
            act = "-" if s.actual is None else str(s.actual)
            ms = "-" if s.ms is None else f"{s.ms:.2f} ms"
            rec = "" if s.recall is None else f", estimated recall {s.recall:.2f}"
            lines.append(f"  {i + 1}. {s.name:<12} {s.detail}  (estimated {est}, actual {act}, {ms}{rec})")
        return "\n".join(lines)


def order_filter_first(mode: str) -> bool:
    """Whether a metadata filter runs before the MinHash stage.

    Costs per entry: the filter reads one small record (~1 unit); the exact scan compares every
    stored feature signature with every target feature (T x F x num_perm / 4096 units, >= 1 for
    any real sketch); the LSH stage costs T x L lookups in all, independent of the entries, and
    leaves only the entries colliding in some band. So: filter first before a scan, after LSH.
    """
    return mode == "scan"


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
    recall with it); at most ``SHORTLIST_MARGIN_CAP x shortlist`` entries."""
    screen: str | None
    exact: bool = False
    measured_recall: float | None = None
    margin: float | None = None


# a method not listed here (a new one, e.g. predicted accuracy) is never shortlisted until it
# declares a rule: every entry is scored, which is slow on a large hub but never loses an answer
SHORTLIST_RULES = {
    # js / adaptivity: exact for queries of >= query_min_partitions x partition_size rows (the stored
    # band keys); a smaller query is scored with query-time bands, so its screen is the exact-js
    # proxy (the closeness the scorer adds under one LSH step), widened by a margin: the largest gap
    # between the proxy's 10th best and an exhaustive top-10 entry over 100 small queries on the
    # digits label-skew zoo of 1,000 entries (js 0.0148; chosen there), 0.015. Held out (MNIST-5k, 100
    # queries): the best entry lay within 0.0075 in every query, the whole top 10 within 0.015 in >= 95%;
    # recall@10 0.89 / best 95% with the top 100 alone (no margin), the stated lower bound. The margin
    # keeps ~20-30% of a 1k zoo (median 192 digits / 311 MNIST): a small query on similar entries
    # costs that much more (bench/SUMMARY.md). adaptivity: digits gap 0.0119, MNIST best within 0.0082,
    # recall 0.88 / best 94% without the margin (held out)
    "adaptivity": ShortlistRule("adaptivity", exact=True, measured_recall=0.88, margin=0.015),
    "js": ShortlistRule("js", exact=True, measured_recall=0.89, margin=0.015),
    "exact-js": ShortlistRule("exact-js", exact=True),
    # l2 (scaled by each feature's spread, issue 20): the screen computes hub._l2 itself, the spread
    # from each feature's stored variance about its mean (engine/screen.py _variance)
    "l2": ShortlistRule("l2", exact=True),
    # coverage codes the query's rows per entry, which no stored summary reproduces; exact-js of the
    # dataset-level distributions ranks its entries: recall@10 0.975 (best found 8/8) on the digits
    # label-skew zoo of 1,300 entries where this was chosen, 1.00 (6/6) on the held-out MNIST-5k
    # zoo of 1,100 (python -m bench.bench_shortlist --similar digits|mnist); the lower is stated
    # (before the margin); the margin is its largest gap on the digits zoo's tuning queries (0.0023), doubled
    "coverage": ShortlistRule("exact-js", exact=False, measured_recall=0.97, margin=0.005),
    "simex": ShortlistRule(None),       # autoencoders: nothing stored summarizes them
    # predicted accuracy: the labelled entries nearest the query by exact-js (its class mixture
    # moves the dataset-level distribution); a proxy whose recall is not measured yet. method="auto"
    # is screened as "accuracy" on a hub with labelled entries, as its label-free default otherwise
    "accuracy": ShortlistRule("exact-js", exact=False),
}


def shortlist_rule(method: str) -> ShortlistRule:
    return SHORTLIST_RULES.get(method, ShortlistRule(None))


def use_shortlist(n_entries: int, shortlist: int, method: str, filtered: bool = False) -> tuple[bool, str]:
    """Whether the candidate stage (shortlist) runs before the MinHash stage, and why.

    Scoring costs about a millisecond per candidate entry (alignment, histograms, JS-LSH); the
    screen costs a few vectorized passes over every entry's stored dataset-level histogram
    (engine/screen.py), the profile stage one inner product per entry in one FAISS call.
    It runs once the hub holds more than ``SHORTLIST_FACTOR x shortlist`` entries, for methods
    whose ``shortlist_rule`` names a screen (SimEx and unlisted methods score every entry), and not
    with a metadata filter (the best screened entries could all fail the filter).
    """
    if shortlist <= 0:
        return False, "shortlist=0: every entry is scored"
    if shortlist_rule(method).screen is None:
        return False, f"{method} declares no shortlist screen: every entry is scored"
    if filtered:   # the nearest profiles may all fail the filter: every entry passing it is scored
        return False, "a metadata filter applies: every entry passing it is scored"
    if n_entries <= SHORTLIST_FACTOR * shortlist:
        return False, f"{n_entries} entries <= {SHORTLIST_FACTOR} x shortlist {shortlist}: every entry is scored"
    return True, f"{n_entries} entries > {SHORTLIST_FACTOR} x shortlist {shortlist}"


def choose_candidate_stage(n_stored_features: int, n_target_features: int, lsh_l: int) -> tuple[str, str, int]:
    """``("scan" | "lsh", reason, estimated cost in signature comparisons or lookups)``."""
    scan_cost = n_stored_features * n_target_features
    lsh_cost = n_target_features * lsh_l
    if n_stored_features <= SCAN_FEATURE_LIMIT:
        return "scan", f"{n_stored_features} stored features <= {SCAN_FEATURE_LIMIT}: exact scan", scan_cost
    return "lsh", f"{n_stored_features} stored features: {lsh_cost} LSH band lookups", lsh_cost
