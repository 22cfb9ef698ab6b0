"""The ``fitsketch`` command line: init | add | search | show | remove | serve | simex |
search-logits | search-concept | bench | demo.

Every command that prints results takes ``--json``. Errors print one line to stderr and exit
with status 2 (bad input, a FitsketchError) or 1 (anything unexpected).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

import numpy as np

from . import errors as E

log = logging.getLogger(__name__)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, bytes):
        return obj.hex()
    return obj


def _emit(args, obj, text: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps(_jsonable(obj), indent=None, sort_keys=True))
    else:
        print(text)


def _json_arg(value: str, what: str) -> dict:
    try:
        out = json.loads(value)
    except json.JSONDecodeError as e:
        raise E.InvalidArgumentError(f"--{what} is not valid JSON ({e.msg}): e.g. --{what} '{{\"task\": \"em\"}}'") from None
    if not isinstance(out, dict):
        raise E.InvalidArgumentError(f"--{what} must be a JSON object, got {type(out).__name__}")
    return out


def _npy_arg(path: str, what: str):
    import numpy as np

    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise E.UnsupportedDataError(f"--{what} {path!r} cannot be read as a .npy array ({e}): "
                                     f"save it with numpy.save(path, array)") from None


def cmd_init(args) -> None:
    import fitsketch

    overrides = {k: v for k, v in (("seed", args.seed), ("partition_size", args.partition_size),
                                   ("num_perm", args.num_perm), ("lsh_k", args.lsh_k), ("lsh_l", args.lsh_l))
                 if v is not None}
    if "num_perm" in overrides and "lsh_l" not in overrides:
        overrides["lsh_l"] = overrides["num_perm"] // overrides.get("lsh_k", 4)
    cfg = fitsketch.SketchConfig().replace(**overrides)
    with fitsketch.open(args.hub, config=cfg) as hub:
        st = hub.stats()
    _emit(args, st, f"hub {args.hub}: {st['entries']} entries, seed {cfg.seed}, partition size {cfg.partition_size}")


def cmd_add(args) -> None:
    import fitsketch

    meta = _json_arg(args.metadata, "metadata") if args.metadata else None
    if (args.data is None) == (args.parquet is None):
        raise E.InvalidArgumentError("give either a DATA file or --parquet GLOB (not both)")
    with fitsketch.open(args.hub, create=False) as hub:
        if args.parquet is not None:
            from .distributed import add_parquet

            entry = add_parquet(hub, args.name, args.parquet, metadata=meta,
                                engine="ray" if args.ray is not None else "processes",
                                address=args.ray or None, workers=args.workers,
                                partition_size=args.partition_size, progress=not args.json)
        else:
            entry = hub.add(args.name, args.data, metadata=meta, partition_size=args.partition_size,
                            progress=not args.json and sys.stderr.isatty())
    _emit(args, entry.to_dict(), f"added {entry.name!r}: {entry.n_rows} rows, {len(entry.features)} features, "
                                 f"{entry.n_partitions} partitions")


def _query_overrides(args) -> dict:
    return {k: v for k, v in (("feature_threshold", args.feature_threshold),
                              ("overlap_threshold", args.overlap_threshold), ("match", args.match),
                              ("jslsh_r", args.r), ("jslsh_k", args.jslsh_k), ("jslsh_l", args.jslsh_l),
                              ("coverage_tau", args.tau), ("coverage_space", args.coverage_space),
                              ("simex_loss", args.loss), ("shortlist", args.shortlist),
                              ("simex_normalize", False if args.no_normalize else None))
            if v is not None}


def format_matches(matches) -> str:
    if not matches:
        return "no matches"
    lines = [f"{'rank':>4}  {'name':<24} {'score':>9} {'overlap':>7}  evidence"]
    for i, m in enumerate(matches):
        ev = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in m.evidence.items())
        lines.append(f"{i + 1:>4}  {m.name:<24} {m.score:>9.4f} {m.overlap:>7.2f}  {ev}")
        shared = ", ".join(t if t == s else f"{t}~{s}" for t, s, _ in m.features[:8])
        more = f" (+{len(m.features) - 8} more)" if len(m.features) > 8 else ""
        lines.append(f"{'':>6}shared: {shared}{more}")
    return "\n".join(lines)


def cmd_search(args) -> None:
    import fitsketch

    where = _json_arg(args.where, "where") if args.where else None
    with fitsketch.open(args.hub, create=False, readonly=True) as hub:
        kw = dict(k=args.k, method=args.method, where=where, **_query_overrides(args))
        if args.embedding:
            kw["embedding"] = _npy_arg(args.embedding, "embedding")
        if args.explain:
            plan = hub.explain(args.data, **kw)
            _emit(args, plan.to_dict(), str(plan))
            return
        matches = hub.search(args.data, **kw)
    _emit(args, [m.to_dict() for m in matches], format_matches(matches))


def cmd_show(args) -> None:
    import fitsketch

    if args.name is None:
        header = fitsketch.inspect(args.hub)
        with fitsketch.open(args.hub, create=False, readonly=True) as hub:
            names = hub.names()
        header["names"] = names
        text = "\n".join([f"{k}: {v}" for k, v in header.items() if k not in ("names", "config")] +
                         [f"config: {header.get('config')}", f"entries: {', '.join(names) if names else '(none)'}"])
        _emit(args, header, text)
        return
    with fitsketch.open(args.hub, create=False, readonly=True) as hub:
        e = hub.get(args.name)
    _emit(args, e.to_dict(), "\n".join(f"{k}: {v}" for k, v in e.to_dict().items()))


def cmd_remove(args) -> None:
    import fitsketch

    with fitsketch.open(args.hub, create=False) as hub:
        hub.remove(args.name)
        n = len(hub)
    _emit(args, {"removed": args.name, "entries": n}, f"removed {args.name!r}; {n} entries left")


def cmd_compact(args) -> None:
    import fitsketch

    with fitsketch.open(args.hub, create=False) as hub:
        out = hub.compact()
    _emit(args, out, f"compacted {args.hub}: {out['before']:,} -> {out['after']:,} bytes")


def cmd_simex_classes(args) -> None:
    from . import simex
    from .data import to_frame

    df = to_frame(args.data)
    if args.labels not in df.columns:
        raise E.InvalidArgumentError(f"--labels {args.labels!r} is not a column of {args.data}: columns are {list(df.columns)}")
    labels = df[args.labels].to_numpy()
    X = simex.numeric_matrix(df.drop(columns=[args.labels]))
    shape = tuple(int(v) for v in args.image_shape.split(",")) if args.image_shape else None
    classes, m = simex.class_similarity(X, labels, image_shape=shape, symmetric=args.symmetric)
    png = simex.heatmap(classes, m, args.png) if args.png else None
    out = {"classes": [c if isinstance(c, (int, float, str)) else str(c) for c in classes], "matrix": m, "png": png}
    head = "class  " + " ".join(f"{str(c):>7}" for c in classes)
    rows = [f"{str(c):<6} " + " ".join(f"{v:7.3f}" for v in row) for c, row in zip(classes, m)]
    _emit(args, out, "\n".join(["SimEx delta (row: class samples | column: class autoencoder; lower = closer)",
                                 head, *rows] + ([f"heatmap: {png}"] if png else [])))


def cmd_bench(args) -> None:
    import os
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    if not (root / "bench" / "__main__.py").exists():
        raise E.InvalidArgumentError("the benchmarks live in the source checkout (bench/): run this from a clone")
    cmd = [sys.executable, "-m", "bench", args.suite] + (["--quick"] if args.quick else [])
    raise SystemExit(subprocess.call(cmd, cwd=root, env=dict(os.environ)))


def cmd_demo(args) -> None:
    from .demo import run_demo

    run_demo(workdir=args.workdir, as_json=args.json, quick=args.quick)


def build_parser() -> argparse.ArgumentParser:
    from .config import COVERAGE_SPACES, METHODS

    p = argparse.ArgumentParser(prog="fitsketch", description="Rank your models by how well their training data fits yours.")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("init", help="create a hub")
    s.add_argument("hub")
    s.add_argument("--seed", type=int)
    s.add_argument("--partition-size", type=int)
    s.add_argument("--num-perm", type=int)
    s.add_argument("--lsh-k", type=int)
    s.add_argument("--lsh-l", type=int)
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_init)

    s = sub.add_parser("add", help="sketch a dataset and register it as an entry")
    s.add_argument("hub")
    s.add_argument("name")
    s.add_argument("data", nargs="?", help="a .csv, .tsv, .parquet or .npy file")
    s.add_argument("--parquet", help="a glob of Parquet files, sketched in parallel (fitsketch.distributed)")
    s.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="with --parquet: run on Ray (a local cluster, or ADDRESS); default: a process pool")
    s.add_argument("--workers", type=int, help="with --parquet: parallel workers")
    s.add_argument("--metadata", help="a JSON object, e.g. '{\"task\": \"em\", \"accuracy\": 0.9}'")
    s.add_argument("--partition-size", type=int)
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_add)

    s = sub.add_parser("search", help="rank entries by fit to a dataset")
    s.add_argument("hub")
    s.add_argument("data")
    s.add_argument("-k", type=int, default=10)
    s.add_argument("--method", default="auto", choices=list(METHODS))
    s.add_argument("--where", help="metadata equalities as a JSON object")
    s.add_argument("--explain", action="store_true", help="print the query plan with counts and times")
    s.add_argument("--feature-threshold", type=float)
    s.add_argument("--overlap-threshold", type=float)
    s.add_argument("--match", choices=["containment", "jaccard"])
    s.add_argument("--r", type=float, help="JS-LSH bucket width")
    s.add_argument("--jslsh-k", type=int)
    s.add_argument("--jslsh-l", type=int)
    s.add_argument("--shortlist", type=int, help="large hubs: entries kept by the profile shortlist (0: score all)")
    s.add_argument("--tau", type=float, help="coverage: rows a code needs to count as seen")
    s.add_argument("--coverage-space", choices=list(COVERAGE_SPACES),
                   help="coverage: code the rows (default), the sample embeddings (give --embedding) "
                        "or the SimEx autoencoders' latents")
    s.add_argument("--embedding", metavar="NPY",
                   help="the query's sample embeddings, an (n, d) .npy file: FAISS shortlist, and what "
                        "--coverage-space embedding codes")
    s.add_argument("--loss", choices=["mse", "ssim"], help="simex: reconstruction loss")
    s.add_argument("--no-normalize", action="store_true", help="simex: do not divide by the source's mean norm")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_search)

    s = sub.add_parser("show", help="show a hub's header and entries, or one entry")
    s.add_argument("hub")
    s.add_argument("name", nargs="?")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_show)

    s = sub.add_parser("remove", help="remove an entry")
    s.add_argument("hub")
    s.add_argument("name")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_remove)

    s = sub.add_parser("compact", help="rewrite a hub's file to its live size (stop its server first)")
    s.add_argument("hub")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_compact)

    s = sub.add_parser("simex", help="SimEx autoencoder tools")
    simex_sub = s.add_subparsers(dest="simex_command", required=True)
    c = simex_sub.add_parser("classes", help="inter-class similarity matrix of one labelled dataset (+ heatmap)")
    c.add_argument("data", help="a .csv, .tsv, .parquet or .npy file")
    c.add_argument("--labels", required=True, help="the label column")
    c.add_argument("--image-shape", help="C,H,W for image rows (a convolutional autoencoder)")
    c.add_argument("--symmetric", action="store_true")
    c.add_argument("--png", help="write the heatmap here")
    c.add_argument("--json", action="store_true")
    c.set_defaults(fn=cmd_simex_classes)

    s = sub.add_parser("bench", help="run the benchmarks (python -m bench) from a source checkout")
    s.add_argument("suite", nargs="?", default="quality", choices=["quality", "speed", "scale", "all"])
    s.add_argument("--quick", action="store_true")
    s.set_defaults(fn=cmd_bench)

    from .probelog import add_probelog_parsers
    from .server import add_serve_parser

    add_probelog_parsers(sub)

    add_serve_parser(sub)

    s = sub.add_parser("demo", help="model selection on real data (digits; DBLP/ACM/Fodors/Zagats tables)")
    s.add_argument("--workdir", help="where to put the demo hubs (default: a temporary directory)")
    s.add_argument("--quick", action="store_true", help="one seed instead of four")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_demo)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        args.fn(args)
    except E.FitsketchError as e:
        print(f"fitsketch: error [{e.code}]: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # pragma: no cover - `fitsketch ... | head`
        return 0
    except Exception as e:  # noqa: BLE001 - the CLI's last line of defence: one line, no traceback
        if args.verbose:
            import traceback

            traceback.print_exc()
        print(f"fitsketch: unexpected error: {type(e).__name__}: {e} (run with -v for details)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
