"""Bytes per entry (issue 21, target 32 KB at 32 features x 10 partitions): the records this
fitsketch writes ("now", hub format 5: signatures as a per-permutation dictionary where that packs
smaller, engine/signature_records.py; no stored screen record, derived from the histograms,
engine/screen.py; profile and profile-keys records in their own databases keyed by the entry id,
so appended) against the same entries written as main writes them in the same run ("main", hub
format 4: compressed arrays fitted to LMDB pages, 4-byte band postings, records appended where their
key is the database's last, plain signature records, a screen record per entry, profiles in
database ``extra``).

Workloads: ``real`` -- entries of 5,000 rows x 32 normal columns rounded to 4 decimals, partition
size 500, through ``hub.add`` (the coverage counts grow with distinct rows); ``merged`` -- the
``scale`` suite's merged sketches (32 features x 10 partitions of 500 rows, merged from a pool of
partition sketches) through ``hub.add_sketches``. Reported per workload and writer: the LMDB file
and the pages in use per entry, each database's pages and the ``extra`` records by kind
(bench/scale.py ``db_bytes``), the CPU time of the add, of reading and decoding every entry's
histograms, signatures, coverage and profile-keys records (a query's per-candidate reads), and of
loading the screen index from LMDB (its file removed: what a stale or missing index file costs).
Checked in the same run: every record decodes to the same values in both hubs (signature matrices;
the screen index's arrays, read or computed; profiles and profile keys by entry), the band lookups
find the same entries, and every method's top 10 are equal, also with the candidate stage forced
through the band postings.

Since hub format 6 three writers are built in one run: "now" (format 6: the band postings
compacted into blocks, engine/band_blocks.py, by ``hub.compact(file=False)`` after the adds --
its CPU reported apart from the add's), "format5" (this fitsketch with compaction off and format
5 written: every posting in the dupsort ``bands`` database, as main's format 5 stores them; the
adds of "now" run with auto-compaction off, so the add CPU is the add's alone) and
"main" (format 4 as above). Records, band lookups (through ``band_blocks.lookup``: the delta and
the blocks) and top 10 are compared between all three.

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


class _MainScreen:
    """main's screen part (hub format 4): a screen record per entry in database ``extra``."""
    name = "screen"

    def prepare(self, new, config, device):
        from fitsketch import screen

        sk = new.sketch
        return screen.record(sk.hist, sk.names, sk.sums, sk.counts, config.seed)

    def prepare_many(self, news, config, device, shared):
        return [self.prepare(n, config, device) for n in news]

    def write(self, txn, eid, new, prepared):
        from fitsketch import parts, screen

        parts._put(txn, "extra", screen.key(eid), prepared)

    def write_many(self, txn, eids, news, prepared):
        return [self.write(txn, e, n, p) for e, n, p in zip(eids, news, prepared)]

    def delete(self, txn, eid, rec, config):
        from fitsketch import screen

        txn.delete("extra", screen.key(eid))


def _main_profile():
    """main's profile part (hub format 4): both records in database ``extra``."""
    from fitsketch import parts, profiles

    class MainProfile(parts.Profile):
        def write(self, txn, eid, new, prepared):
            prof, prof_keys = prepared
            parts._put(txn, "extra", profiles.key(eid), prof)
            parts._put(txn, "extra", profiles.keys_key(eid), prof_keys)

    return MainProfile()


WRITERS = ("main", "format5", "now")


def _build(path: Path, workload: str, n: int, writer: str, seed: int) -> tuple[float, float]:
    """Build the hub with ``writer`` (``WRITERS``); returns the CPU seconds of the add and of the
    band compaction after it ("now" only; 0 otherwise)."""
    import fitsketch
    import fitsketch.storage.env as env_mod
    from fitsketch import band_blocks, parts, signature_records

    from .scale import build_sketches

    saved = parts.PARTS, parts._sig_record, env_mod.FORMAT_VERSION, band_blocks.COMPACT_MIN
    compact_cpu = 0.0
    band_blocks.COMPACT_MIN = 1 << 62   # no compaction during the add ("now": after it, timed apart)
    if writer != "now":                 # every posting stays in the dupsort database
        env_mod.FORMAT_VERSION = 5
    if writer == "main":           # format 4 as main writes it
        old = {"screen": _MainScreen(), "profile": _main_profile()}
        parts.PARTS = tuple(old.get(p.name, p) for p in parts.PARTS)
        parts._sig_record = signature_records.plain
        env_mod.FORMAT_VERSION = 4
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
            if writer == "now":
                compact_cpu = H.timeit(lambda: hub.compact(file=False), repeats=1, warmup=0, cpu=True)["cpu"]["p50_s"]
    finally:
        parts.PARTS, parts._sig_record, env_mod.FORMAT_VERSION, band_blocks.COMPACT_MIN = saved
    return t["cpu"]["p50_s"], compact_cpu


def _records(path: Path) -> dict:
    """Every per-entry record as its values, wherever the writer put it: entries, signature matrices,
    histograms, the coverage records (``extra`` by entry id), profiles and profile keys by entry, and
    the screen index's arrays (read from stored records or computed, loaded from LMDB)."""
    import fitsketch
    from fitsketch import indexes, profiles, signature_records
    from fitsketch.storage import u64

    shutil.rmtree(path / "indexes", ignore_errors=True)
    with fitsketch.open(path, readonly=True) as hub:
        with hub.store.read() as txn:
            keys = list(txn.keys("entries"))
            eids = [int.from_bytes(k, "big") for k in keys]
            out = {db: [txn.get(db, k) for k in keys] for db in ("entries", "histograms")}
            out["signatures"] = [signature_records.decode(txn.get("signatures", k)) for k in keys]
            out["coverage"] = [txn.get("extra", k) for k in keys]
            out["profiles"] = [txn.get("profiles", u64(e)) or txn.get("extra", profiles.key(e)) for e in eids]
            out["profile_keys"] = [profiles.stored_keys(txn, e) for e in eids]
        st = indexes._screen_state(hub._synced_screen())
    out["screen"] = [{k: v for k, v in st.items() if k != "__layout__"}]
    shutil.rmtree(path / "indexes", ignore_errors=True)
    return out


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
    """CPU seconds per entry to read and decode its histograms, signatures, coverage and
    profile-keys records (what a query reads of a candidate)."""
    import fitsketch
    from fitsketch import profiles, signature_records
    from fitsketch.partitions import unpack_hist

    with fitsketch.open(path, readonly=True) as hub, hub.store.read() as txn:
        keys = list(txn.keys("entries"))

        def read():
            for k in keys:
                unpack_hist(txn.get("histograms", k))
                signature_records.decode(txn.get("signatures", k))
                txn.get("extra", k)
                profiles.stored_keys(txn, int.from_bytes(k, "big"))

        return H.timeit(read, repeats=3, warmup=1, cpu=True)["cpu"]["p50_s"] / max(len(keys), 1)


def _screen_load_cpu(path: Path) -> float:
    """CPU seconds per entry to load the screen index from LMDB (its file removed, the in-memory
    index dropped; median of 3)."""
    import fitsketch

    with fitsketch.open(path, readonly=True) as hub:
        n = max(len(hub), 1)

        def load():
            shutil.rmtree(path / "indexes", ignore_errors=True)
            hub._indexes._screen = None
            hub._synced_screen()

        t = H.timeit(load, repeats=3, warmup=0, cpu=True)
    shutil.rmtree(path / "indexes", ignore_errors=True)
    return t["cpu"]["p50_s"] / n


def _answers(path: Path, queries) -> dict:
    import fitsketch

    with fitsketch.open(path, readonly=True) as hub:
        return {m: [[(r.name, r.score) for r in hub.search(q, k=10, method=m)] for q in queries] for m in METHODS}


def _lsh_hits(path: Path, sigs: list) -> list:
    """For each query signature matrix, the entry ids the band postings give (the LSH candidate
    stage's lookup, engine/candidates.py), sorted."""
    import fitsketch
    from fitsketch import band_blocks
    from fitsketch.minhash import feature_band_keys

    with fitsketch.open(path, readonly=True) as hub, hub.store.read() as txn:
        return [band_blocks.lookup(txn, feature_band_keys(sg, hub.config.lsh_k, hub.config.lsh_l)).tolist()
                for sg in sigs]


def _lsh_cpu(path: Path, sigs: list) -> float:
    """CPU seconds of the band lookups of every stored entry's signatures (median of 3)."""
    import fitsketch
    from fitsketch import band_blocks
    from fitsketch.minhash import feature_band_keys

    with fitsketch.open(path, readonly=True) as hub, hub.store.read() as txn:
        keys = [feature_band_keys(sg, hub.config.lsh_k, hub.config.lsh_l) for sg in sigs]
        return H.timeit(lambda: [band_blocks.lookup(txn, k) for k in keys], repeats=3, warmup=1,
                        cpu=True)["cpu"]["p50_s"]


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


def _removals(got: dict, sigs: list, queries) -> dict:
    """Remove every 10th entry from the "now" and "format5" hubs (CPU a removal each; no compaction
    meanwhile), then the band lookups of every stored entry's signatures ``sigs`` and the top 10
    through LSH of ``queries`` in both, then ``hub.compact(file=False)`` on "now" (its sweep) and the
    same lookups again."""
    import fitsketch
    import fitsketch.band_blocks as bb

    with fitsketch.open(got["now"]["path"], readonly=True) as hub:
        gone = sorted(hub.names())[::10]
    cpu_ms = {}
    for fmt in ("now", "format5"):
        saved, bb.COMPACT_MIN = bb.COMPACT_MIN, 1 << 62
        try:
            with fitsketch.open(got[fmt]["path"]) as hub:
                t = H.timeit(lambda: [hub.remove(nm) for nm in gone], repeats=1, warmup=0, cpu=True)
        finally:
            bb.COMPACT_MIN = saved
        cpu_ms[fmt] = 1e3 * t["cpu"]["p50_s"] / max(len(gone), 1)
    hits = {fmt: _lsh_hits(got[fmt]["path"], sigs) for fmt in ("now", "format5")}
    lsh = {fmt: _answers_lsh(got[fmt]["path"], queries) for fmt in ("now", "format5")}
    with fitsketch.open(got["now"]["path"]) as hub:
        sweep = H.timeit(lambda: hub.compact(file=False), repeats=1, warmup=0, cpu=True)["cpu"]["p50_s"]
    return {"n": len(gone), "cpu_ms": cpu_ms, "hits": hits, "lsh": lsh, "sweep_cpu_s": sweep,
            "swept_hits": _lsh_hits(got["now"]["path"], sigs), "swept_lsh": _answers_lsh(got["now"]["path"], queries)}


def _kib(x: float) -> str:
    return f"{x / 1024:.1f}"


def run(quick: bool = False, out_dir: Path | None = None, seed: int = 0, out=print, sizes: dict | None = None) -> dict:
    import fitsketch

    from .scale import db_bytes

    ctx = H.context("cpu", quick)
    sizes = sizes or {"real": 8 if quick else 100, "merged": 40 if quick else 300}
    rows, tables = [], {}
    rng = np.random.default_rng(seed + 1)
    tmp = Path(tempfile.mkdtemp(prefix="bench_size_"))
    try:
        for workload, n in sizes.items():
            got = {}
            _build(tmp / f"{workload}-warm", workload, 2, "now", seed)   # imports and compiled kernels: untimed
            for fmt in WRITERS:
                path = tmp / f"{workload}-{fmt.replace(' ', '')}"
                add_cpu, compact_cpu = _build(path, workload, n, fmt, seed)
                parts = db_bytes(path)
                used = sum(v for k, v in parts.items() if not k.startswith("extra/") and not k.startswith("extra ("))
                got[fmt] = {"path": path, "file": (path / "hub.lmdb").stat().st_size / n, "used": used / n,
                            "parts": {k: v / n for k, v in parts.items() if v}, "add_cpu_ms": 1e3 * add_cpu / n,
                            "compact_cpu_ms": 1e3 * compact_cpu / n,
                            "read_cpu_us": 1e6 * _read_cpu(path), "screen_load_us": 1e6 * _screen_load_cpu(path)}
            a, f5, mn = got["now"], got["format5"], got["main"]
            rs = {fmt: _records(g["path"]) for fmt, g in got.items()}
            lossless = all(len(rs[o][db]) == len(rs["now"][db]) and
                           all(_same(x, y) for x, y in zip(rs[o][db], rs["now"][db])) for db in rs["now"]
                           for o in ("main", "format5"))
            qs = [np.round(rng.normal(size=(600, 32)), 4)] if workload == "real" else \
                [fitsketch.sketch_data(rng.normal(size=(1000, 32)), partition_size=500,
                                       feature_names=[f"f{j}" for j in range(32)])]
            ans = {fmt: _answers(g["path"], qs) for fmt, g in got.items()}
            same_answers = ans["now"] == ans["main"] == ans["format5"]
            # the band postings: every stored entry's signatures (and the query's) as LSH lookups
            sigs = rs["now"]["signatures"]
            hits = {fmt: _lsh_hits(got[fmt]["path"], sigs) for fmt in WRITERS}
            same_hits = hits["now"] == hits["main"] == hits["format5"]
            lsh = {fmt: _answers_lsh(g["path"], qs) for fmt, g in got.items()}
            same_lsh = lsh["now"] == lsh["main"] == lsh["format5"]
            lsh_cpu = {fmt: _lsh_cpu(got[fmt]["path"], sigs) for fmt in ("now", "format5")}
            n_hits = float(np.mean([len(h) for h in hits["now"]]))
            out(f"size/{workload}: {n} entries; now = format 6, band postings compacted into blocks before measuring "
                f"(hub.compact(file=False), {a['compact_cpu_ms']:.2f} ms CPU an entry); bytes per entry (LMDB pages in "
                f"use), now / format 5 / main format 4 (same run): {a['used']:,.0f} / {f5['used']:,.0f} / "
                f"{mn['used']:,.0f} B ({_kib(a['used'])} / {_kib(f5['used'])} / {_kib(mn['used'])} KiB); file "
                f"{_kib(a['file'])} / {_kib(f5['file'])} / {_kib(mn['file'])} KiB; add CPU {a['add_cpu_ms']:.1f} / "
                f"{f5['add_cpu_ms']:.1f} / {mn['add_cpu_ms']:.1f} ms an entry; read + decode CPU "
                f"{a['read_cpu_us']:.0f} / {f5['read_cpu_us']:.0f} / {mn['read_cpu_us']:.0f} us an entry; screen "
                f"index loaded from LMDB {a['screen_load_us']:.0f} / {f5['screen_load_us']:.0f} / "
                f"{mn['screen_load_us']:.0f} us CPU an entry; records equal: {lossless}; top-10 of {len(METHODS)} "
                f"methods equal: {same_answers}; LSH lookups of {len(sigs)} entries' signatures find the same "
                f"entries: {same_hits} (mean {n_hits:.1f} entries), their CPU now / format 5 "
                f"{1e3 * lsh_cpu['now']:.1f} / {1e3 * lsh_cpu['format5']:.1f} ms; top-10 through LSH equal: {same_lsh}")
            names = list(dict.fromkeys(list(mn["parts"]) + list(f5["parts"]) + list(a["parts"])))
            out("  KiB per entry by part (now / format 5 / main): " + ", ".join(
                f"{k} {_kib(a['parts'].get(k, 0))} / {_kib(f5['parts'].get(k, 0))} / {_kib(mn['parts'].get(k, 0))}"
                for k in names if max(a["parts"].get(k, 0), f5["parts"].get(k, 0), mn["parts"].get(k, 0)) >= 52))
            w = f"{workload} ({n} entries)"
            rows += [H.row(ctx, "size", w, "now", "bytes_per_entry_in_use_vs_format5", a["used"], unit="B",
                           baseline="format 5: every band posting in the dupsort database, same entries",
                           baseline_value=f5["used"]),
                     H.row(ctx, "size", w, "now", "compact_cpu_per_entry", a["compact_cpu_ms"], unit="ms",
                           baseline="add CPU, same entries", baseline_value=a["add_cpu_ms"]),
                     H.row(ctx, "size", w, "now", "lsh_lookup_cpu_vs_format5", 1e3 * lsh_cpu["now"], unit="ms",
                           baseline="format 5: the same lookups in the dupsort database",
                           baseline_value=1e3 * lsh_cpu["format5"]),
                     H.row(ctx, "size", w, "now", "bytes_per_entry_in_use_vs_main", a["used"], unit="B",
                           baseline="main: format 4 as main writes it, same entries", baseline_value=mn["used"]),
                     H.row(ctx, "size", w, "now", "file_bytes_per_entry_vs_main", a["file"], unit="B",
                           baseline="main, same entries", baseline_value=mn["file"]),
                     H.row(ctx, "size", w, "now", "add_cpu_per_entry_vs_main", a["add_cpu_ms"], unit="ms",
                           baseline="main add CPU, same entries", baseline_value=mn["add_cpu_ms"]),
                     H.row(ctx, "size", w, "now", "bytes_per_entry_vs_target", a["used"], unit="B",
                           baseline="issue 21 target (32 KB)", baseline_value=32_000),
                     H.row(ctx, "size", w, "now", "read_decode_cpu_per_entry", a["read_cpu_us"], unit="us",
                           baseline="main read + decode CPU", baseline_value=mn["read_cpu_us"]),
                     H.row(ctx, "size", w, "now", "screen_load_cpu_per_entry", a["screen_load_us"], unit="us",
                           baseline="main: the screen index loaded from stored records", baseline_value=mn["screen_load_us"]),
                     H.row(ctx, "size", w, "now", "records_equal", float(lossless), baseline="1 = lossless",
                           baseline_value=1.0),
                     H.row(ctx, "size", w, "now", "top10_equal", float(same_answers),
                           baseline="1 = every method's top 10 equal", baseline_value=1.0),
                     H.row(ctx, "size", w, "now", "lsh_hits_equal", float(same_hits and same_lsh),
                           baseline="1 = the band postings find the same entries and LSH top 10 are equal",
                           baseline_value=1.0)]
            # removals: every 10th entry from "now" (its compacted postings left dead in the blocks) and from
            # "format5" (its dupsort postings deleted), then hub.compact's sweep of "now"
            rm = _removals(got, sigs, qs)
            same_rm = rm["hits"]["now"] == rm["hits"]["format5"] and rm["lsh"]["now"] == rm["lsh"]["format5"]
            same_swept = rm["swept_hits"] == rm["hits"]["format5"] and rm["swept_lsh"] == rm["lsh"]["format5"]
            out(f"  removal of {rm['n']} entries: {rm['cpu_ms']['now']:.1f} ms CPU an entry now, "
                f"{rm['cpu_ms']['format5']:.1f} format 5 (same run); then hub.compact(file=False) (sweep) "
                f"{rm['sweep_cpu_s']:.2f} s CPU; LSH lookups and top 10 through LSH equal to format 5's after the "
                f"removals: {same_rm}, after the sweep: {same_swept}")
            rows += [H.row(ctx, "size", w, "now", "remove_cpu_per_entry_vs_format5", rm["cpu_ms"]["now"], unit="ms",
                           baseline="format 5: the same removals (postings in the dupsort database)",
                           baseline_value=rm["cpu_ms"]["format5"]),
                     H.row(ctx, "size", w, "now", "sweep_cpu_after_removals", rm["sweep_cpu_s"], unit="s",
                           baseline="add CPU of all entries", baseline_value=a["add_cpu_ms"] * n / 1e3),
                     H.row(ctx, "size", w, "now", "removed_lookups_equal", float(same_rm and same_swept),
                           baseline="1 = LSH lookups and top 10 equal to format 5's after removals and after the sweep",
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
