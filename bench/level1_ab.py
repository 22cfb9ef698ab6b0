"""The two-level candidate stage at 1M entries, this tree's engine against another commit's, in one
process (issue 21 item 4 "1M p50 <= 50 ms"): CPU per query under the same load and page cache, and
whether the two engines' screens are the same. Not a suite (it needs bench/level1_pool.py's 1M index).

    git archive <commit> engine kernels storage | tar -x -C B
    mv B/engine B/fitsketch_before && mv B/kernels B/storage B/fitsketch_before/
    PYTHONPATH=B python -m bench.level1_ab --dir /tmp/depth1m-idx --before-name <commit> --query-seed 6 \
        --queries 50 --time "js:128/128;adaptivity:64/128;exact-js:2/128;l2:8/128"

The other commit's engine is the package ``fitsketch_before`` on ``PYTHONPATH`` (laid out as fitsketch
is installed: engine/ with kernels/ and storage/ inside; imported by name, no computed import).
Both engines open the same memory-mapped index (``level1_pool.open_index``, each with its own classes)
and share the one level-1 IVF (``level1_pool.level1_of``). Per method and query the stage
(``coarse.scores`` + ``screen.choose``, as bench.level1_pool times it) runs once in each engine,
alternating which runs first, after one untimed warm-up query each. Reported per method: CPU
(``time.process_time``) and wall p50 / p90 of each engine and the ratio; the queries whose screens
are bit-identical (ids, score, tiebreak, exact) or a superset of the before screen's entries with
equal scores, whose chosen shortlists are equal, and where level 1 kept more rows in one engine (ties
at the cut). The recall against the exact screen of every entry is bench.level1_pool's; this shows
where the two engines' stages agree.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from . import harness as H


def load_before():
    """The other commit's engine: the package ``fitsketch_before`` (module docstring) and its modules."""
    try:
        import fitsketch_before
        import fitsketch_before.coarse
        import fitsketch_before.growable
        import fitsketch_before.profiles
        import fitsketch_before.screen
    except ImportError as e:
        raise SystemExit(f"bench.level1_ab needs the other commit's engine as the package fitsketch_before on "
                         f"PYTHONPATH (see python -m bench.level1_ab --help): {e}")
    return fitsketch_before


def main(argv=None) -> None:
    from fitsketch import planner

    from . import level1_pool as LP
    from . import zoos

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, required=True, help="bench.level1_pool's index folder")
    ap.add_argument("--before-name", default="fitsketch_before", help="what the other engine is (a commit), for the rows")
    ap.add_argument("--query-seed", type=int, required=True)
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--time", default="js:128/128;adaptivity:64/128;exact-js:2/128;l2:8/128",
                    help="method:depth/nprobe;... (depth x 256 rows kept by level 1)")
    ap.add_argument("--tag", default="")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default bench/results)")
    a = ap.parse_args(argv)
    shortlist = 256
    import fitsketch.coarse
    import fitsketch.screen

    before = load_before()
    engines = {"before": (before.coarse, before.screen), "after": (fitsketch.coarse, fitsketch.screen)}
    idx_after, pool = LP.open_index(a.dir)
    idx_before, _ = LP.open_index(a.dir, before)
    ann, _ = LP.level1_of(idx_after, a.dir)
    ann_before = engines["before"][0].Level1Ann(ann.basis, ann.index, ann.ids, ann.coord_keys)
    held = {"before": (idx_before, ann_before), "after": (idx_after, ann)}
    cfg = pool.cfg
    ctx, env = H.context("cpu", False), H.environment("cpu")
    qs, small = zoos.query_sketches(pool, a.queries, a.query_seed)
    rows, per_query = [], []
    for part in filter(None, a.time.split(";")):
        method, setting = part.split(":")
        depth, nprobe = (int(x) for x in setting.split("/"))
        keep = depth * shortlist
        rule = planner.shortlist_rule(method)     # the planner's rule (the same object for both engines)
        t = {v: H.Samples() for v in held}
        for qi, q in enumerate(qs):
            ts = small[method][qi] if method in small else None
            got = {}
            for v in (("before", "after") if qi % 2 == 0 else ("after", "before")):
                co, sc = engines[v]
                idx, an = held[v]

                def stage():
                    scr, info = co.scores(idx, q, method, keep=keep, nprobe=nprobe, ann=an, shortlist=shortlist,
                                          seed=cfg.seed, t_small=ts)
                    ids, _ = sc.choose(scr, rule, shortlist, 10, planner.SHORTLIST_MARGIN_CAP * shortlist)
                    return scr, info, ids
                if qi == 0:
                    stage()                                  # warm-up
                got[v] = t[v].call(stage)
            (s0, i0, c0), (s1, i1, c1) = got["before"], got["after"]
            pq = {"method": method, "depth": depth, "nprobe": nprobe, "query_seed": a.query_seed, "query": qi,
                  "cpu_ms_before": 1e3 * t["before"].cpu[-1], "cpu_ms_after": 1e3 * t["after"].cpu[-1],
                  "same_screen": all(np.array_equal(s0[k], s1[k]) for k in ("ids", "score", "tiebreak", "exact")),
                  "same_chosen": set(c0.tolist()) == set(c1.tolist()),
                  # the after screen holds every entry of the before one, with the same score
                  "superset_screen": bool(np.isin(s0["ids"], s1["ids"]).all()) and np.array_equal(
                      s1["score"][np.isin(s1["ids"], s0["ids"])], s0["score"]),
                  "level1_kept_before": int(i0["coarse_kept"]), "level1_kept_after": int(i1["coarse_kept"])}
            per_query.append(pq)
        qn = [p for p in per_query if p["method"] == method and p["depth"] == depth and p["nprobe"] == nprobe]
        st = {v: s.stats() for v, s in t.items()}
        ms = lambda v, k="p50_s", w="cpu": 1e3 * (st[v][w] if w == "cpu" else st[v])[k]   # noqa: E731
        same, chosen = sum(p["same_screen"] for p in qn), sum(p["same_chosen"] for p in qn)
        sup = sum(p["superset_screen"] for p in qn)
        more = sum(p["level1_kept_after"] != p["level1_kept_before"] for p in qn)
        print(f"{method} {depth}/{nprobe}: CPU p50 / p90 before {ms('before'):.1f} / {ms('before', 'p90_s'):.1f}, "
              f"after {ms('after'):.1f} / {ms('after', 'p90_s'):.1f} ms (wall p50 {ms('before', w='wall'):.1f} -> "
              f"{ms('after', w='wall'):.1f}); screens equal {same}/{len(qn)} "
              f"(a superset with equal scores {sup}/{len(qn)}), "
              f"shortlists equal {chosen}/{len(qn)}, "
              f"level 1 kept other counts in {more} (ties at the cut); load {H.load_average()}", flush=True)
        rows.append(H.row(ctx, "level1_ab", f"{idx_after.ids.n} digits pool entries, depth {depth} x 256, "
                          f"{nprobe} lists", method, "stage_cpu_p50", ms("after"), unit="ms",
                          baseline=f"engine {a.before_name} in the same process", baseline_value=ms("before"),
                          cpu_p90_ms=ms("after", "p90_s"), baseline_cpu_p90_ms=ms("before", "p90_s"),
                          wall_p50_ms=ms("after", w="wall"), baseline_wall_p50_ms=ms("before", w="wall"),
                          same_screens=same, superset_screens=sup, same_shortlists=chosen,
                          level1_other_counts=more, queries=len(qn),
                          query_seed=a.query_seed, load_avg_1m=H.load_average()))
    print(f"wrote {H.write_suite(f'level1_ab{a.tag}', rows, out=a.out, env=env, tables={'per_query': per_query})}")


if __name__ == "__main__":
    main()
