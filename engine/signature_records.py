"""The stored form of an entry's MinHash signatures (database ``signatures``), lossless.

An entry's signatures are a ``(features, num_perm)`` uint32 matrix. Its columns (one a
permutation) repeat few values: the minimum of a permutation over a column's tokens is often the
same token's hash in several columns (columns of one distribution, or merged partitions sharing
rows): on 32 real-valued normal columns ~2 distinct values a permutation, on the ``scale`` suite's
merged sketches 8-16. So a record holds either the matrix as it is (format 1) or, when that packs
into fewer bytes, each permutation's distinct values and every feature's index into them
(format 2, a per-permutation dictionary):

    sn[j]      number of distinct values of permutation j                    (num_perm,)
    sd         the distinct values of permutation 0, then 1, ..., ascending  (sum(sn),) uint32
    si[j, f]   index of sig[f, j] among permutation j's values               (num_perm, features)

so that ``sig[f, j] = sd[offset[j] + si[j, f]]`` with ``offset`` the exclusive cumulative sum of
``sn`` (``si`` is permutation-major: a permutation's indices lie together, which packs ~15% smaller
on real-valued data). Both are packed by engine/parts.py ``fit_pack`` (arrays compressed where that
is smaller) and the fewer bytes are kept; ``decode`` of either gives the same matrix, byte for byte.
Written since hub format 5 (storage/env.py): an older fitsketch refuses the hub at open.
"""
from __future__ import annotations

import numpy as np

from . import errors as E
from .kernels import ingest as _ingest
from .partitions import _LIMITS, _narrow

SIG_PLAIN = 1        # {"v": 1, "sig"}: the matrix as it is (engine/parts.py ENTRY_FORMAT, every hub)
SIG_DICT = 2         # {"v": 2, "sn", "sd", "si"}: per-permutation dictionary (hub format 5)
SIG_FORMAT = 2       # = SIG_DICT: the newest record format this fitsketch writes (storage/schema.py)


def plain(sig: np.ndarray) -> dict:
    """The format-1 record of ``sig``."""
    return {"v": SIG_PLAIN, "sig": sig}


def dictionary(sig: np.ndarray) -> dict:
    """The format-2 record of ``sig`` (``(features, num_perm)`` uint32; module docstring)."""
    sig = np.asarray(sig, dtype=np.uint32)
    if sig.ndim != 2:
        raise ValueError(f"signatures must be a (features, num_perm) matrix, got shape {sig.shape}")
    got = _ingest.sig_dictionary(sig)      # compiled (kernels/ingest.py): 32 x 128 in ~0.025 ms, not ~0.18, without the GIL
    if got is None:
        return _dictionary_numpy(sig)
    sn, sd, si, top = got
    return {"v": SIG_DICT, "sn": _narrowed(sn, top), "sd": sd, "si": _narrowed(si, top - 1 if si.size else 0)}


def _dictionary_numpy(sig: np.ndarray) -> dict:
    """``dictionary`` in NumPy: the definition (the compiled pass gives the same arrays, dtypes and
    packed bytes; tests/test_signature_records.py)."""
    n_f, n_p = sig.shape
    # each permutation's values tagged with the permutation in the high 32 bits: one sort for all
    tagged = (np.arange(n_p, dtype=np.uint64)[:, None] << np.uint64(32)) | sig.T.astype(np.uint64)   # (num_perm, features)
    uniq, inv = np.unique(tagged.reshape(-1), return_inverse=True)
    sn = np.bincount((uniq >> np.uint64(32)).astype(np.int64), minlength=n_p)
    off = np.cumsum(sn) - sn
    si = inv.reshape(n_p, n_f) - off[:, None]
    return {"v": SIG_DICT, "sn": _narrow(sn, False), "sd": (uniq & np.uint64(0xFFFFFFFF)).astype(np.uint32),
            "si": _narrow(si.reshape(-1), False).reshape(n_p, n_f)}


def _narrowed(a: np.ndarray, hi: int) -> np.ndarray:
    """``_narrow(a, False)`` of unsigned ``a`` whose largest value is ``hi`` (0 when ``a`` is empty)."""
    for t, _, t_hi in _LIMITS[False]:
        if hi <= t_hi:
            return a if a.dtype == t else a.astype(t)
    raise ValueError("value out of range")  # pragma: no cover


_FIX = ("the hub's signatures database is damaged: remove the entry (hub.remove(name)) and add it again, "
        "or restore the hub from a backup")


def _corrupt(what: str) -> E.CorruptHubError:
    return E.CorruptHubError(f"a signature record {what}; {_FIX}")


def _int_array(rec: dict, field: str, ndim: int) -> np.ndarray:
    a = rec[field]
    if not isinstance(a, np.ndarray) or a.dtype.kind not in "iu" or a.ndim != ndim:
        raise _corrupt(f"has field {field!r} of {type(a).__qualname__} "
                       f"{getattr(a, 'dtype', '')}{getattr(a, 'shape', '')}, expected a {ndim}-D integer array")
    return a


def decode(rec: dict, shape: tuple[int, int] | None = None) -> np.ndarray:
    """The ``(features, num_perm)`` uint32 signatures of a stored record of either format.

    ``shape``: the ``(features, num_perm)`` the entry's record says it has, checked where given. A
    record of a known format whose fields are missing, of the wrong kind or inconsistent raises
    ``CorruptHubError``; one of an unknown format ``SchemaError``."""
    v = rec.get("v") if isinstance(rec, dict) else None
    if v == SIG_PLAIN:
        if "sig" not in rec:
            raise _corrupt("of format 1 lacks its field 'sig'")
        sig = _int_array(rec, "sig", 2)
        if sig.dtype != np.uint32:
            raise _corrupt(f"of format 1 holds {sig.dtype} values, expected uint32")
    elif v == SIG_DICT:
        missing = [f for f in ("sn", "sd", "si") if f not in rec]
        if missing:
            raise _corrupt(f"of format 2 lacks its fields {missing}")
        sn, sd, si = _int_array(rec, "sn", 1), _int_array(rec, "sd", 1), _int_array(rec, "si", 2)
        if len(sn) != si.shape[0]:
            raise _corrupt(f"has {len(sn)} dictionary sizes for {si.shape[0]} permutations of indices")
        if len(sn) and (int(sn.min()) < 0 or int(sn.max()) > len(sd)):
            raise _corrupt(f"has dictionary sizes outside 0..{len(sd)}")
        sn = sn.astype(np.int64)
        if int(sn.sum()) != len(sd):
            raise _corrupt(f"has dictionary sizes summing to {int(sn.sum())} for {len(sd)} values")
        if len(sd) and (int(sd.min()) < 0 or int(sd.max()) > 0xFFFFFFFF):
            raise _corrupt("has dictionary values outside 0..0xFFFFFFFF")
        if si.size and (int(si.min()) < 0 or np.any(si >= sn[:, None])):
            raise _corrupt("has indices beyond their permutation's dictionary")
        if shape is not None and si.shape != (shape[1], shape[0]):
            raise _corrupt(f"holds {si.shape[1]} features x {si.shape[0]} permutations, its entry "
                           f"{shape[0]} x {shape[1]}")
        off = np.cumsum(sn) - sn
        return np.ascontiguousarray(sd.astype(np.uint32)[off[:, None] + si.astype(np.int64)].T)
    else:
        raise E.SchemaError(f"a signature record has format {v!r}; this fitsketch reads {SIG_PLAIN} and {SIG_DICT}: "
                            "upgrade fitsketch")
    if shape is not None and sig.shape != tuple(shape):
        raise _corrupt(f"holds {sig.shape[0]} features x {sig.shape[1]} permutations, its entry {shape[0]} x {shape[1]}")
    return sig
