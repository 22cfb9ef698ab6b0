"""SimEx's autoencoders: configuration (:class:`AEConfig`), stored records (:class:`AERecord`),
input checks, the architectures (one and a stacked fleet) and training. Scoring lives in
:mod:`fitsketch.simex`, which re-exports every name here.

Architectures: "mlp" d -> 64 -> 16 -> 64 -> d with ReLU between layers (sigmoid output for
images); "conv" a LeNet-like encoder conv3x3(C->8)-ReLU-maxpool2-conv3x3(8->16)-ReLU-maxpool2 and a
decoder upsample-conv3x3(16->8)-ReLU-upsample-conv3x3(8->C)-sigmoid (nearest upsampling to the
encoder's sizes, so any H, W >= 4 works). Training: Adam on MSE, seeded, single-threaded; early
stopping once the ranking the autoencoder induces stops changing (the SimEx observation): every
epoch the per-sample errors of a held-out slice are ranked, and training stops when the Spearman
correlation with the previous epoch's ranking is >= ``rank_threshold`` for ``patience`` epochs
in a row, but not before ``min_epochs`` (an untrained autoencoder ranks samples by their norm, a
ranking that is stable from the first epoch), or at the epoch / time cap.

Records (:meth:`AERecord.to_record`) are plain msgpack-able dicts (str/int/float/list/dict and
float32 NumPy arrays), format :data:`AE_FORMAT`; never pickled.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from . import errors as E


log = logging.getLogger(__name__)

AE_FORMAT = 1
KINDS = ("auto", "mlp", "conv")
LOSSES = ("mse", "ssim")
SSIM_WINDOW = "gaussian"  # 7x7, sigma 1.5 (kernels.recon_error); "uniform" also accepted
_CHUNK_FLOATS = 1 << 24   # largest (E, rows, width) fp32 activation per chunk of target rows


TooFewSamplesError = E.TooFewSamplesError
UnknownLossError = E.UnknownLossError


# ----------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class AEConfig:
    kind: str = "auto"                # "mlp", "conv" (images only) or "auto": conv when image_shape
    hidden: tuple = (64, 16, 64)      # MLP hidden widths: d -> 64 -> 16 -> 64 -> d
    channels: tuple = (8, 16)         # conv channels of the two encoder stages
    epochs: int = 60                  # epoch cap
    time_cap_s: float = 20.0          # wall-clock cap per autoencoder (0: none; caps break reproducibility)
    batch_size: int = 64              # shrunk (not below 4) so an epoch has at least min_batches steps
    min_batches: int = 8
    lr: float = 1e-3                  # Adam
    seed: int = 0                     # initialization, held-out split and batch order
    held_out: float = 0.2             # fraction held out for the early-stopping ranking
    patience: int = 3                 # epochs the ranking must stay put
    min_epochs: int = 10              # the first epochs' rankings follow the sample norms and look stable
    rank_threshold: float = 0.99      # Spearman with the previous epoch counted as "unchanged"
    min_samples: int = 8              # fewer samples per dataset / class is refused
    std_floor: float = 0.1            # floor of a feature's std, see std_floor_scope
    # "feature" (default): each feature's std floored at std_floor * its own range (a constant feature:
    # std_floor * |value|, 1 when all zero), so a pixel that is rarely on does not blow up; unchanged
    # by an affine rescaling of any one feature. "mean" (before issue 20's follow-up): every std floored at std_floor *
    # the mean std over features, which in raw units squashes small-valued features (breast cancer's
    # smoothness next to its areas) to ~0, so the autoencoder ignored them
    std_floor_scope: str = "feature"
    threads: int = 1                  # torch threads while training (0: leave as is)

    def __post_init__(self):
        def bad(name, expected):
            raise E.InvalidArgumentError(f"AEConfig {name}={getattr(self, name)!r} is not valid: expected {expected}")

        if self.kind not in KINDS:
            bad("kind", f"one of {', '.join(KINDS)}")
        if self.std_floor_scope not in ("feature", "mean"):
            bad("std_floor_scope", "'feature' or 'mean'")
        for name in ("hidden", "channels"):
            v = getattr(self, name)
            if not isinstance(v, (tuple, list)) or not v or not all(_is_int(h) and h >= 1 for h in v):
                bad(name, "a non-empty tuple of positive integers")
            object.__setattr__(self, name, tuple(int(h) for h in v))
        if len(self.channels) != 2:
            bad("channels", "two integers (c1, c2)")
        for name in ("epochs", "batch_size", "min_batches", "patience", "min_epochs", "min_samples"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                bad(name, "a positive integer")
        if not _is_int(self.seed) or not 0 <= self.seed < 2 ** 63:
            bad("seed", "an integer in [0, 2**63)")
        if not _is_int(self.threads) or self.threads < 0:
            bad("threads", "a non-negative integer")
        for name, lo, hi in (("time_cap_s", 0.0, math.inf), ("lr", 1e-12, 10.0), ("held_out", 0.0, 0.9),
                             ("rank_threshold", -1.0, 1.0), ("std_floor", 0.0, 1.0)):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not lo <= v <= hi:
                bad(name, f"a number in [{lo}, {hi}]")

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "AEConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


# ----------------------------------------------------------------------------- records
@dataclass
class AERecord:
    """One trained autoencoder and everything needed to score a target through it."""
    kind: str                         # "mlp" or "conv"
    d: int                            # input width
    image_shape: tuple                # (C, H, W), or () for tabular vectors
    config: dict                      # AEConfig.to_dict() it was trained with
    shift: np.ndarray                 # (d,) float32   t(x) = (x - shift) / scale
    scale: np.ndarray                 # (d,) float32
    norm: float                       # mean L2 norm of the transformed training samples
    weights: dict                     # name -> float32 array
    n_samples: int
    epochs: int
    stopped: str                      # "rank-stable", "epoch-cap" or "time-cap"
    label: Any = None                 # class label for per-class autoencoders
    features: list | None = None      # column names of the training matrix, when known
    version: int = AE_FORMAT
    # mean MSE (transformed space) of the autoencoder on its own held-out rows after training:
    # SimEx's relative score divides by it (None in records written before it was stored)
    own_error: float | None = None
    # per-feature mean and std of the transformed training rows (the source's marginal moments in its
    # own input space): the calibrated score compares the query's against them (None in older records)
    moments: tuple | None = None
    # per-dimension mean and std of the training rows' latents (the encoder's output, the latent of
    # coverage_space="latent"): the latent score compares the query's latents against them (None in
    # records written before they were stored)
    latent_moments: tuple | None = None
    # the training rows' regions (:func:`fit_regions`, transformed space): k-means centroids (K, d)
    # float32, rows within each centroid's radius and outside all (K + 1,) int64, and the radii (K,)
    # float32 (a centroid's rows' 0.9 quantile distance); the regions score asks how the query's rows
    # fill them (None in records written before they were stored)
    regions: tuple | None = None

    @property
    def final(self) -> str:
        return "sigmoid" if self.image_shape else "none"

    def arch_key(self) -> tuple:
        """Records with equal keys stack into one batched pass."""
        return (self.kind, self.d, tuple(self.image_shape), self.final,
                tuple((k, v.shape) for k, v in sorted(self.weights.items())))

    def to_record(self) -> dict:
        rec = {"v": self.version, "kind": self.kind, "d": int(self.d),
               "image_shape": [int(s) for s in self.image_shape], "config": dict(self.config),
               "shift": np.ascontiguousarray(self.shift, np.float32),
               "scale": np.ascontiguousarray(self.scale, np.float32), "norm": float(self.norm),
               "weights": {k: np.ascontiguousarray(v, np.float32) for k, v in self.weights.items()},
               "n_samples": int(self.n_samples), "epochs": int(self.epochs), "stopped": self.stopped}
        if self.label is not None:
            rec["label"] = self.label
        if self.features is not None:
            rec["features"] = [str(f) for f in self.features]
        if self.own_error is not None:
            rec["own_error"] = float(self.own_error)
        if self.moments is not None:
            rec["mom_mean"], rec["mom_std"] = (np.ascontiguousarray(m, np.float32) for m in self.moments)
        if self.latent_moments is not None:
            rec["lat_mean"], rec["lat_std"] = (np.ascontiguousarray(m, np.float32) for m in self.latent_moments)
        if self.regions is not None:
            c, n, r = self.regions
            rec["reg_c"], rec["reg_n"], rec["reg_r"] = (np.ascontiguousarray(c, np.float32),
                                                        np.ascontiguousarray(n, np.int64),
                                                        np.ascontiguousarray(r, np.float32))
        return rec

    @classmethod
    def from_record(cls, rec: dict) -> "AERecord":
        if not isinstance(rec, dict):
            raise E.CorruptHubError(f"autoencoder record is a {type(rec).__name__}, not a dict: the hub is damaged")
        v = rec.get("v")
        if v != AE_FORMAT:
            raise E.SchemaError(f"autoencoder record was written by format {v!r}; this fitsketch reads up to "
                                f"{AE_FORMAT}: upgrade fitsketch (or retrain the autoencoders)")
        try:
            out = cls(kind=str(rec["kind"]), d=int(rec["d"]), image_shape=tuple(int(s) for s in rec["image_shape"]),
                      config=dict(rec["config"]), shift=np.asarray(rec["shift"], np.float32),
                      scale=np.asarray(rec["scale"], np.float32), norm=float(rec["norm"]),
                      weights={str(k): np.asarray(a, np.float32) for k, a in rec["weights"].items()},
                      n_samples=int(rec["n_samples"]), epochs=int(rec["epochs"]), stopped=str(rec["stopped"]),
                      label=rec.get("label"), features=rec.get("features"),
                      own_error=None if rec.get("own_error") is None else float(rec["own_error"]))
            if out.own_error is not None and not (math.isfinite(out.own_error) and out.own_error >= 0):
                raise ValueError(f"own_error={out.own_error!r}")
            if rec.get("mom_mean") is not None:
                mom = (np.asarray(rec["mom_mean"], np.float32), np.asarray(rec["mom_std"], np.float32))
                if any(m.shape != (out.d,) or not np.isfinite(m).all() for m in mom) or (mom[1] < 0).any():
                    raise ValueError(f"moments of shapes {[m.shape for m in mom]} for d={out.d} (or not finite)")
                out.moments = mom
            if rec.get("lat_mean") is not None:
                lat = (np.asarray(rec["lat_mean"], np.float32), np.asarray(rec["lat_std"], np.float32))
                if any(m.ndim != 1 or m.shape != lat[0].shape or not np.isfinite(m).all() for m in lat) \
                        or (lat[1] < 0).any():
                    raise ValueError(f"latent moments of shapes {[m.shape for m in lat]} (or not finite)")
                out.latent_moments = lat
            if rec.get("reg_c") is not None:
                out.regions = _check_regions(rec["reg_c"], rec["reg_n"], rec["reg_r"], out.d)
        except (KeyError, TypeError, ValueError) as e:
            raise E.CorruptHubError(
                f"autoencoder record is missing or has a bad field ({e!r}): the hub is damaged") from e
        expected = _weight_shapes(out.kind, out.d, out.image_shape, AEConfig.from_dict(out.config))
        got = {k: tuple(a.shape) for k, a in out.weights.items()}
        if got != expected or out.shift.shape != (out.d,) or out.scale.shape != (out.d,):
            raise E.CorruptHubError(f"autoencoder record weights {got} do not match its architecture {expected}")
        if out.latent_moments is not None and out.latent_moments[0].shape != (out.latent_width(),):
            raise E.CorruptHubError(f"autoencoder record holds latent moments of shape {out.latent_moments[0].shape} "
                                    f"for a {out.latent_width()}-dimensional latent: the hub is damaged")
        return out

    def latent_width(self) -> int:
        """Dimensions of the latent :func:`_encode_fleet` gives: the MLP bottleneck's width, or the conv
        encoder's channels x (H // 4) x (W // 4)."""
        if self.kind == "mlp":
            return int(self.weights[f"W{_bottleneck(self.weights)}"].shape[-1])
        return int(self.weights["enc1.w"].shape[0] * (self.image_shape[1] // 4) * (self.image_shape[2] // 4))


# ----------------------------------------------------------------------------- inputs
def numeric_matrix(df, columns=None) -> np.ndarray:
    """The numeric columns of ``df`` (anything ``fitsketch.data.to_frame`` reads) as float32 (n, d).

    ``columns`` selects and orders columns by name (e.g. ``record.features`` at query time).
    """
    from .data import to_frame

    df = to_frame(df)
    if columns is not None:
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise E.DimensionError(f"the data lacks columns {missing[:5]}{'...' if len(missing) > 5 else ''} "
                                   "that the autoencoder was trained on: give data with the same numeric columns")
        df = df[list(columns)]
    num = [c for c in df.columns if pd.api.types.is_numeric_dtype(df[c])]
    if columns is not None and len(num) != len(columns):
        raise E.UnsupportedDataError(f"columns {sorted(set(columns) - set(num))[:5]} are not numeric: convert them")
    if not num:
        raise E.UnsupportedDataError(f"data has no numeric column (columns: {list(df.columns)[:5]}...): SimEx "
                                     "autoencoders need numbers; encode categorical columns first")
    return _check_matrix(df[num].to_numpy(dtype=np.float32, na_value=np.nan), "data")


def _check_matrix(x, name: str) -> np.ndarray:
    if isinstance(x, pd.DataFrame):
        return numeric_matrix(x)
    try:
        x = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise E.UnsupportedDataError(f"{name} cannot be read as numbers ({e}): pass a float array (n, d)") from e
    if x.ndim != 2:
        raise E.DimensionError(f"{name} has shape {x.shape}: pass a 2-D (n_samples, n_features) array; "
                               "flatten images to rows and give image_shape=(C, H, W)")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise E.EmptyDataError(f"{name} of shape {x.shape} is empty: give at least one row and one feature")
    if not np.isfinite(x).all():
        bad = np.argwhere(~np.isfinite(x))[0]
        raise E.NonFiniteError(f"{name} holds NaN or infinity (first at row {bad[0]}, column {bad[1]}): "
                               "drop or impute those values first")
    return np.ascontiguousarray(x)


def _check_image_shape(image_shape, d: int) -> tuple:
    if image_shape is None:
        return ()
    shape = tuple(image_shape)
    if len(shape) == 2:
        shape = (1,) + shape
    if len(shape) != 3 or not all(_is_int(s) and s >= 1 for s in shape):
        raise E.DimensionError(f"image_shape={image_shape!r} is not valid: give (C, H, W) (or (H, W)) positive ints")
    shape = tuple(int(s) for s in shape)
    if math.prod(shape) != d:
        raise E.DimensionError(f"image_shape={shape} holds {math.prod(shape)} values but rows have {d} features: "
                               "give the (C, H, W) the rows were flattened from")
    return shape


def _check_loss(loss: str, records) -> None:
    if loss not in LOSSES:
        raise UnknownLossError(f"loss={loss!r} is not a reconstruction loss: use one of {', '.join(LOSSES)}")
    if loss == "ssim":
        flat = [r.label if r.label is not None else i for i, r in enumerate(records) if not r.image_shape]
        if flat:
            raise UnknownLossError(f"loss='ssim' needs image autoencoders but {len(flat)} were trained on tabular "
                                   "rows (no image_shape): use loss='mse' or train with image_shape=(C, H, W)")
        small = [r.image_shape for r in records if min(r.image_shape[1:]) < 7]
        if small:
            raise UnknownLossError(f"loss='ssim' uses a 7x7 window but images are {small[0][1:]}: use loss='mse'")


# ----------------------------------------------------------------------------- architecture
def _resolve_kind(kind: str, image_shape: tuple) -> str:
    if kind == "auto":
        return "conv" if image_shape else "mlp"
    if kind == "conv":
        if not image_shape:
            raise E.InvalidArgumentError("kind='conv' needs image_shape=(C, H, W): give it, or use kind='mlp'")
        if min(image_shape[1:]) < 4:
            raise E.DimensionError(f"kind='conv' pools twice and needs images of at least 4x4, got "
                                   f"{image_shape[1:]}: use kind='mlp'")
    return kind


def _weight_shapes(kind: str, d: int, image_shape: tuple, cfg: AEConfig) -> dict:
    if kind == "mlp":
        dims = [d, *cfg.hidden, d]
        out = {}
        for l, (i, o) in enumerate(zip(dims[:-1], dims[1:])):
            out[f"W{l}"], out[f"b{l}"] = (i, o), (o,)
        return out
    c, (c1, c2) = image_shape[0], cfg.channels
    return {"enc0.w": (c1, c, 3, 3), "enc0.b": (c1,), "enc1.w": (c2, c1, 3, 3), "enc1.b": (c2,),
            "dec0.w": (c1, c2, 3, 3), "dec0.b": (c1,), "dec1.w": (c, c1, 3, 3), "dec1.b": (c,)}


def _init_weights(shapes: dict, gen: torch.Generator) -> dict:
    """PyTorch's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases."""
    out, fan = {}, None
    for name, shape in shapes.items():  # weights precede their biases
        if name.startswith("W") or name.endswith(".w"):
            fan = shape[0] if name.startswith("W") else shape[1] * shape[2] * shape[3]
        bound = 1.0 / math.sqrt(fan)
        out[name] = (torch.rand(shape, generator=gen, dtype=torch.float32) * 2 - 1) * bound
    return out


def _forward(w: dict, x: torch.Tensor, kind: str, image_shape: tuple, final: str) -> torch.Tensor:
    """One autoencoder on x (n, d) already transformed -> (n, d). Any float dtype."""
    if kind == "mlp":
        n_layers = len(w) // 2
        h = x
        for l in range(n_layers):
            h = torch.addmm(w[f"b{l}"], h, w[f"W{l}"])
            if l < n_layers - 1:
                h = torch.relu(h)
    else:
        c, hh, ww = image_shape
        h = x.reshape(-1, c, hh, ww)
        h1 = F.max_pool2d(torch.relu(F.conv2d(h, w["enc0.w"], w["enc0.b"], padding=1)), 2)
        h2 = F.max_pool2d(torch.relu(F.conv2d(h1, w["enc1.w"], w["enc1.b"], padding=1)), 2)
        u = F.interpolate(h2, size=h1.shape[-2:], mode="nearest")
        u = torch.relu(F.conv2d(u, w["dec0.w"], w["dec0.b"], padding=1))
        u = F.interpolate(u, size=(hh, ww), mode="nearest")
        h = F.conv2d(u, w["dec1.w"], w["dec1.b"], padding=1).reshape(x.shape[0], -1)
    return torch.sigmoid(h) if final == "sigmoid" else h


def fleet_mlp(w: dict, xs: torch.Tensor, last: int) -> torch.Tensor:
    """Layers ``0..last`` of E stacked MLPs, ReLU between them: xs (E, n, d) -> (E, n, out)."""
    h = xs
    for l in range(last + 1):
        h = torch.baddbmm(w[f"b{l}"].unsqueeze(1), h, w[f"W{l}"])  # (E, n, out)
        if l < last:
            h = torch.relu_(h)
    return h


def _grouped(w: dict):
    g = lambda name: w[name].reshape(-1, *w[name].shape[2:])  # noqa: E731  (E*out, in, 3, 3)
    b = lambda name: w[name].reshape(-1)  # noqa: E731                   (E*out,)
    return g, b


def fleet_conv_encode(w: dict, xs: torch.Tensor, image_shape: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """The conv encoders of E stacked autoencoders as grouped convolutions (autoencoder e owns
    channel group e): xs (E, n, C*H*W) -> (h1, h2), each (n, E*channels, h, w)."""
    e, n, _ = xs.shape
    c, hh, ww = image_shape
    g, b = _grouped(w)
    h = xs.reshape(e, n, c, hh, ww).transpose(0, 1).reshape(n, e * c, hh, ww)  # (n, E*C, H, W)
    h1 = F.max_pool2d(torch.relu_(F.conv2d(h, g("enc0.w"), b("enc0.b"), padding=1, groups=e)), 2)
    h2 = F.max_pool2d(torch.relu_(F.conv2d(h1, g("enc1.w"), b("enc1.b"), padding=1, groups=e)), 2)
    return h1, h2


def _forward_fleet(w: dict, xs: torch.Tensor, kind: str, image_shape: tuple, final: str) -> torch.Tensor:
    """E stacked autoencoders, each on its own input: xs (E, n, d) -> (E, n, d)."""
    e, n, d = xs.shape
    if kind == "mlp":
        h = fleet_mlp(w, xs, len(w) // 2 - 1)
    else:  # grouped convolutions: autoencoder e owns channel group e
        c, hh, ww = image_shape
        g, b = _grouped(w)
        h1, h2 = fleet_conv_encode(w, xs, image_shape)
        u = F.interpolate(h2, size=h1.shape[-2:], mode="nearest")
        u = torch.relu_(F.conv2d(u, g("dec0.w"), b("dec0.b"), padding=1, groups=e))
        u = F.interpolate(u, size=(hh, ww), mode="nearest")
        h = F.conv2d(u, g("dec1.w"), b("dec1.b"), padding=1, groups=e)  # (n, E*C, H, W)
        h = h.reshape(n, e, d).transpose(0, 1)  # (E, n, d)
    return torch.sigmoid_(h) if final == "sigmoid" else h


def _bottleneck(w: dict) -> int:
    """The MLP layer whose output is the latent: the narrowest hidden layer (the first if tied)."""
    n_layers = len(w) // 2
    return int(np.argmin([w[f"W{l}"].shape[-1] for l in range(n_layers - 1)]))


def _encode_fleet(w: dict, xs: torch.Tensor, kind: str, image_shape: tuple) -> torch.Tensor:
    """The encoders of E stacked autoencoders (_forward_fleet's first half), each on its own
    transformed input: xs (E, n, d) -> latents (E, n, k)."""
    e, n, _ = xs.shape
    if kind == "mlp":
        return fleet_mlp(w, xs, _bottleneck(w))
    _, h2 = fleet_conv_encode(w, xs, image_shape)
    return h2.reshape(n, e, -1).transpose(0, 1)  # (E, n, C2 * H/4 * W/4): AE e owns channel group e


# ----------------------------------------------------------------------------- training
@contextmanager
def _threads(n: int):
    if n <= 0:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if len(a) < 2:
        return 1.0
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 1.0 if np.ptp(a) == np.ptp(b) == 0 else 0.0
    return float(spearmanr(a, b).statistic)


def train_autoencoder(X, *, image_shape=None, config: AEConfig = AEConfig(), label=None,
                      feature_names=None) -> AERecord:
    """Train one autoencoder on X (n, d); seeded and reproducible on CPU (see :class:`AEConfig`)."""
    if not isinstance(config, AEConfig):
        raise E.InvalidArgumentError(f"config must be an AEConfig, got {type(config).__name__}")
    X = _check_matrix(X, "X")
    n, d = X.shape
    shape = _check_image_shape(image_shape, d)
    kind = _resolve_kind(config.kind, shape)
    if n < config.min_samples:
        what = f"class {label!r}" if label is not None else "the dataset"
        raise TooFewSamplesError(f"{what} has {n} samples; an autoencoder needs at least {config.min_samples}: "
                                 "give more samples, merge small classes, or lower AEConfig.min_samples")
    # input transform t(x) = (x - shift) / scale
    if shape:
        shift = np.zeros(d, np.float32)
        scale = np.full(d, max(float(X.max()), 1e-6), np.float32)
    else:
        shift = X.mean(axis=0, dtype=np.float64).astype(np.float32)
        sd = X.std(axis=0, dtype=np.float64)
        scale = _feature_scale(X, sd, config).astype(np.float32)
    final = "sigmoid" if shape else "none"
    gen = torch.Generator().manual_seed(config.seed)
    xt = torch.from_numpy((X - shift) / scale)  # (n, d)
    norm = float(torch.linalg.vector_norm(xt.double(), dim=1).mean())
    # held-out slice for the ranking; without one, a fixed slice of the training rows
    perm = torch.randperm(n, generator=gen)
    n_hold = int(round(config.held_out * n))
    n_hold = min(n_hold, n - max(2, config.min_samples // 2)) if n_hold >= 2 else 0
    hold_idx, train_idx = perm[:n_hold], perm[n_hold:]
    probe = xt[hold_idx] if n_hold else xt[train_idx[:256]]
    xtrain = xt[train_idx]
    batch = max(1, min(config.batch_size, max(4, xtrain.shape[0] // config.min_batches)))
    w = _init_weights(_weight_shapes(kind, d, shape, config), gen)
    for t in w.values():
        t.requires_grad_(True)
    opt = torch.optim.Adam(list(w.values()), lr=config.lr)
    prev, stable, stopped, epoch = None, 0, "epoch-cap", 0
    t0 = time.perf_counter()
    with _threads(config.threads):
        for epoch in range(1, config.epochs + 1):
            order = torch.randperm(xtrain.shape[0], generator=gen)
            for lo in range(0, xtrain.shape[0], batch):
                xb = xtrain[order[lo:lo + batch]]  # (b, d)
                opt.zero_grad(set_to_none=True)
                loss = F.mse_loss(_forward(w, xb, kind, shape, final), xb)
                loss.backward()
                opt.step()
            with torch.no_grad():
                err = (_forward(w, probe, kind, shape, final) - probe).square().mean(dim=1).numpy()
            if prev is not None:
                stable = stable + 1 if _spearman(prev, err) >= config.rank_threshold else 0
            prev = err
            if stable >= config.patience and epoch >= config.min_epochs:
                stopped = "rank-stable"
                break
            if config.time_cap_s and time.perf_counter() - t0 > config.time_cap_s:
                stopped = "time-cap"
                break
    log.info("autoencoder %s (%s, n=%d, d=%d): %d epochs, %s, %.2fs", label, kind, n, d, epoch, stopped,
             time.perf_counter() - t0)
    with torch.no_grad():   # its own error on rows it did not train on (or the fixed training slice)
        own = float((_forward(w, probe, kind, shape, final) - probe).double().square().mean())
    xd = xt.double()
    moments = (xd.mean(dim=0).float().numpy(), xd.std(dim=0, correction=0).float().numpy())
    with torch.no_grad():   # the training rows' latents, as the scoring pass encodes them
        z = _encode_fleet({k: v.detach()[None] for k, v in w.items()}, xt[None], kind, shape)[0].double()
    latent_moments = (z.mean(dim=0).float().numpy(), z.std(dim=0, correction=0).float().numpy())
    return AERecord(kind, d, shape, config.to_dict(), shift, scale, norm,
                    {k: v.detach().numpy().copy() for k, v in w.items()}, n, epoch, stopped,
                    _plain_label(label), None if feature_names is None else [str(f) for f in feature_names],
                    own_error=own, moments=moments, latent_moments=latent_moments,
                    regions=fit_regions(xt.numpy(), seed=config.seed))


REGION_K = 20            # k-means centroids per autoencoder (fewer for small sources: one per REGION_ROWS rows)
REGION_ROWS = 4
REGION_QUANTILE = 0.9    # a centroid's radius: this quantile of its own rows' distances to it
REGION_FIT_ROWS = 4096   # k-means is fitted on at most this many rows (a seeded sample); all rows are counted
REGION_INITS = 4         # k-means starts; the one with the lowest within-region sum of squares is kept
REGION_MAX_K = 4096      # the most centroids a stored record may hold (validated when read)
#   K, quantile chosen on bench_simex seeds 0-1 (bench/SUMMARY.md, label-free section)


def nearest_region(xt: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of each row's nearest centroid (ties: the lowest index) and its Euclidean distance,
    computed in float64 in chunks: ``(n,) int64, (n,) float64``."""
    c = np.asarray(centroids, dtype=np.float64)
    cc = np.square(c).sum(axis=1)
    n = xt.shape[0]
    idx, dist = np.empty(n, np.int64), np.empty(n, np.float64)
    rows = max(1, _CHUNK_FLOATS // max(1, 8 * c.shape[0]))
    for lo in range(0, n, rows):
        x = np.asarray(xt[lo:lo + rows], dtype=np.float64)
        d2 = np.square(x).sum(axis=1)[:, None] - 2.0 * x @ c.T + cc[None, :]   # (r, K)
        j = d2.argmin(axis=1)
        idx[lo:lo + rows] = j
        dist[lo:lo + rows] = np.sqrt(np.maximum(np.square(x - c[j]).sum(axis=1), 0.0))
    return idx, dist


def fit_regions(xt: np.ndarray, *, seed: int = 0, k: int = REGION_K, quantile: float = REGION_QUANTILE) -> tuple:
    """The regions of transformed training rows ``xt`` (n, d): k-means (scipy's ``kmeans2``, k-means++
    start, seeded, the best of REGION_INITS starts) with ``min(k, n // REGION_ROWS)`` (at least 1) centroids
    on at most REGION_FIT_ROWS rows; every row then goes to its nearest centroid. A centroid's radius is
    the ``quantile`` of its rows' distances to it (of all rows' distances when it holds one row);
    centroids no row is nearest to are dropped. Returns ``(centroids (K, d) float32, counts (K + 1,)
    int64, radii (K,) float32)``: counts[j] the rows within centroid j's radius, counts[K] the rows
    outside their nearest centroid's radius (about 1 - quantile of them) -- the bins
    :func:`simex.region_score` puts a query's rows in."""
    from scipy.cluster.vq import kmeans2

    x = np.asarray(xt, dtype=np.float64)
    n = x.shape[0]
    rng = np.random.default_rng(seed)
    fit = x if n <= REGION_FIT_ROWS else x[np.sort(rng.choice(n, REGION_FIT_ROWS, replace=False))]
    kk = max(1, min(k, n // REGION_ROWS))
    if kk == 1:
        cent = fit.mean(axis=0, keepdims=True)
    else:
        best = math.inf
        for _ in range(REGION_INITS):       # the lowest within-region sum of squares of a few seeded starts
            with warnings.catch_warnings():  # "One of the clusters is empty": empty ones are dropped below
                warnings.simplefilter("ignore")
                c, lab = kmeans2(fit, kk, minit="++", seed=rng)
            ss = float(np.square(fit - c[lab]).sum())
            if ss < best:
                best, cent = ss, c
    cent = cent.astype(np.float32)             # as stored: radii and counts from the stored centroids
    idx, _ = nearest_region(x, cent)
    cent = cent[np.flatnonzero(np.bincount(idx, minlength=len(cent)))]
    idx, dist = nearest_region(x, cent)        # again: the first of equally near centroids may have moved
    near = np.bincount(idx, minlength=len(cent))
    whole = float(np.quantile(dist, quantile))
    radii = np.array([float(np.quantile(dist[idx == j], quantile)) if near[j] > 1 else whole
                      for j in range(len(cent))], dtype=np.float32)
    bins = np.where(dist > radii.astype(np.float64)[idx], len(cent), idx)
    return cent, np.bincount(bins, minlength=len(cent) + 1).astype(np.int64), radii


def _check_regions(c, n, r, d: int) -> tuple:
    """A stored record's regions, validated (ValueError names what is wrong)."""
    c, n, r = np.asarray(c, np.float32), np.asarray(n), np.asarray(r, np.float32)
    if c.ndim != 2 or c.shape[1] != d or not 1 <= c.shape[0] <= REGION_MAX_K or not np.isfinite(c).all():
        raise ValueError(f"region centroids of shape {c.shape} for d={d} (or not finite)")
    k = c.shape[0]
    if n.shape != (k + 1,) or n.dtype.kind not in "iu" or (n < 0).any() or (n > 2 ** 53).any() or n.sum() < 1:
        raise ValueError(f"region counts of shape {n.shape}, dtype {n.dtype} for {k} centroids and the outside bin "
                         "(or negative, over 2^53, or no row)")
    if r.shape != (k,) or not np.isfinite(r).all() or (r < 0).any():
        raise ValueError(f"region radii of shape {r.shape} for {k} centroids (or negative / not finite)")
    return c, n.astype(np.int64), r


def _feature_scale(X: np.ndarray, sd: np.ndarray, config: AEConfig) -> np.ndarray:
    """Per-feature divisor of the tabular transform (see ``AEConfig.std_floor_scope``)."""
    if config.std_floor_scope == "mean":
        return np.maximum(sd, max(config.std_floor * float(sd.mean()), 1e-6))
    ptp = np.ptp(X, axis=0).astype(np.float64)
    big = np.abs(X).max(axis=0).astype(np.float64)
    floor = np.where(ptp > 0, config.std_floor * ptp, np.where(big > 0, config.std_floor * big, 1.0))
    return np.maximum(sd, floor)


def _plain_label(label):
    """Labels as msgpack-able scalars: int, float or str."""
    if label is None or isinstance(label, (str, int, float)) and not isinstance(label, bool):
        return label
    if isinstance(label, np.generic) and label.dtype.kind in "iuf":
        return label.item()
    return str(label)


def _split_classes(X: np.ndarray, labels) -> tuple[list, list[np.ndarray]]:
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != X.shape[0]:
        raise E.DimensionError(f"labels has shape {labels.shape} for {X.shape[0]} samples: give one label per row")
    if labels.dtype.kind == "f" and not np.isfinite(labels).all():
        raise E.NonFiniteError("labels hold NaN or infinity: drop the unlabelled rows first")
    try:
        classes = np.unique(labels)
    except TypeError as e:
        raise E.InvalidArgumentError(f"labels cannot be sorted ({e}): give ints or strs") from e
    return [_plain_label(c) for c in classes], [np.flatnonzero(labels == c) for c in classes]


def train_fleet(X, labels=None, *, image_shape=None, config: AEConfig = AEConfig(),
                feature_names=None) -> list[AERecord]:
    """One autoencoder for the whole dataset, or one per class (sorted class order) when labels are given."""
    X = _check_matrix(X, "X")
    _check_image_shape(image_shape, X.shape[1])
    if labels is None:
        return [train_autoencoder(X, image_shape=image_shape, config=config, feature_names=feature_names)]
    classes, rows = _split_classes(X, labels)
    small = [(c, len(r)) for c, r in zip(classes, rows) if len(r) < config.min_samples]
    if small:
        raise TooFewSamplesError(f"classes {small[:5]} (label, samples) have fewer than {config.min_samples} "
                                 "samples: give more samples, merge or drop those classes, or train without labels")
    return [train_autoencoder(X[r], image_shape=image_shape, config=config, label=c, feature_names=feature_names)
            for c, r in zip(classes, rows)]
