"""The benchmark pictures: no empty panels, every axis labelled, the drawn values the results' own
(bench/quality.py's scatter and bar charts, bench/scale.py's cost panels)."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from bench import quality, scale  # noqa: E402


def _results(rng):
    """Fake quality results: some methods score a workload, others (NaN or no points) do not."""
    res = {}
    for w in ("wl_a", "wl_b"):
        scatter, summary = [], {}
        scoring = [m for m in (*quality.METHODS, quality.BASELINE) if rng.random() < 0.6] or [quality.BASELINE]
        for m in (*quality.METHODS, quality.BASELINE, quality.ORACLE):
            summary[m] = {"pearson": float(rng.uniform(-1, 1)), "top1_error": float(rng.uniform(0, 1)),
                          "top2_error": float("nan") if m not in scoring else float(rng.uniform(0, 1))}
        for m in scoring:
            for t in range(int(rng.integers(1, 4))):
                for s in range(int(rng.integers(2, 5))):
                    scatter.append((m, f"t{t}", f"s{s}", float(rng.normal()), float(rng.uniform())))
        scatter.append(("simex", "t0", "s0", float("nan"), 0.5))   # an unscored point is not drawn
        res[w] = {"summary": summary, "scatter": scatter}
    return res


def test_scatter_panels_only_where_points_are(rng):
    res = _results(rng)
    methods = (*quality.METHODS, quality.BASELINE)
    panels = quality.scatter_panels(res, methods)
    for w, r in res.items():
        pts = [p for p in r["scatter"] if np.isfinite(p[3])]
        want = [m for m in methods if sum(p[0] == m for p in pts) >= 2]
        got = [pn for pn in panels if pn[0] == w]
        assert [pn[1] for pn in got] == want
        for _, m, pearson, series in got:
            assert pearson == r["summary"][m]["pearson"]
            drawn = sorted((t, x, y) for t, xs, ys in series for x, y in zip(xs, ys))
            assert drawn == sorted((p[1], p[3], p[4]) for p in pts if p[0] == m)


def test_quality_plots_have_no_empty_panel(tmp_path, rng, monkeypatch):
    import matplotlib.figure

    res = _results(rng)
    figs = []
    orig = matplotlib.figure.Figure.savefig

    def keep(self, *a, **k):
        figs.append(self)
        return orig(self, *a, **k)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    files = quality._plots(res, tmp_path, "_t")
    assert files == ["quality_t_top1_error.png", "quality_t_top2_error.png", "quality_t_scatter.png"]
    scatter = figs[-1]
    n_panels = len(quality.scatter_panels(res, (*quality.METHODS, quality.BASELINE)))
    assert len(scatter.axes) == n_panels
    for ax in scatter.axes:
        assert ax.collections and ax.get_xlabel() and ax.title.get_fontsize() >= 10
    bars = figs[1].axes[0]   # top-2 error: a NaN bar is marked n/a, not left as a silent gap
    n_nan = sum(np.isnan(res[w]["summary"][m]["top2_error"]) for w in res
                for m in (*quality.METHODS, quality.BASELINE, quality.ORACLE))
    assert sum(t.get_text() == "n/a" for t in bars.texts) == n_nan
    assert bars.get_xlabel() == "workload" and bars.get_ylabel() == "top-2 error"
    for f in files:
        assert (tmp_path / f).stat().st_size > 0


def test_scale_plot_one_labelled_axis_per_panel(tmp_path, rng, monkeypatch):
    import matplotlib.figure

    sizes = [100, 1000, 10000]
    points = [{"entries": s, "query_p50_ms": float(rng.uniform(10, 100)), "query_p99_ms": float(rng.uniform(100, 300)),
               "add_ms_per_entry": float(rng.uniform(1, 20)), "bytes_per_entry": float(rng.uniform(2e4, 9e4))}
              for s in sizes]
    extra = [{"entries": 10 ** 6, "query_p50_ms": 60.0, "query_p99_ms": 400.0, "add_ms_per_entry": 25.0,
              "bytes_per_entry": 9e4}]
    figs = []
    orig = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda self, *a, **k: (figs.append(self), orig(self, *a, **k)))
    scale._plot(points, extra, tmp_path / "s.png")
    fig = figs[0]
    assert len(fig.axes) == 4                       # no twin axis
    keys = ["query_p50_ms", "query_p99_ms", "add_ms_per_entry", "bytes_per_entry"]
    for ax, k in zip(fig.axes, keys):
        assert ax.get_xlabel() == "hub size (entries)" and ax.get_ylabel()
        measured = ax.get_lines()[0]
        want = [p[k] / (1024 if k == "bytes_per_entry" else 1) for p in points]
        np.testing.assert_allclose(measured.get_ydata(), want, rtol=1e-12)
        np.testing.assert_allclose(measured.get_xdata(), sizes)
    assert (tmp_path / "s.png").stat().st_size > 0
