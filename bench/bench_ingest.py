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

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

import fitsketch

from . import _common as C
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
        read, add_df, add_path, ratios = [], [], [], []
        cpu_read, cpu_add = [], []                      # process CPU time: steadier under contention
        with fitsketch.open(Path(tmp) / "hub", device="cpu") as hub:
            for i in range(3):                         # warm: imports, kernels, a hub with entries
                hub.add(f"warm{i}", table(2_000, seed + 100 + i))
            for r in range(repeats):
                t0, c0 = time.perf_counter(), time.process_time()
                df = pd.read_csv(path)
                read.append(time.perf_counter() - t0)
                cpu_read.append(time.process_time() - c0)
                t0, c0 = time.perf_counter(), time.process_time()
                hub.add(f"frame{r}", df)
                add_df.append(time.perf_counter() - t0)
                cpu_add.append(time.process_time() - c0)
                t0 = time.perf_counter()
                hub.add(f"path{r}", str(path))
                add_path.append(time.perf_counter() - t0)
                ratios.append(add_df[-1] / read[-1])
    med = {k: statistics.median(v) for k, v in (("read_csv", read), ("add_frame", add_df), ("add_path", add_path))}
    rows_out = [
        {"what": "pd.read_csv(path) (baseline)", "median s": med["read_csv"], "MB/s": mb / med["read_csv"],
         "x read_csv": 1.0},
        {"what": "hub.add(name, df)", "median s": med["add_frame"], "MB/s": mb / med["add_frame"],
         "x read_csv": med["add_frame"] / med["read_csv"]},
        {"what": "hub.add(name, path) (read included)", "median s": med["add_path"], "MB/s": mb / med["add_path"],
         "x read_csv": med["add_path"] / med["read_csv"]},
    ]
    print(f"\n## Ingest: {n:,} rows x {df0.shape[1]} columns, {mb:.1f} MB of CSV (median of {repeats} rounds)\n")
    print(C.markdown_table(rows_out, ["what", "median s", "MB/s", "x read_csv"]))
    cpu = {"read_csv": statistics.median(cpu_read), "add_frame": statistics.median(cpu_add)}
    print(f"\nper-round add(frame)/read_csv: {', '.join(f'{x:.2f}' for x in ratios)}; "
          f"load average {C.load_average()}")
    print(f"process CPU time (medians): read_csv {cpu['read_csv']:.3f} s, add(frame) {cpu['add_frame']:.3f} s: "
          f"{cpu['add_frame'] / cpu['read_csv']:.2f}x")
    payload = {"benchmark": "ingest", "quick": quick, **C.environment("cpu"),
               "params": {"rows": n, "columns": int(df0.shape[1]), "csv_mb": mb, "repeats": repeats, "seed": seed},
               "read_csv_s": read, "add_frame_s": add_df, "add_path_s": add_path, "median": med,
               "ratio_add_frame": med["add_frame"] / med["read_csv"],
               "ratio_add_path": med["add_path"] / med["read_csv"], "round_ratios": ratios,
               "cpu_read_csv_s": cpu_read, "cpu_add_frame_s": cpu_add,
               "cpu_ratio_add_frame": cpu["add_frame"] / cpu["read_csv"], "load_average": C.load_average(),
               "table": rows_out}
    out = C.write_result("ingest_quick" if quick else "ingest", payload, out=out_dir)
    print(f"wrote {out}")
    return payload


def main(argv=None) -> dict:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=None, help="rows of the table (default 200,000; --quick 20,000)")
    args = p.parse_args(argv)
    C.setup(args)
    np.random.seed(args.seed)
    return run(quick=args.quick, repeats=args.repeats, rows=args.rows, seed=args.seed, out_dir=args.out)


if __name__ == "__main__":
    main()
