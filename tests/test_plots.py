"""Pictures of why (fitsketch.plots, `fitsketch search --png`): the features that differ most,
drawn for the top matches."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import fitsketch
from fitsketch import plots


def _jsd_ref(p: dict, q: dict) -> float:
    keys = sorted(set(p) | set(q))
    a = np.array([p.get(k, 0.0) for k in keys])
    b = np.array([q.get(k, 0.0) for k in keys])
    m = (a + b) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(0.5 * np.nansum(np.where(a > 0, a * np.log(a / m), 0)) +
                     0.5 * np.nansum(np.where(b > 0, b * np.log(b / m), 0)))


@pytest.fixture
def hub_and_query(tmp_path, rng):
    n = int(rng.integers(200, 500))
    shifted = str(rng.choice(["u", "v", "w"]))   # the one feature entry "far" differs in

    def frame(rows, shift):
        d = {c: rng.normal(0, 1, rows) + 3 for c in ("u", "v", "w")}
        d[shifted] = d[shifted] * (1 + 4 * shift) + 10 * shift
        d["cat"] = rng.choice(["a", "b", "c"], rows)
        return pd.DataFrame(d)

    hub = fitsketch.open(tmp_path / "hub")
    hub.add("near", frame(n, 0.0))
    hub.add("far", frame(n, 1.0))
    yield hub, frame(200, 0.0), shifted
    hub.close()


def test_feature_differences_rank_by_exact_jsd(hub_and_query):
    hub, q, shifted = hub_and_query
    matches = hub.search(q, k=2, method="js")
    target = fitsketch.sketch_data(q, hub.config)
    for m in matches:
        diffs = plots.feature_differences(hub, target, m)
        assert len(diffs) == len(m.features) == 4
        jsds = [d[3] for d in diffs]
        assert jsds == sorted(jsds, reverse=True)
        for tname, sname, kind, jsd, p, qd in diffs:
            assert sum(p.values()) == pytest.approx(1.0) and sum(qd.values()) == pytest.approx(1.0)
            assert jsd == pytest.approx(_jsd_ref(p, qd), abs=1e-12)
        if m.name == "far":
            assert diffs[0][0] == shifted and diffs[0][3] > 0.3
    # the query's own distribution: the totals of its sketch
    tt = target.totals()
    f = target.names.index("u")
    sel = tt["feat"] == f
    assert plots._dist(tt["feat"], tt["bucket"], tt["count"], f) == pytest.approx(
        dict(zip(tt["bucket"][sel].tolist(), (tt["count"][sel] / tt["count"][sel].sum()).tolist())))


def test_explain_matches_draws_a_non_empty_png(hub_and_query, tmp_path):
    import matplotlib.image as mpimg

    hub, q, _ = hub_and_query
    matches = hub.search(q, k=2, method="js")
    path = plots.explain_matches(hub, q, matches, tmp_path / "why.png", top=2, features=2)
    img = mpimg.imread(path)
    assert img.shape[0] > 400 and img.shape[1] > 600 and float(img[..., :3].std()) > 0.05
    with pytest.raises(fitsketch.errors.InvalidArgumentError):
        plots.explain_matches(hub, q, [], tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_cli_search_png(hub_and_query, tmp_path, capsys):
    from fitsketch.cli import main

    hub, q, _ = hub_and_query
    csv = tmp_path / "q.csv"
    q.to_csv(csv, index=False)
    path = hub.path
    hub.close()
    png = tmp_path / "cli.png"
    assert main(["search", str(path), str(csv), "-k", "2", "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert f"picture of the top matches: {png}" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
