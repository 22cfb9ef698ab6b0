"""Predicted accuracy (``method="accuracy"``): the accuracy each entry's model will have on the
query's data, estimated without the query's labels.

Registration (``hub.add(name, data, labels=...)``) stores, in the entry's one transaction, a
*class record*:

* per class ``c`` of the training labels: its row count ``n_c`` and its per-feature histograms
  over the hub's histogram grid (``cls, feat, bucket, count``, COO sorted by (feat, cls, bucket));
  merge: counts add, over the union of the two label vocabularies;
* the model's per-class performance, by the first that is given: ``model=`` run on
  ``validation=(data, labels)`` (the confusion matrix is stored), ``confusion=``, or
  ``class_accuracy={label: recall}``; otherwise a fallback from the class counts, flagged in the
  evidence (``recall_c = FALLBACK_RMAX x curve(n_c)``).

Query, for the labelled candidates (the query's rows are needed):

1. *Class likelihoods.* The candidates' class-conditional histograms are pooled per class over
   the features aligned with the query's (so every class that any candidate saw is
   recognizable); ``log p(x | c)`` is naive Bayes over the query's features with the pooled
   all-class histogram as the smoothing prior, divided by a temperature (``accuracy_temperature``
   x the effective number of features, see :func:`loglik`: naive Bayes over correlated features
   is overconfident).
2. *Query class mixture* (Saerens, Latinne, Decaestecker 2002): EM over
   ``pi_c <- mean_i pi_c p(x_i|c) / sum_c' pi_c' p(x_i|c')``; a caller that knows it can pass
   ``mixture={label: share}`` instead.
3. *Accuracy under label shift*: ``acc(S -> T) = sum_c pi_T(c) recall_S(c)``, 0 for a class the
   model never saw. Smoothed recalls: ``(C[c,c] + m r0_c) / (n_val_c + m)``, ``m =
   RECALL_PSEUDO``, with the prior ``r0_c = (validation accuracy) x curve(n_c)``, where
   ``curve(n) = n^b / (n^b + K^b)`` is how recall grows with the class's training rows ``n_c``
   (a class seen twice is recognized far less often than one seen fifty times; 0 when unseen).
   With the query's rows, ``r0_c`` is mixed (``PROXY_WEIGHT``, in logit space) with the recall of
   the candidate's *own-histogram proxy* on the rows EM assigns to ``c`` (:func:`own_predictions`,
   :func:`shifted_recall`), and a class with ``SHIFT_MIN_VAL`` validation rows is discounted by
   the covariate-shift factor sqrt(min(1, proxy recall on the query / on the validation rows)).
4. *Interval*: the 5-95 % range of ``acc`` over ``accuracy_bootstrap`` resamples of the query's
   rows (EM re-run on each).

Constants were chosen on the digits label-skew zoo, seeds 0-1 (``python -m bench.bench_accuracy``),
and are reported on the other seeds and on MNIST-5k.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from . import errors as E

CLASSES_FORMAT = 1
MAX_CLASSES = 4096          # classes per entry; a label vocabulary larger than this is refused
RECALL_PSEUDO = 8.0         # pseudo-count pulling a class's validation recall towards r0 (tuned: digits seeds 0-1)
# a model's recall on a class it saw n times in training, relative to its best: n^b / (n^b + K^b)
# (0 for n = 0, half at n = K); fitted on the digits zoo's tuning seeds 0-1 (bench.bench_accuracy)
CURVE_K = 4.5
CURVE_B = 2.0
FALLBACK_RMAX = 0.9         # the best-class recall assumed when no performance is given
SMOOTHING = 1.0             # weight of the pooled all-class histogram in each class's histogram
# Own-histogram proxy (covariate shift inside a class; :func:`own_predictions`): each candidate's
# own class histograms, as a naive-Bayes classifier with its training class shares as prior,
# label the query's rows; its recall on the rows EM assigns to class c says how well the model's
# training rows of c cover the query's rows of c. Chosen on digits seeds 0-1 and MNIST seed 0:
PROXY_TEMPERATURE = 0.1     # the proxy's temperature (fixed: registration and query must agree)
PROXY_WEIGHT = 0.5          # logit-space weight of the proxy's recall in a class's recall prior
PROXY_MIN_MASS = 3.0        # query rows (EM responsibilities) a class needs before its proxy is read
SHIFT_MIN_VAL = 10          # validation rows of a class needed before the shift factor discounts it
EM_ITERS = 300
EM_TOL = 1e-7


# ------------------------------------------------------------------------------ labels
def check_labels(labels, n_rows: int, what: str = "labels") -> np.ndarray:
    """Labels as a 1-D object array of canonical values (``int`` or ``str``), one per row.

    Refused with :class:`~fitsketch.errors.LabelError`: other lengths, missing values, floats that
    are not integers, unhashable values, a mix of numbers and strings, fewer than two classes or
    more than ``MAX_CLASSES``."""
    if isinstance(labels, (str, bytes, dict)) or not hasattr(labels, "__len__"):
        raise E.LabelError(f"{what} must be a sequence with one label per row (or a column name), "
                           f"got {type(labels).__name__}")
    if isinstance(labels, pd.Series):
        labels = labels.to_numpy()
    try:
        arr = np.asarray(labels)
    except (ValueError, TypeError):
        arr = np.empty(len(labels), dtype=object)
        arr[:] = list(labels)
    if arr.ndim != 1:
        raise E.LabelError(f"{what} has shape {arr.shape}: give one label per row (a 1-D sequence)")
    if len(arr) != n_rows:
        raise E.DimensionError(f"{what} has {len(arr)} values for {n_rows} rows: give one label per row")
    out = canonical(arr, what)
    n_classes = len(set(out.tolist()))
    if n_classes < 2 and what == "labels":
        raise E.LabelError(f"{what} hold a single class ({out[0]!r}): predicted accuracy needs a model of at "
                           "least two classes; register a one-class model without labels")
    if n_classes > MAX_CLASSES:
        raise E.LabelError(f"{what} hold {n_classes} classes, more than {MAX_CLASSES}: these look like ids, "
                           "not class labels")
    return out


def canonical(arr: np.ndarray, what: str = "labels") -> np.ndarray:
    """``arr`` as an object array of python ``int`` or ``str`` (one kind), or LabelError."""
    arr = np.asarray(arr)
    if arr.dtype.kind in "iu":
        return np.array([int(v) for v in arr], dtype=object)
    if arr.dtype.kind == "b":
        return np.array([int(v) for v in arr], dtype=object)
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr) | (arr != np.round(arr))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise E.LabelError(f"{what}[{i}] = {arr[i]!r} is not a class label: labels are integers or strings, "
                               "with no missing value")
        return np.array([int(v) for v in arr], dtype=object)
    if arr.dtype.kind in "US":
        return np.array([v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in arr], dtype=object)
    out = np.empty(len(arr), dtype=object)
    kinds = set()
    for i, v in enumerate(arr):
        if isinstance(v, (bool, np.bool_, int, np.integer)):
            out[i] = int(v)
            kinds.add("int")
        elif isinstance(v, (float, np.floating)) and np.isfinite(v) and float(v).is_integer():
            out[i] = int(v)
            kinds.add("int")
        elif isinstance(v, str):
            out[i] = v
            kinds.add("str")
        elif v is None or (isinstance(v, (float, np.floating)) and not np.isfinite(v)):
            raise E.LabelError(f"{what}[{i}] is missing ({v!r}): every row needs a label; drop unlabelled rows")
        else:
            raise E.LabelError(f"{what}[{i}] = {v!r} ({type(v).__name__}) is not a class label: use integers or "
                               "strings")
    if len(kinds) > 1:
        raise E.LabelError(f"{what} mix numbers and strings: use one kind (e.g. map them all to str)")
    return out


def label_kind(values) -> str:
    return "str" if any(isinstance(v, str) for v in values) else "int"


# ------------------------------------------------------------------------------ buckets
def column_buckets(df: pd.DataFrame, names: list[str], kinds: list[str], columns, config):
    """Yield ``(index, rows, buckets)`` of columns ``columns`` (indices into ``names``) on the hub's
    histogram grid, as :func:`fitsketch.quantize.quantize_column` gives them; plain numeric columns
    are bucketed as one matrix (one call instead of one per column: 784-pixel images). A column
    with no value is skipped."""
    from .quantize import numeric_keys, quantize_column, shared_tokens

    columns = list(columns)
    fast = [j for j in columns if kinds[j] == "numeric" and (pd.api.types.is_numeric_dtype(df[names[j]])
                                                             or pd.api.types.is_bool_dtype(df[names[j]]))]
    n = len(df)
    if fast:
        X = df[[names[j] for j in fast]].to_numpy(dtype=np.float64, na_value=np.nan)   # (n, len(fast))
        keys = numeric_keys(X, config.hist_accuracy).astype(np.int32)
        allnan = np.isnan(X).all(axis=0)
        rows = np.arange(n, dtype=np.int64)
        for i, j in enumerate(fast):
            if not allnan[i]:
                yield j, rows, keys[:, i]
    slow = [j for j in columns if j not in set(fast)]
    with shared_tokens():
        for j in slow:
            try:
                col = quantize_column(names[j], df[names[j]], config, kinds[j])
            except E.EmptyColumnError:
                continue
            yield j, col.rows, col.hist


# ------------------------------------------------------------------------------ registration
def with_labels(data, labels, feature_names=None):
    """``(frame, labels)``: ``data`` read into a frame, and ``labels`` checked (a column's name is
    taken out of the frame)."""
    from .data import to_frame

    try:
        df = to_frame(data, feature_names)
    except (UnicodeEncodeError, EOFError) as e:   # lone surrogates, an empty .npy: named errors
        raise E.translate(e) from None
    if labels is None:
        return df, None
    if isinstance(labels, str):
        if labels not in df.columns:
            raise E.InvalidArgumentError(f"labels={labels!r} is not a column of the data: columns are {list(df.columns)}")
        labels, df = df[labels].to_numpy(), df.drop(columns=[labels])
        if df.shape[1] == 0:
            raise E.EmptyDataError("the data has no column besides the labels: give at least one feature")
    return df, check_labels(labels, len(df))


def class_record(df: pd.DataFrame, labels: np.ndarray, names: list[str], kinds: list[str], config) -> dict:
    """The class record of rows ``df`` (columns ``names`` of kinds ``kinds``) labelled ``labels``
    (from :func:`check_labels`), without performance (see :func:`performance`)."""
    classes = sorted(set(labels.tolist()))
    index = {c: i for i, c in enumerate(classes)}
    codes = np.fromiter((index[v] for v in labels), dtype=np.int64, count=len(labels))
    cls, feat, bucket, count = [], [], [], []
    for f, rows, hist in column_buckets(df, names, kinds, range(len(names)), config):
        key = codes[rows] * (1 << 32) + (hist.astype(np.int64) + (1 << 31))
        uniq, cnt = np.unique(key, return_counts=True)
        cls.append((uniq >> 32).astype(np.int32))
        bucket.append(((uniq & 0xFFFFFFFF) - (1 << 31)).astype(np.int32))
        feat.append(np.full(len(uniq), f, dtype=np.int32))
        count.append(cnt.astype(np.uint32))
    cat = lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt)  # noqa: E731
    return {"v": CLASSES_FORMAT, "labels": classes,
            "counts": np.bincount(codes, minlength=len(classes)).astype(np.int64),
            "cls": cat(cls, np.int32), "feat": cat(feat, np.int32), "bucket": cat(bucket, np.int32),
            "count": cat(count, np.uint32), "perf": None}


def merge_records(a: dict, b: dict) -> dict:
    """The class record of the rows of ``a`` and ``b`` (performance dropped: it is the model's)."""
    labels = sorted(set(a["labels"]) | set(b["labels"]), key=_sort_key)
    index = {c: i for i, c in enumerate(labels)}
    parts = []
    for r in (a, b):
        remap = np.array([index[c] for c in r["labels"]], dtype=np.int64)
        parts.append((remap[np.asarray(r["cls"], np.int64)], np.asarray(r["feat"], np.int64),
                      np.asarray(r["bucket"], np.int64), np.asarray(r["count"], np.int64)))
    cls, feat, bucket, count = (np.concatenate(x) for x in zip(*parts))
    key = (feat * (1 << 20) + cls) * (1 << 32) + (bucket + (1 << 31))
    uniq, inv = np.unique(key, return_inverse=True)
    summed = np.bincount(inv, weights=count.astype(np.float64), minlength=len(uniq)).astype(np.uint64)
    counts = np.zeros(len(labels), dtype=np.int64)
    for r in (a, b):
        for c, n in zip(r["labels"], r["counts"]):
            counts[index[c]] += int(n)
    return {"v": CLASSES_FORMAT, "labels": labels, "counts": counts,
            "cls": ((uniq >> 32) & ((1 << 20) - 1)).astype(np.int32), "feat": (uniq >> 52).astype(np.int32),
            "bucket": ((uniq & 0xFFFFFFFF) - (1 << 31)).astype(np.int32),
            "count": np.minimum(summed, np.iinfo(np.uint32).max).astype(np.uint32), "perf": None}


def _sort_key(v):
    return (isinstance(v, str), v)


def performance(rec: dict, *, model=None, validation=None, logit_labels=None, confusion=None,
                class_accuracy=None, columns: list[str], feature_names=None, kinds=None, config=None) -> dict:
    """The ``perf`` part of a class record: per-class recall of the entry's model and where it came from.

    With ``validation=`` and the entry's column ``kinds`` and hub ``config``, also the own-histogram
    proxy's hits on the validation rows per class (``proxy_hits`` / ``proxy_n``): the reference the
    query's proxy recall is compared with (:func:`shifted_recall`)."""
    train = list(rec["labels"])
    counts = dict(zip(train, (int(n) for n in rec["counts"])))
    given = [n for n, v in (("validation", validation), ("confusion", confusion),
                            ("class_accuracy", class_accuracy)) if v is not None]
    if len(given) > 1:
        raise E.InvalidArgumentError(f"give one of validation= (with model=), confusion= or class_accuracy=, not "
                                     f"{' and '.join(given)}")
    if validation is not None:
        if model is None:
            raise E.InvalidArgumentError("validation=(data, labels) is used to measure the model: pass model= too "
                                         "(a callable returning one row of logits per input row)")
        y_true, y_pred = _run_validation(model, validation, logit_labels, train, columns, feature_names)
        labels = sorted(set(train) | set(y_true.tolist()) | set(y_pred.tolist()), key=_sort_key)
        index = {c: i for i, c in enumerate(labels)}
        C = np.zeros((len(labels), len(labels)), dtype=np.int64)
        np.add.at(C, (np.fromiter((index[v] for v in y_true), np.int64, len(y_true)),
                      np.fromiter((index[v] for v in y_pred), np.int64, len(y_pred))), 1)
        perf = _perf_from_confusion(C, labels, counts, "validation")
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
    labels = list(train)
    recall = FALLBACK_RMAX * curve(np.array([counts[c] for c in labels], dtype=np.float64))
    return {"source": "fallback: class counts", "labels": labels, "recall": recall}


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
    return y_true, y_pred


def _match_kind(values: list, train: list) -> list:
    """``values`` converted to the kind of ``train`` labels (``"3"`` <-> ``3``), or LabelError."""
    if label_kind(train) == "str":
        return [str(v) for v in values]
    try:
        return [int(v) for v in values]
    except (TypeError, ValueError):
        raise E.LabelError(f"labels {values[:5]} are strings and the training labels are integers: use one "
                           "vocabulary") from None


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


def check_record(rec, n_features: int) -> dict:
    """A stored or received class record, validated (shapes, ranges, sortedness) or CorruptHubError."""
    ok = isinstance(rec, dict) and rec.get("v") == CLASSES_FORMAT and isinstance(rec.get("labels"), list)
    if ok:
        k = len(rec["labels"])
        arrs = [np.asarray(rec.get(x)) for x in ("cls", "feat", "bucket", "count")]
        ok = (2 <= k <= MAX_CLASSES and np.asarray(rec.get("counts")).shape == (k,)
              and len({a.shape for a in arrs}) == 1 and arrs[0].ndim == 1
              and (arrs[0].size == 0 or (arrs[0].min() >= 0 and arrs[0].max() < k
                                         and arrs[1].min() >= 0 and arrs[1].max() < n_features)))
    if not ok:
        raise E.CorruptHubError("an entry's class record is malformed: remove the entry and add it again")
    return rec


# ------------------------------------------------------------------------------ query
def query_buckets(frame: pd.DataFrame, names: list[str], kinds: list[str], columns: list[int], config):
    """``{target feature: (rows, buckets)}`` of the query's occurrences in the histogram grid; a
    column with no value is left out."""
    return {j: (rows, hist.astype(np.int64), kinds[j] != "text")   # text: several tokens a row
            for j, rows, hist in column_buckets(frame, names, kinds, columns, config)}


def pool(pooled: list, labels: list, names: list[str]) -> dict:
    """The candidates' class-conditional counts summed per (class, query column, bucket).

    ``pooled``: per candidate, ``(rec, {source feature: target feature})``; ``names``: the query's
    columns. The result names columns and classes, so pools of several hubs (shards) add up
    (:func:`merge_pools`) to the pool of one hub holding every entry."""
    index = {c: i for i, c in enumerate(labels)}
    cls, feat, bucket, count = [], [], [], []
    for rec, fmap in pooled:
        remap = np.array([index[c] for c in rec["labels"]], dtype=np.int64)
        f = np.asarray(rec["feat"], np.int64)
        fm = np.full(max(int(f.max()) + 1 if f.size else 0, max(fmap, default=-1) + 1), -1, dtype=np.int64)
        for sf, tj in fmap.items():
            fm[sf] = tj
        keep = fm[f] >= 0
        cls.append(remap[np.asarray(rec["cls"], np.int64)[keep]])
        feat.append(fm[f[keep]])
        bucket.append(np.asarray(rec["bucket"], np.int64)[keep])
        count.append(np.asarray(rec["count"], np.float64)[keep])
    cat = lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt)  # noqa: E731
    return _aggregate(labels, list(names), cat(cls, np.int64), cat(feat, np.int64), cat(bucket, np.int64),
                      cat(count, np.float64), len(pooled))


def _aggregate(labels, columns, cls, col, bucket, count, entries: int) -> dict:
    key = (col * (1 << 20) + cls) * (1 << 33) + (bucket + (1 << 32))
    uniq, inv = np.unique(key, return_inverse=True)
    summed = np.bincount(inv, weights=count, minlength=len(uniq))
    return {"labels": list(labels), "columns": columns, "col": (uniq >> 53).astype(np.int32),
            "cls": ((uniq >> 33) & ((1 << 20) - 1)).astype(np.int32),
            "bucket": ((uniq & ((1 << 33) - 1)) - (1 << 32)).astype(np.int32), "count": summed,
            "entries": int(entries)}


def merge_pools(pools: list[dict]) -> dict:
    """The sum of several :func:`pool` results (e.g. one per shard), over the union of their
    classes and columns, in the canonical order one hub would give."""
    labels = sorted({c for p in pools for c in p["labels"]}, key=_sort_key)
    columns = sorted({c for p in pools for c in p["columns"]})
    li = {c: i for i, c in enumerate(labels)}
    ci = {c: i for i, c in enumerate(columns)}
    parts = [(np.array([li[c] for c in p["labels"]], np.int64)[np.asarray(p["cls"], np.int64)],
              np.array([ci[c] for c in p["columns"]], np.int64)[np.asarray(p["col"], np.int64)],
              np.asarray(p["bucket"], np.int64), np.asarray(p["count"], np.float64))
             for p in pools if len(p["cls"])]
    if not parts:
        return {"labels": labels, "columns": columns, "col": np.zeros(0, np.int32), "cls": np.zeros(0, np.int32),
                "bucket": np.zeros(0, np.int32), "count": np.zeros(0), "entries": sum(p["entries"] for p in pools)}
    cls, col, bucket, count = (np.concatenate(x) for x in zip(*parts))
    return _aggregate(labels, columns, cls, col, bucket, count, sum(int(p["entries"]) for p in pools))


def check_pool(p) -> dict:
    """A class pool received from outside (a shard's answer), validated."""
    ok = isinstance(p, dict) and isinstance(p.get("labels"), list) and isinstance(p.get("columns"), list) \
        and all(isinstance(c, str) for c in p["columns"]) and isinstance(p.get("entries"), int)
    if ok:
        arrs = [np.asarray(p.get(x)) for x in ("col", "cls", "bucket", "count")]
        ok = len({a.shape for a in arrs}) == 1 and arrs[0].ndim == 1 and len(p["labels"]) <= MAX_CLASSES * 64 \
            and (arrs[0].size == 0 or (arrs[0].min() >= 0 and arrs[0].max() < len(p["columns"])
                                       and arrs[1].min() >= 0 and arrs[1].max() < len(p["labels"])
                                       and np.isfinite(arrs[3]).all() and arrs[3].min() >= 0))
    if not ok:
        raise E.InvalidArgumentError("class_pool is malformed: pass what hub.class_pool(...) returned")
    p = dict(p)
    p["labels"] = canonical(np.array(p["labels"], dtype=object), "class_pool labels").tolist() if p["labels"] else []
    return p


def loglik(qb: dict, n_rows: int, pl: dict, names: list[str], temperature: float | None) -> np.ndarray:
    """(n_rows, n_classes) ``log p(x_i | c)`` / (temperature x effective features) under naive
    Bayes over the pooled class-conditional histograms ``pl`` (smoothed towards the pooled
    all-class one). A column counts ``1 - (its most common bucket's share)`` towards the effective
    features: dividing by the plain column count over-flattened MNIST's 784 pixels, most of them
    blank (digits seeds 0-1 chose the temperature, MNIST seed 0 showed the plain count failing).
    ``temperature=None``: the untempered naive-Bayes log-likelihood.

    Per column ``j`` with vocabulary ``V_j`` (the pool's buckets and the query's): the all-class
    ``q_j(b) = (M_jb + 1) / (N_j + V_j)`` and ``P_j(b | c) = (N_jcb + SMOOTHING q_j(b)) / (N_jc +
    SMOOTHING)``. Computed for the query's distinct (column, bucket) pairs only, then summed over
    each row's occurrences as one sparse product (tests/test_accuracy_shift.py checks it against a
    per-column loop)."""
    from scipy import sparse

    K = len(pl["labels"])
    ncol = len(pl["columns"])
    ll = np.zeros((n_rows, K))
    col_of = {c: i for i, c in enumerate(pl["columns"])}
    col = np.asarray(pl["col"], np.int64)
    cls = np.asarray(pl["cls"], np.int64)
    bucket = np.asarray(pl["bucket"], np.int64)
    count = np.asarray(pl["count"], np.float64)
    has = np.bincount(col, minlength=ncol) > 0
    R, Q = [], []
    for j, (rows, qbk, _) in qb.items():
        c = col_of.get(names[j])
        if c is None or not has[c] or len(rows) == 0:
            continue
        R.append(np.asarray(rows, np.int64))
        Q.append(c * (1 << 33) + (np.asarray(qbk, np.int64) + (1 << 32)))
    if not R:
        return ll
    rows, qkey = np.concatenate(R), np.concatenate(Q)
    uq, qinv = np.unique(qkey, return_inverse=True)                        # the query's (column, bucket)s
    ucol, ub = uq >> 33, (uq & ((1 << 33) - 1)) - (1 << 32)
    pkey = col * (1 << 33) + (bucket + (1 << 32))                         # the pool's (column, bucket)s
    pu, pinv = np.unique(pkey, return_inverse=True)
    M = np.bincount(pinv, weights=count, minlength=len(pu))               # all-class count per (column, bucket)
    V = np.bincount(np.union1d(pu, uq) >> 33, minlength=ncol).astype(np.float64)
    Ntot = np.bincount(col, weights=count, minlength=ncol)
    Nc = np.bincount(col * K + cls, weights=count, minlength=ncol * K).reshape(ncol, K)
    pos = np.minimum(np.searchsorted(pu, uq), len(pu) - 1)
    Mu = np.where(pu[pos] == uq, M[pos], 0.0)
    q = (Mu + 1.0) / (Ntot[ucol] + V[ucol])                                # (U,)
    fkey = (col * (1 << 20) + cls) * (1 << 33) + (bucket + (1 << 32))    # sorted: the pool's own order
    order = np.argsort(fkey, kind="stable")
    fkey, fcount = fkey[order], count[order]
    want = (ucol[:, None] * (1 << 20) + np.arange(K)[None, :]) * (1 << 33) + (ub[:, None] + (1 << 32))
    fpos = np.minimum(np.searchsorted(fkey, want), len(fkey) - 1)
    N = np.where(fkey[fpos] == want, fcount[fpos], 0.0)                    # (U, K)
    logP = np.log((N + SMOOTHING * q[:, None]) / (Nc[ucol] + SMOOTHING))   # (U, K)
    S = sparse.csr_matrix((np.ones(len(rows)), (rows, qinv)), shape=(n_rows, len(uq)))
    ll = np.asarray(S @ logP)
    if temperature is None:
        return ll
    # effective features: the query's columns that the pool has, each 1 - max_b q_j(b)
    used = np.unique(ucol)
    Mmax = np.zeros(ncol)
    np.maximum.at(Mmax, pu >> 33, M)
    effective = float(np.sum(1.0 - (Mmax[used] + 1.0) / (Ntot[used] + V[used])))
    return ll / (temperature * max(effective, 1e-3))


def pooled_loglik(qb: dict, n_rows: int, pooled: list, labels: list, temperature: float | None,
                  names: list[str] | None = None) -> np.ndarray:
    """:func:`loglik` over the :func:`pool` of ``pooled``."""
    names = names or [str(j) for j in range(max(qb, default=-1) + 1)]
    return loglik(qb, n_rows, pool(pooled, labels, names), names, temperature)


def em_mixture(ll: np.ndarray, pi0: np.ndarray | None = None, iters: int = EM_ITERS) -> np.ndarray:
    """Saerens et al.'s EM: the class mixture maximizing the likelihood of rows with class
    log-likelihoods ``ll`` (n, K)."""
    n, K = ll.shape
    pi = np.full(K, 1.0 / K) if pi0 is None else pi0.copy()
    if n == 0:
        return pi
    L = np.exp(ll - ll.max(axis=1, keepdims=True))                 # (n, K), row max 1
    for _ in range(iters):
        w = L * pi
        w /= w.sum(axis=1, keepdims=True)
        new = w.mean(axis=0)
        if np.abs(new - pi).max() < EM_TOL:
            pi = new
            break
        pi = new
    return pi


def recall_vector(perf: dict, labels: list, key: str = "recall") -> np.ndarray:
    r = dict(zip(perf["labels"], np.asarray(perf[key], dtype=np.float64)))
    return np.array([r.get(c, 0.0) for c in labels])


def own_predictions(qb: dict, n_rows: int, rec: dict, fmap: dict, labels: list, names: list[str]) -> np.ndarray:
    """(n_rows,) index into ``labels`` of the class each query row gets from the proxy of one
    candidate: naive Bayes over the candidate's own class histograms (``rec`` mapped by ``fmap``
    {source feature: query feature}), tempered by ``PROXY_TEMPERATURE``, plus the log of its
    training class shares; only classes the candidate saw can be given."""
    pl = pool([(rec, fmap)], labels, names)
    ll = loglik(qb, n_rows, pl, names, PROXY_TEMPERATURE)
    n = _counts(rec, labels)
    with np.errstate(divide="ignore"):
        score = ll + np.log(n / max(n.sum(), 1.0))
    score[:, n <= 0] = -np.inf
    return score.argmax(axis=1).astype(np.int64) if n_rows else np.zeros(0, np.int64)


def _counts(rec: dict, labels: list) -> np.ndarray:
    d = dict(zip(rec["labels"], (float(v) for v in rec["counts"])))
    return np.array([d.get(c, 0.0) for c in labels])


def responsibilities(ll: np.ndarray, pi: np.ndarray) -> np.ndarray:
    """(n, K) posterior class probabilities of the rows under mixture ``pi``."""
    with np.errstate(divide="ignore"):
        a = ll + np.log(pi)
    w = np.exp(a - a.max(axis=1, keepdims=True))
    return w / w.sum(axis=1, keepdims=True)


def _logit(x):
    x = np.clip(x, 1e-3, 1 - 1e-3)
    return np.log(x / (1 - x))


class _Model:
    """One candidate's per-class numbers over ``labels`` for :func:`shifted_recall`."""

    def __init__(self, perf: dict, rec: dict | None, labels: list):
        self.base = recall_vector(perf, labels)
        self.given = perf["source"] == "class_accuracy" or rec is None
        if self.given:
            return
        self.n = _counts(rec, labels)
        C = perf.get("confusion")
        if C is not None:
            C = np.asarray(C, dtype=np.float64)
            self.diag = recall_vector({"labels": perf["labels"], "d": np.diag(C)}, labels, "d")
            self.n_val = recall_vector({"labels": perf["labels"], "d": C.sum(axis=1)}, labels, "d")
            self.r_max = float(perf.get("validation_accuracy", FALLBACK_RMAX))
        else:                       # the count fallback: no validation rows
            self.diag = self.n_val = np.zeros(len(labels))
            self.r_max = FALLBACK_RMAX
        self.pv = None
        if "proxy_hits" in perf:
            hits = recall_vector({"labels": perf["labels"], "d": perf["proxy_hits"]}, labels, "d")
            self.pv_n = recall_vector({"labels": perf["labels"], "d": perf["proxy_n"]}, labels, "d")
            self.pv = (hits + 1.0) / (self.pv_n + 2.0)


def shifted_recall(m: _Model, pred: np.ndarray | None, w: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """``(recall, shift)`` per class of one candidate on the query rows: the validation recall
    shrunk towards a prior that mixes the learning curve with the candidate's own-histogram proxy
    recall on the rows EM assigns to the class, times the covariate-shift factor ``shift`` =
    sqrt(min(1, proxy recall on the query / proxy recall on the validation rows)) for classes with
    ``SHIFT_MIN_VAL`` validation rows (1 elsewhere; a class whose query rows the candidate's training
    rows of it do not cover loses recall even when validation measured it well).

    ``pred`` None (no query rows, e.g. a given mixture) or a ``class_accuracy=`` performance: the
    stored recalls, shift 1."""
    if m.given or pred is None or w is None or len(pred) == 0:
        return m.base, np.ones(len(m.base))
    K = w.shape[1]
    mass = w.sum(axis=0)
    hit = np.bincount(pred, weights=w[np.arange(len(pred)), pred], minlength=K)
    pr = hit / np.maximum(mass, 1e-12)
    prior = m.r_max * curve(m.n)
    ok = (mass > PROXY_MIN_MASS) & (m.n > 0)
    r0 = np.where(ok, 1.0 / (1.0 + np.exp(-(PROXY_WEIGHT * _logit(pr) + (1 - PROXY_WEIGHT) * _logit(prior)))), prior)
    r = (m.diag + RECALL_PSEUDO * r0) / (m.n_val + RECALL_PSEUDO)
    shift = np.ones(K)
    if m.pv is not None:
        use = ok & (m.pv_n >= SHIFT_MIN_VAL)
        shift = np.where(use, np.sqrt(np.minimum(1.0, (pr + 0.02) / (m.pv + 0.02))), 1.0)
    return r * shift, shift


def estimate(ll: np.ndarray, labels: list, perfs: list, *, mixture=None, bootstrap: int = 0, seed: int = 0,
             proxies: list | None = None, records: list | None = None,
             details: dict | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(pi, acc, interval)``: the query's class mixture, each model's predicted accuracy
    (``perfs[i]`` -> ``acc[i]``) and the (len(perfs), 2) 5-95 % bootstrap interval (None without).

    ``proxies[i]`` (from :func:`own_predictions`) with ``records[i]`` (the class record): recalls
    from :func:`shifted_recall`; without them, the stored recalls. ``details`` (a dict) receives
    per model its ``recall`` vector and ``shift``: predicted accuracy over what the stored recalls
    alone give (1 = no correction)."""
    models = [_Model(p, None if records is None else records[i], labels) for i, p in enumerate(perfs)]
    # one dot product per model (not R @ pi): a model's score must not depend on which other
    # models share the call (a shard holds some of them; BLAS sums a matrix product in blocks)

    def times(pi, idx=None):
        w = responsibilities(ll if idx is None else ll[idx], pi) if proxies is not None and ll.shape[0] else None
        out, recalls = [], []
        for i, m in enumerate(models):
            pred = None if proxies is None else (proxies[i] if idx is None else proxies[i][idx])
            r, _ = shifted_recall(m, pred, w)
            recalls.append(r)
            out.append(np.dot(r, pi))
        return np.array(out), recalls

    if mixture is not None:
        pi = mixture
        acc, recalls = times(pi)
        interval = None
    else:
        pi = em_mixture(ll)
        acc, recalls = times(pi)
        interval = None
        if bootstrap > 0 and ll.shape[0] >= 2:
            rng = np.random.default_rng(seed)
            accs = np.empty((bootstrap, len(perfs)))
            for b in range(bootstrap):
                idx = rng.integers(0, ll.shape[0], ll.shape[0])
                accs[b] = times(em_mixture(ll[idx], pi, iters=60), idx)[0]
            interval = np.stack([np.quantile(accs, 0.05, axis=0), np.quantile(accs, 0.95, axis=0)], axis=1)
    if details is not None:
        details["recall"] = recalls
        details["shift"] = [float(a / np.dot(m.base, pi)) if np.dot(m.base, pi) > 0 else 1.0
                            for a, m in zip(acc, models)]
    return pi, acc, interval


def screen(txn, target, config, temperature: float, n_keep: int, kept: set) -> tuple[set, dict]:
    """The candidate stage of ``method="accuracy"`` (and ``auto``) on a large hub: every labelled
    entry that has some of the query's columns (by name) is ranked by its predicted accuracy from
    its *stored* recalls times the query's class mixture (EM over the class histograms of all of
    them, pooled), as one matrix product; the ``n_keep`` best are kept, ties included. ``kept``
    (the exact-js screen's choice) contributes its unlabelled entries (``auto`` ranks them after
    the labelled ones). An entry whose class record is damaged is kept, so the scorer names it.

    Returns ``(keys, info)``; ``info["class_pool"]``, the pool of every labelled entry, is what the
    scorer then estimates the mixture from (as without the stage), so a kept entry scores as it
    would with every entry scored. bench.bench_accuracy --screen measures what the stage loses."""
    from .storage import u64

    frame = getattr(target, "frame", None)
    col_of = {n: j for j, n in enumerate(target.names)}
    entries, keep = [], set()
    for key in txn.keys("entries"):
        rec = txn.get("entries", key)
        if not rec or not rec.get("labelled"):
            continue
        fmap = {sf: col_of[n] for sf, n in enumerate(rec.get("features") or []) if n in col_of}
        if not fmap:
            continue
        try:
            cl = check_record((txn.get("extra", u64(rec["id"])) or {}).get("classes"), len(rec["features"]))
        except E.CorruptHubError:
            keep.add(key)
            continue
        entries.append((key, cl, fmap))
    unlabelled = {k for k in kept if (txn.get("entries", k) or {}).get("labelled") is not True}
    info = {"labelled": len(entries)}
    if not entries or frame is None:
        return set(kept) | keep, info
    labels = sorted({c for _, cl, _ in entries for c in cl["labels"]}, key=_sort_key)
    pl = merge_pools([pool([(cl, fmap) for _, cl, fmap in entries], labels, target.names)])
    used = sorted({j for j, n in enumerate(target.names) if n in set(pl["columns"])})
    qb = query_buckets(frame, target.names, target.kinds, used, config)
    pi = em_mixture(loglik(qb, len(frame), pl, target.names, temperature))
    score = np.stack([recall_vector(cl["perf"], labels) for _, cl, _ in entries]) @ pi
    cut = np.sort(score)[::-1][min(n_keep, len(score)) - 1] if n_keep > 0 else np.inf
    keep |= {key for (key, _, _), v in zip(entries, score) if v >= cut - 1e-12}
    info.update(kept_labelled=len(keep), unlabelled=len(unlabelled), class_pool=pl)
    return keep | unlabelled, info


def check_mixture(mixture, labels: list) -> np.ndarray:
    """A user's ``mixture={label: share}`` as a distribution over ``labels``."""
    if not isinstance(mixture, dict) or not mixture:
        raise E.InvalidArgumentError("mixture must be a dict {label: share of the query's rows}")
    keys = canonical(np.array(list(mixture), dtype=object), "mixture labels").tolist()
    vals = np.array([float(v) if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
                     else np.nan for v in mixture.values()])
    if not np.isfinite(vals).all() or (vals < 0).any() or vals.sum() <= 0:
        raise E.InvalidArgumentError("mixture shares must be numbers >= 0 with a positive sum")
    if labels and label_kind(keys) != label_kind(labels):
        keys = _match_kind(keys, labels)
    d = dict(zip(keys, vals / vals.sum()))
    return np.array([d.get(c, 0.0) for c in labels])
