"""The candidate stage of a search: the entries whose MinHash feature signatures overlap the
query's (found by scanning every stored signature or through the banded LSH tables, as the
planner chose), each with its feature ``Alignment``, and the metadata filter (``where=``) before
or after it, in the order their costs give (planner.order_filter_first)."""
from __future__ import annotations


import numpy as np

from . import band_blocks as _blocks
from . import errors as E
from . import signature_records as _sigrec
from .minhash import (Alignment, align_from_similarity, distribution_overlap, feature_band_keys, feature_dists,
                      hist_totals, is_generic, row_similarity, similarity)
from .partitions import unpack_hist
from .plan import Plan, Stage
from .planner import order_filter_first
from .storage import u64

_VERIFY_CHUNK = 4096   # entries whose signatures are read and compared at a time
MAX_FEATURE_PAIRS = 1 << 23  # (query column, stored feature) pairs one search verifies (~1 us each)


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


def candidates(txn, target, cfg, config, mode: str, reason: str, where: dict | None, allowed: set | None,
               plan: Plan, n_in: int):
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
            bands = feature_band_keys(target.signatures, config.lsh_k, config.lsh_l)   # the hub's stored LSH
            hits = {u64(int(i)) for i in _blocks.lookup(txn, bands)}   # the delta's postings and the blocks'
            if ids is not None:
                hits &= set(ids)
            keys = sorted(hits)
        out = []
        pairs = 0
        for lo in range(0, len(keys), _VERIFY_CHUNK):   # bounded memory however many entries are verified
            raw = [(key, txn.get("signatures", key)) for key in keys[lo:lo + _VERIFY_CHUNK]]
            # a posting whose entry is gone (one an older fitsketch's removal left in the band blocks,
            # engine/band_blocks.py) finds no entry: skipped, as the entry it named is
            chunk = [key for key, r in raw if r is not None]
            sigs = [_sigrec.decode(r) for _, r in raw if r is not None]
            rec_of = [recs.get(key) or txn.get("entries", key) for key in chunk]
            pairs += sum(_pairs(target, rec, sg.shape[0]) for rec, sg in zip(rec_of, sigs))
            if pairs > MAX_FEATURE_PAIRS:
                raise E.LimitExceededError(
                    f"the query's {target.n_features} columns would be compared with over "
                    f"{pairs // max(target.n_features, 1)} stored features, over the limit of {MAX_FEATURE_PAIRS} "
                    f"(query column, stored feature) pairs: query with fewer columns, or narrow the entries "
                    f"with where=")
            for key, rec, al in _verify(txn, target, cfg, chunk, sigs, rec_of):
                recs[key] = rec
                out.append((key, al))
        st.actual = len(out)
    if where and not order_filter_first(mode):
        kept = set(run_filter([key for key, _ in out], len(out)))
        out = [(key, al) for key, al in out if key in kept]
    return [(recs[key], al) for key, al in out]

def _pairs(target, rec, n_stored: int) -> int:
    """(query column, stored feature) pairs ``_verify`` compares for one entry: an entry with the
    target's columns in its order aligns by the identity (one pair per column), any other entry
    compares every query column with every stored feature."""
    return target.n_features if rec["features"] == target.names else target.n_features * n_stored


def _verify(txn, target, cfg, keys: list, sigs: list, rec_of: list):
    """(key, entry record, Alignment) of the entries among ``keys`` (records ``rec_of``) whose
    overlap passes t1."""
    # entries with the target's columns in its order align by the identity (minhash.
    # align_from_similarity): only the T same-name similarities are needed
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
