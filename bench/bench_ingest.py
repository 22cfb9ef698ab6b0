"""Ingest at read speed (issue 21): ``hub.add`` of a table against ``pd.read_csv`` of the same file.

``python -m bench.bench_ingest [--quick] [--repeats R] [--rows N]``

The table is issue 21's (bench.bench_profile.table: 200,000 rows of 16 numeric columns, one
500-value categorical and one 6-word text column; ``--quick`` 20,000 rows), written once as CSV.
Each round times, back to back so both see the same load on a shared machine:

* ``read_csv``: ``pd.read_csv(path)`` -- the baseline;
* ``add(frame)``: ``hub.add(name, df)`` of the frame read_csv returned (sketch + entry record +
  LMDB transaction), into a hub that already holds a few entries;
* ``add(path)``: ``hub.add(name, path)``: reading the CSV included.

Reported: the median over rounds of each, and the ratios of the medians (the issue's target:
``add(frame) / read_csv <= 3``). Timings on a shared 2-core machine are noisy: read the ratio, and
the per-round ratios' spread printed with it, and the ratio of process CPU times (both sides are
single-threaded with ``OMP_NUM_THREADS=1``), which contention inflates less.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd

import fitsketch

from . import harness as H
from .bench_profile import table


def run(quick: bool = False, repeats: int | None = None, rows: int | None = None, seed: int = 0,
        out_dir: Path | None = None) -> dict:
    n = rows or (20_000 if quick else 200_000)
    repeats = repeats or (3 if quick else 5)
    df0 = table(n, seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "table.csv"
        df0.to_csv(path, index=False)
        mb = path.stat().st_size / 1e6
        with fitsketch.open(Path(tmp) / "hub", device="cpu") as hub:
            for i in range(3):                         # warm: imports, kernels, a hub with entries
                hub.add(f"warm{i}", table(2_000, seed + 100 + i))
            names = iter(range(10 ** 9))
            frame = pd.read_csv(path)
            # interleaved rounds: read_csv, add(frame), add(path) back to back see the same load
            t = H.interleaved({"read_csv": lambda: pd.read_csv(path),
                               "add_frame": lambda: hub.add(f"frame{next(names)}", frame),
                               "add_path": lambda: hub.add(f"path{next(names)}", str(path))},
                              repeats=repeats, warmup=0)
    med = {k: t[k]["p50_s"] for k in ("read_csv", "add_frame", "add_path")}
    cpu = {k: t[k]["median_cpu_s"] for k in ("read_csv", "add_frame")}
    rows_out = [
        {"what": "pd.read_csv(path) (baseline)", "median s": med["read_csv"], "MB/s": mb / med["read_csv"],
         "x read_csv": 1.0},
        {"what": "hub.add(name, df)", "median s": med["add_frame"], "MB/s": mb / med["add_frame"],
         "x read_csv": med["add_frame"] / med["read_csv"]},
        {"what": "hub.add(name, path) (read included)", "median s": med["add_path"], "MB/s": mb / med["add_path"],
         "x read_csv": med["add_path"] / med["read_csv"]},
    ]
    print(f"\n## Ingest: {n:,} rows x {df0.shape[1]} columns, {mb:.1f} MB of CSV (median of {repeats} rounds)\n")
    print(H.markdown_table(rows_out, ["what", "median s", "MB/s", "x read_csv"]))
    print(f"\nprocess CPU time (medians): read_csv {cpu['read_csv']:.3f} s, add(frame) {cpu['add_frame']:.3f} s: "
          f"{cpu['add_frame'] / cpu['read_csv']:.2f}x; load average {H.load_average()}")
    ctx = H.context("cpu", quick)
    wl = f"{n:,} rows x {df0.shape[1]} columns, {mb:.1f} MB CSV"
    res = [H.row(ctx, "ingest", wl, "hub.add(df)", "add_s", med["add_frame"], unit="s",
                 baseline="pd.read_csv", baseline_value=med["read_csv"]),
           H.row(ctx, "ingest", wl, "hub.add(path)", "add_s", med["add_path"], unit="s",
                 baseline="pd.read_csv", baseline_value=med["read_csv"]),
           H.row(ctx, "ingest", wl, "hub.add(df), process CPU time", "add_cpu_s", cpu["add_frame"], unit="s",
                 baseline="pd.read_csv, process CPU time", baseline_value=cpu["read_csv"])]
    payload = {"params": {"rows": n, "columns": int(df0.shape[1]), "csv_mb": mb, "repeats": repeats, "seed": seed},
               "median": med, "ratio_add_frame": med["add_frame"] / med["read_csv"],
               "ratio_add_path": med["add_path"] / med["read_csv"],
               "cpu_ratio_add_frame": cpu["add_frame"] / cpu["read_csv"], "table": rows_out}
    out = H.write_suite("ingest_quick" if quick else "ingest", res, out=out_dir, quick=quick, tables=payload)
    print(f"wrote {out}")
    return payload


def suite(opts: H.Options) -> dict:
    return run(quick=opts.quick, repeats=opts.repeats, rows=opts.extra.get("rows"), seed=opts.seed,
               out_dir=opts.out_dir)


def main(argv=None) -> dict:
    p = H.parser(__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=None, help="rows of the table (default 200,000; --quick 20,000)")
    args = p.parse_args(argv)
    return suite(H.options(args, rows=args.rows))


if __name__ == "__main__":
    main()
