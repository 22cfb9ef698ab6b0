"""Compressed arrays in hub records (storage/codec.py ``pack(compress=True)``, ExtType 2): every
dtype and shape comes back bit for bit through each filter and codec, the writer keeps the
smaller form, only ``unpack(stored=True)`` reads them (a socket's bytes may not expand), and a
malformed or oversized payload raises CodecError before it is decompressed. Random data is fresh
on every run (the ``rng`` fixture names the seed)."""
from __future__ import annotations

import zlib

import msgpack
import numpy as np
import pytest

from fitsketch.storage import CodecError, pack, unpack
from fitsketch.storage import codec as C

DTYPES = ["?", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "c8", ">i4", ">u2", ">f8"]
SHAPES = [(), (0,), (1,), (2,), (63,), (64,), (127,), (1001,), (3, 0, 2), (33, 7), (5, 3, 41)]


def _random(rng, dtype, shape, low_entropy: bool):
    dt = np.dtype(dtype)
    if dt.kind == "b":
        return rng.random(shape) < (0.05 if low_entropy else 0.5)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        if low_entropy:      # sorted small steps (the delta filter's case) or few values
            steps = rng.integers(0, 4, size=shape)
            a = np.cumsum(steps.reshape(-1)).reshape(shape) if len(shape) else steps
            return (a % min(int(info.max), 1 << 20)).astype(dt)
        return rng.integers(info.min, info.max, size=shape, dtype=dt.newbyteorder("="), endpoint=True).astype(dt)
    if dt.kind == "c":
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dt)
    x = rng.standard_normal(shape) * 1e3
    return (np.round(x) if low_entropy else x).astype(dt)


def _ext_codes(b: bytes) -> list:
    codes = []
    msgpack.unpackb(b, raw=False, strict_map_key=False,
                    ext_hook=lambda code, data: codes.append(code) or None)
    return codes


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("low_entropy", [False, True])
def test_compressed_arrays_round_trip_exactly(rng, dtype, low_entropy):
    for shape in SHAPES:
        a = _random(rng, dtype, shape, low_entropy)
        b = pack({"a": a, "n": [a, 3]}, compress=True)
        out = unpack(b, stored=True)
        for got in (out["a"], out["n"][0]):
            assert got.dtype.str == a.dtype.str and got.shape == a.shape
            assert got.tobytes() == a.tobytes()          # bit for bit (NaN payloads, -0.0 included)
            assert got.flags.writeable and got.flags.c_contiguous
        assert len(b) <= len(pack({"a": a, "n": [a, 3]})) + 16   # never more than a few bytes larger


@pytest.mark.parametrize("flt", C._FILTERS)
@pytest.mark.parametrize("codec", [C._ZSTD, C._ZLIB])
def test_every_filter_and_codec_decodes(rng, flt, codec):
    """Each (filter, codec) a record may hold, forced, on fresh integer and float arrays."""
    for dtype in ("u1", "i2", "u4", "i8", ">u4", "f4", "f8"):
        if flt == 2 and np.dtype(dtype).kind not in "iu":
            continue
        for n in (0, 1, 2, 77, 4096):
            a = _random(rng, dtype, (n,), low_entropy=bool(n % 2))
            raw = C._filtered(a, flt)
            z = C._zstd().compress(raw, asbytes=True) if codec == C._ZSTD else zlib.compress(raw)
            ext = msgpack.ExtType(C.EXT_PACKED, msgpack.packb([a.dtype.str, [n], flt, codec, z], use_bin_type=True))
            got = unpack(msgpack.packb([ext], use_bin_type=True), stored=True)[0]
            assert got.dtype.str == a.dtype.str and got.tobytes() == a.tobytes()


def test_the_writer_compresses_what_it_can_and_keeps_the_rest(rng):
    sorted_codes = np.sort(rng.integers(0, 1 << 16, 20_000)).astype(np.uint16)   # delta filter: ~1 byte each
    noise = rng.integers(0, 1 << 32, 5_000, dtype=np.uint64).astype(np.uint32)     # incompressible
    small = np.arange(10, dtype=np.int64)                                          # under MIN_COMPRESS
    b = pack([sorted_codes, noise, small], compress=True)
    assert _ext_codes(b) == [C.EXT_PACKED, C.EXT_NDARRAY, C.EXT_NDARRAY]
    assert len(b) < sorted_codes.nbytes // 2 + noise.nbytes + 200
    got = unpack(b, stored=True)
    for x, y in zip(got, [sorted_codes, noise, small]):
        np.testing.assert_array_equal(x, y)
    assert unpack(pack([noise, small]), stored=True)[1].dtype == np.int64   # plain records read alike


def test_compressed_arrays_are_refused_outside_stored_records(rng):
    b = pack(np.zeros(10_000, dtype=np.int32), compress=True)
    assert _ext_codes(b) == [C.EXT_PACKED] and len(b) < 200
    with pytest.raises(CodecError, match="hub's records only"):
        unpack(b)
    assert unpack(b, stored=True).tobytes() == bytes(40_000)


def _ext(dstr, shape, flt, codec, raw):
    return msgpack.packb(msgpack.ExtType(C.EXT_PACKED, msgpack.packb([dstr, shape, flt, codec, raw],
                                                                       use_bin_type=True)), use_bin_type=True)


def test_malformed_compressed_payloads_raise_codec_error(rng):
    a = rng.integers(0, 100, 1000).astype(np.int32)
    z = zlib.compress(a.tobytes())
    zz = C._zstd().compress(a.tobytes(), asbytes=True)
    bad = [
        _ext("<i4", [999], 0, C._ZLIB, z),             # more bytes than its shape
        _ext("<i4", [1001], 0, C._ZLIB, z),            # fewer
        _ext("<i4", [1001], 0, C._ZSTD, zz),
        _ext("<i4", [1000], 0, C._ZLIB, z[:-5]),       # truncated
        _ext("<i4", [1000], 0, C._ZSTD, zz[:-5]),
        _ext("<i4", [1000], 0, C._ZSTD, b"garbage" * 9),
        _ext("<i4", [1000], 7, C._ZLIB, z),            # unknown filter
        _ext("<i4", [1000], 0, 9, z),                  # unknown codec
        _ext("<f4", [1000], 2, C._ZLIB, z),            # delta on floats
        _ext("<i4", [1 << 40], 0, C._ZLIB, z),         # claimed size over MAX_UNPACKED: refused before work
        _ext("<i4", [-1], 0, C._ZLIB, z),
        _ext("|O", [1000], 0, C._ZLIB, z),
        msgpack.packb(msgpack.ExtType(C.EXT_PACKED, b"\x93\x01\x02\x03"), use_bin_type=True),
    ]
    for b in bad:
        with pytest.raises(CodecError):
            unpack(b, stored=True)
    np.testing.assert_array_equal(unpack(_ext("<i4", [1000], 0, C._ZLIB, z), stored=True), a)


def test_a_zlib_bomb_stops_at_the_shape(rng):
    """A zlib stream decompressing to far more than its claimed shape is refused without
    producing more than the shape's bytes."""
    z = zlib.compress(bytes(50 << 20), 9)            # ~50 KB that would expand to 50 MiB
    with pytest.raises(CodecError, match="more than"):
        unpack(_ext("|u1", [100], 0, C._ZLIB, z), stored=True)
    # an empty shape is no exception (zlib's max_length 0 means "no limit"): one byte is enough to refuse
    for shape in ([0], [3, 0, 2]):
        with pytest.raises(CodecError, match="more than"):
            unpack(_ext("<f4", shape, 0, C._ZLIB, z), stored=True)
    assert unpack(_ext("<f4", [0], 0, C._ZLIB, zlib.compress(b"")), stored=True).shape == (0,)


def test_a_record_of_many_compressed_arrays_is_bounded_as_a_whole(monkeypatch):
    """Each compressed array is charged against its record's budget (max(MAX_UNPACKED,
    RECORD_EXPANSION x the record's bytes)) before it is decompressed: many small bombs, each
    under the per-array limit, are refused together; a record within its budget decodes."""
    monkeypatch.setattr(C, "MAX_UNPACKED", 1 << 20)   # 1 MiB: the same rule, at a size a test can build
    z = zlib.compress(bytes(1 << 19), 9)             # 512 KiB of zeros in ~0.5 KB
    one = msgpack.ExtType(C.EXT_PACKED, msgpack.packb(["|u1", [1 << 19], 0, C._ZLIB, z], use_bin_type=True))
    for n, ok in ((2, True), (3, False), (40, False)):
        rec = msgpack.packb([one] * n, use_bin_type=True)
        budget = max(1 << 20, C.RECORD_EXPANSION * len(rec))
        assert (n * (1 << 19) <= budget) == ok             # each array alone is within MAX_UNPACKED
        if ok:
            assert [len(a) for a in unpack(rec, stored=True)] == [1 << 19] * n
        else:
            with pytest.raises(CodecError, match="claim more than"):
                unpack(rec, stored=True)


def test_malformed_payload_messages_read_as_they_always_did(rng, monkeypatch):
    """The compressed arrays' error messages (storage/codec.py ``_decode_packed``) are unchanged by the
    public ``decompress`` (engine/band_blocks.py): each names the array's shape and dtype, and a build
    without zstd says to install pyarrow from PyPI, nothing before it."""
    n = int(rng.integers(10, 2000))
    a = rng.integers(0, 100, n).astype(np.int32)
    z = zlib.compress(a.tobytes())
    zz = C._zstd().compress(a.tobytes(), asbytes=True)
    cases = [(_ext("<i4", [n + 1], 0, C._ZLIB, z),
              f"^malformed compressed array payload: shape \\[{n + 1}\\] of <i4 needs {4 * n + 4} bytes, "
              f"decompressed to {4 * n}$"),
             (_ext("<i4", [n - 1], 0, C._ZLIB, z), f"^malformed compressed array payload: more than the {4 * n - 4} "
              "bytes of its shape$"),
             (_ext("<i4", [n], 0, C._ZSTD, b"garbage" * 9), "^malformed compressed array payload: [A-Za-z]+(Error|Exception)?: ")]
    for b, msg in cases:
        with pytest.raises(CodecError, match=msg):
            unpack(b, stored=True)
    monkeypatch.setattr(C, "_zstd", lambda level=None: None)
    with pytest.raises(CodecError, match="^this record is zstd-compressed and this pyarrow build has no zstd: "
                                         "install a pyarrow wheel from PyPI$"):
        unpack(_ext("<i4", [n], 0, C._ZSTD, zz), stored=True)
    with pytest.raises(CodecError, match="^this record is zstd-compressed"):
        C.decompress(zz, C._ZSTD, 4 * n)
