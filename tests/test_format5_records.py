"""Issue 21 item 3 (32 KB per entry), hub format 5: (1) the dataset-level screen record is derived
(engine/screen.py ``record`` of the histograms and the entry record), so an add stores none (3-4 KB,
a 4 KiB overflow page an entry); the screen index computes it when it loads the entry
(``screen.records``, a batch at a time) and keeps it in its index file; (2) the profile and profile
keys records live in databases ``profiles`` / ``profile_keys`` keyed by the entry id (were ``extra``
``b"p"`` / ``b"k"`` + id), so adds append them and their leaf pages are left full.

Checked against a format-4 hub written by the old encoder (the screen and profile parts as they
were, plain signature records, format 4 at creation) from the same fresh random sketches (odd
sizes, one row, merged, a categorical column): it opens read-only as it is (without the new
databases); the screen index holds the same arrays, bit for bit, whether read from stored records or
computed, from LMDB or from its file, after the old hub's upgrade and adds (entries of both kinds in
one hub) and after removals; the profile index holds the same ids and vectors; every method answers
alike; entries added in a process whose index is already loaded are found (the range scan is over
``entries``); removal leaves no record of either kind."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

import fitsketch
import fitsketch.storage.env as env_mod
from fitsketch import indexes as IX
from fitsketch import parts, signature_records
from fitsketch import profiles as P
from fitsketch import screen as S

METHODS = ("exact-js", "js", "adaptivity", "l2", "coverage")


class _OldScreen(parts.Part):
    """The screen part of format 4, as engine/parts.py wrote it: a record per entry."""
    name = "screen"

    def prepare(self, new, config, device):
        sk = new.sketch
        return S.record(sk.hist, sk.names, sk.sums, sk.counts, config.seed)

    def write(self, txn, eid, new, prepared):
        parts._put(txn, "extra", S.key(eid), prepared)

    def delete(self, txn, eid, rec, config):
        txn.delete("extra", S.key(eid))


class _OldProfile(parts.Profile):
    """The profile part of format 4: both records in database ``extra``."""

    def write(self, txn, eid, new, prepared):
        prof, prof_keys = prepared
        parts._put(txn, "extra", P.key(eid), prof)
        parts._put(txn, "extra", P.keys_key(eid), prof_keys)


_OLD = {"screen": _OldScreen(), "profile": _OldProfile()}


def _table(rng, n, shift=0.0):
    df = pd.DataFrame({f"x{j}": np.round(rng.normal(shift, size=n), 3) for j in range(5)})
    df["b"] = rng.integers(0, 30, n)
    df["c"] = rng.choice(["u", "v", "w"], n)
    return df


def _sketches(rng, n=6):
    sk = lambda n, s=0.0: fitsketch.sketch_data(_table(rng, n, s), partition_size=40)   # noqa: E731
    out = {f"s{i}": sk(int(rng.integers(2, 333)), float(rng.integers(0, 3))) for i in range(n)}
    out["one-row"] = sk(1)
    out["merged"] = sk(97, 1.0).merge(sk(41, 2.0))
    return out


def _build(path, sketches, monkeypatch, old: bool):
    with monkeypatch.context() as m:
        if old:
            m.setattr(env_mod, "FORMAT_VERSION", 4)
            m.setattr(env_mod, "DBS", tuple(d for d in env_mod.DBS if d not in env_mod.LATER_DBS))   # as format 4 made them
            m.setattr(parts, "PARTS", tuple(_OLD.get(p.name, p) for p in parts.PARTS))
            m.setattr(parts, "_sig_record", signature_records.plain)
        with fitsketch.open(path) as hub:
            (n0, s0), *rest = sketches.items()
            hub.add_sketch(n0, s0)
            hub.add_sketches(rest)


def _stored_screens(path) -> int:
    with fitsketch.open(path, readonly=True) as hub, hub.store.read() as txn:
        return sum(1 for k in txn.keys("extra", S._PREFIX) if len(k) == 9)


def _state(path, readonly=True, drop_files=True):
    """The synced screen index's arrays, by name (indexes._screen_state), and the entry names by id."""
    if drop_files:
        for f in (path / "indexes").glob("*") if (path / "indexes").exists() else ():
            f.unlink()
    with fitsketch.open(path, readonly=readonly) as hub:
        st = IX._screen_state(hub._synced_screen())
        names = {hub.get(n).id: n for n in hub.names()}
    return {k: v for k, v in st.items() if not k.startswith("__")}, st["__meta__"], names


def _state_from_file(path, monkeypatch):
    """``_state`` of the screen index as read from its file: there is one, and nothing is computed."""
    assert (path / "indexes" / "screen.fsidx").exists()
    with monkeypatch.context() as m:
        m.setattr(S, "records", lambda *a, **k: pytest.fail("the screen index was not read from its file"))
        return _state(path, drop_files=False)


def _same_state(a, b):
    (sa, ma, na), (sb, mb, nb) = a, b
    assert na == nb and ma == mb and sa.keys() == sb.keys()
    for k in sa:
        x, y = np.asarray(sa[k]), np.asarray(sb[k])
        assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes(), k


def _profiles(path):
    with fitsketch.open(path, readonly=True) as hub:
        idx = hub._indexes.profiles(hub.store)
        return idx.ids.copy(), idx.x.copy()


def _counts(path):
    with fitsketch.open(path, readonly=True) as hub, hub.store.read() as txn:
        return {db: txn.count(db) for db in ("profiles", "profile_keys", "extra")}


def _answers(path, q):
    with fitsketch.open(path, readonly=True) as hub:
        return {m: [(r.name, r.score) for r in hub.search(q, k=10, method=m)] for m in METHODS}


def test_computed_screens_equal_the_stored_ones(tmp_path, rng, monkeypatch):
    monkeypatch.setattr(IX, "SAVE_MIN_CHANGES", 0)          # every sync that read an entry writes the index file
    monkeypatch.setattr(IX, "SAVE_FRACTION", 0)
    sketches = _sketches(rng)
    old, new = tmp_path / "old", tmp_path / "new"
    _build(old, sketches, monkeypatch, old=True)
    _build(new, sketches, monkeypatch, old=False)
    assert fitsketch.inspect(old)["format"] == 4 and fitsketch.inspect(new)["format"] == 6
    assert _stored_screens(old) == len(sketches) and _stored_screens(new) == 0
    n = len(sketches)
    assert _counts(old)["profiles"] == _counts(old)["profile_keys"] == 0          # no such databases: read as empty
    assert _counts(new)["profiles"] == _counts(new)["profile_keys"] == n
    _same_state(_state(old), _state(new))                    # read (format 4, read-only) vs computed
    for a, b in zip(_profiles(old), _profiles(new)):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
    _same_state(_state(new), _state_from_file(new, monkeypatch))      # computed (and written) vs its file
    q = _table(rng, 173, 1.0)
    assert _answers(old, q) == _answers(new, q)
    late = {"late": fitsketch.sketch_data(_table(rng, 211, 2.0), partition_size=40),
            "late1": fitsketch.sketch_data(_table(rng, 1), partition_size=40)}
    for path in (old, new):                                  # the old hub upgraded: both kinds in one hub
        with fitsketch.open(path) as hub:
            hub._synced_screen()                             # loaded before the adds: found by the next sync
            hub.add_sketches(list(late.items()))
            hub.remove("s1")
            hub._synced_screen()
    assert fitsketch.inspect(old)["format"] == 6
    assert _stored_screens(old) == len(sketches) - 1          # the old entries' records, less the removed one
    _same_state(_state_from_file(old, monkeypatch), _state_from_file(new, monkeypatch))
    _same_state(_state(old), _state(new))
    for a, b in zip(_profiles(old), _profiles(new)):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
    assert _answers(old, q) == _answers(new, q)
    assert _counts(old)["profiles"] == len(late)              # the upgraded hub's new entries: in the new databases
    for path in (old, new):
        with fitsketch.open(path) as hub:
            for name in hub.names():
                hub.remove(name)
        assert set(_counts(path).values()) == {0}


@pytest.mark.parametrize("n", [0, 1, 7])
def test_records_of_a_batch_equal_one_at_a_time(rng, n):
    sks = [fitsketch.sketch_data(_table(rng, int(rng.integers(1, 200))), partition_size=30) for _ in range(n)]
    got = S.records([s.hist for s in sks], [s.names for s in sks], [s.sums for s in sks], [s.counts for s in sks], 5)
    assert len(got) == n
    for s, g in zip(sks, got):
        ref = S.record(s.hist, s.names, s.sums, s.counts, 5)
        assert ref.keys() == g.keys()
        for k in ref:
            x, y = np.asarray(ref[k]), np.asarray(g[k])
            assert x.dtype == y.dtype and x.tobytes() == y.tobytes(), k


def test_a_format_5_hub_without_its_profile_databases_is_damaged(tmp_path, rng):
    import lmdb

    from fitsketch.errors import CorruptHubError

    path = tmp_path / "h"
    with fitsketch.open(path) as hub:
        hub.add_sketch("a", fitsketch.sketch_data(_table(rng, 57), partition_size=40))
    env = lmdb.open(str(path / "hub.lmdb"), subdir=False, max_dbs=16)
    with env.begin(write=True) as txn:
        txn.drop(env.open_db(b"profiles", txn=txn), delete=True)
    env.close()
    with pytest.raises(CorruptHubError, match="lacks database 'profiles'"):
        fitsketch.open(path, readonly=True)


_WRITER = """
import sys
import numpy as np, pandas as pd
import fitsketch
rng = np.random.default_rng(int(sys.argv[2]))
n = 157
df = pd.DataFrame({f"x{j}": np.round(rng.normal(1.0, size=n), 3) for j in range(5)})
df["b"] = rng.integers(0, 30, n)
df["c"] = rng.choice(["u", "v", "w"], n)
with fitsketch.open(sys.argv[1]) as hub:     # writable: upgrades the format-4 hub to 5, then adds
    hub.add_sketch("late", fitsketch.sketch_data(df, partition_size=40))
"""


def test_a_hub_another_process_reads_is_not_upgraded_under_it(tmp_path, rng, monkeypatch):
    """A process reading a format-4 hub while another opens it writable: the upgrade (to format 6,
    whose band blocks a reader of an older fitsketch would not see) waits for the hub alone
    (storage/env.py ``HubStore._migrate_alone``): the writer gets HubBusyError, the hub and the reader's
    answers stay; once the reader closes, the writer upgrades and adds, and a fresh reader finds the entry."""
    path = tmp_path / "old"
    _build(path, _sketches(rng), monkeypatch, old=True)
    q = _table(rng, 173, 1.0)
    root = os.path.dirname(os.path.dirname(os.path.abspath(fitsketch.__file__)))
    writer = [sys.executable, "-c", textwrap.dedent(_WRITER), str(path), str(int(rng.integers(1 << 31)))]
    with fitsketch.open(path, readonly=True) as hub:
        before = {m: [(r.name, r.score) for r in hub.search(q, k=10, method=m)] for m in METHODS}
        res = subprocess.run(writer, cwd=root, timeout=300, capture_output=True, text=True)
        assert res.returncode != 0 and "HubBusyError" in res.stderr and "stop the other" in res.stderr
        assert fitsketch.inspect(path)["format"] == 4
        assert {m: [(r.name, r.score) for r in hub.search(q, k=10, method=m)] for m in METHODS} == before
    subprocess.run(writer, check=True, cwd=root, timeout=300)
    assert fitsketch.inspect(path)["format"] == 6
    got = _answers(path, q)
    assert all("late" in [n for n, _ in v] for v in got.values())


def test_entries_added_since_the_last_sync_without_a_profile_are_profiled(tmp_path, rng, monkeypatch):
    """``ProfileIndex.sync`` finds new entries by a range scan of ``entries`` and computes the profile
    of one it finds none stored for (as a reader that cannot see the databases would): the same ids
    and vectors, bit for bit, as where the profiles were stored."""
    sketches = _sketches(rng)
    late = [("late", fitsketch.sketch_data(_table(rng, 157, 1.0), partition_size=40)),
            ("late1", fitsketch.sketch_data(_table(rng, 1), partition_size=40))]
    got = []
    for skip in (False, True):
        path = tmp_path / str(skip)
        _build(path, sketches, monkeypatch, old=False)
        with fitsketch.open(path) as hub:
            assert len(hub._synced_profiles()) == len(sketches)          # synced before the adds
            with monkeypatch.context() as m:
                if skip:
                    m.setattr(parts.Profile, "write", lambda *a, **k: None)
                hub.add_sketches(late)
            with hub.store.read() as txn:
                assert txn.count("profiles") == len(sketches) + (0 if skip else len(late))
            idx = hub._synced_profiles()
            got.append((idx.ids.copy(), idx.x.copy()))
    (ia, xa), (ib, xb) = got
    assert len(ia) == len(sketches) + len(late)
    assert np.array_equal(ia, ib) and xa.dtype == xb.dtype and xa.tobytes() == xb.tobytes()


def test_a_write_to_a_database_the_hub_lacks_raises(tmp_path, rng, monkeypatch):
    """A write transaction without a handle for a database of ``LATER_DBS`` raises ``SchemaError``
    (it does not fall through to ``db=None``, LMDB's unnamed main database); after an upgrade the
    store knows its format is the current one."""
    import lmdb

    from fitsketch.storage import SchemaError as StorageSchemaError
    from fitsketch.storage.txn import Txn

    env = lmdb.open(str(tmp_path / "raw.lmdb"), subdir=False, max_dbs=4)
    dbs = {"meta": env.open_db(b"meta")}
    for name in sorted(env_mod.LATER_DBS):
        with env.begin(write=True) as raw:
            t = Txn(raw, dbs, True, str(tmp_path))
            for op in (lambda: t.put(name, b"k", 1), lambda: t.put_raw(name, b"k", b"v", append=True),
                       lambda: t.delete(name, b"k")):
                with pytest.raises(StorageSchemaError, match=f"no database '{name}'.*readonly=False"):
                    op()
            assert t.get(name, b"k") is None and t.count(name) == 0 and not t.exists(name, b"k")
        with env.begin() as raw:
            assert raw.get(b"k") is None                   # nothing in the main database
    env.close()
    path = tmp_path / "old"
    _build(path, {"a": fitsketch.sketch_data(_table(rng, 57), partition_size=40)}, monkeypatch, old=True)
    with fitsketch.open(path, readonly=True) as hub:
        assert hub.store._format == 4
    with fitsketch.open(path) as hub:
        assert hub.store._format == env_mod.FORMAT_VERSION == 6
