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

from . import methods as _methods
from .methods import NO_SHORTLIST, ShortlistRule  # noqa: F401 - ShortlistRule: its old home
from .plan import Plan, Stage  # noqa: F401 - their old home

SCAN_FEATURE_LIMIT = 50_000  # stored features up to which the candidate stage scans them all
SHORTLIST_FACTOR = 4         # the profile shortlist runs above SHORTLIST_FACTOR x shortlist entries
SHORTLIST_MARGIN_CAP = 8     # a proxy's margin keeps at most SHORTLIST_MARGIN_CAP x shortlist entries


def order_filter_first(mode: str) -> bool:
    """Whether a metadata filter runs before the MinHash stage.

    Costs per entry: the filter reads one small record (~1 unit); the exact scan compares every
    stored feature signature with every target feature (T x F x num_perm / 4096 units, >= 1 for
    any real sketch); the LSH stage costs T x L lookups in all, independent of the entries, and
    leaves only the entries colliding in some band. So: filter first before a scan, after LSH.
    """
    return mode == "scan"


def shortlist_rule(method: str) -> ShortlistRule:
    """How ``method`` is shortlisted on a large hub: its ``Method.shortlist`` in the registry
    (engine/methods/); a name the registry does not know is never shortlisted (every entry is scored,
    slow on a large hub but never losing an answer)."""
    m = _methods.find(method)
    return NO_SHORTLIST if m is None else m.shortlist


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
