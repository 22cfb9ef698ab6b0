"""Small example data the package creates itself (NumPy + pandas only), for the README's quick start.

A world of ``CLASSES`` (4) classes of rows with ``FEATURES`` (6) numeric columns ``x0..x5``: each
class is a Gaussian blob around a centre fixed once for the module (seed 1234), so every call draws
from the same classes. Data sets differ by their class mix (``class_shares``) and by a shift of
every value (``shift``, a change of sensor calibration, say).

    from fitsketch import datasets
    zoo = datasets.model_zoo()          # {"model-a": DataFrame, ...}: three training sets, column "label"
    query = datasets.query()            # unlabelled rows whose class mix is closest to model-b's

``python -m fitsketch.datasets DIR`` writes the same tables as CSV files into DIR (for the CLI).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

CLASSES = 4
FEATURES = 6
_CENTRES = np.random.default_rng(1234).normal(0.0, 1.2, (CLASSES, FEATURES))

# the training sets of the example zoo: which classes each model mostly saw, and a domain shift
ZOO = {
    "model-a": {"class_shares": [0.5, 0.5, 0.0, 0.0], "shift": 0.0, "seed": 1},
    "model-b": {"class_shares": [0.05, 0.05, 0.45, 0.45], "shift": 0.0, "seed": 2},
    "model-c": {"class_shares": [0.25, 0.25, 0.25, 0.25], "shift": 1.5, "seed": 3},
}
QUERY = {"class_shares": [0.1, 0.1, 0.4, 0.4], "shift": 0.0, "seed": 7}


def blobs(n: int = 500, *, class_shares=None, shift: float = 0.0, seed: int = 0, labels: bool = True) -> pd.DataFrame:
    """``n`` rows of the example world: columns ``x0..x5`` (float) and, with ``labels``, ``label``
    (int 0..3), drawn with class probabilities ``class_shares`` (default: equal) and every value
    shifted by ``shift``."""
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    p = np.full(CLASSES, 1.0 / CLASSES) if class_shares is None else np.asarray(class_shares, dtype=np.float64)
    if p.shape != (CLASSES,) or not np.isfinite(p).all() or (p < 0).any() or p.sum() <= 0:
        raise ValueError(f"class_shares must be {CLASSES} numbers >= 0 with a positive sum, got {class_shares!r}")
    rng = np.random.default_rng(seed)
    y = rng.choice(CLASSES, size=int(n), p=p / p.sum())
    X = _CENTRES[y] + rng.normal(0.0, 1.0, (int(n), FEATURES)) + float(shift)
    df = pd.DataFrame(X, columns=[f"x{i}" for i in range(FEATURES)])
    if labels:
        df["label"] = y
    return df


def model_zoo(n: int = 600) -> dict[str, pd.DataFrame]:
    """The training sets of three example models (with their ``label`` column): model-a saw only
    classes 0 and 1, model-b mostly 2 and 3, model-c every class equally but shifted by +1.5."""
    return {name: blobs(n, **spec) for name, spec in ZOO.items()}


def query(n: int = 300, *, labels: bool = False) -> pd.DataFrame:
    """Rows of "your data": mostly classes 2 and 3, unshifted (so model-b fits it best); without
    the label column unless ``labels``."""
    return blobs(n, labels=labels, **QUERY)


def write_csv(directory) -> list[str]:
    """Write ``model-a.csv``, ``model-b.csv``, ``model-c.csv`` and ``query.csv`` into ``directory``."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    out = []
    for name, df in {**model_zoo(), "query": query()}.items():
        path = d / f"{name}.csv"
        df.to_csv(path, index=False)
        out.append(str(path))
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: python -m fitsketch.datasets DIR   (writes the example CSV files into DIR)", file=sys.stderr)
        return 2
    for p in write_csv(argv[0]):
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
