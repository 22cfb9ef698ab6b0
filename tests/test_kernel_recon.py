"""Reconstruction-error kernel: the fleet forward pass (PyTorch), the fused MSE reduction
(Triton, interpreted on CPU) and 1 - SSIM against the float64 reference, one autoencoder and one
sample at a time."""
import numpy as np
import pytest
import torch

from fitsketch.kernels import _device, recon_error as rk

# dtype of the result, atol, rtol against the float64 reference
TOLERANCE = {
    "mse": (np.float32, 1e-6, 1e-4),
    "ssim": (np.float32, 1e-5, 1e-4),
}


def _fleet(rng, n_ae, dims):
    """Stacked random MLP autoencoder weights: [(W (E, in, out), b (E, out)), ...]."""
    return [(rng.normal(size=(n_ae, i, o)).astype(np.float32) / np.sqrt(i),
             (0.1 * rng.normal(size=(n_ae, o))).astype(np.float32))
            for i, o in zip(dims[:-1], dims[1:])]


def _close(got, ref, loss):
    dtype, atol, rtol = TOLERANCE[loss]
    assert got.dtype == dtype and got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=atol, rtol=rtol)


@pytest.mark.parametrize("n", [0, 1, 7, 97, 1001])
@pytest.mark.parametrize("final", ["none", "sigmoid"])
def test_torch_mse_equals_reference(rng, n, final):
    n_ae = 3 if n < 1000 else 2
    layers = _fleet(rng, n_ae, [16, 8, 3, 8, 16])
    x = rng.random((n, 16)).astype(np.float32)
    ref = rk.recon_error_reference(x, layers, "mse", final_activation=final)
    _close(rk.recon_error(x, layers, "mse", device="cpu", final_activation=final), ref, "mse")


@pytest.mark.parametrize("n_ae,n,d", [(1, 0, 5), (1, 1, 1), (2, 7, 13), (3, 97, 64), (2, 131, 301)])
def test_triton_mse_equals_reference(rng, n_ae, n, d):
    x = rng.random((n, d)).astype(np.float32)
    recon = (x + 0.3 * rng.normal(size=(n_ae, n, d))).astype(np.float32)
    got = rk._mse_triton(torch.from_numpy(x), torch.from_numpy(recon)).numpy()
    _close(got, rk.recon_loss_reference(x, recon, "mse"), "mse")


@pytest.mark.parametrize("n", [0, 1, 7, 97])
@pytest.mark.parametrize("window", ["gaussian", "uniform"])
def test_torch_ssim_equals_reference(rng, n, window):
    shape = (2, 9, 11)  # (C, H, W)
    x = rng.random((n, int(np.prod(shape)))).astype(np.float32)
    recon = np.clip(x + 0.2 * rng.normal(size=(2,) + x.shape), 0, 1).astype(np.float32)
    recon[0, :1] = x[:1]  # a perfect reconstruction: loss 0
    kw = dict(image_shape=shape, window=window, win_size=7 if window == "gaussian" else 8)
    got = rk.recon_loss(x, recon, "ssim", device="cpu", **kw)
    assert got.shape == (2, n)
    if n:
        assert abs(got[0, 0]) < 1e-5  # SSIM(x, x) = 1
    # the reference loops over window positions in Python: check (a sample of) the rows
    rows = np.sort(rng.choice(n, size=min(n, 7), replace=False))
    _close(got[:, rows], rk.recon_loss_reference(x[rows], recon[:, rows], "ssim", **kw), "ssim")


def test_ssim_through_an_image_fleet(rng):
    shape = (1, 8, 8)
    layers = _fleet(rng, 2, [64, 16, 64])
    x = rng.random((5, 64)).astype(np.float32)
    kw = dict(image_shape=shape, final_activation="sigmoid")
    _close(rk.recon_error(x, layers, "ssim", device="cpu", **kw),
           rk.recon_error_reference(x, layers, "ssim", **kw), "ssim")


def test_fleet_equals_one_autoencoder_at_a_time(rng):
    layers = _fleet(rng, 4, [10, 6, 10])
    x = rng.random((9, 10)).astype(np.float32)
    fleet = rk.recon_error(x, layers, device="cpu")
    for e in range(4):
        one = rk.recon_error(x, [(w[e:e + 1], b[e:e + 1]) for w, b in layers], device="cpu")
        np.testing.assert_allclose(fleet[e:e + 1], one, rtol=1e-6, atol=1e-7)
    stacked = rk.stack_layers([[(w[e], b[e]) for w, b in layers] for e in range(4)])
    np.testing.assert_array_equal(rk.recon_error(x, stacked, device="cpu"), fleet)


def test_bad_input_is_refused(rng):
    layers = _fleet(rng, 2, [6, 3, 6])
    x = rng.random((4, 6)).astype(np.float32)
    with pytest.raises(ValueError, match="loss"):
        rk.recon_error(x, layers, "l1", device="cpu")
    with pytest.raises(ValueError, match="do not chain"):
        rk.recon_error(rng.random((4, 5)), layers, device="cpu")
    with pytest.raises(ValueError, match="image_shape"):
        rk.recon_error(x, layers, "ssim", device="cpu")
    with pytest.raises(ValueError, match="final_activation"):
        rk.recon_error(x, layers, device="cpu", final_activation="tanh")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cuda_without_gpu_raises(rng):
    with pytest.raises(_device.DeviceError):
        rk.recon_error(np.zeros((1, 4)), _fleet(rng, 1, [4, 2, 4]), device="cuda")


def test_env_forces_cpu_for_auto(rng, monkeypatch):
    monkeypatch.setattr(_device, "cuda_available", lambda: True)
    monkeypatch.setenv("FITSKETCH_DEVICE", "cpu")
    monkeypatch.setattr(rk, "_mse_triton", None)
    layers = _fleet(rng, 2, [6, 3, 6])
    x = rng.random((7, 6)).astype(np.float32)
    _close(rk.recon_error(x, layers, device="auto"), rk.recon_error_reference(x, layers), "mse")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("n", [0, 1, 7, 97, 1001])
def test_cuda_equals_reference(rng, n):
    layers = _fleet(rng, 3, [16, 8, 3, 8, 16])
    x = rng.random((n, 16)).astype(np.float32)
    _close(rk.recon_error(x, layers, device="cuda"), rk.recon_error_reference(x, layers), "mse")
