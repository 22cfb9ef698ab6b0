"""The data of tests/data/hub_before_families (a hub written by fitsketch before hubs recorded a
MinHash family): regenerated here so test_minhash_family.py can rebuild it with today's code."""
import numpy as np
import pandas as pd


def frames():
    """Five small tables (numeric, categorical and text columns) from a fixed seed."""
    rng = np.random.default_rng(20261129)
    words = [f"w{i}" for i in range(60)]
    out = []
    for i in range(5):
        n = 150
        out.append((f"m{i}", pd.DataFrame({
            "x": np.round(rng.normal(i * 0.5, 1.0, n), 3),
            "k": rng.integers(0, 12, n) + i,
            "c": rng.choice(["red", "green", "blue", "cyan", "teal"][: 3 + i % 3], n),
            "t": [" ".join(rng.choice(words[i * 5: i * 5 + 30], 4)) for _ in range(n)],
        })))
    return out


def query():
    rng = np.random.default_rng(7)
    n = 80
    words = [f"w{i}" for i in range(60)]
    return pd.DataFrame({"x": np.round(rng.normal(1.0, 1.0, n), 3), "k": rng.integers(0, 12, n) + 2,
                         "c": rng.choice(["red", "green", "blue", "cyan"], n),
                         "t": [" ".join(rng.choice(words[10:40], 4)) for _ in range(n)]})
