"""Coverage: row codes, counts and score against plain-loop references; merge law; a planted
case; fallback and its error."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import fitsketch
from fitsketch import errors as E
from fitsketch.config import SketchConfig
from fitsketch.kernels import rowcodes as rc

from _frames import _cov_frame

SIZES = [0, 1, 7, 97, 1001]


@pytest.mark.parametrize("n", SIZES)
def test_row_codes_equal_reference_on_every_path(rng, n):
    d, T, B = int(rng.integers(1, 40)), int(rng.integers(1, 5)), int(rng.integers(1, 13))
    x = rng.standard_normal((n, d)).astype(np.float32)
    a = rc.hyperplanes(int(rng.integers(0, 2**31)), T, B, rng.integers(0, 2**40, d))
    ref = rc.row_codes_reference(x, a)
    proj = np.einsum("nd,tbd->tnb", x.astype(np.float64), a.astype(np.float64))
    # a sign may differ only where the projection is within fp32 rounding of zero
    edge = (np.abs(proj) < 1e-4).any(axis=2)
    got_torch = rc.row_codes(x, a, device="cpu")            # the NumPy path on CPU
    got_torch2 = rc._row_codes_torch(torch.from_numpy(x), torch.from_numpy(a)).numpy()
    assert np.array_equal(got_torch2[~edge], ref[~edge])
    got_triton = rc._row_codes_triton(torch.from_numpy(x), torch.from_numpy(a)).numpy()
    assert got_torch.shape == got_triton.shape == (T, n)
    assert np.array_equal(got_torch[~edge], ref[~edge])
    assert np.array_equal(got_triton[~edge], ref[~edge])


def ref_coverage(t_codes, s_codes, tau):
    out = []
    for t in range(t_codes.shape[0]):
        total = 0.0
        n = t_codes.shape[1]
        for b in set(t_codes[t].tolist()):
            p = sum(1 for c in t_codes[t] if c == b) / n
            ns = sum(1 for c in s_codes[t] if c == b)
            total += p * min(1.0, ns / tau)
        out.append(total)
    return np.array(out)


@pytest.mark.parametrize("tau", [1.0, 2.5])
def test_counts_and_score_equal_reference(rng, tau):
    T = 3
    t_codes = rng.integers(0, 16, size=(T, 41))
    s_codes = rng.integers(0, 16, size=(T, int(rng.integers(1, 60))))
    tc, sc = rc.code_counts(t_codes), rc.code_counts(s_codes)
    for t in range(T):
        for code in range(16):
            sel = (tc["table"] == t) & (tc["code"] == code)
            assert int(tc["count"][sel].sum()) == int((t_codes[t] == code).sum())
    np.testing.assert_allclose(rc.coverage_score(tc, sc, T, tau), ref_coverage(t_codes, s_codes, tau), atol=1e-12)


def test_coverage_counts_merge_by_addition(rng):
    a = pd.DataFrame({"x": rng.normal(size=40), "y": rng.normal(size=40), "c": rng.choice(["p", "q"], 40)})
    b = pd.DataFrame({"x": rng.normal(size=23), "y": rng.normal(size=23), "c": rng.choice(["p", "r"], 23)})
    cfg = SketchConfig(seed=int(rng.integers(0, 2**31)))
    center = rng.normal(size=fitsketch.sketch_data(a, cfg).coverage["center"].shape)
    sa = fitsketch.sketch_data(a, cfg, coverage_center=center).coverage
    sb = fitsketch.sketch_data(b, cfg, coverage_center=center).coverage
    sab = fitsketch.sketch_data(pd.concat([a, b], ignore_index=True), cfg, coverage_center=center).coverage
    dense = lambda c: {(int(t), int(k)): int(n) for t, k, n in zip(c["table"], c["code"], c["count"])}  # noqa: E731
    merged = dict(dense(sa))
    for key, n in dense(sb).items():
        merged[key] = merged.get(key, 0) + n
    assert merged == dense(sab)


def test_planted_target_covered_by_one_source_ranks_it_first(rng, tmp_path):
    """Digits: the target holds classes only one source has seen."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    names = [f"px{i}" for i in range(64)]
    perm = rng.permutation(len(y))
    train, test = perm[:1200], perm[1200:]
    groups = {"s012": [0, 1, 2], "s345": [3, 4, 5], "s6789": [6, 7, 8, 9]}
    with fitsketch.open(tmp_path / "h", config=SketchConfig(partition_size=100)) as hub:
        for name, cls in groups.items():
            idx = train[np.isin(y[train], cls)]
            hub.add(name, pd.DataFrame(X[idx], columns=names))
        q = test[np.isin(y[test], [3, 4, 5])]
        res = hub.search(pd.DataFrame(X[q], columns=names), method="coverage")
    assert res[0].name == "s345", [(m.name, m.score) for m in res]
    assert res[0].method == "coverage" and res[0].score > res[1].score
    assert len(res[0].evidence["per_table"]) == hub.config.coverage_tables


def test_coverage_falls_back_or_raises_when_feature_sets_differ(rng, tmp_path):
    src = pd.DataFrame({"a": rng.normal(size=80), "b": rng.normal(size=80), "c": rng.normal(size=80)})
    with fitsketch.open(tmp_path / "h") as hub:
        hub.add("three", src)
        q = src[["a", "b"]].copy()
        res = hub.search(q, method="coverage")
        assert res[0].method == "adaptivity" and "fallback" in res[0].evidence
        assert "fell back to adaptivity" in hub.explain(q, method="coverage").stages[2].detail
        with pytest.raises(E.FeatureMismatchError, match="coverage_fallback"):
            hub.search(q, method="coverage", coverage_fallback=False)
        full = hub.search(src, method="coverage")
        assert full[0].method == "coverage" and full[0].score == pytest.approx(1.0)


@pytest.mark.parametrize("n", [0, 1, 7, 1001])
def test_row_matrix_equals_column_blocks(n, rng):
    """The batched transform of plain numeric columns equals each column's own block, for frames
    mixing float (with NaN / inf), int, uint, bool, datetime, numeric-object and string columns."""
    from fitsketch import coverage as C
    from fitsketch import quantize as Q

    f = rng.standard_normal(n) * 10.0 ** rng.integers(-3, 300, n)
    if n > 3:
        f[:4] = [np.nan, np.inf, -np.inf, -0.0]
    df = pd.DataFrame({"f": f, "i": rng.integers(-1000, 1000, n), "u": rng.integers(0, 9, n).astype(np.uint8),
                       "b": rng.random(n) < 0.5, "t": pd.to_datetime(rng.integers(0, 2**40, n)),
                       "o": pd.Series(rng.standard_normal(n), dtype=object),
                       "c": pd.Series([f"v{k}" for k in rng.integers(0, 5, n)], dtype=object),
                       "x": pd.Series([f"w{k} w{k + 1} w{k * 2}" for k in rng.integers(0, 50, n)], dtype="str"),
                       "f32": rng.standard_normal(n).astype(np.float32)})
    kinds = ["numeric"] * 6 + ["categorical", "text", "numeric"]
    seed = int(rng.integers(0, 2**31))
    with Q.shared_tokens():
        X, keys, owner = C.row_matrix(df, kinds, seed)
        blocks = [C.column_block(nm, df[nm], k, seed) for nm, k in zip(df.columns, kinds)]
    ref = np.concatenate([b[0] for b in blocks], axis=1)
    assert X.shape == ref.shape and np.array_equal(X, ref, equal_nan=True)
    assert np.array_equal(keys, np.concatenate([b[1] for b in blocks]))
    assert owner == [i for i, b in enumerate(blocks) for _ in range(b[0].shape[1])]


def test_coverage_groups_generalize_the_one_group_score(rng):
    """The several-groups score with one real group (plus an empty one) is the one-group score;
    a shared centre still sums counts; more than MAX_GROUPS centres is refused with the fix."""
    from fitsketch import coverage as C

    cfg = SketchConfig(seed=int(rng.integers(0, 2**31)))
    s = fitsketch.sketch_data(_cov_frame(rng, int(rng.integers(50, 400))), cfg)
    q = fitsketch.sketch_data(_cov_frame(rng, int(rng.integers(1, 300)), 0.3), cfg)
    rec = s.coverage
    empty = {"center": rec["center"] + 1.0, "table": rec["table"][:0], "code": rec["code"][:0],
             "count": rec["count"][:0]}
    for tau in (1.0, 3.0):
        one = C.score(q.rows, rec, seed=cfg.seed, tau=tau)
        two = C.score(q.rows, {**rec, "more": [empty]}, seed=cfg.seed, tau=tau)
        np.testing.assert_allclose(two, one, rtol=1e-12, atol=1e-15)
    # three parts, two of which share a centre: two groups, the shared one with their summed counts
    parts = [_cov_frame(rng, 80) for _ in range(3)]
    c = fitsketch.sketch_data(parts[1], cfg).coverage["center"]
    m = fitsketch.sketch_data(parts[0], cfg).merge(fitsketch.sketch_data(parts[1], cfg, coverage_center=c)).merge(
        fitsketch.sketch_data(parts[2], cfg, coverage_center=c))
    g = C.groups(m.coverage)
    ref = fitsketch.sketch_data(pd.concat(parts[1:], ignore_index=True), cfg, coverage_center=c).coverage
    assert len(g) == 2 and all(np.array_equal(g[1][k], ref[k]) for k in ("table", "code", "count"))
    acc = fitsketch.sketch_data(parts[0], cfg)
    with pytest.raises(fitsketch.errors.InvalidArgumentError, match="coverage_center"):
        for i in range(C.MAX_GROUPS + 1):
            acc = acc.merge(fitsketch.sketch_data(_cov_frame(rng, 20, float(i)), cfg))
