"""``coverage``: the share of the query's rows an entry's data covers, coded in one of three spaces
(``coverage_space``): the rows (engine/coverage.py), the sample embeddings or the SimEx
autoencoders' latents (engine/coverage_spaces.py). An entry coverage cannot score falls back to
adaptivity (``coverage_fallback``), with its own reason in the evidence."""
from __future__ import annotations

import logging

import numpy as np

from .. import errors as E
from ..storage import u64
from ..storage.schema import ae_key
from .base import EMBEDDINGS, HISTOGRAMS, ROWS, Method, ShortlistRule

log = logging.getLogger("fitsketch.hub")

FALLBACK = "adaptivity"   # what scores an entry coverage cannot
_NONE = np.zeros(0, dtype=np.int64)


class Coverage(Method):
    name = "coverage"
    needs = frozenset({ROWS, EMBEDDINGS, HISTOGRAMS})   # histograms: the adaptivity fallback
    # coverage codes the query's rows per entry, which no stored summary reproduces; exact-js of the
    # dataset-level distributions ranks its entries: recall@10 0.975 (best found 8/8) on the digits
    # label-skew zoo of 1,300 entries where this was chosen, 1.00 (6/6) on the held-out MNIST-5k
    # zoo of 1,100 (python -m bench.bench_shortlist --similar digits|mnist); the lower is stated
    # measured_recall: before the margin; the margin is the largest gap on the digits zoo's tuning
    # queries (0.0023), doubled
    shortlist = ShortlistRule("exact-js", exact=False, measured_recall=0.97, margin=0.005)

    def score(self, ctx, query, cands):
        """Coverage of the query's rows by each candidate; adaptivity (with the entry's own reason in
        its evidence) for each entry coverage cannot score."""
        from .. import coverage_batch as _batch

        cfg, config = ctx.cfg, ctx.config
        if cfg.coverage_space != "rows":  # sample embeddings or autoencoder latents
            results, reason = _score_space(ctx, query, cands)
            if reason is None:
                return results
            if not cfg.coverage_fallback:
                raise E.FeatureMismatchError(
                    f"method='coverage' with coverage_space={cfg.coverage_space!r} cannot score every candidate: "
                    f"{reason}; pass coverage_fallback=True to fall back to adaptivity, filter entries with "
                    "where=, or use coverage_space='rows'")
            log.info("coverage (%s) falls back to adaptivity: %s", cfg.coverage_space, reason)
            out = ctx.score(FALLBACK, query, cands)
            for m in out:
                m.evidence["fallback"] = f"coverage_space={cfg.coverage_space!r}: {reason}"
            return out
        plans, fallback = [], []   # fallback: (candidate, that entry's own reason)
        dims_of = None
        no_rows = None if query.rows is not None else "the query is a sketch without its rows (pass the data)"
        for rec, al in cands:
            if no_rows is not None:
                fallback.append(((rec, al), no_rows))
                continue
            cov = (ctx.txn.get("extra", u64(rec["id"])) or {}).get("coverage")
            t_of = {sf: tj for tj, sf, _ in al.pairs}
            missing = [rec["features"][f] for f in range(len(rec["features"])) if f not in t_of]
            kinds_differ = [rec["features"][f] for f, tj in t_of.items()
                            if (rec["kinds"][f] == "numeric") != (query.kinds[tj] == "numeric")
                            or (rec["kinds"][f] != "numeric" and rec["kinds"][f] != query.kinds[tj])]
            if cov is None or missing or kinds_differ:
                fallback.append(((rec, al), f"entry {rec['name']!r} " + (
                    f"has columns {missing} the target lacks" if missing else
                    f"has columns {kinds_differ} of another kind in the target" if kinds_differ else
                    "has no coverage sketch")))
                continue
            if dims_of is None:   # the query's row dimensions of each of its columns, found once
                owner = np.asarray(query.row_owner)
                dims_of = {tj: np.flatnonzero(owner == tj) for tj in np.unique(owner)}
            cols = np.concatenate([dims_of.get(t_of[f], _NONE) for f in range(len(rec["features"]))])
            plans.append((rec, al, cov, cols))
        if fallback and not cfg.coverage_fallback:
            raise E.FeatureMismatchError(
                f"method='coverage' needs the query's rows over every column of each candidate entry: "
                f"{fallback[0][1]}; pass coverage_fallback=True to fall back to adaptivity for such entries, "
                "or filter entries with where=")
        out = []
        if fallback:   # per entry: only the entries coverage cannot score are scored by adaptivity
            log.info("coverage falls back to adaptivity for %d of %d entries: %s", len(fallback), len(cands),
                     fallback[0][1])
            out = ctx.score(FALLBACK, query, [c for c, _ in fallback])
            for m, ((rec, al), why) in zip(out, fallback):
                m.evidence["fallback"] = f"scored by adaptivity: coverage needs the entry's whole feature set; {why}"
                if plans:   # ranked beside coverage scores: an entry the query covers in part counts in part
                    share = len(al.pairs) / max(len(rec["features"]), 1)
                    m.evidence.update(fallback_score=m.score, entry_columns_matched=share)
                    m.score *= share
        results = out
        # every candidate coded over the same query dimensions is scored in one batch
        # (engine/coverage_batch.py: the same per-table scores as coverage.score entry by entry)
        by_dims: dict = {}
        for i, (_, _, _, cols) in enumerate(plans):
            by_dims.setdefault(cols.tobytes(), []).append(i)
        scored = [None] * len(plans)
        for idx in by_dims.values():
            per = _batch.score_many(query.rows[:, plans[idx[0]][3]], [plans[i][2] for i in idx], seed=config.seed,
                                    tau=cfg.coverage_tau, device=ctx.device, mode=cfg.coverage_score,
                                    resolution=cfg.coverage_resolution, rho=cfg.coverage_rho)
            for i, pt in zip(idx, per):
                scored[i] = pt
        for (rec, al, cov, cols), per_table in zip(plans, scored):
            how = ({"tau": cfg.coverage_tau} if cfg.coverage_score == "count" else
                   {"resolution_bits": min(cfg.coverage_resolution, int(cov["bits"])), "rho": cfg.coverage_rho})
            results.append(ctx.match(rec, al, query, float(per_table.mean()), self.name, {
                "covered_share": float(per_table.mean()), "per_table": [round(float(x), 4) for x in per_table],
                "coverage_score": cfg.coverage_score, **how, "target_rows": query.n_rows}))
        return results


COVERAGE = Coverage()


def _score_space(ctx, query, cands):
    """``(matches, None)`` scored in ``cfg.coverage_space``, or ``([], reason)`` when some candidate
    cannot be (engine/coverage_spaces.py)."""
    from .. import coverage_spaces as _spaces
    from ..embeddings import check_embedding

    txn, cfg = ctx.txn, ctx.cfg
    space = cfg.coverage_space
    embedding = query.embedding
    kw = dict(seed=ctx.config.seed, tau=cfg.coverage_tau, device=ctx.device)
    stored = [(rec, al, (txn.get("extra", u64(rec["id"])) or {}).get(f"coverage_{space}")) for rec, al in cands]
    results = []
    if space == "embedding":
        if embedding is None or np.ndim(embedding) != 2:
            raise E.InvalidArgumentError(
                f"coverage_space='embedding' codes the query's sample embeddings, got embedding="
                f"{'None' if embedding is None else f'of shape {np.shape(embedding)}'}: pass embedding=(n, d), "
                "one row per query sample, embedded like the entries' (it also drives the FAISS shortlist)")
        q = check_embedding(embedding)
        lacking = [rec["name"] for rec, _, r in stored if r is None]
        if lacking:
            return [], f"entry {lacking[0]!r} has no embedding coverage sketch (add it with embedding=)"
        per = _spaces.embedding_coverage(q, [r for _, _, r in stored], **kw)
        for (rec, al, _), pt in zip(stored, per):
            results.append(ctx.match(rec, al, query, float(pt.mean()), "coverage", {
                "covered_share": float(pt.mean()), "per_table": [round(float(x), 4) for x in pt],
                "tau": cfg.coverage_tau, "target_rows": int(q.shape[0]), "space": space}))
        return results, None
    from .. import simex

    frame = query.frame
    if frame is None:
        return [], "the query is a sketch without its rows (pass the data)"
    groups: dict[tuple, list] = {}
    for rec, al, lat in stored:
        weights = txn.get("weights", ae_key(u64(rec["id"])))
        if weights is None:
            return [], f"entry {rec['name']!r} has no autoencoder (add it with autoencoder=True)"
        if lat is None:
            return [], f"entry {rec['name']!r} has no latent coverage sketch (added before coverage spaces: add it again)"
        records = [simex.AERecord.from_record(r) for r in weights["simex"]]
        t_of = {rec["features"][sf]: query.names[tj] for tj, sf, _ in al.pairs}
        cols = tuple(t_of.get(f) for f in (records[0].features or []))
        if not cols or None in cols:
            return [], f"entry {rec['name']!r} has an autoencoder over columns the query lacks"
        groups.setdefault(cols, []).append((rec, al, records, lat))
    for cols, members in groups.items():
        X = simex.numeric_matrix(frame, columns=list(cols))
        scored = _spaces.latent_coverage(X, [(records, lat) for _, _, records, lat in members], **kw)
        for (rec, al, records, _), sc in zip(members, scored):
            pt = sc["per_table"]
            ev = {"covered_share": float(pt.mean()), "per_table": [round(float(x), 4) for x in pt],
                  "tau": cfg.coverage_tau, "target_rows": int(X.shape[0]), "space": space,
                  "autoencoders": len(records)}
            if records[0].label is not None:
                ev["closest_class"] = records[int(np.argmax(sc["per_ae"]))].label
            results.append(ctx.match(rec, al, query, float(pt.mean()), "coverage", ev))
    return results, None
