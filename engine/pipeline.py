"""The search pipeline: what ``Hub.search`` / ``explain`` / ``class_pool`` run, stage by stage, into
a ``Plan``:

    query (sketch it: a ``Query``) -> [embedding stage (FAISS) | shortlist (screen or profiles)]
    -> candidates (MinHash overlap + metadata filter, engine/candidates.py)
    -> score (the method from the registry, engine/methods/; damaged entries skipped)
    -> rerank (sort, cut to k, matched features)

The method decides how it is screened and scored; the pipeline owns the order of the stages,
their plan entries, the snapshot they read and the fallbacks around a method (damaged records,
an empty candidate set). It never changes the query's sketch.
"""
from __future__ import annotations

import dataclasses

import logging

import numpy as np

from . import accuracy as _acc
from . import coarse as _coarse
from . import errors as E
from . import methods as _methods
from . import profiles as _profiles
from . import screen as _screen
from .candidates import candidates
from .config import QUERY_PARAMS, QueryConfig, SketchConfig
from .data import to_frame
from .jslsh import own_keys, query_partition_size
from .methods import Query, ScoreContext
from .methods import accuracy as _m_accuracy
from .plan import Plan, Stage
from .planner import SHORTLIST_MARGIN_CAP, choose_candidate_stage, shortlist_rule, use_shortlist
from .results import Match, finish_features
from .sketch import MAX_ROWS, Sketch, build_sketch
from .storage import u64
from .validate import (MAX_JSLSH_HASHES, MAX_JSLSH_K, MAX_JSLSH_L, MAX_K, _check_count, _check_metadata,
                       _check_query_columns, _width)

log = logging.getLogger("fitsketch.hub")


def query_config(config: SketchConfig, method, k, where, overrides) -> QueryConfig:
    """The query's parameters: the hub's per-query defaults with the query's ``overrides``, all checked."""
    _methods.get(method)   # UnknownMethodError naming the methods
    _check_count("k", k, MAX_K)
    if where is not None and not isinstance(where, dict):
        raise E.InvalidArgumentError(f"where must be a dict of metadata equalities, got {type(where).__name__}")
    if where:
        _check_metadata(where)     # plain values: equality with stored metadata is a bool
    aliases = {"loss": "simex_loss", "normalize": "simex_normalize"}
    overrides = {aliases.get(k, k): v for k, v in overrides.items()}
    bad = sorted(set(overrides) - set(QUERY_PARAMS))
    if bad:
        raise E.InvalidArgumentError(f"unknown search parameters {bad}: per-query parameters are {list(QUERY_PARAMS)}")
    cfg = config.query_defaults(**overrides)
    if cfg.jslsh_k > MAX_JSLSH_K or cfg.jslsh_l > MAX_JSLSH_L or cfg.jslsh_k * cfg.jslsh_l > MAX_JSLSH_HASHES:
        raise E.LimitExceededError(
            f"jslsh_k={cfg.jslsh_k}, jslsh_l={cfg.jslsh_l} are over the limits: jslsh_k <= {MAX_JSLSH_K}, "
            f"jslsh_l <= {MAX_JSLSH_L} and jslsh_k * jslsh_l <= {MAX_JSLSH_HASHES} (the hub's are "
            f"{config.jslsh_k} and {config.jslsh_l})")
    return cfg


def make_query(hub, data, feature_names, cfg, plan: Plan, **brings) -> Query:
    """Sketch ``data`` (or check a given ``Sketch``) into a ``Query``: the "sketch" stage."""
    _check_query_columns(_width(data))      # before anything is built from a wide input
    with plan.run(Stage("sketch", "quantize + MinHash + partition histograms of the query")) as st:
        if isinstance(data, Sketch):
            _check_query_columns(data.n_features)
            if tuple(data.config_key) != hub.config.sketch_key():
                raise E.InvalidArgumentError(
                    "the query sketch was built with other parameters than this hub's: build it with hub.config")
            # a sketch carries no rows, wherever it was built: coverage and simex fall back or refuse
            query = Query(data, **brings)
        else:
            frame = to_frame(data, feature_names)
            _check_query_columns(frame.shape[1])
            sk = build_sketch(frame, hub.config, device=hub.device, partition_size=query_partition_size(
                len(frame), hub.config.partition_size, cfg.query_min_partitions, cfg.query_partition_rows),
                skip_empty=True)
            query = Query(sk, frame=frame, rows=sk.rows, row_owner=sk.row_owner, **brings)
            if sk.left_out:
                st.detail += f"; left out query columns without values: {sk.left_out}"
        st.actual = query.n_partitions
    return query


def search(hub, data, *, k, method, where, feature_names, overrides, embedding=None, n_emb=100):
    """``(matches, plan)`` of one query (Hub.search / explain); with ``class_pool="return"`` in
    ``overrides``, ``(this hub's class pool, plan)`` (Hub.class_pool)."""
    overrides = dict(overrides)
    mixture = overrides.pop("mixture", None)   # method="accuracy": the query's class mixture, when known
    class_pool = overrides.pop("class_pool", None)   # method="accuracy" across shards (engine/sharded.py)
    if class_pool is not None and class_pool != "return":
        class_pool = _acc.check_pool(class_pool)
    cfg = query_config(hub.config, method, k, where, overrides)
    meth = _methods.get(method)
    if embedding is not None:
        n_emb = _check_count("embedding_candidates", n_emb, MAX_K)
    plan = Plan(method, k)
    query = make_query(hub, data, feature_names, cfg, plan, embedding=embedding, mixture=mixture,
                       class_pool=class_pool)
    allowed = None
    screened = {}
    if embedding is not None:
        q = np.asarray(embedding, dtype=np.float64)
        q = q.mean(axis=0) if q.ndim == 2 else q
        with plan.run(Stage("embedding", f"FAISS nearest dataset-level embeddings, top {n_emb}",
                            estimated=n_emb)) as st:
            near = hub.nearest(q, n_emb, level="entry")
            allowed = {u64(int(m.evidence["entry_id"])) for m in near}
            st.actual = len(allowed)
    # Hub.class_pool (a sharded hub's mixture) pools every labelled entry, as shortlist=0 pools them --
    # not the stage's survivors (every shard's scores then equal one hub's)
    if allowed is None and class_pool != "return":
        allowed = shortlist(hub, query, cfg, meth.screened_as(hub._has_labelled, query, cfg), plan, where, out=screened, k=k)
        if query.class_pool is None and "class_pool" in screened:   # accuracy: the pool of every labelled entry
            query = dataclasses.replace(query, class_pool=screened["class_pool"])
    with hub.store.read() as txn:
        n_stored = int(txn.get("meta", b"n_features") or 0)
        n_entries = txn.count("names")
        if n_entries == 0:
            return [], plan
        if allowed is not None:   # only the shortlisted entries' features are compared
            allowed = live_ids(txn, allowed, plan)
            n_stored = n_stored * len(allowed) // max(n_entries, 1)
        mode, reason, cost = choose_candidate_stage(n_stored, query.n_features, hub.config.lsh_l)
        cands = candidates(txn, query, cfg, hub.config, mode, reason, where, allowed, plan,
                           n_entries if allowed is None else len(allowed))
        if not cands:
            raise E.NoSharedFeaturesError(
                f"no entry shares features with the query (overlap > {cfg.overlap_threshold} with "
                f"feature similarity >= {cfg.feature_threshold} by {cfg.match}"
                + (f", metadata {where}" if where else "") + (", shortlist" if allowed else "")
                + "): lower feature_threshold / overlap_threshold, or check the columns")
        ctx = ScoreContext(txn, hub.config, cfg, hub.device)
        with plan.run(Stage("score", f"{method} over aligned features", estimated=len(cands))) as st:
            if class_pool == "return":   # Hub.class_pool: the pooled class counts, not matches
                return _m_accuracy.class_pool(ctx, query, cands), plan
            scored, damaged = score_healthy(ctx, query, cands, method)
            if screened.get("bound") is not None:   # the accuracy stage ran: its second round
                more, dmg, note = _bound_round(ctx, txn, query, cfg, hub, mode, reason, where, plan, method, scored,
                                               screened["bound"], k, allowed)
                scored += more
                damaged += dmg
                st.detail += note
                if method == "auto":
                    _labelled_short(plan, scored, k, screened.get("label_free_recall"))
            if damaged:
                st.detail += (f"; skipped {len(damaged)} damaged entr{'y' if len(damaged) == 1 else 'ies'} "
                              f"({'; '.join(damaged[:5])}): remove and re-add them")
            st.actual = len(scored)
            picked = sorted({m.evidence["auto"] for m in scored if "auto" in m.evidence})
            if picked:
                st.detail += "; auto: " + " | ".join(picked)
            fell = next((m.evidence["fallback"] for m in scored if "fallback" in m.evidence
                         and m.method != "accuracy"), None)   # accuracy's own fallback is not adaptivity
            if fell:
                st.detail += f"; fell back to adaptivity: {fell}"
    with plan.run(Stage("rerank", f"sort by score, cut to k={k}", estimated=min(k, len(scored)))) as st:
        out = rerank(scored, k)
        st.actual = len(out)
    return out, plan


def _ordinal(k: int) -> str:
    return f"{k}{'th' if 10 <= k % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(k % 10, 'th')}"


def _bound_round(ctx, txn, query, cfg, hub, mode, reason, where, plan, method, scored, bound, k, kept):
    """The accuracy stage's second round (engine/accuracy_bound.py): every labelled entry the first
    round did not keep whose recall bound under the scorer's mixture reaches the ``k``-th best
    predicted accuracy found is scored too, so the top ``k`` is ``shortlist=0``'s -- unless more
    than ``SHORTLIST_MARGIN_CAP x shortlist`` entries would be scored in all: then the best bounds
    up to it, and the plan says the recall is not held. Returns ``(matches, damaged, plan note)``."""
    from . import accuracy_bound as _ab

    extra, threshold = _ab.to_score(bound, scored, k, kept)
    room = max(SHORTLIST_MARGIN_CAP * cfg.shortlist - len(kept), 0)
    stage = next((s for s in plan.stages if s.name == "shortlist"), None)
    note = (f"; second round (exact stage): {len(extra)} more labelled entries' predicted-accuracy bounds reach the "
            + (f"{_ordinal(k)} best score found ({threshold:.4g})" if np.isfinite(threshold) else
               f"{_ordinal(k)} best score found (fewer than {k} scored: every labelled entry)"))
    if len(extra) > room:
        extra = extra[:room]
        note += f", scored the {room} best of them (capped at {SHORTLIST_MARGIN_CAP} x shortlist: recall not held)"
        if stage is not None:
            stage.recall = None
            stage.detail += "; capped in the second round: recall not held"
    elif stage is not None:
        stage.detail += (f"; second round scored {len(extra)} more (every entry whose bound reaches the {_ordinal(k)} "
                         "best score: the answer is shortlist=0's)")
    if stage is not None and stage.actual is not None:
        stage.actual += len(extra)      # what the stage let through, both rounds
    if not extra:
        return [], [], note
    live = live_ids(txn, set(extra), plan)
    cands = candidates(txn, query, cfg, hub.config, mode, reason, where, live, plan, len(live)) if live else []
    if not cands:
        return [], [], note
    more, damaged = score_healthy(ctx, query, cands, method)
    return more, damaged, note


def _labelled_short(plan, scored: list, k: int, label_free_recall) -> None:
    """``auto`` with fewer than ``k`` labelled matches: its answer also holds unlabelled entries,
    which the exact-js screen chose (its own recall), so the stage's recall is that screen's."""
    if sum(1 for m in scored if m.method == "accuracy") >= k:
        return
    stage = next((s for s in plan.stages if s.name == "shortlist"), None)
    if stage is not None and stage.recall == 1.0:
        stage.recall = label_free_recall
        stage.detail += (f"; fewer than {k} labelled entries: the unlabelled ones after them were screened by "
                         "the exact-js proxy")


def rerank(scored: list[Match], k: int) -> list[Match]:
    """The top ``k``: by group (auto: the labelled first), score, tie-break, overlap, name; the
    pipeline's working evidence removed and the matched features filled in."""
    scored.sort(key=lambda m: (m.evidence.get("_group", 0), -m.score, -m.evidence.get("_tiebreak", 0.0),
                               -m.overlap, m.name))
    out = scored[:k]
    for m in out:
        m.evidence.pop("_tiebreak", None)
        m.evidence.pop("_group", None)
        finish_features(m)
    return out


def shortlist(hub, target, cfg, method: str, plan: Plan, where=None, out: dict | None = None,
              k: int = 10) -> set | None:
    """Ids (u64 keys) of the entries the candidate stage keeps, or None when the planner scores
    every entry (planner.use_shortlist). ``cfg.shortlist_screen``: "exact" screens every entry
    with the method's own score (engine/screen.py, planner.shortlist_rule), "profile" keeps the
    ``cfg.shortlist`` nearest random-projection profiles (engine/profiles.py)."""
    n_entries = len(hub)
    use, why = use_shortlist(n_entries, cfg.shortlist, method, filtered=bool(where))
    if not use:
        return None
    seed = hub.config.seed
    used = sorted({int(f) for f in np.asarray(target.hist["feat"], dtype=np.int64)})
    t_keys = _profiles.name_keys([target.names[f] for f in used], seed)
    if cfg.shortlist_screen == "profile":
        with plan.run(Stage("shortlist", f"entry profiles nearest to the query's, top {cfg.shortlist} by "
                            f"inner product ({why}); recall not held on similar entries: "
                            "shortlist_screen='exact' holds it", estimated=cfg.shortlist)) as st:
            idx = hub._indexes.profiles(hub.store)
            if not idx.shares_names(t_keys):
                st.detail += "; skipped: no stored profile has a feature named like the query's, every entry is scored"
                st.actual = n_entries
                return None
            ids, _ = idx.top(_profiles.profile(target.hist, target.names, seed), cfg.shortlist)
            st.actual = len(ids)
        return {u64(int(i)) for i in ids}
    rule = shortlist_rule(method)
    with plan.run(Stage("shortlist", f"screen: {rule.screen} of "
                        f"{'the entries level 1 keeps' if cfg.shortlist_screen == 'two-level' else 'every entry'} "
                        f"from stored dataset-level histograms ({why})", estimated=cfg.shortlist)) as st:
        idx = hub._indexes.screen(hub.store)
        if not idx.shares_names(t_keys):
            st.detail += "; skipped: no stored entry has a feature named like the query's, every entry is scored"
            st.actual = n_entries
            return None
        own = None
        small = target.n_rows < hub.config.partition_size * cfg.query_min_partitions   # scored with more bands
        if rule.screen in ("js", "adaptivity") and not small and [float(cfg.jslsh_r), int(cfg.jslsh_k),
                                                                  int(cfg.jslsh_l)] == \
                [float(hub.config.jslsh_r), int(hub.config.jslsh_k), int(hub.config.jslsh_l)]:
            kw = dict(seed=seed, r=cfg.jslsh_r, k=cfg.jslsh_k, l=cfg.jslsh_l, device=hub.device)
            own = (own_keys(target.hist, target.n_features, target.n_partitions, per_dataset=True, **kw),
                   own_keys(target.hist, target.n_features, target.n_partitions, per_dataset=False, **kw)
                   if rule.screen == "adaptivity" else None)
        small_keys = None   # a small query's bands, compared with the entries' stored ones (profiles "jk_small")
        if rule.screen in ("js", "adaptivity") and small and \
                (cfg.jslsh_l, cfg.jslsh_r) == (hub.config.jslsh_l, hub.config.jslsh_r):
            sp = [float(cfg.small_query_jslsh_r), int(cfg.jslsh_k), int(cfg.small_query_jslsh_l)]
            small_keys = (sp, own_keys(target.hist, target.n_features, target.n_partitions,
                                       per_dataset=rule.screen == "js", seed=seed, r=sp[0], k=sp[1], l=sp[2],
                                       device=hub.device))
        if cfg.shortlist_screen == "two-level":   # the screen over the entries of best BC (engine/coarse.py)
            depth = _coarse.coarse_for(method, cfg.shortlist_coarse, len(idx))   # 0: measured for the hub's size
            scr, coarse = _coarse.scores(idx, target.sketch, rule.screen, seed=seed, t_keys=own, t_small=small_keys,
                                         keep=depth * cfg.shortlist,
                                         nprobe=_coarse.nprobe_for(cfg.shortlist_nprobe, len(idx)),
                                         ann=hub._indexes.level1(hub.store) if cfg.shortlist_nprobe else None,
                                         shortlist=cfg.shortlist if rule.exact else None)   # a proxy's margin: no cut
        else:
            scr = idx.scores(target.sketch, rule.screen, seed=seed, t_keys=own, t_small=small_keys)
        ids, info = _screen.choose(scr, rule, cfg.shortlist, k, SHORTLIST_MARGIN_CAP * cfg.shortlist)
        st.actual = len(ids)
        text, st.recall = _screen.describe(info, rule, method, cfg.shortlist, k, n_entries if cfg.shortlist_screen
                                           != "two-level" or coarse.get("all")
                                           else info["screened"] + n_entries - coarse["live"])
        if cfg.shortlist_screen == "two-level":
            more, rc = _coarse.describe(coarse, depth, rule.screen, method=method)
            text += more
            st.recall = None if rc is None or st.recall is None else min(rc, st.recall)
        st.detail += text
        keep = {u64(int(i)) for i in ids}
        if method == "accuracy":   # labelled entries: by predicted accuracy from their class records
            with hub.store.read() as txn:
                keep, ai = _acc.screen(txn, target, hub.config, cfg.accuracy_temperature, cfg.shortlist, keep, k=k,
                                       cache=hub._indexes.accuracy)
            if out is not None and "class_pool" in ai:
                out["class_pool"] = ai["class_pool"]
            if out is not None and "bound" in ai:
                out["bound"] = ai["bound"]
            st.actual = len(keep)
            st.detail += (f"; labelled entries ({ai['labelled']}) instead ranked by an upper bound on their "
                          "predicted accuracy (recall bounds x the " + ("given mixture" if target.mixture is not None
                                                                        else "pooled EM mixture")
                          + f"), kept the top {max(cfg.shortlist, k)}")
            if ai.get("unscreened"):
                st.detail += (f"; {ai['unscreened']} labelled entries share no column name with the query: not "
                              "screened (exact among those that do)")
            if "bound" in ai:   # the pipeline's second round scores every entry whose bound reaches the k-th best
                if out is not None:
                    out["label_free_recall"] = st.recall   # auto's unlabelled group: the exact-js screen's
                st.recall = 1.0
    return keep

def score_healthy(ctx, query, cands, method: str):
    """``(matches, damaged)``: the candidates scored together, less those whose stored records are
    damaged (entries written before records were checked on the way in, issue 23): a cheap
    check of each entry record first; if scoring still fails on a lower-layer error, each
    candidate is scored alone to find the damaged ones and the rest are scored together."""
    damaged, ok = [], []
    for rec, al in cands:
        why = record_problem(rec)
        if why:
            damaged.append(f"{rec.get('name')!r}: {why}" if isinstance(rec, dict) else why)
        else:
            ok.append((rec, al))
    if not ok:
        if damaged:
            raise E.DamagedRecordError(f"every candidate entry is damaged ({'; '.join(damaged[:5])}): "
                                       "remove and re-add them")
        return [], damaged
    try:
        return ctx.score(method, query, ok), damaged
    except E.FitsketchError as e:
        if not isinstance(e, E.CorruptHubError):
            raise
    except Exception:  # noqa: BLE001 - a damaged record met by a scorer: found below
        pass
    healthy = []
    for rec, al in ok:
        try:
            ctx.score(method, query, [(rec, al)])
        except E.FitsketchError as e:
            if not isinstance(e, E.CorruptHubError):
                raise
            damaged.append(f"{rec['name']!r}: {e}")
        except Exception as e:  # noqa: BLE001
            damaged.append(f"{rec['name']!r}: {type(e).__name__}: {e}")
        else:
            healthy.append((rec, al))
    log.warning("search skipped damaged entries: %s", "; ".join(damaged[:5]))
    if not healthy:
        raise E.DamagedRecordError(f"every candidate entry is damaged ({'; '.join(damaged[:5])}): "
                                   "remove and re-add them")
    return ctx.score(method, query, healthy), damaged

def record_problem(rec) -> str | None:
    """Why an entry record is unusable by a search (None when it is consistent): what an older
    fitsketch accepted without checks and a scorer would meet as a raw error or a huge allocation."""
    if not isinstance(rec, dict):
        return "the entry record is not a map"
    feats, kinds = rec.get("features"), rec.get("kinds")
    if not (isinstance(feats, list) and isinstance(kinds, list) and len(feats) == len(kinds)):
        return "features / kinds are not lists of one length"
    n_rows, n_parts, m = rec.get("n_rows"), rec.get("n_partitions"), rec.get("partition_size")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (n_rows, n_parts, m)) or m < 1 \
            or not 0 <= n_rows <= MAX_ROWS or not -(-n_rows // m) <= n_parts <= n_rows:
        return f"n_rows={n_rows!r}, n_partitions={n_parts!r}, partition_size={m!r} are inconsistent"
    for key in ("sums", "counts"):
        if np.shape(rec.get(key)) != (len(feats),):
            return f"{key} has shape {np.shape(rec.get(key))}, not ({len(feats)},)"
    return None

def live_ids(txn, ids: set, plan: Plan) -> set:
    """The ids of ``ids`` still in the hub in this read transaction's snapshot: the shortlist (or the
    embedding stage) was read in an earlier transaction, and entries removed since are skipped."""
    live = {key for key in ids if txn.exists("entries", key)}
    if len(live) < len(ids) and plan.stages:
        plan.stages[-1].detail += f"; {len(ids) - len(live)} removed since, skipped"
    return live
