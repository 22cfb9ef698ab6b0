"""``accuracy``: the predicted accuracy of each labelled candidate's model on the query
(engine/accuracy.py: the query's class mixture by EM over the pooled class-conditional counts,
then each model's per-class recall weighted by it). ``method="auto"`` (engine/methods/auto.py)
runs the same scorer, ranking the entries registered without labels after the labelled ones by
the label-free default."""
from __future__ import annotations

import numpy as np

from .. import accuracy as _acc
from .. import accuracy_gauss as _gauss
from .. import errors as E
from ..accuracy_proxy import own_predictions_many
from ..storage import u64
from .base import LABELS, ROWS, Method, ShortlistRule

LABEL_FREE = "coverage"   # what method="auto" scores entries without labels by (bench/SUMMARY.md "Which label-free method auto uses")


class Accuracy(Method):
    name = "accuracy"
    needs = frozenset({ROWS, LABELS})
    # the labelled entries nearest the query by exact-js (its class mixture moves the dataset-level
    # distribution); a proxy whose recall is not measured yet
    shortlist = ShortlistRule("exact-js", exact=False)
    auto = False

    def score(self, ctx, query, cands):
        return score_accuracy(ctx, query, cands, auto=self.auto)


ACCURACY = Accuracy()


def _labelled(ctx, cands):
    labelled, rest = [], []
    for rec, al in cands:
        cl = (ctx.txn.get("extra", u64(rec["id"])) or {}).get("classes") if rec.get("labelled") else None
        if cl is not None:
            labelled.append((rec, al, _acc.check_record(cl, len(rec["features"]))))
        else:
            rest.append((rec, al))
    return labelled, rest


def class_pool(ctx, query, cands) -> dict:
    """This hub's share of the pooled class-conditional counts of the labelled candidates
    (Hub.class_pool; a sharded hub sums the shards' and passes the sum back as ``class_pool=``)."""
    labelled, _ = _labelled(ctx, cands)
    labels = sorted({c for _, _, cl in labelled for c in cl["labels"]}, key=_acc._sort_key)
    return _pool(labelled, labels, query.names)


def _pool(labelled, labels, names) -> dict:
    """The class pool of ``labelled`` candidates (``accuracy.class_pool_of``)."""
    return _acc.class_pool_of([(cl, rec["features"], {sf: tj for tj, sf, _ in al.pairs}) for rec, al, cl in labelled],
                              labels, names)


def label_free(query, cfg) -> tuple[str, str | None]:
    """``(method, reason)``: what ``auto`` scores this query's unlabelled entries by -- ``LABEL_FREE``
    (coverage), or adaptivity where coverage cannot score the query at all (a sketch without its
    rows; ``coverage_space="embedding"`` without the query's sample embeddings), with the reason.
    The shortlist screens by the same method (``Auto.screened_as``), so the screen matches the scorer."""
    if LABEL_FREE != "coverage":
        return LABEL_FREE, None
    if query.frame is None:
        return "adaptivity", "coverage needs the query's rows and it is a sketch"
    if cfg is not None and cfg.coverage_space == "embedding" and (query.embedding is None
                                                                  or np.ndim(query.embedding) != 2):
        return "adaptivity", "coverage_space='embedding' needs the query's sample embeddings (embedding=)"
    return LABEL_FREE, None


def _label_free(ctx, query, cands, why: str, group: int | None = None):
    method, reason = label_free(query, ctx.cfg)
    out = ctx.score(method, query, cands)
    for m in out:
        m.evidence["auto"] = f"{method}: {why}" + (f" ({reason})" if reason else "")
        if group is not None:
            m.evidence["_group"] = group
    return out


def score_accuracy(ctx, query, cands, *, auto: bool):
    """Predicted accuracy of each labelled candidate's model on the query.

    ``auto``: the labelled candidates are ranked by predicted accuracy, the others after them by
    the label-free default (``LABEL_FREE``); with no labelled candidate (or a query without its
    rows), every candidate is scored label-free."""
    cfg, config = ctx.cfg, ctx.config
    mixture, class_pool_ = query.mixture, query.class_pool
    labelled, rest = _labelled(ctx, cands)
    frame = query.frame
    why = None
    if class_pool_ is not None and not class_pool_["labels"]:
        why = "no entry (of any shard) was registered with labels"
    elif class_pool_ is not None and not labelled:
        # a shard without labelled candidates while other shards have some: its entries are the
        # unlabelled group (auto), or nothing (accuracy), as in one hub holding every entry
        if not auto:
            return []
        return _label_free(ctx, query, cands, "registered without labels, ranked after the labelled entries", 1)
    elif not labelled:
        why = "no candidate entry was registered with labels"
    elif frame is None and mixture is None:
        why = "the query is a sketch without its rows (pass the data)"
    if why is not None:
        if not auto:
            raise E.NoLabelsError(f"method='accuracy' cannot score: {why}; register entries with "
                                  "hub.add(..., labels=...) or use method='auto'")
        return _label_free(ctx, query, cands, why)
    labels = sorted({c for _, _, cl in labelled for c in cl["labels"]}, key=_acc._sort_key)
    pl = None
    if class_pool_ is not None:   # the pool of every shard (ShardedHub), instead of this hub's own
        pl = class_pool_
        labels = sorted(set(labels) | set(pl["labels"]), key=_acc._sort_key)
    if mixture is not None:
        pi = _acc.check_mixture(mixture, labels)
        extra = [c for c in _acc.canonical(np.array(list(mixture), dtype=object)).tolist() if c not in set(labels)]
        if extra:   # classes no entry saw: every model scores 0 on them
            labels = labels + extra
            pi = _acc.check_mixture(mixture, labels)
        ll = np.zeros((0, len(labels)))
        proxies = None
        temperature = None
    else:
        if pl is None:
            pl = _pool(labelled, labels, query.names)
        pl = _acc.merge_pools([pl, {**pl, "labels": labels, "cls": pl["cls"][:0], "col": pl["col"][:0],
                                    "bucket": pl["bucket"][:0], "count": pl["count"][:0], "entries": 0}])
        labels = pl["labels"]
        used = sorted({j for j, n in enumerate(query.names) if n in set(pl["columns"])})
        qb = _acc.query_buckets(frame, query.names, query.kinds, used, config)
        qx = _acc.query_index(qb, len(frame))     # the query's side, shared by the pool and every proxy
        # the class Gaussians where every pooled entry carries one (accuracy_gauss.py), naive Bayes
        # over the histograms otherwise (entries registered before, or without numeric columns)
        ll, gaussian = _acc.mixture_loglik(frame, pl, query.names, query.kinds, config, cfg.accuracy_temperature,
                                           qb, qx)
        if gaussian:
            mixture_source = "EM over pooled class Gaussians"
            temperature = _gauss.GAUSS_TEMPERATURE   # the Gaussian path's own constant (accuracy_gauss.py)
        else:
            temperature = cfg.accuracy_temperature
            mixture_source = "EM over pooled class histograms (naive Bayes: " + _gauss.naive_bayes_reason(
                frame, pl.get("gauss"), [cl for _, _, cl in labelled]) + ")"
        pi = None
        # every candidate's own-histogram proxy in one batched pass (accuracy_proxy.py; equal to
        # accuracy.own_predictions one candidate at a time)
        proxies = own_predictions_many(qb, len(frame), [(cl, {sf: tj for tj, sf, _ in al.pairs})
                                                         for _, al, cl in labelled], labels, query.names, qx)
    det = {}
    pi, acc, interval = _acc.estimate(ll, labels, [cl["perf"] for _, _, cl in labelled], mixture=pi,
                                      bootstrap=cfg.accuracy_bootstrap, seed=config.seed, proxies=proxies,
                                      records=[cl for _, _, cl in labelled], details=det)
    top = np.argsort(-pi, kind="stable")[:5]
    mix = {str(labels[i]): round(float(pi[i]), 4) for i in top if pi[i] > 0}
    results = []
    for i, (rec, al, cl) in enumerate(labelled):
        contrib = pi * det["recall"][i]
        seen = set(cl["labels"])
        ev = {"predicted_accuracy": float(acc[i]), "mixture": mix,
              "mixture_source": "given" if mixture is not None else mixture_source,
              "mixture_temperature": temperature,
              "contributions": {str(labels[j]): round(float(contrib[j]), 4)
                                for j in np.argsort(-contrib, kind="stable")[:5] if contrib[j] > 0},
              "unseen_class_share": round(float(sum(p for c, p in zip(labels, pi) if c not in seen)), 4),
              "performance": cl["perf"]["source"], "covariate_shift": round(det["shift"][i], 4),
              "pooled_entries": pl["entries"] if pl is not None else len(labelled)}
        if interval is not None:
            ev["interval"] = [round(float(interval[i, 0]), 4), round(float(interval[i, 1]), 4)]
        n_in = _acc.validation_in_training(cl["perf"])
        if n_in:
            ev["validation_in_training"] = n_in   # validation rows left out: the model was trained on them
        if cl["perf"]["source"] == _acc.ALL_IN_TRAINING:
            ev["fallback"] = ("every validation row is a training row (the model was measured on rows it was fitted "
                              "on): recall guessed from class counts; pass validation rows held out from training")
        elif cl["perf"]["source"] == _acc.POOLED_ALL_IN_TRAINING:
            ev["fallback"] = ("every validation row is a training row: they were left out, and the confusion= given "
                              "with them alone measures the model")
        elif cl["perf"]["source"].startswith("fallback"):
            ev["fallback"] = "no model performance was registered: recall guessed from class counts"
        if auto:
            ev["auto"] = "accuracy: registered with labels"
        m = ctx.match(rec, al, query, float(acc[i]), "accuracy", ev)
        m.detail = {"labels": list(labels), "mixture": np.asarray(pi, dtype=np.float64),
                    "recall": np.asarray(det["recall"][i], dtype=np.float64)}   # the recall the score used
        results.append(m)
    if auto and rest:
        results.extend(_label_free(ctx, query, rest, "registered without labels, ranked after the labelled entries", 1))
    return results
