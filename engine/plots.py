"""Pictures of why: for the top matches of a search, the query's and each entry's distributions of
the features that differ most between them.

    from fitsketch.plots import explain_matches
    matches = hub.search(df, k=5)
    explain_matches(hub, df, matches, "why.png")          # `fitsketch search HUB DATA --png why.png`

One row per match (best first), one panel per feature: the matched features with the largest
Jensen-Shannon divergence between the query's histogram and the entry's (summed over partitions,
the histograms every method reads). Numeric features are drawn over their value buckets (the
quantizer's log buckets, at the bucket's representative value, on a symmetric-log axis when the
values span orders of magnitude); string features over their hashed bins (value names are not
kept in a sketch), largest bins first. Needs matplotlib (``pip install 'fitsketch[plot]'``).
"""
from __future__ import annotations

import math

import numpy as np

from . import errors as E

MAX_BINS = 20          # string-feature bins shown per panel


def _dist(feat: np.ndarray, bucket: np.ndarray, count: np.ndarray, f: int) -> dict[int, float]:
    sel = feat == f
    b, c = bucket[sel].astype(np.int64), count[sel].astype(np.float64)
    if len(b) == 0:
        return {}
    uniq, inv = np.unique(b, return_inverse=True)
    tot = np.bincount(inv, weights=c)
    s = tot.sum()
    return {int(k): float(v / s) for k, v in zip(uniq, tot)} if s > 0 else {}


def _jsd(p: dict, q: dict) -> float:
    keys = sorted(set(p) | set(q))
    if not keys:
        return 0.0
    a = np.array([p.get(k, 0.0) for k in keys])
    b = np.array([q.get(k, 0.0) for k in keys])
    m = 0.5 * (a + b)

    def kl(x):
        nz = x > 0
        return float(np.sum(x[nz] * np.log(x[nz] / m[nz])))

    return max(0.0, 0.5 * kl(a) + 0.5 * kl(b))


def _value(key: int, accuracy: float) -> float | None:
    """A numeric bucket key's representative value (None for NaN / infinities)."""
    from .quantize import BIAS, NAN_KEY

    if key == 0:
        return 0.0
    if abs(key) >= NAN_KEY:
        return None
    gamma = (1.0 + accuracy) / (1.0 - accuracy)
    k = abs(key) - BIAS
    v = 2.0 * gamma ** k / (gamma + 1.0)
    return v if key > 0 else -v


def _short(v: float) -> str:
    a = abs(v)
    for unit, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if a >= size:
            return f"{v / size:.3g}{unit}"
    return f"{v:.2g}" if a < 0.01 and a > 0 else f"{v:.3g}"


def feature_differences(hub, target, match) -> list[tuple[str, str, str, float, dict, dict]]:
    """``(target feature, entry feature, kind, JSD, query dist, entry dist)`` of every matched
    feature, largest divergence first."""
    from .partitions import unpack_hist
    from .storage import u64

    entry = hub.get(match.name)
    with hub.store.read() as txn:
        rec = txn.get("histograms", u64(entry.id))
    if rec is None:
        raise E.CorruptHubError(f"entry {match.name!r} has no histograms")
    h = unpack_hist(rec)
    tt = target.totals()
    out = []
    for tname, sname, _ in match.features:
        if tname not in target.names or sname not in entry.features:
            continue
        tf, sf = target.names.index(tname), entry.features.index(sname)
        p = _dist(tt["feat"], tt["bucket"], tt["count"], tf)
        q = _dist(h["feat"], h["bucket"], h["count"], sf)
        out.append((tname, sname, target.kinds[tf], _jsd(p, q), p, q))
    out.sort(key=lambda r: -r[3])
    return out


def _panel(ax, kind: str, p: dict, q: dict, accuracy: float, qlabel: str, slabel: str) -> None:
    if kind == "numeric":
        keys = sorted(set(p) | set(q), key=lambda k: (_value(k, accuracy) is None, _value(k, accuracy) or 0.0))
        keys = [k for k in keys if _value(k, accuracy) is not None]
        x = np.array([_value(k, accuracy) for k in keys])
        a = np.array([p.get(k, 0.0) for k in keys])
        b = np.array([q.get(k, 0.0) for k in keys])
        pos = np.arange(len(keys))
        ax.bar(pos, a, width=1.0, color="#4C72B0", alpha=0.55, label=qlabel)
        ax.step(pos, b, where="mid", color="#DD8452", linewidth=2.0, label=slabel)
        ticks = np.unique(np.linspace(0, len(keys) - 1, min(5, len(keys))).round().astype(int))
        ax.set_xticks(ticks, [_short(x[i]) for i in ticks], fontsize=10)
        ax.set_xlabel("value (log buckets)", fontsize=11)
    else:
        keys = sorted(set(p) | set(q), key=lambda k: -(p.get(k, 0.0) + q.get(k, 0.0)))[:MAX_BINS]
        a = np.array([p.get(k, 0.0) for k in keys])
        b = np.array([q.get(k, 0.0) for k in keys])
        pos = np.arange(len(keys))
        ax.bar(pos - 0.2, a, width=0.4, color="#4C72B0", label=qlabel)
        ax.bar(pos + 0.2, b, width=0.4, color="#DD8452", label=slabel)
        ax.set_xticks([])
        ax.set_xlabel(f"{'token' if kind == 'text' else 'value'} bins (hashed), largest first", fontsize=11)
    ax.set_ylabel("share", fontsize=11)
    ax.tick_params(axis="y", labelsize=10)
    ax.grid(axis="y", alpha=0.3)


def explain_matches(hub, data, matches, path, *, top: int = 3, features: int = 3) -> str:
    """Draw, for the ``top`` first matches, the query's and the entry's distributions of the
    ``features`` matched features that differ most; write a PNG at ``path`` and return its path."""
    from .extras import require

    require("matplotlib", "the match pictures (--png)")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .sketch import Sketch, build_sketch

    if not isinstance(top, int) or top < 1 or not isinstance(features, int) or features < 1:
        raise E.InvalidArgumentError("top and features must be positive integers")
    shown = [m for m in list(matches)[:top] if m.features]
    if not shown:
        raise E.InvalidArgumentError("no match with matched features to draw: the search returned none")
    target = data if isinstance(data, Sketch) else build_sketch(data, hub.config)
    rows = []
    for m in shown:
        diffs = feature_differences(hub, target, m)[:features]
        if diffs:
            rows.append((m, diffs))
    ncols = max(len(d) for _, d in rows)
    fig = Figure(figsize=(5.2 * ncols, 3.6 * len(rows) + 0.9))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), ncols, squeeze=False)
    acc = float(hub.config.hist_accuracy)
    for r, (m, diffs) in enumerate(rows):
        for c in range(ncols):
            ax = axes[r][c]
            if c >= len(diffs):
                fig.delaxes(ax)          # no empty panels
                continue
            tname, sname, kind, jsd, p, q = diffs[c]
            _panel(ax, kind, p, q, acc, "query", m.name)
            feat = tname if tname == sname else f"{tname} ~ {sname}"
            ax.set_title(f"#{r + 1} {m.name} (score {m.score:.3g}): {feat}\nJS divergence {jsd:.3f}", fontsize=12)
            ax.legend(fontsize=10, loc="best", framealpha=0.8)
    fig.suptitle(f"Why the top {len(rows)} match(es) rank where they do ({shown[0].method}): "
                 "the features that differ most", fontsize=14)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(path, dpi=100)
    return str(path)


# --------------------------------------------------------------------------------------------
# hub.explain(...).plot(): the score per candidate with its evidence, the class mixture behind a
# predicted accuracy, and the top match's most different features.

_EVIDENCE_KEYS = ("adaptivity", "covered_share", "js_divergence", "l2_distance", "delta", "closeness")


def _evidence_note(m) -> str:
    """A short line of a match's evidence for the score panel."""
    ev = m.evidence
    if m.method == "accuracy":
        parts = [f"recall from {ev.get('performance', '?').split(':')[0]}",
                 f"unseen classes {float(ev.get('unseen_class_share', 0.0)):.0%}"]
    else:
        parts = [f"overlap {m.overlap:.0%}"]
        parts += [f"{k.replace('_', ' ')} {float(ev[k]):.3g}" for k in _EVIDENCE_KEYS
                  if isinstance(ev.get(k), (int, float)) and not isinstance(ev.get(k), bool)][:2]
        if "fallback" in ev:
            parts.append("fallback")
    return ", ".join(parts)


def class_mixture(hub, data, matches, *, feature_names=None, where=None, overrides=None) -> dict | None:
    """The class mixture behind ``method="accuracy"`` matches: ``{"classes", "mixture", "models",
    "recall"}`` with ``mixture`` the query's estimated share of every class (the EM estimate over the
    labelled candidates' pooled class-conditionals, as the search computed it, or the ``mixture=``
    the query gave) and ``recall[i]`` model ``models[i]``'s per-class recall (0 for a class it never
    saw), so ``mixture @ recall[i]`` is its predicted accuracy. None without accuracy matches."""
    from . import accuracy as acc
    from .data import to_frame
    from .sketch import Sketch, build_sketch
    from .storage import u64

    shown = [m for m in matches if m.method == "accuracy"]
    if not shown:
        return None
    if all(m.detail.get("recall") is not None for m in shown):
        # the mixture and the per-class recall the search scored with (the recall after the own-
        # histogram proxy and the shift factor, engine/accuracy.py), so share x recall is the score
        labels = shown[0].detail["labels"]
        if all(m.detail["labels"] == labels for m in shown):
            return {"classes": [str(c) for c in labels], "mixture": shown[0].detail["mixture"],
                    "models": [m.name for m in shown], "recall": np.stack([m.detail["recall"] for m in shown])}
    if isinstance(data, Sketch):
        return None
    overrides = dict(overrides or {})
    given = overrides.pop("mixture", None)
    recs = []
    with hub.store.read() as txn:
        for m in shown:
            entry = hub.get(m.name)
            cl = (txn.get("extra", u64(entry.id)) or {}).get("classes")
            if cl is None:
                raise E.CorruptHubError(f"entry {m.name!r} ranked by accuracy has no class record")
            recs.append(acc.check_record(cl, len(entry.features)))
    if given is not None:
        labels = sorted({c for cl in recs for c in cl["labels"]}, key=acc._sort_key)
        extra = [c for c in acc.canonical(np.array(list(given), dtype=object)).tolist() if c not in set(labels)]
        labels = labels + extra
        pi = acc.check_mixture(given, labels)
    else:
        pl = hub.class_pool(data, where=where, feature_names=feature_names, **overrides)
        labels = pl["labels"]
        frame = to_frame(data, feature_names)
        target = build_sketch(frame, hub.config, skip_empty=True)
        cols = set(pl["columns"])
        used = sorted({j for j, n in enumerate(target.names) if n in cols})
        qb = acc.query_buckets(frame, target.names, target.kinds, used, hub.config)
        cfg = hub.config.replace(**{k: v for k, v in overrides.items() if k == "accuracy_temperature"})
        pi = acc.em_mixture(acc.loglik(qb, len(frame), pl, target.names, cfg.accuracy_temperature))
    return {"classes": [str(c) for c in labels], "mixture": np.asarray(pi, dtype=np.float64),
            "models": [m.name for m in shown],
            "recall": np.stack([acc.recall_vector(cl["perf"], labels) for cl in recs])}


def explain_data(plan) -> dict:
    """What ``Plan.plot`` draws, as arrays: ``names``, ``scores``, ``methods``, ``intervals``
    ((n, 2), NaN where a match has none), ``notes`` (one evidence line each), ``mixture`` (see
    :func:`class_mixture`, or None) and ``features`` (the top match's matched features, largest
    divergence first: ``(target feature, entry feature, kind, JSD, query dist, entry dist)``)."""
    src = getattr(plan, "source", None)
    matches = list(getattr(plan, "matches", None) or [])
    if src is None:
        raise E.InvalidArgumentError(
            "this plan has no matches to draw: plot() works on the plan of hub.explain(...) on an "
            "embedded hub (a plan that came over the socket carries only its stages)")
    if not matches:
        raise E.InvalidArgumentError("the search returned no match: nothing to draw")
    hub, data, opts = src
    iv = np.full((len(matches), 2), np.nan)
    for i, m in enumerate(matches):
        if isinstance(m.evidence.get("interval"), (list, tuple)) and len(m.evidence["interval"]) == 2:
            iv[i] = m.evidence["interval"]
    out = {"names": [m.name for m in matches], "scores": np.array([m.score for m in matches], dtype=np.float64),
           "methods": [m.method for m in matches], "intervals": iv, "notes": [_evidence_note(m) for m in matches],
           "mixture": class_mixture(hub, data, matches, **opts), "features": []}
    from .sketch import Sketch, build_sketch

    if matches[0].features:
        target = data if isinstance(data, Sketch) else build_sketch(data, hub.config, skip_empty=True)
        out["features"] = feature_differences(hub, target, matches[0])
    return out


def plot_plan(plan, path=None, *, top: int = 8, features: int = 3):
    """Draw :func:`explain_data` of ``plan``: returns the matplotlib Figure, or writes a PNG at
    ``path`` and returns the path."""
    from .extras import require

    require("matplotlib", "hub.explain(...).plot()")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not isinstance(top, int) or top < 1 or not isinstance(features, int) or features < 1:
        raise E.InvalidArgumentError("top and features must be positive integers")
    d = explain_data(plan)
    n = min(top, len(d["names"]))
    mix = d["mixture"]
    feats = d["features"][:features]
    fig = Figure(figsize=(15, 9.5 if feats else 5.2))
    FigureCanvasAgg(fig)
    gs = fig.add_gridspec(2 if feats else 1, 6, height_ratios=[1.15, 1] if feats else [1])

    # (a) the score per candidate, best at the top, with its interval and an evidence line
    ax = fig.add_subplot(gs[0, :3] if mix is not None else gs[0, :])
    y = np.arange(n)[::-1]
    s = d["scores"][:n]
    colors = ["#4C72B0" if m == "accuracy" else "#55A868" for m in d["methods"][:n]]
    ax.barh(y, s, color=colors, height=0.6)
    iv = d["intervals"][:n]
    has = ~np.isnan(iv[:, 0])
    if has.any():
        ax.errorbar(s[has], y[has], xerr=np.abs(np.stack([s[has] - iv[has, 0], iv[has, 1] - s[has]])),
                    fmt="none", ecolor="black", capsize=4)
    ax.set_yticks(y, [f"{nm}\n{note}" for nm, note in zip(d["names"][:n], d["notes"][:n])], fontsize=10)
    lo = min(0.0, float(s.min()))
    hi = max(1.0, float(s.max())) if s.min() >= 0 else max(0.0, float(s.max()))
    ax.set_xlim(lo - 0.02 * (hi - lo), hi + 0.02 * (hi - lo))
    for yi, si in zip(y, s):
        ax.text(si, yi + 0.34, f"{si:.3f}", fontsize=10, ha="right" if si > lo + 0.9 * (hi - lo) else "left")
    methods = sorted(set(d["methods"][:n]))
    what = [f"{'blue' if m == 'accuracy' else 'green'}: {'predicted accuracy' if m == 'accuracy' else m}"
            for m in methods] if len(methods) > 1 else [methods[0]]
    ax.set_xlabel(f"score ({', '.join(what)}; higher = better fit)" + ("\nerror bars: 5-95 % interval" if has.any() else ""),
                  fontsize=11)
    ax.set_title(f"Ranking of {n} candidate(s) ({plan.method})", fontsize=13)
    ax.tick_params(axis="x", labelsize=10)
    ax.grid(axis="x", alpha=0.3)

    # (b) predicted accuracy = sum over classes of (query's class share x model's recall)
    if mix is not None:
        ax = fig.add_subplot(gs[0, 3:])
        k = len(mix["classes"])
        x = np.arange(k)
        m_shown = mix["models"][:4]
        w = 0.8 / (len(m_shown) + 1)
        ax.bar(x - 0.4 + w / 2, mix["mixture"], width=w, color="#444444", label="query's estimated class share")
        palette = ["#4C72B0", "#DD8452", "#C44E52", "#8172B3"]
        for i, name in enumerate(m_shown):
            ax.bar(x - 0.4 + w * (i + 1.5), mix["recall"][i], width=w, color=palette[i], alpha=0.85,
                   label=f"{name}: recall per class")
        ax.set_xticks(x, mix["classes"], fontsize=10)
        ax.set_xlabel("class", fontsize=11)
        ax.set_ylabel("share of query rows / recall", fontsize=11)
        ax.set_ylim(0, 1.18)
        ax.tick_params(axis="y", labelsize=10)
        ax.legend(fontsize=9, loc="upper left", ncol=2, framealpha=0.85)
        ax.set_title("Class mixture: predicted accuracy = sum of share x recall", fontsize=13)
        ax.grid(axis="y", alpha=0.3)

    # (c) the top match's features that differ most from the query
    if feats:
        top_m = d["names"][0]
        span = 6 // len(feats)
        acc_ = float(plan.source[0].config.hist_accuracy)
        for c, (tname, sname, kind, jsd, p, q) in enumerate(feats):
            ax = fig.add_subplot(gs[1, c * span:(c + 1) * span])
            _panel(ax, kind, p, q, acc_, "query", top_m)
            feat = tname if tname == sname else f"{tname} ~ {sname}"
            ax.set_title(f"{feat}: query vs top match (JS div. {jsd:.3f})", fontsize=12)
            ax.legend(fontsize=10, loc="best", framealpha=0.8)
    fig.tight_layout()
    if path is None:
        return fig
    fig.savefig(path, dpi=100)
    return str(path)
