"""The benchmark runner: ``python -m bench <suite> [--quick] [--data DIR] [--out DIR]``.

Suites: ``quality`` (selection quality on real data), ``accuracy`` (predicted accuracy on
label-skew zoos, bench.bench_accuracy), ``sanity`` (the label-free methods on simple shifts of
scikit-learn's bundled tables: bench.bench_sanity), ``speed`` or ``kernels`` (the kernel
benchmarks bench.bench_minhash / bench_jslsh / bench_recon; ``--device cuda`` runs them on the
GPU when one is present), ``server`` (socket vs embedded latency), ``scale`` (hub size vs add
throughput, query latency, bytes per entry, RSS; then bench.bench_shortlist: the shortlist's recall),
``profile`` (where an add and a query spend their time, stage by stage: bench.bench_profile), ``all``.
Each suite writes ``<out>/<suite>[_quick].json`` (every writer, the kernel benchmarks included,
honours ``--out``, so ``--out`` in a temporary folder leaves the tracked ``bench/results`` alone);
``RESULTS.md`` beside the results folder is regenerated from every JSON file there (full runs,
then quick runs apart), plots are PNGs in the results folder.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import time
from pathlib import Path

from . import harness as H

SPEED_MODULES = ("bench.bench_minhash", "bench.bench_jslsh", "bench.bench_recon")


def run_speed(quick: bool, out_dir: Path, out=print, device: str = "auto") -> dict:
    ran, skipped = [], []
    for mod in SPEED_MODULES:
        if importlib.util.find_spec(mod) is None:
            msg = f"speed: {mod} is absent: skipped"
            out(msg)
            skipped.append(msg)
            continue
        out(f"\n== speed: {mod}{' --quick' if quick else ''}")
        t0 = time.perf_counter()
        try:
            importlib.import_module(mod).main((["--quick"] if quick else []) + ["--device", device,
                                                                                "--out", str(out_dir)])
        except SystemExit as e:  # argparse inside main
            if e.code not in (0, None):
                skipped.append(f"speed: {mod} exited with {e.code}")
                continue
        except Exception as e:  # one broken benchmark must not hide the others
            msg = f"speed: {mod} failed: {type(e).__name__}: {e}"
            out(msg)
            skipped.append(msg)
            continue
        ran.append((mod, time.perf_counter() - t0))
    return {"ran": ran, "skipped": skipped}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("suite", choices=("quality", "accuracy", "sanity", "speed", "kernels", "server", "scale", "profile",
                                     "all"))
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="device of the kernel benchmarks (speed / kernels)")
    p.add_argument("--quick", action="store_true", help="small sizes: every suite in under 5 minutes on 2 cores")
    p.add_argument("--data", type=Path, default=None,
                   help="folder holding er_magellan/ (default: ../shared/data relative to the repo root)")
    p.add_argument("--out", type=Path, default=None, help=f"results folder (default {H.RESULTS})")
    args = p.parse_args(argv)
    out_dir = (args.out or H.RESULTS).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    suites = ("quality", "accuracy", "sanity", "speed", "server", "scale") if args.suite == "all" else (args.suite,)
    t0 = time.perf_counter()
    failed: list[str] = []
    for s in suites:
        print(f"\n===== suite {s}{' (quick)' if args.quick else ''}", flush=True)
        ts = time.perf_counter()
        if s == "quality":
            from . import quality

            quality.run(quick=args.quick, data=args.data, out_dir=out_dir)
        elif s == "accuracy":
            from . import bench_accuracy

            bench_accuracy.run(quick=args.quick, out_dir=out_dir)
        elif s == "sanity":
            from . import bench_sanity

            bench_sanity.run(quick=args.quick, out_dir=out_dir)
        elif s == "scale":
            from . import bench_shortlist, scale

            scale.run(quick=args.quick, out_dir=out_dir)
            bench_shortlist.run(quick=args.quick, out_dir=out_dir)
        elif s == "server":
            from . import bench_server

            bench_server.run(quick=args.quick, out_dir=out_dir)
        elif s == "profile":
            from . import bench_profile

            bench_profile.run(quick=args.quick, out_dir=out_dir)
        else:
            failed += [m for m in run_speed(args.quick, out_dir, device=args.device)["skipped"] if "failed" in m
                       or "exited" in m]
        print(f"suite {s}: {time.perf_counter() - ts:.1f} s", flush=True)
    md = H.write_results_md(out_dir, (out_dir.parent / "RESULTS.md"))
    print(f"\nwrote {md} ({time.perf_counter() - t0:.1f} s in all)")
    if failed:   # the other suites ran and wrote their results; the exit status still says it
        print("failed: " + "; ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
