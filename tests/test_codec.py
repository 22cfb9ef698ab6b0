"""fitsketch.storage.codec: pack / unpack round trips of every dtype and shape, nested values, the
values it refuses (with a named CodecError), garbage and malformed records. Random data is fresh
on every run; a failing report names the seed (the ``rng`` fixture)."""
from __future__ import annotations

import msgpack
import numpy as np
import pytest

from fitsketch.storage import CodecError, pack, unpack


DTYPES = ["?", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8",
          "c8", "c16", ">i4", ">f8", "<u2"]


SHAPES = [(), (0,), (1,), (7,), (97,), (3, 0, 2), (1, 1, 1), (5, 3), (2, 3, 7)]


def _random(rng, dtype, shape):
    dt = np.dtype(dtype)
    if dt.kind == "b":
        return rng.random(shape) < 0.5
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return rng.integers(info.min, info.max, size=shape, dtype=dt.newbyteorder("="), endpoint=True).astype(dt)
    if dt.kind == "c":
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dt)
    return (rng.standard_normal(shape) * 1e3).astype(dt)


@pytest.mark.parametrize("dtype", DTYPES)
def test_codec_array_roundtrip(rng, dtype):
    for shape in SHAPES:
        a = _random(rng, dtype, shape)
        b = unpack(pack(a))
        assert isinstance(b, np.ndarray)
        assert b.dtype == a.dtype and b.dtype.str == a.dtype.str and b.shape == a.shape
        np.testing.assert_array_equal(a, b)
        assert b.flags.writeable and b.flags.c_contiguous
        if b.size:
            b.flat[0] = b.flat[-1]  # writable, not a view of the msgpack buffer


def test_codec_non_contiguous_and_scalars(rng):
    a = rng.standard_normal((6, 9)).astype(np.float32)
    for view in (a.T, a[::2, 1::3], a[:, 4], np.asfortranarray(a), a[::-1]):
        b = unpack(pack(view))
        np.testing.assert_array_equal(b, view)
        assert b.flags.c_contiguous and b.shape == view.shape
    for s in (np.float64(1.5), np.int8(-3), np.uint64(2**64 - 1), np.bool_(True), np.complex64(1 - 2j)):
        b = unpack(pack(s))
        assert isinstance(b, np.ndarray) and b.shape == () and b.dtype == s.dtype
        assert b[()] == s


def test_codec_nested_values(rng):
    arr = rng.integers(0, 1 << 32, size=(4, 3), dtype=np.uint32)
    obj = {
        "s": "héllo ✓", "b": b"\x00\xff" * 5, "n": None, "t": True, "f": False,
        "i": [0, -1, 2**63 - 1, -(2**63), 2**64 - 1], "x": [1.5, -0.0, float("inf")],
        "nested": {"list": [arr, {"deep": [arr[0], []]}], 7: "int key"}, "empty": {},
        "tuple": (1, (2, 3)),
    }
    back = unpack(pack(obj))
    assert back["tuple"] == [1, [2, 3]]  # tuples come back as lists
    assert back["nested"][7] == "int key"
    np.testing.assert_array_equal(back["nested"]["list"][0], arr)
    np.testing.assert_array_equal(back["nested"]["list"][1]["deep"][0], arr[0])
    for k in ("s", "b", "n", "t", "f", "i", "empty"):
        assert back[k] == obj[k] and type(back[k]) is type(obj[k])
    assert back["x"][:2] == [1.5, -0.0] and back["x"][2] == float("inf")
    assert unpack(pack(bytearray(b"ab"))) == b"ab"


@pytest.mark.parametrize("bad", [
    np.array([1, "a"], dtype=object), np.array(["ab", "c"]), np.array([b"x"]),
    np.zeros(2, dtype="M8[s]"), np.zeros(2, dtype=[("a", "i4"), ("b", "f4")]),
    object(), {1, 2}, 2**64, -(2**63) - 1, lambda: 0, {"k": [np.array([None])]},
])
def test_codec_refuses(bad):
    with pytest.raises(CodecError) as e:
        pack(bad)
    assert e.value.code == "codec"


def test_codec_refuses_object_dtype_message():
    with pytest.raises(CodecError, match=r"object.*bool/int/uint/float/complex"):
        pack(np.array([1, None], dtype=object))


def test_codec_garbage_and_malformed(rng):
    for _ in range(200):
        junk = rng.bytes(int(rng.integers(1, 64)))
        try:
            unpack(junk)
        except CodecError:
            pass  # any other exception type fails the test
    good = pack({"a": np.arange(10)})
    for bad in (b"", good[:-3], good + b"\x01", b"\xc1", b"\x91" * 5000 + b"\xc0",
                msgpack.packb(msgpack.ExtType(9, b"x")),
                msgpack.packb(msgpack.ExtType(1, msgpack.packb(["<f8", [3], b"\x00" * 8]))),
                msgpack.packb(msgpack.ExtType(1, msgpack.packb(["|O", [1], b"\x00" * 8]))),
                msgpack.packb(msgpack.ExtType(1, msgpack.packb(["<f8", [-1], b""]))),
                msgpack.packb(msgpack.ExtType(1, b"\xff\xff"))):
        with pytest.raises(CodecError):
            unpack(bad)
    deep: list = []
    for _ in range(2000):
        deep = [deep]
    with pytest.raises(CodecError):
        pack(deep)
