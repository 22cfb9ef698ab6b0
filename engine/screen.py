"""Screens: the candidate stage of a large hub, computing for every entry what its method scores.

The first candidate stage (engine/profiles.py) ranked entries by a 128-dimensional random
projection, whose error (~1/sqrt(128) = 0.09 on a Bhattacharyya coefficient) exceeds the
differences between entries of one family: on 1,300 class-skewed samples of digits it kept the
best entry in 38% of queries. A screen instead keeps, per entry, the dataset-level data the
histogram methods score, in memory, and evaluates the method's own score for every entry whose
columns the query names, in a few vectorized passes:

* ``exact-js``: ``1 - JS(p_t, p_s)`` (base 2) of the dataset-level distributions over the features
  both name (each feature's histogram normalized, divided by the query's feature count, as
  engine/partitions.py ``aligned_distributions``): over the stored non-zeros,
  ``JS = (A + B) / 2 + sum_both [a log2(2a/(a+b)) + b log2(2b/(a+b)) - a - b] / 2`` where ``A``, ``B``
  are the two sides' masses on shared features;
* ``l2``: methods.exact._l2 -- per shared feature the difference of means in units of the pooled spread
  (each side's variance about its mean from its histogram's bucket values, stored per feature),
  or for a feature not numeric on both sides twice the squared distance of its normalized
  histograms (stored ``sum p^2`` and one gather for the cross term), plus the uncovered-feature term;
* ``js`` and ``adaptivity``: JS-LSH band collisions of the band keys stored with each entry
  (``jk_data``, ``jk_part``; engine/profiles.py ``record``), for entries whose columns are the
  query's in the query's order (the only alignment those keys are valid for).

These are the scorers' formulas, so the stage's ranking equals the exhaustive one wherever the
MinHash stage aligns the columns by name (the default: a same-name pair is always a candidate
and wins the assignment) -- its recall is 1 by construction, not estimated. Entries a screen
cannot score exactly for the method (JS-LSH keys for another column order or other ``jslsh_*``
parameters) are ranked by their exact-js screen as a proxy and kept apart, and the plan says how
many there were. Column names are hashed (63 bits), so renamed columns are invisible to the
screen (the planner then scores every entry when no stored column has one of the query's names).

Memory: ~16 bytes per stored non-zero (dataset-level histogram cell), ~33 per column, 4 x jslsh_l
bytes per entry and per partition: 11 KiB an entry of digits' 64 columns (555 cells on average).

Storage: the record ``{"v", "names" (int64 name keys of every feature, in order), "feat", "bucket",
"count" (dataset-level histogram, narrow ints), "sums", "counts"}`` is derived from the entry's
histograms and entry record (``record``). Hubs of format <= 4 stored it (database ``extra``, key
``b"d" + u64(entry id)``, 3-4 KB: a 4 KiB overflow page an entry); since format 5 it is not stored
and the index computes it when it loads an entry (``records``, a batch at a time: ~1.3 ms more
CPU an entry than reading it real-valued, ~0.48 ms merged; bench/SUMMARY.md "Size, eighth session"), then keeps it in ``<hub>/indexes/screen.fsidx``. Entries that have
one (added before format 5) are read from it.
"""
from __future__ import annotations

import threading

import numpy as np

from .growable import Grow as _Grow, Intern as _Intern
from .partitions import _narrow
from .storage import from_u64, u64

SCREEN_FORMAT = 1
_PREFIX = b"d"
_OFF = 1 << 31


def key(entry_id: int) -> bytes:
    """Key of an entry's screen record in database ``extra``."""
    return _PREFIX + u64(entry_id)


def record(hist: dict, names, sums, counts, seed: int) -> dict:
    """The stored screen record of a sketch (module docstring)."""
    from .profiles import name_keys

    feat = np.asarray(hist["feat"], dtype=np.int64)
    bucket = np.asarray(hist["bucket"], dtype=np.int64)
    fb = (feat << 32) + (bucket + _OFF)
    uniq, inv = np.unique(fb, return_inverse=True)
    c = np.bincount(inv, weights=np.asarray(hist["count"], dtype=np.float64), minlength=len(uniq))
    return record_of(name_keys(list(names), seed), uniq >> 32, (uniq & 0xFFFFFFFF) - _OFF, c, sums, counts)


SYNC_CHUNK = 1024    # entries a sync reads and computes at once (their histograms in memory together)


def records(hists: list, names: list, sums: list, counts: list, seed: int) -> list[dict]:
    """``record`` of every entry of a batch (``hists`` their COO histograms, ``names`` their
    feature names): the dataset-level histograms summed for the batch at once (profiles._aggregate,
    as ``Hub.add_sketches`` did when it stored the records), ~5x less CPU than one at a time.
    Entries of 2^16 features or more are computed alone."""
    from types import SimpleNamespace

    from .profiles import BATCH, _aggregate, name_keys

    out: list = [None] * len(hists)
    many = [i for i, n in enumerate(names) if len(n) < 1 << 16]
    for i in sorted(set(range(len(hists))) - set(many)):
        out[i] = record(hists[i], names[i], sums[i], counts[i], seed)
    for lo in range(0, len(many), BATCH):
        idx = many[lo:lo + BATCH]
        a = _aggregate([SimpleNamespace(hist=hists[i]) for i in idx])
        b = np.searchsorted(a["d_e"], np.arange(len(idx) + 1))
        for j, i in enumerate(idx):
            out[i] = record_of(name_keys(list(names[i]), seed), a["d_feat"][b[j]:b[j + 1]],
                               a["d_bucket"][b[j]:b[j + 1]], a["d_count"][b[j]:b[j + 1]], sums[i], counts[i])
    return out


def record_of(name_keys, feat, bucket, count, sums, counts) -> dict:
    """The screen record of a dataset-level histogram already summed over partitions (``feat``,
    ``bucket`` sorted and unique, ``count``) and the features' name keys: ``record`` of a batch
    (``Hub.add_sketches``, profiles._aggregate)."""
    return {"v": SCREEN_FORMAT, "names": np.asarray(name_keys, dtype=np.int64), "feat": _narrow(feat, False),
            "bucket": _narrow(bucket, True), "count": _narrow(np.rint(count).astype(np.int64), False),
            "sums": np.asarray(sums, dtype=np.float64), "counts": np.asarray(counts, dtype=np.int64)}


class ScreenIndex:
    """Every entry's screen data in memory, synchronized with the hub's generation (as
    profiles.ProfileIndex: new ids by a range scan, removals by comparing with the entries)."""

    def __init__(self, l: int, accuracy: float = 0.1):
        self.lock = threading.RLock()
        self.generation = -1
        self.l = l
        self.accuracy = float(accuracy)                # the hub's hist_accuracy (bucket values, for l2)
        self._names, self._coords = _Intern(), _Intern()
        self._schema_id: dict[tuple, int] = {}
        self._schema_names: list[np.ndarray] = []     # name ids of every feature, in order
        # per entry
        self.ids = _Grow(np.int64)
        self._schema = _Grow(np.int32)
        self._f_lo = _Grow(np.int64)                   # first feature instance
        self._p_lo = _Grow(np.int64)                   # first stored partition key row
        self._jk_ok = _Grow(bool)
        self._jk_data = _Grow(np.uint32, l)
        # a small query's js bands (profiles.record "jk_small"): of the first params seen, lazily sized
        self._jks_params = None
        self._jks_ok = _Grow(bool)
        self._jks_data = None
        # per feature instance (entry, feature)
        self._fi_name = _Grow(np.int32)
        self._fi_row = _Grow(np.int32)
        self._fi_lo = _Grow(np.int64)                  # first non-zero
        self._fi_mean = _Grow(np.float64)              # NaN when the feature has no numeric value
        self._fi_sq = _Grow(np.float64)                # sum of p^2 of its normalized histogram
        self._fi_live = _Grow(bool)                    # non-empty
        self._fi_var = _Grow(np.float64)               # l2's spread: variance about the mean (_variance)
        # per stored non-zero (dataset-level histogram cell), grouped by feature instance
        self._col = _Grow(np.int32)
        self._p = _Grow(np.float32)
        self._fi = _Grow(np.int32)                     # its feature instance
        self._plog = _Grow(np.float32)                 # p * log2(p), for the exact-js pass
        # per stored partition (JS-LSH keys of the identity alignment)
        self._part_keys = _Grow(np.uint32, l)
        self._part_row = _Grow(np.int32)

    def __len__(self) -> int:
        return self.ids.n

    def nbytes(self) -> int:
        return sum(g.v.nbytes for g in vars(self).values() if isinstance(g, _Grow))

    # ------------------------------------------------------------------ loading
    def sync(self, txn, generation: int, read_missing) -> None:
        """Bring the index to ``generation``: the entries with ids above the last one held, by a
        range scan of database ``entries``, each with its stored screen record where it has one
        (entries added before hub format 5) and ``read_missing(eids) -> {eid: (screen record, keys
        record)}`` computing those of the others from their histograms (every entry added since
        format 5: the record is derived, ``record``, and not stored)."""
        from .profiles import stored_keys

        with self.lock:
            if generation == self.generation:
                return
            last = int(self.ids.v[-1]) if self.ids.n else -1
            eids = [from_u64(k) for k in txn.keys("entries", start=u64(last + 1))]
            for lo in range(0, len(eids), SYNC_CHUNK):       # bounded memory: histograms read a chunk at a time
                chunk = eids[lo:lo + SYNC_CHUNK]
                stored = {eid: txn.get("extra", key(eid)) for eid in chunk}
                got = read_missing([eid for eid in chunk if stored[eid] is None])
                new = []
                for eid in chunk:
                    if stored[eid] is not None:
                        new.append((eid, stored[eid], stored_keys(txn, eid)))
                    elif got.get(eid) is not None:
                        new.append((eid, *got[eid]))
                if new and self.ids.n and new[0][0] <= int(self.ids.v[-1]):   # pragma: no cover - ids only grow
                    raise RuntimeError("screen records arrived out of order")
                if new:
                    self._append(new)
            if self.ids.n > txn.count("entries"):                   # removals
                present = np.fromiter((from_u64(k) for k in txn.keys("entries")), dtype=np.int64)
                self._keep(np.isin(self.ids.v, present))
            self.generation = generation

    def _append(self, new: list) -> None:
        from . import errors as E

        row0, f0, z0, s0 = self.ids.n, self._fi_row.n, self._col.n, self._part_row.n
        names, fi_row, fi_cnt, fi_mean, fi_sq, fi_live, fi_var = [], [], [], [], [], [], []
        coord_name_pos, buckets, probs = [], [], []
        jk_ok, jk_data, part_keys, part_row, p_lo = [], [], [], [], []
        jks_ok, jks_data = [], []
        n_fi, n_parts = f0, s0
        for r, (eid, rec, keys) in enumerate(new, start=row0):
            if rec.get("v") != SCREEN_FORMAT:
                raise E.SchemaError(f"screen record of entry {eid} has format {rec.get('v')}; this fitsketch "
                                    f"reads {SCREEN_FORMAT}: upgrade fitsketch")
            nk = np.asarray(rec["names"], dtype=np.int64)
            F = len(nk)
            feat = np.asarray(rec["feat"], dtype=np.int64)
            cnt = np.asarray(rec["count"], dtype=np.float64)
            tot = np.bincount(feat, weights=cnt, minlength=F)
            p = cnt / np.where(tot[feat] > 0, tot[feat], 1.0)
            sums, counts = np.asarray(rec["sums"], dtype=np.float64), np.asarray(rec["counts"], dtype=np.int64)
            names.append(nk)
            fi_row.append(np.full(F, r, dtype=np.int32))
            fi_cnt.append(np.bincount(feat, minlength=F))
            with np.errstate(invalid="ignore", divide="ignore"):
                fi_mean.append(np.where(counts > 0, sums / np.maximum(counts, 1), np.nan))
            fi_sq.append(np.bincount(feat, weights=p * p, minlength=F))
            fi_live.append(tot > 0)
            fi_var.append(_variance(feat, np.asarray(rec["bucket"], dtype=np.int64), p, fi_mean[-1], self.accuracy))
            coord_name_pos.append(n_fi - f0 + feat)
            buckets.append(np.asarray(rec["bucket"], dtype=np.int64))
            probs.append(p)
            n_fi += F
            ok = keys is not None and "jk_data" in keys and "jk_part" in keys
            jk_ok.append(ok)
            jk_data.append(np.asarray(keys["jk_data"], dtype=np.uint32)[0] if ok else np.zeros(self.l, np.uint32))
            if keys is not None and "jk_small" in keys and self._jks_params is None:
                self._jks_params = list(keys["jk_small_params"])
                self._jks_data = _Grow(np.uint32, int(self._jks_params[2]))
                self._jks_data.extend(np.zeros((row0, int(self._jks_params[2])), np.uint32))   # rows before: none
            oks = (keys is not None and "jk_small" in keys and list(keys["jk_small_params"]) == self._jks_params)
            jks_ok.append(oks)
            jks_data.append(np.asarray(keys["jk_small"], dtype=np.uint32)[0] if oks else None)
            p_lo.append(n_parts)
            if ok:
                pk = np.asarray(keys["jk_part"], dtype=np.uint32).reshape(-1, self.l)
                part_keys.append(pk)
                part_row.append(np.full(len(pk), r, dtype=np.int32))
                n_parts += len(pk)
        all_names = np.concatenate(names)
        name_ids = self._names.add(all_names)
        # schema ids (entries of one schema share one array of name ids)
        lo = 0
        schema = []
        for nk in names:
            ids = name_ids[lo:lo + len(nk)]
            lo += len(nk)
            t = tuple(ids.tolist())
            sid = self._schema_id.get(t)
            if sid is None:
                sid = self._schema_id[t] = len(self._schema_names)
                self._schema_names.append(ids.copy())
            schema.append(sid)
        cnp = np.concatenate(coord_name_pos)
        coords = (name_ids[cnp].astype(np.int64) << 32) + (np.concatenate(buckets) + _OFF)
        cnt_all = np.concatenate(fi_cnt)
        fi_lo = z0 + np.concatenate([[0], np.cumsum(cnt_all)[:-1]]).astype(np.int64)
        self.ids.extend([eid for eid, _, _ in new])
        self._schema.extend(schema)
        self._f_lo.extend(f0 + np.concatenate([[0], np.cumsum([len(n) for n in names])[:-1]]))
        self._p_lo.extend(p_lo)
        self._jk_ok.extend(jk_ok)
        self._jk_data.extend(np.stack(jk_data))
        self._jks_ok.extend(jks_ok)
        if self._jks_data is not None:
            w = self._jks_data.a.shape[1]
            self._jks_data.extend(np.stack([np.zeros(w, np.uint32) if x is None else x for x in jks_data]))
        self._fi_name.extend(name_ids)
        self._fi_row.extend(np.concatenate(fi_row))
        self._fi_lo.extend(fi_lo)
        self._fi_mean.extend(np.concatenate(fi_mean))
        self._fi_sq.extend(np.concatenate(fi_sq))
        self._fi_live.extend(np.concatenate(fi_live))
        self._fi_var.extend(np.concatenate(fi_var))
        self._col.extend(self._coords.add(coords))
        pp = np.concatenate(probs)
        self._p.extend(pp)
        self._plog.extend(pp * np.log2(np.where(pp > 0, pp, 1.0)))
        self._fi.extend(f0 + cnp)
        if part_keys:
            self._part_keys.extend(np.concatenate(part_keys))
            self._part_row.extend(np.concatenate(part_row))

    def _keep(self, keep_row: np.ndarray) -> None:
        """Drop the entries whose ``keep_row`` is False (renumbering rows and offsets)."""
        new_row = np.cumsum(keep_row) - 1
        fi_keep = keep_row[self._fi_row.v]
        z_keep = np.repeat(fi_keep, np.diff(np.append(self._fi_lo.v, self._col.n)))
        p_keep = keep_row[self._part_row.v]
        for g in (self.ids, self._schema, self._jk_ok, self._jk_data, self._jks_ok):
            g.keep(keep_row)
        if self._jks_data is not None:
            self._jks_data.keep(keep_row)
        f_cnt = np.diff(np.append(self._f_lo.v, self._fi_row.n))[keep_row]
        self._f_lo.keep(keep_row)
        self._f_lo.a[:self._f_lo.n] = np.concatenate([[0], np.cumsum(f_cnt)[:-1]])
        z_cnt = np.diff(np.append(self._fi_lo.v, self._col.n))[fi_keep]
        for g in (self._fi_name, self._fi_lo, self._fi_mean, self._fi_sq, self._fi_live, self._fi_var):
            g.keep(fi_keep)
        self._fi_lo.a[:self._fi_lo.n] = np.concatenate([[0], np.cumsum(z_cnt)[:-1]])
        self._fi_row.keep(fi_keep)
        self._fi_row.a[:self._fi_row.n] = new_row[self._fi_row.v]
        self._col.keep(z_keep)
        self._p.keep(z_keep)
        self._fi.keep(z_keep)
        self._plog.keep(z_keep)
        self._fi.a[:self._fi.n] = (np.cumsum(fi_keep) - 1)[self._fi.v]
        self._part_keys.keep(p_keep)
        self._part_row.keep(p_keep)
        self._part_row.a[:self._part_row.n] = new_row[self._part_row.v]
        p_cnt = np.bincount(self._part_row.v, minlength=self.ids.n)
        self._p_lo.keep(keep_row)
        self._p_lo.a[:self._p_lo.n] = np.concatenate([[0], np.cumsum(p_cnt)[:-1]]).astype(np.int64)

    # ------------------------------------------------------------------ screening
    def shares_names(self, name_keys: np.ndarray) -> bool:
        """Whether some stored entry has a feature named like one of ``name_keys``."""
        with self.lock:
            return bool((self._names.get(name_keys) >= 0).any()) and self.ids.n > 0

    def scores(self, target, method: str, *, seed: int, t_keys=None, t_small=None) -> dict:
        """The screen of every entry sharing a column name with ``target`` (a Sketch).

        Returns ``{"ids", "score", "tiebreak", "exact"}`` (arrays over those entries; ``exact``:
        whether ``score`` is the method's own score, else it is the exact-js screen). ``t_keys``:
        the query's JS-LSH keys under the identity alignment, ``(jk_data (1, l), jk_part (T, l))``,
        or None when the query's JS-LSH parameters are not the stored ones. ``t_small``: for js
        and adaptivity on a small query, ``(params, keys)`` of the bands it is scored with (js: the
        dataset's ``(1, l)``; adaptivity: each query partition's ``(T, l)``): entries that stored
        keys of those params (``jk_small``, per dataset) get the method's own small-query score --
        js ``collisions / l + (1 - exact JS) / l / 2``, adaptivity (entries of one partition, whose
        dataset keys are its partition's) ``graded_adaptivity + (1 - exact JS) x step / 2``
        (methods/jslsh.py)."""
        with self.lock:
            return self._scores(target, method, seed, t_keys, t_small)

    def _scores(self, target, method, seed, t_keys, t_small=None) -> dict:
        n = self.ids.n
        rec = record(target.hist, target.names, target.sums, target.counts, seed)
        N = max(target.n_features, 1)
        t_name = self._names.get(rec["names"])                      # (T,) name ids, -1 if unknown
        tj_of = np.full(len(self._names), -1, dtype=np.int64)
        tj_of[t_name[t_name >= 0]] = np.flatnonzero(t_name >= 0)
        feat = np.asarray(rec["feat"], dtype=np.int64)
        cnt = np.asarray(rec["count"], dtype=np.float64)
        tot = np.bincount(feat, weights=cnt, minlength=len(t_name))
        pt = cnt / tot[feat]                                          # per-feature normalized, (nnz_t,)
        sq_t = np.bincount(feat, weights=pt * pt, minlength=len(t_name))
        a_tot = float((tot > 0).sum()) / N
        known = t_name[feat] >= 0
        cid = self._coords.get((t_name[feat[known]].astype(np.int64) << 32)
                               + (np.asarray(rec["bucket"], dtype=np.int64)[known] + _OFF))
        qd = np.zeros(len(self._coords) + 1, dtype=np.float64)     # last slot: coordinates nobody has
        qd[np.where(cid >= 0, cid, len(self._coords))] = pt[known]
        qd[-1] = 0.0
        # feature instances named like a query feature
        fi_tj = tj_of[self._fi_name.v]                                # (n_fi,)
        shared = fi_tj >= 0
        row_shared = np.bincount(self._fi_row.v[shared], minlength=n) > 0
        out = {"ids": self.ids.v[row_shared]}
        pass_args = (qd, N, a_tot, shared, n)
        if method == "l2":
            out.update(score=self._l2(target, rec, feat, pt, sq_t, N, qd, fi_tj, shared, n)[row_shared],
                       tiebreak=np.zeros(int(row_shared.sum())), exact=np.ones(int(row_shared.sum()), dtype=bool))
            return out
        score, tie = np.zeros(n), np.zeros(n)
        exact = np.full(n, method == "exact-js")
        small_rows = None
        if method in ("js", "adaptivity") and t_small is not None and self._jks_data is not None and \
                list(t_small[0]) == self._jks_params:
            t_ids = self._names.get(np.asarray(rec["names"], dtype=np.int64))
            ident = np.array([len(x) == len(t_ids) and bool(np.array_equal(x, t_ids)) for x in self._schema_names],
                             dtype=bool)
            ok = ident[self._schema.v] & self._jks_ok.v if len(ident) else np.zeros(n, bool)
            if method == "adaptivity":   # an entry of one partition: its small-query keys are that partition's
                ok &= self._jk_ok.v & (np.diff(np.append(self._p_lo.v, self._part_row.n)) == 1)
            small_rows = np.flatnonzero(ok)
            ls = self._jks_data.a.shape[1]
            tq = np.asarray(t_small[1], dtype=np.uint32).reshape(-1, ls)      # (query partitions, ls)
            sk = self._jks_data.v[small_rows]
            if method == "js":
                score[small_rows] = (sk == tq[0][None, :]).sum(axis=1) / ls
                step = 1.0 / ls
            else:   # jslsh.adaptivity_scores against the one stored partition, graded_adaptivity
                T = len(tq)
                matched, agree = np.zeros(len(small_rows)), np.zeros(len(small_rows))
                for t in range(T):
                    eq = (sk == tq[t][None, :]).sum(axis=1)
                    matched += eq > 0
                    agree += eq
                agree /= max(T, 1) * ls
                score[small_rows] = (matched + agree) / (T + 1)
                tie[small_rows] = agree
                step = 1.0 / (ls * T * (T + 1))
            exact[small_rows] = True
        elif method in ("js", "adaptivity") and t_keys is not None:
            t_ids = self._names.get(np.asarray(rec["names"], dtype=np.int64))
            ident = np.array([len(s) == len(t_ids) and bool(np.array_equal(s, t_ids)) for s in self._schema_names],
                             dtype=bool)
            rows = np.flatnonzero(ident[self._schema.v] & self._jk_ok.v) if len(ident) else np.zeros(0, np.int64)
            if method == "js":
                c = (self._jk_data.v[rows] == np.asarray(t_keys[0], dtype=np.uint32)[0][None, :]).sum(axis=1)
                score[rows] = c / self.l
                step = 1.0 / self.l
            else:
                tk = np.asarray(t_keys[1], dtype=np.uint32)
                in_rows = np.zeros(n, dtype=bool)
                in_rows[rows] = True
                psel = np.flatnonzero(in_rows[self._part_row.v])
                prow = self._part_row.v[psel]
                matched, agree = np.zeros(n), np.zeros(n)
                starts = np.flatnonzero(np.r_[True, prow[1:] != prow[:-1]]) if len(prow) else np.zeros(0, np.int64)
                for t in range(len(tk)):
                    eq = (self._part_keys.v[psel] == tk[t][None, :]).sum(axis=1)
                    best = np.maximum.reduceat(eq, starts) if len(starts) else np.zeros(0)
                    r = prow[starts]
                    matched[r] += best > 0
                    agree[r] += best
                T = max(len(tk), 1)
                # the scorer's graded adaptivity (jslsh.graded_adaptivity): (matched + agreement) / (T + 1)
                score[rows] = (matched[rows] + agree[rows] / T / self.l) / (T + 1)
                tie[rows] = agree[rows] / T / self.l
                step = 1.0 / (self.l * T * (T + 1))
            exact[rows] = True
        proxy = row_shared & ~exact
        # entries at 0 are graded by closeness (1 - exact JS) under one LSH step, as the scorer does
        zero = (row_shared & exact & (score == 0)) if method in ("js", "adaptivity") else np.zeros(n, bool)
        if small_rows is not None:   # a small query: every entry graded by closeness (methods/jslsh.py)
            zero = np.zeros(n, bool)
            zero[small_rows] = True
            zero &= row_shared
        if method != "l2" and (method == "exact-js" or proxy.any() or zero.any()):   # the exact-js pass
            ejs = self._exact_js(pass_args)
            score[~exact] = ejs[~exact]
            if zero.any():
                score[zero] += np.clip(ejs[zero], 0.0, 1.0) * step / 2
            if method == "exact-js":
                score = ejs
        out = {"ids": self.ids.v[row_shared]}
        out.update(score=score[row_shared], tiebreak=tie[row_shared], exact=exact[row_shared])
        return out

    def key_counts(self, rows: np.ndarray, target, method: str, *, seed: int, t_keys=None, t_small=None):
        """The JS-LSH band agreements behind the js / adaptivity screen of ``rows`` (index rows), as
        integers ordered as ``scores`` orders those entries, or None when the method's screen of this
        query reads no band keys (exact-js, l2, keys of other parameters: every row is a proxy).

        Returns an int64 array over ``rows``: ``-1`` for a row ``scores`` does not score by its keys
        (a proxy: another schema or column order, no stored keys, adaptivity's small-query path on an
        entry of several partitions); else ``K`` with the row's screen equal to ``K x step`` plus the
        closeness grading, which is under half a ``step`` (js ``K`` collisions of ``l`` bands, step
        ``1 / l``; adaptivity ``K = matched x T x l + agreements``, step ``1 / (l T (T + 1))``). So a
        keyed row of lower ``K`` never screens above one of higher ``K``: level 2 (engine/coarse.py)
        screens only the rows whose ``K`` can reach the top of the shortlist."""
        if method not in ("js", "adaptivity"):
            return None
        with self.lock:
            rows = np.asarray(rows, dtype=np.int64)
            from .profiles import name_keys
            t_ids = self._names.get(name_keys(list(target.names), seed))
            ident = np.array([len(s) == len(t_ids) and bool(np.array_equal(s, t_ids)) for s in self._schema_names],
                             dtype=bool)
            out = np.full(len(rows), -1, dtype=np.int64)
            if not len(ident) or not len(rows):
                return out if (t_small is not None or t_keys is not None) else None
            def n_parts(r):   # partitions of rows r (not a diff over every row: ~6 ms a query at 1M)
                lo = np.asarray(self._p_lo.v)
                nxt = np.minimum(r + 1, len(lo) - 1)
                return np.where(r + 1 < len(lo), lo[nxt], self._part_row.n) - lo[r]
            # (gathers by Grow.take: the index may be memory-mapped; level 2 passes its rows sorted)
            if t_small is not None and self._jks_data is not None and list(t_small[0]) == self._jks_params:
                ok = ident[self._schema.take(rows)] & self._jks_ok.take(rows)
                if method == "adaptivity":
                    ok &= self._jk_ok.take(rows) & (n_parts(rows) == 1)
                sel = np.flatnonzero(ok)
                ls = self._jks_data.a.shape[1]
                tq = np.asarray(t_small[1], dtype=np.uint32).reshape(-1, ls)
                sk = self._jks_data.take(rows[sel])
                if method == "js":
                    out[sel] = _agreements(sk, tq[0])
                else:
                    T = len(tq)
                    for t in range(T):
                        eq = _agreements(sk, tq[t])
                        out[sel] += (eq > 0) * (T * ls) + eq
                    out[sel] += 1                       # from -1
                return out
            if t_keys is None:
                return None
            ok = ident[self._schema.take(rows)] & self._jk_ok.take(rows)
            sel = np.flatnonzero(ok)
            if method == "js":
                out[sel] = _agreements(self._jk_data.take(rows[sel]), np.asarray(t_keys[0], dtype=np.uint32)[0])
                return out
            tk = np.asarray(t_keys[1], dtype=np.uint32)
            T = max(len(tk), 1)
            cnt = n_parts(rows[sel]).astype(np.int64)
            first = np.concatenate([[0], np.cumsum(cnt)[:-1]]).astype(np.int64)
            psel = np.repeat(self._p_lo.take(rows[sel]) - first, cnt) + np.arange(int(cnt.sum()))   # their partitions
            has = np.flatnonzero(cnt > 0)
            starts = first[has]
            k = np.zeros(len(sel), dtype=np.int64)
            pk = self._part_keys.take(psel)                   # gathered once for every query partition
            for t in range(len(tk)):
                eq = _agreements(pk, tk[t])
                if len(has):
                    best = np.maximum.reduceat(eq, starts)
                    k[has] += (best > 0) * (T * self.l) + best
            out[sel] = k
            return out

    def _l2(self, target, rec, feat, pt, sq_t, N, qd, fi_tj, shared, n) -> np.ndarray:
        """Minus methods.exact._l2 of every entry, over the features named like the query's: per matched feature
        the squared difference of means in units of the pooled spread (each side's variance about its
        exact mean from its histogram's bucket values, _variance) when both are numeric, else twice the
        squared L2 distance of the normalized histograms (``sum p^2`` stored, the cross term one
        gather); ``L2_UNCOVERED`` for each query feature an entry does not name; root of the mean over
        the query's features."""

        a_b, p_b, fi_b, _ = self._hits(qd)
        cross = np.bincount(fi_b, weights=a_b * p_b, minlength=self._fi_row.n)
        t_cnt = np.asarray(target.counts)
        t_mean = np.where(t_cnt > 0, np.asarray(target.sums, dtype=np.float64) / np.maximum(t_cnt, 1), np.nan)
        t_var = _variance(feat, np.asarray(rec["bucket"], dtype=np.int64), pt, t_mean, self.accuracy)
        fi_s = np.flatnonzero(shared)
        tj = fi_tj[fi_s]
        mt, ms = t_mean[tj], self._fi_mean.v[fi_s]
        num = ~np.isnan(mt) & ~np.isnan(ms)
        mt0, ms0 = np.where(num, mt, 0.0), np.where(num, ms, 0.0)
        vt, vs = t_var[tj], self._fi_var.v[fi_s]
        sd = np.maximum(np.maximum(np.sqrt((vt + vs) / 2), 1e-3 * (np.abs(mt0) + np.abs(ms0))), 1e-12)
        d2 = np.where(num, ((mt0 - ms0) / sd) ** 2, 2.0 * (sq_t[tj] + self._fi_sq.v[fi_s] - 2 * cross[fi_s]))
        rows = self._fi_row.v[fi_s]
        sq = np.bincount(rows, weights=np.maximum(d2, 0.0), minlength=n).astype(np.float64)   # int64 when empty
        matched = np.bincount(rows, minlength=n)
        sq += L2_UNCOVERED * np.maximum(N - matched, 0)
        return -np.sqrt(sq / N)

    def _hits(self, qd, float32: bool = False):
        """``(a, p, fi, pos)`` at the stored non-zeros where the query has mass: the query's value,
        the entry's (both per-feature normalized), the feature instance and the positions (an index
        array, or ``slice(None)`` when every stored non-zero is one: level 2's subset holds only the
        query's coordinates, ``coarse.subset(cells_of=...)``, and then nothing is gathered). One gather
        over all non-zeros; the query is zero outside its own coordinates, so only shared features
        remain."""
        q32 = qd.astype(np.float32)
        a = q32[self._col.v]
        pos = np.flatnonzero(a > 0)
        if len(pos) == len(a):
            pos = slice(None)
        if float32:
            return a[pos], self._p.v[pos], self._fi.v[pos], pos
        return qd[self._col.v[pos]], self._p.v[pos].astype(np.float64), self._fi.v[pos], pos

    def _exact_js(self, args) -> np.ndarray:
        """1 - JS (base 2) of every entry (module docstring). Per shared non-zero, with a = a'/N and
        b = p/N: ``[a log2(2a/m) + b log2(2b/m) - a - b] / 2 = [a log2 a + b log2 b - m log2 m] / 2``,
        m = a + b, so one logarithm each (``p log2 p`` is stored; float32 terms, summed in float64).
        The per-cell terms are computed in place, each the same float32 operation on the same operands
        as ``0.5 * (alog + blog - m * log2(m))`` (+ and x commute exactly): the same floats, fewer
        temporaries."""
        qd, N, a_tot, shared, n = args
        a_b, p_b, fi_b, pos = self._hits(qd, float32=True)
        inv = np.float32(1.0 / N)
        m = a_b + p_b
        m *= inv                                                                      # (a' + p) / N
        with np.errstate(divide="ignore", invalid="ignore"):
            qlog = np.where(qd > 0, qd * np.log2(np.where(qd > 0, qd, 1.0)), 0.0)   # a' log2 a', per coordinate
        lgN = np.float32(np.log2(N))
        # a log2 a per coordinate (the same float32 operations as per cell, done once a coordinate)
        g = ((qlog.astype(np.float32) - qd.astype(np.float32) * lgN) * inv)[self._col.v[pos]]
        blog = p_b * lgN
        np.subtract(self._plog.v[pos], blog, out=blog)
        blog *= inv                                                                   # b log2 b
        g += blog
        mlog = np.log2(m)
        mlog *= m
        g -= mlog
        g *= 0.5                                                                      # 0.5 (alog + blog - m log2 m)
        b_tot = np.bincount(self._fi_row.v[shared & self._fi_live.v], minlength=n) / N
        js = 0.5 * a_tot + 0.5 * b_tot + np.bincount(self._fi_row.v[fi_b], weights=g, minlength=n)
        return 1.0 - np.clip(js, 0.0, 1.0)


def _agreements(keys: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Per row of ``keys`` ``(rows, w)`` how many of its ``w`` positions equal ``t`` ``(w,)``: int64,
    ``(keys == t).sum(axis=1)`` (the JS-LSH bands two sides agree on). For ``w`` a multiple of 8 below
    256 the boolean matrix is summed as uint64 lanes of 8 bytes (one position a byte: each byte of a
    lane's sum at most w / 8, no carry) and a lane's 8 bytes added by one multiply (their total, at most
    w < 256, lands in the top byte): ~2x faster at 32,768 x 128, the same integers."""
    eq = np.equal(keys, np.asarray(t)[None, :])
    n, w = eq.shape
    if n == 0 or w == 0 or w % 8 or w > 255:
        return eq.sum(axis=1, dtype=np.int64)
    lanes = np.ascontiguousarray(eq).view(np.uint64).sum(axis=1, dtype=np.uint64)   # (rows,)
    return ((lanes * np.uint64(0x0101010101010101)) >> np.uint64(56)).astype(np.int64)


def _variance(feat: np.ndarray, bucket: np.ndarray, p: np.ndarray, mean: np.ndarray, accuracy: float) -> np.ndarray:
    """Per feature: the variance of its normalized histogram ``p`` about ``mean`` (its exact mean) over
    the buckets with a finite value (bucket_values), 0 without such mass or mean -- l2's
    spread, as methods.exact._l2 computes it for each side."""

    n_feat = len(mean)
    v = bucket_values(bucket, accuracy)
    m = np.asarray(mean, dtype=np.float64)[feat]
    ok = np.isfinite(v) & ~np.isnan(m)
    d = np.where(ok, v - np.where(ok, m, 0.0), 0.0)
    pf = np.where(ok, p, 0.0)
    w = np.bincount(feat, weights=pf, minlength=n_feat)
    sq = np.bincount(feat, weights=pf * d * d, minlength=n_feat)
    return np.where(w > 0, sq / np.where(w > 0, w, 1.0), 0.0)


def select(scr: dict, n_keep: int, k: int = 0, margin: float | None = None,
           max_keep: int | None = None) -> tuple[np.ndarray, dict]:
    """Entry ids to score: the ``n_keep`` best exactly screened entries (by score, then tiebreak)
    and the ``n_keep`` best of the others (by their proxy), ties at each cut included; with a
    ``margin``, also every proxy-screened entry within ``margin`` of the proxies' ``k``-th best score
    (the proxy's measured error: an entry the method ranks in its top k lies no further below),
    at most ``max_keep`` proxies in all (the best; ``info["capped"]`` then says recall is not held).
    Returns ``(ids, info)`` with the counts for the plan."""
    ids, s, tb, ex = scr["ids"], scr["score"], scr["tiebreak"], scr["exact"]
    kept = []
    info = {"screened": int(len(ids)), "exact": int(ex.sum()), "proxy": int((~ex).sum()), "in_margin": 0,
            "capped": False}
    for grp in (ex, ~ex):
        g = np.flatnonzero(grp) if n_keep > 0 else np.zeros(0, dtype=np.int64)
        if len(g) == 0:
            continue
        if len(g) > n_keep:
            cut = np.partition(s[g], len(g) - n_keep)[len(g) - n_keep]
            top = g[s[g] > cut]
            tied = g[s[g] == cut]
            if len(top) + len(tied) > n_keep:      # ties at the cut: the best tiebreaks among them
                tied = tied[np.argsort(-tb[tied], kind="stable")[:n_keep - len(top)]]
            sel = np.concatenate([top, tied])
            if grp is not ex and margin is not None and k > 0:
                kth = np.partition(s[g], len(g) - min(k, len(g)))[len(g) - min(k, len(g))]
                near = g[s[g] >= kth - margin]
                extra = np.setdiff1d(near, sel)
                if max_keep is not None and len(sel) + len(extra) > max_keep:
                    info["capped"] = True
                    extra = extra[np.argsort(-s[extra], kind="stable")[:max(max_keep - len(sel), 0)]]
                info["in_margin"] = int(len(extra))
                info["margin_floor"] = float(kth - margin)
                sel = np.concatenate([sel, extra])
            g = sel
        kept.append(g)
    sel = np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)
    info["kept"] = int(len(sel))
    if len(sel):
        info["kept_score_range"] = (float(s[sel].min()), float(s[sel].max()))
    return ids[sel], info


def choose(scr: dict, rule, n_keep: int, k: int, max_keep: int | None) -> tuple[np.ndarray, dict]:
    """select() under a planner.ShortlistRule: a method screened by a proxy (``rule.exact`` False)
    has every entry in the proxy group; ``rule.margin`` widens that group's cut."""
    if not rule.exact:
        scr = {**scr, "exact": np.zeros(len(scr["ids"]), dtype=bool)}
    return select(scr, n_keep, k=k, margin=rule.margin, max_keep=max_keep)


def describe(info: dict, rule, method: str, n_keep: int, k: int, n_entries: int) -> tuple[str, float | None]:
    """``(text, estimated recall)`` of a screen's selection for the plan (``explain``): what was
    screened how, what was kept, and the recall of the exhaustive top k it holds -- 1 when every
    screened entry got the method's own score, the proxy's measured recall (with its margin) when
    some did not, None when that is unknown or the margin's cap cut entries."""
    t = f"; {info['screened']} entries screened (sharing column names with the query)"
    if info["exact"]:
        t += f", {info['exact']} screened by the method's own score"
    if info["proxy"]:
        why = (f"{method} is screened by its proxy {rule.screen}" if not rule.exact else
               "another column order, other JS-LSH parameters, or a small query's bands no stored key "
               "holds, e.g. adaptivity's on an entry of several partitions")
        t += f", {info['proxy']} by the exact-js proxy ({why})"
    t += f"; kept {info['kept']}: the top {n_keep}" + (" of each" if info["proxy"] and info["exact"] else "")
    if rule.margin is not None and info["proxy"]:
        t += (f" + {info['in_margin']} proxy-screened within margin {rule.margin:g} of the {k}-th best proxy "
              f"score (the proxy's measured error)")
        if info["capped"]:
            t += f", capped at {info['kept']} (more lay within the margin: recall not held)"
    if "kept_score_range" in info:
        lo_, hi_ = info["kept_score_range"]
        t += f" (screen scores {lo_:.4g} .. {hi_:.4g})"
    if not info["proxy"]:
        recall = 1.0
        t += "; recall 1 for entries aligned by column name (an exact screen)"
    elif info["capped"]:
        recall = None
    else:
        recall = rule.measured_recall
        t += (f"; recall@10 of the proxy measured {rule.measured_recall:.2f} (bench.bench_shortlist)"
              if rule.measured_recall is not None else "; the proxy's recall is not measured")
    t += f"; unnamed entries (renamed columns) are not screened: {n_entries - info['screened']}"
    return t, recall


# l2 shared with methods/exact.py (the scorer): the screen computes the same distance
L2_UNCOVERED = 4.0   # squared distance of a query feature an entry does not cover: two spreads apart


def bucket_values(bucket: np.ndarray, accuracy: float) -> np.ndarray:
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
