"""``simex``: -min over an entry's SimEx autoencoders of the query's score through them, in batched
passes (engine/simex.py scores, engine/autoencoder.py trains and runs the autoencoders).

An entry whose autoencoder columns the query does not all match (a renamed column that matched no
query column) is still scored, per entry: its missing columns are filled with the entry's own mean
(the autoencoders' training mean), and its delta is divided by the share of its columns the query
matched, so a partial match never beats a full one by the filled columns alone; the evidence names
the filled columns."""
from __future__ import annotations

import numpy as np

from .. import errors as E
from ..storage import u64
from ..storage.schema import ae_key
from .base import NO_SHORTLIST, ROWS, Method


class SimEx(Method):
    name = "simex"
    needs = frozenset({ROWS})
    shortlist = NO_SHORTLIST   # autoencoders: nothing stored summarizes them

    def score(self, ctx, query, cands):
        from .. import simex

        cfg = ctx.cfg
        frame = query.frame
        if frame is None:
            raise E.InvalidArgumentError("method='simex' needs the target's rows: pass the data itself, not a sketch")
        groups: dict[tuple, list] = {}
        skipped = []
        for rec, al in cands:
            stored = ctx.txn.get("weights", ae_key(u64(rec["id"])))
            if stored is None:
                skipped.append(rec["name"])
                continue
            records = [simex.AERecord.from_record(r) for r in stored["simex"]]
            t_of = {rec["features"][sf]: query.names[tj] for tj, sf, _ in al.pairs}
            feats = records[0].features or []
            cols = tuple(t_of.get(f) for f in feats)
            if not feats or all(c is None for c in cols):
                skipped.append(rec["name"])
                continue
            # a partial match is scored on its own (its filled values are the entry's), full matches share passes
            key = cols if None not in cols else (rec["name"],) + cols
            groups.setdefault(key, []).append((rec, al, records))
        if not groups:
            raise E.InvalidArgumentError(
                "no candidate entry has an autoencoder over columns the query has: register entries with "
                "hub.add(..., autoencoder=True)" + (f" (without one: {skipped[:5]})" if skipped else ""))
        score = cfg.simex_score
        results = []
        for key, members in groups.items():
            cols = key if None not in key else key[1:]
            records0 = members[0][2]
            X, filled = _target_matrix(simex, frame, cols, records0)
            share = 1.0 - len(filled) / len(cols)
            flat = [r for _, _, records in members for r in records]
            deltas = simex.delta(X, flat, loss=cfg.simex_loss, normalize=cfg.simex_normalize, device=ctx.device,
                                 relative=cfg.simex_relative, calibrated=score == "calibrated",
                                 latent=score == "latent", regions=score == "regions")
            reg = simex.regions_used(flat, cfg.simex_loss) if score == "regions" else None
            lat = simex.latent_used(flat, cfg.simex_loss) & (~reg if reg is not None else True) \
                if score in ("latent", "regions") else None
            cal = simex.calibrated_used(flat, cfg.simex_loss) & (~lat if lat is not None else True) \
                & (~reg if reg is not None else True) if score in ("calibrated", "latent", "regions") else None
            rel = simex.relative_used(flat, cfg.simex_loss) if cfg.simex_relative or cal is not None \
                else np.zeros(len(flat), bool)
            i = 0
            for rec, al, records in members:
                sl = slice(i, i + len(records))
                i += len(records)
                d, r = deltas[sl], rel[sl]
                ev = {"delta": float(d.min()), "loss": cfg.simex_loss, "normalized": cfg.simex_normalize,
                      "relative_to_own_error": bool(r.all()), "autoencoders": len(records)}
                if reg is not None:
                    ev.update(simex.regions_evidence(reg[sl], lat[sl], cal[sl]))
                elif lat is not None:
                    ev.update(simex.latent_evidence(lat[sl], cal[sl], r))
                elif cal is not None:
                    ev.update(simex.calibrated_evidence(cal[sl], r))
                elif cfg.simex_relative and not r.all():
                    ev["fallback"] = ("an autoencoder of this entry has no stored own error (added before it was "
                                      "stored, or loss='ssim'): divided by its mean norm instead")
                if records[0].label is not None:
                    ev["closest_class"] = records[int(np.argmin(d))].label
                entry = simex.entry_score(d)
                if filled:
                    ev.update(filled_columns=filled[:20], entry_columns_matched=round(share, 4),
                              unfilled_score=entry)
                    ev["partial"] = (f"the query matched {len(cols) - len(filled)} of the entry's {len(cols)} "
                                     "autoencoder columns: the others were filled with the entry's mean and the "
                                     "delta divided by the matched share")
                    entry = entry / share
                results.append(ctx.match(rec, al, query, entry, self.name, ev))
        return results


def _target_matrix(simex, frame, cols: tuple, records: list) -> tuple[np.ndarray, list]:
    """The query's rows over an entry's autoencoder columns ``cols`` (query names; None where the
    query matched none) and the entry columns that were filled with the entry's training mean
    (sample-weighted over its autoencoders, from the stored input moments, else the tabular shift)."""
    missing = [j for j, c in enumerate(cols) if c is None]
    if not missing:
        return simex.numeric_matrix(frame, columns=list(cols)), []
    have = [j for j, c in enumerate(cols) if c is not None]
    part = simex.numeric_matrix(frame, columns=[cols[j] for j in have])
    means = np.stack([r.moments[0].astype(np.float64) * r.scale + r.shift if r.moments is not None
                      else r.shift.astype(np.float64) for r in records])
    weight = np.array([max(r.n_samples, 1) for r in records], dtype=np.float64)
    mean = weight @ means / weight.sum()                                       # (d,) raw units
    X = np.empty((part.shape[0], len(cols)), dtype=np.float32)
    X[:, have] = part
    X[:, missing] = mean[missing].astype(np.float32)
    names = records[0].features
    return X, [str(names[j]) for j in missing]


SIMEX = SimEx()
