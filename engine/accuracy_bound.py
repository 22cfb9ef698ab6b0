"""An upper bound on each labelled entry's predicted accuracy that does not depend on the query's
rows: what makes ``method="accuracy"``'s candidate stage exact (issue 24).

The scorer (accuracy_batch.shifted_recalls) gives a model registered with validation rows the
recall of class c

    R_c = r_c * shift_c,   r_c = (diag_c + ps * r0_c) / (n_val_c + ps),   shift_c = sqrt(min(1, .)) <= 1

where r0_c is either the learning curve ``r_max x curve(n_c)`` (a class with under
``PROXY_MIN_MASS`` query rows, or one the model never saw) or the recall prior
``sigmoid(coef . x)``, whose only query-dependent feature is ``logit(proxy recall)`` clipped to
``[logit(1e-3), logit(1 - 1e-3)]``: linear in it, so the prior is largest at one end of that
interval. Taking, per (model, class), the larger of the curve's value and the prior at both ends
bounds R_c from above whatever the query (``recall_bound``); a ``class_accuracy=`` model's
recalls are used as given (the bound is them). The predicted accuracy is ``R . pi`` with ``pi``
the query's mixture (>= 0), so ``recall_bound @ pi`` bounds it -- up to rounding, which
``SLACK`` covers (the score is one ``np.dot`` a model, the bound a matrix product).

The stage (engine/accuracy.py ``screen``) ranks the labelled entries by this bound and scores the
best; the pipeline then scores every other entry whose bound reaches the k-th best score found
(:func:`to_score`): an entry left out cannot enter the top k, so the stage's answer is
``shortlist=0``'s. On the digits 10k labelled zoo the bound lies a median 0.007-0.009 above the
score, and 111-169 entries reach the 10th best (bench/SUMMARY.md "Exact accuracy stage")."""
from __future__ import annotations

import numpy as np

SLACK = 1e-9          # rounding of R . pi against the bound's matrix product (measured within 2e-16)
CHUNK = 4096          # entries a call builds at once (their (chunk, classes) arrays)


def recall_bound(records: list, labels: list) -> np.ndarray:
    """(E, len(labels)) per entry and class: an upper bound on the recall the scorer can give it
    on any query (module docstring). ``records``: the entries' checked class records
    (accuracy.check_record), their ``perf`` included."""
    from . import accuracy as A
    from .accuracy_batch import Models, _prior

    K = len(labels)
    out = np.zeros((len(records), K))
    for lo in range(0, len(records), CHUNK):
        part = records[lo:lo + CHUNK]
        M = Models([A._Model(cl["perf"], cl, labels) for cl in part], K)
        b = M.base.copy()
        if len(M.live):
            L = len(M.live)
            r0 = np.maximum(M.curve, np.maximum(_prior(M, np.zeros((L, K))), _prior(M, np.ones((L, K)))))
            ps = M.pseudo[:, None]
            b[M.live] = (M.diag + ps * r0) / (M.n_val + ps)
        out[lo:lo + len(part)] = b
    return out


def on_labels(pi, labels: list, onto: list) -> np.ndarray:
    """A mixture ``pi`` over ``labels`` as one over ``onto``: a class of ``onto`` that ``labels``
    lacks gets 0 (no query rows), one that ``onto`` lacks is left out (no bounded entry saw it:
    every recall of it is 0)."""
    at = {c: i for i, c in enumerate(labels)}
    pi = np.asarray(pi, dtype=np.float64)
    return np.array([pi[at[c]] if c in at else 0.0 for c in onto])


def to_score(bound: dict, matches: list, k: int, scored: set) -> tuple[list, float]:
    """``(keys, threshold)``: the labelled entries not scored yet (keys not in ``scored``), best bound
    first, whose
    bound under the scorer's own mixture reaches ``threshold``, the ``k``-th best predicted accuracy
    among ``matches`` (-inf with fewer than ``k``: every one of them). ``bound``: the stage's
    ``{"keys": [u64 key], "bound": (E, K), "labels": [K labels]}``; the mixture is read from a
    match's ``detail`` (its labels mapped onto the bound's: a class no bounded entry saw adds 0)."""
    acc = [m for m in matches if m.method == "accuracy" and m.detail]
    keys = bound["keys"]
    if not len(keys):
        return [], float("-inf")
    scores = np.sort(np.array([m.score for m in acc], dtype=np.float64))[::-1]
    threshold = float(scores[k - 1]) if len(scores) >= k else float("-inf")
    if acc:
        ub = bound["bound"] @ on_labels(acc[0].detail["mixture"], acc[0].detail["labels"], bound["labels"])
    else:
        ub = np.full(len(keys), np.inf)
    rows = np.flatnonzero(ub >= threshold - SLACK)
    rows = rows[np.argsort(-ub[rows], kind="stable")]        # the best bounds first (a cap keeps them)
    return [keys[int(r)] for r in rows if keys[int(r)] not in scored], threshold
