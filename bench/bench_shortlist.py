"""Shortlist recall: does the candidate stage of a large hub keep the entries an exhaustive search
ranks first, for every method it serves?

Two workloads. **families** (``run``):

A hub of ``--entries`` *distinct* synthetic entries (bench/scale.py's families: each entry merged
from 10 partition sketches, mostly of one family, so scores are graded rather than tied) is queried
with ``shortlist=`` the default (256) and with ``shortlist=0`` (every entry scored). Per method:
recall@10 by score (the share of the shortlisted top 10 scoring at least the exhaustive 10th best,
which counts ties fairly), top-1 found (the shortlisted best equals the exhaustive best), and the
latency of both (the exhaustive one is the baseline).

**similar** (``run_similar``): zoos of *similar* entries (bench/zoos.py): every entry a
class-skewed sample (Dirichlet alpha 0.3, 400 rows) of one dataset -- scikit-learn digits (64
columns) or MNIST-5k pooled 4 x 4 (49 columns) -- so all entries share one schema and differ by
their class mixtures; queries are class-skewed samples of 600 rows. Per method (adaptivity, js,
exact-js, l2, coverage): recall@10 and best-found of the default candidate stage (the exact screen,
engine/screen.py) and of the random-projection profiles (``shortlist_screen="profile"``), each
against ``shortlist=0`` (every entry scored), with the latency of all three (p50 over the queries).
The MinHash stage scans every signature at every size (the LSH tables
are pathological when every entry has the query's columns: see ``run_similar``). Histogram methods
get the query as a prebuilt sketch; coverage needs the query's rows, so it gets
the array (the query is sketched inside each timed search, the same for all three).

    python -m bench.bench_shortlist [--quick] [--entries 10000]
    python -m bench.bench_shortlist --similar digits --entries 1000 [--queries 8]
    python -m bench.bench_shortlist --screen-scale digits      # the screen alone at 1k / 10k / 100k
    python -m bench.bench_shortlist --recall digits --entries 1000 --queries 100 --shortlist 100 \
        --methods js,adaptivity,exact-js                        # many queries + the proxies' gaps (margins)
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from . import harness as H
from .scale import build_sketches

METHODS = ("adaptivity", "js", "exact-js", "l2")
SIMILAR_METHODS = ("adaptivity", "js", "exact-js", "l2", "coverage")


def run(quick: bool = False, entries: int | None = None, out=print, out_dir: Path | None = None) -> list[dict]:
    import fitsketch

    n = entries or (1_200 if quick else 10_000)    # the shortlist engages above 4 x 256 = 1,024 entries
    n_queries = 3 if quick else 10
    ctx = H.context("cpu", quick)
    env = H.environment("cpu")
    wall = H.stopwatch().__enter__()
    sketches, queries = build_sketches(20, 8, n, seed=1)
    out(f"shortlist: {n:,} distinct entries built in {wall.elapsed():.1f} s")
    work = Path(tempfile.mkdtemp(prefix="fitsketch-bench-shortlist-"))
    rows = []
    try:
        with fitsketch.open(work / "h.hub") as hub:
            with H.stopwatch() as sw:
                hub.add_sketches([(f"e{i:07d}", sk) for i, sk in enumerate(sketches)])
            out(f"  added in {sw.s:.1f} s")
            hub.search(queries[0], k=10)                      # brings the profile index up to date
            for method in METHODS:
                rec, top1, t_short, t_full = [], [], H.Samples(), H.Samples()
                for q in queries[:n_queries]:
                    short = t_short.call(hub.search, q, k=10, method=method)
                    full = t_full.call(hub.search, q, k=10, method=method, shortlist=0)
                    kth = full[-1].score
                    rec.append(float(np.mean([m.score >= kth - 1e-12 for m in short])))
                    top1.append(short[0].score >= full[0].score - 1e-12)
                r, t1_ = float(np.mean(rec)), float(np.mean(top1))
                ps, pf = 1e3 * t_short.stats()["p50_s"], 1e3 * t_full.stats()["p50_s"]
                out(f"  {method:<11} recall@10 {r:.2f}  top-1 found {t1_:.2f}  p50 {ps:7.1f} ms vs exhaustive "
                    f"{pf:8.1f} ms ({pf / ps:.0f}x)")
                w = f"{n} distinct entries"
                rows.append(H.row(ctx, "shortlist", w, method, "recall_at_10", r, baseline="exhaustive top 10",
                                  baseline_value=1.0, queries=len(rec), top1_found=t1_))
                rows.append(H.row(ctx, "shortlist", w, method, "query_p50", ps, unit="ms",
                                  baseline="exhaustive search (shortlist=0)", baseline_value=pf, queries=len(rec)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows.append(H.row(ctx, "shortlist", "all", "all", "wall_time", wall.elapsed(), unit="s"))
    path = H.write_suite("shortlist" + ("_quick" if quick else ""), rows, out=out_dir, quick=quick, env=env,
                         tables={"notes": ["recall by score: share of the shortlisted top 10 scoring at least the "
                                           "exhaustive 10th best; queries: 2 partitions of a family's fresh data"]})
    out(f"shortlist: wrote {path} ({wall.elapsed():.1f} s)")
    return rows


def _found(short, full) -> tuple[float, bool]:
    """(recall@k by score, best found): shares of ``short`` scoring at least the exhaustive k-th best
    (ties count fairly), and whether its best reaches the exhaustive best."""
    kth = full[-1].score
    return float(np.mean([m.score >= kth - 1e-12 for m in short])), bool(short and short[0].score >= full[0].score - 1e-12)


def run_similar(data: str = "digits", entries: int | None = None, n_queries: int | None = None, quick: bool = False,
                methods=SIMILAR_METHODS, out=print, out_dir: Path | None = None, seed: int = 0) -> list[dict]:
    import fitsketch
    from fitsketch import planner

    from . import zoos

    # every entry here shares one schema, so every stored feature collides with the query's in the
    # MinHash LSH tables (used above SCAN_FEATURE_LIMIT stored features): at 1,300 entries one
    # exhaustive query spent minutes and GBs there. The exact signature scan gives the same (exact)
    # candidates, so the baseline scans at every size
    planner.SCAN_FEATURE_LIMIT = 1 << 62
    n = entries or (1_200 if quick else 1_000)
    nq = n_queries or (3 if quick else 8)
    ctx = H.context("cpu", quick)
    env = H.environment("cpu")
    wall = H.stopwatch().__enter__()
    zoos.check(data, 2)                                  # the fast builder equals fitsketch.sketch
    X, y, names = zoos.dataset(data)
    sk = zoos.build(data, n, seed=seed)
    q_idx = [zoos.sample_index(y, zoos.QUERY_ROWS, (seed, 1, i)) for i in range(nq)]
    q_sk = zoos.fast_sketches(X, names, q_idx, fitsketch.SketchConfig())
    build_s = wall.elapsed()
    out(f"similar/{data}: {n:,} entries of {len(names)} columns sketched in {build_s:.1f} s "
        f"({1e3 * build_s / n:.1f} ms an entry)")
    w = f"{data} label skew, {n} entries"
    work = Path(tempfile.mkdtemp(prefix="fitsketch-bench-similar-"))
    rows = []
    try:
        with fitsketch.open(work / "h.hub") as hub:
            with H.stopwatch() as sw:
                hub.add_sketches([(f"e{i:07d}", s) for i, s in enumerate(sk)])
            add_s = sw.s
            del sk
            with H.stopwatch() as sw:
                hub.warm()
            warm_s = sw.s
            idx = hub._synced_screen()
            mem = idx.nbytes()
            out(f"  added in {add_s:.1f} s ({n / add_s:.0f} entries/s), warm-up {warm_s:.1f} s, screen index "
                f"{mem / 2**20:.1f} MiB ({mem / n / 1024:.1f} KiB an entry)")
            rows += [H.row(ctx, "shortlist_similar", w, "all", "add_throughput", n / add_s, unit="entries/s"),
                     H.row(ctx, "shortlist_similar", w, "all", "warm_s", warm_s, unit="s"),
                     H.row(ctx, "shortlist_similar", w, "all", "screen_bytes_per_entry", mem / n, unit="B"),
                     H.row(ctx, "shortlist_similar", w, "all", "build_ms_per_entry", 1e3 * build_s / n, unit="ms")]
            for method in methods:
                res = {mode: ([], [], H.Samples()) for mode in ("exact", "profile", "full")}
                kept = []
                for qi in range(nq):
                    q = (X[q_idx[qi]] if method == "coverage" else q_sk[qi])
                    kw = {"feature_names": names} if method == "coverage" else {}
                    full = res["full"][2].call(hub.search, q, k=10, method=method, shortlist=0, **kw)
                    for mode in ("exact", "profile"):
                        short = res[mode][2].call(hub.search, q, k=10, method=method, shortlist_screen=mode, **kw)
                        r, b = _found(short, full)
                        res[mode][0].append(r)
                        res[mode][1].append(b)
                    if qi == 0:
                        plan = hub.explain(q, k=10, method=method, **kw)
                        st = next((s for s in plan.stages if s.name == "shortlist"), None)
                        kept.append(None if st is None else st.actual)
                st_full = res["full"][2].stats()
                pf, cf = 1e3 * st_full["p50_s"], 1e3 * st_full["cpu"]["p50_s"]
                for mode in ("exact", "profile"):
                    rec, best = float(np.mean(res[mode][0])), float(np.mean(res[mode][1]))
                    st = res[mode][2].stats()
                    p50, c50 = 1e3 * st["p50_s"], 1e3 * st["cpu"]["p50_s"]
                    out(f"  {method:<10} {mode:<7} recall@10 {rec:.3f}  best found {best:.3f}  p50 {p50:8.1f} ms"
                        f"  vs shortlist=0 {pf:8.1f} ms ({pf / p50:.1f}x); CPU {c50:8.1f} vs {cf:8.1f} ms")
                    m = f"{method} ({mode} screen)"
                    rows.append(H.row(ctx, "shortlist_similar", w, m, "recall_at_10", rec, baseline="exhaustive top 10",
                                      baseline_value=1.0, queries=nq, best_found=best, kept=kept[0]))
                    rows.append(H.row(ctx, "shortlist_similar", w, m, "best_found", best,
                                      baseline="exhaustive best", baseline_value=1.0, queries=nq))
                    rows.append(H.row(ctx, "shortlist_similar", w, m, "query_p50", p50, unit="ms",
                                      baseline="exhaustive search (shortlist=0)", baseline_value=pf, queries=nq))
                    rows.append(H.row(ctx, "shortlist_similar", w, m, "query_cpu_p50", c50, unit="ms",
                                      baseline="exhaustive search (shortlist=0)", baseline_value=cf, queries=nq))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows.append(H.row(ctx, "shortlist_similar", w, "all", "wall_time", wall.elapsed(), unit="s"))
    path = H.write_suite(f"shortlist_similar_{data}_{n}" + ("_quick" if quick else ""), rows, out=out_dir,
                         quick=quick, env=env,
                         tables={"notes": ["zoo: bench/zoos.py (class-skewed samples, Dirichlet 0.3, 400 rows; "
                                           "queries 600 rows); recall by score against shortlist=0 in the same run"]})
    out(f"similar/{data}: wrote {path} ({wall.elapsed():.1f} s)")
    return rows


def run_recall(data: str = "digits", entries: int = 1_000, n_queries: int = 100, methods=SIMILAR_METHODS,
               shortlist: int = 100, seed: int = 0, out=print, out_dir: Path | None = None, tag: str = "",
               labelled: bool = False, query_seed: int | None = None) -> list[dict]:
    """Recall of the default candidate stage (the exact screen, with each rule's margin) on a zoo of
    similar entries, with enough queries for best-found to mean something, and the proxy's gaps
    that choose a rule's margin: per query, how far below the exact-js screen's 10th best score the
    exhaustive top 10 (``gap10``) and the exhaustive best (``gap1``) lie (planner.ShortlistRule.margin).
    ``shortlist`` is set so the stage runs at ``entries`` (above 4 x shortlist). Profile screens are
    not run (bench/SUMMARY.md has them). ``labelled``: entries are added from their rows with their
    labels (``hub.add(labels=)``, ~10x slower than prebuilt sketches), for ``method="accuracy"``."""
    import fitsketch
    from fitsketch import planner

    from . import zoos

    planner.SCAN_FEATURE_LIMIT = 1 << 62                 # as run_similar: the exact signature scan
    ctx = H.context("cpu", False)
    env = H.environment("cpu")
    sw0 = H.stopwatch().__enter__()
    zoos.check(data, 2)
    X, y, names = zoos.dataset(data)
    sk = zoos.build(data, entries, seed=seed)
    q_seed = seed if query_seed is None else query_seed
    q_idx = [zoos.sample_index(y, zoos.QUERY_ROWS, (q_seed, 1, i)) for i in range(n_queries)]
    q_sk = zoos.fast_sketches(X, names, q_idx, fitsketch.SketchConfig())
    w = f"{data} label skew, {entries} entries, seed {seed}, shortlist {shortlist}"
    out(f"recall/{data}: {entries:,} entries, {n_queries} queries, shortlist {shortlist}, seed {seed}")
    work = Path(tempfile.mkdtemp(prefix="fitsketch-bench-recall-"))
    rows, per_query = [], []
    try:
        with fitsketch.open(work / "h.hub", config=fitsketch.SketchConfig(shortlist=shortlist)) as hub:
            sw1 = H.stopwatch().__enter__()
            if labelled:   # accuracy needs each entry's class record: added from its rows and labels
                for i in range(entries):
                    e_idx = zoos.sample_index(y, zoos.ROWS, (seed, 0, i))
                    hub.add(f"e{i:07d}", X[e_idx], labels=y[e_idx], feature_names=names)
            else:
                hub.add_sketches([(f"e{i:07d}", s) for i, s in enumerate(sk)])
            del sk
            hub.warm()
            out(f"  added + warmed in {sw1.elapsed():.1f} s")
            idx = hub._synced_screen()
            row_of = {int(e): r for r, e in enumerate(idx.ids.v)}
            name_id = {}

            def eid(name):
                if name not in name_id:
                    name_id[name] = hub.get(name).id
                return name_id[name]

            for method in methods:
                rec, best, kept, g10, g1, recall_claim = [], [], [], [], [], []
                t_s, t_f = H.Samples(), H.Samples()
                for qi in range(n_queries):
                    q = (X[q_idx[qi]] if method in ("coverage", "accuracy") else q_sk[qi])
                    kw = {"feature_names": names} if method in ("coverage", "accuracy") else {}
                    full = t_f.call(hub.search, q, k=10, method=method, shortlist=0, **kw)
                    plan = t_s.call(hub.explain, q, k=10, method=method, **kw)   # explain keeps search's matches
                    short = plan.matches
                    r, b = _found(short, full)
                    rec.append(r)
                    best.append(b)
                    st = next((s for s in plan.stages if s.name == "shortlist"), None)
                    kept.append(None if st is None else st.actual)
                    recall_claim.append(None if st is None else st.recall)
                    ejs = idx.scores(q_sk[qi], "exact-js", seed=hub.config.seed)
                    sc = np.full(len(idx), np.nan)
                    sc[[row_of[int(i)] for i in ejs["ids"]]] = ejs["score"]
                    kth = np.sort(sc[~np.isnan(sc)])[-10]
                    top = np.array([sc[row_of[eid(m.name)]] for m in full])
                    g10.append(float(kth - top.min()))
                    g1.append(float(kth - top[0]))
                    per_query.append({"method": method, "query": qi, "recall": r, "best": b, "gap10": g10[-1],
                                      "gap1": g1[-1], "kept": kept[-1]})
                rmean, bmean = float(np.mean(rec)), float(np.mean(best))
                ps, pf = 1e3 * t_s.stats()["p50_s"], 1e3 * t_f.stats()["p50_s"]
                kk = [x for x in kept if x is not None]
                out(f"  {method:<10} recall@10 {rmean:.3f} (min {min(rec):.2f})  best found {bmean:.3f} "
                    f"({sum(best)}/{len(best)})  kept p50 {np.median(kk) if kk else '-'} max {max(kk) if kk else '-'}"
                    f"  explain p50 {ps:7.0f} ms vs shortlist=0 {pf:7.0f} ms  proxy gap10 max {max(g10):.4f} "
                    f"p95 {np.quantile(g10, .95):.4f}, gap1 max {max(g1):.4f}; stated recall {recall_claim[0]}")
                m = f"{method}"
                rows += [H.row(ctx, "shortlist_recall", w, m, "recall_at_10", rmean, baseline="exhaustive top 10",
                               baseline_value=1.0, queries=n_queries, min=min(rec)),
                         H.row(ctx, "shortlist_recall", w, m, "best_found", bmean, baseline="exhaustive best",
                               baseline_value=1.0, queries=n_queries),
                         H.row(ctx, "shortlist_recall", w, m, "query_p50", ps, unit="ms",
                               baseline="exhaustive search (shortlist=0)", baseline_value=pf, queries=n_queries),
                         H.row(ctx, "shortlist_recall", w, m, "kept_p50", float(np.median(kk)) if kk else -1.0,
                               unit="entries", max=max(kk) if kk else -1),
                         H.row(ctx, "shortlist_recall", w, m, "proxy_gap10_max", max(g10),
                               p95=float(np.quantile(g10, .95))),
                         H.row(ctx, "shortlist_recall", w, m, "proxy_gap1_max", max(g1)),
                         H.row(ctx, "shortlist_recall", w, m, "stated_recall", -1.0 if recall_claim[0] is None
                               else float(recall_claim[0]))]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows.append(H.row(ctx, "shortlist_recall", w, "all", "wall_time", sw0.elapsed(), unit="s"))
    path = H.write_suite(f"shortlist_recall_{data}_{entries}_s{seed}{tag}", rows, out=out_dir, env=env,
                         tables={"per_query": per_query})
    out(f"recall/{data}: wrote {path} ({sw0.elapsed():.1f} s)")
    return rows


def run_margin_kept(data: str = "digits", entries: int = 1_000, n_queries: int = 100,
                    margins=(0.005, 0.009, 0.013, 0.015, 0.02, 0.03), out=print) -> dict:
    """What a proxy margin costs: per margin, how many entries of the zoo score (exact-js screen, the
    proxy) at least the 10th best minus the margin -- median / p95 / max over the queries. The screen
    index only (no hub, no exhaustive search), so it runs in minutes at 1k-10k entries."""
    import fitsketch
    from fitsketch import screen as S

    from . import zoos

    cfg = fitsketch.SketchConfig()
    X, y, names = zoos.dataset(data)
    idx = S.ScreenIndex(cfg.jslsh_l, cfg.hist_accuracy)
    for lo in range(0, entries, 1000):
        sk = zoos.build(data, min(entries, lo + 1000), seed=0, lo=lo)
        idx._append([(lo + i, S.record(s.hist, s.names, s.sums, s.counts, cfg.seed), None) for i, s in enumerate(sk)])
    qs = zoos.fast_sketches(X, names, [zoos.sample_index(y, zoos.QUERY_ROWS, (0, 1, i)) for i in range(n_queries)], cfg)
    kept = {m: [] for m in margins}
    for q in qs:
        sc = idx.scores(q, "exact-js", seed=cfg.seed)["score"]
        kth = np.sort(sc)[-10]
        for m in margins:
            kept[m].append(int((sc >= kth - m).sum()))
    res = {m: (int(np.median(v)), int(np.quantile(v, .95)), max(v)) for m, v in kept.items()}
    out(f"margin/{data}: {entries} entries, {n_queries} queries: kept (median, p95, max) {res}")
    return res


def run_screen_scale(data: str = "digits", distinct: int = 500, sizes=(1_000, 10_000, 100_000), n_queries: int = 3,
                     out=print, out_dir: Path | None = None) -> list[dict]:
    """The screen alone (engine/screen.py) at sizes no hub here can be filled to in the time: an
    in-memory index of ``distinct`` zoo entries' screen records repeated up to each size (the work
    is linear in the stored non-zeros, whatever their values), timed per method (p50 of
    ``n_queries``), with its memory; "js (small query)": js's screen of a small query (the 600-row
    queries) from the stored small-query keys, with the exact-js pass that grades it. Only the
    candidate stage: scoring the kept entries comes on top (the hub's query p50 at the same
    ``shortlist``)."""
    import fitsketch
    from fitsketch import profiles as PR
    from fitsketch import screen as S
    from fitsketch.jslsh import own_keys

    from . import zoos

    cfg = fitsketch.SketchConfig()
    ctx = H.context("cpu", False)
    env = H.environment("cpu")
    wall = H.stopwatch().__enter__()
    X, y, names = zoos.dataset(data)
    sk = zoos.build(data, distinct, seed=7)
    recs = []
    for s in sk:
        pr, keys = PR.record(s.hist, s.names, s.n_partitions, cfg, "cpu")
        recs.append((S.record(s.hist, s.names, s.sums, s.counts, cfg.seed), keys))
    del sk
    qs = zoos.fast_sketches(X, names, [zoos.sample_index(y, zoos.QUERY_ROWS, (7, 1, i)) for i in range(n_queries)], cfg)
    kw = dict(seed=cfg.seed, r=cfg.jslsh_r, k=cfg.jslsh_k, l=cfg.jslsh_l)
    own = [(own_keys(q.hist, q.n_features, q.n_partitions, per_dataset=True, **kw),
            own_keys(q.hist, q.n_features, q.n_partitions, per_dataset=False, **kw)) for q in qs]
    sp = PR.small_params(cfg)                  # the 600-row queries are small: js's own bands
    small = [(sp, own_keys(q.hist, q.n_features, q.n_partitions, per_dataset=True, seed=cfg.seed, r=sp[0], k=sp[1],
                           l=sp[2])) for q in qs]
    rows = []
    idx = S.ScreenIndex(cfg.jslsh_l, cfg.hist_accuracy)
    for size in sizes:
        while len(idx) < size:
            lo = len(idx)
            idx._append([(lo + i, r, k) for i, (r, k) in enumerate(recs[:size - lo])])
        w = f"{data} label skew, {size} entries (screen only)"
        mem = idx.nbytes()
        out(f"screen/{data}: {size:,} entries, index {mem / 2**20:.0f} MiB ({mem / size / 1024:.1f} KiB an entry)")
        rows.append(H.row(ctx, "shortlist_screen", w, "all", "screen_bytes_per_entry", mem / size, unit="B"))
        for method in ("exact-js", "l2", "js", "adaptivity", "js (small query)"):
            m = method.split(" ")[0]
            t = H.time_each(lambda qo: S.select(idx.scores(qo[0], m, seed=cfg.seed, t_keys=qo[1] if m == method else None,
                                                           t_small=qo[2] if m != method else None),
                                                cfg.shortlist), list(zip(qs, own, small)))
            p50, c50 = 1e3 * t["p50_s"], 1e3 * t["cpu"]["p50_s"]
            out(f"  {method:<10} screen p50 {p50:8.1f} ms wall, {c50:8.1f} ms CPU ({1e3 * c50 / size:.2f} us CPU an entry)")
            rows.append(H.row(ctx, "shortlist_screen", w, method, "screen_p50", p50, unit="ms", queries=t["n"]))
            rows.append(H.row(ctx, "shortlist_screen", w, method, "screen_cpu_p50", c50, unit="ms", queries=t["n"]))
    rows.append(H.row(ctx, "shortlist_screen", "all", "all", "wall_time", wall.elapsed(), unit="s"))
    path = H.write_suite(f"shortlist_screen_{data}", rows, out=out_dir, env=env)
    out(f"screen/{data}: wrote {path} ({wall.elapsed():.1f} s)")
    return rows


def run_two_level(data: str = "digits", sizes=(10_000, 100_000), n_queries: int = 100, coarse=(1, 2, 4, 8, 16),
                  methods=("exact-js", "l2", "js", "adaptivity"), shortlist: int = 256, budget_s: float = 600.0,
                  seed: int = 0, tag: str = "", out=print, out_dir: Path | None = None) -> list[dict]:
    """The two-level candidate stage (engine/coarse.py) against the exact screen of every entry, on an
    in-memory screen index of ``sizes`` *distinct* pool-zoo entries (bench/zoos.py ``Pool``; records
    as ``Hub.add_sketches`` stores them: screen.record + profiles.records, no LMDB -- a 100k hub
    cannot be filled here in the time, the stage reads only this index). Per (size, method), up to
    ``n_queries`` 600-row queries (the run_scale queries) within ``budget_s``: the exact screen of
    every entry (the reference: the scorers' own scores, tests/test_shortlist.py) and, per
    ``shortlist_coarse`` in ``coarse``, the two-level screen; each followed by the selection the
    pipeline makes (screen.choose, top ``shortlist``). recall@10: share of the two-level kept
    entries' top 10 (by screen score = the scorer's) scoring at least the exhaustive 10th best less
    1e-6; best found: its best reaches the exhaustive best less 1e-6. CPU p50 per stage."""
    from fitsketch import coarse as CO
    from fitsketch import planner
    from fitsketch import profiles as PR
    from fitsketch import screen as S

    from . import zoos

    ctx = H.context("cpu", False)
    env = H.environment("cpu")
    wall = H.stopwatch().__enter__()
    pool = zoos.Pool(data, seed=seed)
    pool.check()
    cfg = pool.cfg
    qs, small = zoos.query_sketches(pool, n_queries, seed)
    idx = S.ScreenIndex(cfg.jslsh_l, cfg.hist_accuracy)
    rows, per_query = [], []
    t_build = H.Samples()
    name = f"shortlist_two_level_{data}{tag}"
    for size in sizes:
        while len(idx) < size:
            lo = len(idx)
            hi = min(size, lo + 1_000)

            def batch(lo=lo, hi=hi):
                sk = pool.sketches(lo, hi)
                keys = [k for _, k in PR.records(sk, cfg, "cpu")]
                idx._append([(lo + i, S.record(s.hist, s.names, s.sums, s.counts, cfg.seed), k)
                             for i, (s, k) in enumerate(zip(sk, keys))])
            t_build.call(batch)
        t_m = H.Samples()
        t_m.call(CO.matrix, idx)
        w = f"{data} label skew (pool), {size} distinct entries (screen index only)"
        mem = idx.nbytes()
        mm = CO.matrix(idx)
        lvl1 = mm.data.nbytes + mm.indices.nbytes + mm.indptr.nbytes
        out(f"two-level/{data}: {size:,} entries, built in {sum(t_build.wall):.0f} s so far; index {mem / 2**20:.0f} MiB, "
            f"level-1 matrix {lvl1 / 2**20:.0f} MiB built in {t_m.wall[0]:.1f} s")
        rows.append(H.row(ctx, "shortlist_two_level", w, "all", "level1_bytes_per_entry", lvl1 / size, unit="B",
                          build_s=t_m.wall[0], screen_bytes_per_entry=mem / size))
        for method in methods:
            rule = planner.shortlist_rule(method)
            t_full = H.Samples()
            t_c = {c: H.Samples() for c in coarse}
            rec = {c: [] for c in coarse}
            best = {c: [] for c in coarse}
            lvl1_only = []
            for qi, q in enumerate(qs):
                if sum(t_full.wall) + sum(sum(t.wall) for t in t_c.values()) > budget_s:
                    break
                kw = dict(seed=cfg.seed, t_small=small[method][qi] if method in small else None)
                full = t_full.call(idx.scores, q, method, **kw)
                if not full["exact"].all():   # pragma: no cover - pool entries store jk_small, one partition each
                    raise AssertionError(f"{method}: entries screened by a proxy in a pool zoo")
                ref = np.sort(full["score"])[::-1][:10]
                pq = {"size": size, "method": method, "query": qi}
                b = CO.bc(idx, q, cfg.seed)
                top = full["ids"][np.argsort(-full["score"], kind="stable")[:10]]
                rank = np.empty(len(b), np.int64)
                rank[np.argsort(-b, kind="stable")] = np.arange(len(b))
                pos = {int(e): r for r, e in enumerate(idx.ids.v)}
                pq["bc_rank_of_top10_max"] = int(max(rank[pos[int(e)]] for e in top))
                lvl1_only.append(pq["bc_rank_of_top10_max"])
                for c in coarse:
                    def two(c=c):
                        scr, _ = CO.scores(idx, q, method, keep=c * shortlist, **kw)
                        ids, _ = S.choose(scr, rule, shortlist, 10, planner.SHORTLIST_MARGIN_CAP * shortlist)
                        return scr, ids
                    scr, ids = t_c[c].call(two)
                    got = np.sort(scr["score"][np.isin(scr["ids"], ids)])[::-1][:10]
                    r = float(np.mean(got >= ref[-1] - 1e-6)) if len(got) else 0.0
                    bf = bool(len(got) and got[0] >= ref[0] - 1e-6)
                    rec[c].append(r)
                    best[c].append(bf)
                    pq[f"recall_c{c}"], pq[f"best_c{c}"] = r, bf
                per_query.append(pq)
            c_full = 1e3 * t_full.stats()["cpu"]["p50_s"]
            out(f"  {size:>7,} {method:<10} {len(t_full)} queries; exact screen CPU p50 {c_full:7.1f} ms; "
                f"BC rank of the exact top 10: max p50 {np.median(lvl1_only):.0f}, max {max(lvl1_only)}")
            rows.append(H.row(ctx, "shortlist_two_level", w, method, "exact_screen_cpu_p50", c_full, unit="ms",
                              queries=len(t_full), bc_rank_top10_max=int(max(lvl1_only))))
            for c in coarse:
                cc = 1e3 * t_c[c].stats()["cpu"]["p50_s"]
                out(f"      shortlist_coarse {c:>3} (level 1 keeps {c * shortlist:,}): recall@10 {np.mean(rec[c]):.4f} "
                    f"(min {min(rec[c]):.2f}), best {sum(best[c])}/{len(best[c])}, CPU p50 {cc:7.1f} ms "
                    f"({c_full / max(cc, 1e-9):.1f}x faster than the exact screen)")
                rows.append(H.row(ctx, "shortlist_two_level", w, method, f"recall_at_10_c{c}", float(np.mean(rec[c])),
                                  baseline="exact screen of every entry", baseline_value=1.0, queries=len(rec[c]),
                                  min=min(rec[c]), best_found=float(np.mean(best[c]))))
                rows.append(H.row(ctx, "shortlist_two_level", w, method, f"cpu_p50_c{c}", cc, unit="ms",
                                  baseline="exact screen of every entry", baseline_value=c_full))
            H.write_suite(name, rows, out=out_dir, env=env, tables={"per_query": per_query})
    rows.append(H.row(ctx, "shortlist_two_level", "all", "all", "wall_time", wall.elapsed(), unit="s"))
    path = H.write_suite(name, rows, out=out_dir, env=env, tables={"per_query": per_query})
    out(f"two-level/{data}: wrote {path} ({wall.elapsed():.0f} s)")
    return rows


def run_scale(data: str = "digits", sizes=(1_000, 10_000, 100_000), n_queries: int = 100,
              plan: str = "1000:exact-js,l2,js,adaptivity,coverage;10000:exact-js,l2,js,adaptivity;100000:exact-js,l2,js",
              budget_s: float = 240.0, exhaustive_budget_s: float = 240.0, exhaustive_max: int = 1_000,
              shortlist: int | None = None, seed: int = 0, out=print,
              out_dir: Path | None = None, hub_dir: str | None = None, tag: str = "",
              query_seed: int | None = None) -> list[dict]:
    """Recall and latency of the default candidate stage on one hub of *similar* entries grown
    through ``sizes`` (bench/zoos.py ``Pool``: label-skew entries of ``data``, 400 rows, built from a
    sketched pool of class chunks, added with ``add_sketches``). ``plan``: the methods measured at
    each size. Per (size, method), up to ``n_queries`` queries (600-row class-skewed samples, the
    same at every size) within ``budget_s`` of searching, ``shortlist`` the hub's (default 256: the
    stage runs above 4 x 256 = 1,024 entries, so a 1k zoo needs a smaller one to be screened at all):

    * the search through the default stage (``hub.explain``: its matches and what the shortlist
      kept, its stated recall, whether the margin's cap cut), timed (p50 wall and CPU);
    * references: for the exactly screened methods (exact-js, l2, js) the screen's own score of *every*
      entry (engine/screen.py, equal to the scorers within 1e-6: tests/test_shortlist.py) -- the
      exhaustive ranking at every size, so every query gets one; and for every method the search with
      ``shortlist=0`` (every entry scored) on the first queries within ``exhaustive_budget_s``, at
      sizes up to ``exhaustive_max`` (above ~8M (query column, stored feature) pairs -- 10k entries of
      64 columns -- candidates.MAX_FEATURE_PAIRS refuses it, and one such query costs minutes here).

    recall@10 by score (share of the stage's top 10 scoring at least the reference's 10th best, less
    1e-6) and best found (its best reaches the reference's best, less 1e-6), per reference.
    ``hub_dir``: the hub lives there and is kept (a later run grows it from the entries it holds:
    entry ``i`` of a pool zoo is the same in every run). ``query_seed``: the queries' seed (default
    ``seed``; the zoo's entries stay those of ``seed``): held-out queries on the same hub.
    ``coverage`` is also compared with every entry's coverage score (:func:`coverage_reference`) on
    every query, reported as its "screen of all" columns."""
    import fitsketch
    from fitsketch import planner
    from fitsketch import profiles as PR
    from fitsketch.jslsh import own_keys

    from . import zoos

    planner.SCAN_FEATURE_LIMIT = 1 << 62                 # as run_similar: the exact signature scan
    ctx = H.context("cpu", False)
    env = H.environment("cpu")
    wall = H.stopwatch().__enter__()
    todo = {int(k): v.split(",") for k, v in (x.split(":") for x in plan.split(";"))}
    # accuracy / auto need labelled entries: each added with its class record, a model fitted on its
    # rows and validation rows of its mixture (zoos.labelled; Hub.add_sketch measures the model)
    labelled = any(m in LABELLED_METHODS for ms in todo.values() for m in ms)
    pool = zoos.Pool(data, seed=seed)
    pool.check()
    if labelled:
        zoos.check_labelled(pool)
    X, y, names = pool.X, pool.y, pool.names
    q_seed = seed if query_seed is None else query_seed
    q_idx = [zoos.sample_index(y, zoos.QUERY_ROWS, (q_seed, 1, i)) for i in range(n_queries)]
    q_sk = zoos.fast_sketches(X, names, q_idx, pool.cfg)
    out(f"scale/{data}: pool built and checked in {wall.elapsed():.0f} s; {n_queries} queries (query seed {q_seed})")
    work = Path(hub_dir) if hub_dir else Path(tempfile.mkdtemp(prefix="fitsketch-bench-scale-similar-"))
    work.mkdir(parents=True, exist_ok=True)
    rows, per_query = [], []
    try:
        cfg_kw = {} if shortlist is None else {"config": fitsketch.SketchConfig(shortlist=shortlist)}
        with fitsketch.open(work / "h.hub", **cfg_kw) as hub:
            have = len(hub)
            assert have % 1_000 == 0 and (have == 0 or hub.get(f"e{have - 1:07d}") is not None), have
            for size in sizes:
                t_build, t_add = H.Samples(), H.Samples()
                if size < have:
                    continue
                for lo in range(have, size, 1_000):
                    if labelled:
                        items = t_build.call(zoos.labelled, pool, lo, min(size, lo + 1_000))
                        t_add.call(_add_labelled, hub, lo, items)
                        del items
                        continue
                    sk = t_build.call(pool.sketches, lo, min(size, lo + 1_000))
                    t_add.call(hub.add_sketches, [(f"e{lo + i:07d}", s) for i, s in enumerate(sk)])
                    del sk
                have = size
                with H.stopwatch() as sw:
                    hub.warm()
                b, a = sum(t_build.wall), sum(t_add.wall)
                w = f"{data} label skew (pool), {size} entries"
                out(f"  {size:,} entries: built {b:.0f} s, added {a:.0f} s ({len(t_add) * 1_000 / max(a, 1e-9):.0f} "
                    f"entries/s), warm {sw.s:.1f} s")
                rows.append(H.row(ctx, "shortlist_scale", w, "all", "add_s", a, unit="s", build_s=b, warm_s=sw.s))
                idx = hub._synced_screen()
                cov_records = None                  # every entry's coverage record, read once per size
                row_name = {}
                for method in todo.get(size, []):
                    t_s, t_f = H.Samples(), H.Samples()
                    rec_s, best_s, rec_f, best_f, kept, capped = [], [], [], [], [], []
                    stated = None
                    for qi in range(n_queries):
                        if sum(t_s.wall) + sum(t_f.wall) > budget_s + (exhaustive_budget_s if t_f.wall else 0):
                            break
                        cov = method in ("coverage",) + LABELLED_METHODS   # these need the query's rows
                        q = X[q_idx[qi]] if cov else q_sk[qi]
                        kw = {"feature_names": names} if cov else {}
                        if method in LABELLED_METHODS:   # the interval's bootstrap does not move the score
                            kw["accuracy_bootstrap"] = 0
                        plan_ = t_s.call(hub.explain, q, k=10, method=method, **kw)
                        short = plan_.matches
                        st = next((x for x in plan_.stages if x.name == "shortlist"), None)
                        kept.append(-1 if st is None else st.actual)
                        capped.append(st is not None and "recall not held" in (st.detail or ""))
                        stated = None if st is None else st.recall
                        pq = {"size": size, "method": method, "query": qi, "kept": kept[-1], "capped": capped[-1]}
                        if method in ("exact-js", "l2", "js", "adaptivity"):
                            small = None
                            if method in ("js", "adaptivity"):   # the queries are small: their own bands, stored
                                sp = PR.small_params(hub.config)  # with every entry (one partition each)
                                small = (sp, own_keys(q.hist, q.n_features, q.n_partitions, per_dataset=method == "js",
                                                      seed=hub.config.seed, r=sp[0], k=sp[1], l=sp[2]))
                            scr = idx.scores(q, method, seed=hub.config.seed, t_small=small)
                            if not scr["exact"].all():   # pragma: no cover - pool entries store jk_small
                                raise AssertionError(f"{method}: entries screened by a proxy in a pool zoo")
                            ref = np.sort(scr["score"])[::-1][:10]
                            r = float(np.mean([m.score >= ref[-1] - 1e-6 for m in short]))
                            bf = bool(short and short[0].score >= ref[0] - 1e-6)
                            rec_s.append(r)
                            best_s.append(bf)
                            pq.update(recall_screen=r, best_screen=bf)
                        ranking = None
                        if method == "coverage":   # every entry's coverage score, the scorer's batch
                            if cov_records is None:
                                with H.stopwatch() as sw:
                                    cov_records = coverage_records(hub)
                                out(f"    coverage records of {len(cov_records):,} entries read in {sw.s:.0f} s")
                            t_ref = H.Samples()
                            ranking, info = t_ref.call(coverage_reference, hub, q, names, cov_records, short)
                            ref_w, ref_c = t_ref.wall[-1], t_ref.cpu[-1]
                            pq.update(coverage_per_entry_check(hub, q, names, cov_records, ranking, short,
                                                               np.random.default_rng([q_seed, size, qi])))
                            ref = [v for _, v in ranking[:10]]
                            r = float(np.mean([m.score >= ref[-1] - 1e-12 for m in short]))
                            bf = bool(short and short[0].score >= ref[0] - 1e-12)
                            rec_s.append(r)
                            best_s.append(bf)
                            pq.update(recall_screen=r, best_screen=bf, ref_s=round(ref_w, 2), ref_cpu_s=round(ref_c, 2),
                                      ref_max_diff=info["max_diff"], ref_scored=info["scored"])
                        if size <= exhaustive_max and sum(t_f.wall) < exhaustive_budget_s:
                            full = t_f.call(hub.search, q, k=10 if method not in LABELLED_METHODS else size,
                                            method=method, shortlist=0, **kw)
                            if method in LABELLED_METHODS:   # where the scorer's top 10 lie in the screen's order
                                pq.update(_accuracy_ranks(hub, q, names, full))
                                full = full[:10]
                            r, bf = _found(short, full)
                            if ranking is not None:   # the reference against shortlist=0: the same top 10 scores
                                pq["ref_equals_full"] = bool(len(full) == min(10, len(ranking)) and all(
                                    abs(m.score - v) <= 1e-12 for m, (_, v) in zip(full, ranking)))
                            rec_f.append(r)
                            best_f.append(bf)
                            pq.update(recall=r, best=bf)
                        per_query.append(pq)
                        out(f"    query {qi}: {pq}")   # a run stopped early still leaves its queries in the log
                    st_s = t_s.stats()
                    p50, c50 = 1e3 * st_s["p50_s"], 1e3 * st_s["cpu"]["p50_s"]
                    pf = 1e3 * t_f.stats()["p50_s"] if t_f.wall else float("nan")
                    txt = f"  {size:>7,} {method:<10} p50 {p50:7.0f} ms (CPU {c50:6.0f}), kept p50 {np.median(kept):.0f} " \
                          f"max {max(kept)}, capped {sum(capped)}/{len(kept)}, stated recall {stated}"
                    if rec_s:
                        txt += f"; vs {'every entry scored' if method == 'coverage' else 'screen of all'}: recall@10 {np.mean(rec_s):.3f} (min {min(rec_s):.2f}) best " \
                               f"{sum(best_s)}/{len(best_s)}"
                        if method == "coverage":   # the batch against coverage.score one entry at a time
                            pe = max(p.get("per_entry_max_diff", 0.0) for p in per_query
                                     if p.get("size") == size and p.get("method") == method)
                            txt += f"; per-entry check max diff {pe}"
                            rows += [H.row(ctx, "shortlist_scale", w, method, "per_entry_max_diff", pe,
                                           baseline="coverage.score one entry at a time", baseline_value=0.0)]
                        rows += [H.row(ctx, "shortlist_scale", w, method, "recall_at_10_vs_screen", float(np.mean(rec_s)),
                                       queries=len(rec_s), min=min(rec_s), best_found=float(np.mean(best_s)))]
                    if rec_f:
                        txt += f"; vs shortlist=0: recall@10 {np.mean(rec_f):.3f} (min {min(rec_f):.2f}) best " \
                               f"{sum(best_f)}/{len(best_f)} (exhaustive p50 {pf:.0f} ms)"
                        rows += [H.row(ctx, "shortlist_scale", w, method, "recall_at_10", float(np.mean(rec_f)),
                                       baseline="exhaustive top 10 (shortlist=0)", baseline_value=1.0, queries=len(rec_f),
                                       min=min(rec_f), best_found=float(np.mean(best_f)))]
                    out(txt)
                    rows += [H.row(ctx, "shortlist_scale", w, method, "query_p50", p50, unit="ms", queries=len(kept),
                                   cpu_p50_ms=c50, baseline="exhaustive search (shortlist=0)", baseline_value=pf),
                             H.row(ctx, "shortlist_scale", w, method, "kept_p50", float(np.median(kept)), unit="entries",
                                   max=max(kept), capped=sum(capped), stated_recall=-1.0 if stated is None else stated)]
                    H.write_suite(f"shortlist_scale_{data}{'' if shortlist is None else f'_s{shortlist}'}{tag}", rows, out=out_dir, env=env, tables={"per_query": per_query})
    finally:
        if not hub_dir:
            shutil.rmtree(work, ignore_errors=True)
    rows.append(H.row(ctx, "shortlist_scale", "all", "all", "wall_time", wall.elapsed(), unit="s"))
    path = H.write_suite(f"shortlist_scale_{data}{'' if shortlist is None else f'_s{shortlist}'}{tag}", rows, out=out_dir, env=env, tables={"per_query": per_query})
    out(f"scale/{data}: wrote {path} ({wall.elapsed():.0f} s)")
    return rows


LABELLED_METHODS = ("accuracy", "auto")


def _accuracy_ranks(hub, X, names, full) -> dict:
    """Where the exhaustive ranking ``full`` (every labelled entry scored) puts the old accuracy
    screen's choice (before the exact stage of 2026-12-01: the stored recalls times the EM mixture
    over the pooled class records, kept within a margin), the screen rank of each exhaustive
    top-10 entry and the screen-score gap between the screen's 10th best and them."""
    import pandas as pd
    from fitsketch import accuracy as A
    from fitsketch.storage import u64

    frame = pd.DataFrame(X, columns=names)
    col_of = {n: j for j, n in enumerate(names)}
    got = []
    with hub.store.read() as txn:
        for key in txn.keys("entries"):
            rec = txn.get("entries", key)
            cl = txn.get("extra", u64(rec["id"]))["classes"]
            got.append((rec["name"], cl, {sf: col_of[n] for sf, n in enumerate(rec["features"])}, rec["features"]))
    labels = sorted({c for _, cl, _, _ in got for c in cl["labels"]}, key=A._sort_key)
    # the stage's mixture (A.screen): the class Gaussians where every entry carries one, else naive Bayes
    pl = A.class_pool_of([(cl, feats, fm) for _, cl, fm, feats in got], labels, names)
    pi = A.em_mixture(A.mixture_loglik(frame, pl, names, ["numeric"] * len(names), hub.config,
                                       hub.config.accuracy_temperature)[0])
    s = np.array([np.dot(A.recall_vector(cl["perf"], pl["labels"]), pi) for _, cl, _, _ in got])
    order = np.argsort(-s, kind="stable")
    rank = {got[j][0]: r for r, j in enumerate(order)}
    score = {got[j][0]: s[j] for j in range(len(got))}
    top = [m.name for m in full[:10]]
    tenth = float(s[order[min(9, len(s) - 1)]])
    return {"screen_rank_of_top10": [int(rank[n]) for n in top], "screen_gap_of_top10": [tenth - float(score[n]) for n in top]}


def coverage_records(hub) -> dict:
    """``{name: (entry features, coverage record)}`` of every entry with a coverage sketch, read once
    for :func:`coverage_reference` (the hub's records do not change between its queries)."""
    from fitsketch.storage import u64

    out = {}
    with hub.store.read() as txn:
        for key in txn.keys("entries"):
            rec = txn.get("entries", key)
            cov = (txn.get("extra", u64(rec["id"])) or {}).get("coverage") if rec else None
            if cov is not None:
                out[rec["name"]] = (list(rec["features"]), cov)
    return out


def _coverage_columns(hub, q, names, records: dict):
    """``(query, qc, cols)``: the query rows ``q`` (columns ``names``) sketched as the search sketches
    them (pipeline.make_query), the hub's query defaults and ``{entry name: the query's row
    dimensions in the entry's column order}`` of every entry of ``records`` whose columns the query
    has (taken by name: a pool zoo's entries share the query's names)."""
    import pandas as pd
    from fitsketch.pipeline import make_query
    from fitsketch.plan import Plan

    qc = hub.config.query_defaults()
    query = make_query(hub, pd.DataFrame(np.asarray(q), columns=names), None, qc, Plan("coverage", 10))
    col_of = {n: j for j, n in enumerate(query.names)}
    owner = np.asarray(query.row_owner)
    dims = {j: np.flatnonzero(owner == j) for j in range(len(query.names))}
    cols = {nm: (np.concatenate([dims[col_of[f]] for f in feats]) if feats else np.zeros(0, np.int64))
            for nm, (feats, _) in records.items() if all(f in col_of for f in feats)}
    return query, qc, cols


def coverage_reference(hub, q, names, records: dict, check: list) -> tuple[list, dict]:
    """``(ranking, info)``: every entry's ``method="coverage"`` score (the default share mode) of the
    query rows ``q`` (columns ``names``) as ``[(name, score)]`` best first (name breaks ties): the
    query sketched as the search sketches it (:func:`_coverage_columns`) and every entry scored by
    the scorer's own batch (coverage_batch.score_many; :func:`coverage_per_entry_check` checks it
    against coverage.score one entry at a time). It skips what ``hub.search(shortlist=0)`` spends on
    the MinHash candidate stage (band postings and signature checks of every entry: ~13 s of its
    ~17 s CPU at 10k) and on reading the records again.
    ``records``: :func:`coverage_records`. ``check``: matches of a search of the same query whose
    scores must equal the ranking's (``info["max_diff"]``); ``run_scale`` also compares it with
    ``shortlist=0`` on the first queries."""
    from fitsketch import coverage_batch as CB

    query, qc, cols_of = _coverage_columns(hub, q, names, records)
    by_cols: dict = {}
    for nm, cols in cols_of.items():
        by_cols.setdefault(cols.tobytes(), (cols, []))[1].append(nm)
    score = {}
    for cols, nms in by_cols.values():
        per = CB.score_many(query.rows[:, cols], [records[nm][1] for nm in nms], seed=hub.config.seed,
                            tau=qc.coverage_tau, device="cpu", mode=qc.coverage_score,
                            resolution=qc.coverage_resolution, rho=qc.coverage_rho)
        score.update({nm: float(pt.mean()) for nm, pt in zip(nms, per)})
    ranking = sorted(score.items(), key=lambda x: (-x[1], x[0]))
    diff = max((abs(score[m.name] - m.score) if m.name in score else float("inf") for m in check), default=0.0)
    return ranking, {"max_diff": float(diff), "scored": len(score)}


def coverage_per_entry_check(hub, q, names, records: dict, ranking: list, check: list, rng, extra: int = 50) -> dict:
    """The batch of :func:`coverage_reference` against the definition: the entries of ``check`` (the
    stage's top 10) and ``extra`` random entries of ``ranking`` scored one at a time by
    ``coverage.score`` (the query's rows in each entry's column order); ``per_entry_max_diff`` is the
    largest difference from the ranking's scores (0.0: the batch is bit for bit the per-entry score)."""
    from fitsketch import coverage as C

    query, qc, cols_of = _coverage_columns(hub, q, names, records)
    score = dict(ranking)
    pool = sorted(score)
    nms = {m.name for m in check} | set(rng.choice(pool, min(extra, len(pool)), replace=False).tolist() if pool else [])
    diff = 0.0
    for nm in sorted(nms):
        if nm not in score or nm not in cols_of:
            return {"per_entry_max_diff": float("inf"), "per_entry_checked": len(nms)}
        pt = C.score(query.rows[:, cols_of[nm]], records[nm][1], seed=hub.config.seed, tau=qc.coverage_tau,
                     device="cpu", mode=qc.coverage_score, resolution=qc.coverage_resolution, rho=qc.coverage_rho)
        diff = max(diff, abs(float(pt.mean()) - score[nm]))
    return {"per_entry_max_diff": float(diff), "per_entry_checked": len(nms)}


def _second_round(plan) -> int | None:
    """How many entries the accuracy stage's second round scored (the score stage's plan text)."""
    import re

    st = next((x for x in plan.stages if x.name == "score"), None)
    hit = re.search(r"second round \(exact stage\): (\d+) more", st.detail if st is not None else "")
    return int(hit.group(1)) if hit else None


REF_HOLD = 20_000    # entries up to which accuracy_reference holds every decoded class record between calls
REF_CHUNK = 2_048    # entries a chunk of accuracy_reference on a larger hub (~0.1-0.2 MB a class record)


def accuracy_reference(hub, q, names, check: list, held: dict | None = None) -> tuple[list, dict]:
    """``(ranking, info)``: every labelled entry's ``method="accuracy"`` score on the query rows ``q``
    (columns ``names``), computed as the scorer computes it with every entry scored
    (engine/methods/accuracy.py ``score_accuracy`` with ``shortlist=0``: the pool of every labelled
    entry, the query's class log-likelihoods and EM mixture, each model's own-histogram proxy on the
    query rows (every entry's at once: accuracy_proxy.own_predictions_many), ``accuracy.estimate``; no
    bootstrap), as ``[(name, score)]`` best first (name breaks
    ties). It skips what ``hub.search(shortlist=0)`` spends on the candidate stage (band lookups and
    signature checks of every entry: ~60% of its CPU at 1.5k entries), so a 10k hub's reference costs
    ~1/3 of the search. ``check``: matches of a search of the same query (e.g. the stage's top 10),
    whose scores must equal the ranking's (``info["max_diff"]``, ``info["mixture_diff"]``); equal to
    ``shortlist=0``'s top 10 on a small hub (names and scores) and checked at 10k by ``run_accuracy``.
    ``held``: a dict kept between calls on an unchanged hub -- the decoded class records and their
    pool are read on the first call and reused (at 100k entries ~40 % of a call)."""
    import pandas as pd
    from fitsketch import accuracy as A
    from fitsketch.accuracy_proxy import own_predictions_many
    from fitsketch.storage import u64

    frame = pd.DataFrame(np.asarray(q), columns=names)
    col_of = {n: j for j, n in enumerate(names)}
    with hub.store.read() as txn:
        generation = int(txn.get("meta", b"generation") or 0)
        n_entries = txn.count("entries")

    def records(after=b"", limit=None):
        """{name: (class record, feature map, features)} of the labelled entries after key ``after``
        (``limit`` entries read), and the last key read."""
        out, last = {}, after
        with hub.store.read() as txn:
            for key in txn.keys("entries", start=after):
                if key <= after:
                    continue
                if limit is not None and len(out) >= limit:
                    break
                last = key
                rec = txn.get("entries", key)
                if not rec or not rec.get("labelled"):
                    continue
                cl = A.check_record(txn.get("extra", u64(rec["id"]))["classes"], len(rec["features"]))
                out[rec["name"]] = (cl, {sf: col_of[n] for sf, n in enumerate(rec["features"]) if n in col_of},
                                    rec["features"])
        return out, last

    big = n_entries > REF_HOLD       # too many decoded class records to hold: read in chunks, each query
    if held is not None and held.get("names") == list(names) and held.get("generation") == generation:
        ents, pl = held["ents"], held["pool"]
    elif big:
        from fitsketch.accuracy_cache import screen_data

        with hub.store.read() as txn:   # the pool read in chunks (the engine's, as the scorer gets it from the stage)
            pl = screen_data(txn, list(names)).pool
        ents = None
        if held is not None:
            held.update(names=list(names), generation=generation, ents=None, pool=pl)
    else:
        ents, _ = records()
        lab = sorted({c for cl, _, _ in ents.values() for c in cl["labels"]}, key=A._sort_key)
        pl = A.class_pool_of([(cl, feats, fm) for cl, fm, feats in ents.values()], lab, names)
        pl = A.merge_pools([pl, {**pl, "labels": lab, "cls": pl["cls"][:0], "col": pl["col"][:0],
                                 "bucket": pl["bucket"][:0], "count": pl["count"][:0], "entries": 0}])
        if held is not None:
            held.update(names=list(names), generation=generation, ents=ents, pool=pl)
    kinds = ["numeric"] * len(names)
    lab = pl["labels"]
    used = sorted({j for j, n in enumerate(names) if n in set(pl["columns"])})
    qb = A.query_buckets(frame, names, kinds, used, hub.config)
    qx = A.query_index(qb, len(frame))
    ll, _ = A.mixture_loglik(frame, pl, names, kinds, hub.config, hub.config.accuracy_temperature, qb, qx)
    names_, accs, n_lab, last = [], [], 0, b""
    while True:   # every labelled entry, a chunk at a time (a model's score does not depend on the others')
        chunk, nxt = (ents, None) if ents is not None else records(last, REF_CHUNK)
        if chunk:
            nm = list(chunk)
            prox = own_predictions_many(qb, len(frame), [(chunk[x][0], chunk[x][1]) for x in nm], lab, names, qx)
            pi, acc, _ = A.estimate(ll, lab, [chunk[x][0]["perf"] for x in nm], proxies=prox,
                                    records=[chunk[x][0] for x in nm])
            names_ += nm
            accs.append(acc)
            n_lab += len(nm)
        if ents is not None or nxt == last:
            break
        last = nxt
    acc = np.concatenate(accs) if accs else np.zeros(0)
    if not accs:
        pi = A.em_mixture(ll)
    score = dict(zip(names_, acc.tolist()))
    ranking = sorted(score.items(), key=lambda x: (-x[1], x[0]))
    diff = max((abs(score[m.name] - m.score) for m in check), default=0.0)
    mix = max((float(np.abs(np.asarray(m.detail["mixture"]) - pi).max()) for m in check[:1] if m.detail), default=0.0)
    return ranking, {"max_diff": float(diff), "mixture_diff": mix, "labelled": n_lab, "labels": lab, "pi": pi}


def bound_violations(hub, names, ranking, info) -> tuple[int, float, int]:
    """``(entries, largest excess, reach)``: the labelled entries whose score in the reference
    ``ranking`` exceeds their stored recall bound (engine/accuracy_bound.py) under the reference's
    mixture by more than its rounding slack -- 0 where the exact stage's premise holds for every
    entry of the hub -- and how many entries' bounds reach the 10th best score (what the stage must
    score at least: its first round plus its second)."""
    from fitsketch.accuracy_bound import SLACK, on_labels

    with hub.store.read() as txn:
        data = hub._indexes.accuracy.get(txn, list(names))
        name_of = [txn.get("entries", key)["name"] for key in data.keys]
    ub = dict(zip(name_of, data.bound @ on_labels(info["pi"], info["labels"], data.labels)))
    excess = np.array([sc - ub[nm] for nm, sc in ranking if nm in ub])
    tenth = ranking[min(9, len(ranking) - 1)][1] if ranking else 0.0
    reach = int(sum(1 for v in ub.values() if v >= tenth - SLACK))
    return int((excess > SLACK).sum()), float(excess.max(initial=-1.0)), reach


def confusion_of(sketch, model, validation) -> np.ndarray:
    """The confusion matrix (rows: true class, columns: predicted; the sketch's classes in order) of
    ``model`` on ``validation`` = (rows, labels): what ``add_sketch(model=, validation=)`` measures,
    computed here so that ``add_sketch(confusion=)`` registers it (~3x cheaper an entry: no proxy
    on the validation rows, no calibration, which the hub then does not store)."""
    labels = list(sketch.classes["labels"])
    X, y = validation
    pred = np.asarray(labels)[np.argmax(model(np.asarray(X, dtype=np.float64)), axis=1)]
    at = {c: i for i, c in enumerate(labels)}
    out = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for t, p in zip(np.asarray(y).tolist(), pred.tolist()):
        if t in at:
            out[at[t], at[p]] += 1
    return out


def _add_labelled(hub, lo: int, items, confusion: bool = False) -> None:
    """Entries ``lo ..`` from zoos.labelled: one ``add_sketch(model=, validation=)`` each (a one-class
    entry, which has no model, without labels). Each carries ``metadata={"i": its number}``, so a
    reference can score chosen entries alone (``where=``, with the pool of every entry passed as
    ``class_pool=``, as a sharded hub does: a model's score does not depend on who else is scored)."""
    for i, (sk, model, val) in enumerate(items):
        md = {"i": lo + i}
        if model is None:
            hub.add_sketch(f"e{lo + i:07d}", sk, metadata=md)
        elif confusion:
            hub.add_sketch(f"e{lo + i:07d}", sk, metadata={**md, "perf": "confusion"},
                           confusion=confusion_of(sk, model, val))
        else:
            hub.add_sketch(f"e{lo + i:07d}", sk, metadata=md, model=model, validation=val)


def _raw_items(path: str) -> dict:
    """Every (key, value) of every database of the LMDB file at ``path``, as stored (bytes)."""
    import lmdb

    from fitsketch.storage.txn import DBS, DUPSORT_DBS

    env = lmdb.open(path, subdir=False, readonly=True, lock=False, max_dbs=16)
    out = {}
    with env.begin(buffers=False) as txn:
        for name in DBS:
            db = env.open_db(name.encode(), txn=txn, create=False, dupsort=name in DUPSORT_DBS,
                             dupfixed=name in DUPSORT_DBS)
            out[name] = list(txn.cursor(db=db).iternext(keys=True, values=True))
    env.close()
    return out


def _raw_write(path: str, items: dict, n_txn: int) -> None:
    """Write ``items`` (``_raw_items``) into a new LMDB file in ``n_txn`` transactions, each database's
    records split evenly over them (dupsort records by ``putmulti``, in stored order)."""
    import lmdb

    from fitsketch.storage.txn import DUPSORT_DBS

    env = lmdb.open(path, subdir=False, max_dbs=16, map_size=1 << 34)
    dbs = {n: env.open_db(n.encode(), dupsort=n in DUPSORT_DBS, dupfixed=n in DUPSORT_DBS) for n in items}
    for t in range(n_txn):
        with env.begin(write=True) as txn:
            for n, kv in items.items():
                part = kv[t * len(kv) // n_txn:(t + 1) * len(kv) // n_txn]
                txn.cursor(db=dbs[n]).putmulti(part, dupdata=n not in DUPSORT_DBS)
    env.close()


def run_add_rate(n: int = 2_000, batch: int = 1_000, kinds=("scale32", "digits64"), out=print,
                 out_dir: Path | None = None, quick: bool = False) -> list[dict]:
    """Issue 21's bulk add: ``Hub.add_sketches`` of ``n`` prebuilt sketches (``batch`` a transaction)
    against two baselines in the same run: LMDB alone writing the same bytes (every record the hub
    stored, read back raw, written into a new file in as many transactions) and the entry-at-a-time
    path (each entry prepared alone, parts.entry_writer, the code before batching) on ``n // 4``
    of them. ``scale32``: bench/scale.py's 32 numeric features x 10 partitions of 500 rows (merged
    from partition sketches of 20 families); ``digits64``: the digits zoo's 64-column entries
    (bench/zoos.py, 400 rows, one partition). Wall and CPU time (the machine is shared)."""
    import fitsketch
    from fitsketch import parts as P

    from . import zoos

    ctx = H.context("cpu", quick)
    env = H.environment("cpu")
    wall = H.stopwatch().__enter__()
    rows = []
    for kind in kinds:
        if kind == "scale32":
            sk, _ = build_sketches(20, 8, n, seed=3)
        else:
            sk = zoos.build("digits", n, seed=3)
        nnz = float(np.mean([len(s.hist["feat"]) for s in sk]))
        work = Path(tempfile.mkdtemp(prefix="fitsketch-bench-addrate-"))
        try:
            with fitsketch.open(work / "a.hub") as hub:
                t_add = H.timeit(lambda: hub.add_sketches([(f"e{i:07d}", s) for i, s in enumerate(sk)], batch=batch),
                                 repeats=1, warmup=0, cpu=True)
                path = hub.store._file
            items = _raw_items(path)
            size = sum(len(k) + len(v) for kv in items.values() for k, v in kv)
            n_txn = -(-n // batch)
            t_raw = H.timeit(lambda: _raw_write(str(work / "raw.lmdb"), items, n_txn), repeats=1, warmup=0, cpu=True)
            m = max(1, n // 4)
            with fitsketch.open(work / "b.hub") as hub:
                def one_at_a_time():
                    ws = [P.entry_writer(hub._new_entry(f"e{i:07d}", s, {}, None, checked=True), hub.config,
                                         hub.device, hub._entry) for i, s in enumerate(sk[:m])]
                    hub._transact(lambda txn: [w(txn) for w in ws])
                t_one = H.timeit(one_at_a_time, repeats=1, warmup=0, cpu=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        r_add, r_raw, r_one = n / t_add["p50_s"], n / t_raw["p50_s"], m / t_one["p50_s"]
        c_add, c_raw, c_one = n / t_add["cpu"]["p50_s"], n / t_raw["cpu"]["p50_s"], m / t_one["cpu"]["p50_s"]
        w = f"{kind}: {n} entries, {sk[0].n_features} features, {nnz:.0f} histogram non-zeros an entry"
        out(f"add rate {w}: add_sketches {r_add:.0f} entries/s (CPU {c_add:.0f}/s); LMDB raw write of the same "
            f"{size / n / 1024:.1f} KiB an entry {r_raw:.0f}/s (CPU {c_raw:.0f}/s): {r_add / r_raw:.2f}x raw; "
            f"entry at a time {r_one:.0f}/s (CPU {c_one:.0f}/s): batched {r_add / r_one:.1f}x")
        rows += [H.row(ctx, "add_rate", w, "add_sketches", "entries_per_s", r_add, unit="entries/s",
                       baseline="LMDB raw write of the same records", baseline_value=r_raw, cpu_rate=c_add,
                       baseline_cpu_rate=c_raw, bytes_per_entry=size / n),
                 H.row(ctx, "add_rate", w, "entry at a time", "entries_per_s", r_one, unit="entries/s",
                       baseline="add_sketches (batched)", baseline_value=r_add, cpu_rate=c_one)]
    rows.append(H.row(ctx, "add_rate", "all", "all", "wall_time", wall.elapsed(), unit="s"))
    path = H.write_suite("add_rate" + ("_quick" if quick else ""), rows, out=out_dir, quick=quick, env=env)
    out(f"add rate: wrote {path} ({wall.elapsed():.1f} s)")
    return rows


def run_accuracy(hub_dir: str, n_queries: int = 20, methods=("accuracy", "auto"), budget_s: float = 1800.0,
                 full_checks: int = 1, seed: int = 0, out=print, out_dir: Path | None = None,
                 tag: str = "", first: int = 0, data: str = "digits", ref_every: int = 1) -> list[dict]:
    """``method="accuracy"`` / ``"auto"`` through the default stage of a labelled ``data`` pool hub
    (``hub_dir``/h.hub, filled as ``--scale`` fills it; e.g. 10k entries) against the scorer's score
    of every labelled entry (``accuracy_reference``: ``shortlist=0``'s ranking at ~1/3 of its CPU;
    the first ``full_checks`` queries also run ``hub.search(shortlist=0)`` to hold the two equal).
    Per query (the ``--scale`` queries, 600-row class-skewed samples): the stage's top 10
    (``explain``, no bootstrap), what it kept, whether its margin was capped; recall@10 by score and
    best found against the reference; for ``auto``, whether every match of its top 10 was scored
    as ``accuracy`` (a labelled hub). Queries run until ``budget_s`` of searching + references;
    ``ref_every``: the reference for every such query only (a 100k hub's costs minutes), the others
    give the stage's size and latency alone."""
    import fitsketch

    from . import zoos

    ctx = H.context("cpu", False)
    env = H.environment("cpu")
    wall = H.stopwatch().__enter__()
    pool = zoos.Pool(data, seed=seed)
    X, y, names = pool.X, pool.y, pool.names
    rows, per_query = [], []
    with fitsketch.open(Path(hub_dir) / "h.hub") as hub:
        n = len(hub)
        w = f"{data} labelled pool zoo, {n} entries (hub {hub_dir})"
        t_s = {m: H.Samples() for m in methods}
        t_r, t_f = H.Samples(), H.Samples()
        res = {m: {"rec": [], "best": [], "kept": [], "capped": [], "acc": [], "ms": []} for m in methods}
        checks = []
        held = {}                                    # the reference's decoded records, read once
        violations = []                              # entries scoring above their bound, per query
        for qi in range(first, first + n_queries):   # ``first``: go on after an earlier run's queries
            if wall.elapsed() > budget_s:
                break
            q = X[zoos.sample_index(y, zoos.QUERY_ROWS, (seed, 1, qi))]
            pq = {"query": qi}
            ref = None
            for m in methods:
                plan = t_s[m].call(hub.explain, q, k=10, method=m, feature_names=names, accuracy_bootstrap=0)
                short = plan.matches
                st = next((x for x in plan.stages if x.name == "shortlist"), None)
                if ref is None and (qi - first) % ref_every == 0:
                    ref, info = t_r.call(accuracy_reference, hub, q, names, short, held)
                    viol, excess, reach = bound_violations(hub, names, ref, info)
                    pq.update(ref_check_max_diff=info["max_diff"], ref_mixture_diff=info["mixture_diff"],
                              labelled=info["labelled"], bound_violations=viol, bound_max_excess=excess,
                              bound_reach_10th=reach)
                    violations.append(viol)
                    if qi < full_checks:   # the reference against the hub's own exhaustive search
                        full = t_f.call(hub.search, q, k=10, method="accuracy", shortlist=0, feature_names=names,
                                        accuracy_bootstrap=0)
                        ok = [x.name for x in full] == [nm for nm, _ in ref[:10]] and \
                            max(abs(x.score - sc) for x, (_, sc) in zip(full, ref)) <= 1e-12
                        checks.append(ok)
                        pq["full_check"] = ok
                acc_all = all(x.method == "accuracy" for x in short[:10])
                d = res[m]
                r = bf = None
                if ref is not None:
                    tenth, best = ref[min(9, len(ref) - 1)][1], ref[0][1]
                    r = float(np.mean([x.score >= tenth - 1e-12 for x in short[:10]])) if short else 0.0
                    bf = bool(short and short[0].score >= best - 1e-12)
                    d["rec"].append(r)
                    d["best"].append(bf)
                d["ms"].append(1e3 * t_s[m].cpu[-1])
                d["kept"].append(-1 if st is None else st.actual)
                d["capped"].append(st is not None and "recall not held" in (st.detail or ""))
                d["acc"].append(acc_all)
                pq.update({f"{m}_recall": r, f"{m}_best": bf, f"{m}_kept": d["kept"][-1], f"{m}_capped": d["capped"][-1],
                           f"{m}_cpu_ms": round(d["ms"][-1], 1), f"{m}_second_round": _second_round(plan),
                           f"{m}_all_accuracy": acc_all, f"{m}_stated_recall": None if st is None else st.recall})
            per_query.append(pq)
            out(f"  query {qi}: {pq}")
        for m in methods:
            d = res[m]
            if not d["rec"]:
                continue
            st_ = t_s[m].stats()
            out(f"  {n:,} {m:<9} {len(d['rec'])} queries with the reference: recall@10 {np.mean(d['rec']):.3f} (min "
                f"{min(d['rec']):.2f}), best {sum(d['best'])}/{len(d['best'])}; over all {len(d['kept'])} queries: "
                f"kept p50 {np.median(d['kept']):.0f} max {max(d['kept'])}, capped "
                f"{sum(d['capped'])}, all top 10 scored as accuracy {sum(d['acc'])}/{len(d['acc'])}; explain p50 "
                f"{1e3 * st_['p50_s']:.0f} ms wall ({1e3 * st_['cpu']['p50_s']:.0f} CPU)")
            rows += [H.row(ctx, "shortlist_accuracy", w, m, "recall_at_10", float(np.mean(d["rec"])),
                           baseline="the scorer's score of every labelled entry (shortlist=0's ranking)", baseline_value=1.0,
                           queries=len(d["rec"]), min=min(d["rec"]), best_found=float(np.mean(d["best"])),
                           kept_p50=float(np.median(d["kept"])), kept_max=max(d["kept"]), capped=sum(d["capped"]),
                           all_accuracy=sum(d["acc"])),
                     H.row(ctx, "shortlist_accuracy", w, m, "explain_p50", 1e3 * st_["p50_s"], unit="ms",
                           cpu_p50_ms=1e3 * st_["cpu"]["p50_s"], queries=len(d["rec"]))]
        if len(t_r):
            out(f"  entries scoring above their bound: {sum(violations)} over {len(violations)} queries")
            out(f"  reference p50 {t_r.stats()['cpu']['p50_s']:.1f} s CPU; shortlist=0 checks {sum(checks)}/{len(checks)} "
                f"equal" + (f" (shortlist=0 p50 {t_f.stats()['cpu']['p50_s']:.1f} s CPU)" if len(t_f) else ""))
            rows.append(H.row(ctx, "shortlist_accuracy", w, "accuracy", "reference_cpu_p50", t_r.stats()["cpu"]["p50_s"],
                              unit="s", full_checks=len(checks), full_checks_equal=sum(checks),
                              bound_violations=sum(violations),
                              shortlist0_cpu_p50_s=t_f.stats()["cpu"]["p50_s"] if len(t_f) else -1.0))
    rows.append(H.row(ctx, "shortlist_accuracy", "all", "all", "wall_time", wall.elapsed(), unit="s"))
    path = H.write_suite(f"shortlist_accuracy{tag}", rows, out=out_dir, env=env, tables={"per_query": per_query})
    out(f"accuracy: wrote {path} ({wall.elapsed():.0f} s)")
    return rows


def suite(opts: H.Options) -> list[dict]:
    """The families workload (``python -m bench shortlist``); the flags ``--similar`` and
    ``--screen-scale`` of this module's own command line select the other two workloads."""
    x = opts.extra
    if x.get("add_rate"):
        return run_add_rate(x.get("entries") or (400 if opts.quick else 2_000), out_dir=opts.out_dir, quick=opts.quick)
    if x.get("screen_scale"):
        return run_screen_scale(x["screen_scale"], sizes=tuple(int(v) for v in x.get("sizes", "1000,10000,100000")
                                                                .split(",")), out_dir=opts.out_dir)
    if x.get("similar"):
        return run_similar(x["similar"], x.get("entries"), x.get("queries"), opts.quick,
                           methods=tuple(x.get("methods", ",".join(SIMILAR_METHODS)).split(",")), out_dir=opts.out_dir)
    return run(opts.quick, x.get("entries"), out_dir=opts.out_dir)


def main(argv=None) -> None:
    ap = H.parser(__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=None)
    ap.add_argument("--similar", choices=("digits", "mnist"), default=None,
                    help="the similar-entries workload on this zoo (default: the families workload)")
    ap.add_argument("--queries", type=int, default=None)
    ap.add_argument("--methods", default=",".join(SIMILAR_METHODS))
    ap.add_argument("--screen-scale", choices=("digits", "mnist"), default=None,
                    help="time the screen alone on an in-memory index of 1k / 10k / 100k entries")
    ap.add_argument("--sizes", default="1000,10000,100000", help="--screen-scale: index sizes")
    ap.add_argument("--recall", choices=("digits", "mnist"), default=None,
                    help="recall of the default stage with many queries, and the proxies' gaps (run_recall)")
    ap.add_argument("--shortlist", type=int, default=100, help="--recall: shortlist (the stage runs above 4x)")
    ap.add_argument("--tag", default="", help="--recall: suffix of the result file")
    ap.add_argument("--margin-kept", choices=("digits", "mnist"), default=None,
                    help="entries a proxy margin keeps (screen index only; run_margin_kept)")
    ap.add_argument("--add-rate", action="store_true",
                    help="Hub.add_sketches entries/s against LMDB writing the same bytes (run_add_rate)")
    ap.add_argument("--scale", choices=("digits", "mnist"), default=None,
                    help="recall + latency of the default stage on a pool zoo grown through --sizes (run_scale)")
    ap.add_argument("--plan", default=None, help="--scale: SIZE:method,method;SIZE:...")
    ap.add_argument("--scale-shortlist", type=int, default=None, help="--scale: the hub's shortlist (default 256)")
    ap.add_argument("--exhaustive-max", type=int, default=1_000,
                    help="--scale: largest size given the shortlist=0 reference (above, the screen of every entry only)")
    ap.add_argument("--hub-dir", default=None, help="--scale: keep the hub in this folder (grown from what it holds)")
    ap.add_argument("--budget", type=float, default=240.0, help="--scale: seconds of searching per size and method")
    ap.add_argument("--exhaustive-budget", type=float, default=240.0,
                    help="--scale: seconds of shortlist=0 searches (the reference) per size and method")
    ap.add_argument("--two-level", choices=("digits", "mnist"), default=None,
                    help="the two-level stage against the exact screen on an in-memory index (run_two_level)")
    ap.add_argument("--coarse", default="1,2,4,8,16", help="--two-level: shortlist_coarse values")
    ap.add_argument("--accuracy-hub", default=None,
                    help="accuracy / auto through the stage of this labelled pool hub folder vs every entry scored (run_accuracy)")
    ap.add_argument("--full-checks", type=int, default=1, help="--accuracy-hub: queries also searched with shortlist=0")
    ap.add_argument("--query-seed", type=int, default=None, help="--scale: the queries' seed (default --seed)")
    ap.add_argument("--query-start", type=int, default=0, help="--accuracy-hub: the first query's number (go on after a run)")
    ap.add_argument("--ref-every", type=int, default=1, help="--accuracy-hub: the reference for every such query only")
    ap.add_argument("--accuracy-data", choices=("digits", "mnist"), default="digits",
                    help="--accuracy-hub: the data set the hub's pool zoo was built from")
    a = ap.parse_args(argv)
    if a.accuracy_hub:
        run_accuracy(a.accuracy_hub, a.queries or 20, tuple(a.methods.split(",")) if a.methods != ",".join(SIMILAR_METHODS)
                     else ("accuracy", "auto"), budget_s=a.budget, full_checks=a.full_checks, out_dir=a.out, tag=a.tag,
                     first=a.query_start, data=a.accuracy_data, ref_every=a.ref_every)
        return
    if a.two_level:
        run_two_level(a.two_level, tuple(int(v) for v in a.sizes.split(",")), a.queries or 100,
                      tuple(int(v) for v in a.coarse.split(",")), tuple(a.methods.split(",")), budget_s=a.budget,
                      seed=a.seed, tag=a.tag, out_dir=a.out)
    elif a.scale:
        run_scale(a.scale, tuple(int(v) for v in a.sizes.split(",")), a.queries or 100,
                  **({"plan": a.plan} if a.plan else {}), budget_s=a.budget, exhaustive_budget_s=a.exhaustive_budget,
                  seed=a.seed, out_dir=a.out, shortlist=a.scale_shortlist,
                  exhaustive_max=a.exhaustive_max, hub_dir=a.hub_dir, tag=a.tag, query_seed=a.query_seed)
    elif a.margin_kept:
        run_margin_kept(a.margin_kept, a.entries or 1_000, a.queries or 100)
    elif a.recall:
        run_recall(a.recall, a.entries or 1_000, a.queries or 100, tuple(a.methods.split(",")), a.shortlist, a.seed,
                   out_dir=a.out, tag=a.tag, labelled="accuracy" in a.methods, query_seed=a.query_seed)
    else:
        suite(H.options(a, entries=a.entries, similar=a.similar, queries=a.queries, methods=a.methods,
                        screen_scale=a.screen_scale, sizes=a.sizes, add_rate=a.add_rate))


if __name__ == "__main__":
    main()
