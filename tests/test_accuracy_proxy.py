"""Every candidate's own-histogram proxy computed together (engine/accuracy_proxy.py) against the
one-candidate reference (accuracy_pool.own_predictions): equal predictions (integers: exact) and
log-likelihoods on random class records, label vocabularies, alignments and queries, edge shapes
included; and a pool's counts summed by a hash table (accuracy_pool._aggregate) equal to summed by a sort."""
from __future__ import annotations

import numpy as np
import pytest

from fitsketch import accuracy as A
from fitsketch.accuracy_proxy import _logliks, own_predictions_many


def _record(rng, labels, n_feat, zero_counts=False):
    """A random class record over ``labels`` and ``n_feat`` features, sorted (feat, cls, bucket),
    unique keys (as class_record writes them)."""
    K = len(labels)
    m = int(rng.integers(0, 40 * n_feat + 1))
    feat, cls, bucket = rng.integers(0, n_feat, m), rng.integers(0, K, m), rng.integers(-6, 7, m)
    key = np.unique((feat * 64 + cls) * 64 + (bucket + 32))
    feat, cls, bucket = key // 4096, (key // 64) % 64, key % 64 - 32
    count = rng.integers(0 if zero_counts else 1, 30, len(key))
    counts = np.bincount(cls, weights=count, minlength=K).astype(np.int64)
    counts[rng.random(K) < 0.2] = 0                          # a class the record names but never saw
    return {"labels": list(labels), "counts": counts, "cls": cls.astype(np.int32), "feat": feat.astype(np.int32),
            "bucket": bucket.astype(np.int32), "count": count.astype(np.uint32)}


def _query(rng, n_rows, n_cols):
    qb = {}
    for j in range(n_cols):
        if rng.random() < 0.15:
            continue                                         # a query column without values
        if j % 4 == 3 and n_rows:                            # text-like: several tokens a row
            m = int(rng.integers(1, 3 * n_rows + 1))
            qb[j] = (rng.integers(0, n_rows, m), rng.integers(-8, 9, m).astype(np.int64), False)
        else:
            qb[j] = (np.arange(n_rows), rng.integers(-8, 9, n_rows).astype(np.int64), True)
    return qb


@pytest.mark.parametrize("n_rows", [0, 1, 7, 97])
@pytest.mark.parametrize("n_cands", [0, 1, 7, 33])
@pytest.mark.parametrize("seed", [0, 1])
def test_equals_the_one_candidate_reference(n_rows, n_cands, seed, monkeypatch):
    rng = np.random.default_rng([seed, n_rows, n_cands])
    vocab = ["a", "b", "c", "d", "e", "f"]
    n_cols = int(rng.integers(1, 10))
    names = [f"q{j}" for j in range(n_cols)]
    qb = _query(rng, n_rows, n_cols)
    items = []
    for i in range(n_cands):
        labels = sorted(rng.choice(vocab, int(rng.integers(2, 6)), replace=False).tolist())   # differing vocabularies
        n_feat = int(rng.integers(1, 12))
        rec = _record(rng, labels, n_feat, zero_counts=i % 3 == 0)
        # an alignment: some of the entry's features onto distinct query columns (some none at all)
        k = int(rng.integers(0, min(n_feat, n_cols) + 1))
        fmap = dict(zip(rng.permutation(n_feat)[:k].tolist(), rng.permutation(n_cols)[:k].tolist()))
        items.append((rec, fmap))
    labels = sorted({c for rec, _ in items for c in rec["labels"]} | {"z"})   # a class no candidate saw
    qx = A.query_index(qb, n_rows)
    ref = [A.own_predictions(qb, n_rows, rec, fmap, labels, names, qx) for rec, fmap in items]
    for block, dense in ((1 << 22, 1 << 24), (50, 0)):   # blocks of many candidates / of one or two, cells
        monkeypatch.setattr("fitsketch.accuracy_proxy._BLOCK_FLOATS", block)   # by lookup table / by sort
        monkeypatch.setattr("fitsketch.accuracy_proxy._DENSE_IDS", dense)
        got = own_predictions_many(qb, n_rows, items, labels, names, qx)
        assert len(got) == len(ref)
        for g, r in zip(got, ref):
            assert g.dtype == np.int64 and g.shape == (n_rows,)
            np.testing.assert_array_equal(g, r)
    assert len(own_predictions_many(qb, n_rows, items, labels, names)) == n_cands   # qx built inside
    if n_rows and len(qx["uq"]) and n_cands:   # the tempered log-likelihoods themselves: equal floats
        got = np.concatenate([ll for _, _, ll in _logliks(qb, n_rows, items, labels, names, qx)], axis=1)
        for e, (rec, fmap) in enumerate(items):
            ref_ll = A.loglik(qb, n_rows, A.pool([(rec, fmap)], labels, names), names, A.PROXY_TEMPERATURE, qx)
            np.testing.assert_array_equal(got[:, e, :], ref_ll)


def test_a_query_without_values_predicts_each_candidates_most_common_class():
    rng = np.random.default_rng(5)
    items = [(_record(rng, [0, 1, 2], 4), {0: 0, 1: 1}) for _ in range(3)]
    qb = {}
    got = own_predictions_many(qb, 4, items, [0, 1, 2], ["a", "b"])
    ref = [A.own_predictions(qb, 4, rec, fm, [0, 1, 2], ["a", "b"]) for rec, fm in items]
    for g, r in zip(got, ref):
        np.testing.assert_array_equal(g, r)


# ------------------------------------------------------------------ pooled counts: hash vs sort
def _aggregate_reference(labels, columns, cls, col, bucket, count, entries):
    """accuracy_pool._aggregate as it was: every key sorted (np.unique)."""
    key = (col * (1 << 20) + cls) * (1 << 33) + (bucket + (1 << 32))
    uniq, inv = np.unique(key, return_inverse=True)
    summed = np.bincount(inv.ravel(), weights=count, minlength=len(uniq))
    return {"labels": list(labels), "columns": columns, "col": (uniq >> 53).astype(np.int32),
            "cls": ((uniq >> 33) & ((1 << 20) - 1)).astype(np.int32),
            "bucket": ((uniq & ((1 << 33) - 1)) - (1 << 32)).astype(np.int32), "count": summed,
            "entries": int(entries)}


@pytest.mark.parametrize("n", [0, 1, 7, 97, 5000])
@pytest.mark.parametrize("spread", [6, 1 << 30])
def test_aggregate_equals_the_sort(n, spread):
    rng = np.random.default_rng([n, spread % 1000])
    cls, col = rng.integers(0, 5, n), rng.integers(0, 9, n)
    bucket = rng.integers(-spread, spread + 1, n)
    count = np.where(rng.random(n) < 0.5, rng.integers(0, 40, n), rng.random(n) * 7)   # zeros, fractions too
    got = A._aggregate([0, 1, 2, 3, 4], list("abcdefghi"), cls, col, bucket, count, 3)
    ref = _aggregate_reference([0, 1, 2, 3, 4], list("abcdefghi"), cls, col, bucket, count, 3)
    assert list(got) == list(ref)
    for k in ref:
        if isinstance(ref[k], np.ndarray):
            assert got[k].dtype == ref[k].dtype
            np.testing.assert_array_equal(got[k], ref[k])
        else:
            assert got[k] == ref[k]


@pytest.mark.parametrize("n", [0, 1, 7, 2000])
@pytest.mark.parametrize("cols, classes", [(2_000, 300), (1 << 20, 1 << 18), (1, 1)])
def test_aggregate_of_wide_queries_and_many_classes(n, cols, classes):
    """Column indices of 1,024 and more (the fixed 20-bit class field once wrapped the packed key
    there) and class indices to 2^18 (a received pool's bound), packed or, beyond 63 bits, sorted
    as rows: every (col, cls, bucket) summed once, in that order, as a dictionary adds them."""
    rng = np.random.default_rng([n, cols % 997])
    col, cls = rng.integers(0, cols, n), rng.integers(0, classes, n)
    col[: n // 3], cls[: n // 3] = cols - 1, classes - 1                  # the largest indices present
    bucket = rng.integers(-(1 << 31), 1 << 31, n)
    dup = rng.integers(0, max(n, 1), n // 2)                               # repeated keys, summed
    col, cls, bucket = (np.concatenate([a, a[dup]]) for a in (col, cls, bucket))
    count = rng.random(len(col)) * 5
    ref = {}
    for k, c in zip(zip(col.tolist(), cls.tolist(), bucket.tolist()), count.tolist()):
        ref[k] = ref.get(k, 0.0) + c
    got = A._aggregate(list(range(classes)), ["x"] * cols, cls, col, bucket, count, 2)
    keys = sorted(ref)
    assert got["col"].dtype == got["cls"].dtype == got["bucket"].dtype == np.int32
    assert list(zip(got["col"].tolist(), got["cls"].tolist(), got["bucket"].tolist())) == keys
    np.testing.assert_array_equal(got["count"], [ref[k] for k in keys])


@pytest.mark.parametrize("per_block", [1, 3])
def test_blocks_are_bounded_by_the_query_rows_too(per_block, monkeypatch):
    """A block's (n_rows, B, K) log-likelihoods stay within _BLOCK_FLOATS however many rows the
    query has (a large query with many candidates held them all at once: GBs), and the
    predictions still equal the one-candidate reference."""
    rng = np.random.default_rng(per_block)
    n_rows, n_cols = 301, 4
    names = [f"q{j}" for j in range(n_cols)]
    qb = _query(rng, n_rows, n_cols)
    items = [(_record(rng, ["a", "b", "c"], 3), {0: 0, 1: 2, 2: 3}) for _ in range(10)]
    labels = ["a", "b", "c"]
    qx = A.query_index(qb, n_rows)
    bound = per_block * n_rows * len(labels)
    monkeypatch.setattr("fitsketch.accuracy_proxy._BLOCK_FLOATS", bound)
    sizes = [ll.shape for _, _, ll in _logliks(qb, n_rows, items, labels, names, qx)]
    assert sum(b for _, b, _ in sizes) == len(items)
    assert all(r * b * k <= bound for r, b, k in sizes), sizes
    got = own_predictions_many(qb, n_rows, items, labels, names, qx)
    for g, (rec, fmap) in zip(got, items):
        np.testing.assert_array_equal(g, A.own_predictions(qb, n_rows, rec, fmap, labels, names, qx))
