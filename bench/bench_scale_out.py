"""Scale out: distributed sketching of Parquet data, and search over hub shards.

* sketch throughput (rows/s, MB/s of Parquet on disk) of a locally generated dataset, for one
  process (``engine="local"``), a 2-process pool and Ray with 2 workers, against plain pandas
  reading the same files (the I/O floor, measured in the same run); the first pass (coverage
  centre) is timed on its own too;
* sharded search latency (median, p90 of queries after a warm-up) over 1, 2 and 4 shards holding
  the same entries (a few real sketches registered under many names with ``add_sketches``; several
  shards are filled through one ``fitsketch serve`` process each), searched embedded (shards in
  turn, in this process) and through the servers (shards in parallel); a query matches one of
  ``FAMILIES`` column families, so 1/FAMILIES of the entries are candidates.

* with ``--split``: where one process (``engine="local"``) spends its time, stage by stage
  (process CPU time of one instrumented run, each stage timed by wrapping the engine function that
  does it, as ``bench_profile`` does), against ``read_parquet`` of the same files in the same run.

    python -m bench.bench_scale_out [--quick] [--gb 0.5] [--entries 20000] [--out DIR]
        [--skip centre,processes,ray] [--no-search] [--name scale_out_5gb] [--split] [--fused-codes]
"""
from __future__ import annotations

import multiprocessing as mp
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

import fitsketch
from fitsketch import distributed as D
from fitsketch import sharded as S
from fitsketch.kernels._device import usable_cpus

from . import harness as H

SUITE = "scale_out"
ROWS_PER_GROUP = 50_000          # a multiple of the default partition size (500)
FAMILIES = 8
WORDS = np.array(("data model sketch query hub shard merge row group file column value token text "
                  "alpha beta gamma delta kappa sigma omega north south east west red green blue").split())


def generate(root: Path, mb: float, seed: int = 0, out=print) -> tuple[list[str], int]:
    """Parquet files of ~``mb`` MB on disk: 4 floats, 1 int, 1 categorical, 1 short text column;
    row groups of ROWS_PER_GROUP rows, 4 row groups per file."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    files, n_rows, size, i = [], 0, 0, 0
    cats = np.array([f"city-{j}" for j in range(200)], dtype=object)
    while size < mb * 1e6:
        n = 4 * ROWS_PER_GROUP
        df = pd.DataFrame({
            "f0": rng.normal(0, 1, n), "f1": rng.lognormal(2, 1, n), "f2": rng.uniform(-5, 5, n),
            "f3": rng.exponential(3, n).round(2), "n": rng.integers(0, 10_000, n),
            "city": cats[rng.zipf(1.5, n) % len(cats)],
            "text": _join_words(rng.choice(WORDS, (n, 4)))})
        path = root / f"part-{i:04d}.parquet"
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path, row_group_size=ROWS_PER_GROUP)
        files.append(str(path))
        size += path.stat().st_size
        n_rows += n
        i += 1
    out(f"generated {len(files)} files, {n_rows:,} rows, {size / 1e6:.0f} MB on disk in {root}")
    return files, n_rows


def _join_words(w: np.ndarray) -> pd.Series:
    """``" ".join(row)`` of every row of a 2-D array of words, in one Arrow call (the Python join of
    numpy rows took most of the time generating 5 GB)."""
    import pyarrow.compute as pc

    cols = [pa.array(w[:, j].astype(object), type=pa.large_string()) for j in range(w.shape[1])]
    return pc.binary_join_element_wise(*cols, pa.scalar(" ", pa.large_string())).to_pandas()


def _timed(fn, repeats: int) -> dict:
    return H.timeit(fn, repeats=repeats, warmup=0)


METHODS = ("centre", "processes", "ray")     # what --skip may leave out (one process and pandas always run)


def _read_all(files) -> None:
    for f in files:                  # one frame at a time: 5 GB of frames would not fit in memory at once
        pd.read_parquet(f)


def bench_sketch(ctx, files, n_rows, repeats: int, out=print, skip=()) -> list[dict]:
    mb = sum(Path(f).stat().st_size for f in files) / 1e6
    cfg = fitsketch.SketchConfig()
    rows = []

    def add(method, t, floor, note=""):
        med = t["p50_s"]
        extra = {"seconds_median": med, "seconds_min": t["min_s"], "seconds_max": t["max_s"], "repeats": t["n"],
                 "rows": n_rows, "mb": mb, "note": note}
        rows.append(H.row(ctx, SUITE, f"parquet {mb:.0f} MB", method, "sketch throughput", n_rows / med,
                          unit="rows/s", baseline="pandas read_parquet (I/O floor)",
                          baseline_value=n_rows / floor if floor else None, **extra))
        rows.append(H.row(ctx, SUITE, f"parquet {mb:.0f} MB", method, "sketch throughput MB/s", mb / med,
                          unit="MB/s", baseline="pandas read_parquet (I/O floor)",
                          baseline_value=mb / floor if floor else None, **extra))
        out(f"  {method:<28} {med:8.2f} s  {n_rows / med:12,.0f} rows/s  {mb / med:7.1f} MB/s  "
            f"(spread {t['min_s']:.2f}-{t['max_s']:.2f} s) {note}")

    # warm-up: imports, torch kernels, page cache
    D.sketch_parquet(files[:1], config=cfg, engine="local", progress=False)
    floor_ts = _timed(lambda: _read_all(files), repeats)
    floor = floor_ts["p50_s"]
    add("pandas read_parquet", floor_ts, floor)
    t_local = _timed(lambda: D.sketch_parquet(files, config=cfg, engine="local", progress=False, workers=1), repeats)
    add("local (1 process, 1 thread)", t_local, floor)
    threads = min(usable_cpus(), D.LOCAL_THREADS)
    if threads > 1:       # the default of engine="local": one thread per CPU, in this one process
        add(f"local (1 process, {threads} threads)",
            _timed(lambda: D.sketch_parquet(files, config=cfg, engine="local", progress=False), repeats), floor,
            f"load average {H.load_average() or 0:.1f} before (the threads need idle CPUs)")
    if "centre" not in skip:
        center = D.sketch_parquet(files[:1], config=cfg, engine="local", progress=False).coverage["center"]
        add("local, centre given", _timed(lambda: D.sketch_parquet(files, config=cfg, engine="local", progress=False,
                                                                  workers=1, coverage_center=center), repeats),
            floor, "pass 2 only, 1 thread: the first pass costs the difference")
    if "processes" not in skip:
        sw = H.stopwatch().__enter__()
        with ProcessPoolExecutor(2, mp_context=mp.get_context("spawn")) as pool:
            pool.submit(int, 0).result()
            D.sketch_parquet(files[:1], config=cfg, engine=pool, progress=False)        # warm both workers
            start = sw.elapsed()
            add("processes, 2 workers", _timed(lambda: D.sketch_parquet(files, config=cfg, engine=pool,
                                                                        progress=False), repeats), floor,
                f"warm pool; starting it took {start:.1f} s")
    if "ray" in skip:
        return rows
    try:
        import ray
    except ImportError:
        out("  ray: not installed (pip install 'fitsketch[ray]'): skipped")
        return rows
    sw = H.stopwatch().__enter__()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        D.sketch_parquet(files[:1], config=cfg, engine="ray", progress=False)        # warm the workers
        start = sw.elapsed()
        add("ray, 2 workers", _timed(lambda: D.sketch_parquet(files, config=cfg, engine="ray", progress=False),
                                     repeats), floor, f"local Ray; ray.init + warm-up took {start:.1f} s")
    finally:
        ray.shutdown()
    return rows


# (stage key, label, depth) of the one-process split; keys are wrapped in _instrument_parquet
PARQUET_STAGES = [
    ("plan", "plan + kinds (footers, first values)", 0),
    ("pass1", "pass 1: units read and sketched but for their codes", 0),
    ("read", "read row group (pyarrow)", 1),
    ("to_frame", "Arrow -> DataFrame (to_frame)", 1),
    ("build_sketch", "build_sketch(coverage=False)", 1),
    ("quantize", "quantize columns (buckets, tokens, hashes)", 2),
    ("row_matrix", "coverage row transform", 2),
    ("minhash", "MinHash signatures", 2),
    ("partitions", "partition histograms", 2),
    ("stats", "centre statistics (per-dimension sums)", 1),
    ("finish", "pass 2: coverage codes", 0),
    ("merge", "merge of the unit sketches", 0),
]


def _instrument_parquet(timer) -> None:
    import sys

    import fitsketch.coverage  # noqa: F401 (modules by sys.modules: the package's attributes shadow some)
    import fitsketch.data  # noqa: F401
    import fitsketch.parquet_units  # noqa: F401
    import fitsketch.sketch  # noqa: F401

    pu, sk, dist = (sys.modules["fitsketch.parquet_units"], sys.modules["fitsketch.sketch"],
                    sys.modules["fitsketch.distributed"])
    timer.wrap(dist, "plan", "plan")
    timer.wrap(dist, "detect_kinds", "plan")
    timer.wrap(dist, "local_first_pass", "pass1")
    timer.wrap(pu, "_read_unit", "read")
    timer.wrap(sys.modules["fitsketch.data"], "to_frame", "to_frame")       # _unit_frame imports it per call
    timer.wrap(pu, "build_sketch", "build_sketch")
    timer.wrap(pu, "_quantize", "quantize")            # the quantizer build_sketch is given per unit
    timer.wrap(sys.modules["fitsketch.coverage"], "row_matrix", "row_matrix")
    timer.wrap(sk, "minhash_csr", "minhash")
    timer.wrap(sk, "partition_counts", "partitions")
    timer.wrap(pu, "_stats", "stats")
    timer.wrap(dist, "finish_unit", "finish")
    timer.wrap(sk.Sketch, "merge", "merge")


def bench_split(ctx, files, repeats: int = 3, out=print) -> list[dict]:
    """The one-process sketch's stages (process CPU time), the median of ``repeats`` instrumented runs
    alternating with ``read_parquet`` of the same files (the baseline, same run)."""
    from .bench_profile import _rows, _Timer

    mb = sum(Path(f).stat().st_size for f in files) / 1e6
    cfg = fitsketch.SketchConfig()
    D.sketch_parquet(files[:1], config=cfg, engine="local", progress=False, workers=1)       # warm-up
    timer = _Timer(H.clock(True))
    snaps = []

    def one():              # one thread: the stage timers are not shared between threads
        timer.reset()
        D.sketch_parquet(files, config=cfg, engine="local", progress=False, workers=1)
        snaps.append((dict(timer.total), dict(timer.calls)))

    _instrument_parquet(timer)
    try:
        both = H.interleaved({"read_parquet": lambda: _read_all(files), "sketch": one}, repeats, warmup=0)
    finally:
        timer.restore()
    times = both["sketch"]["cpu"]["times_s"]
    mid = int(np.argsort(times, kind="stable")[len(snaps) // 2])
    total, read_s = times[mid], both["read_parquet"]["median_cpu_s"]
    timer.total, timer.calls = snaps[mid]
    rows = _rows(PARQUET_STAGES, timer, total, ("plan", "pass1", "finish", "merge"))
    for r in rows:
        r["x read_parquet"] = r["ms"] / (read_s * 1e3)
    out(f"\n## One-process Parquet sketch, stage by stage ({mb:.0f} MB; process CPU time, median of {repeats})\n")
    out(H.markdown_table(rows, ["stage", "ms", "share", "x read_parquet", "calls"]))
    out(f"\nsketch {mb / total:.1f} MB/s CPU ({total * 1e3:,.0f} ms), read_parquet {mb / read_s:.1f} MB/s CPU "
        f"({read_s * 1e3:,.0f} ms), same run: {read_s / total:.3f}x read_parquet; wall medians "
        f"{mb / both['sketch']['p50_s']:.1f} / {mb / both['read_parquet']['p50_s']:.1f} MB/s; load average "
        f"{H.load_average()}")
    out_rows = [H.row(ctx, SUITE, f"parquet {mb:.0f} MB", "local (1 process), CPU", "sketch throughput MB/s CPU",
                      mb / total, unit="MB/s", baseline="pandas read_parquet, CPU, same run",
                      baseline_value=mb / read_s, clock="process CPU time")]
    out_rows += [H.row(ctx, SUITE, "parquet stage", r["stage"], "ms", r["ms"], unit="ms", share=r["share"])
                 for r in rows]
    return out_rows


def _family(rng, f: int, n: int) -> pd.DataFrame:
    return pd.DataFrame({f"fam{f}_a": rng.normal(f, 1 + f % 3, n), f"fam{f}_b": rng.lognormal(f % 4, 1, n),
                         f"fam{f}_c": rng.choice([f"v{f}-{j}" for j in range(10)], n)})


class _Servers:
    """``fitsketch serve`` processes, one per hub directory, each on its own Unix socket."""

    def __init__(self, paths: list[Path], work: Path):
        import os
        import subprocess
        import sys

        self.socks = [str(work / f"srv{i}.sock") for i in range(len(paths))]
        self.logs = [open(work / f"srv{i}.log", "w") for i in range(len(paths))]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.procs = [subprocess.Popen([sys.executable, "-m", "fitsketch.server", str(p), "--socket", s],
                                       stdout=subprocess.DEVNULL, stderr=log, env=env)
                      for p, s, log in zip(paths, self.socks, self.logs)]
        try:
            for proc, sock, log in zip(self.procs, self.socks, self.logs):
                self._wait(proc, sock, log)
        except BaseException:
            self.stop()
            raise

    @staticmethod
    def _wait(proc, sock: str, log, timeout: float = 120.0) -> None:
        from fitsketch import errors as E
        from fitsketch.client import Client

        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server for {sock} exited with {proc.returncode}: {Path(log.name).read_text()}")
            try:
                Client(sock, timeout=10).close()
                return
            except E.ConnectionLostError:
                if time.time() > deadline:
                    raise RuntimeError(f"server for {sock} did not answer in {timeout:.0f} s") from None
                time.sleep(0.1)

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.wait(timeout=120)
        for log in self.logs:
            log.close()


def _latencies(hub, qs) -> dict:
    t = H.time_each(lambda q: hub.search(q, k=10), qs, warmup=1)      # warm-up: the first query once
    assert len(t["result"][-1]) == 10
    return t


def bench_search(ctx, n_entries: int, queries: int, work: Path, out=print, shard_counts=(1, 2, 4),
                 save=None) -> list[dict]:
    """Per shard count: add the entries (one shard embedded, in this process; several shards each
    behind its own ``fitsketch serve`` process, so they write in parallel), then time the same queries
    through the servers (shards searched in parallel) and with the shards opened embedded (searched
    one after the other in this process). The baseline is the first shard count's embedded search.
    ``save(rows)`` is called after each shard count (a 1M-entry configuration takes most of an hour:
    a run cut off later keeps what it measured)."""
    rng = np.random.default_rng(1)
    cfg = fitsketch.SketchConfig()
    variants = 4                                  # distinct sketches per family
    sketches = [[fitsketch.sketch_data(_family(rng, f, 2000), cfg) for _ in range(variants)] for f in range(FAMILIES)]
    qs = [_family(rng, i % FAMILIES, 1000) for i in range(queries)]
    rows, base = [], None
    base_name = f"{shard_counts[0]} shard{'s' if shard_counts[0] > 1 else ''}, embedded"

    def add_all(hub):
        for lo in range(0, n_entries, 10_000):     # bulk add, grouped by shard
            hub.add_sketches([(f"model-{e:07d}", sketches[e % FAMILIES][(e // FAMILIES) % variants],
                               {"family": e % FAMILIES}) for e in range(lo, min(n_entries, lo + 10_000))])

    for n_shards in shard_counts:
        paths = [work / f"s{n_shards}-{i}.hub" for i in range(n_shards)]
        try:
            sw = H.stopwatch().__enter__()
            if n_shards == 1:
                with S.open_sharded(paths, config=cfg) as hub:
                    add_all(hub)
                add_how = "embedded, in this process"
            else:
                for pth in paths:                     # created with the bench's config, then served
                    fitsketch.open(pth, create=True, config=cfg).close()
                srv = _Servers(paths, work)
                try:
                    with S.open_sharded(srv.socks, timeout=1800) as hub:
                        add_all(hub)
                finally:
                    srv.stop()
                add_how = f"{n_shards} servers in parallel"
            add_s = sw.elapsed()
            warm = {}
            with S.open_sharded(paths, create=False) as hub:
                with H.stopwatch() as sw:
                    hub.warm()                 # what a first search would load: every entry's profile
                warm["embedded"] = sw.s
                nbytes = sum(s.stats()["bytes"] for s in hub.shards)
                plans = [s.explain(qs[0], k=10) for s in hub.shards]
                modes = ["; ".join(f"{st.name} {st.actual}" for st in p.stages if st.name in ("shortlist", "candidates"))
                         for p in plans]
                lat = {"embedded": _latencies(hub, qs)}
            sw = H.stopwatch().__enter__()
            srv = _Servers(paths, work)
            try:
                # servers load their shard's profiles as they start: 250k+ entries take longer than the
                # client's default 30 s (a 1M-entry run died there)
                with S.open_sharded(srv.socks, timeout=1800) as hub:
                    hub.warm()
                    warm["served"] = sw.elapsed()                    # from starting the servers
                    lat["served"] = _latencies(hub, qs)
            finally:
                srv.stop()
        finally:
            for pth in paths:                  # a 1M-entry configuration takes tens of GB: free it now
                shutil.rmtree(pth, ignore_errors=True)
        common = {"entries": n_entries, "shards": n_shards, "candidates": n_entries // FAMILIES,
                  "candidate_stage": modes, "add_entries_per_s": n_entries / add_s, "add": add_how,
                  "bytes_per_entry": nbytes / n_entries, "queries": len(qs), "warm_s": warm}
        out(f"  {n_shards} shard(s), {n_entries:,} entries: add {n_entries / add_s:8,.0f} entries/s ({add_how}), "
            f"{nbytes / n_entries / 1e3:.1f} KB/entry ({n_entries // FAMILIES:,} candidates; {modes[0]}); warm "
            f"{warm['embedded']:.1f} s embedded, {warm['served']:.1f} s from starting the servers")
        for how in ("embedded", "served"):
            med, p90 = lat[how]["p50_s"], lat[how]["p90_s"]
            base = base or med
            out(f"    search {how:>8}: median {med * 1e3:8.1f} ms, p90 {p90 * 1e3:8.1f} ms")
            rows.append(H.row(ctx, SUITE, f"{n_entries} entries", f"{n_shards} shard(s), {how}",
                              "search latency median", med * 1e3, unit="ms", baseline=base_name,
                              baseline_value=base * 1e3, p90_ms=p90 * 1e3, **common))
        rows.append(H.row(ctx, SUITE, f"{n_entries} entries", f"{n_shards} shard(s)", "add_sketch throughput",
                          n_entries / add_s, unit="entries/s", baseline=None, **common))
        if save is not None:
            save(rows)
    return rows


def run(quick: bool = False, gb: float | None = None, entries: int | None = None, out_dir: Path | None = None,
        out=print, skip=(), search: bool = True, name: str | None = None, sketching: bool = True,
        shard_counts=(1, 2, 4), split: bool = False) -> Path:
    mb = 1000 * gb if gb is not None else (20 if quick else 500)        # --quick: smoke sizes
    n_entries = entries or (1_000 if quick else 20_000)
    repeats = 5 if mb <= 100 else 1     # a small set (seconds a run): the median of 5; 5 GB: one run
    ctx = H.context(quick=quick)
    suite = name or SUITE + ("_quick" if quick else "")

    def write(rows):
        return H.write_suite(suite, rows, out=out_dir, quick=quick)

    work = Path(tempfile.mkdtemp(prefix="fitsketch-bench-scale-out-"))
    try:
        rows = []
        if sketching:
            files, n_rows = generate(work / "data", mb, out=out)
            out(f"sketch throughput ({repeats} run(s) each, median){'; skipped: ' + ', '.join(skip) if skip else ''}:")
            rows = bench_sketch(ctx, files, n_rows, repeats, out=out, skip=skip)
            if split:
                rows += bench_split(ctx, files, 3, out=out)
        if search:
            out("sharded search (adaptivity, k=10; entries added with add_sketches):")
            done = list(rows)
            rows += bench_search(ctx, n_entries, 5 if quick else 20, work, out=out, shard_counts=shard_counts,
                                 save=lambda part: write(done + part))
        else:
            out("sharded search: skipped (--no-search)")
    finally:
        shutil.rmtree(work, ignore_errors=True)           # the generated dataset goes with it
    path = write(rows)
    out(f"wrote {path}")
    return path


def suite(opts: H.Options) -> Path:
    x = opts.extra
    return run(opts.quick, x.get("gb"), x.get("entries"), opts.out_dir, skip=tuple(x.get("skip", ())),
               search=not x.get("no_search"), name=x.get("name"), sketching=not x.get("search_only"),
               shard_counts=tuple(x.get("shard_counts", (1, 2, 4))), split=bool(x.get("split")))


def main(argv=None) -> None:
    ap = H.parser(__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=None, help="dataset size on disk (default 0.5; quick 0.05)")
    ap.add_argument("--entries", type=int, default=None, help="entries for sharded search (default 20,000)")
    ap.add_argument("--skip", default="", help=f"comma-separated sketch runs to leave out: {', '.join(METHODS)} "
                    "(one process and the pandas floor always run)")
    ap.add_argument("--no-search", action="store_true", help="leave out the sharded-search part")
    ap.add_argument("--search-only", action="store_true", help="only the sharded-search part")
    ap.add_argument("--shards", default="1,2,4", help="shard counts of the sharded-search part (default 1,2,4)")
    ap.add_argument("--name", default=None, help="results file name without .json (default scale_out[_quick])")
    ap.add_argument("--split", action="store_true", help="also the one-process sketch's stages (process CPU time)")
    ap.add_argument("--fused-codes", action="store_true",
                    help="code coverage rows with the opt-in fused kernel (kernels.rowcodes.FUSED_CODES)")
    a = ap.parse_args(argv)
    skip = tuple(m for m in a.skip.split(",") if m)
    if a.fused_codes:
        from fitsketch.kernels import rowcodes

        rowcodes.FUSED_CODES = True
    bad = [m for m in skip if m not in METHODS]
    if bad:
        ap.error(f"--skip {','.join(bad)}: choose among {', '.join(METHODS)}")
    suite(H.options(a, gb=a.gb, entries=a.entries, skip=skip, no_search=a.no_search, name=a.name,
                    search_only=a.search_only, split=a.split, shard_counts=tuple(int(x) for x in a.shards.split(",") if x)))


if __name__ == "__main__":
    main()
