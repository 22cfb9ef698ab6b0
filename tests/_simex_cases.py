"""Random SimEx fleets for the score tests (test_simex_latent, test_simex_regions): one tiny
autoencoder config and a fleet of each kind (MLP, conv over 8x8 images, per-class MLPs) with a
target drawn around it, passed through the stored form as a hub reads them."""
from __future__ import annotations

import numpy as np

from fitsketch import simex as S

TINY = S.AEConfig(hidden=(8, 3, 8), channels=(2, 3), epochs=4, min_epochs=1, patience=4, time_cap_s=0, seed=0)


def fleet_case(case: str, n_target: int, rng, target_sd: float):
    """``(records, target)``: ``case`` "mlp", "conv" or "classes"; the target has ``n_target`` rows,
    drawn with spread ``target_sd`` (in the sources' units) around a random centre."""
    if case == "conv":
        x = rng.random((30, 64)).astype(np.float32) * 16
        recs = S.train_fleet(x, image_shape=(1, 8, 8), config=TINY)
        target = rng.random((n_target, 64)) * rng.uniform(1, 20)
    else:
        d = int(rng.integers(2, 7))
        x = (rng.normal(size=(40, d)) * rng.uniform(0.1, 50, size=d)).astype(np.float32)
        recs = S.train_fleet(x, rng.permutation(np.arange(40) % 3) if case == "classes" else None, config=TINY)
        target = rng.normal(rng.normal(), target_sd, size=(n_target, d)) * rng.uniform(0.1, 50, size=d)
    return [S.AERecord.from_record(r.to_record()) for r in recs], target   # through the stored form
