"""``simex``: -min over an entry's SimEx autoencoders of the query's reconstruction loss, in batched
passes (engine/simex.py trains and runs the autoencoders)."""
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
            cols = tuple(t_of.get(f) for f in (records[0].features or []))
            if None in cols:
                skipped.append(rec["name"])
                continue
            groups.setdefault(cols, []).append((rec, al, records))
        if not groups:
            raise E.InvalidArgumentError(
                "no candidate entry has an autoencoder over columns the query has: register entries with "
                "hub.add(..., autoencoder=True)" + (f" (without one: {skipped[:5]})" if skipped else ""))
        results = []
        for cols, members in groups.items():
            X = simex.numeric_matrix(frame, columns=list(cols))
            flat = [r for _, _, records in members for r in records]
            deltas = simex.delta(X, flat, loss=cfg.simex_loss, normalize=cfg.simex_normalize, device=ctx.device,
                                 relative=cfg.simex_relative, calibrated=cfg.simex_score == "calibrated")
            cal = simex.calibrated_used(flat, cfg.simex_loss) if cfg.simex_score == "calibrated" else None
            rel = simex.relative_used(flat, cfg.simex_loss) if cfg.simex_relative or cal is not None \
                else np.zeros(len(flat), bool)
            i = 0
            for rec, al, records in members:
                d = deltas[i:i + len(records)]
                r = rel[i:i + len(records)]
                i += len(records)
                ev = {"delta": float(d.min()), "loss": cfg.simex_loss, "normalized": cfg.simex_normalize,
                      "relative_to_own_error": bool(r.all()), "autoencoders": len(records)}
                if cal is not None:
                    ev.update(simex.calibrated_evidence(cal[i - len(records):i], r))
                elif cfg.simex_relative and not r.all():
                    ev["fallback"] = ("an autoencoder of this entry has no stored own error (added before it was "
                                      "stored, or loss='ssim'): divided by its mean norm instead")
                if records[0].label is not None:
                    ev["closest_class"] = records[int(np.argmin(d))].label
                results.append(ctx.match(rec, al, query, simex.entry_score(d), self.name, ev))
        return results


SIMEX = SimEx()
