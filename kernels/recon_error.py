# Reconstruction error of a batch through a fleet of autoencoders (SimEx, Hwang et al.).
#
# E stacked MLP autoencoders share one architecture; layer l holds W_l (E, in_l, out_l) and
# b_l (E, out_l). For sample x_i (a row of X (n, D)) and autoencoder e:
#     h_0 = x_i,   h_l = relu(h_{l-1} W_l[e] + b_l[e])   (l < last),
#     y_ei = f(h_{last-1} W_last[e] + b_last[e]),  f = identity ("none") or sigmoid
# and the per-sample loss is
#     mse:   loss[e, i] = (1/D) sum_j (y_ei[j] - x_i[j])^2
#     ssim:  loss[e, i] = 1 - SSIM(x_i, y_ei), rows read as images (C, H, W):
#            per channel, with a normalized k x k window w (gaussian, sigma = 1.5, or uniform;
#            k = 7 by default) slid over the valid positions (no padding),
#              mu_x = w * x,  s_xx = w * x^2 - mu_x^2,  s_xy = w * (x y) - mu_x mu_y  (same for y)
#              S = (2 mu_x mu_y + C1)(2 s_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(s_xx + s_yy + C2)),
#              C1 = (0.01 L)^2, C2 = (0.03 L)^2, L = data_range (1.0: pixels in [0, 1]),
#            SSIM = mean of S over channels and positions (Wang et al. 2004, biased moments).
# Images autoencoders that are not MLPs (the LeNet-like ones) are run by the caller, who hands
# the reconstructions to ``recon_loss``.
#
# Batching is the point: the PyTorch path pushes the batch through all E autoencoders at once
# with batched matmuls (E, n, in) @ (E, in, out); the Triton kernel fuses the MSE reduction
# (reconstruction vs input, summed per sample in registers, the difference never written out).
# Results are float32 (E, n).
from __future__ import annotations

import numpy as np
import torch

from ._device import resolve_device

try:  # Triton is optional: the CUDA path needs it, the CPU path does not.
    import triton
    import triton.language as tl

    _HAVE_TRITON = True
except Exception:  # pragma: no cover
    _HAVE_TRITON = False

LOSSES = ("mse", "ssim")
FINALS = ("none", "sigmoid")
WINDOWS = ("gaussian", "uniform")


# ----------------------------------------------------------------------------- Triton kernel
if _HAVE_TRITON:

    @triton.jit
    def _mse_kernel(
        y_ptr,    # [E, n, D] float32 reconstructions
        x_ptr,    # [n, D] float32 inputs
        out_ptr,  # [E, n] float32 per-sample mean squared error
        n, D, inv_d,
        BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        e = tl.program_id(0).to(tl.int64)
        rows = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BN,)
        row_ok = rows < n
        rows64 = rows.to(tl.int64)
        cols = tl.arange(0, BLOCK_D)
        acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            c = d0 + cols
            ok = row_ok[:, None] & (c[None, :] < D)
            x = tl.load(x_ptr + rows64[:, None] * D + c[None, :], mask=ok, other=0.0)
            y = tl.load(y_ptr + (e * n + rows64[:, None]) * D + c[None, :], mask=ok, other=0.0)
            diff = y - x  # (BN, BD), stays in registers
            acc += tl.sum(diff * diff, axis=1)
        tl.store(out_ptr + e * n + rows64, acc * inv_d, mask=row_ok)

    def _mse_triton(x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        """x (n, D) fp32, recon (E, n, D) fp32 -> (E, n) fp32 mean squared error per sample."""
        e, n, d = recon.shape
        out = torch.zeros((e, n), dtype=torch.float32, device=recon.device)
        if e == 0 or n == 0 or d == 0:
            return out
        block_d = min(128, triton.next_power_of_2(d))
        grid = (e, triton.cdiv(n, 32))
        _mse_kernel[grid](recon.contiguous(), x.contiguous(), out, n, d, 1.0 / d,
                          BLOCK_N=32, BLOCK_D=block_d)
        return out
else:  # pragma: no cover
    _mse_triton = None


# ----------------------------------------------------------------------------- PyTorch path
def _first_layer_cat(w: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """W (E, in, out), b (E, out) -> (in, E * out), (E * out,): layer 1 of all E as one GEMM."""
    return w.permute(1, 0, 2).reshape(w.shape[1], -1), b.reshape(-1)


def _forward_torch(x: torch.Tensor, layers, final: str, first=None) -> torch.Tensor:
    """x (n, D) -> (E, n, D_out): all E autoencoders at once.

    Layer 1 shares its input across the fleet, so it is one (n, D) @ (D, E * out) GEMM; the
    others are batched matmuls (E, n, in) @ (E, in, out).
    """
    w0, b0 = layers[0]
    n_ae, _, out0 = w0.shape
    wc, bc = first if first is not None else _first_layer_cat(w0, b0)
    h = torch.addmm(bc, x, wc).view(x.shape[0], n_ae, out0).transpose(0, 1)  # (E, n, out0)
    last = len(layers) - 1
    for li in range(1, len(layers) + 1):
        if li <= last:
            h = torch.relu(h)
        if li == len(layers):
            break
        w, b = layers[li]
        h = torch.baddbmm(b.unsqueeze(1), h, w)  # (E, n, out)
    if final == "sigmoid":
        h = torch.sigmoid(h)
    return h


def _window(kind: str, size: int, device=None) -> torch.Tensor:
    """Normalized (size, size) float32 window: gaussian sigma 1.5 centered, or uniform."""
    if kind == "uniform":
        g = torch.ones(size, dtype=torch.float64)
    else:
        k = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
        g = torch.exp(-(k * k) / (2.0 * 1.5 ** 2))
    w = torch.outer(g, g)
    return (w / w.sum()).to(device=device, dtype=torch.float32)


def _ssim_torch(x: torch.Tensor, y: torch.Tensor, shape, window: str, win_size: int,
                data_range: float) -> torch.Tensor:
    """x (n, C*H*W), y (E, n, C*H*W) -> (E, n) 1 - SSIM, through depthwise conv2d."""
    c, hh, ww = shape
    e, n = y.shape[:2]
    w = _window(window, win_size, x.device).expand(c, 1, win_size, win_size)  # (C, 1, k, k)
    conv = lambda t: torch.nn.functional.conv2d(t, w, groups=c)  # noqa: E731
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    xi = x.reshape(n, c, hh, ww)
    mu_x = conv(xi)  # (n, C, H', W')
    s_xx = conv(xi * xi) - mu_x * mu_x
    yi = y.reshape(e * n, c, hh, ww)
    xr = xi.repeat(e, 1, 1, 1)  # (E*n, C, H, W)
    mu_y = conv(yi)
    s_yy = conv(yi * yi) - mu_y * mu_y
    mu_xr = mu_x.repeat(e, 1, 1, 1)
    s_xy = conv(xr * yi) - mu_xr * mu_y
    s = ((2 * mu_xr * mu_y + c1) * (2 * s_xy + c2)) / \
        ((mu_xr * mu_xr + mu_y * mu_y + c1) * (s_xx.repeat(e, 1, 1, 1) + s_yy + c2))
    return (1.0 - s.mean(dim=(1, 2, 3))).view(e, n)


def _loss_torch(x: torch.Tensor, y: torch.Tensor, loss: str, use_triton: bool, **ssim) -> torch.Tensor:
    if loss == "mse":
        if x.shape[1] == 0:
            return torch.zeros(y.shape[:2], dtype=torch.float32, device=y.device)
        if use_triton:
            return _mse_triton(x, y)
        return (y - x.unsqueeze(0)).square_().mean(dim=-1)
    return _ssim_torch(x, y, **ssim)


def _chunk_rows(n: int, e: int, width: int, budget: int = 1 << 22) -> int:
    """Samples per chunk so one (E, rows, width) fp32 activation stays under ``budget`` floats
    (16 MB on CPU: small enough to stay near the cache, large enough to amortize launches)."""
    return max(1, min(n, budget // max(1, e * width)))


# ----------------------------------------------------------------------------- NumPy reference
def _ssim_reference(x: np.ndarray, y: np.ndarray, shape, window: str, win_size: int,
                    data_range: float) -> float:
    """1 - SSIM of two flat images (float64), one window position at a time per channel."""
    c, hh, ww = shape
    w = _window(window, win_size).double().numpy()
    xi = x.reshape(c, hh, ww)
    yi = y.reshape(c, hh, ww)
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    vals = []
    for ch in range(c):
        for r in range(hh - win_size + 1):
            for q in range(ww - win_size + 1):
                px = xi[ch, r:r + win_size, q:q + win_size]
                py = yi[ch, r:r + win_size, q:q + win_size]
                mx, my = (w * px).sum(), (w * py).sum()
                sxx = (w * px * px).sum() - mx * mx
                syy = (w * py * py).sum() - my * my
                sxy = (w * px * py).sum() - mx * my
                vals.append(((2 * mx * my + c1) * (2 * sxy + c2)) /
                            ((mx * mx + my * my + c1) * (sxx + syy + c2)))
    return 1.0 - float(np.mean(vals))


def recon_loss_reference(x, recon, loss: str = "mse", *, image_shape=None, window: str = "gaussian",
                         win_size: int = 7, data_range: float = 1.0) -> np.ndarray:
    """The definition of the loss, in float64, one autoencoder and one sample at a time."""
    x = np.asarray(x, dtype=np.float64)
    recon = np.asarray(recon, dtype=np.float64)
    if recon.ndim == 2:
        recon = recon[None]
    out = np.zeros(recon.shape[:2], dtype=np.float64)
    for e in range(recon.shape[0]):
        for i in range(recon.shape[1]):
            if loss == "mse":
                out[e, i] = np.mean((recon[e, i] - x[i]) ** 2) if x.shape[1] else 0.0
            else:
                out[e, i] = _ssim_reference(x[i], recon[e, i], image_shape, window, win_size,
                                            data_range)
    return out.astype(np.float32)


def recon_error_reference(x, layers, loss: str = "mse", *, final_activation: str = "none",
                          **loss_kw) -> np.ndarray:
    """The definition: each autoencoder, each sample, in float64 -> (E, n) float32."""
    x = np.asarray(x, dtype=np.float64)
    layers = [(np.asarray(w, dtype=np.float64), np.asarray(b, dtype=np.float64)) for w, b in layers]
    n_ae = layers[0][0].shape[0] if layers else 0
    recon = np.zeros((n_ae, x.shape[0], layers[-1][0].shape[2] if layers else 0))
    for e in range(n_ae):
        for i in range(x.shape[0]):
            h = x[i]
            for li, (w, b) in enumerate(layers):
                h = h @ w[e] + b[e]
                if li < len(layers) - 1:
                    h = np.maximum(h, 0.0)
            if final_activation == "sigmoid":
                h = 1.0 / (1.0 + np.exp(-h))
            recon[e, i] = h
    return recon_loss_reference(x, recon, loss, **loss_kw)


# ----------------------------------------------------------------------------- dispatch
def _check_loss(loss, image_shape, window, win_size, d):
    if loss not in LOSSES:
        raise ValueError(f"loss={loss!r} is not a reconstruction loss: use one of {', '.join(LOSSES)}")
    if loss == "ssim":
        if image_shape is None or len(image_shape) != 3:
            raise ValueError("loss='ssim' needs image_shape=(C, H, W) to read the rows as images")
        c, hh, ww = (int(v) for v in image_shape)
        if c * hh * ww != d:
            raise ValueError(f"image_shape={tuple(image_shape)} holds {c * hh * ww} values but rows "
                             f"have {d}: pass the (C, H, W) the rows were flattened from")
        if window not in WINDOWS:
            raise ValueError(f"window={window!r}: use one of {', '.join(WINDOWS)}")
        if not 1 <= win_size <= min(hh, ww):
            raise ValueError(f"win_size={win_size} does not fit images of {hh}x{ww}: use a window "
                             f"no larger than the image (7 is the default)")


def _as_f32(v, dev) -> torch.Tensor:
    t = v if isinstance(v, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))
    return t.to(device=dev, dtype=torch.float32).contiguous()


def recon_loss(x, recon, loss: str = "mse", *, image_shape=None, window: str = "gaussian",
               win_size: int = 7, data_range: float = 1.0, device: str = "auto") -> np.ndarray:
    """Per-sample loss of reconstructions ``recon`` (E, n, D) (or (n, D)) of ``x`` (n, D): (E, n) fp32."""
    dev = resolve_device(device)
    x = _as_f32(x, dev)
    recon = _as_f32(recon, dev)
    if recon.ndim == 2:
        recon = recon.unsqueeze(0)
    if x.ndim != 2 or recon.ndim != 3 or recon.shape[1:] != x.shape:
        raise ValueError(f"recon {tuple(recon.shape)} does not match x {tuple(x.shape)}: "
                         f"expected (E, n, D) with x (n, D)")
    _check_loss(loss, image_shape, window, win_size, x.shape[1])
    kw = dict(shape=tuple(int(v) for v in image_shape), window=window, win_size=win_size,
              data_range=data_range) if loss == "ssim" else {}
    use_triton = dev == "cuda" and _mse_triton is not None
    rows = _chunk_rows(x.shape[0], recon.shape[0], x.shape[1])
    parts = [_loss_torch(x[i:i + rows], recon[:, i:i + rows], loss, use_triton, **kw)
             for i in range(0, x.shape[0], rows)]
    out = torch.cat(parts, dim=1) if parts else torch.zeros(recon.shape[:2])
    return out.cpu().numpy().astype(np.float32)


def recon_error(x, layers, loss: str = "mse", device: str = "auto", *,
                final_activation: str = "none", image_shape=None, window: str = "gaussian",
                win_size: int = 7, data_range: float = 1.0) -> np.ndarray:
    """Per-sample reconstruction loss of ``x`` (n, D) through E stacked MLP autoencoders.

    ``layers`` is a list of ``(W, b)`` with ``W`` (E, in, out) and ``b`` (E, out) (NumPy arrays or
    tensors); ReLU between layers, ``final_activation`` "none" or "sigmoid" at the end. Returns
    float32 (E, n): mean squared error over features, or 1 - SSIM (``image_shape=(C, H, W)``).
    """
    dev = resolve_device(device)
    if final_activation not in FINALS:
        raise ValueError(f"final_activation={final_activation!r}: use one of {', '.join(FINALS)}")
    if not layers:
        raise ValueError("layers is empty: pass [(W1, b1), (W2, b2), ...] with W (E, in, out)")
    x = _as_f32(x, dev)
    if x.ndim != 2:
        raise ValueError(f"x has shape {tuple(x.shape)}: expected (n_samples, n_features)")
    ts = [(_as_f32(w, dev), _as_f32(b, dev)) for w, b in layers]
    width, n_ae = x.shape[1], ts[0][0].shape[0]
    for li, (w, b) in enumerate(ts):
        if w.ndim != 3 or w.shape[0] != n_ae or w.shape[1] != width or tuple(b.shape) != (n_ae, w.shape[2]):
            raise ValueError(f"layer {li}: W {tuple(w.shape)}, b {tuple(b.shape)} do not chain: "
                             f"expected W ({n_ae}, {width}, out) and b ({n_ae}, out)")
        width = w.shape[2]
    if width != x.shape[1]:
        raise ValueError(f"the autoencoders output {width} features but x has {x.shape[1]}")
    _check_loss(loss, image_shape, window, win_size, x.shape[1])
    kw = dict(shape=tuple(int(v) for v in image_shape), window=window, win_size=win_size,
              data_range=data_range) if loss == "ssim" else {}
    use_triton = dev == "cuda" and _mse_triton is not None
    widest = max([x.shape[1]] + [w.shape[2] for w, _ in ts])
    rows = _chunk_rows(x.shape[0], n_ae, widest)
    if dev == "cuda":
        rows = _chunk_rows(x.shape[0], n_ae, widest, budget=1 << 26)  # GPU: big launches
    parts = []
    with torch.no_grad():
        first = _first_layer_cat(*ts[0])
        for i in range(0, x.shape[0], rows):
            xc = x[i:i + rows]
            parts.append(_loss_torch(xc, _forward_torch(xc, ts, final_activation, first), loss,
                                     use_triton, **kw))
    out = torch.cat(parts, dim=1) if parts else torch.zeros((n_ae, 0))
    return out.cpu().numpy().astype(np.float32)


def stack_layers(autoencoders) -> list:
    """Stack per-autoencoder layer lists ``[[(W, b), ...], ...]`` (W (in, out)) into the fleet
    form ``[(W (E, in, out), b (E, out)), ...]`` that :func:`recon_error` takes."""
    autoencoders = list(autoencoders)
    if not autoencoders:
        raise ValueError("no autoencoders to stack")
    depth = len(autoencoders[0])
    if any(len(ae) != depth for ae in autoencoders):
        raise ValueError("autoencoders of different depths cannot be stacked: group them by architecture")
    return [(np.stack([np.asarray(ae[li][0], dtype=np.float32) for ae in autoencoders]),
             np.stack([np.asarray(ae[li][1], dtype=np.float32) for ae in autoencoders]))
            for li in range(depth)]

