"""Bulk add (issue 21's ">= 1,000 entries/s through ``add_sketches``"): ``python -m bench bulk [--quick]``.

Entries: bench/scale.py's 32 numeric features x 10 partitions of 500 rows (merged from partition
sketches of 20 data families, ~5,400 histogram cells and 1,024 band postings an entry), ``--entries``
of them (default 2,000; ``--quick`` 200), ``batch`` (1,000) a transaction.

Measured, interleaved round by round so all see the same load (``harness.interleaved``, the arms' order
rotated each round):

* ``add_sketches`` of all entries into a new hub (wall and CPU time, the forked workers' CPU
  included: ``harness.cpu_time``), as shipped: chunks prepared in forked worker processes
  (engine/prepare_procs.py: one a usable CPU here), the next batch while one is written, zstd
  contexts kept (storage/codec.py with ``zstandard``);
* the same add in threads (``processes=0``: ``parts.PREPARE_THREADS`` threads; the eleventh session's add);
* the same add before the eleventh session's change: one thread, pyarrow's zstd codec
  (``PREPARE_THREADS = 1``, ``codec.USE_ZSTANDARD = False``; the same bytes), and one thread with
  the kept contexts;
* the baseline: LMDB alone writing **the same bytes** -- every record the hub stored, read back
  raw, written into a new file in as many transactions (bench_shortlist's ``_raw_write``);
* the same add with ``parts.FIT_LEVEL = 0`` (no page-fit retry), and the LMDB pages each hub uses:
  what the page fit (issue 21's 32 KB) costs in add rate;
* the same add with ``parts.FIT_SHARE = 0.1`` (the eleventh session's fit: records retried within
  10% of saving a page, against 8% since the twelfth): what the narrower retry saves, and its pages;
* hub format 6: the adds above run with band compaction off (their postings stay in the dupsort
  delta, as every add writes them); the same add as shipped (``add_sketches`` compacting past
  ``band_blocks``' threshold) and ``hub.compact(file=False)`` after an add are reported apart;
* for reference, ``add_sketch`` one entry a transaction, on a tenth of the entries.

One add before the rounds is not timed: it fills the process's memos (name hashes, the random
projection rows of the batch's histogram coordinates), as in a long bulk load after its first batch.
Then one more add (one thread: the process's CPU clock would charge a stage with the other
threads' time) with each stage's engine function wrapped (CPU time; a stage includes its indented
sub-stages): where an entry's time goes. The machine is shared: report the CPU rates and
the ratio to LMDB in the same run, not wall times alone.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from . import harness as H
from .bench_profile import _Timer
from .bench_shortlist import _raw_items, _raw_write
from .scale import build_sketches

# (stage key, label, depth): what _instrument wraps
STAGES = [
    ("validate", "validation (Hub._check_sketch: every array's shape, dtype, range, order)", 0),
    ("prepare", "prepare (every part's records, parts.PREPARE_CHUNK entries at a time; one thread here)", 0),
    ("aggregate", "the batch's histograms in one COO (profiles._aggregate)", 1),
    ("pack_hists", "packed histograms (partitions.pack_hists)", 1),
    ("records", "profiles and JS-LSH keys (profiles.records)", 1),
    ("gaussian", "random projection rows (gaussian_projection)", 2),
    ("sparse_keys", "JS-LSH sparse projections (profiles._sparse_keys)", 2),
    ("band_keys", "LSH band keys", 1),
    ("pack", "records packed (codec.pack through parts.fit_pack; the entry record, in the transaction, too)", 1),
    ("compress", "zstd of the arrays (codec._compress)", 2),
    ("refit", "records packed again at parts.FIT_FIRST / FIT_LEVEL (fit_pack's retry; zstd included)", 2),
    ("transaction", "the write transaction (Hub._transact)", 0),
    ("write", "records put (Core, Extra, Profile; only the entry record packed here)", 1),
    ("bands", "band postings: one sorted putmulti (Bands.write_many)", 1),
]


def _instrument(timer: _Timer) -> None:
    import fitsketch.hub
    import fitsketch.parts as P
    import fitsketch.profiles as PR
    import fitsketch.storage.codec as C

    parts = {p.name: type(p) for p in P.PARTS}   # the classes: restore() leaves no attribute on the instances
    timer.wrap(fitsketch.hub.Hub, "_check_sketch", "validate")
    timer.wrap(P, "_aggregate", "aggregate")
    timer.wrap(P, "pack_hists", "pack_hists")
    timer.wrap(PR, "records", "records")
    timer.wrap(PR, "gaussian_projection", "gaussian")
    timer.wrap(PR, "_sparse_keys", "sparse_keys")
    # no "screen" row: since hub format 5 the add computes no screen record (parts.Screen prepares nothing)
    timer.wrap(parts["bands"], "prepare_many", "band_keys")
    timer.wrap(P, "entries_writer", "prepare")      # prepares every part, returns the transaction's function
    timer.wrap(fitsketch.hub.Hub, "_transact", "transaction")
    for name in ("core", "extra", "profile"):
        timer.wrap(parts[name], "write_many", "write")
    timer.wrap(P, "pack", "pack")           # what parts._put calls (T.pack: the Txn.put records)
    timer.wrap(C, "_compress", "compress")
    packs = P.pack                          # the packs at a level: fit_pack's retry (parts.FIT_LEVEL)

    def pack(obj, *args, **kw):
        if kw.get("level") is None:
            return packs(obj, *args, **kw)
        t0 = timer.clock()
        try:
            return packs(obj, *args, **kw)
        finally:
            timer.total["refit"] = timer.total.get("refit", 0.0) + timer.clock() - t0

    P.pack = pack
    timer._undo.append((P, "pack", packs))
    timer.wrap(parts["bands"], "write_many", "bands")


def _split(timer: _Timer, n: int, total_s: float) -> list[dict]:
    rows = []
    for key, label, depth in STAGES:
        s = timer.total.get(key, 0.0)
        rows.append({"stage": "&nbsp;&nbsp;" * depth + label, "ms_per_entry": round(s * 1e3 / n, 3),
                     "share": f"{100 * s / total_s:.0f}%"})
    t = timer.total
    rest = t.get("transaction", 0.0) - t.get("write", 0.0) - t.get("bands", 0.0)
    rows.insert(len(STAGES), {"stage": "&nbsp;&nbsp;commit, name checks, counters (rest of the transaction)",
                                  "ms_per_entry": round(rest * 1e3 / n, 3), "share": f"{100 * rest / total_s:.0f}%"})
    other = total_s - t.get("validate", 0.0) - t.get("prepare", 0.0) - t.get("transaction", 0.0)
    rows.append({"stage": "other (items list, NewEntry, checks of names and metadata)",
                 "ms_per_entry": round(other * 1e3 / n, 3), "share": f"{100 * other / total_s:.0f}%"})
    rows.append({"stage": "**total** (CPU)", "ms_per_entry": round(total_s * 1e3 / n, 3), "share": "100%"})
    return rows


def _threads() -> int:
    import fitsketch.parts as P

    return P.PREPARE_THREADS


def _processes(n: int) -> int:
    """The worker processes ``add_sketches`` of ``n`` entries prepares in here (engine/prepare_procs.py)."""
    import fitsketch.prepare_procs as PP

    return PP.choose(None, n, "cpu")


def _kept() -> bool:
    import fitsketch.storage.codec as C

    return C._zstandard is not None and C.USE_ZSTANDARD


def _by_round(base: dict, new: dict, n: int, clock: str | None = None) -> str:
    """``new``'s rate over ``base``'s in each interleaved round (wall, or ``clock="cpu"``)."""
    b = base[clock]["times_s"] if clock else base["times_s"]
    x = new[clock]["times_s"] if clock else new["times_s"]
    return ", ".join(f"{bs / xs:.2f}x" for bs, xs in zip(b, x))


def _rotated(fns: dict, repeats: int) -> dict:
    """``harness.interleaved`` a round at a time, the arms' order rotated by one each round (the
    first arm of a round ran up to ~1.3x slower than the same work later in it: no arm keeps a place);
    the same stats, the samples in round order."""
    names = list(fns)
    rounds = []
    for r in range(max(1, repeats)):
        order = names[r % len(names):] + names[:r % len(names)]
        rounds.append(H.interleaved({k: fns[k] for k in order}, repeats=1, warmup=0))
    out = {}
    for k in names:
        c = H.stats([x[k]["cpu"]["times_s"][0] for x in rounds])
        out[k] = {**H.stats([x[k]["times_s"][0] for x in rounds]), "cpu": c, "median_cpu_s": c["p50_s"],
                  "result": rounds[-1][k]["result"]}
    return out


def _pages_used(path) -> int:
    """Bytes of the LMDB pages a hub file uses (its last page number + 1, times the page size)."""
    import lmdb

    env = lmdb.open(str(path), subdir=False, readonly=True, lock=False, max_dbs=16)
    try:
        return (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    finally:
        env.close()


def run(n: int = 2_000, batch: int = 1_000, repeats: int = 3, quick: bool = False, out=print,
        out_dir: Path | None = None) -> list[dict]:
    import fitsketch

    ctx = H.context("cpu", quick)
    env = H.environment("cpu")
    wall = H.stopwatch().__enter__()
    sk, _ = build_sketches(20, 8, n, seed=3)
    items = [(f"e{i:07d}", s) for i, s in enumerate(sk)]
    cells = float(np.mean([len(s.hist["feat"]) for s in sk]))
    work = Path(tempfile.mkdtemp(prefix="fitsketch-bench-bulk-"))
    made = iter(range(1 << 30))
    try:
        def add(auto: bool = False, processes: int | None = None):
            # hub format 6: the add as before (postings into the dupsort delta), compaction off;
            # ``auto``: as shipped, compacting past band_blocks' threshold inside add_sketches;
            # ``processes``: add_sketches' own (None: as shipped, engine/prepare_procs.py chooses)
            import fitsketch.band_blocks as BB

            saved = BB.COMPACT_MIN
            if not auto:
                BB.COMPACT_MIN = 1 << 62
            try:
                with fitsketch.open(work / f"a{next(made)}.hub") as hub:
                    assert hub.add_sketches(items, batch=batch, processes=processes) == n
                    return hub.store._file
            finally:
                BB.COMPACT_MIN = saved

        def add_auto():
            return add(auto=True)

        def compact():   # the explicit compaction of a hub added without it (the add untimed)
            import fitsketch.band_blocks as BB

            path = Path(add()).parent
            with fitsketch.open(path) as hub:
                return H.timeit(lambda: hub.compact(file=False), repeats=1, warmup=0, cpu=True), \
                    BB.COMPACT_CHUNK

        raw = _raw_items(add())   # the untimed first add (memos filled); its records are the baseline's bytes
        size = sum(len(k) + len(v) for kv in raw.values() for k, v in kv)
        n_txn = -(-n // batch)

        def raw_write():
            _raw_write(str(work / f"raw{next(made)}.lmdb"), raw, n_txn)

        def add_unfitted():   # the same add without fit_pack's retry: what 32 KB's page fit costs
            import fitsketch.parts as P

            saved, P.FIT_LEVEL = P.FIT_LEVEL, 0
            try:
                return add()
            finally:
                P.FIT_LEVEL = saved

        def add_share10():   # the eleventh session's fit: a record retried within 10% of saving a page
            import fitsketch.parts as P

            saved, P.FIT_SHARE = P.FIT_SHARE, 0.1
            try:
                return add()
            finally:
                P.FIT_SHARE = saved

        def add_threads():   # the eleventh session's add: no processes, parts.PREPARE_THREADS threads
            return add(processes=0)

        def add_one_thread(pyarrow: bool = False):   # parts.PREPARE_THREADS = 1 (and pyarrow's zstd: the previous add)
            import fitsketch.parts as P
            import fitsketch.storage.codec as C

            saved = P.PREPARE_THREADS, C.USE_ZSTANDARD
            P.PREPARE_THREADS, C.USE_ZSTANDARD = 1, C.USE_ZSTANDARD and not pyarrow
            try:
                return add(processes=0)
            finally:
                P.PREPARE_THREADS, C.USE_ZSTANDARD = saved

        def add_before():
            return add_one_thread(pyarrow=True)

        t = _rotated({"add_sketches": add, "threads": add_threads, "before": add_before, "one_thread": add_one_thread,
                      "lmdb": raw_write,
                      "unfitted": add_unfitted, "share10": add_share10, "auto": add_auto}, repeats)
        pages = {k: _pages_used(t[k]["result"]) / n for k in ("add_sketches", "before", "unfitted", "share10", "auto")}
        t_compact, _ = compact()
        m = max(10, n // 10)

        def one_at_a_time():
            with fitsketch.open(work / f"b{next(made)}.hub") as hub:
                for name, s in items[:m]:
                    hub.add_sketch(name, s)

        t_one = H.timeit(one_at_a_time, repeats=1, warmup=0, cpu=True)
        timer = _Timer(clock=H.clock(cpu=True))
        _instrument(timer)
        try:   # one thread: the process's CPU clock would charge a stage with the other threads' time
            t_split = H.timeit(add_one_thread, repeats=1, warmup=0, cpu=True)
        finally:
            timer.restore()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    a, r, u, v = t["add_sketches"], t["lmdb"], t["unfitted"], t["share10"]
    u_cpu, v_cpu = n / u["cpu"]["p50_s"], n / v["cpu"]["p50_s"]
    rate, rate_cpu = n / a["p50_s"], n / a["cpu"]["p50_s"]
    raw_rate, raw_cpu = n / r["p50_s"], n / r["cpu"]["p50_s"]
    one, one_cpu = m / t_one["p50_s"], m / t_one["cpu"]["p50_s"]
    load = H.load_average()
    wl = f"scale32: {n} entries of 32 features x 10 partitions, {cells:.0f} histogram cells, {size / n / 1024:.1f} KiB stored an entry; batch {batch}"
    split = _split(timer, n, t_split["cpu"]["p50_s"])
    bf, one1, th = t["before"], t["one_thread"], t["threads"]
    th_rate, th_cpu = n / th["p50_s"], n / th["cpu"]["p50_s"]
    bf_rate, bf_cpu = n / bf["p50_s"], n / bf["cpu"]["p50_s"]
    one1_rate, one1_cpu = n / one1["p50_s"], n / one1["cpu"]["p50_s"]
    out(f"bulk add, {wl} (load {load:.1f}, median of {repeats} interleaved rounds):")
    out(f"  add_sketches {rate:.0f} entries/s wall, {rate_cpu:.0f} per CPU second (this process's and its {_processes(n)} "
        f"worker processes'; zstd contexts kept: {_kept()})")
    out(f"  in threads (processes=0, parts.PREPARE_THREADS {_threads()}; the eleventh session's add): {th_rate:.0f} "
        f"entries/s wall, {th_cpu:.0f} per CPU second: add_sketches {rate / th_rate:.2f}x wall of it (by round: "
        f"{_by_round(th, a, n)})")
    out(f"  before (one thread, pyarrow's zstd): {bf_rate:.0f} entries/s wall, {bf_cpu:.0f} per CPU second: "
        f"add_sketches {rate / bf_rate:.2f}x wall, {rate_cpu / bf_cpu:.2f}x CPU of it (by round: wall "
        f"{_by_round(bf, a, n)}, CPU {_by_round(bf, a, n, 'cpu')}), {pages['before'] / 1024:.1f} KiB of LMDB pages an "
        f"entry against {pages['add_sketches'] / 1024:.1f}")
    out(f"  one thread, zstd contexts kept: {one1_rate:.0f} entries/s wall, {one1_cpu:.0f} per CPU second")
    out(f"  LMDB writing the same bytes {raw_rate:.0f} entries/s wall, {raw_cpu:.0f} per CPU second: add_sketches is "
        f"{rate / raw_rate:.2f}x wall, {rate_cpu / raw_cpu:.2f}x CPU of it")
    out(f"  without fit_pack's retry (parts.FIT_LEVEL = 0): {n / u['p50_s']:.0f} entries/s wall, {u_cpu:.0f} per CPU "
        f"second ({u_cpu / rate_cpu:.2f}x), {pages['unfitted'] / 1024:.1f} KiB of LMDB pages an entry against "
        f"{pages['add_sketches'] / 1024:.1f}")
    out(f"  retried within 10% of saving a page (parts.FIT_SHARE = 0.1, the eleventh session's fit): {n / v['p50_s']:.0f} "
        f"entries/s wall, {v_cpu:.0f} per CPU second (add_sketches {rate / (n / v['p50_s']):.2f}x wall, "
        f"{rate_cpu / v_cpu:.2f}x CPU of it; by round: wall {_by_round(v, a, n)}, CPU {_by_round(v, a, n, 'cpu')}), "
        f"{pages['share10'] / 1024:.2f} KiB of LMDB pages an entry against {pages['add_sketches'] / 1024:.2f}")
    w = t["auto"]
    auto_cpu = n / w["cpu"]["p50_s"]
    c_ms = 1e3 * t_compact["cpu"]["p50_s"] / n
    out(f"  (hub format 6) the rates above add with band compaction off; as shipped, add_sketches compacting the band "
        f"postings past band_blocks' threshold: {n / w['p50_s']:.0f} entries/s wall, {auto_cpu:.0f} per CPU second "
        f"({auto_cpu / rate_cpu:.2f}x), {pages['auto'] / 1024:.1f} KiB of LMDB pages an entry; hub.compact(file=False) "
        f"after the add: {c_ms:.2f} ms CPU an entry ({1e3 * t_compact['p50_s'] / n:.2f} wall)")
    out(f"  add_sketch, one entry a transaction ({m} entries): {one:.0f}/s wall, {one_cpu:.0f} per CPU second")
    out(f"\n## Where an add_sketches entry's CPU time goes ({n} entries)\n")
    out(H.markdown_table(split, ["stage", "ms_per_entry", "share"]))
    rows = [H.row(ctx, "bulk", wl, "add_sketches", "entries_per_cpu_s", rate_cpu, unit="entries/s",
                  baseline="LMDB raw write of the same bytes (entries per CPU s)", baseline_value=raw_cpu,
                  wall_rate=rate, baseline_wall_rate=raw_rate, wall_ratio=rate / raw_rate, load_avg_1m=load,
                  bytes_per_entry=size / n, target=1000.0),
            H.row(ctx, "bulk", wl, "add_sketches in threads (processes=0)", "entries_per_s", th_rate,
                  unit="entries/s", baseline="add_sketches (entries per s, wall)", baseline_value=rate,
                  cpu_rate=th_cpu, processes=_processes(n), threads=_threads()),
            H.row(ctx, "bulk", wl, "add_sketches before (one thread, pyarrow zstd)", "entries_per_cpu_s", bf_cpu,
                  unit="entries/s", baseline="add_sketches (entries per CPU s)", baseline_value=rate_cpu,
                  wall_rate=bf_rate, baseline_wall_rate=rate),
            H.row(ctx, "bulk", wl, "add_sketches one thread", "entries_per_cpu_s", one1_cpu, unit="entries/s",
                  baseline="add_sketches (entries per CPU s)", baseline_value=rate_cpu, wall_rate=one1_rate,
                  baseline_wall_rate=rate),
            H.row(ctx, "bulk", wl, "add_sketches, FIT_LEVEL 0", "entries_per_cpu_s", u_cpu, unit="entries/s",
                  baseline="add_sketches (entries per CPU s)", baseline_value=rate_cpu, wall_rate=n / u["p50_s"],
                  pages_bytes_per_entry=pages["unfitted"], baseline_pages_bytes_per_entry=pages["add_sketches"]),
            H.row(ctx, "bulk", wl, "add_sketches, FIT_SHARE 0.1", "entries_per_cpu_s", v_cpu, unit="entries/s",
                  baseline="add_sketches (entries per CPU s)", baseline_value=rate_cpu, wall_rate=n / v["p50_s"],
                  pages_bytes_per_entry=pages["share10"], baseline_pages_bytes_per_entry=pages["add_sketches"]),
            H.row(ctx, "bulk", wl, "add_sketches, band compaction as shipped", "entries_per_cpu_s", auto_cpu,
                  unit="entries/s", baseline="add_sketches without compaction (entries per CPU s)",
                  baseline_value=rate_cpu, wall_rate=n / w["p50_s"], pages_bytes_per_entry=pages["auto"],
                  baseline_pages_bytes_per_entry=pages["add_sketches"]),
            H.row(ctx, "bulk", wl, "hub.compact(file=False) after the add", "compact_cpu_ms_per_entry", c_ms, unit="ms",
                  baseline="add_sketches CPU ms an entry", baseline_value=1e3 / rate_cpu),
            H.row(ctx, "bulk", wl, "add_sketch (one a transaction)", "entries_per_cpu_s", one_cpu, unit="entries/s",
                  baseline="add_sketches (entries per CPU s)", baseline_value=rate_cpu, wall_rate=one),
            H.row(ctx, "bulk", "all", "all", "wall_time", wall.elapsed(), unit="s")]
    path = H.write_suite("bulk" + ("_quick" if quick else ""), rows, out=out_dir, quick=quick, env=env,
                         tables={"split": split, "add": {k: v for k, v in a.items() if k != "result"},
                                 "before": {k: x for k, x in bf.items() if k != "result"},
                                 "one_thread": {k: x for k, x in one1.items() if k != "result"},
                                 "threads": {k: x for k, x in th.items() if k != "result"},
                                 "unfitted": {k: v for k, v in u.items() if k != "result"},
                         "share10": {k: x for k, x in v.items() if k != "result"},
                                 "auto": {k: x for k, x in w.items() if k != "result"},
                                 "lmdb": {k: v for k, v in r.items() if k != "result"}})
    out(f"bulk: wrote {path} ({wall.elapsed():.0f} s)")
    return rows


def suite(opts: H.Options) -> list[dict]:
    H.setup(opts)
    n = opts.extra.get("entries") or (200 if opts.quick else 2_000)
    return run(n, repeats=opts.repeats or (1 if opts.quick else 3), quick=opts.quick, out_dir=opts.out_dir)


def main(argv=None) -> None:
    ap = H.parser(__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=None, help="entries added (default 2,000; --quick 200)")
    a = ap.parse_args(argv)
    suite(H.options(a, entries=a.entries))


if __name__ == "__main__":
    main()
