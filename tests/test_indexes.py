"""Persisted search indexes (engine/indexes.py over storage/arrayfile.py): an index read back from
its file equals the one rebuilt from LMDB, array by array; a file of an earlier generation is
brought forward (adds and removes since); a corrupt, foreign, newer or differently parametrized
file is ignored and the index rebuilt; an index layout this module does not know is not persisted.
The array file itself round-trips every numeric dtype and shape and rejects damaged files."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pandas as pd
import pytest

import fitsketch
from fitsketch import indexes as I
from fitsketch.storage import CorruptHubError
from fitsketch.storage.arrayfile import read_arrays, write_arrays


# ----------------------------------------------------------------------------- the array file
@pytest.mark.parametrize("shapes", [[], [(0,)], [(1,)], [(7,), (3, 5), (0, 4)], [(1001,), (2, 3, 4)]])
def test_array_file_round_trips(tmp_path, rng, shapes):
    dts = ["<i8", "<i4", "<u4", "<f4", "<f8", "<f2", "|b1", "|u1", "<i2"]
    arrays = {}
    for i, s in enumerate(shapes):
        dt = np.dtype(dts[int(rng.integers(len(dts)))])
        a = rng.integers(-1000, 1000, s) if dt.kind in "iu" else rng.normal(size=s)
        arrays[f"a{i}"] = (a > 0 if dt.kind == "b" else a).astype(dt)
    meta = {"v": 3, "name": "x", "nested": {"k": [1, 2.5, None]}}
    p = str(tmp_path / "f.arr")
    write_arrays(p, meta, arrays)
    got_meta, got = read_arrays(p)
    assert got_meta == meta and got.keys() == arrays.keys()
    for k, a in arrays.items():
        assert got[k].dtype == a.dtype and got[k].shape == a.shape and np.array_equal(got[k], a)


def test_array_file_arrays_are_private_copies_of_the_file(tmp_path, rng):
    """read_arrays maps the file copy-on-write: the arrays can be written, a write never reaches the
    file, and a file replaced after the read (how writers update it) leaves them as read."""
    a = {"x": rng.normal(size=(513, 3)), "y": rng.integers(0, 1 << 40, 1001), "z": np.zeros(0, np.int32)}
    p = str(tmp_path / "f.arr")
    write_arrays(p, {"v": 1}, a)
    before = open(p, "rb").read()
    _, got = read_arrays(p)
    got["x"][5, 1] = 99.0
    got["y"][:7] = -1
    assert open(p, "rb").read() == before
    _, again = read_arrays(p)
    assert np.array_equal(again["x"], a["x"]) and np.array_equal(again["y"], a["y"])
    write_arrays(p, {"v": 2}, {"x": rng.normal(size=(2, 3))})
    assert np.array_equal(again["x"], a["x"]) and np.array_equal(again["y"], a["y"]) and again["z"].shape == (0,)
    assert got["x"][5, 1] == 99.0 and np.array_equal(got["x"][:5], a["x"][:5])


def _damaged(tmp_path, rng, how):
    p = str(tmp_path / "f.arr")
    write_arrays(p, {"v": 1}, {"x": rng.normal(size=300), "y": rng.integers(0, 9, 50)})
    data = bytearray(open(p, "rb").read())
    if how == "flip":                          # a bit inside the first array (the header is ~100 bytes of 2,900)
        data[len(data) // 2] ^= 0x04
    elif how == "truncate":
        data = data[:len(data) - 17]
    elif how == "magic":
        data[0] ^= 0xFF
    elif how == "header_len":
        data[8:16] = (len(data) * 4).to_bytes(8, "little")
    elif how == "empty":
        data = bytearray()
    open(p, "wb").write(bytes(data))
    return p


@pytest.mark.parametrize("how", ["flip", "truncate", "magic", "header_len", "empty"])
def test_array_file_rejects_damage(tmp_path, rng, how):
    with pytest.raises(CorruptHubError):
        read_arrays(_damaged(tmp_path, rng, how))


def test_array_file_rejects_object_dtype_both_ways(tmp_path):
    from fitsketch.storage import CodecError
    from fitsketch.storage import pack

    with pytest.raises(CodecError):
        write_arrays(str(tmp_path / "o.arr"), {}, {"o": np.array(["a", None], dtype=object)})
    # a hand-made header naming an object dtype is refused without reading the data as objects
    import struct

    from fitsketch.storage.arrayfile import ARRAY_FILE_FORMAT, MAGIC
    header = pack({"v": ARRAY_FILE_FORMAT, "meta": {}, "arrays": [["o", "|O", [1], 0, 8, 0]]})
    p = tmp_path / "h.arr"
    p.write_bytes(MAGIC + struct.pack("<Q", len(header)) + header + b"\0" * 200)
    with pytest.raises(CorruptHubError, match="not numeric"):
        read_arrays(str(p))


# ----------------------------------------------------------------------------- the indexes
@pytest.fixture
def always_save(monkeypatch):
    monkeypatch.setattr(I, "SAVE_MIN_CHANGES", 0)
    monkeypatch.setattr(I, "SAVE_FRACTION", 0.0)


def _sketch(rng, cfg, cols=("a", "b", "c")):
    n = int(rng.integers(40, 160))
    df = pd.DataFrame({c: rng.normal(rng.normal(0, 3), 1 + rng.random(), n) for c in cols[:-1]})
    df[cols[-1]] = rng.choice(["x", "y", "z", f"k{int(rng.integers(5))}"], n)
    return fitsketch.sketch_data(df, cfg, partition_size=int(rng.integers(20, 60)))


def _states(hub):
    hub.warm()
    return I._screen_state(hub._indexes._screen), I._profile_state(hub._indexes._profiles)


def _equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], np.ndarray):
            assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
            assert np.array_equal(a[k], b[k], equal_nan=a[k].dtype.kind == "f"), k
        else:
            assert a[k] == b[k], k


def _copy_without_files(path):
    tmp = str(path) + ".copy"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(path, tmp)
    shutil.rmtree(os.path.join(tmp, "indexes"), ignore_errors=True)
    return tmp


def _screens(hub, q):
    """Every entry's screen under each histogram method, and the profile index's rows."""
    from fitsketch.jslsh import own_keys

    c = hub.config
    kw = dict(seed=c.seed, r=c.jslsh_r, k=c.jslsh_k, l=c.jslsh_l)
    keys = (own_keys(q.hist, q.n_features, q.n_partitions, per_dataset=True, **kw),
            own_keys(q.hist, q.n_features, q.n_partitions, per_dataset=False, **kw))
    out = {}
    for m in ("exact-js", "l2", "js", "adaptivity"):
        scr = hub._synced_screen().scores(q, m, seed=c.seed, t_keys=keys)
        out[m] = sorted(zip(scr["ids"].tolist(), scr["score"].tolist(), scr["tiebreak"].tolist(),
                            scr["exact"].tolist()))
    prof = hub._synced_profiles()
    out["profiles"] = (prof.ids.tolist(), prof.x.tolist(), [sorted(prof._schema_names[s]) for s in
                                                            prof._schema[:prof.n].tolist()])
    from fitsketch.profiles import name_keys

    out["shares"] = [prof.shares_names(k[None]) for k in name_keys(["a", "b", "c", "p", "q", "zz"], c.seed)]
    return out


def test_index_read_from_file_equals_rebuilt_and_follows_adds_and_removes(tmp_path, rng, always_save):
    cfg = fitsketch.SketchConfig(shortlist=2)
    path = tmp_path / "h.hub"
    q = _sketch(rng, cfg)
    with fitsketch.open(path, config=cfg) as hub:
        hub.add_sketches([(f"m{i}", _sketch(rng, cfg)) for i in range(int(rng.integers(5, 15)))])
        hub.add_sketch("other", _sketch(rng, cfg, cols=("p", "q")))
        written = _states(hub)
    assert sorted(os.listdir(path / "indexes")) == ["profiles.fsidx", "screen.fsidx"]
    with fitsketch.open(path) as hub:
        read = (I.SearchIndexes._load(hub._indexes, "screen", hub.store),
                I.SearchIndexes._load(hub._indexes, "profiles", hub.store))
        assert read[0] is not None and read[1] is not None
        _equal(I._screen_state(read[0]), written[0])      # array for array what was written
        _equal(I._profile_state(read[1]), written[1])
        # the file's generation is behind after these: loaded, then brought forward
        for name in rng.choice(hub.names(), 2, replace=False):
            hub.remove(str(name))
        hub.add_sketches([(f"n{i}", _sketch(rng, cfg)) for i in range(3)])
    with fitsketch.open(path) as hub:
        old = I.SearchIndexes._load(hub._indexes, "screen", hub.store)
        assert old is not None and old.generation < hub.stats()["generation"]
        got = _screens(hub, q)
        with hub.store.read() as txn:
            live = sorted(int.from_bytes(k, "big") for k in txn.keys("entries"))
        assert hub._synced_screen().ids.v.tolist() == live == hub._synced_profiles().ids.tolist()
    with fitsketch.open(_copy_without_files(path)) as hub:    # rebuilt from LMDB alone
        assert _screens(hub, q) == got
    with fitsketch.open(path) as hub:               # the file written after the sync: the same again
        assert _screens(hub, q) == got


@pytest.mark.parametrize("how", ["corrupt", "foreign", "newer", "params", "layout", "small_keys", "small_params",
                                 "offsets"])
def test_stale_or_damaged_index_file_is_rebuilt(tmp_path, rng, always_save, monkeypatch, how):
    cfg = fitsketch.SketchConfig(shortlist=2)
    path, other = tmp_path / "h.hub", tmp_path / "o.hub"
    with fitsketch.open(path, config=cfg) as hub:
        hub.add_sketches([(f"m{i}", _sketch(rng, cfg)) for i in range(6)])
        want = _states(hub)
    f = path / "indexes" / "screen.fsidx"
    if how == "corrupt":
        data = bytearray(f.read_bytes())
        data[len(data) // 2] ^= 0x10
        f.write_bytes(bytes(data))
    elif how == "foreign":                       # another hub's file of the same generation and size
        with fitsketch.open(other, config=cfg) as hub:
            hub.add_sketches([(f"m{i}", _sketch(rng, cfg)) for i in range(6)])
            _states(hub)
        shutil.copy(other / "indexes" / "screen.fsidx", f)
    elif how == "newer":
        meta, arrays = read_arrays(str(f))
        meta["generation"] += 1
        write_arrays(str(f), meta, arrays)
    elif how == "params":
        meta, arrays = read_arrays(str(f))
        meta["params"]["hist_accuracy"] /= 2
        write_arrays(str(f), meta, arrays)
    elif how == "small_keys":                    # a small query's js keys: a row short
        meta, arrays = read_arrays(str(f))
        assert meta["jks_params"] is not None and arrays["jks_data"].shape[0] == 6
        arrays["jks_data"] = np.ascontiguousarray(arrays["jks_data"][:5])
        write_arrays(str(f), meta, arrays)
    elif how == "small_params":                  # ... or their parameters malformed
        meta, arrays = read_arrays(str(f))
        meta["jks_params"] = meta["jks_params"][:2]
        write_arrays(str(f), meta, arrays)
    elif how == "offsets":                       # monotone from 0, but not where the rows start
        meta, arrays = read_arrays(str(f))
        arrays["g_fi_lo"] = np.zeros_like(arrays["g_fi_lo"])
        write_arrays(str(f), meta, arrays)
    elif how == "layout":                        # the screen index gained an attribute
        monkeypatch.setattr(I, "_SCREEN_ATTRS", I._SCREEN_ATTRS | {"_new_field"})
    with fitsketch.open(path) as hub:
        assert I.SearchIndexes._load(hub._indexes, "screen", hub.store) is None
        got = _states(hub)[0] if how != "layout" else None
        if how == "layout":
            hub.warm()
            assert len(hub._indexes._screen) == 6
            return
    _equal(got, want[0])
    with fitsketch.open(path) as hub:            # rewritten: read back now
        assert I.SearchIndexes._load(hub._indexes, "screen", hub.store) is not None


def test_profile_index_past_ivf_is_stored_with_its_faiss_index(tmp_path, rng, always_save, monkeypatch):
    """An IVF profile index is stored with its trained FAISS index and gives the same neighbours."""
    import faiss

    from fitsketch import profiles as P

    monkeypatch.setattr(P, "IVF_FROM", 500)
    base = rng.normal(size=(1200, P.PROFILE_DIM)).astype(np.float32)
    idx = P.ProfileIndex()
    idx._append([(i, {"v": P.PROFILE_FORMAT, "x": base[i].astype(np.float16), "names": np.array([7, i % 3])})
                 for i in range(len(base))])
    idx.generation = 4
    idx.build()
    assert isinstance(idx._faiss, faiss.IndexIVFFlat)
    st = I._profile_state(idx)
    layout, meta = st.pop("__layout__"), st.pop("__meta__")
    p = str(tmp_path / "p.fsidx")
    write_arrays(p, {"layout": layout, "generation": 4, "entries": len(base), **meta}, st)
    m, a = read_arrays(p)
    back = I._profile_from(m, a, None)
    assert isinstance(back._faiss, faiss.IndexIVFFlat)
    for j in rng.choice(len(base), 5, replace=False):
        q = base[j] + 0.05 * rng.normal(size=P.PROFILE_DIM).astype(np.float32)
        ids_a, d_a = idx.top(q, 10)
        ids_b, d_b = back.top(q, 10)
        assert ids_a.tolist() == ids_b.tolist() and np.array_equal(d_a, d_b)
    assert back.shares_names(np.array([2])) and not back.shares_names(np.array([99]))


def test_warm_writes_both_files_and_small_syncs_do_not(tmp_path, rng):
    """Under the default thresholds a search on a small hub keeps its indexes in memory only;
    ``hub.warm()`` writes both files whenever it loaded anything, and a reopened hub reads them."""
    cfg = fitsketch.SketchConfig(shortlist=2)
    path = tmp_path / "h.hub"
    q = _sketch(rng, cfg)
    with fitsketch.open(path, config=cfg) as hub:
        hub.add_sketches([(f"m{i}", _sketch(rng, cfg)) for i in range(9)])
        hub.search(q, k=3)
        assert not (path / "indexes").exists()
        hub.warm()
        assert sorted(os.listdir(path / "indexes")) == ["profiles.fsidx", "screen.fsidx"]
        want = _screens(hub, q)
    with fitsketch.open(path) as hub:
        for kind in ("screen", "profiles"):
            got = I.SearchIndexes._load(hub._indexes, kind, hub.store)
            assert got is not None and len(got) == 9
        assert _screens(hub, q) == want


@pytest.mark.parametrize("how", ["ids_out_of_range", "ids_permuted", "vectors"])
def test_stored_faiss_index_of_other_ids_or_vectors_is_refused(rng, monkeypatch, how):
    """A checksum-valid profile file whose IVF holds ids out of range, other rows' ids, or other
    vectors is not used (ProfileIndex.top maps the IVF's ids through the stored rows)."""
    import faiss

    from fitsketch import profiles as P

    monkeypatch.setattr(P, "IVF_FROM", 500)
    n = int(rng.integers(1100, 1400))
    base = rng.normal(size=(n, P.PROFILE_DIM)).astype(np.float32)
    idx = P.ProfileIndex()
    idx._append([(i, {"v": P.PROFILE_FORMAT, "x": base[i].astype(np.float16), "names": np.array([7])})
                 for i in range(n)])
    idx.generation = 4
    idx.build()
    st = I._profile_state(idx)
    meta = {"layout": st.pop("__layout__"), "generation": 4, "entries": n, **st.pop("__meta__")}
    assert "faiss" in st
    I._profile_from(meta, dict(st), None)                    # as written: accepted
    ivf = faiss.deserialize_index(np.asarray(st["faiss"], dtype=np.uint8))
    other = faiss.IndexIVFFlat(ivf.quantizer, ivf.d, ivf.nlist, ivf.metric_type)
    x = idx.x.copy()
    ids = np.arange(n, dtype=np.int64)
    if how == "ids_out_of_range":
        ids = ids + n
    elif how == "ids_permuted":
        ids = rng.permutation(n).astype(np.int64)
    else:
        x[int(rng.integers(n))] += 1.0
    other.add_with_ids(x, ids)
    st["faiss"] = faiss.serialize_index(other)
    with pytest.raises(I._NotPersisted):
        I._profile_from(meta, st, None)


@pytest.mark.parametrize("entries", [
    [["a", "<i8", [2 ** 64 - 1], 0, 0, 0]],                            # a size that wraps int64
    [["a", "|b1", [2 ** 62, 4], 0, 0, 0]],                             # ... and one that wraps to 0
    [["a", "<i8", [1], "x", 8, 0], ["b", "<i8", [1], 0, 8, 0]],        # an offset that is no integer
    [["a", "not a dtype", [1], 0, 8, 0]],
    [["a", "<U2", [1], 0, 8, 0]],
])
def test_array_file_with_a_malformed_header_is_corrupt(tmp_path, entries):
    """Headers whose entries are the wrong types or describe impossible sizes raise CorruptHubError
    (not TypeError / ValueError from NumPy), like every other damage."""
    from fitsketch.storage import CorruptHubError, pack
    from fitsketch.storage.arrayfile import MAGIC

    h = pack({"v": 1, "meta": {}, "arrays": entries})
    start = len(MAGIC) + 8 + len(h)
    start += -start % 64
    p = tmp_path / "x.fsidx"
    p.write_bytes(MAGIC + len(h).to_bytes(8, "little") + h + b"\0" * (start - len(MAGIC) - 8 - len(h)) + b"\0" * 64)
    with pytest.raises(CorruptHubError):
        read_arrays(str(p))
