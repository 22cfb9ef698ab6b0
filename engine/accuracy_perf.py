"""The model's per-class performance in a class record (engine/accuracy.py): from ``model=`` run
on ``validation=``, a given ``confusion=`` or ``class_accuracy=``, or the class-count fallback;
and the command line's ``--class-accuracy`` / ``--confusion`` files."""
from __future__ import annotations

import numpy as np
import pandas as pd

from . import errors as E
from .accuracy_pool import own_predictions, query_buckets
from .accuracy_records import MAX_CLASSES, _match_kind, _sort_key, canonical, check_labels, label_kind

RECALL_PSEUDO = 8.0         # pseudo-count pulling a class's validation recall towards r0 (tuned: digits seeds 0-1)
# a model's recall on a class it saw n times in training, relative to its best: n^b / (n^b + K^b)
# (0 for n = 0, half at n = K); fitted on the digits zoo's tuning seeds 0-1 (bench.bench_accuracy)
CURVE_K = 4.5
CURVE_B = 2.0
FALLBACK_RMAX = 0.9         # the best-class recall assumed when no performance is given
# the performance's source when every validation row equals a training row (held_out): the model
# was measured on rows it was fitted on, so the recalls fall back to the class counts
ALL_IN_TRAINING = "fallback: every validation row is a training row"
# the performance's source when confusion= came with model= + validation= (its counts added to the
# validation's): accuracy.recall_prior reads such entries with their own prior (PRIOR_COEF_POOLED)
POOLED = "validation+confusion"
# ... and when, of those, every validation row equals a training row: the given counts alone are used
POOLED_ALL_IN_TRAINING = "confusion (every validation row is a training row)"
# the most rows a pooled confusion may count: int64 sums stay exact as float64 with up to 2**32 validation rows
MAX_POOLED_ROWS = float((1 << 53) - (1 << 32))


def performance(rec: dict, *, model=None, validation=None, logit_labels=None, confusion=None,
                class_accuracy=None, columns: list[str], feature_names=None, kinds=None, config=None,
                training=None) -> dict:
    """The ``perf`` part of a class record: per-class recall of the entry's model and where it came from.

    With ``validation=`` and the entry's column ``kinds`` and hub ``config``, also the own-histogram
    proxy's hits on the validation rows per class (``proxy_hits`` / ``proxy_n``): the reference the
    query's proxy recall is compared with (:func:`shifted_recall`). With ``validation=``, also
    ``true_class_prob``: the model's mean probability of the true class over the validation rows
    (:func:`true_class_prob`); over the validation accuracy it says how (under)confident the model
    is, which :func:`shifted_recall`'s prior reads (entries registered before it was stored lack it
    and use the prior without it).

    ``training`` (the entry's training rows, a DataFrame with ``columns``; ``hub.add`` passes them):
    validation rows equal to a training row (every column) are not held out -- a model recalls the
    rows it was fitted on better than new ones -- so they are left out of what is measured, and
    their number is stored as ``validation_in_training`` (:func:`held_out`). When every validation row
    is a training row, nothing was held out: the recalls are the class-count fallback (source
    ``ALL_IN_TRAINING``, flagged in the evidence), with the count stored.

    ``confusion=`` given together with ``validation=`` (whole counts, e.g. a cross-validated
    confusion over the training rows): its counts are added to the validation's confusion, cell by
    cell over the union of their labels (source ``"validation+confusion"``); the recalls, the
    prior's validation accuracy and the shrinkage then rest on both. The proxy hits and
    ``true_class_prob`` stay the validation rows'. When every validation row is a training row, the
    given counts alone are used."""
    train = list(rec["labels"])
    counts = dict(zip(train, (int(n) for n in rec["counts"])))
    given = [n for n, v in (("validation", validation), ("confusion", confusion),
                            ("class_accuracy", class_accuracy)) if v is not None]
    extra = None        # confusion= given with model= + validation=: counts pooled with the validation's
    if given == ["validation", "confusion"]:
        extra = _check_counts(*_check_confusion(confusion, train))
    elif len(given) > 1:
        raise E.InvalidArgumentError(f"give one of validation= (with model=), confusion= or class_accuracy=, not "
                                     f"{' and '.join(given)} (confusion= may come with validation=: its counts "
                                     "are added to the validation's)")
    if validation is not None:
        if model is None:
            raise E.InvalidArgumentError("validation=(data, labels) is used to measure the model: pass model= too "
                                         "(a callable returning one row of logits per input row)")
        n_in, all_in = None, False
        if training is not None:
            given = validation
            validation, n_in = held_out(validation, training, columns, feature_names)
            if validation is not given:
                feature_names = None      # held_out named the columns: the rows are a DataFrame now
            all_in = bool(n_in) and validation is given   # every validation row a training row: none held out
        y_true, y_pred, p_true = _run_validation(model, validation, logit_labels, train, columns, feature_names)
        if all_in and extra is not None:     # nothing held out: the given counts alone
            y_true = y_pred = np.zeros(0, dtype=object)
            p_true = np.zeros(0)
        elif all_in:
            perf = _fallback(train, counts, ALL_IN_TRAINING)
            perf["validation_in_training"] = int(n_in)
            return perf
        labels = sorted(set(train) | set(y_true.tolist()) | set(y_pred.tolist())
                        | (set(extra[1]) if extra is not None else set()), key=_sort_key)
        index = {c: i for i, c in enumerate(labels)}
        C = np.zeros((len(labels), len(labels)), dtype=np.int64)
        np.add.at(C, (np.fromiter((index[v] for v in y_true), np.int64, len(y_true)),
                      np.fromiter((index[v] for v in y_pred), np.int64, len(y_pred))), 1)
        if extra is not None:
            at = np.array([index[c] for c in extra[1]], dtype=np.int64)
            C[np.ix_(at, at)] += extra[0]
        perf = _perf_from_confusion(C, labels, counts, "validation" if extra is None
                                    else POOLED_ALL_IN_TRAINING if all_in else POOLED)
        if all_in:
            perf["validation_in_training"] = int(n_in)
            return perf
        perf["true_class_prob"] = float(p_true.mean()) if len(p_true) else 0.0
        if n_in is not None:
            perf["validation_in_training"] = int(n_in)
        if kinds is not None and config is not None:
            perf.update(_proxy_on_validation(rec, validation, y_true, labels, columns, kinds, config, feature_names))
        return perf
    if confusion is not None:
        C, labels = _check_confusion(confusion, train)
        return _perf_from_confusion(C, labels, counts, "confusion")
    if class_accuracy is not None:
        if not isinstance(class_accuracy, dict) or not class_accuracy:
            raise E.InvalidArgumentError("class_accuracy must be a non-empty dict {label: recall in [0, 1]}")
        keys = canonical(np.array(list(class_accuracy), dtype=object), "class_accuracy labels")
        if label_kind(keys.tolist()) != label_kind(train):   # a JSON file's keys are strings: "3" -> 3
            keys = np.array(_match_kind(keys.tolist(), train), dtype=object)
        vals = []
        for k, v in zip(class_accuracy, class_accuracy.values()):
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) \
                    or not np.isfinite(v) or not 0.0 <= float(v) <= 1.0:
                raise E.InvalidArgumentError(f"class_accuracy[{k!r}] = {v!r}: give a recall in [0, 1]")
            vals.append(float(v))
        missing = [c for c in train if c not in set(keys.tolist())]
        if missing:
            raise E.LabelError(f"class_accuracy has no recall for training classes {missing[:10]}: give one for "
                               "every class of the labels")
        labels = sorted(set(train) | set(keys.tolist()), key=_sort_key)
        r = dict(zip(keys.tolist(), vals))
        return {"source": "class_accuracy", "labels": labels, "recall": np.array([r.get(c, 0.0) for c in labels])}
    return _fallback(train, counts, "fallback: class counts")


def _fallback(train: list, counts: dict, source: str) -> dict:
    """The class-count fallback: ``recall_c = FALLBACK_RMAX x curve(n_c)``."""
    labels = list(train)
    recall = FALLBACK_RMAX * curve(np.array([counts[c] for c in labels], dtype=np.float64))
    return {"source": source, "labels": labels, "recall": recall}


HASH_BLOCK = 1 << 16   # training rows hashed at a time (held_out's memory: validation + one block)


def _is_num(col: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col)


def _value(v):
    """A cell of a non-numeric column as compared: missing as None, a number (or bool) as its float."""
    if v is None or v is pd.NA or v is pd.NaT:
        return None
    if isinstance(v, (bool, int, float, np.bool_, np.integer, np.floating)):
        try:
            f = float(v)
        except OverflowError:     # an int beyond float64's range: compared as the int it is
            return int(v)
        return None if f != f else (0.0 if f == 0 else f)
    return v


def _canonical(df: pd.DataFrame, columns: list[str], num: list[bool]) -> tuple:
    """``(X, O)``: ``X`` (rows, numeric columns) float64 of the columns ``num`` marks, -0.0 as 0.0 and
    every NaN as one NaN (equal rows have equal bytes; an int, a float and a bool column holding the
    same numbers alike); ``O`` (rows, other columns) object of the others' cells (:func:`_value`), or
    None when every column is numeric."""
    nc = [c for c, k in zip(columns, num) if k]
    X = np.array(df[nc].to_numpy(dtype=np.float64), dtype=np.float64, order="C", copy=True) if nc \
        else np.zeros((len(df), 0))
    X[X == 0] = 0.0
    X[np.isnan(X)] = np.nan
    oc = [c for c, k in zip(columns, num) if not k]
    if not oc:
        return X, None
    O = np.empty((len(df), len(oc)), dtype=object)
    for j, c in enumerate(oc):
        O[:, j] = [_value(v) for v in df[c].to_numpy(dtype=object)]   # (Series.map would infer NaN back)
    return X, O


def _hash(X: np.ndarray, O: np.ndarray | None = None) -> np.ndarray:
    """(rows,) uint64 pandas row hash of a :func:`_canonical` pair (the numeric part alone as before
    text columns were compared)."""
    h = pd.util.hash_pandas_object(pd.DataFrame(X), index=False).to_numpy()
    if O is not None:
        # dtype=object: each cell formatted alone (a column of Timestamps inferred as datetime64 is
        # formatted as a whole, midnight as '2020-01-01' or '2020-01-01 00:00:00' by its neighbours)
        ho = pd.util.hash_pandas_object(pd.DataFrame(O, dtype=object).astype(str), index=False).to_numpy()
        h = h ^ (ho * np.uint64(0x9E3779B97F4A7C15))
    return h


def row_hashes(df: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """(rows,) uint64 hash of each row's values over ``columns`` (:func:`_canonical`, :func:`_hash`)."""
    return _hash(*_canonical(df, columns, [_is_num(df[c]) for c in columns]))


def _kinds(vdf: pd.DataFrame, training: pd.DataFrame, columns: list[str]) -> list[bool]:
    """Per column: numeric (or bool) in both frames, compared as numbers; else cell by cell."""
    return [_is_num(vdf[c]) and _is_num(training[c]) for c in columns]


def _same(a, b) -> bool:
    try:
        return bool(a == b)
    except (ValueError, TypeError):       # a cell holding an array: not compared equal
        return False


def _inside(vdf: pd.DataFrame, training: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """(validation rows,) bool: the row equals some training row over ``columns`` (numbers as numbers,
    other cells by value). Training rows are hashed ``HASH_BLOCK`` at a time and every hash hit is
    confirmed on the values (a 64-bit row hash can be made to collide)."""
    num = _kinds(vdf, training, columns)
    V, VO = _canonical(vdf, columns, num)
    hv = _hash(V, VO)
    order = np.argsort(hv, kind="stable")
    hs = hv[order]
    vbytes = [V[i].tobytes() for i in range(len(V))]
    inside = np.zeros(len(V), dtype=bool)
    left = np.zeros(len(hs) + 1, dtype=np.int64)   # per hash group (its first sorted position): rows not yet found
    starts = np.flatnonzero(np.r_[True, hs[1:] != hs[:-1]]) if len(hs) else np.zeros(0, np.int64)
    left[starts] = np.diff(np.r_[starts, len(hs)])
    for lo in range(0, len(training), HASH_BLOCK):
        T, TO = _canonical(training.iloc[lo:lo + HASH_BLOCK], columns, num)
        ht = _hash(T, TO)
        for t in np.nonzero(np.isin(ht, hv))[0]:
            a = np.searchsorted(hs, ht[t], "left")
            if not left[a]:               # every validation row of this hash found (duplicate rows: no rescan)
                continue
            b = np.searchsorted(hs, ht[t], "right")
            tb = T[t].tobytes()
            for i in order[a:b]:
                if not inside[i] and vbytes[i] == tb and (TO is None or all(
                        _same(x, y) for x, y in zip(VO[i], TO[t]))):
                    inside[i] = True
                    left[a] -= 1
    return inside


def held_out(validation, training: pd.DataFrame, columns: list[str], feature_names=None) -> tuple:
    """``(validation', n_in)``: the ``validation=(data, labels)`` pair without the rows that equal a
    row of ``training`` over ``columns`` (text, category and bool columns too), and how many were left
    out. ``n_in`` is None, and the pair unchanged, when the rows were not compared (the pair
    malformed or a column missing: then ``_run_validation`` names what is wrong). When every
    validation row is a training row, nothing held out is left: the pair comes back unchanged with
    ``n_in`` = its number of rows, and :func:`performance` falls back to the class counts (a
    measurement on training rows is not a validation)."""
    from .data import to_frame

    if not isinstance(validation, (tuple, list)) or len(validation) != 2 or not isinstance(training, pd.DataFrame) \
            or any(c not in training.columns for c in columns):
        return validation, None
    try:
        vdf = to_frame(validation[0], feature_names)
    except E.FitsketchError:
        return validation, None
    if any(c not in vdf.columns for c in columns) or len(vdf) == 0:
        return validation, None
    inside = _inside(vdf, training, columns)
    n_in = int(inside.sum())
    if n_in == len(vdf):
        return validation, n_in
    if n_in == 0:
        return validation, 0
    keep = ~inside
    y = validation[1]
    if isinstance(y, str):
        return (vdf[keep].reset_index(drop=True), y), n_in
    if not isinstance(y, (np.ndarray, pd.Series)):
        try:
            y = np.asarray(y)
        except (ValueError, TypeError):
            y = np.asarray(y, dtype=object)
    if y.ndim != 1 or len(y) != len(vdf):
        return validation, None                         # _run_validation names the length mismatch
    y = y[keep] if isinstance(y, np.ndarray) else y[keep].reset_index(drop=True)
    return (vdf[keep].reset_index(drop=True), y), n_in


def curve(n: np.ndarray) -> np.ndarray:
    """Relative recall of a class seen ``n`` times in training (0 at n = 0, 1/2 at ``CURVE_K``)."""
    n = np.asarray(n, dtype=np.float64)
    return n ** CURVE_B / (n ** CURVE_B + CURVE_K ** CURVE_B)


def _perf_from_confusion(C: np.ndarray, labels: list, counts: dict, source: str) -> dict:
    n_val = C.sum(axis=1).astype(np.float64)
    total = float(C.sum())
    acc = float(np.trace(C)) / total if total else 0.0
    r0 = acc * curve(np.array([counts.get(c, 0) for c in labels], dtype=np.float64))
    recall = (np.diag(C).astype(np.float64) + RECALL_PSEUDO * r0) / (n_val + RECALL_PSEUDO)
    return {"source": source, "labels": labels, "recall": recall, "confusion": C, "validation_accuracy": acc}


def _proxy_on_validation(rec: dict, validation, y_true: np.ndarray, labels: list, columns: list[str], kinds,
                         config, feature_names) -> dict:
    """``proxy_hits`` / ``proxy_n`` per class of ``labels``: the own-histogram proxy's correct labels
    and the rows of each class, over the validation rows."""
    from .data import to_frame

    vdf = to_frame(validation[0], feature_names)
    if isinstance(validation[1], str):
        vdf = vdf.drop(columns=[validation[1]])
    vdf = vdf[columns]
    qb = query_buckets(vdf, list(columns), list(kinds), list(range(len(columns))), config)
    pred = own_predictions(qb, len(vdf), rec, {f: f for f in range(len(columns))}, labels, list(columns))
    index = {c: i for i, c in enumerate(labels)}
    yi = np.fromiter((index[v] for v in y_true), np.int64, len(y_true))
    return {"proxy_hits": np.bincount(yi[pred == yi], minlength=len(labels)).astype(np.int64),
            "proxy_n": np.bincount(yi, minlength=len(labels)).astype(np.int64)}


def _check_confusion(confusion, train: list):
    if isinstance(confusion, pd.DataFrame):
        rows = canonical(np.asarray(confusion.index, dtype=object), "confusion rows").tolist()
        cols = canonical(np.asarray(confusion.columns, dtype=object), "confusion columns").tolist()
        if label_kind(rows) != label_kind(train):    # a CSV's header is strings: "3" -> 3
            rows = _match_kind(rows, train)
        if label_kind(cols) != label_kind(train):
            cols = _match_kind(cols, train)
        labels = sorted(set(rows) | set(cols), key=_sort_key)
        index = {c: i for i, c in enumerate(labels)}
        C = np.zeros((len(labels), len(labels)), dtype=np.float64)
        vals = confusion.to_numpy(dtype=np.float64, na_value=np.nan)
        for i, r in enumerate(rows):
            for j, c in enumerate(cols):
                C[index[r], index[c]] += vals[i, j]
    else:
        try:
            C = np.asarray(confusion, dtype=np.float64)
        except (TypeError, ValueError):
            raise E.InvalidArgumentError("confusion must be a square array (rows: true class, columns: predicted, "
                                         "in the sorted order of the training labels) or a DataFrame") from None
        labels = list(train)
        if C.shape != (len(labels), len(labels)):
            raise E.DimensionError(f"confusion has shape {C.shape}; the training labels have {len(labels)} classes: "
                                   f"give a ({len(labels)}, {len(labels)}) array in the order {labels[:10]}, "
                                   "or a DataFrame indexed by label")
    if not np.isfinite(C).all() or (C < 0).any() or C.sum() <= 0:
        raise E.InvalidArgumentError("confusion holds negative, missing or no counts: give counts (or rates) >= 0")
    return C, labels


def _check_counts(C: np.ndarray, labels: list) -> tuple:
    """A ``confusion=`` pooled with the validation's confusion: whole counts of rows (rates cannot be
    added to counts), as int64 ``(C, labels)``."""
    if (C != np.round(C)).any():
        raise E.InvalidArgumentError("confusion= given with validation= is added to the validation's counts: give "
                                     "whole numbers of rows (e.g. a cross-validated confusion_matrix over the "
                                     "training rows), not rates")
    if float(C.sum()) >= MAX_POOLED_ROWS:   # the pooled counts are summed in int64 and read back as floats
        raise E.InvalidArgumentError(f"confusion= counts {float(C.sum()):.3g} rows in all; pooled with the "
                                     f"validation rows they must stay under {MAX_POOLED_ROWS:.3g} (2**53 - 2**32): "
                                     "give the counts of the rows the model was really measured on")
    return C.astype(np.int64), labels


def _run_validation(model, validation, logit_labels, train: list, columns: list[str], feature_names):
    from .data import to_frame

    if not isinstance(validation, (tuple, list)) or len(validation) != 2:
        raise E.InvalidArgumentError("validation must be a (data, labels) pair: held-out rows of the model's task "
                                     "and their true labels")
    vdf = to_frame(validation[0], feature_names)
    y_true = validation[1]
    if isinstance(y_true, str):
        if y_true not in vdf.columns:
            raise E.LabelError(f"validation labels {y_true!r} is not a column of the validation data")
        y_true, vdf = vdf[y_true].to_numpy(), vdf.drop(columns=[y_true])
    y_true = check_labels(y_true, len(vdf), "validation labels")
    missing = [c for c in columns if c not in vdf.columns]
    if missing:
        raise E.FeatureMismatchError(f"the validation data lacks the entry's columns {missing[:10]}: give the same "
                                     "columns as the training data")
    X = vdf[columns]
    if all(pd.api.types.is_numeric_dtype(X[c]) for c in columns):
        from .probelog import probe_model

        out = probe_model(model, X.to_numpy(dtype=np.float32))
    else:
        try:
            out = np.asarray(model(X), dtype=np.float32)
        except E.FitsketchError:
            raise
        except Exception as e:
            raise E.InvalidArgumentError(f"model(validation data) failed: {type(e).__name__}: {e}") from None
        if out.ndim != 2 or out.shape[0] != len(X):
            raise E.DimensionError(f"model returned shape {out.shape} for {len(X)} rows: return (rows, n_logits)")
        if not np.isfinite(out).all():
            raise E.NonFiniteError("model returned NaN or infinite logits on the validation data")
    if logit_labels is None:
        vocab = list(train)
        if out.shape[1] != len(vocab):
            raise E.LabelError(f"model has {out.shape[1]} outputs but the training labels have {len(vocab)} classes "
                               f"({vocab[:10]}): pass logit_labels=[label of output 0, 1, ...]")
    else:
        if isinstance(logit_labels, (str, bytes)) or not hasattr(logit_labels, "__len__"):
            raise E.LabelError(f"logit_labels must be a list of labels, got {type(logit_labels).__name__}")
        vocab = canonical(np.array(list(logit_labels), dtype=object), "logit_labels").tolist()
        if len(vocab) != out.shape[1]:
            raise E.LabelError(f"logit_labels has {len(vocab)} labels but the model has {out.shape[1]} outputs: "
                               "give one label per output")
        if label_kind(vocab) != label_kind(train):
            vocab = _match_kind(vocab, train)
    y_pred = np.array([vocab[i] for i in out.argmax(axis=1)], dtype=object)
    if label_kind(y_true.tolist()) != label_kind(train):
        y_true = np.array(_match_kind(y_true.tolist(), train), dtype=object)
    return y_true, y_pred, true_class_prob(out, vocab, y_true)


def true_class_prob(out: np.ndarray, vocab: list, y_true: np.ndarray) -> np.ndarray:
    """(rows,) the model's probability of each row's true class (0 for a label it has no output
    for). ``out`` is read as scores in [0, 1] when every value is (probabilities, or one-vs-rest
    sigmoids: each row divided by its sum; a row of zeros as uniform), as logits otherwise
    (softmax). Sigmoids put through a softmax would flatten to ~1/classes and read as an
    underconfident model."""
    out = np.asarray(out, dtype=np.float64)
    if out.size == 0:
        return np.zeros(out.shape[0])
    if ((out >= 0) & (out <= 1)).all():
        out = np.where(out.sum(axis=1, keepdims=True) > 0, out, 1.0)
    else:
        out = np.exp(out - out.max(axis=1, keepdims=True))
    out = out / out.sum(axis=1, keepdims=True)
    col = {c: j for j, c in enumerate(vocab)}
    j = np.fromiter((col.get(v, -1) for v in y_true), np.int64, len(y_true))
    return np.where(j >= 0, out[np.arange(len(j)), np.maximum(j, 0)], 0.0)


MAX_PERF_FILE = 64 << 20    # bytes: a --class-accuracy / --confusion file larger than this is refused


def _perf_path(path, flag: str):
    import os

    try:
        size = os.stat(path).st_size
    except OSError as e:
        raise E.InvalidArgumentError(f"{flag} {str(path)!r} cannot be read ({e.strerror})") from None
    if size > MAX_PERF_FILE:
        raise E.LimitExceededError(f"{flag} {str(path)!r} is {size} bytes, more than {MAX_PERF_FILE}: a class "
                                   f"table has at most {MAX_CLASSES} classes")
    return str(path).lower()


def read_class_accuracy(path) -> dict:
    """``{label: recall}`` from a file (the command line's ``--class-accuracy``): a JSON object, or
    a CSV / TSV with two columns (label, recall) and a header row. Values are checked later by
    :func:`performance`; here only the file's shape, with InvalidArgumentError naming the problem."""
    import json

    flag = "--class-accuracy"
    low = _perf_path(path, flag)
    if low.endswith(".json"):
        try:
            with open(path, encoding="utf-8") as f:
                out = json.load(f)
        except (ValueError, UnicodeDecodeError) as e:
            raise E.InvalidArgumentError(f"{flag} {str(path)!r} is not valid JSON ({e}): write "
                                         "{\"label\": recall, ...}") from None
        if not isinstance(out, dict) or not out:
            raise E.InvalidArgumentError(f"{flag} {str(path)!r} must hold a non-empty JSON object "
                                         "{\"label\": recall in [0, 1], ...}")
    else:
        df = _read_table(path, flag, index=False)
        if df.shape[1] != 2 or len(df) == 0:
            raise E.InvalidArgumentError(f"{flag} {str(path)!r} has {df.shape[1]} columns and {len(df)} rows: give "
                                         "two columns (label, recall) under a header row, or a .json object")
        labels = df.iloc[:, 0].to_numpy()
        if len(set(labels.tolist())) != len(labels):
            raise E.LabelError(f"{flag} {str(path)!r} names a label twice: give one recall per class")
        out = dict(zip(labels.tolist(), df.iloc[:, 1].tolist()))
    if len(out) > MAX_CLASSES:
        raise E.LabelError(f"{flag} {str(path)!r} holds {len(out)} classes, more than {MAX_CLASSES}")
    return out


def read_confusion(path):
    """A confusion matrix from a file (the command line's ``--confusion``): a CSV / TSV with the
    true labels in the first column and the predicted labels in the header row, or a square
    ``.npy`` array in the sorted order of the training labels (read without pickle)."""
    flag = "--confusion"
    low = _perf_path(path, flag)
    if low.endswith(".npy"):
        try:
            C = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise E.InvalidArgumentError(f"{flag} {str(path)!r} cannot be read as a .npy array ({e}): save a "
                                         "square array with numpy.save") from None
        if C.ndim != 2 or C.shape[0] != C.shape[1] or C.dtype.kind not in "iuf":
            raise E.InvalidArgumentError(f"{flag} {str(path)!r} holds a {C.dtype} array of shape {C.shape}: give a "
                                         "square numeric array (rows: true class, columns: predicted)")
        return C
    df = _read_table(path, flag, index=True)
    if df.shape[0] == 0 or df.shape[0] != df.shape[1] or len(df.index) > MAX_CLASSES:
        raise E.InvalidArgumentError(f"{flag} {str(path)!r} is {df.shape[0]} x {df.shape[1]}: give a square table, "
                                     "true labels in the first column, predicted labels in the header row")
    for what, vals in (("row", df.index), ("column", df.columns)):
        if len(set(vals.tolist())) != len(vals):
            raise E.LabelError(f"{flag} {str(path)!r} names a {what} label twice: give each class once")
    if not all(pd.api.types.is_numeric_dtype(df[c]) for c in df.columns):
        raise E.InvalidArgumentError(f"{flag} {str(path)!r} holds non-numeric cells: give counts (or rates)")
    return df


def _read_table(path, flag: str, index: bool) -> pd.DataFrame:
    low = str(path).lower()
    sep = "\t" if low.endswith((".tsv", ".tab")) else ","
    try:
        return pd.read_csv(path, sep=sep, index_col=0 if index else None, nrows=MAX_CLASSES + 1)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as e:
        raise E.InvalidArgumentError(f"{flag} {str(path)!r} cannot be read as CSV ({e}): give a .csv / .tsv "
                                     "with a header row") from None
