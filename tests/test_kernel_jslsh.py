"""JS-LSH projection kernel: Triton (interpreted on CPU) and PyTorch against the reference.

Buckets are integers and must equal the reference, except where float rounding can move a value
across a bucket edge: the paths sum the dot product in different orders, so a bucket may differ
only where the reference value v = (sqrt_p @ a + b) / r (computed in float64) lies within
EDGE_RTOL (relative, floored at 1) of an integer, and then by at most 1.
"""
import numpy as np
import pytest
import torch

from fitsketch.kernels import _device, jslsh
from fitsketch.kernels import jslsh as KJ
from fitsketch.kernels.jslsh import gaussian_projection, offsets, project_reference

EDGE_RTOL = 1e-4  # |v - round(v)| <= EDGE_RTOL * max(1, |v|): a mismatch is allowed there only

# (n_partitions, n_coordinates, n_hashes); n = 0, 1, 7, 97 and a larger odd size
SHAPES = [(0, 5, 8), (1, 1, 1), (7, 33, 20), (97, 70, 64), (301, 131, 47)]


def _inputs(rng, n, d, h, r):
    """Rows sqrt(P) of random distributions (some sparse), the seeded a and b."""
    p = rng.random((n, d)) * (rng.random((n, d)) < 0.7)
    p /= np.maximum(p.sum(axis=1, keepdims=True), 1e-12)
    seed = int(rng.integers(1 << 31))
    a = gaussian_projection(seed, np.arange(d) // 4, np.arange(d) % 4, h)
    return np.sqrt(p).astype(np.float32), a, offsets(seed, h, r)


def _assert_buckets_equal(got, sqrt_p, a, b, r):
    ref = project_reference(sqrt_p, a, b, r)
    assert got.shape == ref.shape and got.dtype == np.int64
    v = (sqrt_p.astype(np.float64) @ a.astype(np.float64) + b) / r
    near_edge = np.abs(v - np.round(v)) <= EDGE_RTOL * np.maximum(1.0, np.abs(v))
    bad = (got != ref) & ~(near_edge & (np.abs(got - ref) <= 1))
    assert not bad.any(), f"{bad.sum()} buckets differ away from a bucket edge"


@pytest.mark.parametrize("n,d,h", SHAPES)
def test_triton_equals_reference(rng, n, d, h):
    r = float(rng.choice([0.05, 0.3, 1.0]))
    sqrt_p, a, b = _inputs(rng, n, d, h, r)
    got = jslsh._project_triton(torch.from_numpy(sqrt_p), torch.from_numpy(a), torch.from_numpy(b), r)
    _assert_buckets_equal(got.numpy(), sqrt_p, a, b, r)


@pytest.mark.parametrize("n,d,h", SHAPES + [(2001, 97, 32)])
def test_torch_equals_reference(rng, n, d, h):
    r = float(rng.choice([0.05, 0.3, 1.0]))
    sqrt_p, a, b = _inputs(rng, n, d, h, r)
    _assert_buckets_equal(jslsh.project(sqrt_p, a, b, r, device="cpu"), sqrt_p, a, b, r)


def test_identical_distributions_collide_and_band_keys_are_exact(rng):
    sqrt_p, a, b = _inputs(rng, 5, 40, 24, 0.2)
    both = np.concatenate([sqrt_p, sqrt_p])
    hashes = jslsh.project(both, a, b, 0.2, device="cpu")
    keys = jslsh.band_keys(hashes, 4, 6)
    np.testing.assert_array_equal(keys[:5], keys[5:])
    assert keys.shape == (10, 6) and keys.dtype == np.int64


def test_shapes_that_do_not_chain_are_refused():
    with pytest.raises(ValueError, match="do not chain"):
        jslsh.project(np.zeros((2, 3)), np.zeros((4, 5)), np.zeros(5), 1.0, device="cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cuda_without_gpu_raises():
    with pytest.raises(_device.DeviceError):
        jslsh.project(np.zeros((1, 2)), np.zeros((2, 3)), np.zeros(3), 1.0, device="cuda")


def test_env_forces_cpu_for_auto(rng, monkeypatch):
    monkeypatch.setattr(_device, "cuda_available", lambda: True)
    monkeypatch.setenv("FITSKETCH_DEVICE", "cpu")
    monkeypatch.setattr(jslsh, "_project_triton", None)  # would fail if the CUDA branch ran
    sqrt_p, a, b = _inputs(rng, 7, 10, 8, 0.5)
    _assert_buckets_equal(jslsh.project(sqrt_p, a, b, 0.5, device="auto"), sqrt_p, a, b, 0.5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("n,d,h", SHAPES + [(2001, 97, 32)])
def test_cuda_equals_reference(rng, n, d, h):
    sqrt_p, a, b = _inputs(rng, n, d, h, 0.3)
    _assert_buckets_equal(jslsh.project(sqrt_p, a, b, 0.3, device="cuda"), sqrt_p, a, b, 0.3)


@pytest.mark.parametrize("n", [0, 1, 7, 301])
def test_gaussian_rows_memo_equals_fresh_draw(rng, n):
    """The memo returns exactly the rows a fresh draw gives, also for repeated and new coordinates."""
    cache = KJ._RowCache(max_rows=64)          # small: exercises clearing too
    for _ in range(3):
        f = rng.integers(-5, 5, n).astype(np.int64) * (1 << 40)
        b = rng.integers(-3, 3, n).astype(np.int64)
        got = cache.get(7, f, b, 16)
        assert got.dtype == np.float32 and got.shape == (n, 16)
        np.testing.assert_array_equal(got, KJ._gaussian_rows(7, f, b, 16))
