"""storage/codec.py compresses with a ``zstandard`` context kept per thread and level where that
package is installed (pyarrow's codec creates one a call): the frames must be byte for byte
pyarrow's, so a hub's records do not depend on which wrote them, and read back by either."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from fitsketch.storage import codec as C

pytest.importorskip("zstandard")


def _arrays(rng):
    """Fresh arrays of the kinds hub records hold, incl. empty, one element, odd and page sizes."""
    out = []
    for n in (0, 1, 7, 97, 511, 512, 4097, int(rng.integers(600, 20000))):
        out.append(rng.integers(0, int(rng.integers(2, 300)), n).astype(rng.choice(["u1", "<u2", "<i4", "<u4", "<i8"])))
        out.append(np.round(rng.normal(size=n), int(rng.integers(0, 4))).astype(rng.choice(["<f2", "<f4", "<f8"])))
        out.append(np.sort(rng.integers(0, 1 << 30, n)).astype(np.int64))
    out.append(rng.integers(0, 2**32, (32, 128), dtype=np.uint64).astype(np.uint32))   # a 2-D matrix
    out.append(np.repeat(rng.integers(0, 2**32, (1, 128)), 32, axis=0).astype(np.uint32))
    return out


@pytest.mark.parametrize("level", [None, 1, 3, 6, 15])
def test_zstandard_frames_equal_pyarrow_frames(rng, monkeypatch, level):
    for a in _arrays(rng):
        for flt in (0, 1, 2):
            buf = C._filtered(a, flt) if flt != 2 or a.dtype.kind in "iu" else C._filtered(a, 1)
            monkeypatch.setattr(C, "USE_ZSTANDARD", True)
            fast = C._compress(buf, level)
            monkeypatch.setattr(C, "USE_ZSTANDARD", False)
            assert C._compress(buf, level) == fast, (a.dtype, a.shape, flt, level)
            assert C.decompress(fast[1], fast[0], buf.nbytes) == np.ascontiguousarray(buf).tobytes()


def test_records_packed_in_threads_equal_pyarrow_records(rng, monkeypatch):
    """Whole records (``pack(compress=True)`` at two levels), packed in 3 threads at once, equal
    their pyarrow packs, and decode to the arrays they hold."""
    recs = [{"v": 1, "a": a, "b": [a[::-1].copy(), int(rng.integers(0, 9))]} for a in _arrays(rng)]
    monkeypatch.setattr(C, "USE_ZSTANDARD", False)
    want = {lv: [C.pack(r, compress=True, level=lv) for r in recs] for lv in (None, 6)}
    monkeypatch.setattr(C, "USE_ZSTANDARD", True)
    got, errors = {}, []

    def work(i):
        try:
            for _ in range(3):
                got[i] = {lv: [C.pack(r, compress=True, level=lv) for r in recs] for lv in (None, 6)}
        except Exception as e:   # reported below
            errors.append(e)

    ts = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert not errors and all(g == want for g in got.values()) and len(got) == 3
    for r, b in zip(recs, want[None]):
        back = C.unpack(b, stored=True)
        assert np.array_equal(back["a"], r["a"]) and back["a"].dtype == r["a"].dtype
