"""The benchmark runner's result rows, result files, ``RESULTS.md`` and plots.

One row schema for every suite (``ROW_KEYS``): each row says what was measured (``metric``,
``value``, ``unit``), against what (``baseline`` = the baseline's name, ``baseline_value``
measured in the same run or the issue's target, ``ratio`` = value / baseline_value), and where
(``device``, fitsketch ``version``, git ``commit``, ``timestamp``). A result file
``bench/results/<suite>.json`` is ``{"suite", "quick", "env", "rows", "plots", "tables"}``.

``write_results_md`` regenerates ``RESULTS.md`` from every JSON file in the results folder: files
whose ``rows`` follow the row schema become one table each; other files (the kernel benchmarks'
own rows, written with ``bench._common.write_result``) become a table of their rows' columns.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import subprocess
from pathlib import Path

import numpy as np

# bench._common (timing, environment) imports torch; this module does not, so writing rows and
# RESULTS.md stays fast (tests/test_bench.py). Same results folder as bench._common.RESULTS.
RESULTS = Path(__file__).resolve().parent / "results"
ROW_KEYS = ("suite", "workload", "method", "metric", "value", "unit", "baseline", "baseline_value",
            "ratio", "device", "version", "commit", "timestamp", "quick")
REQUIRED_KEYS = ("metric", "value", "baseline", "ratio", "device", "version", "commit", "timestamp")


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


def environment(device: str = "cpu") -> dict:
    from . import _common as C  # imports torch

    env = C.environment(device)
    try:
        env["loadavg_1m"] = os.getloadavg()[0]  # other work on the machine skews timings
    except OSError:  # pragma: no cover
        pass
    return env


def _clean(obj):
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
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
    out = Path(out) if out is not None else RESULTS
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
