"""Offline fit and check of method="accuracy"'s recall prior (engine/accuracy.py ``PRIOR_COEF``,
``PRIOR_PSEUDO``) on cached label-skew zoos: the zoos' registration records, validation outputs and
query-side arrays are computed once (``--build``, minutes per zoo) into one ``.npz`` per zoo, then
variants are scored in seconds.

    python -m bench.accuracy_prior --build DIR          # digits 0-4, MNIST 0-3 (about 15 min)
    python -m bench.accuracy_prior --fit DIR            # fit on the tuning seeds, report held-out
    python -m bench.accuracy_prior --interval FILE.npz  # the interval's coverage per spread x scale
                                                        # on the tuning + extra tuning seeds (~25 min;
                                                        # --registration cv: the pooled registration)

Tuning seeds: digits 0-1, MNIST 0; held-out: digits 2-4, MNIST 1-3 (bench.bench_accuracy's). The
fit minimizes the mean squared error of the predicted accuracies against the measured ones (the
bench's primary ground truth), Powell from the old learning curve; it prints each set's quality
against the measured and the population accuracy, beside the engine's current constants. Not a
suite of the runner: it times nothing.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

TUNE = (("digits", 0), ("digits", 1), ("mnist", 0))
HELD = (("digits", 2), ("digits", 3), ("digits", 4), ("mnist", 1), ("mnist", 2), ("mnist", 3))
# extra tuning seeds (sixth session): never reported, so constants can be chosen on them too; MNIST
# seed 0 alone proved an easy seed (the interval chosen on it under-covered held-out MNIST)
EXTRA_TUNE = (("digits", 5), ("mnist", 4), ("mnist", 5))
HELD_OUT = True    # validation rows equal to a training row left out (as hub.add does: accuracy_perf.held_out)
KEYS = ("spearman", "top1_error", "top2_error", "regret", "mae")


def _zoo(ds: str, seed: int, held_out: bool, registration: str = "validation") -> tuple:
    """One label-skew zoo registered as the hub would: ``(workload, config, names, kinds, feature map,
    sources, class records with performance, labels, class pool)``; ``held_out``: validation rows equal
    to a training row left out of the measured confusion (accuracy_perf.held_out); ``registration``
    "cv": ``confusion=`` the model's 5-fold cross-validated confusion too (bench_accuracy.register)."""
    from fitsketch import accuracy as A
    from fitsketch.config import SketchConfig
    from fitsketch.workloads import label_skew_zoo

    from .bench_accuracy import CV_FOLDS

    cv = registration == "cv"
    wl = label_skew_zoo(ds, seed=seed, cv_folds=CV_FOLDS if cv else 0)
    cfg = SketchConfig()
    names = list(next(iter(wl.sources.values())).columns)
    kinds = ["numeric"] * len(names)
    fm = {f: f for f in range(len(names))}
    srcs = list(wl.sources)
    recs = {}
    for s, df in wl.sources.items():
        rec = A.class_record(df, A.check_labels(wl.source_labels[s], len(df)), names, kinds, cfg)
        rec["perf"] = A.performance(rec, model=wl.models[s], validation=wl.validation[s], columns=names,
                                    feature_names=None, kinds=kinds, config=cfg,
                                    training=df if held_out else None,
                                    confusion=wl.cv_confusion[s] if cv else None)
        recs[s] = rec
    labels = sorted({c for r in recs.values() for c in r["labels"]})
    pl = A.class_pool_of([(recs[s], names, fm) for s in srcs], labels, names)
    return wl, cfg, names, kinds, fm, srcs, recs, labels, pl


def build(ds: str, seed: int, out: Path, registration: str = "validation") -> Path:
    """One zoo's (target, source) rows: per class the prior's features and the recall's counts."""
    from fitsketch import accuracy as A

    wl, cfg, names, kinds, fm, srcs, recs, labels, pl = _zoo(ds, seed, HELD_OUT, registration)
    cols = {k: [] for k in ("target", "source", "n", "n_val", "diag", "r_max", "conf", "pr", "ok", "pv", "pv_n",
                            "pi", "acc", "pop", "gpr", "gpr1", "gph", "r_pop", "pi_true", "gauss", "rows", "mass")}
    cls_index = {c: i for i, c in enumerate(labels)}
    for t, df in wl.targets.items():
        qb = A.query_buckets(df, names, kinds, list(range(len(names))), cfg)
        qx = A.query_index(qb, len(df))
        # the engine's mixture: EM over the class Gaussians (naive Bayes where an entry has none)
        ll, gauss = A.mixture_loglik(df, pl, names, kinds, cfg, cfg.accuracy_temperature, qb, qx)
        pi = A.em_mixture(ll)
        w = A.responsibilities(ll, pi)
        mass = w.sum(axis=0)
        for s in srcs:
            m = A._Model(recs[s]["perf"], recs[s], labels)
            pred = A.own_predictions(qb, len(df), recs[s], fm, labels, names, qx)
            hit = np.bincount(pred, weights=w[np.arange(len(pred)), pred], minlength=len(labels))
            # the class Gaussians as a classifier with the model's training class shares as prior
            gq = {}
            for nm, scale in (("gpr", 1.0), ("gpr1", 2.0)):
                with np.errstate(divide="ignore"):
                    a = scale * ll + np.log(m.n / max(m.n.sum(), 1.0))
                q = np.exp(a - a.max(axis=1, keepdims=True))
                q /= q.sum(axis=1, keepdims=True)
                gq[nm] = (w * q).sum(axis=0) / np.maximum(mass, 1e-12)
                if scale == 2.0:
                    am = q.argmax(axis=1)
                    gq["gph"] = np.bincount(am, weights=w[np.arange(len(am)), am],
                                            minlength=len(labels)) / np.maximum(mass, 1e-12)
            rp = np.zeros(len(labels))
            for c, v in wl.class_recall[s].items():
                rp[cls_index[c]] = v
            pt = np.zeros(len(labels))
            for c, v in wl.target_mixture[t].items():
                pt[cls_index[c]] = v
            for k, v in (("target", t), ("source", s), ("n", m.n), ("n_val", m.n_val), ("diag", m.diag),
                         ("r_max", m.r_max), ("conf", recs[s]["perf"]["true_class_prob"]),
                         ("pr", hit / np.maximum(mass, 1e-12)), ("ok", (mass > A.PROXY_MIN_MASS) & (m.n > 0)),
                         ("pv", m.pv), ("pv_n", m.pv_n), ("pi", pi), ("acc", wl.accuracy[t][s]),
                         ("pop", wl.population[t][s]), ("gpr", gq["gpr"]), ("gpr1", gq["gpr1"]),
                         ("gph", gq["gph"]), ("r_pop", rp), ("pi_true", pt), ("gauss", gauss), ("rows", len(df)),
                         ("mass", mass)):
                cols[k].append(v)
    path = out / f"{ds}_{seed}{_suffix(registration)}.npz"
    np.savez(path, **{k: np.array(v) for k, v in cols.items()})
    return path


def interval(zoos, spreads, path: Path, scales=tuple(np.round(np.arange(0.3, 0.91, 0.03), 2)), out=print,
             registration: str = "validation") -> dict:
    """Coverage and width of accuracy's interval on ``zoos`` for every ``RECALL_SPREAD`` in ``spreads``
    x ``INTERVAL_SCALE`` in ``scales``: per (target, model) the engine's estimate with 50 bootstrap
    draws (``estimate``, seed 0) unscaled, then each scale applied about the estimate. The draws
    (estimate, 5 %, 95 %, measured accuracy, one row per (target, model), zoos in order) are saved
    to ``path`` per data set and spread; returns ``{(spread, scale): {ds: (coverage, width)}}``."""
    from fitsketch import accuracy as A

    raw: dict = {}
    keep = (A.RECALL_SPREAD, A.INTERVAL_SCALE, A.INTERVAL_SCALE_POOLED)
    try:
        A.INTERVAL_SCALE = A.INTERVAL_SCALE_POOLED = 1.0
        for ds, seed in zoos:
            wl, cfg, names, kinds, fm, srcs, recs, labels, pl = _zoo(ds, seed, True, registration)
            for t, df in wl.targets.items():
                qb = A.query_buckets(df, names, kinds, list(range(len(names))), cfg)
                qx = A.query_index(qb, len(df))
                ll = A.mixture_loglik(df, pl, names, kinds, cfg, cfg.accuracy_temperature, qb, qx)[0]
                prox = [A.own_predictions(qb, len(df), recs[s], fm, labels, names, qx) for s in srcs]
                truth = np.array([wl.accuracy[t][s] for s in srcs])
                for sp in spreads:
                    A.RECALL_SPREAD = sp
                    _, acc, iv = A.estimate(ll, labels, [recs[s]["perf"] for s in srcs], bootstrap=50, seed=0,
                                            proxies=prox, records=[recs[s] for s in srcs])
                    raw.setdefault(f"{ds}_{sp}", []).append(np.stack([acc, iv[:, 0], iv[:, 1], truth], 1))
            out(f"{ds} seed {seed} done")
    finally:
        A.RECALL_SPREAD, A.INTERVAL_SCALE, A.INTERVAL_SCALE_POOLED = keep
    raw = {k: np.concatenate(v) for k, v in raw.items()}
    np.savez(path, **raw)
    res = {}
    for sp in spreads:
        for lam in scales:
            row = {}
            for ds in sorted({d for d, _ in zoos}):
                a = raw[f"{ds}_{sp}"]
                lo = np.clip(a[:, 0] + lam * (a[:, 1] - a[:, 0]), 0, 1)
                hi = np.clip(a[:, 0] + lam * (a[:, 2] - a[:, 0]), 0, 1)
                row[ds] = (float(((lo <= a[:, 3] + 1e-12) & (a[:, 3] <= hi + 1e-12)).mean()), float((hi - lo).mean()))
            res[(sp, float(lam))] = row
            out(f"spread {sp} scale {lam:.2f}: " + "  ".join(f"{ds} coverage {c:.3f} width {w:.3f}"
                                                             for ds, (c, w) in row.items()))
    ok = [(np.mean([w for _, w in row.values()]), k) for k, row in res.items()
          if all(c >= 0.9 for c, _ in row.values())]
    if ok:
        out(f"narrowest holding >= 90 % on every data set: spread {min(ok)[1][0]}, scale {min(ok)[1][1]}")
    return res


def _suffix(registration: str) -> str:
    return "" if registration == "validation" else f"_{registration}"


def _lg(x):
    x = np.clip(x, 1e-3, 1 - 1e-3)
    return np.log(x / (1 - x))


def predict(z: dict, coef, pseudo: float, conf: bool = True, recall: bool = False) -> np.ndarray:
    """Predicted accuracy of every (target, source) row of ``z`` under the prior ``coef`` (``recall``:
    the (rows, classes) recalls instead)."""
    from fitsketch import accuracy as A

    n = np.maximum(z["n"], 1.0)
    x = [np.ones_like(n), _lg(z["r_max"])[:, None] * np.ones_like(n), np.log(n),
         np.log(n / np.maximum(z["n"].sum(axis=1, keepdims=True), 1.0)), _lg(z["pr"])]
    if conf:
        x.append(np.log(np.maximum(z["r_max"], 1e-3) / np.maximum(z["conf"], 1e-3))[:, None] * np.ones_like(n))
    r0 = 1.0 / (1.0 + np.exp(-np.tensordot(np.asarray(coef), np.stack(x), axes=1)))
    r0 = np.where(z["ok"], r0, z["r_max"][:, None] * A.curve(z["n"]))
    r0 = np.where(z["n"] > 0, r0, 0.0)
    r = (z["diag"] + pseudo * r0) / (z["n_val"] + pseudo)
    if "mass" not in z:
        raise SystemExit("this .npz was built before the query's class mass was stored (the shift factor's gate "
                         "reads it): rebuild it with --build")
    pv = z["pv"]                          # stored as the engine keeps it (_Model.pv): (hits + 1) / (n + 2)
    mass = z["mass"]                      # the class's query rows: EM's responsibilities summed (shifted_recall)
    use = (z["ok"] & (z["pv_n"] >= A.SHIFT_MIN_VAL) & (mass >= A.SHIFT_MIN_VAL)
           & (pv - z["pr"] > A.SHIFT_Z * A.shift_se(pv, z["pv_n"], z["pr"], mass)))
    r = r * np.where(use, np.sqrt(np.minimum(1.0, (z["pr"] + 0.02) / (pv + 0.02))), 1.0)
    return r if recall else (r * z["pi"]).sum(axis=1)


def quality(zs: list, coef, pseudo, conf=True, truth="acc") -> dict:
    import pandas as pd

    from fitsketch.workloads import selection_quality

    qs = []
    for z in zs:
        p = predict(z, coef, pseudo, conf)
        sc, gt = {}, {}
        for t, s, a, g in zip(z["target"], z["source"], p, z[truth]):
            sc.setdefault(t, {})[s] = a
            gt.setdefault(t, {})[s] = g
        qs.append(selection_quality(sc, pd.DataFrame(gt)))
    return {k: float(np.mean([q[k] for q in qs])) for k in KEYS}


def fit(zs: list, conf: bool = True, on: str = "accuracy", start=None):
    """``(coef, pseudo)`` minimizing, by Powell from the engine's constants, the squared error of
    ``on``: "accuracy" (the engine's) the predicted accuracies against the measured ones; "recall"
    each class's recall against the model's recall on every test row of the class (``r_pop``),
    weighted by the class's share of the target (``pi_true``; lost on the tuning seeds)."""
    from scipy.optimize import minimize

    from fitsketch import accuracy as A

    y = np.concatenate([z["acc"] for z in zs])
    if start is None:
        start = (list(A.PRIOR_COEF) + [np.log(A.PRIOR_PSEUDO)] if conf
                 else list(A.PRIOR_COEF_NO_CONF) + [np.log(A.PRIOR_PSEUDO_NO_CONF)])

    def loss(p):
        if on == "recall":
            return float(sum(np.sum(z["pi_true"] * (predict(z, p[:-1], np.exp(p[-1]), conf, recall=True)
                                                    - z["r_pop"]) ** 2) / len(z["acc"]) for z in zs))
        return float(np.mean((np.concatenate([predict(z, p[:-1], np.exp(p[-1]), conf) for z in zs]) - y) ** 2))
    p = minimize(loss, np.array(start), method="Powell", options={"maxiter": 40000, "xtol": 1e-4, "ftol": 1e-10}).x
    return p[:-1], float(np.exp(p[-1]))


def _fmt(q):
    return (f"rho {q['spearman']:.3f} top-1/2 {q['top1_error']:.2f}/{q['top2_error']:.2f} "
            f"regret {100 * q['regret']:.1f} MAE {q['mae']:.4f}")


def main(argv=None) -> int:
    from fitsketch import accuracy as A

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--build", type=Path, help="write the zoos' .npz files into this folder")
    p.add_argument("--fit", type=Path, help="fit on the tuning seeds' .npz files in this folder, report held-out")
    p.add_argument("--on", default="accuracy", choices=("recall", "accuracy"), help="with --fit: what is fitted")
    p.add_argument("--zoos", default="", help="with --build: e.g. digits:0,mnist:1 (default: all nine); with "
                   "--interval (default: the tuning and extra tuning seeds)")
    p.add_argument("--interval", type=Path,
                   help="write the interval's draws here and print coverage per spread x scale")
    p.add_argument("--spreads", default="1,2,3", help="with --interval: RECALL_SPREAD values")
    p.add_argument("--held-out", action="store_true",
                   help="with --fit --registration cv: also print the held-out seeds' quality (look once, at the end)")
    p.add_argument("--registration", default="validation", choices=("validation", "cv"),
                   help="with --build / --fit / --interval: 'cv' registers each model's cross-validated confusion with its "
                   "validation rows (files *_cv.npz); its --fit fits PRIOR_COEF_POOLED on the tuning and extra "
                   "tuning seeds and reports held-out seeds only where their files exist")
    a = p.parse_args(argv)
    if a.interval:
        zoos = [(d, int(s)) for d, s in (x.split(":") for x in a.zoos.split(",") if x)] or [*TUNE, *EXTRA_TUNE]
        interval(zoos, [float(x) for x in a.spreads.split(",")], a.interval, registration=a.registration)
        return 0
    if a.build:
        a.build.mkdir(parents=True, exist_ok=True)
        zoos = [(d, int(s)) for d, s in (x.split(":") for x in a.zoos.split(",") if x)] or (
            [*TUNE, *EXTRA_TUNE] if a.registration == "cv" else [*TUNE, *HELD])   # cv: what its --fit needs
        for ds, seed in zoos:
            print("wrote", build(ds, seed, a.build, a.registration), flush=True)
    if a.fit and a.registration == "cv":
        _fit_pooled(a.fit, a.held_out)
    elif a.fit:
        load = lambda ds, s: dict(np.load(a.fit / f"{ds}_{s}.npz", allow_pickle=False))  # noqa: E731
        tune = {ds: [load(d, s) for d, s in TUNE if d == ds] for ds in ("digits", "mnist")}
        held = {ds: [load(d, s) for d, s in HELD if d == ds] for ds in ("digits", "mnist")}
        sets = {"engine": ((A.PRIOR_COEF, A.PRIOR_PSEUDO, True), (A.PRIOR_COEF_NO_CONF, A.PRIOR_PSEUDO_NO_CONF, False))}
        fits = []
        for conf in (True, False):
            coef, pseudo = fit([z for zs in tune.values() for z in zs], conf, a.on)
            fits.append((coef, pseudo, conf))
            print(f"fitted (confidence {conf}): coef {np.round(coef, 4).tolist()} pseudo {pseudo:.2f}")
        sets["refit"] = tuple(fits)
        for name, variants in sets.items():
            for coef, pseudo, conf in variants:
                for part, zs in (("tuning", tune), ("held-out", held)):
                    print(f"{name:6s} conf={conf!s:5s} {part:8s} " + " || ".join(
                        f"{ds}: {_fmt(quality(z, coef, pseudo, conf))} [vs population MAE "
                        f"{quality(z, coef, pseudo, conf, 'pop')['mae']:.4f}]" for ds, z in zs.items()))
    return 0


def _fit_pooled(folder: Path, held_out: bool = False) -> tuple:
    """The "cv" registration's prior (``PRIOR_COEF_POOLED``): fitted on every tuning + extra tuning seed's
    ``*_cv.npz`` (a missing one is an error, not a smaller fit); quality per set beside the engine's
    pooled constants; the held-out seeds' only with ``held_out`` (and where their files exist)."""
    from fitsketch import accuracy as A

    missing = [f"{d}_{s}_cv.npz" for d, s in (*TUNE, *EXTRA_TUNE) if not (folder / f"{d}_{s}_cv.npz").exists()]
    if missing:
        raise SystemExit(f"{folder} lacks {', '.join(missing)}: build them first (--build {folder} --registration cv "
                         "builds the tuning and extra tuning seeds)")
    load = lambda ds, s: dict(np.load(folder / f"{ds}_{s}_cv.npz", allow_pickle=False))  # noqa: E731
    parts = {"tuning": TUNE, "extra": EXTRA_TUNE, **({"held-out": HELD} if held_out else {})}
    zs = {k: {ds: [load(d, s) for d, s in v if d == ds and (folder / f"{d}_{s}_cv.npz").exists()]
              for ds in ("digits", "mnist")} for k, v in parts.items()}
    coef, pseudo = fit([z for k in ("tuning", "extra") for zz in zs[k].values() for z in zz], True,
                       start=list(A.PRIOR_COEF_POOLED) + [np.log(A.PRIOR_PSEUDO_POOLED)])
    print(f"fitted (cv registration): coef {np.round(coef, 4).tolist()} pseudo {pseudo:.2f}")
    for name, (c, ps) in (("engine", (A.PRIOR_COEF_POOLED, A.PRIOR_PSEUDO_POOLED)), ("refit", (coef, pseudo))):
        for part, by in zs.items():
            if any(by.values()):
                print(f"{name:6s} {part:8s} " + " || ".join(f"{ds}: {_fmt(quality(z, c, ps))}"
                                                            for ds, z in by.items() if z))
    return coef, pseudo


if __name__ == "__main__":
    raise SystemExit(main())
