"""``confusion=`` given together with ``model=`` + ``validation=`` (engine/accuracy_perf.py ``performance``):
the given counts -- e.g. a cross-validated confusion over the training rows -- are added to the validation's
confusion; bad counts are named errors that leave the hub unchanged."""
import numpy as np
import pandas as pd
import pytest

import fitsketch
from fitsketch import errors as E
from fitsketch.storage import u64


def _labelled(rng, n, k=3):
    y = rng.integers(0, k, n)
    X = np.rint(10.0 * (y[:, None] + 1) + rng.normal(0, 6.0, size=(n, 3)))   # rounded: overlapping classes
    return pd.DataFrame(X, columns=["a", "b", "c"]), y


def _model(X):
    m = np.asarray(X, dtype=np.float64).mean(axis=1, keepdims=True)
    return -np.abs(m - 10.0 * (np.arange(3)[None, :] + 1))


def _inside(vdf, df):
    seen = {tuple(r) for r in df.to_numpy(dtype=np.float64)}
    return np.array([tuple(r) in seen for r in vdf.to_numpy(dtype=np.float64)], dtype=bool)


def _perf(hub, name):
    with hub.store.read() as txn:
        return txn.get("extra", u64(hub.get(name).id))["classes"]["perf"]


@pytest.mark.parametrize("n_val", [1, 2, 7, 41])
@pytest.mark.parametrize("as_frame", [False, True])
def test_pooled_confusion_equals_scikit_learns_on_the_union_of_predictions(tmp_path, rng, n_val, as_frame):
    from sklearn.metrics import confusion_matrix

    df, y = _labelled(rng, int(rng.integers(30, 90)))
    vdf, vy = _labelled(rng, n_val)
    vdf = vdf + 1000.0 * (rng.random(n_val) < 0.5)[:, None]      # some validation rows far off: wrong often
    # the "cross-validated" predictions of the training rows: the model's, some flipped at random
    cv_pred = _model(df.to_numpy()).argmax(axis=1)
    flip = rng.random(len(y)) < 0.3
    cv_pred[flip] = rng.integers(0, 3, int(flip.sum()))
    train_labels = np.unique(y)
    cv = confusion_matrix(y, cv_pred, labels=train_labels)
    if as_frame:     # as read from a CSV: labels as strings, columns in another order
        cv = pd.DataFrame(cv, index=[str(c) for c in train_labels],
                          columns=[str(c) for c in train_labels])[[str(c) for c in train_labels[::-1]]]
    with fitsketch.open(tmp_path / "hub") as hub:
        hub.add("m", df, labels=y, model=_model, validation=(vdf, vy), confusion=cv)
        hub.add("v", df, labels=y, model=_model, validation=(vdf, vy))
        perf, alone = _perf(hub, "m"), _perf(hub, "v")
        res = {m.name: m for m in hub.search(_labelled(rng, 40)[0], method="accuracy", accuracy_bootstrap=0)}
    keep = ~_inside(vdf, df)
    pred = _model(vdf.to_numpy()).argmax(axis=1)
    want = confusion_matrix(np.concatenate([vy[keep], y]), np.concatenate([pred[keep], cv_pred]),
                            labels=perf["labels"])
    np.testing.assert_array_equal(perf["confusion"], want)
    # with few validation rows, all of them may equal training rows (rounded values): the given counts alone
    source = "validation+confusion" if keep.any() else "confusion (every validation row is a training row)"
    assert perf["source"] == source and res["m"].evidence["performance"] == source
    assert perf["validation_accuracy"] == pytest.approx(np.trace(want) / want.sum(), abs=1e-12)
    # what the validation rows alone give is kept: the model's confidence and the proxy's hits
    assert perf.get("true_class_prob") == alone.get("true_class_prob")
    for k in ("proxy_hits", "proxy_n"):
        if k in alone:
            np.testing.assert_array_equal(np.asarray(perf[k])[:len(alone[k])], alone[k])


def test_pooled_confusion_takes_labels_the_training_rows_lack(tmp_path, rng):
    """A confusion over a label the training rows never held (the model predicted it): cells land in
    the union of labels."""
    df, y = _labelled(rng, 60, k=2)                # classes 0, 1 only
    vdf, vy = _labelled(rng, 20, k=2)
    cv = pd.DataFrame([[5, 1, 2], [0, 7, 1], [0, 0, 0]], index=[0, 1, 2], columns=[0, 1, 2])
    with fitsketch.open(tmp_path / "hub") as hub:
        hub.add("m", df, labels=y, model=lambda X: _model(X)[:, :2], validation=(vdf, vy), confusion=cv)
        perf = _perf(hub, "m")
    from sklearn.metrics import confusion_matrix

    keep = ~_inside(vdf, df)
    pred = _model(vdf.to_numpy())[:, :2].argmax(axis=1)
    want = confusion_matrix(vy[keep], pred[keep], labels=perf["labels"]) + cv.to_numpy()
    assert perf["labels"] == [0, 1, 2]
    np.testing.assert_array_equal(perf["confusion"], want)


def test_every_validation_row_a_training_row_uses_the_given_counts_alone(tmp_path, rng):
    df, y = _labelled(rng, int(rng.integers(40, 90)))
    take = rng.choice(len(df), int(rng.integers(1, 30)), replace=False)
    cv = rng.integers(0, 20, size=(3, 3))
    cv[0, 0] += 1
    with fitsketch.open(tmp_path / "hub") as hub:
        hub.add("m", df, labels=y, model=_model, validation=(df.iloc[take], y[take]), confusion=cv)
        perf = _perf(hub, "m")
        ev = hub.search(_labelled(rng, 30)[0], method="accuracy", accuracy_bootstrap=0)[0].evidence
    np.testing.assert_array_equal(perf["confusion"], cv)
    assert perf["validation_in_training"] == len(take) and "every validation row" in perf["source"]
    assert ev["validation_in_training"] == len(take) and "confusion= given with them alone" in ev["fallback"]


@pytest.mark.parametrize("bad, err", [
    (np.ones((2, 2), dtype=np.int64), E.DimensionError),                 # not the 3 training classes
    (np.full((3, 3), 0.2), E.InvalidArgumentError),                     # rates, not counts
    (np.array([[3, -1, 0], [0, 2, 0], [0, 0, 1]]), E.InvalidArgumentError),   # a negative count
    (np.array([[3, np.nan, 0], [0, 2, 0], [0, 0, 1]]), E.InvalidArgumentError),
    (np.zeros((3, 3), dtype=np.int64), E.InvalidArgumentError),        # no rows
    (np.full((3, 3), 2.0 ** 60), E.InvalidArgumentError),               # beyond exact float counts
    (np.full((3, 3), 2.0 ** 52), E.InvalidArgumentError),               # each cell exact, the sum is not
    (np.full((3, 3), 1e300), E.InvalidArgumentError),
    ("not a matrix", E.InvalidArgumentError),
])
def test_bad_pooled_confusion_is_a_named_error_and_leaves_the_hub_unchanged(tmp_path, rng, bad, err):
    df, y = _labelled(rng, 60)
    y[:3] = [0, 1, 2]
    vdf, vy = _labelled(rng, 20)
    with fitsketch.open(tmp_path / "hub") as hub:
        hub.add("first", df, labels=y, model=_model, validation=(vdf, vy))
        before = (hub.names(), len(hub))
        with pytest.raises(err):
            hub.add("m", df, labels=y, model=_model, validation=(vdf, vy), confusion=bad)
        with pytest.raises(E.InvalidArgumentError):     # confusion= with validation= still needs model=
            hub.add("m", df, labels=y, validation=(vdf, vy), confusion=np.eye(3, dtype=np.int64))
        with pytest.raises(E.InvalidArgumentError):     # and never with class_accuracy=
            hub.add("m", df, labels=y, model=_model, validation=(vdf, vy), confusion=np.eye(3, dtype=np.int64),
                    class_accuracy={0: .9, 1: .9, 2: .9})
        after = (hub.names(), len(hub))
        assert after == before and "m" not in hub


def test_label_skew_zoo_cv_confusion_counts_every_training_row_and_keeps_the_draws(rng):
    """``label_skew_zoo(cv_folds=k)``: each model's CV confusion holds each training row once (row sums =
    the training label counts, over the training labels) and the zoo's draws are those without it."""
    from fitsketch.workloads import label_skew_zoo

    seed = int(rng.integers(0, 1000))
    kw = {"n_sources": 2, "n_targets": 1, "n_train": int(rng.integers(20, 60)), "n_val": 10, "n_target": 30,
          "models": ("logreg",)}
    a = label_skew_zoo("digits", seed=seed, cv_folds=int(rng.integers(2, 6)), **kw)
    b = label_skew_zoo("digits", seed=seed, **kw)
    assert b.cv_confusion is None and set(a.cv_confusion) == set(a.sources)
    for name, df in a.sources.items():
        pd.testing.assert_frame_equal(df, b.sources[name])
        C = a.cv_confusion[name]
        labels, counts = np.unique(a.source_labels[name], return_counts=True)
        assert list(C.index) == list(labels) == list(C.columns)
        np.testing.assert_array_equal(C.to_numpy().sum(axis=1), counts)
    pd.testing.assert_frame_equal(a.accuracy, b.accuracy)
