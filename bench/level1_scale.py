"""Level 1 of the two-level candidate stage at 100k and 1M entries (issue 21 item 4 "1M p50", issue 24):
the FAISS IVF (engine/coarse.py ``Level1Ann``) against the exact level 1 and the exact screen.

Not a suite (it needs a 100k hub's screen index file and minutes of CPU):

    python -m bench.level1_scale --screen-file HUB/indexes/screen.fsidx [--queries 8] [--synthetic 1000000]

* **real** (the index file of a hub filled with ``bench.bench_shortlist --scale digits --hub-dir``:
  the digits label-skew pool zoo; queries are that bench's 600-row class-skewed samples): per method
  and query, the exact screen of every entry (the reference: the scorers' own scores), the two-level
  stage with the exact level 1 (``shortlist_nprobe=0``) and with the IVF at each ``--nprobe``; recall@10
  / best found of the kept set as ``bench_shortlist --two-level`` counts them; CPU p50 of level 1 alone
  and of the whole stage (level 1 + level 2 + the selection).
* **synthetic** (``--synthetic N``): N *synthetic* similar entries in level-1 space, each the mixture
  (Dirichlet(1,1,1) weights) of the dataset-level distributions of 3 random real entries (per column
  normalized, so each is a valid entry distribution), as dense ``sqrt(p)`` rows; the IVF built as
  ``Level1Ann.build`` builds it (the real index's basis, ~sqrt(N) lists trained on 20k rows); per
  query the exact BC of all N (dense product: the reference and the exact level 1's cost) against the
  IVF's ``refine x keep`` re-ranked by exact BC. Level 2's cost does not depend on N (it screens
  ``keep`` entries): the real part measures it. The level-1 file at N is written and read back
  (``faiss_files.load``: size + CRC-32 check, deserialize, every row held once): its warm-up.

CPU times (``time.process_time`` through bench/harness.py): the machine is shared.
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np

from . import harness as H


class _Cfg:
    def __init__(self, meta):
        self.jslsh_l, self.hist_accuracy = int(meta["l"]), float(meta["accuracy"])


def load_screen(path: str):
    from fitsketch import indexes as I
    from fitsketch.storage.arrayfile import read_arrays

    meta, arrays = read_arrays(path)
    return I._screen_from(meta, arrays, _Cfg(meta))


def queries(n: int, seed: int = 0, query_seed: int | None = None):
    from . import zoos

    pool = zoos.Pool("digits", seed=seed)
    qs, small = zoos.query_sketches(pool, n, seed if query_seed is None else query_seed)
    return qs, small, pool.cfg


def run_real(idx, qs, small, cfg, ann, *, methods, nprobes, coarse=(8,), shortlist: int = 256,
             budget_s: float = 600.0, ctx, out=print, exact_level1: bool = True, big=None,
             log_queries: bool = False, first: int = 0) -> tuple[list, list]:
    from fitsketch import coarse as CO
    from fitsketch import planner
    from fitsketch import screen as S

    n = len(idx)
    w = f"digits label skew (pool), {n} entries (a hub's screen index file), shortlist {shortlist}"
    rows, per_query = [], []
    wall = H.stopwatch().__enter__()
    CO.matrix(idx)                                    # the exact level 1's matrix, built once (not timed)
    # nprobe 0: the exact level 1 (``exact_level1`` False: the IVF alone, ~65 ms less a variant at 100k);
    # coarse 0: each method's default depth (coarse.coarse_for, config.shortlist_coarse=0)
    variants_of = lambda m: [(c, p) for c in coarse for p in ((0,) if exact_level1 else ()) + tuple(nprobes)]  # noqa: E731
    for method in methods:
        variants = variants_of(method)
        deepest = max(CO.coarse_for(method, c) for c in coarse)
        rule = planner.shortlist_rule(method)
        t_full, t_l1x = H.Samples(), H.Samples()
        t_l1 = {v: H.Samples() for v in variants}
        t_big = {v: H.Samples() for v in variants}     # level 1 on the ``big`` IVF (--ivf-at), same keep
        t_st = {v: H.Samples() for v in variants}
        rec = {v: [] for v in variants}
        best = {v: [] for v in variants}
        l1rec = {v: [] for v in variants}
        big_rec = {v: [] for v in variants}              # --ivf-at: the reference's real top 10 kept by level 1 there
        big_best = {v: [] for v in variants}
        for qi, q in enumerate(qs):
            if wall.elapsed() > budget_s * (methods.index(method) + 1) / len(methods):
                break
            kw = dict(seed=cfg.seed, t_small=small[method][qi] if method in small else None)
            full = t_full.call(idx.scores, q, method, **kw)
            ref = np.sort(full["score"])[::-1][:10]
            pq = {"method": method, "query": first + qi}
            b = t_l1x.call(CO.bc, idx, q, cfg.seed)
            qv = CO.query_vector(idx, q, cfg.seed)
            # where the reference's top 10 (every entry scoring >= its 10th best) lie in the IVF's order at
            # each nprobe, out of its first max(coarse) x shortlist (-1: not among them): the depth a
            # shortlist_coarse must reach to keep them (level 2 then screens them exactly)
            top_ids = full["ids"][full["score"] >= ref[-1] - 1e-6]
            for p in nprobes:
                order, _ = ann.top(idx, qv, deepest * shortlist, p)
                at = {int(e): r for r, e in enumerate(idx.ids.v[order])}
                pq[f"ivf_rank_np{p}"] = sorted(at.get(int(e), -1) for e in top_ids)
                if big is not None:
                    # the same ranks in the big IVF's order (the real rows are its rows 0..n-1, the synthetic
                    # ones after them): whether level 1 at that size still keeps the real entries the
                    # exhaustive search ranks top (the synthetic rows have no screen data: they are not scored)
                    _, got_b = _big_top(big, ann, qv, deepest * shortlist, p)
                    got_b = got_b[0]
                    at_b = {int(idx.ids.v[row]): r for r, row in enumerate(got_b.tolist()) if 0 <= row < n}
                    pq[f"big_rank_np{p}"] = sorted(at_b.get(int(e), -1) for e in top_ids)
                    best_ids = full["ids"][full["score"] >= ref[0] - 1e-6]
                    for c in coarse:
                        keep_b = CO.coarse_for(method, c) * shortlist
                        kept_b = lambda e: 0 <= at_b.get(int(e), -1) < keep_b   # noqa: E731
                        big_rec[c, p].append(float(np.mean([kept_b(e) for e in top_ids])))
                        big_best[c, p].append(any(kept_b(e) for e in best_ids))
            for c, p in variants:
                keep = CO.coarse_for(method, c) * shortlist

                def stage():
                    scr, _ = CO.scores(idx, q, method, keep=keep, nprobe=p, ann=ann if p else None,
                                       shortlist=shortlist, **kw)
                    ids, _ = S.choose(scr, rule, shortlist, 10, planner.SHORTLIST_MARGIN_CAP * shortlist)
                    return scr, ids

                scr, ids = t_st[c, p].call(stage)
                got = np.sort(scr["score"][np.isin(scr["ids"], ids)])[::-1][:10]
                r = float(np.mean(got >= ref[-1] - 1e-6)) if len(got) else 0.0
                bf = bool(len(got) and got[0] >= ref[0] - 1e-6)
                rec[c, p].append(r)
                best[c, p].append(bf)
                if p:
                    kk = min(keep, len(b))
                    top_b = set(np.argpartition(-b, kk - 1)[:kk].tolist())
                    kept, _ = t_l1[c, p].call(ann.top, idx, qv, keep, p)
                    l1rec[c, p].append(len(top_b & set(kept.tolist())) / kk)
                    if big is not None:
                        t_big[c, p].call(_big_top, big, ann, qv, keep, p)
                pq.update({f"recall_c{c}_np{p}": r, f"best_c{c}_np{p}": bf})
            per_query.append(pq)
            if log_queries:
                out(f"  query {pq}", flush=True)
        if not len(t_full):
            continue
        cp = lambda s: 1e3 * s.stats()["cpu"]["p50_s"]   # noqa: E731
        out(f"  {n:,} {method:<10} {len(t_full)} queries: exact screen CPU p50 {cp(t_full):7.0f} ms; exact level 1 alone "
            f"{cp(t_l1x):5.1f} ms")
        rows.append(H.row(ctx, "level1_scale", w, method, "exact_screen_cpu_p50", cp(t_full), unit="ms",
                          queries=len(t_full), exact_level1_cpu_p50_ms=cp(t_l1x)))
        for c, p in variants:
            v = (c, p)
            d = CO.coarse_for(method, c)
            l1 = f"level 1 {cp(t_l1[v]):5.1f} ms, kept {np.mean(l1rec[v]):.3f} of the exact level 1's" if p else \
                f"exact level 1 {cp(t_l1x):5.1f} ms"
            st = t_st[v].stats()
            out(f"      coarse {c}{' (%d)' % d if not c else ''} {'IVF nprobe %3d of %d' % (p, ann.index.nlist) if p else 'exact level 1     '}: stage "
                f"CPU p50 {cp(t_st[v]):6.1f} p90 {1e3 * st['cpu']['p90_s']:6.1f} ms, wall p50 {1e3 * st['p50_s']:6.1f} "
                f"p90 {1e3 * st['p90_s']:6.1f} ms ({l1}), recall@10 {np.mean(rec[v]):.3f} (min {min(rec[v]):.2f}) best "
                f"{sum(best[v])}/{len(best[v])}")
            extra = {}
            if big is not None and p and len(t_big[v]):
                # the stage at the big IVF's size: this stage with its level-1 search replaced by the big one's,
                # query by query (level 2 screens the same count of rows at any hub size)
                cs = H.stats(np.array(t_st[v].cpu) - np.array(t_l1[v].cpu) + np.array(t_big[v].cpu))
                ws = H.stats(np.array(t_st[v].wall) - np.array(t_l1[v].wall) + np.array(t_big[v].wall))
                extra = {f"at_{big.ntotal}_cpu_p50_ms": 1e3 * cs["p50_s"], f"at_{big.ntotal}_cpu_p90_ms": 1e3 * cs["p90_s"],
                         f"at_{big.ntotal}_wall_p50_ms": 1e3 * ws["p50_s"], f"at_{big.ntotal}_wall_p90_ms": 1e3 * ws["p90_s"],
                         f"level1_at_{big.ntotal}_cpu_p50_ms": cp(t_big[v])}
                extra.update({f"real_top10_kept_at_{big.ntotal}": float(np.mean(big_rec[v])),
                              f"real_top10_kept_min_at_{big.ntotal}": float(min(big_rec[v])),
                              f"real_best_kept_at_{big.ntotal}": float(np.mean(big_best[v]))})
                out(f"          at {big.ntotal:,} entries (level 1 on the {big.ntotal:,}-row IVF, {big.nlist} lists, "
                    f"{cp(t_big[v]):.1f} ms): stage CPU p50 {1e3 * cs['p50_s']:6.1f} p90 {1e3 * cs['p90_s']:6.1f} ms, "
                    f"wall p50 {1e3 * ws['p50_s']:6.1f} p90 {1e3 * ws['p90_s']:6.1f} ms; the exhaustive top 10 of the "
                    f"{n:,} real entries kept by level 1 there: {np.mean(big_rec[v]):.3f} (min {min(big_rec[v]):.2f}), "
                    f"best {sum(big_best[v])}/{len(big_best[v])}")
            rows.append(H.row(ctx, "level1_scale", w, method, f"stage_cpu_p50_c{c}_np{p}", cp(t_st[v]), unit="ms",
                              depth=d, cpu_p90_ms=1e3 * st["cpu"]["p90_s"], wall_p50_ms=1e3 * st["p50_s"],
                              wall_p90_ms=1e3 * st["p90_s"],
                              level1_cpu_p50_ms=cp(t_l1[v]) if p else cp(t_l1x),
                              level1_recall=float(np.mean(l1rec[v])) if p else 1.0,
                              recall_at_10=float(np.mean(rec[v])), min=min(rec[v]),
                              best_found=float(np.mean(best[v])), queries=len(rec[v]),
                              baseline="exact screen of every entry", baseline_value=cp(t_full), **extra))
    return rows, per_query


def _big_top(big, ann, qv, keep: int, nprobe: int):
    """What ``Level1Ann.top`` does (no re-rank), on the big IVF: the query projected, ``keep`` rows searched."""
    qx = (qv[:-1][:len(ann.basis)] @ ann.basis).astype(np.float32)[None, :]
    big.nprobe = int(max(1, min(nprobe, big.nlist)))
    return big.search(qx, int(min(keep, big.ntotal)))


def _mixtures(real, rng, m: int) -> np.ndarray:
    """(m, columns) float64: ``m`` synthetic level-1 rows, each sqrt of a Dirichlet(1, 1, 1) mix of the
    squared rows (the distributions) of 3 random rows of ``real`` (the CSR of sqrt(p))."""
    pick = rng.integers(0, real.shape[0], (m, 3))
    wts = rng.dirichlet(np.ones(3), m)
    mix = np.zeros((m, real.shape[1]), dtype=np.float64)
    for k in range(3):
        sq = real[pick[:, k]].toarray()
        mix += wts[:, k:k + 1] * (sq * sq)
    return np.sqrt(mix)


def build_big(idx, ann, n: int, *, seed: int = 0, block: int = 20_000, out=print):
    """An IVF of ``n`` rows as ``Level1Ann.build`` makes one (``_nlist(n)`` lists trained on
    ``ANN_FIT_ROWS`` evenly spaced rows, the real index's basis): the real rows' projections, then
    synthetic similar entries (each the Dirichlet(1,1,1) mixture of 3 real entries' distributions, as
    ``run_synthetic``) projected block by block (never held dense: ~n x 64 floats in all)."""
    import faiss

    from fitsketch import coarse as CO

    rng = np.random.default_rng(seed)
    real = CO.matrix(idx)
    n0, c = real.shape
    nb = min(len(ann.basis), c)
    x = np.zeros((n, ann.basis.shape[1]), dtype=np.float32)
    x[:min(n0, n)] = ann.project(idx, np.arange(min(n0, n), dtype=np.int64))
    sw = H.stopwatch().__enter__()
    for lo in range(n0, n, block):
        m = min(block, n - lo)
        x[lo:lo + m] = (_mixtures(real, rng, m)[:, :nb] @ ann.basis[:nb]).astype(np.float32)
    fit = np.unique(np.linspace(0, n - 1, min(n, CO.ANN_FIT_ROWS)).astype(np.int64))
    nlist = CO._nlist(n)
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(x.shape[1]), x.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = 0
    index.train(x[fit])
    index.add_with_ids(x, np.arange(n, dtype=np.int64))
    out(f"big IVF: {n:,} rows ({n0:,} real, the rest synthetic mixtures), {nlist} lists, built in {sw.elapsed():.0f} s wall")
    return index


def run_synthetic(idx, qs, cfg, ann, n: int, *, nprobes, keep: int = 2048, seed: int = 0, ctx, out=print) -> list:
    import faiss

    from fitsketch import coarse as CO
    from fitsketch import faiss_files

    rng = np.random.default_rng(seed)
    real = CO.matrix(idx)
    n0, c = real.shape
    dense = np.zeros((n, c), dtype=np.float32)
    block = 20_000
    t_gen = H.Samples()
    for lo in range(0, n, block):
        def gen(lo=lo):
            m = min(block, n - lo)
            dense[lo:lo + m] = _mixtures(real, rng, m)
        t_gen.call(gen)
    w = f"{n} synthetic similar entries (mixtures of 3 of {n0} digits pool entries), level-1 space"
    out(f"synthetic: {n:,} x {c} rows generated in {t_gen.total_s():.0f} s ({dense.nbytes / 2**30:.1f} GiB)")
    basis = ann.basis
    nb = min(len(basis), c)
    t_b = H.Samples()

    def build():
        x = np.zeros((n, basis.shape[1]), dtype=np.float32)
        for lo in range(0, n, 100_000):
            x[lo:lo + 100_000] = dense[lo:lo + 100_000, :nb] @ basis[:nb]
        fit = np.unique(np.linspace(0, n - 1, min(n, CO.ANN_FIT_ROWS)).astype(np.int64))
        nlist = CO._nlist(n)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(x.shape[1]), x.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = 0
        index.train(x[fit])
        index.add_with_ids(x, np.arange(n, dtype=np.int64))
        return index

    index = t_b.call(build)
    out(f"synthetic: IVF of {n:,} rows ({index.nlist} lists) built in {t_b.cpu[0]:.0f} s CPU")
    rows = [H.row(ctx, "level1_scale", w, "all", "ivf_build_cpu", t_b.cpu[0], unit="s", nlist=int(index.nlist))]
    # warm-up: the level-1 file at n written and read back (size + CRC-32, deserialize, every row held once)
    with tempfile.TemporaryDirectory(prefix="fitsketch-level1-") as d:
        fpath, mpath = faiss_files.paths(d, "level1")
        ids = np.arange(n, dtype=np.int64)
        faiss_files.save(fpath, mpath, index, {"v": CO.ANN_FORMAT, "ids": ids, "basis": basis})
        t_w = H.Samples()
        for _ in range(2):
            got = t_w.call(faiss_files.load, fpath, mpath, fmt=CO.ANN_FORMAT, accept=lambda m: True,
                           decode=lambda ix, m: ix if CO._holds_rows(ix, len(m["ids"])) else None)
            assert got is not None and got.ntotal == n
        size = Path(fpath).stat().st_size + Path(mpath).stat().st_size
    out(f"synthetic: level-1 files {size / 2**20:.0f} MiB read + checked in {t_w.wall[0]:.2f} s / {t_w.wall[1]:.2f} s "
        f"wall (CPU {t_w.cpu[0]:.2f} / {t_w.cpu[1]:.2f} s)")
    rows.append(H.row(ctx, "level1_scale", w, "all", "level1_file_load_wall", t_w.wall[0], unit="s", again_s=t_w.wall[1],
                      cpu_s=t_w.cpu[0], bytes=size))
    t_exact, t_s = H.Samples(), {p: H.Samples() for p in nprobes}
    t_rr = {p: H.Samples() for p in nprobes}
    rec = {p: {"keep": [], "top10": [], "top100": [], "keep_no_rerank": [], "top10_no_rerank": [],
               "top100_no_rerank": []} for p in nprobes}
    for q in qs:
        qv = CO.query_vector(idx, q, cfg.seed)[:c]
        b = t_exact.call(lambda: dense @ qv)
        order = np.argpartition(-b, keep - 1)[:keep]
        top = set(order.tolist())
        s = order[np.argsort(-b[order])]
        qx = (qv[:nb] @ basis[:nb]).astype(np.float32)[None, :]
        for p in nprobes:
            index.nprobe = p
            _, got = t_s[p].call(index.search, qx, 2 * keep)
            got = got[0][got[0] >= 0]
            first = set(got[:keep].tolist())                 # the IVF's own first keep (no re-rank)
            rec[p]["keep_no_rerank"].append(len(top & first) / keep)
            rec[p]["top10_no_rerank"].append(np.mean([int(e) in first for e in s[:10]]))
            rec[p]["top100_no_rerank"].append(np.mean([int(e) in first for e in s[:100]]))

            def rerank(got=got):
                bb = dense[got] @ qv
                return got[np.argpartition(-bb, min(keep, len(bb)) - 1)[:keep]] if len(bb) > keep else got
            kept = set(t_rr[p].call(rerank).tolist())
            rec[p]["keep"].append(len(top & kept) / keep)
            rec[p]["top10"].append(np.mean([int(e) in kept for e in s[:10]]))
            rec[p]["top100"].append(np.mean([int(e) in kept for e in s[:100]]))
    ce = 1e3 * t_exact.stats()["cpu"]["p50_s"]
    out(f"synthetic {n:,}: exact level 1 (dense product of every row) CPU p50 {ce:.0f} ms; {len(qs)} queries")
    rows.append(H.row(ctx, "level1_scale", w, "all", "exact_level1_cpu_p50", ce, unit="ms", queries=len(qs)))
    for p in nprobes:
        cs, cr = 1e3 * t_s[p].stats()["cpu"]["p50_s"], 1e3 * t_rr[p].stats()["cpu"]["p50_s"]
        r = {k: float(np.mean(v)) for k, v in rec[p].items()}
        out(f"   nprobe {p:>3} of {index.nlist}: IVF search {cs:5.1f} ms + re-rank of {2 * keep} {cr:5.1f} ms "
            f"CPU p50; exact-BC top {keep} kept {r['keep']:.3f}, top 100 {r['top100']:.3f}, top 10 {r['top10']:.3f} "
            f"(min {min(rec[p]['top10']):.2f}); without the re-rank (the IVF's first {keep}): {r['keep_no_rerank']:.3f}, "
            f"{r['top100_no_rerank']:.3f}, {r['top10_no_rerank']:.3f} (min {min(rec[p]['top10_no_rerank']):.2f})")
        rows.append(H.row(ctx, "level1_scale", w, "all", f"level1_cpu_p50_np{p}", cs + cr, unit="ms", search_ms=cs,
                          rerank_ms=cr, recall_keep=r["keep"], recall_top10=r["top10"], recall_top100=r["top100"],
                          recall_keep_no_rerank=r["keep_no_rerank"], recall_top10_no_rerank=r["top10_no_rerank"],
                          recall_top100_no_rerank=r["top100_no_rerank"],
                          min_top10=float(min(rec[p]["top10"])), baseline="exact level 1 (every row)",
                          baseline_value=ce, queries=len(qs)))
    return rows


def _tile(idx, prof, reps: int) -> None:
    """Repeat the entries of a screen and a profile index ``reps`` times (ids 0..n x reps - 1; the
    offsets of each copy shifted), as if the same records had been appended again under new ids."""
    from fitsketch.growable import Grow

    n0, n_fi, n_z, n_p = idx.ids.n, idx._fi_row.n, idx._col.n, idx._part_row.n
    shift = {"_f_lo": n_fi, "_p_lo": n_p, "_fi_row": n0, "_fi_lo": n_z, "_fi": n_fi, "_part_row": n0}
    for name, g in list(vars(idx).items()):
        if not isinstance(g, Grow):
            continue
        v = g.v
        if name == "ids":
            out = np.arange(n0 * reps, dtype=v.dtype)
        else:
            out = np.concatenate([v] * reps)
            if name in shift:
                step = np.repeat(np.arange(reps, dtype=np.int64) * shift[name], len(v))
                out = (out.astype(np.int64) + step).astype(v.dtype)
        g.a, g.n = out, len(out)
    m = prof.n
    prof._ids = np.arange(m * reps, dtype=np.int64)
    prof._x = np.concatenate([prof.x] * reps)
    prof._schema = np.concatenate([prof._schema[:m]] * reps)
    prof._schema_live = [c * reps for c in prof._schema_live]
    prof.n = m * reps
    prof._faiss = None


def _drop_page_cache(out) -> str:
    """Drop the page cache (Linux, root: ``/proc/sys/vm/drop_caches``) so the next read comes from the
    disk, as when a hub is opened after a reboot; says where the read will come from."""
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return "disk (page cache dropped)"
    except OSError as e:
        out(f"warm: could not drop the page cache ({e}); the first read is from the page cache")
        return "page cache"


def run_warm(n: int, *, ctx, work: Path, cold: bool = False, out=print) -> list:
    """Warm-up from the persisted index files at ``n`` entries (issue 21 item 4): the screen, profile
    and level-1 index files of ``n`` entries of the scale-out shape (bench_scale_out: 3 columns, 8
    families x 4 sketches registered under many names; the shape the 44k measurement used) written as
    the hub writes them, then read back and checked as ``hub.warm()`` reads them (indexes.py
    ``read_arrays`` + ``_screen_from`` / ``_profile_from``, faiss_files.load + ``Level1Ann.decode``).
    The indexes are filled in memory (``_append`` of each entry's records, as a sync does), not
    through LMDB: a hub of ``n`` entries is not built (its LMDB header reads at open are O(1)). The
    files are read right after being written (from the page cache, as on a machine with the RAM)."""
    import fitsketch
    from fitsketch import coarse as CO
    from fitsketch import faiss_files
    from fitsketch import indexes as I
    from fitsketch import profiles as PR
    from fitsketch import screen as S
    from fitsketch.storage.arrayfile import read_arrays, write_arrays

    from .bench_scale_out import FAMILIES, _family

    rng = np.random.default_rng(1)
    cfg = fitsketch.SketchConfig()
    sk = [fitsketch.sketch_data(_family(rng, f, 2000), cfg) for f in range(FAMILIES) for _ in range(4)]
    recs = PR.records(sk, cfg, "cpu")
    scr = [S.record(s.hist, s.names, s.sums, s.counts, cfg.seed) for s in sk]
    idx, prof = S.ScreenIndex(int(cfg.jslsh_l), cfg.hist_accuracy), PR.ProfileIndex()
    t_fill = H.Samples()
    base = min(n, 10_000)          # appended as a sync does, then repeated to n by array (the same rows)
    t_fill.call(idx._append, [(e, scr[e % len(sk)], recs[e % len(sk)][1]) for e in range(base)])
    t_fill.call(prof._append, [(e, recs[e % len(sk)][0]) for e in range(base)])
    if n > base:
        assert n % base == 0, "--warm: a multiple of 10,000"
        t_fill.call(_tile, idx, prof, n // base)
    idx.generation = prof.generation = 1
    prof.build()
    old = CO.ANN_MIN_ENTRIES
    t_ann = H.Samples()
    ann = t_ann.call(CO.Level1Ann.build, idx)
    out(f"warm: {n:,} entries filled in {t_fill.total_s():.0f} s, level-1 IVF built in {t_ann.wall[0]:.0f} s")
    root = work / "hub"
    paths = {k: str(root / "indexes" / f"{k}.fsidx") for k in ("screen", "profiles")}
    (root / "indexes").mkdir(parents=True, exist_ok=True)
    ident = {"hub": {"created": b"bench", "format": b"3"}, "params": {"seed": int(cfg.seed)}}
    size = 0
    for kind, ix, state_of in (("screen", idx, I._screen_state), ("profiles", prof, I._profile_state)):
        st = state_of(ix)
        meta = {"v": I.SEARCH_INDEX_FORMAT, "kind": kind, "layout": st.pop("__layout__"), **ident,
                "generation": 1, "entries": n, **st.pop("__meta__")}
        size += write_arrays(paths[kind], meta, st)
    fpath, mpath = faiss_files.paths(str(root), "level1")
    faiss_files.save(fpath, mpath, ann.index, ann.meta(ident))
    size += Path(fpath).stat().st_size + Path(mpath).stat().st_size
    coords = _Cfg({"l": idx.l, "accuracy": idx.accuracy})
    del ann, prof
    rows = []
    w = f"{n} entries of the scale-out shape (3 columns), index files only"
    os.sync()   # the files on disk, as when a hub is opened later: no writeback competes with the read
    for attempt in range(2):
        cache = "page cache" if attempt or not cold else _drop_page_cache(out)
        t = {k: H.Samples() for k in ("screen", "profiles", "level1")}
        meta, arrays = t["screen"].call(read_arrays, paths["screen"])
        got = t["screen"].call(I._screen_from, meta, arrays, coords)
        meta, arrays = t["profiles"].call(read_arrays, paths["profiles"])
        t["profiles"].call(I._profile_from, meta, arrays, cfg)
        a1 = t["level1"].call(faiss_files.load, fpath, mpath, fmt=CO.ANN_FORMAT, accept=lambda m: True,
                              decode=lambda ix, m, got=got: CO.Level1Ann.decode(ix, m, got))
        assert len(got) == n and a1 is not None and len(a1) == n
        tot = sum(x.total_s() for x in t.values())
        cpu = sum(sum(x.cpu) for x in t.values())
        out(f"warm: {n:,} entries, {size / 2**30:.2f} GiB of index files read + checked in {tot:.1f} s wall "
            f"({cpu:.1f} s CPU) from {cache}: screen {t['screen'].total_s():.1f}, profiles "
            f"{t['profiles'].total_s():.1f}, level 1 {t['level1'].total_s():.1f}")
        rows.append(H.row(ctx, "level1_scale", w, "all", f"warm_from_files_wall{'' if attempt == 0 else '_again'}", tot,
                          unit="s", cpu_s=cpu, bytes=size, read_from=cache, screen_s=t["screen"].total_s(),
                          profiles_s=t["profiles"].total_s(), level1_s=t["level1"].total_s()))
        del got, a1, meta, arrays
    CO.ANN_MIN_ENTRIES = old
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--screen-file", default=None)
    ap.add_argument("--warm", type=int, default=0, help="entries of the warm-up-from-files part (0: none)")
    ap.add_argument("--cold", action="store_true",
                    help="--warm: drop the page cache before the first read (root on Linux): the read from disk")
    ap.add_argument("--work", default=None, help="--warm: folder for the index files (default: a temporary one)")
    ap.add_argument("--queries", type=int, default=8)
    ap.add_argument("--methods", default="exact-js,js,adaptivity,l2")
    ap.add_argument("--nprobe", default="4,8,16,32,64")
    ap.add_argument("--coarse", default="8", help="shortlist_coarse values")
    ap.add_argument("--budget", type=float, default=600.0, help="seconds of the real part (all methods)")
    ap.add_argument("--synthetic", type=int, default=0, help="entries of the synthetic part (0: none)")
    ap.add_argument("--syn-queries", type=int, default=20)
    ap.add_argument("--no-exact-level1", action="store_true", help="--screen-file: the IVF level 1 alone (no nprobe-0 variants)")
    ap.add_argument("--ivf-at", type=int, default=0,
                    help="--screen-file: also time level 1 on an IVF of this many rows (the real ones + synthetic "
                         "mixtures) and report the stage at that size (0: none)")
    ap.add_argument("--query-seed", type=int, default=0, help="queries' draws (0: the tuning queries)")
    ap.add_argument("--tag", default="")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--query-start", type=int, default=0, help="the first query's number (go on after a run)")
    ap.add_argument("--log-queries", action="store_true", help="print each query's line as it ends (a run stopped early keeps them)")
    a = ap.parse_args(argv)
    from fitsketch import coarse as CO

    ctx = H.context("cpu", False)
    env = H.environment("cpu")
    name = f"level1_scale{a.tag}"
    if a.warm:
        with tempfile.TemporaryDirectory(prefix="fitsketch-warm-", dir=a.work) as d:
            rows = run_warm(a.warm, ctx=ctx, work=Path(d), cold=a.cold)
        print(f"wrote {H.write_suite(name, rows, out=a.out, env=env)}")
        return
    idx = H.Samples().call(load_screen, a.screen_file)
    print(f"screen index of {len(idx):,} entries read from {a.screen_file}")
    qs, small, cfg = queries(a.query_start + max(a.queries, a.syn_queries), query_seed=a.query_seed)
    qs, small = qs[a.query_start:], {m: v[a.query_start:] for m, v in small.items()}   # go on after a run's queries
    t_a = H.Samples()
    ann = t_a.call(CO.Level1Ann.build, idx)
    print(f"level-1 IVF of {len(ann):,} rows ({ann.index.nlist} lists, dim {ann.basis.shape[1]}) built in "
          f"{t_a.cpu[0]:.1f} s CPU")
    rows = [H.row(ctx, "level1_scale", f"{len(idx)} entries", "all", "ivf_build_cpu", t_a.cpu[0], unit="s",
                  nlist=int(ann.index.nlist))]
    nprobes = tuple(int(v) for v in a.nprobe.split(","))
    per_query = []
    if a.budget > 0:
        big = build_big(idx, ann, a.ivf_at) if a.ivf_at else None
        r, per_query = run_real(idx, qs[:a.queries], small, cfg, ann, methods=tuple(a.methods.split(",")),
                                nprobes=nprobes, coarse=tuple(int(v) for v in a.coarse.split(",")), budget_s=a.budget, ctx=ctx,
                                exact_level1=not a.no_exact_level1, big=big, log_queries=a.log_queries,
                                first=a.query_start)
        del big
        rows += r
        H.write_suite(name, rows, out=a.out, env=env, tables={"per_query": per_query})
    if a.synthetic:
        rows += run_synthetic(idx, qs[:a.syn_queries], cfg, ann, a.synthetic, nprobes=nprobes, ctx=ctx)
    path = H.write_suite(name, rows, out=a.out, env=env, tables={"per_query": per_query})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
