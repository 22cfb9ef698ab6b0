"""The two-level candidate stage at 1M entries that can all be scored (issue 21 item 4, issue 24):
level 1's depth (``shortlist_coarse``) and ``shortlist_nprobe`` against the exact screen of every entry.

Not a suite (it writes ~12 GiB of index arrays and takes ~1 h of CPU):

    python -m bench.level1_pool build --dir D --entries 1000000 [--worker 0 --workers 2]
    python -m bench.level1_pool assemble --dir D
    python -m bench.level1_pool measure --dir D --query-seed 4 --queries 30 [--time-depths ...]

* **build**: entries ``0 .. N-1`` of the digits label-skew pool zoo (bench/zoos.py ``Pool("digits")``,
  the zoo whose first 100k entries fill the 100k hub of bench.level1_scale; each entry a class-skewed
  sample of 600 rows) sketched as the pool sketches them, each given the screen record
  (``screen.records``) and the JS-LSH keys (``profiles.records``) a hub derives for it, and appended to
  a ScreenIndex (``ScreenIndex._append``, as a sync does) a chunk at a time; every chunk's index
  arrays are written to ``D/chunks/K``. The name and coordinate ids are seeded identically in every
  chunk (the pool's 64 names, then every (column, bucket) the pool's rows can hold), so the chunks
  concatenate. Workers take every ``workers``-th chunk (two processes on two cores).
* **assemble**: the chunks' arrays concatenated into ``D/index/<array>.npy`` with each chunk's offsets
  shifted (as ``level1_scale._tile``); ``open_index`` maps them read-only as one ScreenIndex of N
  rows (the arrays stay on disk and in the page cache, not in the process: ~12 GiB at 1M).
* **measure**: the level-1 IVF built by the engine (``coarse.Level1Ann.build`` on the N-row index);
  per method and query the **exact top 10 of all N entries** (``reference``: every entry screened, or
  a cut that cannot drop a top-10 entry: js / adaptivity by their band agreements (a row below the
  10th best count screens below it), l2 by ``coarse.l2_bounds``, exact-js by the Hellinger bound
  ``H2 <= JS_bits <= H2 / ln 2`` per feature (``H2 = 1 - BC``), so ``1 - mean H2 / ln 2 <= score <=
  1 - mean H2``: every row whose upper bound reaches the 10th best lower bound is screened); where the
  reference's top set lies in the IVF's order at each ``--nprobe`` (level 2 screens the kept rows
  exactly and its cuts leave the selection unchanged, so the stage's recall@10 at depth D is the part
  of the top set among the IVF's first D x shortlist rows); and the stage itself
  (``coarse.scores`` + ``screen.choose``, as bench.level1_scale runs it) timed at ``--time-depths``.

CPU times are ``time.process_time`` (bench/harness.py); the machine is shared.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from . import harness as H

CHUNK = 10_000
# the ScreenIndex's per-entry arrays and the offsets each chunk's copy is shifted by (level1_scale._tile)
_ARRAYS = ("ids", "_schema", "_f_lo", "_p_lo", "_jk_ok", "_jk_data", "_jks_ok", "_jks_data", "_fi_name",
           "_fi_row", "_fi_lo", "_fi_mean", "_fi_sq", "_fi_live", "_fi_var", "_col", "_p", "_fi", "_plog",
           "_part_keys", "_part_row")
_SHIFT = {"_f_lo": "fi", "_p_lo": "parts", "_fi_row": "rows", "_fi_lo": "cells", "_fi": "fi", "_part_row": "rows"}


def _pool():
    from . import zoos
    return zoos.Pool("digits", seed=0)


def _engine(engine=None):
    """``(profiles, screen, growable)`` of ``engine`` (an engine package with those modules imported;
    bench.level1_ab passes another commit's), fitsketch's by default."""
    if engine is None:
        import fitsketch.growable
        import fitsketch.profiles
        import fitsketch.screen

        engine = fitsketch
    return engine.profiles, engine.screen, engine.growable


def _empty_index(pool, engine=None):
    """A ScreenIndex whose name and coordinate ids are seeded (the same in every process), of
    ``engine``'s classes (``_engine``)."""
    PR, S, _ = _engine(engine)

    cfg = pool.cfg
    idx = S.ScreenIndex(int(cfg.jslsh_l), cfg.hist_accuracy)
    nk = np.asarray(PR.name_keys(list(pool.names), cfg.seed), dtype=np.int64)
    name_id = idx._names.add(nk)
    col, bucket = pool.coords >> 32, (pool.coords & 0xFFFFFFFF) - (1 << 31)
    idx._coords.add((name_id[col].astype(np.int64) << 32) + (bucket + (1 << 31)))
    return idx


def _lean_sketches(pool, lo: int, hi: int) -> list:
    """``pool.sketches(lo, hi)`` without the MinHash signatures and coverage codes (zeros / None), which
    neither the screen record nor the JS-LSH keys read: the same histogram, sums and counts (the
    pool's own arithmetic; records bit-equal), ~5x less CPU."""
    from fitsketch.sketch import Sketch

    cfg, d = pool.cfg, len(pool.names)
    out = []
    for i in range(lo, hi):
        p, w, used, hist = pool.histogram(i)
        n = len(p) * pool.chunk_rows.shape[1]
        out.append(Sketch(cfg.sketch_key(), cfg.partition_size, list(pool.names), ["numeric"] * d,
                          np.zeros((d, cfg.num_perm), np.uint32), w[used] @ pool.csum[used],
                          np.full(d, n, dtype=np.int64), n, 1, hist, None))
    return out


def build(d: Path, entries: int, worker: int = 0, workers: int = 1, chunk: int = CHUNK) -> None:
    from fitsketch import profiles as PR
    from fitsketch import screen as S

    pool = _pool()
    cfg = pool.cfg
    for k, lo in enumerate(range(0, entries, chunk)):
        out = d / "chunks" / f"{k:05d}"
        if k % workers != worker or (out / "done").exists():
            continue
        t = H.stopwatch().__enter__()
        c = H.Samples()
        hi = min(lo + chunk, entries)
        def fill():
            sk = _lean_sketches(pool, lo, hi)
            sr = S.records([s.hist for s in sk], [s.names for s in sk], [s.sums for s in sk],
                           [s.counts for s in sk], cfg.seed)
            kr = PR.records(sk, cfg, "cpu")
            idx = _empty_index(pool)
            n_names, n_coords = len(idx._names), len(idx._coords)
            idx._append([(lo + i, sr[i], kr[i][1]) for i in range(len(sk))])
            return idx, n_names, n_coords
        idx, n_names, n_coords = c.call(fill)
        assert len(idx._names) == n_names and len(idx._coords) == n_coords, "a name or coordinate not seeded"
        out.mkdir(parents=True, exist_ok=True)
        for a in _ARRAYS:
            np.save(out / f"{a}.npy", getattr(idx, a).v)
        sizes = {"rows": idx.ids.n, "fi": idx._fi_row.n, "cells": idx._col.n, "parts": idx._part_row.n,
                 "jks_params": [int(v) for v in idx._jks_params]}
        (out / "sizes.json").write_text(json.dumps(sizes))
        (out / "done").write_text(f"{c.cpu[0]:.2f}")
        print(f"chunk {k} ({lo}-{hi}) {c.cpu[0]:.1f} s CPU ({t.elapsed():.1f} s wall with the writes)", flush=True)


def assemble(d: Path) -> None:
    chunks = sorted((d / "chunks").iterdir())
    sizes = [json.loads((c / "sizes.json").read_text()) for c in chunks]
    assert all((c / "done").exists() for c in chunks)
    base = {k: np.concatenate([[0], np.cumsum([s[k] for s in sizes])]) for k in ("rows", "fi", "cells", "parts")}
    (d / "index").mkdir(exist_ok=True)
    for a in _ARRAYS:
        first = np.load(chunks[0] / f"{a}.npy", mmap_mode="r")
        total = sum(np.load(c / f"{a}.npy", mmap_mode="r").shape[0] for c in chunks)
        out = np.lib.format.open_memmap(d / "index" / f"{a}.npy", mode="w+", dtype=first.dtype,
                                        shape=(total,) + first.shape[1:])
        at = 0
        for i, c in enumerate(chunks):
            v = np.load(c / f"{a}.npy")
            if a in _SHIFT:
                v = (v.astype(np.int64) + base[_SHIFT[a]][i]).astype(v.dtype)
            out[at:at + len(v)] = v
            at += len(v)
        out.flush()
        del out
    meta = {k: int(base[k][-1]) for k in base}
    meta["jks_params"] = sizes[0]["jks_params"]
    (d / "index" / "meta.json").write_text(json.dumps(meta))
    print(f"assembled {meta}")


def open_index(d: Path, engine=None):
    """The N-row ScreenIndex of ``d/index``, its arrays mapped read-only from disk (``engine``: as ``_engine``)."""
    PR, _, growable = _engine(engine)
    Grow = growable.Grow

    pool = _pool()
    idx = _empty_index(pool, engine)
    meta = json.loads((d / "index" / "meta.json").read_text())
    for a in _ARRAYS:
        v = np.load(d / "index" / f"{a}.npy", mmap_mode="r")
        g = Grow(v.dtype, v.shape[1] if v.ndim == 2 else None)
        g.a, g.n = v, len(v)
        setattr(idx, a, g)
    idx._jks_params = list(meta["jks_params"])
    schema = idx._names.get(np.asarray(PR.name_keys(list(pool.names), pool.cfg.seed), dtype=np.int64))
    idx._schema_id = {tuple(schema.tolist()): 0}          # one schema: every pool entry has the 64 columns
    idx._schema_names = [schema.astype(np.int32)]
    idx.generation = 1
    return idx, pool


# ----------------------------------------------------------------------------- the exact reference
def _blocks(n: int, block: int = 100_000):
    return [np.arange(lo, min(lo + block, n), dtype=np.int64) for lo in range(0, n, block)]


def exact_bc(idx, qvs: np.ndarray, block: int = 100_000) -> np.ndarray:
    """``(n, queries)`` float64: every row's BC sum (coarse.bc) with each query vector (``qvs``
    ``(coords + 1, queries)``), a block of rows at a time (coarse._cells)."""
    from fitsketch import coarse as CO

    out = np.zeros((idx.ids.n, qvs.shape[1]))
    for rows in _blocks(idx.ids.n, block):
        pos, col, val = CO._cells(idx, rows)
        m = CO._csr(pos, col, val.astype(np.float64), (len(rows), qvs.shape[0]))
        out[rows] = m @ qvs
    return out


def reference(idx, q, method: str, *, seed: int, t_small=None, bc_row=None, k: int = 10) -> dict:
    """The exact screen's top ``k`` of every row (module docstring): ``{"rows", "score", "screened"}``
    of the rows scoring >= the k-th best - 1e-6 (the top set), and how many rows were screened."""
    from fitsketch import coarse as CO

    n = idx.ids.n
    info: dict = {}
    if method in ("js", "adaptivity"):
        kc = np.concatenate([idx.key_counts(r, q, method, seed=seed, t_small=t_small) for r in _blocks(n, 200_000)])
        assert (kc >= 0).all(), "every pool entry is keyed"
        cut = np.partition(kc, n - k)[n - k]
        cand = np.flatnonzero(kc >= cut)
    elif method == "l2":
        lo, hi = np.zeros(n), np.zeros(n)
        for r in _blocks(n, 100_000):
            lo[r], hi[r], _ = CO.l2_bounds(idx, r, q, seed)
        cut = np.partition(hi, k - 1)[k - 1]
        cand = np.flatnonzero(lo <= cut * (1 + 1e-9) + 1e-12)
    else:   # exact-js by the Hellinger bound (all 64 features shared and live on this zoo)
        N = max(q.n_features, 1)
        h2 = 1.0 - bc_row / N
        lower, upper = 1.0 - h2 / np.log(2), 1.0 - h2
        cut = np.partition(lower, n - k)[n - k]
        cand = np.flatnonzero(upper >= cut - 1e-4)
    qv = CO.query_vector(idx, q, seed)
    scr = CO.subset(idx, cand, qv)._scores(q, method, seed, None, t_small)
    s = scr["score"]
    ref = np.sort(s)[::-1][:k]
    top = s >= ref[-1] - 1e-6
    info.update(rows=cand[top], score=s[top],
                best=cand[s >= ref[0] - 1e-6], ref=ref, screened=len(cand))
    return info


def full_screen_top(idx, q, method: str, *, seed: int, t_small=None, k: int = 10) -> np.ndarray:
    """The exact screen of every row, a block at a time (the check of ``reference``): its top ``k``."""
    from fitsketch import coarse as CO

    qv = CO.query_vector(idx, q, seed)
    s = np.concatenate([CO.subset(idx, r, qv)._scores(q, method, seed, None, t_small)["score"]
                        for r in _blocks(idx.ids.n, 100_000)])
    return np.sort(s)[::-1][:k]



# ----------------------------------------------------------------------------- measuring
def level1_of(idx, d: Path):
    """The engine's level-1 IVF of ``idx`` (``Level1Ann.build``), built once and kept in ``d``."""
    import faiss

    from fitsketch import coarse as CO

    f = d / "level1.faiss"
    if f.exists():
        z = np.load(d / "level1_meta.npz")
        return CO.Level1Ann(z["basis"], faiss.read_index(str(f)), z["ids"], z["coord_keys"]), None
    t = H.Samples()
    ann = t.call(CO.Level1Ann.build, idx)
    faiss.write_index(ann.index, str(f))
    np.savez(d / "level1_meta.npz", basis=ann.basis, ids=ann.ids, coord_keys=ann.coord_keys)
    return ann, t


def measure_main(d: Path, argv) -> None:
    from fitsketch import coarse as CO
    from fitsketch import planner
    from fitsketch import screen as S

    from . import zoos

    ap = argparse.ArgumentParser()
    ap.add_argument("--query-seed", type=int, required=True)
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--query-start", type=int, default=0)
    ap.add_argument("--methods", default="js,adaptivity,exact-js,l2")
    ap.add_argument("--nprobe", default="64,128,256")
    ap.add_argument("--max-depth", type=int, default=512, help="the IVF's order is read to max-depth x shortlist rows")
    ap.add_argument("--time", default="", help="stage timings: method:depth/nprobe,...;method:... (e.g. js:32/64,128/128)")
    ap.add_argument("--check", type=int, default=0, help="queries whose reference is checked against the full screen")
    ap.add_argument("--budget", type=float, default=1e9, help="seconds (wall) per method")
    ap.add_argument("--tag", default="")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default bench/results)")
    a = ap.parse_args(argv)
    shortlist = 256
    ctx, env = H.context("cpu", False), H.environment("cpu")
    idx, pool = open_index(d)
    cfg = pool.cfg
    n = idx.ids.n
    ann, t_build = level1_of(idx, d)
    print(f"{n:,} rows; level-1 IVF {ann.index.nlist} lists" + (f", built in {t_build.wall[0]:.0f} s wall "
          f"({t_build.cpu[0]:.0f} s CPU)" if t_build else " (read)"), flush=True)
    qs, small = zoos.query_sketches(pool, a.query_start + a.queries, a.query_seed)
    qs, small = qs[a.query_start:], {m: v[a.query_start:] for m, v in small.items()}
    nprobes = [int(v) for v in a.nprobe.split(",")]
    timing = {}
    for part in filter(None, a.time.split(";")):
        m, vs = part.split(":")
        timing[m] = [tuple(int(x) for x in v.split("/")) for v in vs.split(",")]
    methods = a.methods.split(",")
    bcs = None
    if "exact-js" in methods:
        qvs = np.stack([CO.query_vector(idx, q, cfg.seed) for q in qs], axis=1).astype(np.float64)
        sw = H.stopwatch().__enter__()
        bcs = exact_bc(idx, qvs)
        print(f"exact BC of every row with {len(qs)} queries: {sw.elapsed():.0f} s wall", flush=True)
    rows, per_query = [], []
    for method in methods:
        rule = planner.shortlist_rule(method)
        t_ref = H.Samples()
        t_st = {v: H.Samples() for v in timing.get(method, [])}
        sw = H.stopwatch().__enter__()
        for qi, q in enumerate(qs):
            if sw.elapsed() > a.budget:
                break
            ts = small[method][qi] if method in small else None
            ref = t_ref.call(reference, idx, q, method, seed=cfg.seed, t_small=ts,
                             bc_row=None if bcs is None else bcs[:, qi])
            pq = {"method": method, "query_seed": a.query_seed, "query": a.query_start + qi, "top_set": len(ref["rows"]),
                  "screened_for_reference": int(ref["screened"]), "ref10": float(ref["ref"][-1])}
            if qi < a.check:
                full = full_screen_top(idx, q, method, seed=cfg.seed, t_small=ts)
                pq["check_max_diff"] = float(np.abs(full - ref["ref"]).max())
            qv = CO.query_vector(idx, q, cfg.seed)
            for p in nprobes:
                order, _ = ann.top(idx, qv, a.max_depth * shortlist, p)
                at = np.full(n, -1, dtype=np.int64)
                at[order] = np.arange(len(order))
                pq[f"returned_np{p}"] = int(len(order))
                pq[f"rank_np{p}"] = sorted(int(at[r]) for r in ref["rows"])
                pq[f"best_rank_np{p}"] = min((int(at[r]) for r in ref["best"] if at[r] >= 0), default=-1)
            for dep, p in timing.get(method, []):
                keep = dep * shortlist
                if keep > pq[f"returned_np{p}"]:
                    continue              # fewer rows in the lists probed: the engine falls back to the exact level 1

                def stage():
                    scr, _ = CO.scores(idx, q, method, keep=keep, nprobe=p, ann=ann, shortlist=shortlist,
                                       seed=cfg.seed, t_small=ts)
                    ids, _ = S.choose(scr, rule, shortlist, 10, planner.SHORTLIST_MARGIN_CAP * shortlist)
                    return scr, ids
                if qi == 0:
                    stage()                # warm-up (page cache)
                scr, ids = t_st[dep, p].call(stage)
                got = np.sort(scr["score"][np.isin(scr["ids"], ids)])[::-1][:10]
                pq[f"stage_recall_c{dep}_np{p}"] = float(np.mean(got >= ref["ref"][-1] - 1e-6))
                pq[f"stage_best_c{dep}_np{p}"] = bool(got[0] >= ref["ref"][0] - 1e-6)
            per_query.append(pq)
            print(f"  query {pq}", flush=True)
        qn = [p for p in per_query if p["method"] == method]
        if not qn:
            continue
        cp = lambda s, k="p50_s": 1e3 * s.stats()["cpu"][k]   # noqa: E731
        print(f"{method}: {len(qn)} queries, reference CPU p50 {cp(t_ref):.0f} ms (rows screened p50 "
              f"{np.median([p['screened_for_reference'] for p in qn]):.0f})", flush=True)
        for p in nprobes:
            for dep in [2 ** i for i in range(int(np.log2(a.max_depth)) + 1)]:
                keep = dep * shortlist
                rec = [min(sum(0 <= r < keep for r in x[f"rank_np{p}"]), 10) / 10 for x in qn]
                best = [0 <= x[f"best_rank_np{p}"] < keep for x in qn]
                short = sum(x[f"returned_np{p}"] < keep for x in qn)
                print(f"   nprobe {p:>3} depth {dep:>3} ({keep:>7} rows): recall@10 {np.mean(rec):.3f} (min {min(rec):.2f}) "
                      f"best {sum(best)}/{len(best)}" + (f"; lists held fewer rows in {short}" if short else ""))
                rows.append(H.row(ctx, "level1_pool", f"{n} digits pool entries (all scored)", method,
                                  f"recall_at_10_c{dep}_np{p}", float(np.mean(rec)), min=min(rec),
                                  best_found=float(np.mean(best)), queries=len(qn), query_seed=a.query_seed,
                                  short_lists=short, baseline="exact screen of every entry"))
        for (dep, p), t in t_st.items():
            if not len(t):
                continue
            st = t.stats()
            rec = [x[f"stage_recall_c{dep}_np{p}"] for x in qn if f"stage_recall_c{dep}_np{p}" in x]
            bst = [x[f"stage_best_c{dep}_np{p}"] for x in qn if f"stage_best_c{dep}_np{p}" in x]
            print(f"   stage depth {dep} nprobe {p}: CPU p50 {cp(t):.1f} p90 {cp(t, 'p90_s'):.1f} ms, wall p50 "
                  f"{1e3 * st['p50_s']:.1f} ms; recall@10 {np.mean(rec):.3f} best {sum(bst)}/{len(bst)} ({len(t)} queries)",
                  flush=True)
            rows.append(H.row(ctx, "level1_pool", f"{n} digits pool entries (all scored)", method,
                              f"stage_cpu_p50_c{dep}_np{p}", cp(t), unit="ms", cpu_p90_ms=cp(t, "p90_s"),
                              wall_p50_ms=1e3 * st["p50_s"], wall_p90_ms=1e3 * st["p90_s"], recall_at_10=float(np.mean(rec)),
                              best_found=float(np.mean(bst)), queries=len(t), query_seed=a.query_seed))
        H.write_suite(f"level1_pool{a.tag}", rows, out=a.out, env=env, tables={"per_query": per_query})
    print(f"wrote {H.write_suite(f'level1_pool{a.tag}', rows, out=a.out, env=env, tables={'per_query': per_query})}")

def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("step", choices=("build", "assemble", "measure"))
    ap.add_argument("--dir", type=Path, required=True)
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--worker", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1)
    a, rest = ap.parse_known_args(argv)
    if a.step == "build":
        build(a.dir, a.entries, a.worker, a.workers)
    elif a.step == "assemble":
        assemble(a.dir)
    else:
        measure_main(a.dir, rest)


if __name__ == "__main__":
    main()
