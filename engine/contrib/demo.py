"""``fitsketch demo``: model selection on real data, end to end, in a couple of minutes.

(a) The ModelHub paper's image experiment on scikit-learn's digits (workloads.digits_skew):
    a classifier per source subset, every recipe in turn as the target; the ranking by
    adaptivity, JS, exact JS and L2 beside each model's measured accuracy, and each method's
    top-1 / top-2 error over all targets and seeds.
(b) Predicted accuracy (method="accuracy", what ``auto`` uses on labelled entries): a zoo of
    models trained on class-skewed samples of digits, registered with their labels, the model and
    validation rows; for unlabelled targets, each model's predicted accuracy beside its measured one.
(c) Real tables with their own column names (DBLP, ACM, Fodors; from the py-entitymatching
    source distribution on PyPI) registered as entries; Zagats, and Zagats with its columns
    renamed, as queries: which columns each entry shares with the target and which ranks first.
"""
from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from ..formatting import format_matches
from ..config import SketchConfig

log = logging.getLogger(__name__)

DEMO_METHODS = ("adaptivity", "coverage", "js", "exact-js", "l2")


def digits_experiment(workdir: Path, seeds=(0, 1, 2, 3), partition_size: int = 100, show_seed: int = 0,
                      out=print) -> dict:
    import fitsketch

    from .workloads import digits_skew, selection_quality

    per_method = {m: [] for m in DEMO_METHODS}
    per_method["source-accuracy"] = []
    for seed in seeds:
        wl = digits_skew(seed)
        path = workdir / f"digits-{seed}"
        with fitsketch.open(path, config=SketchConfig(partition_size=partition_size)) as hub:
            for name, df in wl.sources.items():
                hub.add(name, df, metadata={"source_accuracy": wl.source_accuracy[name]})
            scores = {m: {} for m in DEMO_METHODS}
            for t, df in wl.targets.items():
                for m in DEMO_METHODS:
                    res = hub.search(df, k=len(wl.sources), method=m)
                    # rank order is the method's; break exact score ties by rank
                    scores[m][t] = {r.name: r.score - 1e-9 * i for i, r in enumerate(res)}
                if seed == show_seed:
                    out(f"\ntarget {t!r} (seed {seed}): source models ranked by each method "
                        f"[measured accuracy on the target]")
                    for m in DEMO_METHODS:
                        ranked = sorted(scores[m][t], key=lambda s: -scores[m][t][s])
                        out(f"  {m:<11} " + "  ".join(f"{s}[{wl.accuracy[t][s]:.3f}]" for s in ranked))
                    best = wl.accuracy[t].idxmax()
                    out(f"  {'best':<11} {best} ({wl.accuracy[t][best]:.3f})")
        for m in DEMO_METHODS:
            per_method[m].append(selection_quality(scores[m], wl.accuracy))
        src = {t: dict(wl.source_accuracy) for t in wl.targets}
        per_method["source-accuracy"].append(selection_quality(src, wl.accuracy))
    summary = {m: {k: float(np.mean([q[k] for q in qs])) for k in ("top1_error", "top2_error", "regret", "pearson")}
               for m, qs in per_method.items()}
    out(f"\nselection quality over {len(seeds)} seeds x 6 targets (lower error is better):")
    out(f"  {'method':<16}{'top-1 err':>10}{'top-2 err':>10}{'regret':>9}{'pearson':>9}")
    for m, s in summary.items():
        out(f"  {m:<16}{s['top1_error']:>10.2f}{s['top2_error']:>10.2f}{s['regret']:>9.4f}{s['pearson']:>9.2f}")
    return summary


def tables_experiment(workdir: Path, out=print) -> dict:
    import fitsketch

    from .workloads import entitymatching_tables

    tables = entitymatching_tables()
    result = {}
    with fitsketch.open(workdir / "tables") as hub:
        for name in ("dblp", "acm", "fodors"):
            e = hub.add(name, tables[name], metadata={"source": "py-entitymatching 0.4.2"})
            out(f"  registered {name!r}: {e.n_rows} rows, columns {e.features}")
        zag = tables["zagats"]
        renamed = zag.rename(columns={"name": "restaurant", "addr": "street", "city": "town",
                                      "phone": "tel", "type": "cuisine"})
        acm_sample = tables["acm"].sample(n=600, random_state=0)
        # restaurant guides spell values differently: match features whose token sets are 35%
        # contained (the default t2 is 0.5), and show which columns each entry shares
        for label, q in (("zagats", zag), ("zagats, columns renamed", renamed), ("600 ACM rows", acm_sample)):
            res = hub.search(q, k=3, method="adaptivity", feature_threshold=0.35)
            out(f"\nquery: {label} (columns {list(q.columns)}), feature_threshold=0.35")
            out(format_matches(res))
            result[label] = [m.to_dict() for m in res]
    return result


def accuracy_experiment(workdir: Path, out=print, seed: int = 2, n_sources: int = 4, n_targets: int = 3) -> dict:
    import fitsketch

    from .workloads import label_skew_zoo, selection_quality

    wl = label_skew_zoo("digits", seed=seed, n_sources=n_sources, n_targets=n_targets)
    scores = {}
    with fitsketch.open(workdir / "accuracy") as hub:
        for name, df in wl.sources.items():
            hub.add(name, df, labels=wl.source_labels[name], model=wl.models[name], validation=wl.validation[name])
        for t, df in wl.targets.items():
            res = hub.search(df, k=len(wl.sources))          # method="auto": accuracy on labelled entries
            scores[t] = {m.name: m.score for m in res}
            mix = res[0].evidence["mixture"]
            out(f"\ntarget {t!r} ({len(df)} rows, labels not given); estimated class mixture {mix}")
            out(f"  {'model':<12} {'predicted':>9} {'interval':>15} {'measured':>9}")
            for m in res[:4]:
                lo, hi = m.evidence.get("interval", [float("nan")] * 2)
                out(f"  {m.name:<12} {m.score:>9.3f} {f'[{lo:.3f}, {hi:.3f}]':>15} {wl.accuracy[t][m.name]:>9.3f}")
            best = wl.accuracy[t].idxmax()
            out(f"  best measured: {best} ({wl.accuracy[t][best]:.3f})")
    q = selection_quality(scores, wl.accuracy)
    out(f"\n  over {len(wl.targets)} targets: Spearman {q['spearman']:.2f}, top-1 error {q['top1_error']:.2f}, "
        f"regret {100 * q['regret']:.1f} points, mean |predicted - measured| {q['mae']:.3f}")
    return q


def run_demo(workdir: str | None = None, as_json: bool = False, quick: bool = False) -> dict:
    t0 = time.perf_counter()
    lines: list[str] = []
    out = (lambda s: lines.append(s)) if as_json else print
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="fitsketch-demo-")
        workdir = tmp.name
    wd = Path(workdir)
    wd.mkdir(parents=True, exist_ok=True)
    try:
        out("== (a) digits: which source model fits each target? (ModelHub image experiment)")
        digits = digits_experiment(wd, seeds=(0,) if quick else (0, 1, 2, 3), out=out)
        out("\n== (b) predicted accuracy: models trained on class-skewed digits, queried with unlabelled rows")
        accuracy = accuracy_experiment(wd, out=out)
        out("\n== (c) real tables (DBLP, ACM, Fodors, Zagats from the py-entitymatching sdist on PyPI)")
        try:
            tables = tables_experiment(wd, out=out)
        except RuntimeError as e:  # no registry access: say so, keep the digits result
            out(f"  skipped: {e}")
            tables = {"skipped": str(e)}
        out(f"\ndemo finished in {time.perf_counter() - t0:.1f} s")
    finally:
        if tmp is not None:
            tmp.cleanup()
    result = {"digits": digits, "accuracy": accuracy, "tables": tables, "seconds": time.perf_counter() - t0}
    if as_json:
        print(json.dumps(result, default=str))
    return result
