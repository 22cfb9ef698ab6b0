"""The ``fitsketch`` command line: init | add | search | show | remove | serve | simex |
search-logits | search-concept | bench | demo.

Every command that prints results takes ``--json``. Errors print one line to stderr and exit
with status 2 (bad input or bad arguments, a FitsketchError) or 1 (anything unexpected). Messages
speak in command-line terms (``--autoencoder``, not ``autoencoder=True``).

Python-only (no command-line form): ``model=`` / ``logit_labels=`` of ``hub.add`` (a model is a
Python object; loading one from a file would mean unpickling it), ``ae_config=``, and the
``fitsketch.sketch_data`` / ``Sketch.merge`` / ``hub.add_sketch`` workflow.

Startup stays fast: this module and ``fitsketch`` import no PyTorch until a command runs.
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import sys

import numpy as np

from . import errors as E
from .formatting import format_matches  # noqa: F401 - also its old import path

log = logging.getLogger(__name__)

PYTHON_ONLY = ("model= / logit_labels= of hub.add (a model's ProbeLog descriptors), ae_config=, "
               "and sketch_data / Sketch.merge / hub.add_sketch")

# Python advice in engine messages -> the command line's words (applied to messages printed here)
_CLI_TERMS = [
    (r"create it with create=True", "create it with `fitsketch init HUB`"),
    (r"see hub\.names\(\)", "see `fitsketch show HUB`"),
    (r"hub\.add\(\.\.\., autoencoder=True\)", "`fitsketch add ... --autoencoder`"),
    (r"autoencoder=True", "--autoencoder"),
    (r"pass embedding=\(n, d\)", "pass --embedding FILE.npy (an (n, d) array)"),
    (r"coverage_fallback=True", "--coverage-fallback"),
    (r"with where=", "with --where"),
    (r"coverage_space='(\w+)'", r"--coverage-space \1"),
    (r"method='(\w+)'", r"--method \1"),
    (r"\blabels=(?=['\"\w])", "--labels "),
    (r"\bimage_shape=", "--image-shape "),
    (r"\bpartition_size=", "--partition-size "),
    (r"\bsep=(?=['\"])", "--sep "),
    (r"\bfeature_names\b", "column names"),
]


def cli_terms(message: str) -> str:
    """``message`` with the Python spellings of options replaced by their command-line flags."""
    for pat, rep in _CLI_TERMS:
        message = re.sub(pat, rep, message)
    return message


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Help that shows every option's default (when it has one worth showing)."""

    def _get_help_string(self, action):
        h = action.help or ""
        if "default" in h.lower() or not action.option_strings or action.nargs == 0 \
                or action.default is argparse.SUPPRESS:
            return h   # says its default already, a positional, or an on/off flag
        return h + (" (default: none)" if action.default is None else " (default: %(default)s)")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``fitsketch: error [invalid_argument]: ...``, exit status 2."""

    def error(self, message):
        self.exit(2, f"fitsketch: error [invalid_argument]: {self.prog}: {message} (see `{self.prog} --help`)\n")


def _sub(sub, name: str, help: str, description: str | None = None):  # noqa: A002 - argparse's word
    return sub.add_parser(name, help=help, description=description or help, formatter_class=_Formatter)


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


def _image_shape(value: str) -> tuple:
    try:
        shape = tuple(int(v) for v in value.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise E.InvalidArgumentError(f"--image-shape {value!r} is not C,H,W: give three positive integers, "
                                     "e.g. --image-shape 1,28,28")
    return shape


def _progress(args) -> bool:
    return not args.json and not getattr(args, "quiet", False) and sys.stderr.isatty()


def _read(path: str, sep):
    """A data file read with ``--sep`` (CSV / TSV; other formats as they are)."""
    from .data import read_path

    return read_path(path, sep=sep)


def _performance_args(args) -> dict:
    """``hub.add``'s ``class_accuracy=`` / ``confusion=`` from ``--class-accuracy`` / ``--confusion`` files
    (validated in engine/accuracy.py); read before the hub is opened, so a bad file changes nothing."""
    from . import accuracy

    if args.class_accuracy:
        return {"class_accuracy": accuracy.read_class_accuracy(args.class_accuracy)}
    if args.confusion:
        return {"confusion": accuracy.read_confusion(args.confusion)}
    return {}


def cmd_add(args) -> None:
    import fitsketch

    meta = _json_arg(args.metadata, "metadata") if args.metadata else None
    if (args.data is None) == (args.parquet is None):
        raise E.InvalidArgumentError("give either a DATA file or --parquet GLOB (not both)")
    in_memory = args.autoencoder or args.labels is not None or args.embedding is not None
    if args.image_shape and not args.autoencoder:
        raise E.InvalidArgumentError("--image-shape shapes the rows for the SimEx autoencoder: pass --autoencoder too")
    if (args.class_accuracy or args.confusion) and args.labels is None:
        raise E.InvalidArgumentError("--class-accuracy / --confusion describe the model's per-class performance on "
                                     "the classes of --labels COL: pass --labels too")
    if args.class_accuracy and args.confusion:
        raise E.InvalidArgumentError("give one of --class-accuracy FILE or --confusion FILE, not both")
    if args.parquet is not None and in_memory:
        raise E.InvalidArgumentError("--labels / --autoencoder / --embedding need one DATA file, not --parquet")
    shape = _image_shape(args.image_shape) if args.image_shape else None
    embedding = _npy_arg(args.embedding, "embedding") if args.embedding is not None else None
    perf = _performance_args(args)
    with fitsketch.open(args.hub, create=False) as hub:
        if args.parquet is not None:
            from .distributed import add_parquet

            entry = add_parquet(hub, args.name, args.parquet, metadata=meta,
                                engine="ray" if args.ray is not None else "processes",
                                address=args.ray or None, workers=args.workers,
                                partition_size=args.partition_size, progress=_progress(args))
        elif not in_memory:
            from .chunked import add_file, supports

            if supports(args.data):
                entry = add_file(hub, args.name, args.data, metadata=meta, partition_size=args.partition_size,
                                 sep=args.sep, progress=_progress(args))
            else:
                entry = hub.add(args.name, _read(args.data, args.sep), metadata=meta,
                                partition_size=args.partition_size, progress=_progress(args))
        else:
            kw = {"autoencoder": True} if args.autoencoder else {}
            if embedding is not None:
                kw["embedding"] = embedding
            if args.labels is not None:
                kw["labels"] = args.labels
                kw.update(perf)
            if shape is not None:
                kw["image_shape"] = shape
            entry = hub.add(args.name, _read(args.data, args.sep), metadata=meta,
                            partition_size=args.partition_size, progress=_progress(args), **kw)
    _emit(args, entry.to_dict(), f"added {entry.name!r}: {entry.n_rows} rows, {len(entry.features)} features, "
                                 f"{entry.n_partitions} partitions")


def _query_overrides(args) -> dict:
    return {k: v for k, v in (("feature_threshold", args.feature_threshold),
                              ("overlap_threshold", args.overlap_threshold), ("match", args.match),
                              ("jslsh_r", args.r), ("jslsh_k", args.jslsh_k), ("jslsh_l", args.jslsh_l),
                              ("coverage_tau", args.tau), ("coverage_space", args.coverage_space),
                              ("simex_loss", args.loss), ("shortlist", args.shortlist),
                              ("simex_normalize", False if args.no_normalize else None),
                              ("coverage_fallback", True if args.coverage_fallback else None))
            if v is not None}


def cmd_search(args) -> None:
    import fitsketch

    where = _json_arg(args.where, "where") if args.where else None
    with fitsketch.open(args.hub, create=False, readonly=True) as hub:
        kw = dict(k=args.k, method=args.method, where=where, **_query_overrides(args))
        if args.embedding:
            kw["embedding"] = _npy_arg(args.embedding, "embedding")
        data = _read(args.data, args.sep)
        if args.explain:
            plan = hub.explain(data, **kw)
            _emit(args, plan.to_dict(), str(plan))
            return
        why = None
        if args.why:   # one search: the plan keeps its matches, and draws them
            plan = hub.explain(data, **kw)
            matches = plan.matches
            why = plan.plot(args.why)
        else:
            matches = hub.search(data, **kw)
        png = None
        if args.png:
            from .plots import explain_matches

            png = explain_matches(hub, data, matches, args.png, top=args.png_top)
    _emit(args, [m.to_dict() for m in matches],
          format_matches(matches) + (f"\npicture of the top matches: {png}" if png else "")
          + (f"\npicture of why they rank so: {why}" if why else ""))


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
        out = hub.compact(file=not args.bands_only)
    _emit(args, out, f"compacted {args.hub}: band postings in {out['band_transactions']} transaction(s)"
          + ("" if args.bands_only else f", file {out['before']:,} -> {out['after']:,} bytes"))


def cmd_simex_classes(args) -> None:
    from . import simex
    from .data import to_frame

    df = to_frame(_read(args.data, args.sep))
    if args.labels not in df.columns:
        raise E.InvalidArgumentError(f"--labels {args.labels!r} is not a column of {args.data}: columns are {list(df.columns)}")
    labels = df[args.labels].to_numpy()
    X = simex.numeric_matrix(df.drop(columns=[args.labels]))
    shape = _image_shape(args.image_shape) if args.image_shape else None
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
    cmd = [sys.executable, "-m", "bench", args.suite] + (["--quick"] if args.quick else []) + \
        (["--out", args.out] if args.out else [])
    raise SystemExit(subprocess.call(cmd, cwd=root, env=dict(os.environ)))


def cmd_demo(args) -> None:
    from .contrib.demo import run_demo

    run_demo(workdir=args.workdir, as_json=args.json, quick=args.quick)


def _print_logit_matches(args, matches, title: str) -> None:
    if args.json:
        print(json.dumps([m.to_dict() for m in matches], sort_keys=True))
        return
    print(title)
    for i, m in enumerate(matches, 1):
        print(f"{i:3d}. {m.name}  logit {m.logit}" + (f" ({m.label})" if m.label is not None else "")
              + f"  score {m.score:.4f}")


def _cmd_search_logits(args) -> None:
    import fitsketch

    with fitsketch.open(args.hub, create=False) as hub:
        matches = hub.search_logits((args.entry, args.logit), k=args.k)
    _print_logit_matches(args, matches, f"logits like {args.entry!r} logit {args.logit}:")


def _cmd_search_concept(args) -> None:
    import fitsketch
    from .contrib.text_encoder import MiniLMEncoder

    with fitsketch.open(args.hub, create=False) as hub:
        matches = hub.search_concept(args.text, MiniLMEncoder(), k=args.k, probe_set=args.probe_set)
    _print_logit_matches(args, matches, f"logits for concept {args.text!r}:")


def _json_flag(s) -> None:
    s.add_argument("--json", action="store_true", help="print one JSON document instead of text")


def _sep_flag(s) -> None:
    s.add_argument("--sep", default="auto", metavar="CHAR",
                   help="CSV field delimiter; 'auto' guesses it from the file (csv.Sniffer over , ; TAB |) "
                        "and warns when a CSV reads as one column")


def build_parser() -> argparse.ArgumentParser:
    """The CLI's parser (the ProbeLog commands import their module only when they run, so
    ``--help`` imports no PyTorch)."""
    from . import __version__
    from .config import COVERAGE_SPACES, METHODS

    p = _Parser(prog="fitsketch", formatter_class=_Formatter,
                description="Rank the models you already have by how well their training data fits yours.",
                epilog="Python-only (no command-line form): " + PYTHON_ONLY + ". See README.md.")
    p.add_argument("--version", action="version", version=f"fitsketch {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr; tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = _sub(sub, "init", "create a hub")
    s.add_argument("hub", help="the hub directory to create")
    s.add_argument("--seed", type=int, help="hash seed of the hub (default: SketchConfig's, 0)")
    s.add_argument("--partition-size", type=int, help="rows per partition (default: SketchConfig's)")
    s.add_argument("--num-perm", type=int, help="MinHash permutations per feature (default: SketchConfig's)")
    s.add_argument("--lsh-k", type=int, help="MinHash values per LSH band (default: SketchConfig's)")
    s.add_argument("--lsh-l", type=int, help="LSH bands (default: --num-perm / --lsh-k)")
    _json_flag(s)
    s.set_defaults(fn=cmd_init)

    s = _sub(sub, "add", "sketch a dataset and register it as an entry",
             "Sketch a dataset and register it as an entry. A CSV / TSV / Parquet file is read in chunks "
             "(bounded memory; see fitsketch.chunked), unless --labels / --autoencoder / --embedding need "
             "it whole.\nPython-only: " + PYTHON_ONLY + ".")
    s.add_argument("hub", help="an existing hub (create one with `fitsketch init HUB`)")
    s.add_argument("name", help="the entry's name (a model's name)")
    s.add_argument("data", nargs="?", help="a .csv, .tsv, .parquet or .npy file")
    s.add_argument("--parquet", metavar="GLOB",
                   help="a glob of Parquet files, sketched in parallel (fitsketch.distributed)")
    s.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="with --parquet: run on Ray (a local cluster, or ADDRESS) (default: a process pool)")
    s.add_argument("--workers", type=int, help="with --parquet: parallel workers (default: one per CPU)")
    s.add_argument("--metadata", metavar="JSON",
                   help="a JSON object stored with the entry, e.g. '{\"task\": \"em\", \"accuracy\": 0.9}' "
                        "(default: none)")
    s.add_argument("--partition-size", type=int, help="rows per partition (default: the hub's)")
    s.add_argument("--labels", metavar="COL",
                   help="the label column: not a feature; with --autoencoder, one autoencoder per class "
                        "(default: none)")
    s.add_argument("--class-accuracy", metavar="FILE",
                   help="with --labels: the model's recall per class, for --method accuracy: a .json object "
                        "{label: recall} or a .csv with columns label,recall (default: guessed from the class "
                        "counts, flagged in the evidence)")
    s.add_argument("--confusion", metavar="FILE",
                   help="with --labels: the model's confusion matrix on validation data, for --method accuracy: a "
                        ".csv with true labels in the first column and predicted labels in the header row, or a "
                        "square .npy in the sorted order of the labels (default: none)")
    s.add_argument("--autoencoder", action="store_true",
                   help="also train a SimEx autoencoder on the numeric columns (for --method simex)")
    s.add_argument("--image-shape", metavar="C,H,W",
                   help="with --autoencoder: rows are C x H x W images (a convolutional autoencoder) "
                        "(default: rows are vectors)")
    s.add_argument("--embedding", metavar="FILE.npy",
                   help="the rows' sample embeddings, an (n_rows, d) .npy array (for --coverage-space "
                        "embedding and the FAISS shortlist) (default: none)")
    _sep_flag(s)
    s.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bar (there is none either when stderr is not a terminal)")
    _json_flag(s)
    s.set_defaults(fn=cmd_add)

    s = _sub(sub, "search", "rank entries by fit to a dataset")
    s.add_argument("hub", help="the hub to search")
    s.add_argument("data", help="the query dataset: a .csv, .tsv, .parquet or .npy file")
    s.add_argument("-k", type=int, default=10, help="matches to return")
    s.add_argument("--method", default="auto", choices=list(METHODS), metavar="METHOD",
                   help="scoring method, one of: " + ", ".join(METHODS))
    s.add_argument("--where", metavar="JSON", help="metadata equalities as a JSON object (default: every entry)")
    s.add_argument("--explain", action="store_true", help="print the query plan with counts and times")
    s.add_argument("--feature-threshold", type=float,
                   help="MinHash similarity for two features to match (default: the hub's)")
    s.add_argument("--overlap-threshold", type=float,
                   help="share of the query's features an entry must match (default: the hub's)")
    s.add_argument("--match", choices=["containment", "jaccard"], help="feature similarity (default: the hub's)")
    s.add_argument("--r", type=float, help="JS-LSH bucket width (default: the hub's)")
    s.add_argument("--jslsh-k", type=int, help="JS-LSH projections per band (default: the hub's)")
    s.add_argument("--jslsh-l", type=int, help="JS-LSH bands (default: the hub's)")
    s.add_argument("--shortlist", type=int,
                   help="large hubs: entries kept by the profile shortlist, 0: score all (default: the hub's)")
    s.add_argument("--tau", type=float, help="coverage: rows a code needs to count as seen (default: the hub's)")
    s.add_argument("--coverage-space", choices=list(COVERAGE_SPACES),
                   help="coverage: code the rows, the sample embeddings (give --embedding) or the SimEx "
                        "autoencoders' latents (default: rows)")
    s.add_argument("--coverage-fallback", action="store_true",
                   help="coverage: fall back to adaptivity where an entry cannot be scored instead of failing")
    s.add_argument("--embedding", metavar="FILE.npy",
                   help="the query's sample embeddings, an (n, d) .npy file: FAISS shortlist, and what "
                        "--coverage-space embedding codes (default: none)")
    s.add_argument("--loss", choices=["mse", "ssim"], help="simex: reconstruction loss (default: the hub's, mse)")
    s.add_argument("--no-normalize", action="store_true", help="simex: do not divide by the source's mean norm")
    s.add_argument("--png", metavar="FILE",
                   help="also draw the top matches' distributions of the features that differ most from the "
                        "query's, as a PNG (needs matplotlib) (default: none)")
    s.add_argument("--png-top", type=int, default=3, help="with --png: matches drawn")
    s.add_argument("--why", metavar="FILE",
                   help="also draw hub.explain(...).plot() as a PNG: the score per match with its evidence, "
                        "the class mixture against each model's recall (predicted accuracy), the top match's "
                        "most different features (needs matplotlib) (default: none)")
    _sep_flag(s)
    _json_flag(s)
    s.set_defaults(fn=cmd_search)

    s = _sub(sub, "show", "show a hub's header and entries, or one entry")
    s.add_argument("hub", help="the hub")
    s.add_argument("name", nargs="?", help="an entry (default: the hub's header and entry names)")
    _json_flag(s)
    s.set_defaults(fn=cmd_show)

    s = _sub(sub, "remove", "remove an entry")
    s.add_argument("hub", help="the hub")
    s.add_argument("name", help="the entry to remove")
    _json_flag(s)
    s.set_defaults(fn=cmd_remove)

    s = _sub(sub, "compact", "move the band postings added since the last compaction into their blocks, drop "
             "removed entries' postings from every block, then rewrite the hub's file to its live size (stop its "
             "server first)")
    s.add_argument("hub", help="the hub to compact")
    s.add_argument("--bands-only", action="store_true", help="compact the band postings only (the file is left as "
                   "it is; works while a server or reader has the hub open)")
    s.add_argument("--json", action="store_true", help="print the sizes as JSON")
    s.set_defaults(fn=cmd_compact)

    s = _sub(sub, "simex", "SimEx autoencoder tools")
    simex_sub = s.add_subparsers(dest="simex_command", required=True, metavar="TOOL")
    c = _sub(simex_sub, "classes", "inter-class similarity matrix of one labelled dataset (+ heatmap)")
    c.add_argument("data", help="a .csv, .tsv, .parquet or .npy file")
    c.add_argument("--labels", required=True, metavar="COL", help="the label column (required)")
    c.add_argument("--image-shape", metavar="C,H,W",
                   help="C,H,W for image rows (a convolutional autoencoder) (default: rows are vectors)")
    c.add_argument("--symmetric", action="store_true", help="average the matrix with its transpose")
    c.add_argument("--png", metavar="FILE", help="write the heatmap here (default: none)")
    _sep_flag(c)
    _json_flag(c)
    c.set_defaults(fn=cmd_simex_classes)

    s = _sub(sub, "bench", "run the benchmarks (python -m bench) from a source checkout")
    s.add_argument("suite", nargs="?", default="quality", choices=["quality", "speed", "scale", "all"],
                   help="the suite (default: quality)")
    s.add_argument("--quick", action="store_true", help="small sizes (minutes)")
    s.add_argument("--out", metavar="DIR", help="results folder (default: bench/results)")
    s.set_defaults(fn=cmd_bench)

    s = _sub(sub, "search-logits", "logits of any model that behave like one logit (ProbeLog)")
    s.add_argument("hub", help="the hub")
    s.add_argument("entry", help="the model (entry) whose logit is the query")
    s.add_argument("logit", type=int, help="the logit's index")
    s.add_argument("-k", type=int, default=10, help="matches to return")
    _json_flag(s)
    s.set_defaults(fn=_cmd_search_logits)

    s = _sub(sub, "search-concept", "zero-shot: logits that detect a concept given as text (ProbeLog)")
    s.add_argument("hub", help="the hub")
    s.add_argument("text", help="the concept, e.g. 'a dog'")
    s.add_argument("-k", type=int, default=10, help="matches to return")
    s.add_argument("--probe-set", help="a text probe set (default: the hub's default set)")
    _json_flag(s)
    s.set_defaults(fn=_cmd_search_concept)

    from .server import add_serve_parser

    srv = add_serve_parser(sub)
    srv.formatter_class = _Formatter
    for a in srv._actions:
        if not a.help and a.dest != "help":
            a.help = a.dest.replace("_", " ")

    s = _sub(sub, "demo", "model selection on real data (digits; DBLP/ACM/Fodors/Zagats tables)")
    s.add_argument("--workdir", help="where to put the demo hubs (default: a temporary directory)")
    s.add_argument("--quick", action="store_true", help="one seed instead of four")
    _json_flag(s)
    s.set_defaults(fn=cmd_demo)
    return p


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"fitsketch: warning: {cli_terms(str(message))}", file=sys.stderr)


def main(argv=None) -> int:
    import warnings

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:   # --help, --version, or a bad argument (one line, status 2)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    warnings.showwarning = _show_warning
    try:
        args.fn(args)
    except E.FitsketchError as e:
        print(f"fitsketch: error [{e.code}]: {cli_terms(str(e))}", file=sys.stderr)
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
