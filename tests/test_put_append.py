"""``Txn.put_raw(append=True)`` (engine/parts.py ``_put``: per-entry records appended where their key
is the database's last, so LMDB leaves full pages full): on fresh random keys in random order (with
repeats, ascending runs, one key, none) it stores exactly what ``put_raw`` stores -- every key's last
value, nothing else -- and ``overwrite=False`` still refuses an existing key."""
from __future__ import annotations

import pytest

from fitsketch.storage import HubStore


@pytest.mark.parametrize("n", [0, 1, 2, 37, 600])
def test_append_stores_what_put_stores(tmp_path, rng, n):
    keys = [int(k).to_bytes(8, "big")[int(rng.integers(0, 8)):] for k in rng.integers(0, 50 if n < 100 else 1 << 20, n)]
    if n > 2:
        keys[: n // 2] = sorted(keys[: n // 2])           # an ascending run: appended
    vals = [rng.bytes(int(rng.integers(0, 3000))) for _ in keys]
    with HubStore(tmp_path / "a") as a, HubStore(tmp_path / "b") as b:
        a.transact(lambda t: [t.put_raw("entries", k, v, append=True) for k, v in zip(keys, vals)])
        b.transact(lambda t: [t.put_raw("entries", k, v) for k, v in zip(keys, vals)])
        with a.read() as ta, b.read() as tb:
            got = [(k, ta.get_raw("entries", k)) for k in ta.keys("entries")]
            assert got == [(k, tb.get_raw("entries", k)) for k in tb.keys("entries")]
        assert dict(got) == dict(zip(keys, vals))             # the last value of each key
        if keys:
            k = keys[int(rng.integers(0, n))]
            assert a.transact(lambda t: t.put_raw("entries", k, b"x", overwrite=False, append=True)) is False
            with a.read() as ta:
                assert ta.get_raw("entries", k) == dict(zip(keys, vals))[k]
