"""Exact methods over the stored partition histograms: ``exact-js`` (1 - the exact Jensen-Shannon
divergence of the dataset-level distributions) and ``l2`` (a spread-scaled distance of means and
histograms, negated so that higher is better)."""
from __future__ import annotations

import numpy as np

from ..jslsh import exact_js_scores
from ..partitions import aligned_distributions
from .base import HISTOGRAMS, Method, ShortlistRule, chunks, source_dist


class _Exact(Method):
    needs = frozenset({HISTOGRAMS})

    def score(self, ctx, query, cands):
        n_t = query.n_features
        t_dist = aligned_distributions(query.hist, np.arange(n_t, dtype=np.int64), n_t, per_dataset=True,
                                       n_partitions=query.n_partitions)
        results = []
        for r in chunks(len(cands)):   # bounded memory: the dense matrix is per chunk
            chunk = cands[r.start:r.stop]
            s_dists = [source_dist(ctx.txn, rec, al, n_t, True) for rec, al in chunk]
            results.extend(self.score_chunk(ctx, query, t_dist, chunk, s_dists))
        return results


class ExactJS(_Exact):
    name = "exact-js"
    shortlist = ShortlistRule("exact-js", exact=True)

    def score_chunk(self, ctx, query, t_dist, chunk, s_dists):
        js = exact_js_scores([t_dist] + s_dists)
        return [ctx.match(rec, al, query, 1.0 - float(v), self.name, {"js_divergence": float(v)})
                for (rec, al), v in zip(chunk, js)]


class L2(_Exact):
    name = "l2"
    # the screen computes the spread-scaled l2 itself, the spread from each feature's stored
    # variance about its mean (engine/screen.py)
    shortlist = ShortlistRule("l2", exact=True)

    def score_chunk(self, ctx, query, t_dist, chunk, s_dists):
        out = []
        for (rec, al), sd in zip(chunk, s_dists):
            d, ev = _l2(query, t_dist, rec, al, sd, ctx.config.hist_accuracy)
            out.append(ctx.match(rec, al, query, -d, self.name, {"l2_distance": d, **ev}))
        return out


EXACT_JS, L2_METHOD = ExactJS(), L2()


from ..screen import L2_UNCOVERED as _L2_UNCOVERED, bucket_values as _bucket_values  # noqa: E402 - shared with the screen


def _per_feature(dist, n: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """{aligned feature: (buckets, probabilities)} of a dataset-level ``Distributions``."""
    j = dist.key >> 32
    out = {}
    for f in np.unique(j):
        sel = j == f
        out[int(f)] = ((dist.key[sel] & 0xFFFFFFFF) - (1 << 31), dist.value[sel] * n)
    return out


def _l2(target, t_dist, rec: dict, al, s_dist, accuracy: float = 0.1) -> tuple[float, dict]:
    """Root mean over the query's features of a squared distance, comparable across entries that
    match different numbers of columns: a matched numeric feature contributes its difference of
    means in units of the pooled spread (standard deviations from the histograms), a matched
    categorical / text feature twice the squared L2 distance of its normalized histograms (in
    [0, 4]), and a query feature the entry does not cover ``_L2_UNCOVERED`` (two spreads apart)."""
    n = max(target.n_features, 1)
    t_counts, s_counts = target.counts, np.asarray(rec["counts"])
    t_sums, s_sums = target.sums, np.asarray(rec["sums"])
    tf, sf_ = _per_feature(t_dist, n), _per_feature(s_dist, n)
    sq, numeric = 0.0, 0
    for tj, sf, _ in al.pairs:
        tb, tp = tf.get(tj, (np.zeros(0, np.int64), np.zeros(0)))
        sb, sp = sf_.get(tj, (np.zeros(0, np.int64), np.zeros(0)))
        if t_counts[tj] > 0 and s_counts[sf] > 0:
            mt, ms = t_sums[tj] / t_counts[tj], s_sums[sf] / s_counts[sf]
            var = []
            for b, p, m in ((tb, tp, mt), (sb, sp, ms)):
                v = _bucket_values(b, accuracy)
                ok = np.isfinite(v)
                w = p[ok].sum()
                var.append(float((p[ok] * (v[ok] - m) ** 2).sum() / w) if w > 0 else 0.0)
            sd = max(np.sqrt((var[0] + var[1]) / 2), 1e-3 * (abs(mt) + abs(ms)), 1e-12)
            sq += ((mt - ms) / sd) ** 2
            numeric += 1
        else:
            pt = dict(zip(tb.tolist(), tp.tolist()))
            ps = dict(zip(sb.tolist(), sp.tolist()))
            sq += 2.0 * sum((pt.get(c, 0.0) - ps.get(c, 0.0)) ** 2 for c in set(pt) | set(ps))
    uncovered = n - len(al.pairs)
    sq += _L2_UNCOVERED * uncovered
    return float(np.sqrt(sq / n)), {"matched_features": len(al.pairs), "uncovered_query_features": uncovered,
                                    "scaled_by_spread": numeric}
