# ProbeLog (Kahana, Nathan, Horwitz, Hoshen, "Can this Model Also Recognize Dogs? Zero-Shot Model
# Search from Weights"): describe every output logit of a classifier by how it responds to one
# fixed, seeded set of probe inputs, so that logits detecting the same concept look alike.
#
#   R (n_probes, n_logits): R[i, j] = logit j of the model on probe i
#   d_j = (R[:, j] - mean_i R[i, j]) / std_i R[i, j]      (population std, ddof = 0)
#
# i.e. each logit's responses are z-scored across the probes; a constant logit (std 0) gets the
# zero descriptor. The cosine of two descriptors is the Pearson correlation of the two logits'
# responses over the probes: invariant to each logit's offset and scale, so logits of unrelated
# models (other calibration, other training set) compare. Search is exact cosine (FAISS
# IndexFlatIP over L2-normalized descriptors).
#
# Zero-shot concept search: an encoder (list[str] -> (n, dim)) embeds the concept and the probe
# set's texts; the concept's "responses" are its cosine similarities to the probes, z-scored the
# same way, and go through the same index.
#
# Collaborative probing: a model is run on a seeded subset S of the probes (different per model:
# the subset's seed mixes the model name in); its measured descriptor entries (z-scored over S)
# and the measured entries of every stored descriptor on that probe set form a matrix with
# missing values, completed by rank-r ALS with ridge (``complete_responses``); the completed rows
# are z-scored again over all probes. The record keeps which probes were measured.
#
# This module holds the probing and the arithmetic; engine/probelog.py the records and the hub's
# ProbeLog component.
from __future__ import annotations

import numpy as np

from . import errors as E

__all__ = ["make_probes", "probe_model", "descriptors", "complete_responses", "BATCH", "RIDGE", "ALS_ITERS"]

BATCH = 256               # probes per forward call
RIDGE = 1e-1              # ALS ridge
ALS_ITERS = 50


def make_probes(source, n: int, seed: int = 0, *, method: str = "subset") -> np.ndarray:
    """``n`` probes drawn from real data ``source`` (n_rows, ...): ``method="subset"`` takes a
    seeded subset of the rows without replacement (the paper's choice: real, in-distribution
    inputs); ``"gaussian"`` generates rows from a per-feature normal fitted to ``source``
    (generated probes, when no held-out data may be stored). Returns float32 (n, ...)."""
    x = np.asarray(source)
    if x.ndim < 1 or x.dtype.kind not in "biuf":
        raise E.InvalidArgumentError(f"source has dtype {x.dtype}, shape {x.shape}: pass a numeric array (n_rows, ...)")
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 2:
        raise E.InvalidArgumentError(f"n={n!r}: pass an integer number of probes >= 2")
    rng = np.random.default_rng(seed)
    if method == "subset":
        if n > x.shape[0]:
            raise E.InvalidArgumentError(f"n={n} probes but source has {x.shape[0]} rows: lower n or use method='gaussian'")
        return x[np.sort(rng.choice(x.shape[0], size=int(n), replace=False))].astype(np.float32)
    if method == "gaussian":
        mu, sd = x.mean(axis=0), x.std(axis=0)
        return (mu + sd * rng.standard_normal((int(n),) + x.shape[1:])).astype(np.float32)
    raise E.InvalidArgumentError(f"method={method!r}: use 'subset' or 'gaussian'")


def _n_inputs(probes) -> int:
    return len(probes) if isinstance(probes, list) else int(probes.shape[0])


def probe_model(model, probes, *, batch_size: int = BATCH) -> np.ndarray:
    """Run ``model`` on ``probes`` and return its logits, float32 (n_probes, n_logits).

    ``model`` is a ``torch.nn.Module`` (run in eval mode under no_grad on the device of its
    parameters, in batches of ``batch_size``; its training flag is restored) or a callable taking
    a batch (a NumPy slice of ``probes``, or a list of str for text probes) and returning logits.
    Raises DimensionError unless every batch gives a 2-D (batch, n_logits) output, NonFiniteError
    on NaN / infinite logits.
    """
    if isinstance(probes, (list, tuple)):
        probes = list(probes)
        if not all(isinstance(t, str) for t in probes):
            raise E.InvalidArgumentError("probes given as a list must be str (text probes)")
    else:
        probes = np.asarray(probes, dtype=np.float32)
    n = _n_inputs(probes)
    if n == 0:
        raise E.EmptyDataError("probes is empty: add probes with make_probes(data, n, seed)")
    try:
        import torch
        is_module = isinstance(model, torch.nn.Module)
    except ImportError:  # pragma: no cover - torch is a dependency
        is_module = False
    if not is_module and not callable(model):
        raise E.InvalidArgumentError(f"model is a {type(model).__name__}: pass a torch.nn.Module or a callable "
                                     f"(batch of probes -> logits (batch, n_logits)), e.g. clf.decision_function")
    outs = []
    if is_module:
        was_training = model.training
        params = next(model.parameters(), None)
        dev = params.device if params is not None else torch.device("cpu")
        model.eval()
        try:
            with torch.no_grad():
                for lo in range(0, n, batch_size):
                    xb = probes[lo:lo + batch_size]
                    out = model(xb if isinstance(xb, list) else torch.from_numpy(np.ascontiguousarray(xb)).to(dev))
                    outs.append(_check_batch(out.detach().float().cpu().numpy(), _n_inputs(xb), lo))
        finally:
            model.train(was_training)
    else:
        for lo in range(0, n, batch_size):
            xb = probes[lo:lo + batch_size]
            outs.append(_check_batch(model(xb), _n_inputs(xb), lo))
    widths = {o.shape[1] for o in outs}
    if len(widths) != 1:
        raise E.DimensionError(f"the model returned {sorted(widths)} logits on different batches: it must give a fixed number")
    r = np.concatenate(outs).astype(np.float32)                       # (n_probes, n_logits)
    bad = ~np.isfinite(r)
    if bad.any():
        raise E.NonFiniteError(f"the model gave NaN or infinite logits on {int(bad.any(axis=1).sum())} of {n} probes "
                               f"(logits {np.flatnonzero(bad.any(axis=0))[:10].tolist()}): fix the model or its inputs")
    return r


def _check_batch(out, rows: int, lo: int) -> np.ndarray:
    try:
        a = np.asarray(out)
    except Exception as e:  # noqa: BLE001 - any model output
        raise E.DimensionError(f"the model output cannot be read as an array ({e}): return (batch, n_logits) logits") from None
    if a.dtype.kind not in "biuf":
        raise E.DimensionError(f"the model returned dtype {a.dtype}: return numeric logits (batch, n_logits)")
    if a.ndim != 2 or a.shape[0] != rows or a.shape[1] == 0:
        hint = " (a binary classifier's (n,) scores: return s[:, None])" if a.ndim == 1 else ""
        raise E.DimensionError(f"the model returned shape {a.shape} for probes {lo}..{lo + rows - 1}: expected "
                               f"({rows}, n_logits), one row of logits per probe{hint}")
    return a


def descriptors(responses) -> np.ndarray:
    """Normalized logit descriptors (n_logits, n_probes) float32 of responses (n_probes, n_logits):
    each column z-scored across the probes (population std); a constant column gives zeros.
    NaN marks an unmeasured response: the statistics use the measured ones and NaN is kept."""
    r = np.asarray(responses, dtype=np.float64)
    if r.ndim != 2:
        raise E.DimensionError(f"responses has shape {r.shape}: expected (n_probes, n_logits)")
    if np.isinf(r).any():
        raise E.NonFiniteError("responses hold infinity: only NaN (unmeasured) and finite values are allowed")
    obs = ~np.isnan(r)
    if (obs.sum(axis=0) < 2).any():
        raise E.DimensionError(f"responses has shape {r.shape}: every logit needs >= 2 measured probes")
    mean = np.nanmean(r, axis=0)                                      # (n_logits,)
    std = np.sqrt(np.nanmean((r - mean) ** 2, axis=0))
    z = np.where(std > 0, (r - mean) / np.where(std > 0, std, 1.0), np.where(obs, 0.0, np.nan))
    return np.ascontiguousarray(z.T, dtype=np.float32)


def complete_responses(partial, rank: int, *, ridge: float = RIDGE, iters: int = ALS_ITERS, seed: int = 0,
                       tol: float = 1e-6) -> np.ndarray:
    """Fill the NaN entries of ``partial`` (n_rows, n_cols) by a rank-``rank`` factorization.

    Each row is centred on its observed mean, then ``X ~ U V^T + b 1^T`` (``b`` a per-row offset:
    a mean over few observed entries is off) is fitted on the observed entries by alternating
    ridge least squares (``ridge`` * I), from a seeded random ``V``, for at most
    ``iters`` sweeps or until the observed-fit RMSE moves less than ``tol``. Observed entries are
    returned unchanged; a row or column with no observation gets its mean (0 for a column).
    """
    x = np.asarray(partial, dtype=np.float64)
    if x.ndim != 2:
        raise E.DimensionError(f"partial has shape {x.shape}: expected (n_rows, n_cols)")
    if not isinstance(rank, (int, np.integer)) or isinstance(rank, bool) or rank < 1:
        raise E.InvalidArgumentError(f"rank={rank!r}: pass a positive integer")
    if np.isinf(x).any():
        raise E.NonFiniteError("partial holds infinity: mark unobserved entries with NaN")
    m = ~np.isnan(x)                                                  # (n_rows, n_cols) observed
    cnt = m.sum(axis=1)
    mu = np.where(cnt > 0, np.nansum(x, axis=1) / np.maximum(cnt, 1), 0.0)   # (n_rows,)
    xc = np.where(m, x - mu[:, None], 0.0)
    r = int(min(rank, *x.shape))
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((x.shape[1], r)) / np.sqrt(r)             # (n_cols, rank)
    ones = np.ones((x.shape[1], 1))
    prev = np.inf
    for _ in range(max(1, iters)):
        ub = _ridge_rows(np.hstack([v, ones]), xc, m, ridge)           # (n_rows, rank + 1): factors, bias
        u, b = ub[:, :r], ub[:, r:]
        v = _ridge_rows(u, (xc - b).T, m.T, ridge)
        fit = u @ v.T + b
        rmse = float(np.sqrt(((fit - xc)[m] ** 2).mean())) if m.any() else 0.0
        if abs(prev - rmse) < tol:
            break
        prev = rmse
    return np.where(m, x, fit + mu[:, None]).astype(np.float32)


def _ridge_rows(a: np.ndarray, x: np.ndarray, m: np.ndarray, lam: float) -> np.ndarray:
    """For each row i: argmin_b ||x[i, m_i] - a[m_i] b||^2 + lam ||b||^2, rows grouped by mask."""
    out = np.zeros((x.shape[0], a.shape[1]))
    pats, inv = np.unique(m, axis=0, return_inverse=True)
    eye = lam * np.eye(a.shape[1])
    for p in range(pats.shape[0]):
        rows = np.flatnonzero(inv.reshape(-1) == p)
        cols = pats[p]
        if not cols.any():
            continue
        ao = a[cols]                                                  # (n_obs, rank)
        out[rows] = np.linalg.solve(ao.T @ ao + eye, ao.T @ x[np.ix_(rows, np.flatnonzero(cols))].T).T
    return out
