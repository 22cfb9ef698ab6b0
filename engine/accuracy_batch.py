"""Predicted accuracy of many candidate models at once: engine/accuracy.py's per-model
``shifted_recall`` / ``recall_prior`` / ``_recall_draw`` over (models, classes) arrays.

``accuracy.estimate`` scores every candidate once, and once more in each of ``accuracy_bootstrap``
(default 50) resamples of the query's rows; one model at a time that was ~0.1 ms of NumPy call
overhead per model and draw: 2.4 s of a 10k-entry search's 3 s at 256 candidates. This is the one
implementation: engine/accuracy.py's per-model functions call it with one model, and
tests/test_accuracy_batch.py holds it equal to the per-model code it replaced (kept there as the
reference) on random models, mixtures and bootstraps.

What stays equal and why: every step is element-wise over (model, class) with each model's own
scalars broadcast, or a reduction along one model's row, so a model's numbers do not depend on
which other models share the call (a sharded hub scores some of them per shard). The proxy hits
are one ``bincount`` over (model, class) keys, summed in row order as the per-model ``bincount``;
each model's accuracy is its own ``np.dot(recall, pi)``; the Beta draws of a model come from a
generator seeded as the reference seeds it (one seeding per draw, its state restored per model);
the prior's linear predictor is ``coef @ X`` over the same (features, classes) matrix per model,
stacked (``np.matmul`` loops the same kernel over the stack)."""
from __future__ import annotations

import numpy as np


class Models:
    """``accuracy._Model`` of each candidate, stacked: (E, K) arrays and (E,) scalars."""

    def __init__(self, models: list, K: int):
        from . import accuracy as A

        self.models = models
        E = len(models)
        self.E, self.K = E, K
        self.base = np.stack([m.base for m in models]) if E else np.zeros((0, K))
        self.given = np.array([m.given for m in models], dtype=bool)
        live = [m for m in models if not m.given]
        self.live = np.flatnonzero(~self.given)                    # the models whose recalls the query shifts
        z = np.zeros((len(live), K))
        self.n = np.stack([m.n for m in live]) if live else z
        self.diag = np.stack([m.diag for m in live]) if live else z
        self.n_val = np.stack([m.n_val for m in live]) if live else z
        self.r_max = np.array([m.r_max for m in live], dtype=np.float64)
        self.has_pv = np.array([m.pv is not None for m in live], dtype=bool)
        self.pv = np.stack([m.pv if m.pv is not None else np.zeros(K) for m in live]) if live else z
        self.pv_n = np.stack([m.pv_n if m.pv is not None else np.zeros(K) for m in live]) if live else z
        # the prior's three variants (accuracy.recall_prior): without the calibration term, with it,
        # with it for a pooled (validation + CV confusion) registration
        kind = np.array([0 if m.log_cal is None else (2 if m.pooled else 1) for m in live], dtype=np.int64)
        self.kind = kind
        self.log_cal = np.array([0.0 if m.log_cal is None else m.log_cal for m in live], dtype=np.float64)
        coefs = {0: (A.PRIOR_COEF_NO_CONF, A.PRIOR_PSEUDO_NO_CONF), 1: (A.PRIOR_COEF, A.PRIOR_PSEUDO),
                 2: (A.PRIOR_COEF_POOLED, A.PRIOR_PSEUDO_POOLED)}
        self.coefs = coefs
        self.pseudo = np.array([coefs[int(k)][1] for k in kind], dtype=np.float64)
        # the per-model constants of the prior's features (accuracy.recall_prior)
        n1 = np.maximum(self.n, 1.0)
        self.x_const = [np.log(n1), np.log(n1 / np.array([max(float(m.n.sum()), 1.0) for m in live])[:, None])
                        if live else z]
        self.logit_rmax = np.array([A._logit(m.r_max) for m in live], dtype=np.float64)
        self.curve = (self.r_max[:, None] * A.curve(self.n)) if live else z


def shifted_recalls(M: Models, preds: np.ndarray | None, w: np.ndarray | None,
                    with_shift: bool = False):
    """(E, K): ``accuracy.shifted_recall(model, preds[i], w)[0]`` of every model (``preds``: (E, n)
    own-histogram proxies; None: the stored recalls); ``with_shift``: ``(recalls, shift factors)``."""
    from . import accuracy as A

    out = M.base.copy()
    shift_all = np.ones_like(out)
    if preds is None or w is None or preds.shape[1] == 0 or not len(M.live):
        return (out, shift_all) if with_shift else out
    K = w.shape[1]
    n_rows = preds.shape[1]
    P = preds[M.live]                                                           # (L, n)
    L = len(M.live)
    mass = w.sum(axis=0)
    hit = np.bincount((np.arange(L)[:, None] * K + P).ravel(), weights=w[np.arange(n_rows)[None, :], P].ravel(),
                      minlength=L * K).reshape(L, K)
    pr = hit / np.maximum(mass, 1e-12)
    ok = (mass > A.PROXY_MIN_MASS) & (M.n > 0)
    r0 = _prior(M, pr)
    r0 = np.where(ok, r0, M.curve)
    ps = M.pseudo[:, None]
    r = (M.diag + ps * r0) / (M.n_val + ps)
    use = ok & (M.pv_n >= A.SHIFT_MIN_VAL) & (mass >= A.SHIFT_MIN_VAL) & \
        (M.pv - pr > A.SHIFT_Z * A.shift_se(M.pv, M.pv_n, pr, mass)) & M.has_pv[:, None]
    shift = np.where(use, np.sqrt(np.minimum(1.0, (pr + 0.02) / (M.pv + 0.02))), 1.0)
    out[M.live] = r * shift
    shift_all[M.live] = shift
    return (out, shift_all) if with_shift else out


def _prior(M: Models, pr: np.ndarray) -> np.ndarray:
    """(L, K) ``accuracy.recall_prior(model, pr[i])[0]`` of the live models."""
    from . import accuracy as A

    L, K = pr.shape
    r0 = np.zeros((L, K))
    lp = A._logit(pr)
    for kind, (coef, _) in M.coefs.items():
        rows = np.flatnonzero(M.kind == kind)
        if not len(rows):
            continue
        x = [np.ones((len(rows), K)), np.repeat(M.logit_rmax[rows, None], K, axis=1), M.x_const[0][rows],
             M.x_const[1][rows], lp[rows]]
        if kind:
            x.append(np.repeat(M.log_cal[rows, None], K, axis=1))
        X = np.ascontiguousarray(np.stack(x, axis=1))                           # (rows, features, K)
        z = np.matmul(np.asarray(coef), X)                                      # (rows, K)
        r0[rows] = np.where(M.n[rows] > 0, 1.0 / (1.0 + np.exp(-z)), 0.0)
    return r0


def recall_draws(M: Models, R: np.ndarray, seed: int) -> np.ndarray:
    """(E, K): ``accuracy._recall_draw(model, R[i], seed)`` of every model."""
    from . import accuracy as A

    out = R.copy()
    if not len(M.live):
        return out
    conc = (M.n_val + A.RECALL_PSEUDO) / A.RECALL_SPREAD
    Rl = R[M.live]
    rc = np.clip(Rl, 1e-3, 1 - 1e-3)
    a, b = rc * conc, (1.0 - rc) * conc
    gen = np.random.default_rng(seed)
    state = gen.bit_generator.state
    for i, e in enumerate(M.live):
        gen.bit_generator.state = state                                         # = default_rng(seed), per model
        out[e] = np.where(Rl[i] > 0, gen.beta(a[i], b[i]), 0.0)
    return out
