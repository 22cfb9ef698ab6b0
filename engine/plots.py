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
