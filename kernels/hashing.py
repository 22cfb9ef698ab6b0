"""Seeded, vectorized hashing shared by the sketches.

* ``hash_tokens``: strings / bytes / ints -> 64-bit, through pandas' vectorized SipHash
  (``pandas.util.hash_array`` with a seed-derived 16-byte key), so signing a column never
  loops in Python.
* ``mix64``: the SplitMix64 finalizer over uint64 (a bijection; wraps mod 2**64), used to
  hash integers (bucket keys, counters) and to derive counter-based random numbers.
* ``to_u32``: the high 32 bits of a 64-bit hash, the element domain of the MinHash kernel.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_MASK64 = (1 << 64) - 1


def _hash_key(seed: int) -> str:
    return format(int(seed) & _MASK64, "016x")


def mix64(x, seed: int = 0) -> np.ndarray:
    """SplitMix64 of ``x + seed * golden`` over uint64 (vectorized, wraps mod 2**64)."""
    z = np.asarray(x).astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        z += np.uint64((int(seed) * 0x9E3779B97F4A7C15 + 0x9E3779B97F4A7C15) & _MASK64)
        z ^= z >> np.uint64(30)
        z *= _M1
        z ^= z >> np.uint64(27)
        z *= _M2
        z ^= z >> np.uint64(31)
    return z


def hash_tokens(tokens, seed: int = 0) -> np.ndarray:
    """Hash a 1-D sequence of str / bytes / int tokens to uint64, seeded.

    Strings and bytes go through pandas' SipHash with a 16-byte key derived from ``seed``;
    integer arrays go through :func:`mix64`. ``b"x"`` and ``"x"`` hash alike (pandas encodes
    strings as UTF-8).
    """
    arr = np.asarray(tokens)
    if arr.dtype.kind in "iub":
        return mix64(arr.astype(np.int64).view(np.uint64), seed)
    if arr.dtype.kind in "US":
        arr = arr.astype(object)
    if arr.ndim != 1:
        arr = arr.reshape(-1)
    if len(arr) == 0:
        return np.zeros(0, dtype=np.uint64)
    return pd.util.hash_array(arr.astype(object), hash_key=_hash_key(seed), categorize=False)


def to_u32(h64: np.ndarray) -> np.ndarray:
    """High 32 bits of 64-bit hashes, as int64 (the MinHash kernel's element domain)."""
    return (np.asarray(h64, dtype=np.uint64) >> np.uint64(32)).astype(np.int64)


def uniform01(*keys, seed: int = 0) -> np.ndarray:
    """Counter-based uniforms in (0, 1) from integer keys (broadcast): mix64 chained over keys."""
    z = np.uint64(int(seed) & _MASK64)
    h = mix64(np.zeros((), dtype=np.uint64), seed)
    for k in keys:
        with np.errstate(over="ignore"):
            h = mix64(np.asarray(k).astype(np.int64).view(np.uint64) ^ h, int(z))
    # 53 high bits -> (0, 1): add half an ulp so 0 is never produced
    return ((h >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)
