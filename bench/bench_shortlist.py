"""Shortlist recall: does the profile shortlist of a large hub keep the entries an exhaustive search
ranks first, for every histogram method?

A hub of ``--entries`` *distinct* synthetic entries (bench/scale.py's families: each entry merged
from 10 partition sketches, mostly of one family, so scores are graded rather than tied) is queried
with ``shortlist=`` the default (256) and with ``shortlist=0`` (every entry scored). Per method:
recall@10 by score (the share of the shortlisted top 10 scoring at least the exhaustive 10th best,
which counts ties fairly), top-1 found (the shortlisted best equals the exhaustive best), and the
latency of both (the exhaustive one is the baseline).

    python -m bench.bench_shortlist [--quick] [--entries 10000]
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from . import harness as H
from .scale import build_sketches

METHODS = ("adaptivity", "js", "exact-js", "l2")


def run(quick: bool = False, entries: int | None = None, out=print, out_dir: Path | None = None) -> list[dict]:
    import fitsketch

    n = entries or (1_200 if quick else 10_000)    # the shortlist engages above 4 x 256 = 1,024 entries
    n_queries = 3 if quick else 10
    ctx = H.context("cpu", quick)
    env = H.environment("cpu")
    t0 = time.perf_counter()
    sketches, queries = build_sketches(20, 8, n, seed=1)
    out(f"shortlist: {n:,} distinct entries built in {time.perf_counter() - t0:.1f} s")
    work = Path(tempfile.mkdtemp(prefix="fitsketch-bench-shortlist-"))
    rows = []
    try:
        with fitsketch.open(work / "h.hub") as hub:
            t1 = time.perf_counter()
            hub.add_sketches([(f"e{i:07d}", sk) for i, sk in enumerate(sketches)])
            out(f"  added in {time.perf_counter() - t1:.1f} s")
            hub.search(queries[0], k=10)                      # brings the profile index up to date
            for method in METHODS:
                rec, top1, t_short, t_full = [], [], [], []
                for q in queries[:n_queries]:
                    t2 = time.perf_counter()
                    short = hub.search(q, k=10, method=method)
                    t_short.append(time.perf_counter() - t2)
                    t2 = time.perf_counter()
                    full = hub.search(q, k=10, method=method, shortlist=0)
                    t_full.append(time.perf_counter() - t2)
                    kth = full[-1].score
                    rec.append(float(np.mean([m.score >= kth - 1e-12 for m in short])))
                    top1.append(short[0].score >= full[0].score - 1e-12)
                r, t1_ = float(np.mean(rec)), float(np.mean(top1))
                ps, pf = 1e3 * float(np.median(t_short)), 1e3 * float(np.median(t_full))
                out(f"  {method:<11} recall@10 {r:.2f}  top-1 found {t1_:.2f}  p50 {ps:7.1f} ms vs exhaustive "
                    f"{pf:8.1f} ms ({pf / ps:.0f}x)")
                w = f"{n} distinct entries"
                rows.append(H.row(ctx, "shortlist", w, method, "recall_at_10", r, baseline="exhaustive top 10",
                                  baseline_value=1.0, queries=len(rec), top1_found=t1_))
                rows.append(H.row(ctx, "shortlist", w, method, "query_p50", ps, unit="ms",
                                  baseline="exhaustive search (shortlist=0)", baseline_value=pf, queries=len(rec)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows.append(H.row(ctx, "shortlist", "all", "all", "wall_time", time.perf_counter() - t0, unit="s"))
    path = H.write_suite("shortlist" + ("_quick" if quick else ""), rows, out=out_dir, quick=quick, env=env,
                         tables={"notes": ["recall by score: share of the shortlisted top 10 scoring at least the "
                                           "exhaustive 10th best; queries: 2 partitions of a family's fresh data"]})
    out(f"shortlist: wrote {path} ({time.perf_counter() - t0:.1f} s)")
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_shortlist", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1,200 entries, 3 queries")
    ap.add_argument("--entries", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None, help="results folder (default bench/results)")
    a = ap.parse_args(argv)
    run(a.quick, a.entries, out_dir=a.out)


if __name__ == "__main__":
    main()
