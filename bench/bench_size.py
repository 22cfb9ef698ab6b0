"""Bytes per entry (issue 21, target 32 KB at 32 features x 10 partitions): the records this
fitsketch writes ("now": compressed arrays fitted to LMDB pages, engine/parts.py ``fit_pack``, and
one 4-byte band posting (the entry id) per (band key, entry), hub format 4, records appended where
their key is the database's last) against the same entries written the two earlier ways in the same
run: "format 3" (compressed arrays at zstd level 1, one 8-byte posting per (key, entry, feature),
records put in place) and "format 2" (plain arrays, 8-byte postings per feature).

Workloads: ``real`` -- entries of 5,000 rows x 32 normal columns rounded to 4 decimals, partition
size 500, through ``hub.add`` (the coverage counts grow with distinct rows); ``merged`` -- the
``scale`` suite's merged sketches (32 features x 10 partitions of 500 rows, merged from a pool of
partition sketches) through ``hub.add_sketches``. Reported per workload and format: the LMDB file
and the pages in use per entry, each database's pages and the ``extra`` records by kind
(bench/scale.py ``db_bytes``), the CPU time of the add, and of reading and decoding every entry's
histograms, signatures and coverage record (a query's per-candidate reads). Checked in the same
run: every record decodes to the same values in both hubs, and every method's top 10 are equal.

``python -m bench size [--quick]`` (quick: 8 real, 40 merged entries; full: 100 and 300)."""
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


def _put_no_append(txn, db, key, obj):    # the format-3 writer: compressed, each record put in place (no MDB_APPEND)
    from fitsketch.parts import fit_pack

    txn.put_raw(db, key, fit_pack(obj))


def _postings_per_feature(eid, prepared):  # the writer before one posting per (key, entry)
    bands, nonempty = prepared
    sel = bands[nonempty]
    return (sel.reshape(-1).view(np.uint64),
            np.repeat((np.uint64(eid) << np.uint64(32)) | nonempty.astype(np.uint64), sel.shape[1]))


WRITERS = ("format 2", "format 3", "main", "now")


def _build(path: Path, workload: str, n: int, writer: str, seed: int) -> float:
    """Build the hub with ``writer`` (``WRITERS``); returns the add's CPU seconds."""
    import fitsketch
    from fitsketch import parts

    from .scale import build_sketches

    saved = parts._put, parts.FIT_LEVEL, parts.Bands._postings
    if writer != "now":            # "main": format 3 as the branch point writes it (8-byte postings, no append)
        parts._put = _put_no_append
    if writer in ("format 2", "format 3"):
        parts.Bands._postings = staticmethod(_postings_per_feature)
        parts.FIT_LEVEL = 0
    if writer == "format 2":
        parts._put = _plain_put
    try:
        with fitsketch.open(path) as hub:
            if writer != "now":   # 8-byte (entry id, feature) postings, as format <= 3 wrote them
                hub.store.transact(lambda t: t.put("meta", b"posting_bytes", 8))
            if workload == "real":
                items = list(_real(n, seed))
                t = H.timeit(lambda: [hub.add(name, X, partition_size=500) for name, X in items],
                             repeats=1, warmup=0, cpu=True)
            else:
                sketches, _ = build_sketches(8, 12, n, seed=seed)
                t = H.timeit(lambda: hub.add_sketches([(f"m{i}", s) for i, s in enumerate(sketches)]),
                             repeats=1, warmup=0, cpu=True)
    finally:
        parts._put, parts.FIT_LEVEL = saved[:2]
        parts.Bands._postings = staticmethod(saved[2])
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


def _lsh_hits(path: Path, sigs: list) -> list:
    """For each query signature matrix, the entry ids the band postings give (the LSH candidate
    stage's lookup, engine/candidates.py), sorted."""
    import fitsketch
    from fitsketch.minhash import feature_band_keys
    from fitsketch.storage import u64

    with fitsketch.open(path, readonly=True) as hub, hub.store.read() as txn:
        out = []
        for sg in sigs:
            bands = feature_band_keys(sg, hub.config.lsh_k, hub.config.lsh_l)
            hits = {int.from_bytes(v[:4], "big") for dups in txn.get_dups_many(
                "bands", [u64(int(b) & 0xFFFFFFFFFFFFFFFF) for b in bands.reshape(-1)]) for v in dups}
            out.append(sorted(hits))
        return out


def _answers_lsh(path: Path, queries) -> dict:
    """``_answers`` with the candidate stage forced through the band postings (planner: LSH above 0
    stored features), as on a hub of over ``SCAN_FEATURE_LIMIT`` features."""
    from fitsketch import planner

    saved = planner.SCAN_FEATURE_LIMIT
    planner.SCAN_FEATURE_LIMIT = 0
    try:
        return _answers(path, queries)
    finally:
        planner.SCAN_FEATURE_LIMIT = saved


def _kib(x: float) -> str:
    return f"{x / 1024:.1f}"


def run(quick: bool = False, out_dir: Path | None = None, seed: int = 0, out=print) -> dict:
    import fitsketch

    from .scale import db_bytes

    ctx = H.context("cpu", quick)
    sizes = {"real": 8 if quick else 100, "merged": 40 if quick else 300}
    rows, tables = [], {}
    rng = np.random.default_rng(seed + 1)
    tmp = Path(tempfile.mkdtemp(prefix="bench_size_"))
    try:
        for workload, n in sizes.items():
            got = {}
            _build(tmp / f"{workload}-warm", workload, 2, "now", seed)   # imports and compiled kernels: untimed
            for fmt in WRITERS:
                path = tmp / f"{workload}-{fmt.replace(' ', '')}"
                add_cpu = _build(path, workload, n, fmt, seed)
                parts = db_bytes(path)
                used = sum(v for k, v in parts.items() if not k.startswith("extra/") and not k.startswith("extra ("))
                got[fmt] = {"path": path, "file": (path / "hub.lmdb").stat().st_size / n, "used": used / n,
                            "parts": {k: v / n for k, v in parts.items() if v}, "add_cpu_ms": 1e3 * add_cpu / n,
                            "read_cpu_us": 1e6 * _read_cpu(path)}
            a, f3, b, mn = got["now"], got["format 3"], got["format 2"], got["main"]
            rs = {fmt: _records(g["path"]) for fmt, g in got.items()}
            lossless = all(all(len(rs[fmt][db]) == len(rs["now"][db]) and
                               all(_same(x, y) for x, y in zip(rs[fmt][db], rs["now"][db])) for db in rs["now"])
                           for fmt in ("format 2", "format 3", "main"))
            qs = [np.round(rng.normal(size=(600, 32)), 4)] if workload == "real" else \
                [fitsketch.sketch_data(rng.normal(size=(1000, 32)), partition_size=500,
                                       feature_names=[f"f{j}" for j in range(32)])]
            ans = {fmt: _answers(g["path"], qs) for fmt, g in got.items()}
            same_answers = ans["now"] == ans["main"] == ans["format 3"] == ans["format 2"]
            # the band postings: every stored entry's signatures (and the query's) as LSH lookups
            sigs = [r["sig"] for r in rs["now"]["signatures"]]
            hits = {fmt: _lsh_hits(got[fmt]["path"], sigs) for fmt in ("now", "main", "format 3")}
            same_hits = hits["now"] == hits["main"] == hits["format 3"]
            same_lsh = _answers_lsh(a["path"], qs) == _answers_lsh(mn["path"], qs) == _answers_lsh(f3["path"], qs)
            n_hits = float(np.mean([len(h) for h in hits["now"]]))
            out(f"size/{workload}: {n} entries; bytes per entry (LMDB pages in use), now / main / format 3 / format 2 "
                f"(same run): {_kib(a['used'])} / {_kib(mn['used'])} / {_kib(f3['used'])} / {_kib(b['used'])} KiB; file "
                f"{_kib(a['file'])} / {_kib(mn['file'])} / {_kib(f3['file'])} / {_kib(b['file'])} KiB; add CPU "
                f"{a['add_cpu_ms']:.1f} / {mn['add_cpu_ms']:.1f} / {f3['add_cpu_ms']:.1f} / {b['add_cpu_ms']:.1f} ms an "
                f"entry; read + decode CPU {a['read_cpu_us']:.0f} / {mn['read_cpu_us']:.0f} / {f3['read_cpu_us']:.0f} / "
                f"{b['read_cpu_us']:.0f} us an entry; records equal: {lossless}; top-10 of {len(METHODS)} methods "
                f"equal: {same_answers}; LSH lookups of {len(sigs)} entries' signatures find the same entries (now vs "
                f"main vs format 3): {same_hits} (mean {n_hits:.1f} entries); top-10 through LSH equal: {same_lsh}")
            out("  KiB per entry by part (now / main / format 3 / format 2): " + ", ".join(
                f"{k} {_kib(a['parts'].get(k, 0))} / {_kib(mn['parts'].get(k, 0))} / {_kib(f3['parts'].get(k, 0))} / "
                f"{_kib(v)}"
                for k, v in b["parts"].items() if v >= 52))
            w = f"{workload} ({n} entries)"
            rows += [H.row(ctx, "size", w, "now", "bytes_per_entry_in_use_vs_main", a["used"], unit="B",
                           baseline="main: format 3 as the branch point writes it (8-byte postings, records put in "
                                    "place), same entries", baseline_value=mn["used"]),
                     H.row(ctx, "size", w, "now", "file_bytes_per_entry_vs_main", a["file"], unit="B",
                           baseline="main, same entries", baseline_value=mn["file"]),
                     H.row(ctx, "size", w, "now", "add_cpu_per_entry_vs_main", a["add_cpu_ms"], unit="ms",
                           baseline="main add CPU, same entries", baseline_value=mn["add_cpu_ms"]),
                     H.row(ctx, "size", w, "now", "bytes_per_entry_in_use", a["used"], unit="B",
                           baseline="format 3 as written before (level 1, postings per feature), same entries",
                           baseline_value=f3["used"]),
                     H.row(ctx, "size", w, "format 3", "bytes_per_entry_in_use", f3["used"], unit="B",
                           baseline="format 2 (plain arrays), same entries", baseline_value=b["used"]),
                     H.row(ctx, "size", w, "now", "file_bytes_per_entry", a["file"], unit="B",
                           baseline="format 3 as written before", baseline_value=f3["file"]),
                     H.row(ctx, "size", w, "now", "bytes_per_entry_vs_target", a["used"], unit="B",
                           baseline="issue 21 target (32 KB)", baseline_value=32_000),
                     H.row(ctx, "size", w, "now", "add_cpu_per_entry", a["add_cpu_ms"], unit="ms",
                           baseline="format 3 add CPU as written before", baseline_value=f3["add_cpu_ms"]),
                     H.row(ctx, "size", w, "now", "read_decode_cpu_per_entry", a["read_cpu_us"], unit="us",
                           baseline="format 3 read + decode CPU as written before", baseline_value=f3["read_cpu_us"]),
                     H.row(ctx, "size", w, "now", "records_equal", float(lossless), baseline="1 = lossless",
                           baseline_value=1.0),
                     H.row(ctx, "size", w, "now", "top10_equal", float(same_answers),
                           baseline="1 = every method's top 10 equal", baseline_value=1.0),
                     H.row(ctx, "size", w, "now", "lsh_hits_equal", float(same_hits and same_lsh),
                           baseline="1 = the band postings find the same entries and LSH top 10 are equal",
                           baseline_value=1.0)]
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
