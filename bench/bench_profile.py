"""Where an add and a query spend their time: ``python -m bench profile [--quick]``.

The add: a table like issue 21's (200,000 rows: 16 numeric columns, one 500-value categorical, one
6-word text column; ``--quick`` 20,000 rows) into a hub. The query: 2,000 rows of the same kind
against a hub of that entry and 20 smaller ones (``--quick`` 1,000 rows, 10 entries).

The baseline, ``pd.read_csv`` of the same table written as CSV, alternates with the adds (each
stage also as a multiple of it: the machine's load moves both alike). Each stage is timed by wrapping the engine function that does it (nothing in the engine changes;
wrapping costs microseconds per call); a stage's time includes its sub-stages (indented), "rest
of" a stage is what its sub-stages leave of it, and "other" what the listed stages leave of the
total. The query's top-level stages are the
search plan's own (``hub.explain``).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

import fitsketch

from . import harness as H


class _Timer:
    """Wraps functions (module or class attributes), summing wall time per stage key: a profiler
    of one run's stages; the runs themselves are timed by ``harness.timeit``."""

    def __init__(self, clock=None):
        self.clock = clock or H.clock()   # H.clock(cpu=True) with --cpu: steadier on a shared machine
        self.total = {}
        self.calls = {}
        self._undo = []

    def wrap(self, owner, attr: str, key: str) -> None:
        orig = getattr(owner, attr)

        def timed(*args, **kwargs):
            t0 = self.clock()
            try:
                return orig(*args, **kwargs)
            finally:
                self.total[key] = self.total.get(key, 0.0) + self.clock() - t0
                self.calls[key] = self.calls.get(key, 0) + 1

        setattr(owner, attr, timed)
        self._undo.append((owner, attr, orig))

    def reset(self) -> None:
        self.total.clear()
        self.calls.clear()

    def restore(self) -> None:
        for owner, attr, orig in reversed(self._undo):
            setattr(owner, attr, orig)
        self._undo.clear()


def table(n: int, seed: int) -> pd.DataFrame:
    """Issue 21's table: 16 numeric columns, a 500-value categorical, a 6-word text column."""
    rng = np.random.default_rng(seed)
    cols = {f"x{i}": np.round(rng.normal(i % 4, 1 + i % 3, n), 4) for i in range(16)}
    cols["cat"] = np.array([f"c{i}" for i in range(500)], dtype=object)[rng.integers(0, 500, n)]
    words = np.array([f"w{i}" for i in range(5000)], dtype=object)
    idx = rng.zipf(1.3, size=(n, 6)) % len(words)
    cols["text"] = [" ".join(r) for r in words[idx]]
    return pd.DataFrame(cols)


# (stage key, label, depth); keys are wrapped in _instrument
ADD_STAGES = [
    ("to_frame", "to_frame (read the input)", 0),
    ("build_sketch", "build_sketch", 0),
    ("quantize", "quantize columns (buckets, tokens, string hashing)", 1),
    ("row_matrix", "coverage row transform", 1),
    ("minhash", "MinHash signatures (minhash_csr)", 1),
    ("coverage", "coverage codes", 1),
    ("writer", "entry record (band keys, profile, packed histograms)", 0),
    ("band_keys", "LSH band keys", 1),
    ("profile", "profile (engine/profiles.py)", 1),
    ("pack_hist", "pack histograms", 1),
    ("transact", "LMDB write transaction", 0),
]
QUERY_SUB = [
    ("to_frame", "to_frame (read the query)", 1),
    ("build_sketch", "build_sketch", 1),
    ("quantize", "quantize columns", 2),
    ("row_matrix", "coverage row transform", 2),
    ("minhash", "MinHash signatures", 2),
    ("coverage", "coverage codes", 2),
]


def _instrument(timer: _Timer) -> None:
    import sys

    import fitsketch.adding
    import fitsketch.coverage
    import fitsketch.data
    import fitsketch.hub
    import fitsketch.parts
    import fitsketch.pipeline
    import fitsketch.profiles
    import fitsketch.sketch  # noqa: F401 (the package's `sketch` attribute is the function: use sys.modules)

    coverage, hub, profiles, sketch = (sys.modules["fitsketch.coverage"], sys.modules["fitsketch.hub"],
                                       sys.modules["fitsketch.profiles"], sys.modules["fitsketch.sketch"])
    parts = sys.modules["fitsketch.parts"]   # an entry's records (engine/parts.py, issue 18)
    data, pipeline = sys.modules["fitsketch.data"], sys.modules["fitsketch.pipeline"]   # add's input, the query
    adding = sys.modules["fitsketch.adding"]   # hub.add's preparation (engine/adding.py)

    timer.wrap(data, "to_frame", "to_frame")           # hub.add reads its input through accuracy.with_labels
    timer.wrap(pipeline, "to_frame", "to_frame")       # a query's
    timer.wrap(adding, "build_sketch", "build_sketch")
    timer.wrap(pipeline, "build_sketch", "build_sketch")
    timer.wrap(sketch, "quantize_column", "quantize")
    timer.wrap(coverage, "row_matrix", "row_matrix")
    timer.wrap(sketch, "minhash_csr", "minhash")
    timer.wrap(coverage, "build", "coverage")
    timer.wrap(hub.Hub, "_writer", "writer")
    timer.wrap(parts, "feature_band_keys", "band_keys")
    timer.wrap(profiles, "record", "profile")
    timer.wrap(parts, "pack_hist", "pack_hist")
    timer.wrap(hub.Hub, "_transact", "transact")


def _rows(stages, timer: _Timer, total_s: float, top_keys) -> list[dict]:
    """Table rows of the stages that ran; after a stage's sub-stages, a "rest of" row with what
    they leave of it (work done by the stage itself)."""
    rows = []

    def row(label, s, depth, calls):
        return {"stage": "&nbsp;&nbsp;" * depth + label, "ms": s * 1e3, "share": f"{100 * s / total_s:.1f}%",
                "calls": calls}

    ran = [(key, label, depth) for key, label, depth in stages if key in timer.total]
    rests = {}   # index of a parent's last sub-stage -> [(label, ms, depth) of "rest of" rows]
    for n, (key, label, depth) in enumerate(ran):
        kids, last = [], None
        for m in range(n + 1, len(ran)):
            if ran[m][2] <= depth:
                break
            last = m
            if ran[m][2] == depth + 1:
                kids.append(ran[m][0])
        if kids:
            rest = timer.total[key] - sum(timer.total[k] for k in kids)
            rests.setdefault(last, []).insert(0, (f"rest of {label.split(' (')[0]}", rest, depth + 1))
    for n, (key, label, depth) in enumerate(ran):
        rows.append(row(label, timer.total[key], depth, timer.calls[key]))
        for rlabel, rest, rdepth in rests.get(n, []):
            rows.append(row(rlabel, rest, rdepth, ""))
    other = total_s - sum(timer.total.get(k, 0.0) for k in top_keys)
    rows.append({"stage": "other (validation, bookkeeping)", "ms": other * 1e3,
                 "share": f"{100 * other / total_s:.1f}%", "calls": ""})
    rows.append({"stage": "**total**", "ms": total_s * 1e3, "share": "100%", "calls": ""})
    return rows


def run(quick: bool = False, out_dir: Path | None = None, seed: int = 0, repeats: int | None = None,
        cpu: bool = False) -> dict:
    return suite(H.Options(quick=quick, out_dir=out_dir, seed=seed, repeats=repeats, extra={"cpu": cpu}))


def suite(opts: H.Options) -> dict:
    quick, out_dir, seed, repeats = opts.quick, opts.out_dir, opts.seed, opts.repeats
    cpu = bool(opts.extra.get("cpu"))
    n_add, n_query, n_small, small_rows = (20_000, 1_000, 10, 2_000) if quick else (200_000, 2_000, 20, 5_000)
    repeats = repeats or (2 if quick else 3)
    big = table(n_add, seed)
    query = table(n_query, seed + 1)
    timer = _Timer(H.clock(cpu))
    _instrument(timer)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            with fitsketch.open(Path(tmp) / "hub", device="cpu") as hub:
                for i in range(n_small):
                    hub.add(f"small{i}", table(small_rows, seed + 10 + i))
                # the add: the median of `repeats` adds of the big table (each under a new name)
                snaps = []

                def one_add():
                    timer.reset()
                    hub.add(f"big{len(snaps)}", big)
                    snaps.append((dict(timer.total), dict(timer.calls)))

                # the baseline in the same run: pd.read_csv of the same table, alternating with the adds
                csv = Path(tmp) / "big.csv"
                big.to_csv(csv, index=False)
                both = H.interleaved({"read_csv": lambda: pd.read_csv(csv), "add": one_add}, repeats, warmup=0)
                t_add = both["add"]
                times = t_add["cpu"]["times_s"] if cpu else t_add["times_s"]
                mid = int(np.argsort(times, kind="stable")[len(snaps) // 2])   # the median run
                add_s = times[mid]
                read_s = both["read_csv"]["median_cpu_s"] if cpu else both["read_csv"]["p50_s"]
                timer.total, timer.calls = snaps[mid]
                add_rows = _rows(ADD_STAGES, timer, add_s, ("to_frame", "build_sketch", "writer", "transact"))
                # the query: the plan's stages, with the query sketch's sub-stages
                hub.search(query)  # warm: profiles loaded, caches filled
                snaps = []

                def one_query():
                    timer.reset()
                    p = hub.explain(query)
                    snaps.append((p, dict(timer.total), dict(timer.calls)))

                t_q = H.timeit(one_query, repeats=repeats, warmup=0)
                mid = int(np.argsort(t_q["times_s"], kind="stable")[len(snaps) // 2])
                q_s = t_q["times_s"][mid]
                plan, timer.total, timer.calls = snaps[mid]
                n_entries = len(hub)
    finally:
        timer.restore()
    q_rows = []
    for st in plan.stages:
        ms = st.ms or 0.0
        q_rows.append({"stage": f"{st.name}: {st.detail}", "ms": ms, "share": f"{100 * ms / (q_s * 1e3):.1f}%",
                       "calls": ""})
        if st.name == "sketch":
            q_rows += _rows(QUERY_SUB, timer, q_s, ())[:-2]
    other = q_s * 1e3 - sum(st.ms or 0.0 for st in plan.stages)
    q_rows.append({"stage": "other (config, checks, result records)", "ms": other,
                   "share": f"{100 * other / (q_s * 1e3):.1f}%", "calls": ""})
    q_rows.append({"stage": "**total**", "ms": q_s * 1e3, "share": "100%", "calls": ""})

    print(f"\n## Profile of an add: {n_add:,} rows x {big.shape[1]} columns (median of {repeats}"
          f"{', process CPU time' if cpu else ''})\n")
    for r in add_rows:
        r["x read_csv"] = r["ms"] / (read_s * 1e3)
    print(H.markdown_table(add_rows, ["stage", "ms", "share", "x read_csv", "calls"]))
    print(f"\nbaseline, same run (alternating with the adds): pd.read_csv of the table as CSV "
          f"{read_s * 1e3:,.0f} ms{' (process CPU time)' if cpu else ''}: the add is {add_s / read_s:.2f}x it; "
          f"load average {H.load_average()}")
    print(f"\n## Profile of a query: {n_query:,} rows as data, adaptivity, hub of {n_entries} entries "
          f"(median of {repeats})\n")
    print(H.markdown_table(q_rows, ["stage", "ms", "share", "calls"]))
    ctx = H.context("cpu", quick)
    wl = f"{n_add:,}-row add; {n_query:,}-row query, {n_entries} entries"
    rows = [H.row(ctx, "profile", wl, "hub.add", "add_s", add_s, unit="s", p50_s=t_add["p50_s"],
                  p90_s=t_add["p90_s"], baseline="pd.read_csv, same run", baseline_value=read_s),
            H.row(ctx, "profile", wl, "hub.explain (adaptivity)", "query_s", q_s, unit="s", p50_s=t_q["p50_s"],
                  p90_s=t_q["p90_s"])]
    rows += [H.row(ctx, "profile", "add stage", r["stage"], "ms", r["ms"], unit="ms", share=r["share"])
             for r in add_rows]
    rows += [H.row(ctx, "profile", "query stage", r["stage"], "ms", r["ms"], unit="ms", share=r["share"])
             for r in q_rows]
    payload = {"params": {"clock": "process CPU time" if cpu else "wall", "add_rows": n_add, "query_rows": n_query, "entries": n_entries, "repeats": repeats,
                          "seed": seed},
               "add_s": add_s, "read_csv_s": read_s, "add_over_read_csv": add_s / read_s, "query_s": q_s,
               "add": add_rows, "query": q_rows}
    path = H.write_suite("profile_quick" if quick else "profile", rows, out=out_dir, quick=quick, tables=payload,
                         env=H.environment("cpu"))
    print(f"\nwrote {path}")
    return payload


def main(argv=None) -> dict:
    p = H.parser(__doc__.splitlines()[0])
    p.add_argument("--cpu", action="store_true",
                   help="time the add's stages in process CPU time (single-threaded stages; steadier than wall "
                        "time when other processes share the machine); the query stays in wall time")
    args = p.parse_args(argv)
    return suite(H.options(args, cpu=args.cpu))


if __name__ == "__main__":
    main()
