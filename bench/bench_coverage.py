"""Coverage tuning with a held-out split of seeds (the Coverage issue, deliverable 3).

Bits, tables and tau are chosen on the *tuning* seeds only (by mean top-1 + top-2 error over
the workloads), then the chosen setting, the default and the other methods are reported on the
*held-out* seeds, which the choice never saw. Workloads: digits class skew and digits vs
MNIST-5k (``fitsketch.workloads``); ground truth from trained models.

    python -m bench.bench_coverage [--quick]
"""
from __future__ import annotations

import itertools
import shutil
import tempfile
from pathlib import Path

import numpy as np

from . import harness as H

GRID_BITS = (8, 10, 12)
GRID_TABLES = (8, 16)
GRID_TAU = (1.0, 2.0, 4.0)
OTHER = ("adaptivity", "exact-js", "l2")


def _scores(wl, work: Path, *, bits: int, tables: int, taus, methods=()) -> dict:
    """{(method, tau or None): {target: {source: score}}} for one workload instance."""
    import fitsketch

    cfg = fitsketch.SketchConfig(partition_size=100, coverage_bits=bits, coverage_tables=tables)
    out = {}
    shutil.rmtree(work, ignore_errors=True)
    with fitsketch.open(work, config=cfg) as hub:
        for name, df in wl.sources.items():
            hub.add(name, df)
        for t, df in wl.targets.items():
            for tau in taus:
                res = hub.search(df, k=len(wl.sources), method="coverage", coverage_tau=tau)
                out.setdefault(("coverage", tau), {})[t] = {r.name: r.score - 1e-9 * i for i, r in enumerate(res)}
            for m in methods:
                res = hub.search(df, k=len(wl.sources), method=m)
                out.setdefault((m, None), {})[t] = {r.name: r.score - 1e-9 * i for i, r in enumerate(res)}
    return out


def run(quick: bool = False, out=print, out_dir: Path | None = None) -> list[dict]:
    from fitsketch.workloads import digit_domains, digits_skew, selection_quality

    tune_seeds, held_seeds = ((0,), (4,)) if quick else ((0, 1, 2, 3), (4, 5, 6, 7))
    # --quick (the smoke run): the default (bits, tables) only, every tau -- the same code, a sixth of the hubs
    grid_bits, grid_tables = ((10,), (16,)) if quick else (GRID_BITS, GRID_TABLES)
    makers = {"digits_skew": digits_skew, "digit_domains": digit_domains}
    ctx = H.context(quick=quick)
    sw = H.stopwatch().__enter__()
    work = Path(tempfile.mkdtemp(prefix="fitsketch-bench-coverage-"))
    rows = []
    try:
        # ---- tune
        err = {}
        for (bits, tables), (wname, make) in itertools.product(itertools.product(grid_bits, grid_tables),
                                                               makers.items()):
            for seed in tune_seeds:
                wl = make(seed)
                sc = _scores(wl, work / "h", bits=bits, tables=tables, taus=GRID_TAU)
                for tau in GRID_TAU:
                    q = selection_quality(sc[("coverage", tau)], wl.accuracy)
                    err.setdefault((bits, tables, tau), []).append(q["top1_error"] + q["top2_error"])
        best = min(err, key=lambda c: (np.mean(err[c]), c))
        out(f"tuning seeds {tune_seeds}: best (bits, tables, tau) = {best}, mean top-1 + top-2 error "
            f"{np.mean(err[best]):.3f} (default (10, 16, 1.0): {np.mean(err[(10, 16, 1.0)]):.3f})")
        # ---- held out
        out(f"held-out seeds {held_seeds}: top-1 / top-2 error, Pearson")
        for wname, make in makers.items():
            per = {}
            for seed in held_seeds:
                wl = make(seed)
                sc = _scores(wl, work / "h", bits=best[0], tables=best[1], taus=(best[2],), methods=OTHER)
                sd = _scores(wl, work / "h", bits=10, tables=16, taus=(1.0,))
                for label, s in (("coverage-tuned", sc[("coverage", best[2])]), ("coverage-default", sd[("coverage", 1.0)]),
                                 *[(m, sc[(m, None)]) for m in OTHER]):
                    per.setdefault(label, []).append(selection_quality(s, wl.accuracy))
            for label, qs in per.items():
                m = {k: float(np.nanmean([q[k] for q in qs])) for k in ("top1_error", "top2_error", "pearson")}
                out(f"  {wname:<14} {label:<17} {m['top1_error']:.2f} / {m['top2_error']:.2f}  r={m['pearson']:.2f}")
                for k, v in m.items():
                    rows.append(H.row(ctx, "coverage", wname, label, f"heldout_{k}", v,
                                      baseline="coverage-default" if label != "coverage-default" else None,
                                      chosen=list(best), tune_seeds=list(tune_seeds), held_seeds=list(held_seeds)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out(f"bench_coverage: {sw.elapsed():.0f} s")
    H.write_suite("coverage_quick" if quick else "coverage", rows, out=out_dir, quick=quick)
    return rows


def suite(opts: H.Options) -> list[dict]:
    return run(quick=opts.quick, out_dir=opts.out_dir)


def main(argv=None) -> None:
    suite(H.options(H.parser(__doc__.splitlines()[0]).parse_args(argv)))


if __name__ == "__main__":
    main()
