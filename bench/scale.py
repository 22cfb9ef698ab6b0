"""Scale: what a hub costs as it grows -- add throughput, query latency, bytes per entry, RSS.

Entries carry realistic sketch shapes (32 numeric features x 10 partitions of 500 rows) built
cheaply: ``n_families`` seeded synthetic data distributions (normal, log-normal, integer and
heavy-tailed columns at family-specific locations and scales), a few partition sketches of 500
rows per family sketched for real with ``fitsketch.sketch_data``, and a few hundred entry sketches
merged from 10 of those partitions each (mostly of one family, some from others) -- sketches are
mergeable, so this is how large data is sketched too. Entries are registered with
``hub.add_sketch`` under many names, cycling through the merged sketches. The hub grows through
the sizes in turn (each size is measured on the same hub after adding the entries up to it).

Per size: add throughput (entries/s over the entries added since the previous size, through
``hub.add_sketches``: 1000 entries per transaction), the first query after the adds (it brings
the in-memory profile index up to date), query p50/p99 of ``hub.search`` (method adaptivity, the
default thresholds and shortlist, query sketch prebuilt: 2 partitions of a family's fresh data)
over up to 20 queries within a time cap, candidates per query, the exhaustive search
(``shortlist=0``) on the same hub as the baseline and the reference for the shortlist's recall@10
(by score: many names share a sketch, so entries tie) and top-1, hub bytes per entry (LMDB file
size / entries) and peak RSS. Sizes that would not finish
in the time available are extrapolated with a power-law fit of the measured ones, and marked so.
Issue targets: p50 <= 50 ms at 1M entries on 2 cores; <= 32 KB per entry at 32 x 10.
"""
from __future__ import annotations

import math
import resource
import shutil
import tempfile
from pathlib import Path

import numpy as np

from . import harness as H

N_FEATURES = 32
PARTITION_ROWS = 500
PARTITIONS = 10
TARGET_P50_MS = 50.0
TARGET_BYTES = 32 * 1024
TARGET_SIZE = 1_000_000


def _family_data(fam: int, n: int, seed: int) -> np.ndarray:
    r = np.random.default_rng(10_000 + fam)
    kind = r.integers(0, 4, N_FEATURES)
    loc = r.uniform(-1, 1, N_FEATURES) * 10 ** r.uniform(0, 4, N_FEATURES)
    scale = np.abs(loc) * r.uniform(0.05, 0.5, N_FEATURES) + 1e-2
    g = np.random.default_rng(seed)
    cols = []
    for j in range(N_FEATURES):
        if kind[j] == 0:
            c = g.normal(loc[j], scale[j], n)
        elif kind[j] == 1:
            c = np.sign(loc[j]) * g.lognormal(np.log(abs(loc[j]) + 1), 0.5, n)
        elif kind[j] == 2:
            c = np.rint(g.normal(loc[j], scale[j], n))
        else:
            c = loc[j] + scale[j] * g.standard_t(3, n)
        cols.append(c)
    return np.column_stack(cols)


def build_sketches(n_families: int, parts_per_family: int, n_sketches: int, seed: int = 0, config=None):
    """(entry sketches, query sketches) -- see the module docstring."""
    import inspect

    import fitsketch

    cfg = config or fitsketch.SketchConfig()
    names = [f"f{j}" for j in range(N_FEATURES)]
    # merged parts must share the coverage transform's centre (where the engine has one)
    kw = {"coverage_center": np.zeros(N_FEATURES)} if "coverage_center" in inspect.signature(
        fitsketch.sketch_data).parameters else {}
    parts = {}
    for f in range(n_families):
        for p in range(parts_per_family):
            X = _family_data(f, PARTITION_ROWS, seed * 1_000_003 + f * 1000 + p)
            parts[f, p] = fitsketch.sketch_data(X, cfg, partition_size=PARTITION_ROWS, feature_names=names, **kw)
    rng = np.random.default_rng(seed)
    sketches = []
    for i in range(n_sketches):
        fam = i % n_families
        n_other = int(rng.integers(0, 4))
        picks = [(fam, int(p)) for p in rng.integers(0, parts_per_family, PARTITIONS - n_other)]
        picks += [(int(rng.integers(0, n_families)), int(rng.integers(0, parts_per_family))) for _ in range(n_other)]
        rng.shuffle(picks)
        sk = parts[picks[0]]
        for key in picks[1:]:
            sk = sk.merge(parts[key])
        sketches.append(sk)
    queries = []
    for q in range(20):
        fam = int(rng.integers(0, n_families))
        X = _family_data(fam, 2 * PARTITION_ROWS, seed * 1_000_003 + 999_000 + q)
        queries.append(fitsketch.sketch_data(X, cfg, partition_size=PARTITION_ROWS, feature_names=names, **kw))
    return sketches, queries


def _rss_mb() -> tuple[float, float]:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    try:
        with open("/proc/self/statm") as f:
            cur = int(f.read().split()[1]) * resource.getpagesize() / 2**20
    except OSError:  # pragma: no cover
        cur = float("nan")
    return cur, peak


def measure(sizes, *, n_families: int, parts_per_family: int, n_sketches: int, max_query_s: float,
            workdir: Path, out=print, exhaustive_queries: int = 10, exhaustive_max: int = 100_000) -> list[dict]:
    import fitsketch

    sw = H.stopwatch().__enter__()
    sketches, queries = build_sketches(n_families, parts_per_family, n_sketches)
    nbytes = sum(s.hist["count"].nbytes * 4 + s.signatures.nbytes for s in sketches[:50]) / min(50, len(sketches))
    out(f"  built {len(sketches)} entry sketches ({sketches[0].n_features} features x {sketches[0].n_partitions} "
        f"partitions, ~{nbytes / 1024:.0f} KiB of arrays each) from {n_families * parts_per_family} partition "
        f"sketches in {sw.elapsed():.1f} s")
    points = []
    hub_path = workdir / "scale.hub"
    hub = fitsketch.open(hub_path)
    try:
        n = 0
        for size in sizes:
            start = n
            with H.stopwatch() as sw:
                while n < size:    # bulk add: batches of 1000 entries per transaction
                    hi = min(size, n + 10_000)
                    hub.add_sketches([(f"model-{i:07d}", sketches[i % len(sketches)], {"i": i})
                                      for i in range(n, hi)])
                    n = hi
            add_s = sw.s
            # first query after the adds brings the profile index up to date: timed on its own
            with H.stopwatch() as sw:
                hub.search(queries[0], k=10, method="adaptivity")
            warm_s = sw.s
            t_q = H.time_each(lambda q: hub.explain(q, k=10, method="adaptivity"), queries, budget_s=max_query_s)
            cands = [next((s.actual for s in plan.stages if s.name == "candidates"), None) for plan in t_q["result"]]
            # the exhaustive search (shortlist=0) as the baseline and the reference for recall
            full_lat, top1, recall = H.Samples(), [], []
            for q in queries[:exhaustive_queries]:
                if size > exhaustive_max:
                    break
                full = full_lat.call(hub.search, q, k=10, method="adaptivity", shortlist=0)
                short = hub.search(q, k=10, method="adaptivity")
                # many entries tie (names cycle through the sketches), so recall is by score: the share
                # of the shortlisted top 10 scoring at least the exhaustive 10th best, and top-1 equal
                kth = full[-1].score if full else 0.0
                recall.append(float(np.mean([m.score >= kth - 1e-12 for m in short])) if short else 0.0)
                top1.append(bool(short) and bool(full) and short[0].score >= full[0].score - 1e-12)
                if full_lat.total_s() > max_query_s:
                    break
            stats = hub.stats()
            cur, peak = _rss_mb()
            pt = {"entries": size, "add_entries_per_s": (size - start) / add_s if size > start else None,
                  "add_ms_per_entry": 1e3 * add_s / (size - start) if size > start else None,
                  "query_p50_ms": 1e3 * t_q["p50_s"], "query_p90_ms": 1e3 * t_q["p90_s"],
                  "query_p99_ms": 1e3 * t_q["p99_s"], "queries": t_q["n"],
                  "candidates_median": float(np.median([c for c in cands if c is not None] or [np.nan])),
                  "bytes_per_entry": stats["bytes"] / size, "hub_bytes": stats["bytes"],
                  "rss_mb": cur, "peak_rss_mb": peak, "first_query_s": warm_s,
                  "exhaustive_p50_ms": 1e3 * full_lat.stats()["p50_s"] if full_lat.wall else None,
                  "exhaustive_queries": len(full_lat.wall),
                  "recall_at_10": float(np.mean(recall)) if recall else None,
                  "top1_found": float(np.mean(top1)) if top1 else None}
            hub.warm()                          # writes the persisted search indexes (engine/indexes.py)
            hub.close()
            pt["bytes_by_part"] = db_bytes(hub_path)
            pt.update(_reopen(hub_path, queries[0]))
            hub = fitsketch.open(hub_path)
            points.append(pt)
            ex = (f"; exhaustive p50 {pt['exhaustive_p50_ms']:.0f} ms, shortlist recall@10 {pt['recall_at_10']:.2f}, "
                  f"top-1 {pt['top1_found']:.2f} over {len(full_lat.wall)} queries" if full_lat.wall else "")
            out(f"  {size:>9,} entries: add {pt['add_entries_per_s']:.1f} entries/s; first query {warm_s:.2f} s; "
                f"query p50 {pt['query_p50_ms']:.1f} ms, p99 {pt['query_p99_ms']:.1f} ms over {t_q['n']} queries "
                f"(median {pt['candidates_median']:.0f} candidates){ex}; {pt['bytes_per_entry'] / 1024:.1f} KiB/entry; "
                f"RSS {cur:.0f} MiB (peak {peak:.0f}); reopened: open + first query {pt['reopen_first_query_s']:.2f} s "
                f"from the persisted indexes vs {pt['reopen_rebuild_s']:.2f} s rebuilding them from the records "
                f"({pt['index_file_bytes'] / 2**20:.1f} MiB of index files); KiB/entry by part: "
                + ", ".join(f"{k} {v / size / 1024:.1f}" for k, v in pt["bytes_by_part"].items()))
    finally:
        hub.close()
    return points


def db_bytes(path: Path) -> dict[str, int]:
    """Where a hub's bytes go: LMDB pages (branch, leaf, overflow) of each database, and the key +
    value bytes of database ``extra`` split by record kind (``extra/<prefix>`` for the prefixed
    profile, band-key and screen records; ``extra`` for the per-entry record holding coverage
    counts). Largest first."""
    import lmdb

    env = lmdb.open(str(path / "hub.lmdb"), subdir=False, readonly=True, lock=False, max_dbs=32)
    out: dict[str, int] = {}
    try:
        with env.begin() as txn:
            names = [bytes(k).decode() for k, _ in txn.cursor()]
        for name in names:
            db = env.open_db(name.encode(), create=False)
            with env.begin(db=db) as txn:
                st = txn.stat(db)
                out[name] = (st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]) * st["psize"]
                if name == "extra":
                    for k, v in txn.cursor(db=db):
                        kind = "extra/" + chr(k[0]) if len(k) == 9 else "extra (record: coverage counts)"
                        out[kind] = out.get(kind, 0) + len(k) + len(v)
    finally:
        env.close()
    return dict(sorted(out.items(), key=lambda t: -t[1]))


def _reopen(path: Path, query) -> dict:
    """Warm-up after opening: open the hub and answer one query, with its persisted search indexes
    (engine/indexes.py) and, as the baseline in the same run, with them moved away (every record
    read back from LMDB, the files written again)."""
    import fitsketch

    files = path / "indexes"
    size = sum(f.stat().st_size for f in files.glob("*.fsidx")) if files.exists() else 0
    with H.stopwatch() as sw:
        with fitsketch.open(path) as hub:
            hub.search(query, k=10, method="adaptivity")
    from_file = sw.s
    off = path / "indexes.off"
    if files.exists():
        files.rename(off)
    with H.stopwatch() as sw:
        with fitsketch.open(path) as hub:
            hub.search(query, k=10, method="adaptivity")
    rebuilt = sw.s
    shutil.rmtree(files, ignore_errors=True)
    if off.exists():
        off.rename(files)
    return {"reopen_first_query_s": from_file, "reopen_rebuild_s": rebuilt, "index_file_bytes": size}


def _fit(xs, ys):
    """log y = a + b log x over the points with positive values; None when fewer than 2."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x and y and x > 0 and y > 0]
    if len(pts) < 2:
        return None
    b, a = np.polyfit([p[0] for p in pts], [p[1] for p in pts], 1)
    return float(a), float(b)


def extrapolate(points: list[dict], sizes) -> list[dict]:
    """Power-law fits of the measured sizes, never falling with size. Query latencies are fitted
    over the sizes where the shortlist ran (fewer candidates than entries) when there are two such
    sizes: the smaller hubs, scored exhaustively, follow another law; with a falling fit the
    estimate is the largest size's value."""
    out = []
    shortlisted = [p for p in points if p.get("candidates_median") and p["candidates_median"] < p["entries"]]
    fits = {}
    for k in ("query_p50_ms", "query_p99_ms", "bytes_per_entry", "add_ms_per_entry"):
        pts = shortlisted if k.startswith("query") and len(shortlisted) >= 2 else points
        fits[k] = _fit([p["entries"] for p in pts], [p[k] for p in pts])
        if fits[k] is not None and fits[k][1] < 0:   # no credit for a falling fit: flat from the largest size
            last = pts[-1]
            fits[k] = (math.log(last[k]) if last[k] > 0 else 0.0, 0.0, last["entries"])
    for s in sizes:
        pt = {"entries": s, "extrapolated": True}
        for k, f in fits.items():
            if f is not None:
                a, b = f[0], f[1]
                pt[k] = math.exp(a + b * math.log(s)) if len(f) == 2 else math.exp(a)
                pt[k + "_exponent"] = b
        out.append(pt)
    return out


def _plot(points, extra, path: Path) -> None:
    """Four panels, one y-axis each: query p50, query p99, add cost, disk per entry (with its target)."""
    plt = H.pyplot()
    from matplotlib.ticker import FuncFormatter

    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    specs = [("query_p50_ms", "query latency p50 (ms)", TARGET_P50_MS, "target: 50 ms at 1M entries"),
             ("query_p99_ms", "query latency p99 (ms)", None, None),
             ("add_ms_per_entry", "add cost (ms per entry)", None, None),
             ("kib_per_entry", "hub size on disk (KiB per entry)", TARGET_BYTES / 1024, "target: 32 KB per entry")]
    kib = lambda p: {**p, "kib_per_entry": p["bytes_per_entry"] / 1024 if p.get("bytes_per_entry") else None}  # noqa: E731
    pts, extra = [kib(p) for p in points], [kib(p) for p in extra]
    for ax, (k, label, tgt, tlabel) in zip(axes.ravel(), specs):
        xs = [p["entries"] for p in pts if p.get(k)]
        ax.loglog(xs, [p[k] for p in pts if p.get(k)], "o-", label="measured")
        ex = [p for p in extra if p.get(k)]
        if ex and xs:
            last = [p for p in pts if p.get(k)][-1]
            ax.loglog([xs[-1]] + [p["entries"] for p in ex], [last[k]] + [p[k] for p in ex], "s--",
                      alpha=0.7, label="extrapolated (power-law fit)")
        if tgt is not None and k == "kib_per_entry":
            ax.axhline(tgt, color="red", alpha=0.6, lw=1.5, ls=":", label=tlabel)
        elif tgt is not None:
            ax.scatter([TARGET_SIZE], [tgt], marker="*", s=150, color="red", zorder=5, label=tlabel)
        ax.set_xlabel("hub size (entries)", fontsize=11)
        ax.set_ylabel(label, fontsize=11)
        ax.set_title(label, fontsize=12)
        ax.tick_params(which="both", labelsize=10)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))   # 20, not 2 x 10^1
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if str(f"{v:g}")[0] in "2358" else ""))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=10)
    fig.suptitle("fitsketch hub cost vs size (32 features x 10 partitions of 500 rows per entry; 2 CPU cores)",
                 fontsize=13)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(quick: bool = False, out_dir: Path | None = None, out=print) -> dict:
    out_dir = H.results_dir(out_dir, quick)
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = H.context("cpu", quick)
    env = H.environment("cpu")
    if quick:
        # a smoke run: 1,200 entries still crosses the shortlist's 4 x 256 threshold
        sizes, fams, ppf, nsk, qcap = (300, 1200), 10, 4, 40, 15.0
    else:
        sizes, fams, ppf, nsk, qcap = (1000, 10_000, 100_000), 20, 6, 200, 120.0
    wall = H.stopwatch().__enter__()
    tmp = Path(tempfile.mkdtemp(prefix="fitsketch-bench-scale-"))
    try:
        out(f"scale: hub sizes {sizes} in {tmp} (on disk)")
        points = measure(sizes, n_families=fams, parts_per_family=ppf, n_sketches=nsk, max_query_s=qcap,
                         workdir=tmp, out=out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report(points, sizes, quick, ctx, env, wall.elapsed(), out_dir, out)


def suite(opts: H.Options) -> dict:
    return run(quick=opts.quick, out_dir=opts.out_dir)


def main(argv=None) -> dict:
    return suite(H.options(H.parser(__doc__.splitlines()[0]).parse_args(argv)))


def report(points, sizes, quick, ctx, env, total, out_dir: Path, out=print) -> dict:
    """Rows, verdicts, plot and the suite file from measured points (``run``; also re-run on a
    saved ``scale.json``'s points when only the reading of them changes)."""
    want = [s for s in (10_000, 100_000, TARGET_SIZE) if s > sizes[-1]]
    extra = extrapolate(points, want)
    rows = []
    for p in points:
        n = p["entries"]
        w = f"{n} entries"
        rows.append(H.row(ctx, "scale", w, "add_sketch", "add_throughput", p["add_entries_per_s"], unit="entries/s"))
        rows.append(H.row(ctx, "scale", w, "adaptivity", "query_p50", p["query_p50_ms"], unit="ms",
                          baseline="issue target (at 1M)", baseline_value=TARGET_P50_MS, queries=p["queries"],
                          candidates=p["candidates_median"]))
        rows.append(H.row(ctx, "scale", w, "adaptivity", "query_p99", p["query_p99_ms"], unit="ms",
                          queries=p["queries"], candidates=p["candidates_median"]))
        if p.get("exhaustive_p50_ms"):
            rows.append(H.row(ctx, "scale", w, "adaptivity", "query_p50_vs_exhaustive", p["query_p50_ms"], unit="ms",
                              baseline="exhaustive search (shortlist=0), same hub", baseline_value=p["exhaustive_p50_ms"],
                              queries=p["exhaustive_queries"]))
            rows.append(H.row(ctx, "scale", w, "adaptivity", "shortlist_recall_at_10", p["recall_at_10"],
                              baseline="exhaustive top 10 (by score)", baseline_value=1.0, top1_found=p["top1_found"]))
        rows.append(H.row(ctx, "scale", w, "profiles", "first_query_after_adds", p["first_query_s"], unit="s"))
        if p.get("reopen_first_query_s") is not None:
            rows.append(H.row(ctx, "scale", w, "indexes", "open_and_first_query", p["reopen_first_query_s"], unit="s",
                              baseline="the same without the persisted index files (rebuilt from LMDB), same run",
                              baseline_value=p["reopen_rebuild_s"], index_file_bytes=p["index_file_bytes"]))
        rows.append(H.row(ctx, "scale", w, "hub", "bytes_per_entry", p["bytes_per_entry"], unit="B",
                          baseline="issue target", baseline_value=TARGET_BYTES))
        rows.append(H.row(ctx, "scale", w, "process", "peak_rss", p["peak_rss_mb"], unit="MiB"))
    for p in extra:
        w = f"{p['entries']} entries (extrapolated)"
        note = "extrapolated by a power-law fit of the measured sizes, not measured"
        if "query_p50_ms" in p:
            rows.append(H.row(ctx, "scale", w, "adaptivity", "query_p50", p["query_p50_ms"], unit="ms",
                              baseline="issue target (at 1M)", baseline_value=TARGET_P50_MS,
                              exponent=p["query_p50_ms_exponent"], note=note))
        if "add_ms_per_entry" in p:
            rows.append(H.row(ctx, "scale", w, "add_sketch", "build_time", p["add_ms_per_entry"] * p["entries"] / 1e3,
                              unit="s", note=note + "; time to add all entries, per-entry add cost extrapolated by the same fit (never below the measured)"))
    rows.append(H.row(ctx, "scale", "all", "all", "wall_time", total, unit="s"))
    notes = [f"sizes measured: {list(sizes)}; hub on local disk (LMDB commits per entry are synced)",
             "query = hub.explain/search(k=10, method='adaptivity', default thresholds) with a prebuilt "
             "2-partition query sketch; queries stop early at the per-size time cap (see 'queries')",
             "bytes per entry = LMDB file size / entries"]
    largest = points[-1]
    at_1m = next((p for p in extra if p["entries"] == TARGET_SIZE), None)
    verdict = []
    if at_1m and "query_p50_ms" in at_1m:
        verdict.append(f"query p50 at 1M entries (extrapolated, exponent {at_1m['query_p50_ms_exponent']:.2f}): "
                       f"{at_1m['query_p50_ms']:.3g} ms vs target {TARGET_P50_MS:.0f} ms -> "
                       f"{at_1m['query_p50_ms'] / TARGET_P50_MS:.2f}x the target")
    verdict.append(f"bytes per entry at {largest['entries']:,}: {largest['bytes_per_entry'] / 1024:.1f} KiB vs "
                   f"32 KiB target -> {largest['bytes_per_entry'] / TARGET_BYTES:.2f}x")
    if at_1m and "add_ms_per_entry" in at_1m:
        verdict.append(f"building a 1M-entry hub at the measured add rate would take "
                       f"{at_1m['add_ms_per_entry'] * TARGET_SIZE / 3.6e6:.1f} h: not run")
    for v in verdict:
        out("  " + v)
    notes += verdict
    suffix = "_quick" if quick else ""
    plot = out_dir / f"scale{suffix}.png"
    _plot(points, extra, plot)
    path = H.write_suite(f"scale{suffix}", rows, out=out_dir, quick=quick, plots=[plot.name],
                         tables={"points": points, "extrapolated": extra, "notes": notes}, env=env)
    out(f"scale suite: {total:.1f} s; wrote {path}")
    return {"rows": rows, "points": points, "extrapolated": extra, "path": path}


if __name__ == "__main__":
    main()
