"""The benchmark runner: ``python -m bench <suite|group> [--quick] [--device D] [--data DIR] [--out DIR]``.

Every benchmark module exposes ``suite(opts: bench.harness.Options)``; ``SUITES`` below is the one
registry of them (a new ``bench/bench_*.py`` is one more line here: tests/test_bench.py fails on a
module that is not registered). ``all`` runs every suite in turn; a suite that fails is reported
and the others still run (the exit status is then 1). Groups: ``speed`` / ``kernels`` (the kernel
benchmarks; ``--device cuda`` runs them on the GPU when one is present), ``all``.

Each suite writes ``<out>/<name>[_quick].json`` in the runner's one format (bench/harness.py: rows
of one schema, the environment, free-form ``tables``); ``--out`` defaults to ``bench/results`` for
full runs and to the git-ignored ``bench/results/quick`` for ``--quick`` runs, so a smoke run never
changes a tracked file. ``RESULTS.md`` is regenerated from every JSON file of the results folder:
``bench/RESULTS.md`` for ``bench/results``, ``<out>/RESULTS.md`` for any other folder.
"""
from __future__ import annotations

import argparse
import importlib
import resource
import sys
import traceback
from pathlib import Path
from typing import Callable, NamedTuple

from . import harness as H


class Suite(NamedTuple):
    module: str          # the benchmark module, which defines suite(opts)
    about: str           # what it measures (python -m bench --help)
    load: Callable       # imports the module (a literal name: no module is imported from a computed string)


# name -> Suite; `all` runs them in this order (cheap, widely used ones first)
SUITES: dict[str, Suite] = {
    "paper": Suite("bench.paper", "the ModelHub paper's published numbers (reference rows)",
                    lambda: importlib.import_module("bench.paper")),
    "minhash": Suite("bench.bench_minhash", "MinHash kernel vs rensa / datasketch, Jaccard error",
                    lambda: importlib.import_module("bench.bench_minhash")),
    "jslsh": Suite("bench.bench_jslsh", "JS-LSH adaptivity vs exact pairwise JS (partitions.js_divergence)",
                    lambda: importlib.import_module("bench.bench_jslsh")),
    "recon": Suite("bench.bench_recon", "fleet reconstruction error vs a loop over autoencoders",
                    lambda: importlib.import_module("bench.bench_recon")),
    "server": Suite("bench.bench_server", "socket vs embedded search latency, concurrent clients",
                    lambda: importlib.import_module("bench.bench_server")),
    "profile": Suite("bench.bench_profile", "where an add and a query spend their time",
                    lambda: importlib.import_module("bench.bench_profile")),
    "reliability": Suite("bench.reliability", "hostile parameters, wide queries, races, compaction",
                    lambda: importlib.import_module("bench.reliability")),
    "ingest": Suite("bench.bench_ingest", "hub.add of a 200k-row table vs pd.read_csv of the same CSV",
                    lambda: importlib.import_module("bench.bench_ingest")),
    "hub": Suite("bench.bench_hub", "the hub end to end on ER-Magellan: add, query latency, bytes per entry",
                    lambda: importlib.import_module("bench.bench_hub")),
    "sanity": Suite("bench.bench_sanity", "label-free methods on simple shifts of scikit-learn tables",
                    lambda: importlib.import_module("bench.bench_sanity")),
    "accuracy": Suite("bench.bench_accuracy", "predicted accuracy on label-skew zoos",
                    lambda: importlib.import_module("bench.bench_accuracy")),
    "quality": Suite("bench.quality", "selection quality on real data, beside the paper",
                    lambda: importlib.import_module("bench.quality")),
    "coverage": Suite("bench.bench_coverage", "coverage parameters tuned, reported on held-out seeds",
                    lambda: importlib.import_module("bench.bench_coverage")),
    "simex": Suite("bench.bench_simex", "SimEx fleet: correlation with transfer accuracy, batched scoring",
                    lambda: importlib.import_module("bench.bench_simex")),
    "embeddings": Suite("bench.bench_embeddings", "FAISS indexes over stored embeddings: recall vs speed",
                    lambda: importlib.import_module("bench.bench_embeddings")),
    "probelog": Suite("bench.bench_probelog", "ProbeLog logit search, collaborative probing",
                    lambda: importlib.import_module("bench.bench_probelog")),
    "scale": Suite("bench.scale", "hub size vs add throughput, query latency, bytes per entry, RSS",
                    lambda: importlib.import_module("bench.scale")),
    "size": Suite("bench.bench_size", "bytes per entry: compressed records (format 3) vs plain, same entries",
                    lambda: importlib.import_module("bench.bench_size")),
    "shortlist": Suite("bench.bench_shortlist", "the candidate stage's recall and speed-up",
                    lambda: importlib.import_module("bench.bench_shortlist")),
    "scale_out": Suite("bench.bench_scale_out", "Parquet sketching throughput, sharded search",
                    lambda: importlib.import_module("bench.bench_scale_out")),
    "bulk": Suite("bench.bench_bulk", "add_sketches entries/s vs LMDB writing the same bytes, its stage split",
                    lambda: importlib.import_module("bench.bench_bulk")),
}
GROUPS: dict[str, tuple[str, ...]] = {
    "speed": ("minhash", "jslsh", "recon"),
    "kernels": ("minhash", "jslsh", "recon"),
    "all": tuple(SUITES),
}


def run_suite(name: str, opts: H.Options, out=print) -> dict:
    """Run one registered suite; returns ``{"suite", "seconds", "ok", "error"}`` (an exception is
    caught and reported, so one broken suite does not hide the others)."""
    entry = SUITES[name]
    rec = {"suite": name, "ok": True, "error": None}
    cpu0 = _cpu_s()
    with H.stopwatch() as sw:
        try:
            entry.load().suite(opts)
        except SystemExit as e:    # argparse or an explicit exit inside a suite
            if e.code not in (0, None):
                rec.update(ok=False, error=f"exited with {e.code}")
        except Exception as e:  # noqa: BLE001 - reported, and the exit status says it
            traceback.print_exc()
            rec.update(ok=False, error=f"{type(e).__name__}: {e}")
    rec["seconds"], rec["cpu_s"] = sw.s, _cpu_s() - cpu0
    out(f"suite {name}: {sw.s:.1f} s ({rec['cpu_s']:.1f} CPU-s)" + ("" if rec["ok"] else f" FAILED ({rec['error']})"),
        flush=True)
    return rec


def _cpu_s() -> float:
    """CPU seconds of this process and its waited-for children: a suite's cost on a busy machine,
    where wall time also counts the time other processes held the cores."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def results_md_path(out_dir: Path) -> Path:
    """``bench/RESULTS.md`` for the tracked results folder, ``<out>/RESULTS.md`` for any other."""
    return H.RESULTS.parent / "RESULTS.md" if out_dir.resolve() == H.RESULTS.resolve() else out_dir / "RESULTS.md"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="suites:\n" + "\n".join(f"  {n:<12} {s.about}" for n, s in SUITES.items())
                                + "\ngroups:\n" + "\n".join(f"  {g:<12} {', '.join(s)}" for g, s in GROUPS.items()
                                                             if g != "all") + "\n  all          every suite")
    p.add_argument("suite", nargs="+", choices=tuple(SUITES) + tuple(GROUPS), metavar="SUITE",
                   help="suite(s) or group(s) to run (see below)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="device of the kernel benchmarks (minhash / jslsh / recon / simex)")
    p.add_argument("--quick", action="store_true", help="small sizes: every suite in a few minutes on 2 cores")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic workloads (default 0)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per measurement (default: the suite's)")
    p.add_argument("--data", type=Path, default=None,
                   help="folder holding er_magellan/ and the paper's tables (default ../shared/data)")
    p.add_argument("--out", type=Path, default=None,
                   help=f"results folder (default {H.RESULTS}; with --quick {H.QUICK_RESULTS})")
    args = p.parse_args(argv)
    names: list[str] = []
    for s in args.suite:
        for n in GROUPS.get(s, (s,)):
            if n not in names:
                names.append(n)
    out_dir = H.results_dir(args.out, args.quick).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    opts = H.Options(quick=args.quick, out_dir=out_dir, device=args.device, data=args.data, seed=args.seed,
                     repeats=args.repeats)
    done = []
    with H.stopwatch() as sw:
        for n in names:
            print(f"\n===== suite {n}{' (quick)' if args.quick else ''}", flush=True)
            done.append(run_suite(n, opts))
    md = H.write_results_md(out_dir, results_md_path(out_dir))
    print(f"\nwrote {md}; {len(done)} suite(s) in {sw.s:.1f} s ({sum(r['cpu_s'] for r in done):.0f} CPU-s): "
          + ", ".join(f"{r['suite']} {r['seconds']:.0f} s" for r in done))
    failed = [r for r in done if not r["ok"]]
    if failed:   # the other suites ran and wrote their results; the exit status still says it
        print("failed: " + "; ".join(f"{r['suite']}: {r['error']}" for r in failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
