"""Reliability figures of bench/SUMMARY.md (issue 23): ``python -m bench reliability`` (every attack)
or ``python -m bench.reliability [params|wide|race|compact ...] [--quick]``.

Each attack prints one line: what the engine answered and how long / how much memory it took; the
suite writes one row per attack (``answer`` = the answer or the error's name, ``value`` = seconds).
``--quick`` churns 150 entries instead of 1,500, races 60 searches instead of 300 and leaves out
``wide`` (adding its 10,000-column entry takes a minute); the sizes the answers depend on are the same. The server's memory under pre-authentication
attacks is measured by ``pytest -m slow -s tests/test_hardening_server.py -k memory``.
"""
from __future__ import annotations

import collections
import os
import resource
import shutil
import tempfile
import threading

import numpy as np
import pandas as pd

from . import harness as H

ATTACKS = ("params", "wide", "race", "compact")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10


def _answer(fn) -> tuple[str, float]:
    """(what ``fn()`` answered: "answered ..." or the FitsketchError's class name, wall seconds)."""
    from fitsketch import errors as E

    with H.stopwatch() as sw:
        try:
            r = fn()
            what = "answered" + (f" ({len(r)} match)" if isinstance(r, list) else "")
        except E.FitsketchError as e:
            what = type(e).__name__
    return what, sw.s


def compact(rng, d: str, ctx, quick: bool) -> list[dict]:
    import fitsketch

    n_churn = 150 if quick else 1500
    rows = []
    with fitsketch.open(os.path.join(d, "h")) as hub:
        sks = [(f"e{i}", fitsketch.sketch_data(pd.DataFrame({"a": rng.normal(i % 7, 1, 500),
                                                             "b": rng.integers(0, 100, 500),
                                                             "c": rng.choice(list("abcdefgh"), 500)}), hub.config))
               for i in range(20 + n_churn)]
        hub.add_sketches(sks[:20])
        with H.stopwatch() as churn:
            for n, sk in sks[20:]:
                hub.add_sketch(n, sk)
            for n, _ in sks[20:]:
                hub.remove(n)
        with fitsketch.open(os.path.join(d, "fresh")) as fresh:
            fresh.add_sketches(sks[:20])
            live = fresh.store.env_bytes()
        with H.stopwatch() as sw:
            out = hub.compact()
    print(f"compact: {n_churn} entries added then removed one by one ({churn.s:.0f} s): "
          f"{out['before'] / 2**20:.1f} MB -> {out['after'] / 2**20:.2f} MB in {sw.s:.2f} s; the 20 live entries "
          f"in a fresh hub: {live / 2**20:.2f} MB (ratio {out['after'] / live:.2f})")
    wl = f"churn: {n_churn} entries added then removed"
    rows.append(H.row(ctx, "reliability", wl, "hub.compact", "bytes_after", out["after"], unit="B",
                      baseline="20 live entries in a fresh hub", baseline_value=live, bytes_before=out["before"],
                      compact_s=sw.s, churn_s=churn.s))
    return rows


def wide(rng, d: str, ctx, quick: bool) -> list[dict]:
    import fitsketch

    rows = []
    with fitsketch.open(os.path.join(d, "h")) as hub:
        hub.add("wide", pd.DataFrame(rng.normal(size=(3, 10000)), columns=[f"c{i}" for i in range(10000)]))
        for ncol in (20000, 2048):
            q = pd.DataFrame(rng.normal(size=(1, ncol)), columns=[f"c{i}" for i in range(ncol)])
            what, s = _answer(lambda: hub.search(q, k=1))
            print(f"wide query: 1 row x {ncol} columns vs a 10,000-column entry: {what} in {s:.2f} s, "
                  f"peak RSS {_peak_mb():.0f} MB")
            rows.append(H.row(ctx, "reliability", f"wide query: 1 row x {ncol} columns vs 10,000", "search",
                              "seconds", s, unit="s", answer=what, peak_rss_mb=_peak_mb()))
    return rows


def params(rng, d: str, ctx, quick: bool) -> list[dict]:
    import fitsketch

    rows = []
    with fitsketch.open(os.path.join(d, "h")) as hub:
        hub.add_sketches([(f"e{i}", fitsketch.sketch_data(pd.DataFrame({"a": rng.normal(i % 5, 1, 300),
                                                                        "b": rng.integers(0, 9, 300)}), hub.config))
                          for i in range(47)])
        q = pd.DataFrame({"a": rng.normal(0, 1, 300), "b": rng.integers(0, 9, 300)})
        for kw in (dict(jslsh_l=10**6), dict(jslsh_l=10**7), dict(jslsh_k=10**7), dict(k=10**9),
                   dict(jslsh_k=64, jslsh_l=64), dict(jslsh_l=1024)):
            what, s = _answer(lambda: hub.search(q, method="js", **kw))
            print(f"search{kw} on 47 entries: {what} in {s * 1e3:.0f} ms")
            rows.append(H.row(ctx, "reliability", "search on 47 entries", f"search{kw}", "seconds", s, unit="s",
                              answer=what))
        hub.add("emb", q, embedding=rng.normal(size=(300, 8)).astype(np.float32))
        for kw in (dict(k=10**9), dict(k=10**9, level="entry"), dict(k=10**6, level="entry"), dict(k=10**5)):
            what, s = _answer(lambda: hub.nearest(rng.normal(size=(1, 8)).astype(np.float32), **kw))
            print(f"nearest{kw}: {what} in {s * 1e3:.0f} ms, peak RSS {_peak_mb():.0f} MB")
            rows.append(H.row(ctx, "reliability", "nearest on 301 embeddings", f"nearest{kw}", "seconds", s,
                              unit="s", answer=what, peak_rss_mb=_peak_mb()))
    return rows


def race(rng, d: str, ctx, quick: bool) -> list[dict]:
    import fitsketch
    from fitsketch import errors as E
    from fitsketch.server import Server

    n_search = 60 if quick else 300
    srv = Server(os.path.join(d, "h"), socket_path=os.path.join(d, "s"), warm=False).start()
    try:
        hub = srv.hub
        sks = [(f"e{i}", fitsketch.sketch_data(pd.DataFrame({"a": rng.normal(i % 5, 1, 200),
                                                             "b": rng.integers(0, 9, 200)}), hub.config))
               for i in range(40)]
        hub.add_sketches(sks)
        stop = threading.Event()

        def churn():
            while not stop.is_set():
                for n, sk in sks[:20]:
                    hub.remove(n)
                    hub.add_sketch(n, sk)

        t = threading.Thread(target=churn)
        t.start()
        q = pd.DataFrame({"a": rng.normal(0, 1, 200), "b": rng.integers(0, 9, 200)})
        out = collections.Counter()
        try:
            with fitsketch.connect(srv.url()) as c:
                def one(_):
                    try:
                        c.search(q, k=3, shortlist=4)
                        out["answered"] += 1
                    except E.FitsketchError as e:
                        out[e.code] += 1

                lat = H.time_each(one, range(n_search))
        finally:
            stop.set()
            t.join()
    finally:
        srv.stop()
    print(f"race over the server, {n_search} searches (shortlist=4, 40 entries) while a thread removes and "
          f"re-adds 20:", dict(out))
    return [H.row(ctx, "reliability", f"race: {n_search} searches while 20 of 40 entries churn", "socket search",
                  "answered", out["answered"], unit=f"of {n_search}", baseline="all", baseline_value=n_search,
                  errors=dict(out), p50_s=lat["p50_s"], p90_s=lat["p90_s"])]


def run(attacks=ATTACKS, quick: bool = False, out_dir=None, seed: int = 7) -> list[dict]:
    ctx = H.context("cpu", quick)
    rows = []
    for which in attacks:
        rng = np.random.default_rng(seed)       # each attack on the data it had as a command of its own
        d = tempfile.mkdtemp(prefix=f"fitsketch-bench-reliability-{which}-", dir="/tmp")
        try:
            rows += globals()[which](rng, d, ctx, quick)
        finally:
            shutil.rmtree(d, ignore_errors=True)
    H.write_suite("reliability_quick" if quick else "reliability", rows, out=out_dir, quick=quick)
    return rows


QUICK_ATTACKS = ("params", "race", "compact")


def suite(opts: H.Options) -> list[dict]:
    default = QUICK_ATTACKS if opts.quick else ATTACKS
    return run(tuple(opts.extra.get("attacks") or default), quick=opts.quick, out_dir=opts.out_dir)


def main(argv=None) -> list[dict]:
    p = H.parser(__doc__.splitlines()[0])
    p.add_argument("attacks", nargs="*", help=f"attacks to run (default all: {', '.join(ATTACKS)})")
    a = p.parse_args(argv)
    bad = [x for x in a.attacks if x not in ATTACKS]
    if bad:
        p.error(f"unknown attack(s) {bad}: choose among {', '.join(ATTACKS)}")
    return suite(H.options(a, attacks=list(a.attacks)))


if __name__ == "__main__":
    main()
