"""The one helper for derived FAISS files (engine/faiss_files.py) that the embeddings' and
ProbeLog's indexes go through: atomic save, versioned load, None (= rebuild) for anything stale,
foreign or unreadable. Vectors are compared exactly (FAISS stores the float32 rows as given)."""
import os

import faiss
import numpy as np
import pytest

from fitsketch import faiss_files as FF
from fitsketch.storage import pack


def _index(rng, n, d=8):
    x = rng.standard_normal((n, d)).astype(np.float32)
    ix = faiss.IndexFlatIP(d)
    if n:
        ix.add(x)
    return ix, x


def _load(fpath, mpath, accept=lambda m: True, binary=False):
    return FF.load(fpath, mpath, fmt=3, accept=accept, binary=binary,
                   decode=lambda ix, m: (ix, m) if ix.ntotal == m["ntotal"] else None)


@pytest.mark.parametrize("n", [0, 1, 7, 97])
def test_save_then_load_round_trips(tmp_path, rng, n):
    ix, x = _index(rng, n)
    fpath, mpath = FF.paths(str(tmp_path), "sample-flat")
    assert (fpath, mpath) == (str(tmp_path / "indexes" / "sample-flat.faiss"),
                              str(tmp_path / "indexes" / "sample-flat.msgpack"))
    assert FF.save(fpath, mpath, ix, {"v": 3, "ntotal": n, "generation": 5})
    got, meta = _load(fpath, mpath)
    assert meta == {"v": 3, "ntotal": n, "generation": 5} and got.ntotal == n
    if n:
        np.testing.assert_array_equal(got.reconstruct_n(0, n), x)
    assert sorted(os.listdir(tmp_path / "indexes")) == ["sample-flat.faiss", "sample-flat.msgpack"]   # no temp left


def test_binary_index_round_trips(tmp_path, rng):
    codes = rng.integers(0, 256, size=(13, 2), dtype=np.uint8)
    ix = faiss.IndexBinaryFlat(16)
    ix.add(codes)
    fpath, mpath = FF.paths(str(tmp_path), "sample-deephash")
    assert FF.save(fpath, mpath, ix, {"v": 3, "ntotal": 13}, binary=True)
    got, _ = _load(fpath, mpath, binary=True)
    assert got.ntotal == 13 and np.array_equal(faiss.vector_to_array(got.xb).reshape(13, 2), codes)


def test_every_unusable_pair_loads_as_none(tmp_path, rng):
    ix, _ = _index(rng, 5)
    fpath, mpath = FF.paths(str(tmp_path), "x")
    assert _load(fpath, mpath) is None                                   # missing
    FF.save(fpath, mpath, ix, {"v": 2, "ntotal": 5})
    assert _load(fpath, mpath) is None                                   # another format
    FF.save(fpath, mpath, ix, {"v": 3, "ntotal": 5, "generation": 1})
    assert _load(fpath, mpath, accept=lambda m: m["generation"] == 2) is None   # stale (owner's accept)
    assert _load(fpath, mpath, accept=lambda m: m["generation"] == 1) is not None
    FF.save(fpath, mpath, ix, {"v": 3, "ntotal": 6})
    assert _load(fpath, mpath) is None                                   # index does not match its sidecar
    FF.save(fpath, mpath, ix, {"v": 3, "ntotal": 5})
    with open(fpath, "wb") as f:
        f.write(b"garbage")
    assert _load(fpath, mpath) is None                                   # unreadable index
    with open(mpath, "wb") as f:
        f.write(pack([1, 2]))
    assert _load(fpath, mpath) is None                                   # sidecar not a dict
    with open(mpath, "wb") as f:
        f.write(b"\xc1")
    assert _load(fpath, mpath) is None                                   # sidecar not msgpack


def test_accept_is_asked_before_the_index_is_read(tmp_path, rng):
    ix, _ = _index(rng, 3)
    fpath, mpath = FF.paths(str(tmp_path), "x")
    FF.save(fpath, mpath, ix, {"v": 3, "ntotal": 3})
    os.remove(fpath)
    decoded = []
    assert FF.load(fpath, mpath, fmt=3, accept=lambda m: False, decode=lambda i, m: decoded.append(1)) is None
    assert decoded == []


def test_unwritable_place_keeps_nothing_and_says_so(tmp_path, rng, caplog):
    """A hub whose ``indexes`` cannot be a directory (here: a file; a read-only hub directory
    fails the same way): False, a warning, and no temporary file anywhere."""
    ix, _ = _index(rng, 4)
    (tmp_path / "indexes").write_bytes(b"")
    fpath, mpath = FF.paths(str(tmp_path), "x")
    assert FF.save(fpath, mpath, ix, {"v": 3, "ntotal": 4}) is False
    assert os.listdir(tmp_path) == ["indexes"] and "not written" in caplog.text


def test_a_pair_from_two_saves_loads_as_none(tmp_path, rng):
    """The halves of two saves -- a crash or another process between save's two renames leaves the
    new index beside the old sidecar -- are noticed (the sidecar's size and CRC-32 of its index
    file) and rebuilt, even when the sidecar would otherwise accept the index."""
    n = int(rng.integers(3, 40))
    a, _ = _index(rng, n)
    b, _ = _index(rng, n)                   # another index of the same size: decode would take it
    fpath, mpath = FF.paths(str(tmp_path), "x")
    assert FF.save(fpath, mpath, a, {"v": 3, "ntotal": n})
    old_sidecar = open(mpath, "rb").read()
    assert FF.save(fpath, mpath, b, {"v": 3, "ntotal": n})
    assert _load(fpath, mpath) is not None
    with open(mpath, "wb") as f:            # new index, old sidecar
        f.write(old_sidecar)
    assert _load(fpath, mpath) is None
    with open(mpath, "wb") as f:            # a sidecar written before the record existed: trusted as before
        f.write(pack({"v": 3, "ntotal": n}))
    got = _load(fpath, mpath)
    assert got is not None and got[1] == {"v": 3, "ntotal": n}
