"""Reliability figures of bench/SUMMARY.md (issue 23): ``python -m bench.reliability params|wide|race|compact``.

Each prints one line per attack: what the engine answered and how long / how much memory it took.
The server's memory under pre-authentication attacks is measured by
``pytest -m slow -s tests/test_hardening_server.py -k memory``.
"""
import os
import resource
import sys
import tempfile
import time

import numpy as np
import pandas as pd

import fitsketch
from fitsketch import errors as E

rng = np.random.default_rng(7)
d = tempfile.mkdtemp()
which = sys.argv[1] if len(sys.argv) > 1 else "params"
if which == "compact":
    with fitsketch.open(os.path.join(d, "h")) as hub:
        sks = [(f"e{i}", fitsketch.sketch_data(pd.DataFrame({"a": rng.normal(i % 7, 1, 500), "b": rng.integers(0, 100, 500),
                                                       "c": rng.choice(list("abcdefgh"), 500)}), hub.config)) for i in range(1520)]
        hub.add_sketches(sks[:20])
        t = time.perf_counter()
        for n, sk in sks[20:]:
            hub.add_sketch(n, sk)
        for n, _ in sks[20:]:
            hub.remove(n)
        churn = time.perf_counter() - t
        with fitsketch.open(os.path.join(d, "fresh")) as fresh:
            fresh.add_sketches(sks[:20])
            live = fresh.store.env_bytes()
        t = time.perf_counter()
        out = hub.compact()
        print(f"compact: 1500 entries added then removed one by one ({churn:.0f} s): {out['before']/2**20:.1f} MB -> "
              f"{out['after']/2**20:.2f} MB in {time.perf_counter()-t:.2f} s; the 20 live entries in a fresh hub: {live/2**20:.2f} MB "
              f"(ratio {out['after']/live:.2f})")
elif which == "wide":
    with fitsketch.open(os.path.join(d, "h")) as hub:
        hub.add("wide", pd.DataFrame(rng.normal(size=(3, 10000)), columns=[f"c{i}" for i in range(10000)]))
        for ncol in (20000, 2048):
            q = pd.DataFrame(rng.normal(size=(1, ncol)), columns=[f"c{i}" for i in range(ncol)])
            t = time.perf_counter()
            try:
                r = hub.search(q, k=1)
                what = f"answered ({len(r)} match)"
            except E.FitsketchError as e:
                what = f"{type(e).__name__}"
            print(f"wide query: 1 row x {ncol} columns vs a 10,000-column entry: {what} in {time.perf_counter()-t:.2f} s, "
                  f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/2**10:.0f} MB")
elif which == "params":
    with fitsketch.open(os.path.join(d, "h")) as hub:
        hub.add_sketches([(f"e{i}", fitsketch.sketch_data(pd.DataFrame({"a": rng.normal(i % 5, 1, 300), "b": rng.integers(0, 9, 300)}), hub.config)) for i in range(47)])
        q = pd.DataFrame({"a": rng.normal(0, 1, 300), "b": rng.integers(0, 9, 300)})
        for kw in (dict(jslsh_l=10**6), dict(jslsh_l=10**7), dict(jslsh_k=10**7), dict(k=10**9), dict(jslsh_k=64, jslsh_l=64), dict(jslsh_l=1024)):
            t = time.perf_counter()
            try:
                hub.search(q, method="js", **kw)
                what = "answered"
            except E.FitsketchError as e:
                what = type(e).__name__
            print(f"search{kw} on 47 entries: {what} in {(time.perf_counter()-t)*1e3:.0f} ms")
        hub.add("emb", q, embedding=rng.normal(size=(300, 8)).astype(np.float32))
        for kw in (dict(k=10**9), dict(k=10**9, level="entry"), dict(k=10**6, level="entry"), dict(k=10**5)):
            t = time.perf_counter()
            try:
                hub.nearest(rng.normal(size=(1, 8)).astype(np.float32), **kw)
                what = "answered"
            except E.FitsketchError as e:
                what = type(e).__name__
            print(f"nearest{kw}: {what} in {(time.perf_counter()-t)*1e3:.0f} ms, peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/2**10:.0f} MB")
elif which == "race":
    import collections, threading
    from fitsketch.server import Server

    d = tempfile.mkdtemp(dir="/tmp")
    srv = Server(os.path.join(d, "h"), socket_path=os.path.join(d, "s"), warm=False).start()
    hub = srv.hub
    sks = [(f"e{i}", fitsketch.sketch_data(pd.DataFrame({"a": rng.normal(i % 5, 1, 200), "b": rng.integers(0, 9, 200)}), hub.config)) for i in range(40)]
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
    with fitsketch.connect(srv.url()) as c:
        for i in range(300):
            try:
                c.search(q, k=3, shortlist=4)
                out["answered"] += 1
            except E.FitsketchError as e:
                out[e.code] += 1
    stop.set()
    t.join()
    srv.stop()
    print("race over the server, 300 searches (shortlist=4, 40 entries) while a thread removes and re-adds 20:", dict(out))
