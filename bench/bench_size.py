"""Bytes per entry (issue 21, target 32 KB at 32 features x 10 partitions): hub format 3 (per-entry
records with compressed arrays, storage/codec.py ``EXT_PACKED``) against the same entries written
the format-2 way (plain arrays) in the same run.

Workloads: ``real`` -- entries of 5,000 rows x 32 normal columns rounded to 4 decimals, partition
size 500, through ``hub.add`` (the coverage counts grow with distinct rows); ``merged`` -- the
``scale`` suite's merged sketches (32 features x 10 partitions of 500 rows, merged from a pool of
partition sketches) through ``hub.add_sketches``. Reported per workload and format: the LMDB file
and the pages in use per entry, each database's pages and the ``extra`` records by kind
(bench/scale.py ``db_bytes``), the CPU time of the add, and of reading and decoding every entry's
histograms, signatures and coverage record (a query's per-candidate reads). Checked in the same
run: every record decodes to the same values in both hubs, and every method's top 10 are equal.

``python -m bench size [--quick]`` (quick: 12 real, 60 merged entries; full: 100 and 300)."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from . import harness as H

METHODS = ("exact-js", "js", "adaptivity", "l2", "coverage")


def _real(n: int, seed: int):
    rng = np.random.default_rng(seed)
    for i in range(n):
        yield f"r{i}", np.round(rng.normal(size=(5000, 32)), 4)


def _plain_put(txn, db, key, obj):       # the format-2 writer: arrays as they are
    txn.put(db, key, obj)


def _build(path: Path, workload: str, n: int, plain: bool, seed: int) -> float:
    """Build the hub; returns the add's CPU seconds."""
    import fitsketch
    from fitsketch import parts

    from .scale import build_sketches

    saved = parts._put
    if plain:
        parts._put = _plain_put
    try:
        with fitsketch.open(path) as hub:
            if workload == "real":
                items = list(_real(n, seed))
                t = H.timeit(lambda: [hub.add(name, X, partition_size=500) for name, X in items],
                             repeats=1, warmup=0, cpu=True)
            else:
                sketches, _ = build_sketches(8, 12, n, seed=seed)
                t = H.timeit(lambda: hub.add_sketches([(f"m{i}", s) for i, s in enumerate(sketches)]),
                             repeats=1, warmup=0, cpu=True)
    finally:
        parts._put = saved
    return t["cpu"]["p50_s"]


def _records(path: Path) -> dict:
    import fitsketch

    with fitsketch.open(path, readonly=True) as hub, hub.store.read() as txn:
        return {db: [txn.get(db, k) for k in txn.keys(db)] for db in ("entries", "signatures", "histograms", "extra")}


def _same(a, b) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype.str == b.dtype.str
                and a.shape == b.shape and a.tobytes() == b.tobytes())
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a if k != "created")
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b or (a != a and b != b)


def _read_cpu(path: Path) -> float:
    """CPU seconds per entry to read and decode its histograms, signatures and coverage record."""
    import fitsketch
    from fitsketch.partitions import unpack_hist

    with fitsketch.open(path, readonly=True) as hub, hub.store.read() as txn:
        keys = list(txn.keys("entries"))

        def read():
            for k in keys:
                unpack_hist(txn.get("histograms", k))
                txn.get("signatures", k)
                txn.get("extra", k)

        return H.timeit(read, repeats=3, warmup=1, cpu=True)["cpu"]["p50_s"] / max(len(keys), 1)


def _answers(path: Path, queries) -> dict:
    import fitsketch

    with fitsketch.open(path, readonly=True) as hub:
        return {m: [[(r.name, r.score) for r in hub.search(q, k=10, method=m)] for q in queries] for m in METHODS}


def run(quick: bool = False, out_dir: Path | None = None, seed: int = 0, out=print) -> dict:
    import fitsketch

    from .scale import db_bytes

    ctx = H.context("cpu", quick)
    sizes = {"real": 12 if quick else 100, "merged": 60 if quick else 300}
    rows, tables = [], {}
    rng = np.random.default_rng(seed + 1)
    tmp = Path(tempfile.mkdtemp(prefix="bench_size_"))
    try:
        for workload, n in sizes.items():
            got = {}
            _build(tmp / f"{workload}-warm", workload, 2, False, seed)   # imports and compiled kernels: untimed
            for fmt, plain in (("format 2", True), ("format 3", False)):
                path = tmp / f"{workload}-{fmt[-1]}"
                add_cpu = _build(path, workload, n, plain, seed)
                parts = db_bytes(path)
                used = sum(v for k, v in parts.items() if not k.startswith("extra/") and not k.startswith("extra ("))
                got[fmt] = {"path": path, "file": (path / "hub.lmdb").stat().st_size / n, "used": used / n,
                            "parts": {k: v / n for k, v in parts.items() if v}, "add_cpu_ms": 1e3 * add_cpu / n,
                            "read_cpu_us": 1e6 * _read_cpu(path)}
            a, b = got["format 3"], got["format 2"]
            ra, rb = _records(a["path"]), _records(b["path"])
            lossless = all(_same(x, y) for db in ra for x, y in zip(ra[db], rb[db])) and \
                all(len(ra[db]) == len(rb[db]) for db in ra)
            qs = [np.round(rng.normal(size=(600, 32)), 4)] if workload == "real" else \
                [fitsketch.sketch_data(rng.normal(size=(1000, 32)), partition_size=500,
                                       feature_names=[f"f{j}" for j in range(32)])]
            same_answers = _answers(a["path"], qs) == _answers(b["path"], qs)
            out(f"size/{workload}: {n} entries; bytes per entry, format 3 vs format 2 (same run): "
                f"file {a['file'] / 1024:.1f} vs {b['file'] / 1024:.1f} KiB, pages in use {a['used'] / 1024:.1f} vs "
                f"{b['used'] / 1024:.1f} KiB ({b['used'] / a['used']:.2f}x smaller); add CPU {a['add_cpu_ms']:.1f} vs "
                f"{b['add_cpu_ms']:.1f} ms an entry; read + decode CPU {a['read_cpu_us']:.0f} vs {b['read_cpu_us']:.0f} "
                f"us an entry; records equal: {lossless}; top-10 of {len(METHODS)} methods equal: {same_answers}")
            out("  KiB per entry by part (format 3 / format 2): " + ", ".join(
                f"{k} {a['parts'].get(k, 0) / 1024:.1f} / {v / 1024:.1f}" for k, v in b["parts"].items() if v >= 52))
            w = f"{workload} ({n} entries)"
            rows += [H.row(ctx, "size", w, "format 3", "bytes_per_entry_in_use", a["used"], unit="B",
                           baseline="format 2 (plain arrays), same entries", baseline_value=b["used"]),
                     H.row(ctx, "size", w, "format 3", "file_bytes_per_entry", a["file"], unit="B",
                           baseline="format 2 (plain arrays), same entries", baseline_value=b["file"]),
                     H.row(ctx, "size", w, "format 3", "bytes_per_entry_vs_target", a["used"], unit="B",
                           baseline="issue 21 target (32 KB)", baseline_value=32_000),
                     H.row(ctx, "size", w, "format 3", "add_cpu_per_entry", a["add_cpu_ms"], unit="ms",
                           baseline="format 2 add CPU", baseline_value=b["add_cpu_ms"]),
                     H.row(ctx, "size", w, "format 3", "read_decode_cpu_per_entry", a["read_cpu_us"], unit="us",
                           baseline="format 2 read + decode CPU", baseline_value=b["read_cpu_us"]),
                     H.row(ctx, "size", w, "format 3", "records_equal", float(lossless), baseline="1 = lossless",
                           baseline_value=1.0),
                     H.row(ctx, "size", w, "format 3", "top10_equal", float(same_answers),
                           baseline="1 = every method's top 10 equal", baseline_value=1.0)]
            tables[workload] = {fmt: {k: v for k, v in g.items() if k != "path"} for fmt, g in got.items()}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    H.write_suite("size", rows, out=out_dir, quick=quick, tables=tables)
    return {"rows": rows, "tables": tables}


def suite(opts: H.Options) -> dict:
    H.setup(opts)
    return run(quick=opts.quick, out_dir=opts.out_dir, seed=opts.seed)


def main(argv=None) -> dict:
    return suite(H.options(H.parser(__doc__.splitlines()[0]).parse_args(argv)))


if __name__ == "__main__":
    main()
