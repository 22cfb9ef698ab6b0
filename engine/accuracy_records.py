"""Class records of predicted accuracy (engine/accuracy.py): labels checked and made canonical,
the per-class histograms an entry stores at registration (:func:`class_record`), their merge and
validation when read back."""
from __future__ import annotations

import numpy as np
import pandas as pd

from . import errors as E

CLASSES_FORMAT = 1
MAX_CLASSES = 4096          # classes per entry; a label vocabulary larger than this is refused


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


def _sort_key(v):
    return (isinstance(v, str), v)


def _match_kind(values: list, train: list) -> list:
    """``values`` converted to the kind of ``train`` labels (``"3"`` <-> ``3``), or LabelError."""
    if label_kind(train) == "str":
        return [str(v) for v in values]
    try:
        return [int(v) for v in values]
    except (TypeError, ValueError):
        raise E.LabelError(f"labels {values[:5]} are strings and the training labels are integers: use one "
                           "vocabulary") from None


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
    out = {"v": CLASSES_FORMAT, "labels": classes,
           "counts": np.bincount(codes, minlength=len(classes)).astype(np.int64),
           "cls": cat(cls, np.int32), "feat": cat(feat, np.int32), "bucket": cat(bucket, np.int32),
           "count": cat(count, np.uint32), "perf": None}
    from .accuracy_gauss import gauss_part

    g, why = gauss_part(df, codes, len(classes), names, kinds)   # optional (accuracy_gauss.py)
    if g is not None:
        out["gauss"] = g
    elif why is not None:
        out["gauss_why"] = why   # told in the evidence when the query falls back to naive Bayes
    return out


def grouped_sum(a: np.ndarray, b: np.ndarray, c: np.ndarray, c_bits: int, weights: np.ndarray) -> tuple:
    """``(ua, ub, uc, summed)``: the distinct triples of non-negative int64 ``(a, b, c)`` (``c`` below
    2^``c_bits``) in lexicographic order, and ``weights`` summed per triple in input order. One int64
    key, each field as wide as its largest value needs, numbered by a hash table (``pandas.factorize``,
    its few distinct keys then sorted; a sort of 25M keys was ~3 s a query); where the fields do not
    fit 63 bits (a fixed split once wrapped at 1,024 columns), the rows themselves are sorted."""
    a, b, c = (np.asarray(x, np.int64) for x in (a, b, c))
    wa = max(int(a.max()).bit_length() if a.size else 0, 1)
    wb = max(int(b.max()).bit_length() if b.size else 0, 1)
    if wa + wb + c_bits <= 63:
        inv, uniq = pd.factorize(((a << wb) | b) << c_bits | c, sort=True)
        uniq = np.asarray(uniq, dtype=np.int64)
        ua, ub, uc = uniq >> (c_bits + wb), (uniq >> c_bits) & ((1 << wb) - 1), uniq & ((1 << c_bits) - 1)
    else:
        rows, inv = np.unique(np.stack([a, b, c], axis=1).reshape(-1, 3), axis=0, return_inverse=True)
        inv = inv.reshape(-1)
        ua, ub, uc = rows[:, 0], rows[:, 1], rows[:, 2]
    return ua, ub, uc, np.bincount(inv, weights=np.asarray(weights, np.float64), minlength=len(ua))


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
    u_feat, u_cls, u_b, summed = grouped_sum(feat, cls, bucket + (1 << 31), 32, count)
    summed = summed.astype(np.uint64)
    counts = np.zeros(len(labels), dtype=np.int64)
    for r in (a, b):
        for c, n in zip(r["labels"], r["counts"]):
            counts[index[c]] += int(n)
    out = {"v": CLASSES_FORMAT, "labels": labels, "counts": counts,
           "cls": u_cls.astype(np.int32), "feat": u_feat.astype(np.int32),
           "bucket": (u_b - (1 << 31)).astype(np.int32),
           "count": np.minimum(summed, np.iinfo(np.uint32).max).astype(np.uint32), "perf": None}
    from .accuracy_gauss import merge_gauss

    g, why = merge_gauss(a, b)   # None (dropped: naive Bayes for this entry) unless both carry one over the same columns
    if g is not None:
        out["gauss"] = g
    elif why is not None:
        out["gauss_why"] = why
    elif a.get("gauss_why") is not None or b.get("gauss_why") is not None:
        out["gauss_why"] = a.get("gauss_why") if a.get("gauss_why") is not None else b.get("gauss_why")
    return out


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
    perf = rec.get("perf")
    if perf is not None:
        _check_perf(perf)
    from .accuracy_gauss import MAX_WHY, check_gauss

    if rec.get("gauss") is not None:   # optional (accuracy_gauss.py); absent from records written before
        check_gauss(rec["gauss"], k, n_features)
    why = rec.get("gauss_why")         # optional: why the entry has no class Gaussian (a short text)
    if why is not None and not (isinstance(why, str) and len(why) <= MAX_WHY):
        raise E.CorruptHubError("an entry's class record holds a malformed 'gauss_why' (a text of at most "
                                f"{MAX_WHY} characters): remove the entry and add it again")
    return rec


def _check_perf(perf) -> None:
    """A stored performance record (accuracy_perf.performance), its fields the scorer reads validated:
    ``source`` a short text, ``labels`` a list, ``recall`` finite in [0, 1] a label, an optional
    ``confusion`` (labels x labels) of finite counts >= 0, ``validation_accuracy`` in [0, 1] and the
    optional ``true_class_prob`` / ``validation_in_training``."""
    ok = (isinstance(perf, dict) and isinstance(perf.get("source"), str) and len(perf["source"]) <= 200
          and isinstance(perf.get("labels"), list) and len(perf["labels"]) >= 1)
    if ok:
        k = len(perf["labels"])
        try:
            r = np.asarray(perf.get("recall"), dtype=np.float64)
            ok = r.shape == (k,) and bool(np.all((r >= 0) & (r <= 1)))
            if ok and perf.get("confusion") is not None:
                c = np.asarray(perf["confusion"], dtype=np.float64)
                ok = c.shape == (k, k) and bool(np.all(np.isfinite(c) & (c >= 0)))
            va = perf.get("validation_accuracy")
            if ok and va is not None:
                ok = not isinstance(va, bool) and isinstance(va, (int, float, np.integer, np.floating)) \
                    and 0.0 <= float(va) <= 1.0
        except (TypeError, ValueError):
            ok = False
    if not ok:
        raise E.CorruptHubError("an entry's performance record (source, labels, recall, confusion) is malformed: "
                                "remove the entry and add it again")
    stored_true_class_prob(perf)
    validation_in_training(perf)


def stored_true_class_prob(perf: dict) -> float | None:
    """The stored mean probability the model gave the true class on its validation rows (optional),
    validated, or CorruptHubError."""
    if "true_class_prob" not in perf:
        return None
    p = perf["true_class_prob"]
    if isinstance(p, bool) or not isinstance(p, (int, float, np.integer, np.floating)) \
            or not np.isfinite(p) or not 0.0 <= float(p) <= 1.0:
        raise E.CorruptHubError("an entry's class record holds a malformed true_class_prob: remove the entry "
                                "and add it again")
    return float(p)


def validation_in_training(perf: dict) -> int | None:
    """The stored number of validation rows left out because they were training rows
    (accuracy_perf.held_out; optional: absent from records written before, or without
    ``validation=``), validated, or CorruptHubError."""
    n = perf.get("validation_in_training")
    if n is None:
        return None
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 0 <= int(n) < 1 << 62:
        raise E.CorruptHubError("an entry's class record holds a malformed validation_in_training: remove the entry "
                                "and add it again")
    return int(n)
