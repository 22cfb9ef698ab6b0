"""SimEx (Hwang et al.): inter-dataset similarity predicted by a fleet of small autoencoders.

Per dataset Y (or per class of Y) an autoencoder A_Y is trained on Y's samples. The similarity of a
target X to Y is the mean reconstruction loss of X through A_Y, lower = closer:

    Delta(X | Y) = (1/|X|) sum_{x in X} loss(t_Y(x), A_Y(t_Y(x)))   [ / mean_{y in Y} ||t_Y(y)||_2 ]

* ``t_Y`` is Y's stored input transform ``t_Y(x) = (x - shift_Y) / scale_Y``: per-feature
  standardization for tabular vectors (std floored, see :class:`AEConfig`), division by Y's
  largest value for images (pixels to [0, 1]).
* loss "mse": mean over features of the squared error; "ssim": 1 - SSIM of the rows read as
  (C, H, W) images (gaussian 7x7 window, sigma 1.5, valid positions, data range 1; the
  definition is ``fitsketch.kernels.recon_error``), image autoencoders only.
* normalize=True divides by the mean L2 norm of Y's transformed training samples, stored at
  training time.

The autoencoders themselves (configuration, records, architectures, training) live in
:mod:`fitsketch.autoencoder`; every name is re-exported here.

Caveat: Delta compares autoencoders, so they must be trained comparably. Rank-stable stopping
ends training at different stages for different sources, and a longer-trained broad autoencoder
can then beat a briefly trained, closer one (tests/test_simex.py shows both regimes); for close
sources prefer one fixed budget (``patience >= epochs``). Standardized (tabular) errors are in
units of each source's own feature spread, which favours broad sources; :func:`latent_score`
(``delta(..., latent=True)``, the hub's default ``simex_score`` for new hubs) compares the target's
latents with the source rows' stored latent moments (plus a small own-error term), and
:func:`calibrate` (``calibrated=True``, the default of hubs made before) the target with the
source's stored input moments and its own held-out error; neither favours broad sources nor
autoencoders that reconstruct everything.

Scoring (:func:`delta`) runs the target through all candidate autoencoders in one batched pass:
records of one architecture are stacked, the target is transformed per autoencoder into an
(E, n, d) tensor, MLPs run as batched matmuls (E, n, in) @ (E, in, out) and conv autoencoders as
grouped convolutions (groups = E). MLP fleets sharing one input transform (image MLPs) go through
``kernels.recon_error`` (fused MSE on CUDA); SSIM goes through ``kernels.recon_error.recon_loss``.
:func:`delta_reference` is the definition: one autoencoder, one sample at a time, in float64.

Records (:meth:`AERecord.to_record`) are plain msgpack-able dicts (str/int/float/list/dict and
float32 NumPy arrays), format :data:`AE_FORMAT`; never pickled.
"""
from __future__ import annotations

import dataclasses  # noqa: F401  (callers use simex.dataclasses.replace on AEConfig)
import math

import numpy as np
import torch

from . import errors as E
from .autoencoder import (  # noqa: F401  (re-exported: fitsketch.simex is the public name)
    _CHUNK_FLOATS, AE_FORMAT, KINDS, LOSSES, REGION_K, REGION_QUANTILE, SSIM_WINDOW, AEConfig, AERecord,
    TooFewSamplesError, UnknownLossError,
    _check_image_shape, _check_loss, _check_matrix, _feature_scale, _forward, _forward_fleet, _grouped,
    _init_weights, _is_int, _plain_label, _resolve_kind, _spearman, _split_classes, _threads, _weight_shapes,
    fit_regions, fleet_conv_encode, fleet_mlp, nearest_region, numeric_matrix, train_autoencoder, train_fleet)
from .kernels._device import resolve_device
from .kernels.recon_error import recon_error, recon_loss, recon_loss_reference

# ----------------------------------------------------------------------------- scoring
def _as_records(records) -> list[AERecord]:
    if isinstance(records, (AERecord, dict)):
        records = [records]
    out = [r if isinstance(r, AERecord) else AERecord.from_record(r) for r in records]
    if not out:
        raise E.InvalidArgumentError("records is empty: give at least one AERecord (or record dict)")
    return out


def _check_target(X, recs: list[AERecord]) -> np.ndarray:
    X = _check_matrix(X, "X_target")
    widths = sorted({r.d for r in recs})
    if widths != [X.shape[1]]:
        raise E.DimensionError(f"X_target has {X.shape[1]} features but the autoencoders take {widths}: give the "
                               "target the sources' numeric columns (numeric_matrix(df, columns=record.features))")
    return X


def delta(X_target, records, *, loss: str = "mse", normalize: bool = True, device: str = "auto",
          window: str = SSIM_WINDOW, relative: bool = False, calibrated: bool = False,
          latent: bool = False, regions: bool = False) -> np.ndarray:
    """Delta(X_target | Y) for every record, one batched pass per architecture: (len(records),) float64.

    ``relative`` (MSE only): divided by each autoencoder's own held-out error (``AERecord.own_error``)
    instead of its mean norm -- how much worse the target reconstructs than the autoencoder's own
    data, so one that reconstructs everything well does not win. A record without ``own_error``
    (trained before it was stored) falls back to ``normalize``'s division (see ``relative_used``).

    ``calibrated`` (MSE only; overrides ``relative``): :func:`calibrate` of the raw loss -- the query's
    marginal moments against the source's stored ones plus the two-sided own-error term. Records
    without ``moments`` / ``own_error`` (trained before they were stored) fall back to ``relative``
    / ``normalize`` (see ``calibrated_used``).

    ``latent`` (MSE only; overrides both): :func:`latent_score` of the raw loss -- the query's latents
    (through each record's encoder) against the source's stored latent moments plus a small own-error
    term. Records without ``latent_moments`` fall back to ``calibrated``, then ``relative`` /
    ``normalize`` (see ``latent_used``).

    ``regions`` (MSE only; overrides the others): :func:`region_score` of the raw loss -- how the
    query's rows fill the source rows' stored k-means regions, plus the small own-error term. Records
    without ``regions`` fall back to ``latent``, then ``calibrated``, ... (see ``regions_used``)."""
    recs = _as_records(records)
    X = _check_target(X_target, recs)
    _check_loss(loss, recs)
    try:
        dev = resolve_device(device)
    except Exception as e:
        raise E.translate(e) from None
    out = np.zeros(len(recs), dtype=np.float64)
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(recs):
        groups.setdefault(r.arch_key(), []).append(i)
    xt = torch.from_numpy(X).to(dev)  # (n, d)
    with torch.no_grad():
        for idx in groups.values():
            out[idx] = _score_group(X, xt, [recs[i] for i in idx], loss, window, dev)
    reg = regions_used(recs, loss) if regions else np.zeros(len(recs), dtype=bool)
    if reg.any():
        out[reg] = region_score(X, [r for r, u in zip(recs, reg) if u], out[reg])
    latent = latent or regions
    lat = latent_used(recs, loss) & ~reg if latent else np.zeros(len(recs), dtype=bool)
    if lat.any():
        used = [r for r, u in zip(recs, lat) if u]
        out[lat] = latent_score(_latents(X, used, dev), used, out[lat])
    cal = calibrated_used(recs, loss) & ~(lat | reg) if calibrated or latent else np.zeros(len(recs), dtype=bool)
    if cal.any():
        out[cal] = calibrate(X, [r for r, u in zip(recs, cal) if u], out[cal])
    rel = relative_used(recs, loss) & ~(cal | lat | reg) if relative or calibrated or latent \
        else np.zeros(len(recs), dtype=bool)
    if rel.any():
        out[rel] /= np.array([max(r.own_error, 1e-12) for r, u in zip(recs, rel) if u])
    rest = ~(reg | lat | cal | rel)
    if normalize and rest.any():
        out[rest] /= np.array([max(r.norm, 1e-12) for r, u in zip(recs, rest) if u])
    return out


RECON_WEIGHT = 0.1   # weight of the own-error term in calibrate(); chosen on the median splits (seeds 0-4) and
#                      the digit / MNIST-5k group zoos, reported on held-out seeds (bench/SUMMARY.md)
_MOMENT_FLOOR = 0.1  # stds (transformed units) floored at this share of the source's mean std (and 1e-3)


def calibrate(X, records, raw, recon_weight: float = RECON_WEIGHT) -> np.ndarray:
    """The calibrated SimEx score of target X (n, d) for each record from its raw mean MSE ``raw``:

        mean_j KL(N(m_j, s_j^2) || N(mu_j, sigma_j^2))  +  recon_weight * (E - 1 - ln E) / 2,   E = raw / own_error

    m, s: the target's per-feature mean and std in the record's input space t(x); mu, sigma: the
    source's stored ``moments`` (stds floored at _MOMENT_FLOOR x the source's mean std, and 1e-3).
    The first term asks whether the target sits where the source's rows sit; the second whether the
    autoencoder reconstructs it as well as its own held-out rows -- two-sided, so an autoencoder that
    reconstructs the target much *better* than its own data (a dense-image autoencoder on sparse
    images) is penalised as well. Both are in nats, unchanged by rescaling any feature of source
    and target alike (per-feature affine for tabular transforms; one global factor for images).
    Lower = closer, 0 for a target distributed like the source's rows and reconstructed like them."""
    X = np.asarray(X, dtype=np.float64)
    raw = np.asarray(raw, dtype=np.float64)
    mean_x, std_x = X.mean(axis=0), X.std(axis=0)
    out = np.empty(len(records), dtype=np.float64)
    for i, r in enumerate(records):
        shift, scale = r.shift.astype(np.float64), r.scale.astype(np.float64)
        mu, sd = (m.astype(np.float64) for m in r.moments)
        floor = max(_MOMENT_FLOOR * float(sd.mean()), 1e-3)
        sd = np.maximum(sd, floor)
        m = (mean_x - shift) / scale
        ratio = np.square(np.maximum(std_x / scale, floor) / sd)
        kl = 0.5 * (ratio + np.square((m - mu) / sd) - 1.0 - np.log(ratio))
        e = max(raw[i] / max(r.own_error, 1e-12), 1e-12)
        out[i] = float(kl.mean()) + recon_weight * 0.5 * (e - 1.0 - math.log(e))
    return out


LATENT_RECON_WEIGHT = 0.05   # weight of the own-error term in latent_score(): {0, .01, .02, .05} tie on the
#                              tuning seeds, .1 loses a median split; the largest that ties keeps the decoder in
#                              the score (bench/SUMMARY.md, label-free section)


def latent_score(latents, records, raw, recon_weight: float = LATENT_RECON_WEIGHT) -> np.ndarray:
    """The latent SimEx score of a target for each record, from its latents ``latents[i]`` (n, k_i)
    through record i's encoder and its raw mean MSE ``raw[i]``:

        mean_j KL(N(m_j, s_j^2) || N(mu_j, sigma_j^2))  +  recon_weight * (E - 1 - ln E) / 2,   E = raw / own_error

    m, s: the target latents' per-dimension mean and std; mu, sigma: the source training rows' stored
    ``latent_moments`` (both stds floored at _MOMENT_FLOOR x the source's mean latent std, and 1e-6).
    It asks whether the target lands where the source's own rows land in the autoencoder's latent
    space: an autoencoder that reconstructs everything still encodes unlike rows elsewhere, and the
    latent (16 learnt dimensions, or the conv encoder's maps) weighs the directions the source varies
    in, where :func:`calibrate`'s per-input-feature moments weigh every pixel alike. Lower = closer,
    0 for a target whose latents are distributed like the source's rows and that reconstructs like them."""
    raw = np.asarray(raw, dtype=np.float64)
    out = np.empty(len(records), dtype=np.float64)
    for i, (z, r) in enumerate(zip(latents, records)):
        z = np.asarray(z, dtype=np.float64)
        mu, sd = (m.astype(np.float64) for m in r.latent_moments)
        if z.ndim != 2 or z.shape[1] != mu.shape[0]:
            raise E.DimensionError(f"latents of shape {z.shape} for a record with a {mu.shape[0]}-dimensional latent")
        floor = max(_MOMENT_FLOOR * float(sd.mean()), 1e-6)
        sd = np.maximum(sd, floor)
        ratio = np.square(np.maximum(z.std(axis=0), floor) / sd)
        kl = 0.5 * (ratio + np.square((z.mean(axis=0) - mu) / sd) - 1.0 - np.log(ratio))
        e = max(raw[i] / max(r.own_error, 1e-12), 1e-12)
        out[i] = float(kl.mean()) + recon_weight * 0.5 * (e - 1.0 - math.log(e))
    return out


REGION_RECON_WEIGHT = 0.05   # the own-error term's weight in region_score(): 0, .05, .2 tie on the tuning seeds
#                              (0.85/0.82, 0.86/0.82, 0.86/0.81); the latent score's weight, to keep the decoder in
REGION_SMOOTHING = 0.5       # added to every region's row count (source and query) before the KL


def region_score(X, records, raw, recon_weight: float = REGION_RECON_WEIGHT) -> np.ndarray:
    """The regions SimEx score of target X (n, d) for each record, from its raw mean MSE ``raw``:

        KL(q || p)  +  recon_weight * (E - 1 - ln E) / 2,   E = raw / own_error

    over K + 1 bins: the record's K stored regions (``AERecord.regions``: k-means centroids of the source's
    transformed training rows and their radii) and one "outside" bin. A row goes to its nearest centroid
    in t(x), or outside when farther from it than that centroid's radius. p: the source's own rows per
    bin (stored; about 10% outside, the radii being 0.9 quantiles); q: the query's rows per bin; both
    plus REGION_SMOOTHING and normalized. It asks whether the source has rows where the query has them,
    region by region: a source holding the query's kind of rows in a small share (a class-skewed source;
    a source mixing the query's domain with another) is as far as that share is small, and one whose
    regions the query's rows fall outside of is far, however well its autoencoder reconstructs them. The
    query's own spread over the source's regions is not penalised (the KL is from q's side), so a query
    covering part of a source's support is close. Lower = closer."""
    X = np.asarray(X, dtype=np.float64)
    raw = np.asarray(raw, dtype=np.float64)
    out = np.empty(len(records), dtype=np.float64)
    for i, r in enumerate(records):
        cent, counts, radii = r.regions
        k = cent.shape[0]
        xs = (X - r.shift.astype(np.float64)) / r.scale.astype(np.float64)
        idx, dist = nearest_region(xs, cent)
        bins = np.where(dist > radii.astype(np.float64)[idx], k, idx)
        q = np.bincount(bins, minlength=k + 1).astype(np.float64) + REGION_SMOOTHING
        p = counts.astype(np.float64) + REGION_SMOOTHING
        q, p = q / q.sum(), p / p.sum()
        e = max(raw[i] / max(r.own_error, 1e-12), 1e-12)
        out[i] = float((q * np.log(q / p)).sum()) + recon_weight * 0.5 * (e - 1.0 - math.log(e))
    return out


def regions_used(records, loss: str = "mse") -> np.ndarray:
    """Which records ``delta(..., regions=True)`` scores by :func:`region_score`: MSE, a stored own
    error and regions."""
    return np.array([loss == "mse" and r.own_error is not None and r.regions is not None
                     for r in _as_records(records)], dtype=bool)


def regions_evidence(reg, lat, cal) -> dict:
    """Evidence for one entry's autoencoders scored with ``regions=True`` (the entry's slices of
    ``regions_used`` / ``latent_used`` / ``calibrated_used``): what was scored, and why not when it
    was not."""
    reg, lat, cal = (np.asarray(a, bool) for a in (reg, lat, cal))
    if reg.all():
        return {"score": "regions", "recon_weight": REGION_RECON_WEIGHT}
    return {"score": "regions" if reg.any() else "latent" if lat.any() else "calibrated" if cal.any() else "raw",
            "fallback": f"{int((~reg).sum())} of this entry's autoencoders store no own error or regions "
                        "(added before they were stored, or loss='ssim'): scored by the latent score, or where "
                        "that is missing too by calibrate, its own held-out error or its mean norm; re-add the "
                        "entry to score it by regions"}


def _latents(X: np.ndarray, records: list[AERecord], dev: str) -> list[np.ndarray]:
    from .coverage_spaces import encode_latent

    return encode_latent(X, records, device=dev)


def latent_used(records, loss: str = "mse") -> np.ndarray:
    """Which records ``delta(..., latent=True)`` scores by :func:`latent_score`: MSE, a stored own error
    and latent moments."""
    return np.array([loss == "mse" and r.own_error is not None and r.latent_moments is not None
                     for r in _as_records(records)], dtype=bool)


def latent_evidence(lat, cal, rel) -> dict:
    """Evidence for one entry's autoencoders scored with ``latent=True`` (lat, cal, rel: the entry's
    slices of ``latent_used`` / ``calibrated_used`` / ``relative_used``)."""
    lat, cal, rel = (np.asarray(a, bool) for a in (lat, cal, rel))
    if lat.all():
        return {"score": "latent", "recon_weight": LATENT_RECON_WEIGHT}
    how = ("by calibrate (input moments) instead" if (cal | lat).all() else
           "divided by its own held-out error instead" if (rel | cal | lat).all()
           else "by calibrate, its own held-out error or its mean norm instead")
    return {"score": "latent" if lat.any() else "calibrated" if cal.any() else "raw",
            "fallback": f"{int((~lat).sum())} of this entry's autoencoders store no own error or latent moments "
                        f"(added before they were stored, or loss='ssim'): scored {how}; re-add the entry to score "
                        "it in latents"}


def calibrated_used(records, loss: str = "mse") -> np.ndarray:
    """Which records ``delta(..., calibrated=True)`` calibrates: MSE, a stored own error and moments."""
    return np.array([loss == "mse" and r.own_error is not None and r.moments is not None
                     for r in _as_records(records)], dtype=bool)


def calibrated_evidence(cal, rel) -> dict:
    """Evidence for one entry's autoencoders scored with ``calibrated=True`` (cal, rel: the entry's
    slices of ``calibrated_used`` / ``relative_used``): what was scored, and why not when it was not."""
    cal, rel = np.asarray(cal, bool), np.asarray(rel, bool)
    if cal.all():
        return {"score": "calibrated", "recon_weight": RECON_WEIGHT}
    why = ("divided by its own held-out error instead" if (rel | cal).all()
           else "divided by its own held-out error or mean norm instead")
    return {"score": "calibrated" if cal.any() else "raw",
            "fallback": f"{int((~cal).sum())} of this entry's autoencoders store no own error or input moments "
                        f"(added before they were stored, or loss='ssim'): {why}; re-add the entry to calibrate it"}


def relative_used(records, loss: str = "mse") -> np.ndarray:
    """Which records ``delta(..., relative=True)`` divides by their own error: MSE and a stored own error."""
    return np.array([loss == "mse" and r.own_error is not None for r in _as_records(records)], dtype=bool)


def _score_group(X: np.ndarray, xt: torch.Tensor, recs: list[AERecord], loss: str, window: str, dev: str):
    """Mean loss of xt (n, d) through E same-architecture autoencoders: (E,) float64."""
    r0, e, n, d = recs[0], len(recs), xt.shape[0], xt.shape[1]
    w = {k: torch.from_numpy(np.stack([r.weights[k] for r in recs])).to(dev) for k in r0.weights}  # (E, ...)
    shift = np.stack([r.shift for r in recs])  # (E, d)
    scale = np.stack([r.scale for r in recs])
    shared = bool((shift == shift[0]).all() and (scale == scale[0]).all())
    ssim_kw = dict(image_shape=r0.image_shape, window=window) if loss == "ssim" else {}
    if r0.kind == "mlp" and shared:  # one input for all: the fused fleet kernel
        layers = [(w[f"W{l}"], w[f"b{l}"]) for l in range(len(w) // 2)]
        xs = torch.from_numpy((X - shift[0]) / scale[0])
        per = recon_error(xs, layers, loss, device=dev, final_activation=r0.final, **ssim_kw)  # (E, n)
        return per.astype(np.float64).mean(axis=1)
    shift_t = torch.from_numpy(shift).to(dev).unsqueeze(1)  # (E, 1, d)
    scale_t = torch.from_numpy(scale).to(dev).unsqueeze(1)
    widest = max([d] + [v.shape[-1] for k, v in w.items() if k.startswith("W")]
                 + ([r0.config["channels"][0] * d // r0.image_shape[0]] if r0.kind == "conv" else []))
    rows = max(1, min(n, _CHUNK_FLOATS // (e * widest)))
    subgroups = _same_transform(shift, scale) if loss == "ssim" else None
    total = np.zeros(e, dtype=np.float64)
    for lo in range(0, n, rows):
        xs = (xt[lo:lo + rows].unsqueeze(0) - shift_t) / scale_t  # (E, r, d)
        y = _forward_fleet(w, xs, r0.kind, r0.image_shape, r0.final)  # (E, r, d)
        if loss == "mse":
            total += (y - xs).square_().mean(dim=2).double().sum(dim=1).cpu().numpy()
        else:
            for sub in subgroups:
                per = recon_loss(xs[sub[0]], y[sub], "ssim", device=dev, **ssim_kw)  # (len(sub), r)
                total[sub] += per.astype(np.float64).sum(axis=1)
    return total / n


def _same_transform(shift: np.ndarray, scale: np.ndarray) -> list[list[int]]:
    """Indices grouped by identical (shift, scale): SSIM compares against one shared input."""
    seen: dict[bytes, list[int]] = {}
    for i in range(shift.shape[0]):
        seen.setdefault(shift[i].tobytes() + scale[i].tobytes(), []).append(i)
    return list(seen.values())


def delta_reference(X_target, records, *, loss: str = "mse", normalize: bool = True,
                    window: str = SSIM_WINDOW, calibrated: bool = False, latent: bool = False,
                    regions: bool = False) -> np.ndarray:
    """The definition of :func:`delta`: one autoencoder, one sample at a time, float64 forward."""
    recs = _as_records(records)
    X = _check_target(X_target, recs).astype(np.float64)
    _check_loss(loss, recs)
    out = np.zeros(len(recs), dtype=np.float64)
    for j, r in enumerate(recs):
        w = {k: torch.from_numpy(v.astype(np.float64)) for k, v in r.weights.items()}
        losses = []
        for x in X:
            xs = (x - r.shift.astype(np.float64)) / r.scale.astype(np.float64)  # (d,)
            if r.kind == "mlp":
                h = xs
                n_layers = len(w) // 2
                for l in range(n_layers):
                    h = h @ r.weights[f"W{l}"].astype(np.float64) + r.weights[f"b{l}"].astype(np.float64)
                    if l < n_layers - 1:
                        h = np.maximum(h, 0.0)
                y = 1.0 / (1.0 + np.exp(-h)) if r.final == "sigmoid" else h
            else:
                y = _forward(w, torch.from_numpy(xs)[None], r.kind, r.image_shape, r.final)[0].numpy()
            if loss == "mse":
                losses.append(np.mean((y - xs) ** 2))
            else:
                losses.append(float(recon_loss_reference(xs[None], y[None], "ssim", image_shape=r.image_shape,
                                                         window=window)[0, 0]))
        if regions and loss == "mse" and r.own_error is not None and r.regions is not None:
            out[j] = _region_reference(X, r, float(np.mean(losses)))
        elif (latent or regions) and loss == "mse" and r.own_error is not None and r.latent_moments is not None:
            out[j] = _latent_reference(X, r, float(np.mean(losses)))
        elif (calibrated or latent or regions) and loss == "mse" and r.own_error is not None and r.moments is not None:
            out[j] = _calibrated_reference(X, r, float(np.mean(losses)))
        elif (calibrated or latent or regions) and loss == "mse" and r.own_error is not None:
            out[j] = np.mean(losses) / max(r.own_error, 1e-12)
        else:
            out[j] = np.mean(losses) / (max(r.norm, 1e-12) if normalize else 1.0)
    return out


def _calibrated_reference(X: np.ndarray, r: AERecord, raw: float) -> float:
    """:func:`calibrate` for one record, one feature at a time on the transformed rows."""
    d = X.shape[1]
    xs = (X - r.shift.astype(np.float64)) / r.scale.astype(np.float64)
    mu, sd = (m.astype(np.float64) for m in r.moments)
    floor = max(_MOMENT_FLOOR * sum(float(v) for v in sd) / d, 1e-3)
    e = max(raw / max(r.own_error, 1e-12), 1e-12)
    return _kl_reference(xs, mu, sd, floor) / d + RECON_WEIGHT * 0.5 * (e - 1.0 - math.log(e))


def _kl_reference(cols: np.ndarray, mu, sd, floor: float) -> float:
    """sum over columns j of KL(N(m_j, s_j^2) || N(mu_j, sd_j^2)), the column's own mean and std
    (both stds floored), one column and one value at a time in float64."""
    total = 0.0
    for j in range(cols.shape[1]):
        col = cols[:, j]
        m = sum(col) / len(col)
        s = max(math.sqrt(sum((v - m) ** 2 for v in col) / len(col)), floor)
        sg = max(float(sd[j]), floor)
        total += math.log(sg / s) + (s * s + (m - mu[j]) ** 2) / (2 * sg * sg) - 0.5
    return total


def _region_reference(X: np.ndarray, r: AERecord, raw: float) -> float:
    """:func:`region_score` for one record: one row and one centroid at a time in float64 (the first
    of equally near centroids), the KL one bin at a time."""
    cent, counts, radii = r.regions
    k = len(radii)
    q = [REGION_SMOOTHING] * (k + 1)
    for x in X:
        xs = (x - r.shift.astype(np.float64)) / r.scale.astype(np.float64)
        best, bd = 0, math.inf
        for j in range(k):
            dj = math.sqrt(sum((a - b) ** 2 for a, b in zip(xs, cent[j].astype(np.float64))))
            if dj < bd:
                best, bd = j, dj
        q[k if bd > float(radii[best]) else best] += 1
    p = [float(c) + REGION_SMOOTHING for c in counts]
    sq, sp = sum(q), sum(p)
    kl = sum(qi / sq * math.log((qi / sq) / (pi / sp)) for qi, pi in zip(q, p))
    e = max(raw / max(r.own_error, 1e-12), 1e-12)
    return kl + REGION_RECON_WEIGHT * 0.5 * (e - 1.0 - math.log(e))


def _latent_reference(X: np.ndarray, r: AERecord, raw: float) -> float:
    """:func:`latent_score` for one record: latents one sample at a time in float64
    (coverage_spaces.latent_reference), moments one dimension at a time."""
    from .coverage_spaces import latent_reference

    z = latent_reference(X, r)
    k = z.shape[1]
    mu, sd = (m.astype(np.float64) for m in r.latent_moments)
    floor = max(_MOMENT_FLOOR * sum(float(v) for v in sd) / k, 1e-6)
    e = max(raw / max(r.own_error, 1e-12), 1e-12)
    return _kl_reference(z, mu, sd, floor) / k + LATENT_RECON_WEIGHT * 0.5 * (e - 1.0 - math.log(e))


def entry_score(deltas) -> float:
    """A hub entry's score from the deltas of its autoencoders: -min (higher is better)."""
    deltas = np.asarray(deltas, dtype=np.float64).reshape(-1)
    if deltas.size == 0:
        raise E.InvalidArgumentError("entry_score needs at least one delta: the entry has no autoencoder")
    return -float(deltas.min())


# ----------------------------------------------------------------------------- classes
def class_similarity(data, labels, *, image_shape=None, config: AEConfig = AEConfig(), loss: str = "mse",
                     normalize: bool = True, symmetric: bool = False, fleet=None,
                     device: str = "auto") -> tuple[list, np.ndarray]:
    """Inter-class similarity of one labelled dataset: ``(classes, M)`` with M[i, j] = Delta(class i | AE of
    class j), lower = closer. The rows are the class's own (training) samples, so the diagonal is
    in-sample; ``symmetric=True`` returns (M + M.T) / 2. ``fleet`` reuses per-class records."""
    X = _check_matrix(data, "data")
    classes, rows = _split_classes(X, labels)
    fleet = _as_records(fleet) if fleet is not None else \
        train_fleet(X, labels, image_shape=image_shape, config=config)
    cols = [r.label for r in fleet]
    if cols != classes:
        raise E.InvalidArgumentError(f"fleet classes {cols} differ from the labels' classes {classes}")
    m = np.stack([delta(X[r], fleet, loss=loss, normalize=normalize, device=device) for r in rows])  # (k, k)
    return classes, (m + m.T) / 2 if symmetric else m


def greedy_pairs(row_classes, col_classes, matrix) -> list[tuple]:
    """One-to-one pairing: repeatedly take the globally smallest entry among unpaired rows and columns."""
    m = np.asarray(matrix, dtype=np.float64)
    order = np.argsort(m, axis=None, kind="stable")
    used_r, used_c, out = set(), set(), []
    for flat in order:
        i, j = divmod(int(flat), m.shape[1])
        if i not in used_r and j not in used_c:
            used_r.add(i)
            used_c.add(j)
            out.append((row_classes[i], col_classes[j], float(m[i, j])))
            if len(out) == min(m.shape):
                break
    return out


def pair_classes(target_data, target_labels, source_data, source_labels, *, image_shape=None,
                 config: AEConfig = AEConfig(), loss: str = "mse", normalize: bool = True, source_fleet=None,
                 device: str = "auto") -> list[tuple]:
    """SimEx class pairing: ``[(target_class, source_class, delta)]`` in pairing order (smallest first)."""
    Xt = _check_matrix(target_data, "target_data")
    t_classes, t_rows = _split_classes(Xt, target_labels)
    fleet = _as_records(source_fleet) if source_fleet is not None else \
        train_fleet(source_data, source_labels, image_shape=image_shape, config=config)
    m = np.stack([delta(Xt[r], fleet, loss=loss, normalize=normalize, device=device) for r in t_rows])
    return greedy_pairs(t_classes, [r.label for r in fleet], m)


def heatmap(classes, matrix, path, *, col_classes=None, title: str = "SimEx Δ (row target | column AE)",
            fmt: str = ".2f") -> str:
    """Write the matrix as an annotated PNG (matplotlib's Agg canvas, no global backend change)."""
    from .extras import require

    require("matplotlib", "the heatmap (--png)")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    m = np.asarray(matrix, dtype=np.float64)
    cols = list(classes) if col_classes is None else list(col_classes)
    if m.shape != (len(classes), len(cols)):
        raise E.DimensionError(f"matrix {m.shape} does not match {len(classes)} row and {len(cols)} column classes")
    size = max(3.0, 0.6 * max(m.shape) + 1.5)
    fig = Figure(figsize=(size, size))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(m, cmap="viridis_r")
    ax.set_xticks(range(len(cols)), [str(c) for c in cols])
    ax.set_yticks(range(len(classes)), [str(c) for c in classes])
    ax.set_xlabel("source autoencoder")
    ax.set_ylabel("target samples")
    ax.set_title(title)
    mid = (np.nanmin(m) + np.nanmax(m)) / 2
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, format(m[i, j], fmt), ha="center", va="center", fontsize=7,
                    color="white" if m[i, j] > mid else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(str(path), dpi=100)
    return str(path)
