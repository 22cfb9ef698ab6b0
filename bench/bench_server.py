"""Search through the socket server vs embedded: latency (p50/p99) and requests/s with 1, 4, 16 clients.

The same hub content is searched embedded (``fitsketch.open``) and through a ``Server`` on a Unix
socket in this process's machine; the query is sent as data (a dict of columns) each time, so
the server also pays for decoding it. Baseline: the embedded search measured in the same run.

    python -m bench.bench_server [--quick]
"""
from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

import numpy as np
import pandas as pd

from . import harness as H


def _frame(rng, n, shift):
    return pd.DataFrame({f"f{j}": rng.normal(shift + j % 3, 1.0, n) for j in range(16)})


def _lat(fn, n) -> dict:
    """``harness.stats`` of ``n`` timed calls of ``fn`` (after the caller's warm-up call)."""
    return H.timeit(fn, repeats=n, warmup=0)


def run(quick: bool = False, out_dir: Path | None = None, out=print) -> list[dict]:
    import fitsketch
    from fitsketch.server import Server

    rng = np.random.default_rng(0)
    n_entries, n_queries = (20, 20) if quick else (100, 50)
    ctx = H.context(quick=quick)
    rows = []
    with tempfile.TemporaryDirectory(prefix="fsb-", dir="/tmp") as tmp:
        hub_path = Path(tmp) / "hub"
        with fitsketch.open(hub_path, config=fitsketch.SketchConfig(partition_size=100)) as hub:
            for i in range(n_entries):
                hub.add(f"e{i}", _frame(rng, 300, i % 7))
        q = _frame(rng, 200, 3).to_dict(orient="list")
        with fitsketch.open(hub_path) as hub:
            hub.search(q)
            emb = _lat(lambda: hub.search(q, k=5), n_queries)
        srv = Server(hub_path, socket_path=os.path.join(tmp, "s.sock")).start()
        try:
            with fitsketch.connect(srv.url()) as c:
                c.search(q)
                sock = _lat(lambda: c.search(q, k=5), n_queries)
            p50e, p50s = emb["p50_s"], sock["p50_s"]
            out(f"search p50: embedded {p50e * 1e3:.1f} ms, socket {p50s * 1e3:.1f} ms "
                f"(overhead {p50s / p50e:.2f}x; target <= 1.2x); p99 {emb['p99_s'] * 1e3:.1f} / "
                f"{sock['p99_s'] * 1e3:.1f} ms")
            rows.append(H.row(ctx, "server", "search", "socket", "p50_ms", p50s * 1e3, unit="ms",
                              baseline="embedded p50", baseline_value=p50e * 1e3))
            rows.append(H.row(ctx, "server", "search", "socket", "p99_ms", sock["p99_s"] * 1e3, unit="ms",
                              baseline="embedded p99", baseline_value=emb["p99_s"] * 1e3))
            for n_clients in (1, 4, 16):
                per = max(2, n_queries // n_clients) if quick else max(4, 2 * n_queries // n_clients)
                done = []
                errors = []

                def worker():
                    try:
                        with fitsketch.connect(srv.url()) as c:
                            for _ in range(per):
                                c.search(q, k=5)
                                done.append(1)
                    except Exception as e:  # noqa: BLE001 - reported below
                        errors.append(e)

                threads = [threading.Thread(target=worker) for _ in range(n_clients)]
                with H.stopwatch() as sw:
                    for t in threads:
                        t.start()
                    for t in threads:
                        t.join()
                rps = len(done) / sw.s
                out(f"{n_clients:>2} clients: {rps:.1f} requests/s ({len(errors)} errors)")
                rows.append(H.row(ctx, "server", "search", f"{n_clients} clients", "requests_per_s", rps,
                                  unit="req/s", baseline="embedded, 1 thread", baseline_value=1.0 / p50e,
                                  errors=len(errors)))
        finally:
            srv.stop()
    H.write_suite("server_quick" if quick else "server", rows, out=out_dir, quick=quick)
    return rows


def suite(opts: H.Options) -> list[dict]:
    return run(quick=opts.quick, out_dir=opts.out_dir)


def main(argv=None) -> None:
    suite(H.options(H.parser(__doc__.splitlines()[0]).parse_args(argv)))


if __name__ == "__main__":
    main()
