"""Random frames and sketches shared by the test files of the sketch modules (quantize, minhash,
partitions, jslsh, coverage, sketch, profiles); every caller passes a seeded generator."""
from __future__ import annotations

import numpy as np
import pandas as pd

import fitsketch


def random_frame(rng, n: int) -> pd.DataFrame:
    words = np.array(["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta"])
    return pd.DataFrame({
        "x": rng.standard_normal(n) * 100,
        "k": rng.integers(0, 20, n),
        "cat": rng.choice(words, n),
        "txt": [" ".join(rng.choice(words, rng.integers(3, 7))) for _ in range(n)],  # > 2.5 tokens: text
    })


def _cov_frame(rng, n, shift=0.0):
    return pd.DataFrame({"x": rng.normal(shift, 1, n), "y": rng.exponential(2, n) + shift,
                         "c": rng.choice(["a", "b", "c", "d"], n), "k": rng.integers(0, 5, n)})


def _frame(rng, n, loc=0.0, names=("a", "b", "c")):
    cols = {}
    for j, name in enumerate(names):
        cols[name] = rng.normal(loc + j, 1 + 0.3 * j, n)
    cols[names[-1]] = np.rint(cols[names[-1]])
    return pd.DataFrame(cols)


def _sketch(cfg, df, ps=50):
    return fitsketch.sketch_data(df, cfg, partition_size=ps)
