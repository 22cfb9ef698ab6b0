"""Sanity checks of the label-free methods on scikit-learn's bundled tables (issue 20).

* **median split** -- each table (breast cancer, wine, diabetes, digits) is split at one feature's
  median (the feature drawn per seed) into a "low" and a "high" source, plus a "random" half of
  all rows; a held-out quarter of one side is the query, and that side's source must rank first.
  5 seeds x 2 sides = 10 checks per table; the score is the number of top-1 hits.
* **renamed** -- a wine query whose columns are renamed and reordered must rank the wine entry
  first in a hub of wine, breast cancer, diabetes and digits (per seed, a different query half).
* **small query** -- a 20-row wine query: the scores must not tie (distinct values among the
  entries) and must not be 0/1 only.
* **column matches** -- between the bundled tables (wine, breast cancer, diabetes, iris, digits),
  no matched pair of different quantities at similarity >= 0.9.

* **class groups** (SimEx's failure on a footwear / bags zoo) -- scikit-learn digits and MNIST-5k
  (8x8, bench.bench_simex.mnist_8x8) split into visually different class groups (round 0/6/8, thin
  1/7, curvy 2/3/5, open 4/9); one source per group (conv autoencoders, image_shape=(1, 8, 8)), and
  a held-out query of one group must rank that group's source first (4 groups x seeds per domain).

    python -m bench sanity [--quick] [--seeds 5,6,7,8,9] [--methods simex,exact-js]

``--quick`` runs 1 seed of the median split and the renamed table instead of 5 (and no SimEx autoencoders).
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from . import harness as H

TABLES = ("breast_cancer", "wine", "diabetes", "digits")
METHODS = ("adaptivity", "coverage", "js", "exact-js", "l2", "simex")
QUICK_METHODS = ("adaptivity", "coverage", "js", "exact-js", "l2")


def load(name: str) -> pd.DataFrame:
    """A bundled scikit-learn table's features (no target column)."""
    from sklearn import datasets

    d = getattr(datasets, f"load_{name}")()
    fn = getattr(d, "feature_names", None)
    names = [str(c) for c in (fn if fn is not None else [f"x{i}" for i in range(d.data.shape[1])])]
    return pd.DataFrame(np.asarray(d.data, dtype=np.float64), columns=names)


def _kw(method: str, simex: dict | None) -> dict:
    """The per-query parameters of ``method``'s searches (``simex``: SimEx's, e.g. simex_score)."""
    return dict(simex or {}) if method == "simex" else {}


def median_split(df: pd.DataFrame, seed: int) -> tuple[str, dict, dict]:
    """``(feature, sources, queries)``: sources ``low``/``high``/``random``; queries ``low``/``high``."""
    rng = np.random.default_rng(seed)
    n = len(df)
    ok = []
    for c in df.columns:
        v = df[c].to_numpy()
        low = v <= np.median(v)
        if df[c].nunique() >= 8 and 0.3 <= low.mean() <= 0.7:
            ok.append(c)
    feat = ok[int(rng.integers(len(ok)))]
    v = df[feat].to_numpy()
    low = v <= np.median(v)
    held = np.zeros(n, dtype=bool)
    queries = {}
    for side, mask in (("low", low), ("high", ~low)):
        idx = rng.permutation(np.flatnonzero(mask))
        q = idx[:len(idx) // 4]
        held[q] = True
        queries[side] = df.iloc[np.sort(q)].reset_index(drop=True)
    rest = np.flatnonzero(~held)
    rand = np.sort(rng.permutation(rest)[:len(rest) // 2])
    sources = {"low": df[low & ~held].reset_index(drop=True), "high": df[~low & ~held].reset_index(drop=True),
               "random": df.iloc[rand].reset_index(drop=True)}
    return feat, sources, queries


def _add(hub, name: str, df: pd.DataFrame, simex: bool) -> None:
    if simex:
        from fitsketch.simex import AEConfig

        hub.add(name, df, autoencoder=True, ae_config=AEConfig(epochs=25, time_cap_s=5.0, seed=0))
    else:
        hub.add(name, df)


def run_median_split(seeds, methods, work: Path, out=print, simex: dict | None = None) -> dict:
    """{table: {method: hits out of 2 * len(seeds)}} and the misses."""
    import fitsketch

    hits = {t: {m: 0 for m in methods} for t in TABLES}
    misses = []
    for table in TABLES:
        df = load(table)
        for seed in seeds:
            feat, sources, queries = median_split(df, seed)
            shutil.rmtree(work, ignore_errors=True)
            with fitsketch.open(work) as hub:
                for name, s in sources.items():
                    _add(hub, name, s, "simex" in methods)
                for side, q in queries.items():
                    for m in methods:
                        res = hub.search(q, k=3, method=m, **_kw(m, simex))
                        if res and res[0].name == side:
                            hits[table][m] += 1
                        else:
                            misses.append((table, seed, feat, side, m, [(r.name, round(r.score, 4)) for r in res]))
        out(f"  median split {table:<14} " + "  ".join(f"{m} {hits[table][m]}/{2 * len(seeds)}" for m in methods))
    return {"hits": hits, "misses": misses}


def run_renamed(seeds, methods, work: Path, out=print, simex: dict | None = None) -> dict:
    """Top-1 hits of a renamed, reordered wine query among the four tables; 20-row query ties."""
    import fitsketch

    wine = load("wine")
    hits = {m: 0 for m in methods}
    small = {m: [] for m in methods}
    for seed in seeds:
        rng = np.random.default_rng(100 + seed)
        perm = rng.permutation(len(wine))
        half, rest = wine.iloc[perm[:len(wine) // 2]], wine.iloc[perm[len(wine) // 2:]]
        shutil.rmtree(work, ignore_errors=True)
        with fitsketch.open(work) as hub:
            _add(hub, "wine", half.reset_index(drop=True), "simex" in methods)
            for t in ("breast_cancer", "diabetes", "digits"):
                _add(hub, t, load(t), "simex" in methods)
            cols = list(rng.permutation(wine.columns))
            q = rest[cols].reset_index(drop=True)
            q.columns = [f"c{i}" for i in range(len(cols))]
            q20 = rest.iloc[:20].reset_index(drop=True)
            for m in methods:
                try:
                    res = hub.search(q, k=4, method=m, **_kw(m, simex))
                except fitsketch.errors.FitsketchError as e:
                    res = []
                    out(f"  renamed seed {seed} {m}: {type(e).__name__}: {e}")
                hits[m] += bool(res) and res[0].name == "wine"
                res20 = hub.search(q20, k=4, method=m, **_kw(m, simex))
                small[m].append([round(r.score, 6) for r in res20])
    for m in methods:
        out(f"  renamed/reordered wine {m:<11} top-1 {hits[m]}/{len(seeds)};  20-row query scores {small[m]}")
    return {"hits": hits, "small": small}


def cross_matches(threshold: float = 0.9) -> list:
    """(query table, entry table, query column, entry column, similarity) of matched pairs between
    different bundled tables at similarity >= ``threshold`` (default search parameters)."""
    import fitsketch

    tables = {t: load(t) for t in ("wine", "breast_cancer", "diabetes", "iris", "digits")}
    found = []
    work = Path(tempfile.mkdtemp(prefix="fitsketch-sanity-x-"))
    try:
        with fitsketch.open(work / "h") as hub:
            for t, df in tables.items():
                hub.add(t, df)
            for t, df in tables.items():
                try:
                    res = hub.search(df, k=len(tables), method="exact-js")
                except fitsketch.errors.NoSharedFeaturesError:
                    continue
                for r in res:
                    if r.name == t:
                        continue
                    found += [(t, r.name, a, b, s) for a, b, s in r.features if s >= threshold]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return found


GROUPS = {"round": (0, 6, 8), "thin": (1, 7), "curvy": (2, 3, 5), "open": (4, 9)}


def group_data(domain: str):
    from sklearn.datasets import load_digits

    if domain == "digits":
        x, y = load_digits(return_X_y=True)
        return x.astype(np.float32), y
    from .bench_simex import mnist_8x8

    return mnist_8x8()


def run_groups(seeds, methods, work: Path, out=print, simex: dict | None = None) -> dict:
    """{domain: {method: hits out of 4 * len(seeds)}}: a held-out query of one class group must rank
    that group's source first (sources of up to 400 rows, queries of up to 150)."""
    import fitsketch
    from fitsketch.simex import AEConfig

    hits = {}
    for domain in ("digits", "mnist"):
        x, y = group_data(domain)
        cols = [f"p{i}" for i in range(x.shape[1])]
        hits[domain] = {m: 0 for m in methods}
        for seed in seeds:
            p = np.random.default_rng(seed).permutation(len(x))
            src, tgt = p[:int(0.7 * len(x))], p[int(0.7 * len(x)):]
            shutil.rmtree(work, ignore_errors=True)
            with fitsketch.open(work) as hub:
                for g, cl in GROUPS.items():
                    rows = src[np.isin(y[src], cl)][:400]
                    hub.add(g, pd.DataFrame(x[rows], columns=cols), autoencoder="simex" in methods,
                            image_shape=(1, 8, 8), ae_config=AEConfig(epochs=30, seed=seed, time_cap_s=0))
                for g, cl in GROUPS.items():
                    q = pd.DataFrame(x[tgt[np.isin(y[tgt], cl)][:150]], columns=cols)
                    for m in methods:
                        res = hub.search(q, k=4, method=m, **_kw(m, simex))
                        hits[domain][m] += bool(res) and res[0].name == g
        out(f"  class groups {domain:<8} " + "  ".join(f"{m} {hits[domain][m]}/{4 * len(seeds)}" for m in methods))
    return hits


def run(quick: bool = False, out=print, out_dir: Path | None = None, seeds=None, methods=None,
        simex_score: str | None = None) -> dict:
    """``simex_score``: SimEx's score for this run's queries (default: the hub's, "latent" for new hubs)."""
    simex = {"simex_score": simex_score} if simex_score else None
    seeds = tuple(seeds) if seeds else (0,) if quick else (0, 1, 2, 3, 4)
    methods = tuple(methods) if methods else QUICK_METHODS if quick else METHODS
    ctx = H.context(quick=quick)
    sw = H.stopwatch().__enter__()
    work = Path(tempfile.mkdtemp(prefix="fitsketch-bench-sanity-"))
    rows = []
    try:
        out(f"median split, seeds {seeds}: top-1 hits (the query's side first)")
        ms = run_median_split(seeds, methods, work / "h", out=out, simex=simex)
        for t in TABLES:
            for m in methods:
                rows.append(H.row(ctx, "sanity", f"median_split_{t}", m, "top1_hits", ms["hits"][t][m],
                                  unit=f"of {2 * len(seeds)}", baseline="target 90%",
                                  baseline_value=0.9 * 2 * len(seeds)))
        rn = run_renamed(seeds, methods, work / "h", out=out, simex=simex)
        for m in methods:
            rows.append(H.row(ctx, "sanity", "renamed_wine", m, "top1_hits", rn["hits"][m], unit=f"of {len(seeds)}",
                              baseline="all", baseline_value=len(seeds)))
            distinct = [len(set(s)) == len(s) and any(0.0 < abs(v) < 1.0 or abs(v) > 1.0 for v in s) for s in rn["small"][m]]
            rows.append(H.row(ctx, "sanity", "query_20_rows", m, "graded_untied", int(sum(distinct)),
                              unit=f"of {len(seeds)}", baseline="all", baseline_value=len(seeds)))
        gr = run_groups(seeds[:3], methods, work / "h", out=out, simex=simex)
        for dom, h in gr.items():
            for m in methods:
                rows.append(H.row(ctx, "sanity", f"class_groups_{dom}", m, "top1_hits", h[m],
                                  unit=f"of {4 * len(seeds[:3])}", baseline="target 90%",
                                  baseline_value=0.9 * 4 * len(seeds[:3])))
        cm = cross_matches()
        out(f"cross-table column matches at similarity >= 0.9: {len(cm)}" + "".join(f"\n  {x}" for x in cm[:20]))
        rows.append(H.row(ctx, "sanity", "bundled_tables", "match", "cross_matches_ge_0.9", len(cm),
                          baseline="none", baseline_value=None))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out(f"bench_sanity: {sw.elapsed():.0f} s")
    name = "sanity_quick" if quick else "sanity"
    if seeds != ((0,) if quick else (0, 1, 2, 3, 4)) or methods != (QUICK_METHODS if quick else METHODS):
        name += "_seeds" + "-".join(map(str, seeds)) + ("_" + "-".join(methods) if methods != METHODS else "")
    if simex_score:
        name += f"_simex-{simex_score}"
    H.write_suite(name, rows, out=out_dir, quick=quick)
    return {"median_split": ms, "renamed": rn, "groups": gr, "cross_matches": cm}


def suite(opts: H.Options) -> dict:
    return run(quick=opts.quick, out_dir=opts.out_dir)


def main(argv=None) -> None:
    p = H.parser(__doc__.splitlines()[0])
    p.add_argument("--seeds", help="comma-separated seeds of the median split (default 0-4; --quick 0); "
                                   "the class groups use the first three")
    p.add_argument("--methods", help=f"comma-separated methods (default {','.join(METHODS)})")
    p.add_argument("--simex-score", default=None, help="SimEx's score for every simex query (e.g. regions; "
                                                       "default: the hub's)")
    args = p.parse_args(argv)
    opts = H.options(args)
    run(quick=opts.quick, out_dir=opts.out_dir, seeds=[int(v) for v in args.seeds.split(",")] if args.seeds else None,
        methods=args.methods.split(",") if args.methods else None, simex_score=args.simex_score)


if __name__ == "__main__":
    main()
