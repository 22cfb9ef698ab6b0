"""Growable in-memory columns for the candidate stage's indexes (engine/screen.py; persisted by
engine/indexes.py): arrays appended in blocks, and dense ids for int64 keys."""
from __future__ import annotations

import numpy as np


class Grow:
    """A growable array (capacity doubles), rows appended in blocks."""

    def __init__(self, dtype, width: int | None = None):
        self.a = np.zeros((0,) if width is None else (0, width), dtype=dtype)
        self.n = 0

    @property
    def v(self) -> np.ndarray:
        return self.a[:self.n]

    def take(self, sel) -> np.ndarray:
        """Rows ``sel`` of the array, a new plain array (``np.take`` on the base array: ~2x faster than
        fancy indexing a memory-mapped one, e.g. an index file's; the same values)."""
        return np.take(np.asarray(self.v), sel, axis=0)

    def extend(self, x) -> None:
        x = np.asarray(x, dtype=self.a.dtype)
        need = self.n + len(x)
        if need > len(self.a):
            b = np.zeros((max(need, 2 * len(self.a), 1024),) + self.a.shape[1:], dtype=self.a.dtype)
            b[:self.n] = self.a[:self.n]
            self.a = b
        self.a[self.n:need] = x
        self.n = need

    def keep(self, mask: np.ndarray) -> None:
        m = int(mask.sum())
        self.a[:m] = self.v[mask]
        self.n = m


class Intern:
    """Dense int32 ids for int64 keys, assigned in order of first appearance (vectorized)."""

    def __init__(self):
        self.keys = np.zeros(0, dtype=np.int64)     # sorted
        self.ids = np.zeros(0, dtype=np.int32)

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, k: np.ndarray) -> np.ndarray:
        u = np.unique(k)
        new = u[~self._found(u)[1]]
        if len(new):
            keys = np.concatenate([self.keys, new])
            ids = np.concatenate([self.ids, np.arange(len(self.keys), len(keys), dtype=np.int32)])
            order = np.argsort(keys, kind="stable")
            self.keys, self.ids = keys[order], ids[order]
        return self.get(k)

    def _found(self, k):
        pos = np.minimum(np.searchsorted(self.keys, k), max(len(self.keys) - 1, 0))
        ok = (self.keys[pos] == k) if len(self.keys) else np.zeros(len(k), dtype=bool)
        return pos, ok

    def get(self, k: np.ndarray) -> np.ndarray:
        """Ids of ``k`` (-1 for keys never added)."""
        k = np.asarray(k, dtype=np.int64)
        pos, ok = self._found(k)
        return np.where(ok, self.ids[pos] if len(self.ids) else -1, -1).astype(np.int32)
