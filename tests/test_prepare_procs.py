"""``add_sketches`` preparing its chunks in forked worker processes (engine/prepare_procs.py): the
same bytes as one thread, a worker's error raised as its own class with its batch unwritten, a dead
worker a named error, no worker outliving the call, the projection rows the workers drew absorbed,
and the process count checked and chosen."""
from __future__ import annotations

import multiprocessing
import os
import threading

import numpy as np
import pytest

import fitsketch
from fitsketch import errors as E
from fitsketch import parts as PT
from fitsketch import prepare_procs as PP
from fitsketch.kernels import jslsh

from _hubcheck import check_hub
from test_bulk import _assert_same, _dump, _sketches

pytestmark = pytest.mark.skipif(not PP.fork_ok(), reason="this platform does not fork")


def _layout(path) -> dict:
    """The LMDB layout of a closed hub file: each database's page and record counts, and the pages in use."""
    import lmdb

    env = lmdb.open(str(path), subdir=False, readonly=True, lock=False, max_dbs=64)
    try:
        out = {"last_pgno": env.info()["last_pgno"]}
        with env.begin() as txn:
            for name, _ in txn.cursor():
                try:
                    db = env.open_db(name, txn=txn, create=False)
                except lmdb.Error:       # a plain key of the main database, not a named one
                    continue
                st = txn.stat(db)
                out[name] = tuple(st[k] for k in ("branch_pages", "leaf_pages", "overflow_pages", "depth", "entries"))
        return out
    finally:
        env.close()


def _no_workers() -> bool:
    return not [p for p in multiprocessing.active_children() if p.name.startswith("fitsketch-prepare")] \
        and not [t for t in threading.enumerate() if t.name.startswith("fitsketch-prepare")]


@pytest.mark.parametrize("processes", [2, 3])
def test_processes_store_the_bytes_of_one_thread(tmp_path, rng, monkeypatch, processes):
    """0, 1, a batch, a batch + 1 and 2 x batch + 1 fresh sketches (small chunks: a batch spans the
    workers, and a worker has several chunks) stored byte for byte as the calling thread alone stores
    them, in the same LMDB pages (a batch's band postings put at once, not a chunk at a time)."""
    monkeypatch.setattr(PT.time, "time", lambda: 1.7e9)
    monkeypatch.setattr(PT, "PREPARE_CHUNK", 2)
    cfg = fitsketch.SketchConfig(seed=int(rng.integers(0, 2**31)))
    batch = int(rng.integers(2 * processes + 1, 2 * processes + 4))   # chunks of 2 entries, and a last of 1 or 2
    sks = _sketches(rng, cfg, 2 * batch + 1)
    for n in sorted({0, 1, batch, batch + 1, 2 * batch + 1}):
        items = [(f"e{i}", s, {"i": i}) for i, s in enumerate(sks[:n])]
        dumps, layouts = [], []
        for kw in ({"threads": 1, "processes": 0}, {"processes": processes}):
            with fitsketch.open(tmp_path / f"{n}-{len(dumps)}.hub", config=cfg) as hub:
                assert hub.add_sketches(items, batch=batch, **kw) == n
                check_hub(hub)
                dumps.append(_dump(hub))
                path = hub.store._file
            layouts.append(_layout(path))
            assert _no_workers()
        assert len(dumps[0]["entries"]) == n
        _assert_same(dumps[0], dumps[1], f"{n} entries")
        assert layouts[0] == layouts[1], f"{n} entries"


class _Boom(E.InvalidArgumentError):
    """A named error raised in a worker (the test's own subclass: told apart from any other)."""


class _Odd(Exception):
    """An error whose constructor takes two arguments: not rebuilt from its message."""

    def __init__(self, a, b):
        super().__init__(f"{a}/{b}")


@pytest.mark.parametrize("how", ["named error", "odd error", "dies", "transaction"])
def test_a_failing_worker_leaves_its_batch_unwritten(tmp_path, rng, monkeypatch, how):
    """A part failing in a worker raises its error from ``add_sketches`` (its class and message; one
    that cannot be rebuilt, or a worker that dies, as ``DistributedError``); a failing transaction
    with the next batch in the workers likewise. The batches before stay, nothing of the failing
    batch is written (the hub equals one given only those), no worker is left, and the rest can follow."""
    monkeypatch.setattr(PT.time, "time", lambda: 1.7e9)
    monkeypatch.setattr(PT, "PREPARE_CHUNK", 1)
    cfg = fitsketch.SketchConfig(seed=int(rng.integers(0, 2**31)))
    batch = 3
    items = [(f"e{i}", s) for i, s in enumerate(_sketches(rng, cfg, 3 * batch))]
    fail_at = int(rng.integers(0, 3 * batch)) if how != "transaction" else batch
    keep = fail_at // batch * batch
    bad = items[fail_at][0]
    part, method = (PT.Bands, "write_many") if how == "transaction" else (PT.Profile, "prepare_many")
    orig = getattr(part, method)
    calls = []

    def failing(self, *args):
        if method == "write_many":     # a batch's band postings, put at the start of its transaction
            calls.append(1)
            if len(calls) == fail_at // batch + 1:
                raise _Boom(f"entry {bad} fails here")
            return orig(self, *args)
        if any(n.name == bad for n in args[0]):
            if how == "dies":
                os._exit(7)
            raise _Odd(bad, 1) if how == "odd error" else _Boom(f"entry {bad} fails here")
        return orig(self, *args)

    with fitsketch.open(tmp_path / "ref.hub", config=cfg) as ref:
        ref.add_sketches(items[:keep], batch=batch, processes=0)
        want = _dump(ref)
    monkeypatch.setattr(part, method, failing)
    raised = {"named error": (_Boom, f"entry {bad} fails here"), "transaction": (_Boom, bad),
              "odd error": (E.DistributedError, f"_Odd: {bad}/1"), "dies": (E.DistributedError, "code 7")}[how]
    with fitsketch.open(tmp_path / "h.hub", config=cfg) as hub:
        with pytest.raises(raised[0], match=raised[1]) as err:
            hub.add_sketches(items, batch=batch, processes=2)
        if how in ("named error", "odd error"):   # the worker's traceback attached
            assert "failing" in str(err.value.__cause__)
        assert _no_workers()
        assert len(hub) == keep
        _assert_same(want, _dump(hub), how)
        monkeypatch.setattr(part, method, orig)
        assert hub.add_sketches(items[keep:], batch=batch, processes=2) == len(items) - keep
        check_hub(hub)
    assert _no_workers()


def test_the_workers_projection_rows_come_back(tmp_path, rng, monkeypatch):
    """The projection rows the workers draw are absorbed by this process's memo (the next call's
    workers start warm), and each absorbed row is the row drawn afresh for its coordinate."""
    monkeypatch.setattr(jslsh, "_ROWS", jslsh._RowCache())
    cfg = fitsketch.SketchConfig(seed=int(rng.integers(0, 2**31)))
    items = [(f"e{i}", s) for i, s in enumerate(_sketches(rng, cfg, 6))]
    with fitsketch.open(tmp_path / "h.hub", config=cfg) as hub:
        hub.add_sketches(items, batch=4, processes=2)
    held = jslsh.row_cache_snapshot()
    assert held and all(len(k) > 0 for k in held.values())
    for (seed, h), (keys, feat, buck, rows) in jslsh._ROWS.tables.items():
        assert np.all(np.diff(keys.astype(np.float64)) >= 0) and len(np.unique(keys)) == len(keys)
        np.testing.assert_array_equal(rows, jslsh._gaussian_rows(seed, feat, buck, h))


def test_a_chunk_goes_to_a_worker_only_once_released(tmp_path, rng, monkeypatch):
    """Workers forked with ``ready`` at the first chunk's end are sent that chunk and no other until
    ``release`` (the caller checks the rest meanwhile, ``Hub.add_sketches``); each chunk a worker
    prepares from the items it was forked with (``Hub._item_entries``) equals the chunk prepared
    here from the caller's own entries (the parts the caller prepares itself skipped), and a chunk
    never released is never sent."""
    from fitsketch.storage import pack

    monkeypatch.setattr(PT.time, "time", lambda: 1.7e9)
    cfg = fitsketch.SketchConfig(seed=int(rng.integers(0, 2**31)))
    items = [(f"e{i}", s) + (({"i": i},) if i % 2 else ()) for i, s in enumerate(_sketches(rng, cfg, 7))]
    chunks, batch_of = PT.process_chunks([4, 3], 2)
    assert [hi - lo for lo, hi in chunks] == [1, 1, 1, 1, 1, 1, 1] and batch_of == [0, 0, 0, 0, 1, 1, 1]
    sent = []
    send = PP.Workers._ahead

    def ahead(self, j):
        ok = send(self, j)
        if ok and not self.closing:
            sent.append(j)
        return ok

    monkeypatch.setattr(PP.Workers, "_ahead", ahead)
    with fitsketch.open(tmp_path / "h.hub", config=cfg) as hub:
        news = [hub._new_entry(it[0], it[1], it[2] if len(it) == 3 else None, None) for it in items]
        w = PP.Workers(hub._item_entries(items), cfg, hub.device, 2, chunks, batch_of, ready=1)
        try:
            got = [w.result(0)]
            assert sent == [0]          # chunk 1's worker waits: its item is not released
            w.release(3)
            got += [w.result(1), w.result(2)]
            assert sorted(sent) == [0, 1, 2]
            for j, (lo, hi) in enumerate(chunks[:3]):
                assert pack(got[j]) == pack(PT._prepare_chunk(news[lo:hi], cfg, hub.device, PT.STREAMED_SKIP)), j
        finally:
            w.close(abort=True)
        w.close()                       # a second close does nothing
    assert sorted(sent) == [0, 1, 2] and _no_workers()


def test_absorbed_rows_look_up_as_drawn_rows(rng):
    """``absorb`` of another memo's ``export`` (overlapping coordinates, a table of its own) gives,
    for every coordinate, the row ``gaussian_projection`` draws; malformed rows are refused; a table
    that would outgrow the memo is left as it was."""
    a, b = jslsh._RowCache(), jslsh._RowCache()
    feat = rng.integers(-5, 40, 300)
    buck = rng.integers(-3, 9, 300)
    a.get(11, feat[:200], buck[:200], 8)
    b.get(11, feat[100:], buck[100:], 8)
    b.get(12, feat[:50], buck[:50], 4)
    mark = b.snapshot()
    fresh = 100 + rng.permutation(40)[:10]          # 10 distinct coordinates drawn after the snapshot
    b.get(11, fresh, buck[:10], 8)
    new = b.export(since=mark)
    assert [(s, h, len(k)) for s, h, k, *_ in new] == [(11, 8, 10)]
    np.testing.assert_array_equal(new[0][5], jslsh._gaussian_rows(11, new[0][3], new[0][4], 8))
    a.absorb(b.export(since=None))
    assert {t: len(k) for t, k in a.snapshot().items()} == {
        (11, 8): 10 + len({(f, k) for f, k in zip(feat, buck)}), (12, 4): len({(f, k) for f, k in zip(feat[:50], buck[:50])})}
    np.testing.assert_array_equal(a.get(11, feat, buck, 8), jslsh._gaussian_rows(11, feat, buck, 8))
    np.testing.assert_array_equal(a.get(11, fresh, buck[:10], 8), jslsh._gaussian_rows(11, fresh, buck[:10], 8))
    np.testing.assert_array_equal(a.get(12, feat, buck, 4), jslsh._gaussian_rows(12, feat, buck, 4))
    assert b.export(since=b.snapshot()) == []
    s, h, keys, f, k, rows = b.export()[0]
    with pytest.raises(ValueError, match="malformed"):
        a.absorb([[s, h, keys, f, k, rows[:, :-1]]])
    small = jslsh._RowCache(max_rows=10)
    small.absorb(b.export())
    assert small.snapshot() == {}


def test_the_process_count_is_checked_and_chosen(tmp_path, rng, monkeypatch):
    """``processes=`` outside 0..64 is refused before anything is written; ``choose`` gives the count
    asked for, ``FITSKETCH_PREPARE_PROCESSES`` where set (checked), else the usable CPUs (at most
    ``MAX_PROCESSES``) only for a call of ``MIN_ENTRIES`` or more on the CPU with no other thread running."""
    cfg = fitsketch.SketchConfig(seed=1)
    items = [(f"e{i}", s) for i, s in enumerate(_sketches(rng, cfg, 2))]
    with fitsketch.open(tmp_path / "h.hub", config=cfg) as hub:
        for bad in (-1, 65, 2.0, True, "2"):
            with pytest.raises(E.InvalidArgumentError, match="processes="):
                hub.add_sketches(items, processes=bad)
        assert len(hub) == 0
    monkeypatch.delenv("FITSKETCH_PREPARE_PROCESSES", raising=False)
    monkeypatch.setattr(PP, "usable_cpus", lambda: 4)
    monkeypatch.setattr(PP.threading, "active_count", lambda: 1)
    assert PP.choose(3, 1, "cpu") == 3 and PP.choose(0, 10**6, "cpu") == 0
    assert PP.choose(None, PP.MIN_ENTRIES, "cpu") == 4
    assert PP.choose(None, PP.MIN_ENTRIES - 1, "cpu") == 0
    monkeypatch.setattr(PP, "usable_cpus", lambda: 64)
    assert PP.choose(None, 10**6, "cpu") == PP.MAX_PROCESSES
    monkeypatch.setattr(PP, "usable_cpus", lambda: 1)
    assert PP.choose(None, 10**6, "cpu") == 0
    monkeypatch.setattr(PP, "usable_cpus", lambda: 4)
    monkeypatch.setattr(PP.threading, "active_count", lambda: 2)     # another thread: no fork
    assert PP.choose(None, 10**6, "cpu") == 0
    for value, want in (("0", 0), ("3", 3), (" 2 ", 2)):
        monkeypatch.setenv("FITSKETCH_PREPARE_PROCESSES", value)
        assert PP.choose(None, 1, "cpu") == want
    for value in ("-1", "two", "1.5", "65"):
        monkeypatch.setenv("FITSKETCH_PREPARE_PROCESSES", value)
        with pytest.raises(E.InvalidArgumentError, match="FITSKETCH_PREPARE_PROCESSES"):
            PP.choose(None, 10**6, "cpu")
    monkeypatch.setattr(PP, "fork_ok", lambda: False)
    with pytest.raises(E.InvalidArgumentError, match="processes=2 needs"):
        PP.choose(2, 10, "cpu")
    monkeypatch.setenv("FITSKETCH_PREPARE_PROCESSES", "2")
    assert PP.choose(None, 10**6, "cpu") == 0


def test_a_transaction_run_again_writes_the_chunks_it_took(tmp_path, rng, monkeypatch):
    """A batch whose transaction fills the map (no reserve asked for) is aborted and run again on a
    grown map: the chunks it already took from the workers are written again (each taken once), and
    the hub equals a roomy one's."""
    from fitsketch import adding

    monkeypatch.setattr(PT.time, "time", lambda: 1.7e9)
    monkeypatch.setattr(PT, "PREPARE_CHUNK", 2)
    monkeypatch.setattr(adding, "batch_bytes", lambda *a, **kw: 0)
    cfg = fitsketch.SketchConfig(seed=int(rng.integers(0, 2**31)))
    items = [(f"e{i}", s) for i, s in enumerate(_sketches(rng, cfg, 13))]
    taken, runs = [], []
    result, writer = PP.Workers.result, PT._writer

    def counted(self, j):
        taken.append(j)
        return result(self, j)

    def written(*a, **kw):
        w = writer(*a, **kw)
        return lambda txn: (runs.append(1), w(txn))[1]

    monkeypatch.setattr(PP.Workers, "result", counted)
    monkeypatch.setattr(PT, "_writer", written)
    dumps = []
    for j, size in enumerate((1 << 16, 1 << 30)):
        taken.clear()
        runs.clear()
        with fitsketch.Hub(tmp_path / f"{j}.hub", config=cfg, map_size=size) as hub:
            assert hub.add_sketches(items, batch=7, processes=2) == 13
            check_hub(hub)
            dumps.append(_dump(hub))
        assert sorted(taken) == list(range(len(taken)))    # every chunk taken once, in order
        if j == 0:
            assert len(runs) > len(taken)                  # some chunk was written again
    _assert_same(dumps[0], dumps[1])
