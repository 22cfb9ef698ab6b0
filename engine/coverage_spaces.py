"""Coverage over better spaces: sample embeddings and SimEx latents (beyond the papers).

Coverage (coverage.py) codes rows with SimHash over a data-independent row transform. Where the
hub holds a better representation of an entry's rows, the same counts and the same score apply
in that space instead (``search(..., method="coverage", coverage_space=...)``):

* ``"embedding"`` -- the entry's sample embeddings (``hub.add(..., embedding=(n, d))``) as unit
  vectors (as the embeddings store keeps them), centre 0, the hyperplane column of dimension
  ``j`` keyed by (hub seed, ``EMBEDDING_TAG << 32 | j``). Every entry shares that one space, so a
  query's sample embeddings (``search(..., embedding=(n, d))``, the array that also drives the
  FAISS shortlist) are coded once, and counts of two parts of one dataset merge by addition.
* ``"latent"`` -- per SimEx autoencoder of the entry (``hub.add(..., autoencoder=True)``), the
  latent vectors of the rows it was trained on (a per-class autoencoder: its class's rows):
  MLP: the pre-activation of the narrowest hidden layer (the decoder sees its ReLU; the
  pre-activation keeps the sign the ReLU clips); conv: the second pooled feature map, flattened.
  Each autoencoder is its own space, so its latents are PCA-whitened with the mean and covariance
  of its training latents (top ``m = min(k, WHITEN_DIMS)`` directions, unit variance, a small
  ridge), and a constant coordinate ``sqrt(m)`` (the typical norm of a whitened latent) is
  appended: the code bits are ``sign(a . w + b sqrt(m))``, hyperplanes with random offsets, keyed
  by (hub seed, ``LATENT_TAG << 32 | j``), the offset column as ``j = m``. Whitening makes every
  autoencoder's training rows spread alike over the codes, so scores of different entries
  compare (otherwise a source whose latents collapse onto few directions fills few codes and
  covers everything); the offsets make codes see how far out a latent lies, not only its
  direction (otherwise a row far out along a direction the training rows occupy shares their
  code, and a whitened class -- isotropic -- has no direction to tell apart). Chosen on digits
  seeds 0-3 and checked on held-out seeds 4-7 of bench/quality.py's workloads against centring
  alone: top-1 error .67 -> .42 (digits_skew) and .90 -> .70 (digit_domains), mean Pearson r
  .08 -> .43 and .79 -> .92; whitening without offsets ranked a planted per-class case last.
  A query runs the target's rows through every candidate's encoders in batched passes (weights
  of one architecture stacked, as ``simex.delta`` does) and codes them in each one's space.

Score, per table ``t``, of target rows ``x_i`` (``n_e,t(b)``: rows of autoencoder ``e`` in code ``b``):

    embedding:  sum_b p_target(b) * min(1, n_t(b) / tau)                 (coverage.score, as rows)
    latent:     mean_i max_e min(1, n_e,t(code_e,t(x_i)) / tau)

averaged over tables. The latent score is the *union* over the entry's autoencoders: a target
row counts as seen when some autoencoder of the entry has seen ``tau`` of its own rows in the
row's code. With one autoencoder it is exactly the embedding / rows formula. We take the union,
not the max or a mass-weighted mean of per-autoencoder scores, because per-class autoencoders
each see one class: a target that spans several classes is covered where any of them is (the
max would credit only its largest class, the weighted mean would reward sources whose class mix
equals the target's rather than those that hold its classes) -- the label-aware oracle of
``fitsketch.workloads.label_oracle`` has the same form.

Records (database ``extra``, in the entry's record beside the row sketch, written in the add
transaction; format :data:`SPACE_FORMAT`, plain arrays, never pickled):

* ``"coverage_embedding"``: ``{"v", "space": "embedding", "keys", "center", "bits", "tables",
  "table", "code", "count"}`` (the coverage.build layout);
* ``"coverage_latent"``: ``{"v", "space": "latent", "aes": [per autoencoder, in the fleet's order:
  the coverage.build record of its whitened training latents with the offset coordinate (m + 1
  keys, centre 0) plus "mean" (k,) float64, "whiten" (k, m) float32 and "n" (rows it counts)]}``.

Entries added before these records existed, or without embeddings / autoencoders, cannot be
scored in that space: the search falls back to adaptivity (``coverage_fallback``), as the rows
space does, and says why in the plan and each match's evidence.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from . import coverage as _cov
from . import errors as E
from .autoencoder import _bottleneck, _encode_fleet
from .exact import normalize
from .kernels._device import resolve_device
from .kernels.rowcodes import code_counts, coverage_score, hyperplanes, row_codes, source_counts

SPACE_FORMAT = 1
EMBEDDING_TAG = 0xE3B
LATENT_TAG = 0x1A7
_CHUNK_FLOATS = 1 << 24   # largest (E, rows, width) fp32 activation per chunk of target rows
WHITEN_DIMS = 32          # latents are coded in at most this many whitened principal directions
WHITEN_RIDGE = 1e-3       # ridge added to the latent covariance, x its mean variance
__all__ = ["SPACE_FORMAT", "embedding_coverage", "embedding_record", "encode_latent", "latent_codes",
           "latent_coverage", "latent_record", "latent_reference", "space_keys"]


def space_keys(space: str, d: int) -> np.ndarray:
    """Hyperplane keys ``(d,)`` int64 of a ``d``-dimensional embedding or latent space."""
    tag = {"embedding": EMBEDDING_TAG, "latent": LATENT_TAG}[space]
    return (np.int64(tag) << np.int64(32)) + np.arange(d, dtype=np.int64)


def _check_record(rec, space: str, what: str) -> None:
    if not isinstance(rec, dict) or rec.get("space") != space:
        raise E.CorruptHubError(f"{what}: the {space} coverage record is not a map of space {space!r}: "
                                "the hub is damaged")
    if rec.get("v") != SPACE_FORMAT:
        raise E.SchemaError(f"{what}: the {space} coverage record has format {rec.get('v')!r}; this fitsketch "
                            f"reads up to {SPACE_FORMAT}: upgrade fitsketch")


# ----------------------------------------------------------------------------- embeddings
def embedding_record(embedding, *, seed: int, bits: int, tables: int, device: str = "auto") -> dict:
    """The embedding-space coverage record of sample embeddings ``(n, d)`` (rows unit-normalized)."""
    x, _ = normalize(embedding)                                                        # (n, d) float32
    d = x.shape[1]
    rec = _cov.build(x.astype(np.float64), space_keys("embedding", d), seed=seed, bits=bits, tables=tables,
                     center=np.zeros(d), device=device)
    return {**rec, "v": SPACE_FORMAT, "space": "embedding"}


def embedding_coverage(embedding, recs: list, *, seed: int, tau: float, device: str = "auto") -> list[np.ndarray]:
    """Per-table coverage ``(tables,)`` of the query's sample embeddings ``(n, d)`` by each record.

    The space is shared, so the query is coded once per (dimension, bits, tables)."""
    x, _ = normalize(embedding)
    counts: dict[tuple, dict] = {}
    out = []
    for rec in recs:
        _check_record(rec, "embedding", "embedding coverage")
        d, bits, tables = len(rec["keys"]), int(rec["bits"]), int(rec["tables"])
        if x.shape[1] != d:
            raise E.DimensionError(f"embedding has dimension {x.shape[1]} but the entries were embedded in "
                                   f"dimension {d}: embed the query with the same model")
        key = (d, bits, tables)
        if key not in counts:
            codes = _cov.encode(x.astype(np.float64), np.asarray(rec["keys"]), np.asarray(rec["center"]),
                                seed=seed, bits=bits, tables=tables, device=device)  # (tables, n)
            counts[key] = code_counts(codes)
        out.append(coverage_score(counts[key], rec, tables, tau))
    return out


# ----------------------------------------------------------------------------- autoencoder latents
def latent_reference(X, record) -> np.ndarray:
    """The definition of the latent: one autoencoder, one sample at a time, float64 -> (n, k)."""
    from .simex import AERecord

    r = record if isinstance(record, AERecord) else AERecord.from_record(record)
    X = np.asarray(X, dtype=np.float64)
    w = {k: v.astype(np.float64) for k, v in r.weights.items()}
    out = []
    for x in X:
        h = (x - r.shift.astype(np.float64)) / r.scale.astype(np.float64)  # (d,)
        if r.kind == "mlp":
            b = _bottleneck(w)
            for l in range(b + 1):
                h = h @ w[f"W{l}"] + w[f"b{l}"]
                if l < b:
                    h = np.maximum(h, 0.0)
        else:
            t = torch.from_numpy(h).reshape(1, *r.image_shape)
            for name in ("enc0", "enc1"):
                t = F.max_pool2d(torch.relu(F.conv2d(t, torch.from_numpy(w[f"{name}.w"]),
                                                     torch.from_numpy(w[f"{name}.b"]), padding=1)), 2)
            h = t.reshape(-1).numpy()
        out.append(np.asarray(h, dtype=np.float64))
    k = out[0].shape[0] if out else 0
    return np.stack(out) if out else np.zeros((0, k))


def _groups(recs: list) -> list[tuple[list[int], dict]]:
    """Indices of same-architecture records and their stacked weights / transforms (torch, CPU)."""
    by_arch: dict[tuple, list[int]] = {}
    for i, r in enumerate(recs):
        by_arch.setdefault(r.arch_key(), []).append(i)
    out = []
    for idx in by_arch.values():
        rs = [recs[i] for i in idx]
        r0, d = rs[0], rs[0].d
        w = {k: torch.from_numpy(np.stack([r.weights[k] for r in rs])) for k in r0.weights}  # (E, ...)
        widest = max([d] + [v.shape[-1] for k, v in w.items() if k.startswith("W")]
                     + ([r0.config["channels"][0] * d // r0.image_shape[0]] if r0.kind == "conv" else []))
        out.append((idx, {"w": w, "shift": torch.from_numpy(np.stack([r.shift for r in rs])).unsqueeze(1),
                          "scale": torch.from_numpy(np.stack([r.scale for r in rs])).unsqueeze(1),
                          "kind": r0.kind, "image_shape": r0.image_shape, "widest": widest}))
    return out


def _latent_chunks(X: np.ndarray, recs: list, dev: str):
    """Yield ``(lo, hi, {record index: latents (hi - lo, k) float32 numpy})`` over row chunks of X."""
    groups = _groups(recs)
    n = X.shape[0]
    rows = max(1, min(max(n, 1), min(_CHUNK_FLOATS // (len(idx) * g["widest"]) for idx, g in groups)))
    on_dev = [(idx, {**g, "w": {k: v.to(dev) for k, v in g["w"].items()}, "shift": g["shift"].to(dev),
                     "scale": g["scale"].to(dev)}) for idx, g in groups]
    xt = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)).to(dev)  # (n, d)
    with torch.no_grad():
        for lo in range(0, n, rows):
            hi = min(n, lo + rows)
            out = {}
            for idx, g in on_dev:
                xs = (xt[lo:hi].unsqueeze(0) - g["shift"]) / g["scale"]  # (E, r, d)
                z = _encode_fleet(g["w"], xs, g["kind"], g["image_shape"]).cpu().numpy()  # (E, r, k)
                out.update({i: z[j] for j, i in enumerate(idx)})
            yield lo, hi, out


def encode_latent(X, records, *, device: str = "auto") -> list[np.ndarray]:
    """Latents ``(n, k_e)`` float32 of rows ``X`` (n, d) through each autoencoder, batched per architecture."""
    from .simex import _as_records, _check_target

    recs = _as_records(records)
    X = _check_target(X, recs)
    dev = resolve_device(device)
    parts: list[list] = [[] for _ in recs]
    for _, _, z in _latent_chunks(X, recs, dev):
        for i, zi in z.items():
            parts[i].append(zi)
    return [np.concatenate(p) if p else np.zeros((0, 0), np.float32) for p in parts]


def _whitening(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(k,)`` float64 and PCA-whitening map ``(k, m)`` float32 of latents ``z`` (n, k): the top
    ``m = min(k, WHITEN_DIMS)`` principal directions scaled to unit variance, with a ridge of
    ``WHITEN_RIDGE`` x the mean variance (so few or repeated rows stay finite)."""
    z = np.asarray(z, dtype=np.float64)
    k = z.shape[1]
    mean = z.mean(axis=0) if z.shape[0] else np.zeros(k)
    zc = z - mean
    cov = zc.T @ zc / max(z.shape[0], 1)                                       # (k, k)
    ridge = max(WHITEN_RIDGE * float(np.trace(cov)) / max(k, 1), 1e-12)
    ev, U = np.linalg.eigh(cov + ridge * np.eye(k))                            # ascending
    m = min(k, WHITEN_DIMS)
    return mean, (U[:, ::-1][:, :m] / np.sqrt(ev[::-1][:m])[None, :]).astype(np.float32)


def _whiten(z, ae: dict) -> np.ndarray:
    """Latents ``z`` (n, k) in one autoencoder's whitened coordinates plus the constant offset
    coordinate ``sqrt(m)``: (n, m + 1) float64."""
    w = np.asarray(ae["whiten"]).astype(np.float64)                           # (k, m)
    zw = (np.asarray(z).astype(np.float64) - np.asarray(ae["mean"])[None, :]) @ w
    return np.concatenate([zw, np.full((zw.shape[0], 1), np.sqrt(w.shape[1]))], axis=1)


def latent_record(X, labels, records, *, seed: int, bits: int, tables: int, device: str = "auto") -> dict:
    """The latent coverage record of an entry: per autoencoder (``simex.train_fleet``'s order), the
    whitening of its training rows' latents and the counts of their codes (a per-class autoencoder:
    its class's rows)."""
    from .simex import _as_records, _check_matrix, _split_classes

    recs = _as_records(records)
    X = _check_matrix(X, "X")
    if labels is None:
        rows = [np.arange(X.shape[0])] * len(recs)
    else:
        classes, rows = _split_classes(X, labels)
        if classes != [r.label for r in recs]:
            raise E.InvalidArgumentError(f"the fleet's classes {[r.label for r in recs]} are not the labels' "
                                         f"classes {classes}")
    aes = []
    for r, idx in zip(recs, rows):
        (z,) = encode_latent(X[idx], [r], device=device)                       # (n_e, k)
        mean, whiten = _whitening(z)
        ae = {"mean": mean, "whiten": whiten}
        zw = _whiten(z, ae)                                                    # (n_e, m + 1)
        rec = _cov.build(zw, space_keys("latent", zw.shape[1]), seed=seed, bits=bits, tables=tables,
                         center=np.zeros(zw.shape[1]), device=device)
        aes.append({**rec, **ae, "n": len(idx)})
    return {"v": SPACE_FORMAT, "space": "latent", "aes": aes}


def latent_codes(z, ae: dict, *, seed: int, planes=None, device: str = "auto") -> np.ndarray:
    """Codes ``(tables, n)`` of latents ``z`` (n, k) in one autoencoder's space: whitened with its
    stored map, then coded as coverage.encode codes rows (``planes``: its hyperplanes, when known)."""
    if planes is None:
        planes = hyperplanes(seed, int(ae["tables"]), int(ae["bits"]), np.asarray(ae["keys"]))
    zw = np.nan_to_num(_whiten(z, ae) - np.asarray(ae["center"])[None, :], nan=0.0)
    return row_codes(zw.astype(np.float32), planes, device=device)


def latent_coverage(X, members: list, *, seed: int, tau: float, device: str = "auto") -> list[dict]:
    """Coverage of target rows ``X`` (n, d) in each entry's latent space(s).

    ``members``: per entry ``(records, latent_record)`` (its AERecords and its stored
    ``coverage_latent``). Returns per entry ``{"per_table": (tables,), "per_ae": (E,)}``: the union
    score per table and each autoencoder's own coverage (mean over tables)."""
    from .simex import _check_target

    flat, owner = [], []
    for m, (records, lat) in enumerate(members):
        _check_record(lat, "latent", "latent coverage")
        if len(lat["aes"]) != len(records):
            raise E.CorruptHubError(f"latent coverage holds {len(lat['aes'])} autoencoders, the entry "
                                    f"{len(records)}: the hub is damaged")
        flat.extend(zip(records, lat["aes"]))
        owner.extend([m] * len(records))
    if not flat:
        return []
    recs = [r for r, _ in flat]
    X = _check_target(X, recs)
    n = X.shape[0]
    dev = resolve_device(device)
    bits, tables = int(flat[0][1]["bits"]), int(flat[0][1]["tables"])
    if any(int(a["bits"]) != bits or int(a["tables"]) != tables for _, a in flat):
        raise E.CorruptHubError("latent coverage records disagree on bits / tables: the hub is damaged")
    planes: dict[int, np.ndarray] = {}
    total = np.zeros((len(members), tables))                                   # sum over rows of the union
    per_ae = np.zeros(len(flat))
    t_idx = np.arange(tables, dtype=np.int64)[:, None]
    for lo, hi, z in _latent_chunks(X, recs, dev):
        best = np.zeros((len(members), tables, hi - lo))                      # union so far, per entry
        for i, (_, a) in enumerate(flat):
            k, m = z[i].shape[1], len(a["keys"])
            if np.shape(a["whiten"]) != (k, m - 1) or len(a["mean"]) != k:
                raise E.CorruptHubError(f"latent coverage whitens {np.shape(a['whiten'])} latents, the encoder "
                                        f"gives {k} dimensions: the hub is damaged")
            if m not in planes:
                planes[m] = hyperplanes(seed, tables, bits, space_keys("latent", m))
            codes = latent_codes(z[i], a, seed=seed, planes=planes[m], device=dev)  # (tables, r)
            cover = np.minimum(1.0, source_counts(a, np.broadcast_to(t_idx, codes.shape), codes) / tau)
            per_ae[i] += cover.sum()
            np.maximum(best[owner[i]], cover, out=best[owner[i]])
        total += best.sum(axis=2)
    denom = max(n, 1)
    out = []
    for m in range(len(members)):
        sel = [i for i, o in enumerate(owner) if o == m]
        out.append({"per_table": total[m] / denom, "per_ae": per_ae[sel] / (denom * tables)})
    return out
