"""Shared benchmark helpers: one timing runner, result files, Markdown tables, seeded data.

Every result file (``bench/results/<name>.json``) carries the device, library versions, git
commit, timestamp and the baseline measured in the same run; timings are the median and spread
of ``repeats`` runs after ``warmup`` runs, synchronizing the GPU around each run.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"


# ----------------------------------------------------------------------------- running
def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="small sizes (seconds), for CI and smoke runs")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--repeats", type=int, default=None, help="timed runs per measurement")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic data")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice); 1 is steadier on a busy machine")
    p.add_argument("--out", type=Path, default=None, help=f"results folder (default {RESULTS})")
    return p


def setup(args) -> None:
    """Apply the common options (threads) and warn when the machine is already busy."""
    if args.threads:
        torch.set_num_threads(args.threads)
    load = load_average()
    if load is not None and load > (os.cpu_count() or 1):
        print(f"warning: 1-minute load average {load:.1f} exceeds the {os.cpu_count()} CPUs: "
              f"other processes share this machine and timings will be noisy")


def _sync(device: str) -> None:
    if device == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize()


def timeit(fn, *, repeats: int = 5, warmup: int = 1, device: str = "cpu") -> dict:
    """Run ``fn()`` ``warmup`` times untimed, then ``repeats`` times timed.

    Returns ``{"median_s", "min_s", "max_s", "iqr_s", "times_s", "result"}`` (``result`` is the
    last return value, for checks outside the timing).
    """
    result = None
    for _ in range(warmup):
        result = fn()
    _sync(device)
    times = []
    for _ in range(max(1, repeats)):
        _sync(device)
        t0 = time.perf_counter()
        result = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    q = np.percentile(times, [25, 75]) if len(times) > 1 else (times[0], times[0])
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "iqr_s": float(q[1] - q[0]), "times_s": times, "result": result}


def spread(t: dict) -> str:
    return f"{t['median_s'] * 1e3:.1f} ms (min {t['min_s'] * 1e3:.1f}, max {t['max_s'] * 1e3:.1f})"


# ----------------------------------------------------------------------------- reporting
def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True,
                               cwd=Path(__file__).resolve().parent, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except Exception:
        return "unknown"


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # pragma: no cover - not on every platform
        return None


def environment(device: str) -> dict:
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
        "commit": git_commit(), "load_avg_1m": load_average(),
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _clean(obj):
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items() if k != "result"}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def write_result(name: str, payload: dict, out: Path | None = None) -> Path:
    """Write ``<out>/<name>.json`` atomically (tmp file + rename); ``out`` defaults to
    ``bench/results``. Every writer passes its ``--out`` here, so a run into a temporary folder
    leaves the tracked result files alone."""
    out = Path(out) if out is not None else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_clean(payload), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


# ----------------------------------------------------------------------------- seeded data
def token_sets(n_sets: int, set_size: int, vocab: int = 200_000, seed: int = 0) -> list[list[str]]:
    """``n_sets`` lists of ``set_size`` string tokens drawn from a shared vocabulary (the token
    objects are shared, so 10M tokens cost pointers, not strings)."""
    rng = np.random.default_rng(seed)
    words = [f"token-{i}" for i in range(vocab)]
    ids = rng.integers(0, vocab, size=(n_sets, set_size))
    return [[words[j] for j in row] for row in ids.tolist()]


def int_sets(n_sets: int, set_size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """CSR ``(values, offsets)`` of ``n_sets`` sets of ``set_size`` 32-bit integers."""
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 1 << 32, size=n_sets * set_size, dtype=np.int64)
    return values, np.arange(0, n_sets * set_size + 1, set_size, dtype=np.int64)


def partition_histograms(n_sources: int, n_partitions: int, n_features: int, n_bins: int,
                         rows_per_partition: int = 500, n_families: int = 100, seed: int = 0):
    """Synthetic datasets as partition histograms, with graded similarity to family bases.

    Source s belongs to family ``s % n_families`` and has the per-feature bin distribution
    ``(1 - alpha_s) * base_family + alpha_s * own_s`` (alpha_s ~ U[0, 1]); each of its
    partitions is a multinomial sample of ``rows_per_partition`` rows per feature.
    Returns ``(hist (n_sources, n_partitions, n_features, n_bins) float32 normalized per feature,
    family (n_sources,), alpha (n_sources,), bases (n_families, n_features, n_bins))``.
    """
    rng = np.random.default_rng(seed)
    bases = rng.dirichlet(np.full(n_bins, 0.5), size=(n_families, n_features))
    own = rng.dirichlet(np.full(n_bins, 0.5), size=(n_sources, n_features))
    family = np.arange(n_sources) % n_families
    alpha = rng.random(n_sources)
    dist = (1 - alpha)[:, None, None] * bases[family] + alpha[:, None, None] * own
    counts = sample_partitions(rng, dist, n_partitions, rows_per_partition)
    return counts, family, alpha, bases


def sample_partitions(rng, dist: np.ndarray, n_partitions: int, rows: int) -> np.ndarray:
    """Multinomial partitions of ``rows`` rows from per-feature distributions ``dist``
    (..., n_features, n_bins) -> (..., n_partitions, n_features, n_bins) normalized float32."""
    lead = dist.shape[:-2]
    p = np.broadcast_to(dist[..., None, :, :], lead + (n_partitions,) + dist.shape[-2:])
    counts = rng.multinomial(rows, p / p.sum(axis=-1, keepdims=True))
    return (counts / rows).astype(np.float32)


def exact_js(p: np.ndarray, q: np.ndarray, block: int = 2048) -> np.ndarray:
    """Exact Jensen-Shannon divergence (natural log) between every row of ``p`` (m, d) and every
    row of ``q`` (n, d), both distributions: (m, n) float64, vectorized in blocks of ``q`` rows."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)

    def plogp(x):
        return np.where(x > 0, x * np.log(np.where(x > 0, x, 1.0)), 0.0)

    hp = plogp(p).sum(axis=1)  # -H(P)
    hq = plogp(q).sum(axis=1)
    out = np.empty((p.shape[0], q.shape[0]))
    for lo in range(0, q.shape[0], block):
        qb = q[lo:lo + block]
        m = 0.5 * (p[:, None, :] + qb[None, :, :])  # (m, b, d)
        out[:, lo:lo + block] = 0.5 * (hp[:, None] + hq[None, lo:lo + block]) - plogp(m).sum(axis=2)
    return np.maximum(out, 0.0)


def mlp_fleet(n_ae: int, dims: list[int], seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Random stacked MLP autoencoder weights ``[(W (E, in, out), b (E, out)), ...]`` float32."""
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=(n_ae, i, o)).astype(np.float32) / np.float32(np.sqrt(i)),
             (0.1 * rng.normal(size=(n_ae, o))).astype(np.float32))
            for i, o in zip(dims[:-1], dims[1:])]
