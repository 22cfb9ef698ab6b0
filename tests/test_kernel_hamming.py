"""Hamming kernel: Triton (interpreted on CPU), PyTorch and dispatch against the np.unpackbits
reference. Distances and k-NN results are integers: equal to the reference."""
import numpy as np
import pytest
import torch

from fitsketch.kernels import _device, hamming as hk

# (nq, nb, nbytes): 0, 1, 7, 97 and a larger odd size, byte counts not multiples of 4
SHAPES = [(0, 3, 4), (1, 1, 1), (7, 9, 3), (97, 101, 5), (31, 211, 17)]


def _codes(rng, n, nbytes, bits=None):
    codes = rng.integers(0, 256, size=(n, nbytes), dtype=np.uint8)
    if bits is not None and bits % 8:  # c bits: the padding bits of the last byte stay 0
        codes[:, -1] &= np.uint8((0xFF << (8 - bits % 8)) & 0xFF)
    return codes


@pytest.mark.parametrize("nq,nb,nbytes", SHAPES)
def test_triton_equals_reference(rng, nq, nb, nbytes):
    xq, xb = _codes(rng, nq, nbytes), _codes(rng, nb, nbytes)
    got = hk._hamming_triton(torch.from_numpy(xq), torch.from_numpy(xb)).numpy()
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, hk.hamming_reference(xq, xb))


@pytest.mark.parametrize("nq,nb,nbytes", SHAPES + [(257, 1003, 16)])
def test_torch_equals_reference(rng, nq, nb, nbytes):
    xq, xb = _codes(rng, nq, nbytes, bits=8 * nbytes - 3), _codes(rng, nb, nbytes, bits=8 * nbytes - 3)
    ref = hk.hamming_reference(xq, xb)
    np.testing.assert_array_equal(hk.hamming(xq, xb, device="cpu"), ref)
    np.testing.assert_array_equal(hk._hamming_torch(torch.from_numpy(xq), torch.from_numpy(xb),
                                                    budget=1 << 14).numpy(), ref)


@pytest.mark.parametrize("nq,nb,nbytes", SHAPES)
@pytest.mark.parametrize("k", [0, 1, 5, 300])
def test_knn_equals_reference(rng, nq, nb, nbytes, k):
    xq, xb = _codes(rng, nq, nbytes), _codes(rng, nb, nbytes)
    xb[: nb // 2] = xb[0] if nb else xb[:0]  # many ties: broken by the smaller index
    d, i = hk.hamming_knn(xq, xb, k, device="cpu", query_block=5)
    dr, ir = hk.hamming_knn_reference(xq, xb, k)
    np.testing.assert_array_equal(d, dr)
    np.testing.assert_array_equal(i, ir)
    if k > nb:  # FAISS conventions for the missing slots
        assert (i[:, nb:] == -1).all() and (d[:, nb:] == np.iinfo(np.int32).max).all()


def test_uint64_rows_read_as_bytes(rng):
    xq = rng.integers(0, 1 << 63, size=(7, 2), dtype=np.uint64) * 2 + 1
    xb = rng.integers(0, 1 << 63, size=(9, 2), dtype=np.uint64)
    expect = np.array([[sum(bin(int(u) ^ int(v)).count("1") for u, v in zip(q, b)) for b in xb]
                       for q in xq], dtype=np.int32)
    np.testing.assert_array_equal(hk.hamming(xq, xb, device="cpu"), expect)
    np.testing.assert_array_equal(hk.hamming_reference(xq, xb), expect)


def test_bad_codes_are_refused(rng):
    with pytest.raises(ValueError, match="same code length"):
        hk.hamming(_codes(rng, 2, 3), _codes(rng, 2, 4), device="cpu")
    with pytest.raises(ValueError, match="unsigned"):
        hk.hamming(np.zeros((2, 3), dtype=np.int8), np.zeros((2, 3), dtype=np.int8), device="cpu")
    with pytest.raises(ValueError, match="k="):
        hk.hamming_knn(_codes(rng, 2, 3), _codes(rng, 2, 3), -1, device="cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cuda_without_gpu_raises(rng):
    with pytest.raises(_device.DeviceError):
        hk.hamming(_codes(rng, 2, 3), _codes(rng, 2, 3), device="cuda")


def test_env_forces_cpu_for_auto(rng, monkeypatch):
    monkeypatch.setattr(_device, "cuda_available", lambda: True)
    monkeypatch.setenv("FITSKETCH_DEVICE", "cpu")
    monkeypatch.setattr(hk, "_hamming_triton", None)
    xq, xb = _codes(rng, 7, 5), _codes(rng, 9, 5)
    np.testing.assert_array_equal(hk.hamming(xq, xb, device="auto"), hk.hamming_reference(xq, xb))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("nq,nb,nbytes", SHAPES + [(257, 1003, 16)])
def test_cuda_equals_reference(rng, nq, nb, nbytes):
    xq, xb = _codes(rng, nq, nbytes), _codes(rng, nb, nbytes)
    np.testing.assert_array_equal(hk.hamming(xq, xb, device="cuda"), hk.hamming_reference(xq, xb))
    d, i = hk.hamming_knn(xq, xb, 10, device="cuda")
    dr, ir = hk.hamming_knn_reference(xq, xb, 10)
    np.testing.assert_array_equal(d, dr)
    np.testing.assert_array_equal(i, ir)
