"""Issue 21 item 3 (32 KB per entry): signature records as per-permutation dictionaries (hub
format 5, engine/signature_records.py, engine/parts.py ``_sig_record``).

Round trip against the matrix itself on fresh random matrices (0, 1, 7, 97 features; 0, 1, 7, 128
permutations; few, many and all-equal values, empty rows 0xFFFFFFFF), through the codec as stored:
the same dtype, shape and bytes. The dictionary against a NumPy reference (``np.unique`` per
permutation); the compiled dictionary (kernels/_cminhash.c) against the NumPy one, with and without
the kernel. A format-4 hub written by the old encoder (``{"v": 1, "sig": matrix}``, format 4 at
creation) opens read-only as it is, answers every method and LSH-forced search as a format-5 hub
of the same sketches, is upgraded on a writable open, takes dictionary records beside its old
ones, and removes both kinds (no band posting left). Damaged or unknown records raise named
errors."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import fitsketch
import fitsketch.storage.env as env_mod
from fitsketch import parts, planner, signature_records as S
from fitsketch.errors import CorruptHubError, SchemaError
from fitsketch.kernels import ingest
from fitsketch.storage import pack, unpack

METHODS = ("exact-js", "js", "adaptivity", "l2", "coverage")


def _matrix(rng, n_f, n_p, kind):
    if kind == "few":        # what MinHash of similar columns gives: a few values a permutation
        pool = rng.integers(0, 2 ** 32, size=(max(n_p, 1), 3), dtype=np.uint64)
        m = pool[np.arange(n_p)[None, :], rng.integers(0, 3, size=(n_f, n_p))].astype(np.uint32)
    elif kind == "many":
        m = rng.integers(0, 2 ** 32, size=(n_f, n_p), dtype=np.uint64).astype(np.uint32)
    else:                    # "equal": every feature the same row
        m = np.repeat(rng.integers(0, 2 ** 32, size=(1, n_p), dtype=np.uint64).astype(np.uint32), n_f, axis=0)
    if n_f:
        m[rng.random(n_f) < 0.2] = 0xFFFFFFFF     # empty features (parts._EMPTY_SIG)
    return m


@pytest.mark.parametrize("n_f", [0, 1, 7, 97])
@pytest.mark.parametrize("n_p", [0, 1, 7, 128])
@pytest.mark.parametrize("kind", ["few", "many", "equal"])
def test_a_dictionary_record_decodes_to_the_matrix(rng, n_f, n_p, kind):
    sig = _matrix(rng, n_f, n_p, kind)
    for rec in (S.dictionary(sig), S.plain(sig), parts._sig_record(sig)):
        for stored in (unpack(pack(rec)), unpack(parts.fit_pack(rec), stored=True)):   # plain, compressed
            got = S.decode(stored)
            assert got.dtype == np.uint32 and got.shape == sig.shape and got.tobytes() == sig.tobytes()


@pytest.mark.parametrize("n_f", [1, 7, 97])
def test_the_dictionary_is_each_permutations_distinct_values(rng, n_f):
    sig = _matrix(rng, n_f, 33, "few")
    rec = S.dictionary(sig)
    off = 0
    for j in range(sig.shape[1]):
        u, inv = np.unique(sig[:, j], return_inverse=True)     # reference: sorted distinct values, indices
        assert int(rec["sn"][j]) == len(u)
        assert np.array_equal(rec["sd"][off:off + len(u)], u)
        assert np.array_equal(np.asarray(rec["si"][j], dtype=np.int64), inv.reshape(-1))
        off += len(u)
    assert off == len(rec["sd"])


def _values(rng, n_f, n_p, kind):
    if kind == "range":      # a few small values, many repeats
        return rng.integers(0, int(rng.integers(1, 6)), size=(n_f, n_p), dtype=np.uint64).astype(np.uint32)
    if kind == "extremes":   # 0 and the empty-signature sentinel alone
        return np.where(rng.random((n_f, n_p)) < 0.5, 0, 0xFFFFFFFF).astype(np.uint32)
    return _matrix(rng, n_f, n_p, kind)


def _same_record(a, b):
    assert a.keys() == b.keys() and a["v"] == b["v"]
    for k in a.keys() - {"v"}:
        x, y = a[k], b[k]
        assert type(x) is type(y) is np.ndarray and x.dtype == y.dtype and x.shape == y.shape, (k, x.dtype, y.dtype)
        assert x.flags.c_contiguous and np.array_equal(x, y), k
    assert pack(a) == pack(b) and parts.fit_pack(a) == parts.fit_pack(b)


needs_kernel = pytest.mark.skipif(ingest._c is None or not hasattr(ingest._c, "sig_dictionary"),
                                  reason="no compiled kernel")


@needs_kernel
@pytest.mark.parametrize("shape", [(0, 0), (0, 5), (5, 0), (1, 1), (1, 7), (7, 1), (7, 3), (33, 97), (32, 128), (64, 5), (90, 9),
                                   (255, 3), (256, 5), (257, 5), (3001, 4), (70001, 1)])
@pytest.mark.parametrize("kind", ["few", "many", "equal", "range", "extremes"])
def test_the_compiled_dictionary_is_the_numpy_one(rng, shape, kind):
    """The compiled pass (kernels/_cminhash.c sig_dictionary) against the NumPy definition: the same
    arrays, dtypes and packed bytes; past 256 features it sorts instead of hashing, past 255 and
    65,535 features its indices start wider and are narrowed."""
    sig = _values(rng, *shape, kind)
    assert ingest.sig_dictionary(sig) is not None        # the compiled path is the one taken
    _same_record(S.dictionary(sig), S._dictionary_numpy(sig))


@needs_kernel
def test_the_compiled_dictionary_of_any_layout_and_of_many_values(rng):
    """Fortran order, strided views, big-endian values; over 64 distinct values a permutation (sorted,
    not counted), 255 to 257 and 65,536 (the narrowing's edges); two threads at once (the kernel runs without
    the GIL)."""
    import concurrent.futures as cf
    base = _values(rng, 300, 40, "many")
    sigs = [np.asfortranarray(base), base[::3, 1::2], base.astype(">u4"), _values(rng, 200, 9, "many"),
            rng.integers(0, 100, size=(200, 9)).astype(np.uint32), rng.permutation(70000).astype(np.uint32)[:, None]]
    for n_f in (200, 300):                # one large value a permutation: a radix pass moves one key
        sig = rng.integers(0, 1000, size=(n_f, 3)).astype(np.uint32)
        sig[rng.integers(0, n_f, 3), np.arange(3)] = rng.integers(1 << 24, 1 << 32, 3)
        sigs.append(sig)
    for n in (255, 256, 257, 65536):      # all distinct: at 256 and 65,536 the counts take a wider type than the indices
        sigs.append(np.stack([rng.choice(1 << 32, n, replace=False) for _ in range(2)], axis=1).astype(np.uint32))
    for sig in sigs:
        _same_record(S.dictionary(sig), S._dictionary_numpy(np.ascontiguousarray(sig, dtype=np.uint32)))
    many = [_values(rng, int(rng.integers(1, 400)), int(rng.integers(1, 64)), k) for k in ("few", "many", "range") * 8]
    with cf.ThreadPoolExecutor(2) as ex:
        for sig, rec in zip(many, ex.map(S.dictionary, many)):
            _same_record(rec, S._dictionary_numpy(sig))


@needs_kernel
def test_the_kernel_refuses_inconsistent_buffers():
    sig = np.zeros((4, 3), np.uint32)
    u8 = lambda n: np.zeros(n, np.uint8)   # noqa: E731
    for args in ((sig, 4, 3, u8(3), u8(11), 1), (sig, 4, 3, u8(2), u8(12), 1), (sig, 5, 3, u8(3), u8(15), 1),
                 (sig, 4, 3, u8(3), u8(12), 3), (np.zeros((300, 1), np.uint32), 300, 1, u8(1), u8(300), 1)):
        with pytest.raises(ValueError, match="sig_dictionary"):
            ingest._c.sig_dictionary(*args)


def test_without_the_kernel_the_dictionary_is_the_numpy_one(rng, monkeypatch):
    monkeypatch.setattr(ingest, "_c", None)
    sig = _values(rng, 32, 128, "few")
    assert ingest.sig_dictionary(sig) is None
    _same_record(S.dictionary(sig), S._dictionary_numpy(sig))


def test_the_stored_record_is_the_dictionary_where_it_holds_fewer_raw_bytes(rng):
    for n_f, kind in ((32, "few"), (32, "many"), (1, "many"), (1, "few"), (0, "few"), (7, "equal")):
        sig = _matrix(rng, n_f, 128, kind)
        d = S.dictionary(sig)
        raw = sum(np.asarray(v).nbytes for k, v in d.items() if k != "v")
        chosen = parts._sig_record(sig)
        assert chosen["v"] == (S.SIG_DICT if raw < sig.nbytes else S.SIG_PLAIN), (n_f, kind)
        if n_f == 32 and kind == "few":     # what MinHash of 32 similar columns gives: smaller as stored too
            assert chosen["v"] == S.SIG_DICT and len(parts.fit_pack(chosen)) < len(parts.fit_pack(S.plain(sig)))


def test_damaged_and_unknown_records_raise_named_errors(rng):
    sig = _matrix(rng, 9, 16, "few")
    rec = S.dictionary(sig)
    si64 = np.asarray(rec["si"], np.int64)
    sn64 = np.asarray(rec["sn"], np.int64)
    damaged = [{**rec, "sn": rec["sn"][:-1]}, {**rec, "sd": rec["sd"][:-1]}, {**rec, "si": si64 + 40},
               {**rec, "si": np.asarray(rec["si"]).reshape(-1)},
               {**rec, "si": si64.astype(np.float64)},            # float indices: no silent cast
               {**rec, "sn": sn64.astype(np.float64)},
               {**rec, "sd": rec["sd"].astype(np.float64)},
               {**rec, "sd": rec["sd"].astype(np.int64) + (1 << 32)},   # beyond uint32: no silent wrap
               {**rec, "sd": np.r_[-1, rec["sd"][1:].astype(np.int64)]},
               {**rec, "sn": np.r_[-1, sn64[1:] + np.r_[1, np.zeros(len(sn64) - 2, np.int64)]]},  # sum kept, one < 0
               {**rec, "si": si64 - 1},
               {**rec, "sn": list(sn64)}, {**rec, "si": "x"}, {**rec, "sd": None},
               {"v": S.SIG_DICT, "sn": rec["sn"], "sd": rec["sd"]},   # a field missing
               {"v": S.SIG_PLAIN},                                    # a known format without its matrix
               {"v": S.SIG_PLAIN, "sig": sig.astype(np.float32)}, {"v": S.SIG_PLAIN, "sig": sig.reshape(-1)},
               {"v": S.SIG_PLAIN, "sig": [[1, 2]]}]
    for bad in damaged:
        with pytest.raises(CorruptHubError, match="signature record.*remove the entry"):
            S.decode(bad)
    for good in (rec, S.plain(sig)):                      # the entry's shape, checked where given
        assert S.decode(good, shape=sig.shape).tobytes() == sig.tobytes()
        for shape in ((8, 16), (9, 15), (16, 9)):
            with pytest.raises(CorruptHubError, match="signature record"):
                S.decode(good, shape=shape)
    for bad in ({"v": 3, "sig": sig}, {"sig": sig}, None):
        with pytest.raises(SchemaError, match="upgrade fitsketch"):
            S.decode(bad)


@pytest.mark.parametrize("n_p", [1, 7, 128])
def test_over_255_values_a_permutation_take_uint16_indices(rng, n_p):
    sig = _matrix(rng, 400, n_p, "many")     # ~20% empty rows: ~320 distinct values
    assert max(len(np.unique(sig[:, j])) for j in range(n_p)) > 255
    rec = S.dictionary(sig)
    assert np.asarray(rec["si"]).dtype == np.uint16
    for stored in (unpack(pack(rec)), unpack(parts.fit_pack(rec), stored=True)):
        assert np.asarray(stored["si"]).dtype == np.uint16
        got = S.decode(stored)
        assert got.dtype == np.uint32 and got.shape == sig.shape and got.tobytes() == sig.tobytes()


def _table(rng, n, shift=0.0):
    return pd.DataFrame({**{f"x{j}": np.round(rng.normal(shift, size=n), 3) for j in range(9)},
                         "b": rng.integers(0, 30, n), "d": rng.integers(0, 5, n).astype(str)})


def _sketches(rng, n=7):
    cfg = fitsketch.SketchConfig()
    sk = lambda n, s=0.0: fitsketch.sketch_data(_table(rng, n, s), cfg, partition_size=50)   # noqa: E731
    out = {f"s{i}": sk(int(rng.integers(2, 400)), float(rng.integers(0, 3))) for i in range(n)}
    out["one-row"] = sk(1)
    out["merged"] = sk(133, 1.0).merge(sk(51, 2.0))
    return out


def _old_sig_record(sig):    # the format-4 encoder, as engine/parts.py wrote it
    return {"v": parts.ENTRY_FORMAT, "sig": sig}


def _build(path, sketches, monkeypatch, old: bool):
    with monkeypatch.context() as m:
        if old:
            m.setattr(env_mod, "FORMAT_VERSION", 4)
            m.setattr(parts, "_sig_record", _old_sig_record)
        with fitsketch.open(path) as hub:
            (n0, s0), *rest = sketches.items()
            hub.add_sketch(n0, s0)
            hub.add_sketches(rest)
    assert fitsketch.inspect(path)["format"] == (4 if old else 6)


def _answers(path, q, readonly=True):
    with fitsketch.open(path, readonly=readonly) as hub:
        out = {m: [(r.name, r.score) for r in hub.search(q, k=10, method=m)] for m in METHODS}
    return out


def _answers_lsh(path, q, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(planner, "SCAN_FEATURE_LIMIT", 0)      # the candidate stage through the band postings
        return _answers(path, q)


def _matrices(path):
    with fitsketch.open(path, readonly=True) as hub, hub.store.read() as txn:
        recs = {k: txn.get("signatures", k) for k in txn.keys("signatures")}
    return {k: S.decode(r) for k, r in recs.items()}, {r["v"] for r in recs.values()}


def test_a_format_4_hub_reads_as_a_format_5_hub_and_is_upgraded(tmp_path, rng, monkeypatch):
    sketches = _sketches(rng)
    old, new = tmp_path / "old", tmp_path / "new"
    _build(old, sketches, monkeypatch, old=True)
    _build(new, sketches, monkeypatch, old=False)
    m_old, v_old = _matrices(old)
    m_new, v_new = _matrices(new)
    assert v_old == {S.SIG_PLAIN} and S.SIG_DICT in v_new
    assert m_old.keys() == m_new.keys() and all(
        m_old[k].dtype == m_new[k].dtype and m_old[k].tobytes() == m_new[k].tobytes() for k in m_old)
    q = _table(rng, 211, 1.0)
    want = _answers(new, q)
    assert _answers(old, q) == want                          # read-only: read as it is, not upgraded
    assert _answers_lsh(old, q, monkeypatch) == _answers_lsh(new, q, monkeypatch)
    assert fitsketch.inspect(old)["format"] == 4
    more = {"late": fitsketch.sketch_data(_table(rng, 301), partition_size=50)}
    with fitsketch.open(old) as a, fitsketch.open(new) as b:  # writable: upgraded, then both take the same adds
        for hub in (a, b):
            hub.add_sketches(list(more.items()))
    assert fitsketch.inspect(old)["format"] == 6
    m_old, v_old = _matrices(old)
    assert v_old == {S.SIG_PLAIN, S.SIG_DICT}                # old records beside new ones
    assert _answers(old, q) == _answers(new, q)
    assert _answers_lsh(old, q, monkeypatch) == _answers_lsh(new, q, monkeypatch)
    for path in (old, new):
        with fitsketch.open(path) as hub:
            for name in hub.names():
                hub.remove(name)
            with hub.store.read() as txn:
                assert txn.count("bands") == 0 and txn.count("signatures") == 0


def test_an_older_fitsketch_refuses_a_format_5_hub(tmp_path, rng, monkeypatch):
    path = tmp_path / "h"
    with fitsketch.open(path) as hub:
        hub.add_sketch("a", fitsketch.sketch_data(_table(rng, 90), partition_size=50))
    monkeypatch.setattr(env_mod, "FORMAT_VERSION", 4)         # a fitsketch that reads up to format 4
    with pytest.raises(SchemaError, match="format 6"):
        fitsketch.open(path, readonly=True)
