"""fitsketch.quantize: numeric bucket keys against a plain-loop reference (special values, every
magnitude) and the bucket width bound. Random inputs are fresh per run; a failure names the seed."""
from __future__ import annotations

import math

import numpy as np
import pytest

from fitsketch.quantize import BIAS, MIN_ABS, NAN_KEY, NEG_INF_KEY, POS_INF_KEY, numeric_keys

SIZES = [1, 7, 97, 1001]


def ref_numeric_key(v: float, acc: float) -> int:
    if math.isnan(v):
        return NAN_KEY
    if v == math.inf:
        return POS_INF_KEY
    if v == -math.inf:
        return NEG_INF_KEY
    if abs(v) <= MIN_ABS:
        return 0
    k = math.ceil(math.log(abs(v)) / math.log((1 + acc) / (1 - acc)))
    return BIAS + k if v > 0 else -(BIAS + k)


@pytest.mark.parametrize("n", [0] + SIZES)
def test_numeric_keys_equal_reference(rng, n):
    v = rng.standard_normal(n) * 10.0 ** rng.integers(-12, 12, n)
    if n > 3:
        v[:4] = [np.nan, np.inf, -np.inf, 0.0]
    for acc in (0.01, 0.1, 0.37):
        got = numeric_keys(v, acc)
        assert got.dtype == np.int64
        assert got.tolist() == [ref_numeric_key(float(x), acc) for x in v]
        assert np.all(np.abs(got) < 2**31)


def test_numeric_keys_relative_accuracy(rng):
    """Two values in one bucket differ by at most the bucket's relative width."""
    v = np.exp(rng.uniform(-20, 20, 5000))
    acc = 0.05
    keys = numeric_keys(v, acc)
    gamma = (1 + acc) / (1 - acc)
    for key in np.unique(keys):
        vals = v[keys == key]
        assert vals.max() / vals.min() <= gamma * (1 + 1e-9)





@pytest.mark.parametrize("n", [0, 1, 2, 7, 1001])
def test_numeric_keys_at_equal_reference_bit_for_bit(rng, n):
    """The shared-logarithm fast path against the definition, with and without special values
    (the no-special path skips the masks), 1-D and 2-D, two accuracies at once."""
    from fitsketch.quantize import numeric_keys_at, numeric_keys_reference

    for specials in (False, True):
        v = rng.standard_normal(n) * 10.0 ** rng.integers(-12, 12, n)
        if specials and n:
            pick = rng.choice([np.nan, np.inf, -np.inf, 0.0, 1e-10, -1e-12], n)
            mask = rng.random(n) < 0.3
            v[mask] = pick[mask]
        accs = (float(rng.uniform(0.001, 0.2)), float(rng.uniform(0.05, 0.5)))
        for arr in (v, v.reshape(-1, 1) if n else v):
            got = numeric_keys_at(arr, accs)
            for g, acc in zip(got, accs):
                ref = numeric_keys_reference(arr, acc)
                assert g.dtype == np.int64 and g.shape == ref.shape and np.array_equal(g, ref)
