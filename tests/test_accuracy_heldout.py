"""Validation rows that are also training rows are left out of what registration measures
(engine/accuracy_perf.py ``held_out``): a model recalls the rows it was fitted on better than new ones."""
import numpy as np
import pandas as pd
import pytest

import fitsketch
from fitsketch import accuracy_perf as P
from fitsketch.storage import u64


def _rows(rng, n, cols=("a", "b", "c"), levels=4):
    """Small-integer rows, so draws repeat rows by chance too."""
    return pd.DataFrame(rng.integers(0, levels, size=(n, len(cols))).astype(np.float64), columns=list(cols))


def _reference_mask(vdf, train, cols):
    seen = {tuple(float(v) for v in r) for r in train[cols].to_numpy(dtype=np.float64)}
    return np.array([tuple(float(v) for v in r) in seen for r in vdf[cols].to_numpy(dtype=np.float64)], dtype=bool)


@pytest.mark.parametrize("n_val", [0, 1, 2, 7, 60])
def test_held_out_drops_exactly_the_validation_rows_equal_to_a_training_row(rng, n_val):
    cols = ["a", "b", "c"]
    train = _rows(rng, int(rng.integers(1, 40)))
    vdf = _rows(rng, n_val)
    if n_val:       # some validation rows copied from the training rows, as a draw with replacement makes
        take = rng.random(n_val) < 0.4
        vdf.loc[take, :] = train.iloc[rng.integers(0, len(train), int(take.sum()))].to_numpy()
    y = rng.integers(0, 3, n_val)
    inside = _reference_mask(vdf, train, cols)
    (v2, y2), n_in = P.held_out((vdf, y), train, cols)
    if n_val == 0 or inside.all() or not inside.any():   # nothing to drop, or nothing held out left: unchanged
        assert n_in == (None if n_val == 0 else int(inside.sum())) and v2 is vdf and y2 is y
        return
    assert n_in == int(inside.sum())
    np.testing.assert_array_equal(v2.to_numpy(), vdf.to_numpy()[~inside])
    np.testing.assert_array_equal(np.asarray(y2), y[~inside])


def test_held_out_compares_values_not_dtypes_and_reads_a_label_column(rng):
    cols = ["a", "b"]
    train = pd.DataFrame(rng.integers(0, 5, size=(30, 2)), columns=cols)            # int64
    vdf = pd.DataFrame(np.vstack([train.to_numpy()[:4], 100 + rng.integers(0, 5, size=(6, 2))]).astype(np.float32),
                       columns=cols)
    vdf.iloc[0, 0] = -0.0 if vdf.iloc[0, 0] == 0 else vdf.iloc[0, 0]
    vdf["y"] = np.arange(10) % 3
    (v2, ycol), n_in = P.held_out((vdf, "y"), train, cols)
    assert n_in == 4 and ycol == "y"
    np.testing.assert_array_equal(v2[cols].to_numpy(), vdf[cols].to_numpy()[4:])
    np.testing.assert_array_equal(v2["y"].to_numpy(), vdf["y"].to_numpy()[4:])


def _cell(v):
    """The reference's view of a cell: missing as None, numbers (and bools) as floats."""
    if v is None or v is pd.NA or (isinstance(v, float) and v != v):
        return None
    return float(v) if isinstance(v, (bool, int, float, np.bool_, np.integer, np.floating)) else v


def _mixed(rng, n):
    """Rows of a text, a category, a bool and an int column, few levels, some text missing."""
    text = np.array(["x", "y", "z"], dtype=object)[rng.integers(0, 3, n)]
    text[rng.random(n) < 0.2] = None
    return pd.DataFrame({"t": text, "c": pd.Categorical(rng.choice(["p", "q"], n), categories=["p", "q", "r"]),
                         "b": rng.random(n) < 0.5, "i": rng.integers(0, 2, n)})


@pytest.mark.parametrize("n_val", [1, 2, 9, 50])
def test_held_out_compares_text_category_and_bool_columns(rng, n_val):
    """Non-numeric columns are compared cell by cell: exactly the validation rows equal to a training
    row in every column are left out (against a reference over Python values)."""
    cols = ["t", "c", "b", "i"]
    train, vdf = _mixed(rng, int(rng.integers(1, 30))), _mixed(rng, n_val)
    seen = {tuple(_cell(v) for v in r) for r in train[cols].astype(object).itertuples(index=False)}
    inside = np.array([tuple(_cell(v) for v in r) in seen for r in vdf[cols].astype(object).itertuples(index=False)])
    y = rng.integers(0, 3, n_val)
    (v2, y2), n_in = P.held_out((vdf, y), train, cols)
    assert n_in == int(inside.sum())
    if inside.all() or not inside.any():
        assert v2 is vdf and y2 is y
        return
    pd.testing.assert_frame_equal(v2, vdf[~inside].reset_index(drop=True))
    np.testing.assert_array_equal(np.asarray(y2), y[~inside])


def test_held_out_text_decides_rows_equal_on_the_numeric_columns(rng):
    """Rows equal on the numbers but not in the text column are fresh rows; the text "1" is not the number 1."""
    train = pd.DataFrame({"a": ["x", "y", "z"], "b": [1.0, 2.0, 3.0]})
    vdf = pd.DataFrame({"a": ["p", "q", "z", "r"], "b": [1.0, 2.0, 3.0, float(rng.integers(4, 9))]})
    (v2, y2), n_in = P.held_out((vdf, np.array([0, 1, 0, 1])), train, ["a", "b"])
    assert n_in == 1
    np.testing.assert_array_equal(v2["a"].to_numpy(), ["p", "q", "r"])
    np.testing.assert_array_equal(y2, [0, 1, 1])
    t2 = pd.DataFrame({"a": [1, 2], "b": [0.5, 0.5]})
    v3 = pd.DataFrame({"a": ["1", 2.0], "b": [0.5, 0.5]})        # text "1" vs the int 1; the float 2.0 vs 2
    (v4, _), n_in = P.held_out((v3, np.array([0, 1])), t2, ["a", "b"])
    assert n_in == 1 and v4["a"].tolist() == ["1"]


def test_held_out_confirms_a_hash_hit_on_the_values():
    """Two different rows with the same 64-bit pandas row hash (built by inverting its mix): the
    validation row is not a training row and is kept."""
    M = (1 << 64) - 1

    def unshift(y, s):
        x = y
        for _ in range(64 // s + 1):
            x = y ^ (x >> s)
        return x & M

    def mix(v):
        v ^= v >> 30; v = (v * 0xBF58476D1CE4E5B9) & M; v ^= v >> 27; v = (v * 0x94D049BB133111EB) & M
        return v ^ (v >> 31)

    def unmix(v):
        v = unshift(v, 31); v = (v * pow(0x94D049BB133111EB, -1, 1 << 64)) & M; v = unshift(v, 27)
        v = (v * pow(0xBF58476D1CE4E5B9, -1, 1 << 64)) & M
        return unshift(v, 30)

    def bits(f):
        return int(np.float64(f).view(np.uint64))

    S, m1, a1, b1 = 0x345678, 1000003, 1.0, 2.0
    for a2 in np.arange(3.0, 200.0):
        h = (((S ^ mix(bits(a1))) * m1) & M) ^ mix(bits(b1)) ^ (((S ^ mix(bits(a2))) * m1) & M)
        b2 = float(np.uint64(unmix(h)).view(np.float64))
        if np.isfinite(b2) and b2 != 0:
            break
    train = pd.DataFrame({"a": [a1, 7.0], "b": [b1, 7.0]})
    vdf = pd.DataFrame({"a": [a2, 7.0, 50.0], "b": [b2, 7.0, 50.0]})
    hv, ht = P.row_hashes(vdf, ["a", "b"]), P.row_hashes(train, ["a", "b"])
    assert hv[0] == ht[0]            # the constructed collision (if pandas changes its hash, this says so)
    (v2, y2), n_in = P.held_out((vdf, np.array([0, 1, 2])), train, ["a", "b"])
    assert n_in == 1
    np.testing.assert_array_equal(v2.to_numpy(), vdf.to_numpy()[[0, 2]])
    np.testing.assert_array_equal(y2, [0, 2])


def test_held_out_in_blocks_equals_the_reference(rng, monkeypatch):
    """Training rows hashed a few at a time (HASH_BLOCK) give the same rows as one pass."""
    cols = ["a", "b", "c"]
    train, vdf = _rows(rng, int(rng.integers(1, 60))), _rows(rng, 25)
    monkeypatch.setattr(P, "HASH_BLOCK", int(rng.integers(1, 8)))
    inside = _reference_mask(vdf, train, cols)
    (v2, _), n_in = P.held_out((vdf, np.zeros(25, dtype=np.int64)), train, cols)
    if inside.all():
        assert n_in is None
    else:
        assert n_in == int(inside.sum())
        np.testing.assert_array_equal(v2.to_numpy(), vdf.to_numpy()[~inside])


def test_add_of_numpy_rows_with_feature_names_and_some_copied_validation_rows(tmp_path, rng):
    """NumPy training and validation rows named by feature_names=, half the validation rows copies of
    training rows: the add succeeds and measures the other half."""
    Xdf, y = _labelled(rng, 120)
    X = Xdf.to_numpy()
    V = np.vstack([X[:20], Xdf.to_numpy()[:20] + 1000.0])
    vy = np.concatenate([y[:20], y[:20]])
    with fitsketch.open(tmp_path / "hub") as hub:
        hub.add("np", X, labels=y, model=_model, validation=(V, vy), feature_names=["a", "b", "c"])
        with hub.store.read() as txn:
            perf = txn.get("extra", u64(hub.get("np").id))["classes"]["perf"]
    assert perf["validation_in_training"] == 20 and int(np.sum(perf["confusion"])) == 20


def _labelled(rng, n):
    y = rng.integers(0, 3, n)
    X = np.rint(10.0 * (y[:, None] + 1) + rng.normal(0, 6.0, size=(n, 3)))   # rounded: overlapping classes
    return pd.DataFrame(X, columns=["a", "b", "c"]), y


def _model(X):
    m = np.asarray(X, dtype=np.float64).mean(axis=1, keepdims=True)
    return -np.abs(m - 10.0 * (np.arange(3)[None, :] + 1))


def test_add_measures_the_model_on_the_held_out_validation_rows_only(tmp_path, rng):
    from sklearn.metrics import confusion_matrix

    df, y = _labelled(rng, int(rng.integers(60, 120)))
    vdf, vy = _labelled(rng, int(rng.integers(20, 60)))
    k = int(rng.integers(1, 15))
    copy = rng.choice(len(df), k, replace=False)
    vdf = pd.concat([vdf, df.iloc[copy]], ignore_index=True)           # training rows in the validation set
    vy = np.concatenate([vy, y[copy]])
    inside = _reference_mask(vdf, df, ["a", "b", "c"])
    with fitsketch.open(tmp_path / "hub") as hub:
        hub.add("m", df, labels=y, model=_model, validation=(vdf, vy))
        with hub.store.read() as txn:
            perf = txn.get("extra", u64(hub.get("m").id))["classes"]["perf"]
        hit = hub.search(vdf.iloc[:10], method="accuracy")
    pred = _model(vdf.to_numpy()).argmax(axis=1)
    want = confusion_matrix(vy[~inside], pred[~inside], labels=perf["labels"])
    np.testing.assert_array_equal(perf["confusion"], want)
    assert perf["validation_in_training"] == int(inside.sum())
    assert hit[0].evidence["validation_in_training"] == int(inside.sum())


def _hub_with_copied_validation_rows(hub, rng):
    df, y = _labelled(rng, 80)
    vdf, vy = _labelled(rng, 30)
    vdf = pd.concat([vdf, df.iloc[:6]], ignore_index=True)
    hub.add("m", df, labels=y, model=_model, validation=(vdf, np.concatenate([vy, y[:6]])))
    hub.add("n", *_labelled(rng, 80)[:1], labels=_labelled(rng, 80)[1], class_accuracy={0: .9, 1: .8, 2: .7})
    return u64(hub.get("m").id)


@pytest.mark.parametrize("bad", [-1, "3", True, 2.5, [1], 1 << 62])
def test_a_malformed_validation_in_training_is_a_named_error(tmp_path, rng, bad, caplog):
    """The validator raises CorruptHubError; a search skips the damaged entry, names why, and
    scores the healthy one."""
    from fitsketch import accuracy as A
    from fitsketch import errors as E

    with pytest.raises(E.CorruptHubError, match="validation_in_training"):
        A.validation_in_training({"validation_in_training": bad})
    assert A.validation_in_training({"validation_in_training": 3}) == 3
    assert A.validation_in_training({}) is None
    with fitsketch.open(tmp_path / "hub") as hub:
        key = _hub_with_copied_validation_rows(hub, rng)

        def damage(txn):
            ex = txn.get("extra", key)
            assert ex["classes"]["perf"]["validation_in_training"] >= 1
            ex["classes"]["perf"]["validation_in_training"] = bad
            txn.put("extra", key, ex)
        hub.store.transact(damage)
        with caplog.at_level("WARNING"):
            res = hub.search(_labelled(rng, 40)[0], method="accuracy", accuracy_bootstrap=0)
    assert [m.name for m in res] == ["n"]
    assert "'m': an entry's class record holds a malformed validation_in_training" in caplog.text


def test_an_entry_stored_without_validation_in_training_scores_as_before(tmp_path, rng):
    """Records written before the field existed lack it: they score the same, without the evidence."""
    with fitsketch.open(tmp_path / "hub") as hub:
        key = _hub_with_copied_validation_rows(hub, rng)
        query = _labelled(rng, 50)[0]
        before = {m.name: m for m in hub.search(query, method="accuracy", accuracy_bootstrap=0)}

        def drop(txn):
            ex = txn.get("extra", key)
            del ex["classes"]["perf"]["validation_in_training"]
            txn.put("extra", key, ex)
        hub.store.transact(drop)
        after = {m.name: m for m in hub.search(query, method="accuracy", accuracy_bootstrap=0)}
    assert before["m"].evidence["validation_in_training"] >= 1
    assert "validation_in_training" not in after["m"].evidence
    for name in ("m", "n"):
        assert after[name].score == before[name].score


def test_every_validation_row_a_training_row_falls_back_to_the_class_counts_and_says_so(tmp_path, rng):
    """A model measured only on rows it was fitted on: the stored recalls are the class-count fallback
    (not the confusion of training rows), the count of copies is stored, and the evidence says why;
    an entry with one fresh validation row among the copies is measured on that row."""
    from fitsketch import accuracy as A

    df, y = _labelled(rng, int(rng.integers(40, 90)))
    take = rng.choice(len(df), int(rng.integers(1, 30)), replace=False)
    fresh, fy = _labelled(rng, 1)
    fresh = fresh + 1000.0                                   # not a training row
    with fitsketch.open(tmp_path / "hub") as hub:
        hub.add("all", df, labels=y, model=_model, validation=(df.iloc[take], y[take]))
        hub.add("one", df, labels=y, model=_model,
                validation=(pd.concat([df.iloc[take], fresh], ignore_index=True), np.concatenate([y[take], fy])))
        with hub.store.read() as txn:
            perf = {n: txn.get("extra", u64(hub.get(n).id))["classes"]["perf"] for n in ("all", "one")}
        res = {m.name: m for m in hub.search(_labelled(rng, 30)[0], method="accuracy", accuracy_bootstrap=0)}
    counts = np.bincount(y, minlength=3).astype(np.float64)
    assert perf["all"]["source"] == A.ALL_IN_TRAINING and "confusion" not in perf["all"]
    assert perf["all"]["validation_in_training"] == len(take)
    np.testing.assert_allclose(perf["all"]["recall"], A.FALLBACK_RMAX * A.curve(counts[counts > 0]), rtol=0, atol=1e-12)
    assert "every validation row is a training row" in res["all"].evidence["fallback"]
    assert res["all"].evidence["validation_in_training"] == len(take)
    assert perf["one"]["source"] == "validation" and int(np.sum(perf["one"]["confusion"])) == 1
    assert perf["one"]["validation_in_training"] == len(take) and "fallback" not in res["one"].evidence


def test_held_out_finds_copied_rows_of_a_datetime_column(rng):
    """A datetime column whose training rows carry times of day and whose validation rows copy the
    midnight ones: every copy is found (each cell formatted alone for the hash; review, sixth
    session: the column was formatted as a whole and midnight hashed two ways)."""
    n = int(rng.integers(20, 60))
    day = pd.Timestamp("2020-01-01") + pd.to_timedelta(rng.integers(0, 300, n), unit="D")
    noon = rng.random(n) < 0.5
    noon[0], noon[1] = True, False
    train = pd.DataFrame({"a": rng.integers(0, 3, n).astype(float),
                          "t": day + pd.to_timedelta(np.where(noon, 12, 0), unit="h")})
    mid = np.flatnonzero(~noon)
    vdf = train.iloc[mid].reset_index(drop=True)
    fresh = pd.DataFrame({"a": [9.0], "t": [pd.Timestamp("1999-01-01")]})
    vdf = pd.concat([vdf, fresh], ignore_index=True)
    (v2, _), n_in = P.held_out((vdf, np.zeros(len(vdf), int)), train, ["a", "t"])
    assert n_in == len(mid) and len(v2) == 1 and v2["a"].iloc[0] == 9.0


def test_held_out_text_that_hashes_like_a_number_is_not_a_copy(rng):
    """Text "1.0" and the number 1 format alike for the hash: the values decide (a row equal on every
    other column but holding the text where the training row holds the number stays in)."""
    n = int(rng.integers(3, 30))
    train = pd.DataFrame({"a": rng.integers(0, 5, n).astype(float), "s": pd.Series([1.0] * n, dtype=object)})
    vdf = train.copy()
    vdf["s"] = pd.Series(["1.0"] * n, dtype=object)
    assert np.array_equal(P.row_hashes(train, ["a", "s"]), P.row_hashes(vdf, ["a", "s"]))
    (v2, _), n_in = P.held_out((vdf, np.zeros(n, int)), train, ["a", "s"])
    assert n_in == 0 and len(v2) == n


def test_held_out_takes_an_int_beyond_float64_and_many_duplicate_rows(rng):
    """An int too large for a float is compared as the int (no OverflowError); duplicate training rows
    of a found validation row are not rescanned (the count is the reference's either way)."""
    big = 10 ** 400
    train = pd.DataFrame({"a": [1.0, 2.0] * 50, "s": pd.Series([big, "x"] * 50, dtype=object)})
    vdf = pd.DataFrame({"a": [1.0, 2.0, 1.0], "s": pd.Series([big, "x", big + 1], dtype=object)})
    (v2, _), n_in = P.held_out((vdf, np.zeros(3, int)), train, ["a", "s"])
    assert n_in == 2 and len(v2) == 1 and v2["s"].iloc[0] == big + 1


@pytest.mark.parametrize("field,bad", [("source", 5), ("source", None), ("recall", "x"), ("recall", [2.0, 0.5]),
                                       ("labels", "ab"), ("confusion", [[1, -1], [0, 1]]),
                                       ("validation_accuracy", 1.5)])
def test_a_malformed_performance_record_is_a_named_error(field, bad):
    """A stored performance record's fields are validated when read (review, sixth session: a source
    that was not a text crashed the evidence with an AttributeError)."""
    from fitsketch import errors as E
    from fitsketch.accuracy_records import _check_perf

    good = {"source": "validation", "labels": [0, 1], "recall": np.array([0.9, 0.5]),
            "confusion": np.array([[9, 1], [5, 5]]), "validation_accuracy": 0.7}
    _check_perf(good)
    with pytest.raises(E.CorruptHubError, match="performance record"):
        _check_perf({**good, field: bad})
