"""The one benchmark harness: suites, the timer, result rows, result files, ``RESULTS.md``, plots.

Every benchmark module (``bench/bench_*.py``, ``quality.py``, ``scale.py``, ``reliability.py``,
``paper.py``) exposes ``suite(opts: Options)``; ``python -m bench`` (bench/__main__.py) holds the
registry of suites and runs them. Timings go through ``timeit`` / ``time_each`` / ``stopwatch``,
whose samples are summarised by ``stats`` (p50, p90, mean, min, max: one piece of code).

One row schema for every suite (``ROW_KEYS``): each row says what was measured (``metric``,
``value``, ``unit``), against what (``baseline`` = the baseline's name, ``baseline_value``
measured in the same run or the issue's target, ``ratio`` = value / baseline_value), and where
(``device``, fitsketch ``version``, git ``commit``, ``timestamp``). A result file
``bench/results/<suite>.json`` is ``{"suite", "quick", "env", "rows", "plots", "tables"}``.

``write_results_md`` regenerates ``RESULTS.md`` from every JSON file in the results folder: files
whose ``rows`` follow the row schema become one table each; older files in another format (written
before the runner was unified) become a table of their rows' columns.

Quick runs (``--quick``) write into ``bench/results/quick/`` (not tracked by git) unless ``--out``
says otherwise, so a smoke run never changes a tracked file.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as _dt
import json
import math
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np

# This module imports no torch at import time (only `environment` and the GPU sync do), so writing
# rows and RESULTS.md stays fast (tests/test_bench.py).
RESULTS = Path(__file__).resolve().parent / "results"
QUICK_RESULTS = RESULTS / "quick"   # git-ignored: quick runs never change a tracked file
ROW_KEYS = ("suite", "workload", "method", "metric", "value", "unit", "baseline", "baseline_value",
            "ratio", "device", "version", "commit", "timestamp", "quick")
REQUIRED_KEYS = ("metric", "value", "baseline", "ratio", "device", "version", "commit", "timestamp")


# ----------------------------------------------------------------------------- suites
@dataclasses.dataclass
class Options:
    """What the runner hands every suite: ``suite(opts)`` sizes its workload from ``quick`` and
    writes its result file(s) into ``out_dir`` (see ``results_dir``)."""
    quick: bool = False
    out_dir: Path | None = None
    device: str = "auto"
    data: Path | None = None
    seed: int = 0
    repeats: int | None = None
    threads: int | None = None
    extra: dict = dataclasses.field(default_factory=dict)   # a module's own flags (its main's argv)

    @property
    def out(self) -> Path:
        return results_dir(self.out_dir, self.quick)


def results_dir(out_dir: Path | None = None, quick: bool = False) -> Path:
    """``out_dir`` when given, else ``bench/results`` (full runs) or ``bench/results/quick``
    (quick runs: git-ignored, so a smoke run leaves the checkout clean)."""
    return Path(out_dir) if out_dir is not None else (QUICK_RESULTS if quick else RESULTS)


def parser(description: str) -> argparse.ArgumentParser:
    """The options every benchmark module's own ``main(argv)`` takes (as ``python -m bench``)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="small sizes (seconds), for CI and smoke runs")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--repeats", type=int, default=None, help="timed runs per measurement")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic data")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice); 1 is steadier on a busy machine")
    p.add_argument("--data", type=Path, default=None, help="folder of the reference data (../shared/data)")
    p.add_argument("--out", type=Path, default=None,
                   help=f"results folder (default {RESULTS}; quick runs {QUICK_RESULTS})")
    return p


def options(args: argparse.Namespace, **extra) -> Options:
    """``Options`` from a ``parser()`` namespace; ``extra`` holds the module's own flags."""
    return Options(quick=args.quick, out_dir=args.out, device=args.device, data=getattr(args, "data", None),
                   seed=args.seed, repeats=args.repeats, threads=args.threads, extra=extra)


def setup(opts: Options) -> None:
    """Apply the common options (threads) and warn when the machine is already busy."""
    if opts.threads:
        import torch

        torch.set_num_threads(opts.threads)
    load = load_average()
    if load is not None and load > (os.cpu_count() or 1):
        print(f"warning: 1-minute load average {load:.1f} exceeds the {os.cpu_count()} CPUs: "
              f"other processes share this machine and timings will be noisy")


# ----------------------------------------------------------------------------- the timer
def stats(times_s) -> dict:
    """The one summary of timing samples (seconds): ``n``, ``p50_s`` (= ``median_s``), ``p90_s``, ``p99_s``,
    ``mean_s``, ``min_s``, ``max_s``, ``iqr_s`` and the samples ``times_s``. Percentiles are
    NumPy's (linear interpolation between order statistics)."""
    t = np.asarray(list(times_s), dtype=np.float64)
    if t.size == 0:
        raise ValueError("no timing samples")
    p25, p50, p75, p90, p99 = (float(v) for v in np.percentile(t, [25, 50, 75, 90, 99]))
    return {"n": int(t.size), "p50_s": p50, "median_s": p50, "p90_s": p90, "p99_s": p99, "mean_s": float(t.mean()),
            "min_s": float(t.min()), "max_s": float(t.max()), "iqr_s": p75 - p25, "times_s": t.tolist()}


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()


def cpu_time() -> float:
    """CPU seconds of this process and of its child processes that have ended (``add_sketches``'
    forked workers, engine/prepare_procs.py: joined before the call returns), so a call that hands
    its work to children is not timed as free."""
    try:
        import resource

        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        return time.process_time() + ru.ru_utime + ru.ru_stime
    except (ImportError, OSError):   # pragma: no cover - not on every platform
        return time.process_time()


def clock(cpu: bool = False):
    """The clock a profiler sums stage times with: CPU time (``cpu=True``, ``cpu_time``: steadier than
    wall time when other processes share the machine) or wall time."""
    return cpu_time if cpu else time.perf_counter


def timeit(fn, *, repeats: int = 5, warmup: int = 1, device: str = "cpu", cpu: bool = False) -> dict:
    """Run ``fn()`` ``warmup`` times untimed, then ``repeats`` times timed (the GPU synchronized
    around each run). Returns ``stats`` of the wall times plus ``result`` (the last return value,
    for checks outside the timing, never written) and, with ``cpu=True``, ``cpu`` = ``stats`` of
    the CPU times (``cpu_time``)."""
    result = None
    for _ in range(max(0, warmup)):
        result = fn()
    wall, cpu_t = [], []
    for _ in range(max(1, repeats)):
        _sync(device)
        c0, t0 = cpu_time(), time.perf_counter()
        result = fn()
        _sync(device)
        wall.append(time.perf_counter() - t0)
        cpu_t.append(cpu_time() - c0)
    out = stats(wall)
    if cpu:
        out["cpu"] = stats(cpu_t)
    out["result"] = result
    return out


def interleaved(fns: dict, repeats: int, warmup: int = 1, device: str = "cpu") -> dict:
    """Time each function ``repeats`` times, alternating between them (each round sees the same
    load), after ``warmup`` untimed rounds. Returns ``{name: stats of the wall times}``, each with
    ``cpu`` (stats of the CPU times, ``cpu_time``), ``median_cpu_s`` and ``result``."""
    for _ in range(max(0, warmup)):
        for fn in fns.values():
            fn()
    wall = {name: [] for name in fns}
    cpu_t = {name: [] for name in fns}
    results = {}
    for _ in range(max(1, repeats)):
        for name, fn in fns.items():
            _sync(device)
            c0, t0 = cpu_time(), time.perf_counter()
            results[name] = fn()
            _sync(device)
            wall[name].append(time.perf_counter() - t0)
            cpu_t[name].append(cpu_time() - c0)
    out = {}
    for name in fns:
        c = stats(cpu_t[name])
        out[name] = {**stats(wall[name]), "cpu": c, "median_cpu_s": c["p50_s"], "result": results[name]}
    return out


class Samples:
    """Timed calls made from the caller's own loop (contenders interleaved query by query, a loop
    that stops on a time budget): ``samples.call(fn, *args)`` times one call and returns its result;
    ``samples.stats()`` is ``stats`` of the wall times with ``cpu`` (stats of the CPU times)."""

    def __init__(self, device: str = "cpu"):
        self.device = device
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def call(self, fn, *args, **kwargs):
        _sync(self.device)
        c0, t0 = cpu_time(), time.perf_counter()
        result = fn(*args, **kwargs)
        _sync(self.device)
        self.wall.append(time.perf_counter() - t0)
        self.cpu.append(cpu_time() - c0)
        return result

    def __len__(self) -> int:
        return len(self.wall)

    def total_s(self) -> float:
        return float(sum(self.wall))

    def stats(self) -> dict:
        out = stats(self.wall)
        out["cpu"] = stats(self.cpu)
        return out


def time_each(fn, items, *, warmup: int = 0, device: str = "cpu", budget_s: float | None = None) -> dict:
    """One timed call ``fn(item)`` per item (e.g. one query each), after ``fn(items[0])`` run
    ``warmup`` times untimed; stops early once ``budget_s`` seconds of timed calls have passed
    (at least one call always runs). Returns ``Samples.stats`` of the calls plus ``result`` (the
    list of return values)."""
    items = list(items)
    for _ in range(max(0, warmup) if items else 0):
        fn(items[0])
    samples, results = Samples(device), []
    for it in items:
        results.append(samples.call(fn, it))
        if budget_s is not None and samples.total_s() > budget_s:
            break
    out = samples.stats()
    out["result"] = results
    return out


class stopwatch(contextlib.AbstractContextManager):
    """Wall time of one block (a build, an add): ``with stopwatch() as sw: ...`` then ``sw.s``;
    ``sw.elapsed()`` reads the running time inside the block. One sample: no warm-up, no spread."""

    def __enter__(self):
        self.t0 = time.perf_counter()
        self.s = float("nan")
        return self

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def __exit__(self, *exc):
        self.s = time.perf_counter() - self.t0
        return False


def spread(t: dict) -> str:
    """``p50 ms (min, max)`` of a ``stats`` dict, for printed tables."""
    return f"{t['p50_s'] * 1e3:.1f} ms (min {t['min_s'] * 1e3:.1f}, max {t['max_s'] * 1e3:.1f})"


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    return _table(rows, columns)


def _version() -> str:
    import sys

    mod = sys.modules.get("fitsketch")
    if mod is not None:
        return getattr(mod, "__version__", "unknown")
    try:
        from importlib.metadata import version

        return version("fitsketch")
    except Exception:  # pragma: no cover
        return "unknown"


def git_commit() -> str:
    """``git rev-parse --short HEAD`` (+ ``-dirty`` when tracked files changed), as bench._common."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=here, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=here, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except Exception:
        return "unknown"


def context(device: str = "cpu", quick: bool = False) -> dict:
    """What every row of one run shares: device, version, commit, timestamp, quick."""
    return {"device": device, "version": _version(), "commit": git_commit(),
            "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "quick": bool(quick)}


def row(ctx: dict, suite: str, workload: str, method: str, metric: str, value, *, unit: str = "",
        baseline: str | None = None, baseline_value=None, **extra) -> dict:
    """One result row; ``ratio = value / baseline_value`` when both are finite and the
    baseline is non-zero, else None."""
    ratio = None
    if _finite(value) and _finite(baseline_value) and baseline_value != 0:
        ratio = float(value) / float(baseline_value)
    r = {"suite": suite, "workload": workload, "method": method, "metric": metric,
         "value": _num(value), "unit": unit, "baseline": baseline, "baseline_value": _num(baseline_value),
         "ratio": ratio, **ctx}
    r.update(extra)
    return r


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def _num(v):
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return v
    return f if math.isfinite(f) else None  # JSON has no NaN: a missing value is null


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # pragma: no cover - not on every platform
        return None


def environment(device: str = "cpu") -> dict:
    """Device, library versions, git commit, timestamp and load average of this run."""
    import torch

    if device == "cuda" and torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
    else:
        name = platform.processor() or platform.machine()
    try:
        import triton
        triton_version = triton.__version__
    except Exception:
        triton_version = None
    return {
        "device": device, "device_name": name, "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "triton": triton_version, "numpy": np.__version__, "python": platform.python_version(),
        "commit": git_commit(), "load_avg_1m": load_average(), "loadavg_1m": load_average(),
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _clean(obj):
    if isinstance(obj, dict):   # a timing's "result" (the timed function's return value) is not written
        return {str(k): _clean(v) for k, v in obj.items() if k != "result"}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_suite(name: str, rows: list[dict], *, out: Path | None = None, quick: bool = False,
                plots: list[str] | None = None, tables: dict | None = None, env: dict | None = None) -> Path:
    """Write ``<out>/<name>.json`` (atomically) and return its path."""
    out = results_dir(out, quick)
    out.mkdir(parents=True, exist_ok=True)
    for r in rows:
        missing = [k for k in REQUIRED_KEYS if k not in r]
        if missing:
            raise ValueError(f"result row {r.get('metric')!r} lacks {missing}")
    payload = {"suite": name, "quick": quick, "env": env or environment(rows[0]["device"] if rows else "cpu"),
               "rows": rows, "plots": list(plots or []), "tables": tables or {}}
    path = out / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_clean(payload), indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)
    return path


# ----------------------------------------------------------------------------- RESULTS.md
def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.3g}"
        return f"{v:,.4g}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, default=str)[:80]
    return str(v).replace("|", "\\|")


def _table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(_cell(r.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def follows_schema(rows) -> bool:
    return bool(rows) and all(isinstance(r, dict) and all(k in r for k in REQUIRED_KEYS) for r in rows)


def _is_quick(f: Path, payload: dict) -> bool:
    q = payload.get("quick")
    return bool(q) if isinstance(q, bool) else f.stem.endswith("_quick")


def _render_file(f: Path, payload: dict, link_prefix: str) -> list[str]:
    rows = payload.get("rows") or []
    env = payload.get("env") or payload.get("environment") or payload
    title = payload.get("suite") or payload.get("benchmark") or payload.get("name") or f.stem
    out = [f"### {title} (`{f.name}`)", ""]
    meta = [f"{k}: {env.get(k)}" for k in ("device", "device_name", "cpu_count", "commit", "timestamp",
                                           "loadavg_1m") if env.get(k) is not None]
    if meta:
        out += ["_" + "; ".join(meta) + "_", ""]
    for note in payload.get("notes", []) or (payload.get("tables") or {}).get("notes", []):
        out.append(f"- {note}")
    if follows_schema(rows):
        cols = ["workload", "method", "metric", "value", "unit", "baseline", "baseline_value", "ratio"]
        extra = sorted({k for r in rows for k in r} - set(ROW_KEYS) - {"params", "note"})
        cols += extra + ["note"] if any("note" in r for r in rows) else extra
        out += ["", _table(rows, cols)]
        out += ["", f"_rows carry version {rows[0].get('version')}, commit {rows[0].get('commit')}, "
                    f"timestamp {rows[0].get('timestamp')}, device {rows[0].get('device')}_"]
    elif rows and all(isinstance(r, dict) for r in rows):
        cols = []
        for r in rows:
            cols += [k for k in r if k not in cols]
        out += ["", _table(rows, cols)]
        out += ["", "_rows in this file's own format (not the runner's row schema)_"]
    else:
        out += ["_no rows_"]
    for p in payload.get("plots", []) or []:
        out += ["", f"![{p}]({link_prefix}{p})"]
    out.append("")
    return out


def render_results_md(results: Path | None = None, *, link_prefix: str = "results/") -> str:
    """Every result file's rows, full runs first, then quick (smoke) runs in a section of their own.

    The hand-written reading of the numbers lives in ``SUMMARY.md`` beside the results folder; this
    file links to it rather than repeating it."""
    results = Path(results) if results is not None else RESULTS
    files = sorted(results.glob("*.json"))
    out = ["# fitsketch benchmark results", "",
           "Generated by `python -m bench <suite>` from every JSON file in the results folder "
           "(do not edit by hand). Each row: metric, value, the baseline measured in the same run "
           "(or the issue's target) and value / baseline, with device, fitsketch version, git commit "
           "and timestamp. Timings on a shared 2-core machine: see each file's load average.", ""]
    if (results.parent / "SUMMARY.md").exists():
        out += ["What these numbers mean (targets, rooflines, caveats): [SUMMARY.md](SUMMARY.md).", ""]
    full, quick, bad = [], [], []
    for f in files:
        try:
            payload = json.loads(f.read_text())
            if not isinstance(payload, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as e:
            bad += [f"### {f.name}", "", f"_unreadable: {e}_", ""]
            continue
        (quick if _is_quick(f, payload) else full).extend(_render_file(f, payload, link_prefix))
    if not files:
        out.append("_no result files yet_")
    if full:
        out += ["## Full runs", "", "The sizes the numbers in SUMMARY.md are read from.", ""] + full
    if quick:
        out += ["## Quick runs (`--quick`)", "",
                "Smoke sizes (CI's `make bench-smoke` sizes): they show the code runs; do not compare "
                "their numbers with the full runs above.", ""] + quick
    out += bad
    return "\n".join(out) + "\n"


def write_results_md(results: Path | None = None, md_path: Path | None = None) -> Path:
    results = Path(results) if results is not None else RESULTS
    md_path = Path(md_path) if md_path is not None else results.parent / "RESULTS.md"
    rel = os.path.relpath(results, md_path.parent).replace(os.sep, "/")
    text = render_results_md(results, link_prefix=("" if rel == "." else rel + "/"))
    tmp = md_path.with_suffix(".md.tmp")
    tmp.write_text(text)
    os.replace(tmp, md_path)
    return md_path


# ----------------------------------------------------------------------------- plots
def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bar_chart(path: Path, groups: list[str], series: dict[str, list[float]], *, title: str, ylabel: str,
              ylim=None, xlabel: str = "workload") -> Path:
    """Grouped bars: one group per workload, one bar per method; a missing value is marked "n/a"
    (not a silent gap), the legend sits below the axes (it covered the tallest bars)."""
    plt = pyplot()
    n = max(len(series), 1)
    fig, ax = plt.subplots(figsize=(max(8, 0.28 * n * len(groups) + 3), 5.6))
    width = 0.8 / n
    x = np.arange(len(groups))
    for i, (name, vals) in enumerate(series.items()):
        v = np.array([np.nan if val is None else float(val) for val in vals])
        pos = x + (i - (n - 1) / 2) * width
        ax.bar(pos, v, width, label=name)
        for px in pos[np.isnan(v)]:
            ax.text(px, 0.01, "n/a", rotation=90, ha="center", va="bottom", fontsize=8, color="0.4")
        for px in pos[v == 0]:   # a zero is a result, not a gap
            ax.text(px, 0.01, "0", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, groups, fontsize=11)
    ax.set_xlabel(xlabel, fontsize=11)
    ax.set_ylabel(ylabel, fontsize=11)
    ax.tick_params(axis="y", labelsize=10)
    ax.set_title(title, fontsize=13)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=10, ncol=min(n, 4), loc="upper center", bbox_to_anchor=(0.5, -0.14), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
