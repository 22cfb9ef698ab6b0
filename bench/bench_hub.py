"""Hub end to end on real data: the numbers the Foundation issue asks for.

* time to add the ER-Magellan tasks' training tables (one entry per task),
* query latency (median and p90 of 20 queries: the tasks' test tables, in turn), per method,
* hub bytes per entry (the LMDB file, and the pages LMDB reports in use),
* the baseline measured in the same run: reading + parsing the same tables with pandas (the I/O
  floor of an add), and the exact-JS scan over the same candidates (for query latency).

    python -m bench.bench_hub [--quick] [--data ../shared/data/er_magellan]
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import fitsketch
from fitsketch.workloads import ER_MAGELLAN_TASKS, er_records_table, read_er_pairs

from . import harness as H

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "er_magellan"


def _tables(root: Path, tasks) -> tuple[dict, dict, float]:
    train, test = {}, {}
    with H.stopwatch() as sw:
        for t in tasks:
            d = root / t
            tr = d / "train.txt" if (d / "train.txt").exists() else d / "valid.txt"
            train[t] = er_records_table(*read_er_pairs(tr)[:2])
            test[t] = er_records_table(*read_er_pairs(d / "test.txt")[:2])
    return train, test, sw.s


def _used_bytes(path: Path) -> int:
    import lmdb

    env = lmdb.open(str(path / "hub.lmdb"), subdir=False, readonly=True, lock=False, max_dbs=16)
    try:
        info, stat = env.info(), env.stat()
        return int((info["last_pgno"] + 1) * stat["psize"])
    finally:
        env.close()


def run(quick: bool = False, data: Path | None = None, out=print, out_dir: Path | None = None) -> list[dict]:
    root = Path(data or DEFAULT_DATA)
    if not root.exists():
        out(f"bench_hub: ER-Magellan data not found at {root}: skipped (pass --data DIR)")
        return []
    tasks = [t for t in ER_MAGELLAN_TASKS if (root / t / "test.txt").exists()]
    if quick:
        tasks = tasks[:4]
    ctx = H.context(quick=quick)
    train, test, parse_s = _tables(root, tasks)
    rows = []
    work = Path(tempfile.mkdtemp(prefix="fitsketch-bench-hub-"))
    try:
        path = work / "hub"
        with fitsketch.open(path, config=fitsketch.SketchConfig(partition_size=500)) as hub:
            with H.stopwatch() as sw:
                for t in tasks:
                    hub.add(t.replace("/", "-"), train[t], metadata={"task": t})
            add_s = sw.s
            n_rows = sum(len(df) for df in train.values())
            out(f"added {len(tasks)} ER-Magellan tasks ({n_rows} records) in {add_s:.2f} s "
                f"(pandas parse of the same files: {parse_s:.2f} s)")
            rows.append(H.row(ctx, "hub", "er-magellan", "add", "add_all_tasks_s", add_s, unit="s",
                              baseline="parse tables (pandas)", baseline_value=parse_s, entries=len(tasks),
                              records=n_rows))
            queries = [test[t] for t in tasks]
            sketches = [fitsketch.sketch_data(q, hub.config) for q in queries]
            lat = {}
            for method in ("adaptivity", "coverage", "js", "exact-js", "l2"):
                t = H.time_each(lambda q: hub.search(q, k=5, method=method, feature_threshold=0.35),
                                [queries[i % len(queries)] for i in range(20)])
                lat[method] = t
                med, p90 = t["p50_s"], t["p90_s"]
                out(f"query ({method}): median {med * 1e3:.1f} ms, p90 {p90 * 1e3:.1f} ms over 20 queries")
                rows.append(H.row(ctx, "hub", "er-magellan", method, "query_median_ms", med * 1e3, unit="ms",
                                  baseline="exact-js query", baseline_value=None, p90_ms=p90 * 1e3))
            # the same queries from prebuilt sketches: the cost of the search itself
            t = H.time_each(lambda sk: hub.search(sk, k=5, feature_threshold=0.35),
                            [sketches[i % len(sketches)] for i in range(20)])
            med_sk = t["p50_s"]
            out(f"query (adaptivity, prebuilt query sketch): median {med_sk * 1e3:.1f} ms")
            rows.append(H.row(ctx, "hub", "er-magellan", "adaptivity", "query_from_sketch_median_ms",
                              med_sk * 1e3, unit="ms", baseline="query from data",
                              baseline_value=lat["adaptivity"]["p50_s"] * 1e3))
            for r in rows:
                if r["metric"] == "query_median_ms" and r["method"] != "exact-js":
                    r["baseline_value"] = lat["exact-js"]["p50_s"] * 1e3
                    r["ratio"] = r["value"] / r["baseline_value"]
            file_bytes = hub.stats()["bytes"]
            n = len(hub)
        used = _used_bytes(path)
        out(f"hub bytes per entry: {used / n / 1024:.1f} KiB in use ({file_bytes / n / 1024:.1f} KiB of file)")
        rows.append(H.row(ctx, "hub", "er-magellan", "storage", "bytes_per_entry", used / n, unit="B",
                          baseline="LMDB file bytes per entry", baseline_value=file_bytes / n))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    H.write_suite("hub_quick" if quick else "hub", rows, out=out_dir, quick=quick)
    return rows


def suite(opts: H.Options) -> list[dict]:
    data = opts.data / "er_magellan" if opts.data is not None and (opts.data / "er_magellan").exists() else opts.data
    return run(quick=opts.quick, data=data, out_dir=opts.out_dir)


def main(argv=None) -> None:
    suite(H.options(H.parser(__doc__.splitlines()[0]).parse_args(argv)))


if __name__ == "__main__":
    main()
