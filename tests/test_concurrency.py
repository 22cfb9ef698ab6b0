"""Concurrency: reader processes searching while writer processes add and remove.

Each worker (a forked process, see ``_hubcheck.Zygote``) opens its own hub handle. Readers check
the hub's invariants inside ONE read transaction (names <-> entries, counts, band records; see
``_hubcheck.check_txn``), search, and report every name they saw; writers add and remove their own
entries with a small initial map so the map grows under the readers. Afterwards: no worker
failed, two writers were serialized (every entry each one kept is present), and no reader ever saw
a name that no writer started. Default: 4 readers, 2 writers, 2 s; ``-m slow``: 8 readers, 2 s and 12 s.
The same in one process with threads sharing one Hub.
"""
from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

import _hubcheck as hc
import fitsketch

WORKER = r'''
import json, os, random, sys, time


def _setup():
    sys.path.insert(0, os.environ["FS_TESTS_DIR"])


def reader(hub, out, seconds, seed):
    _setup()
    import _hubcheck as hc
    import fitsketch
    from fitsketch import errors as E

    rnd = random.Random(seed)
    stats = {"checks": 0, "searches": 0, "gets": 0, "gone": 0, "seen": set(), "matched": set()}
    queries = [hc.make_frame(f"base-{i}") for i in range(4)]
    with fitsketch.open(hub, readonly=True) as h:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            with h.store.read() as txn:                      # one snapshot: every invariant holds
                names = hc.check_txn(txn)
                assert txn.count("names") == len(names)
            stats["seen"].update(names)
            stats["checks"] += 1
            method = rnd.choice(["adaptivity", "exact-js", "js", "l2"])
            for m in h.search(rnd.choice(queries), k=5, method=method):
                stats["matched"].add(m.name)
                try:
                    assert h.get(m.name).name == m.name
                    stats["gets"] += 1
                except E.EntryNotFoundError:                 # removed since the search's snapshot
                    stats["gone"] += 1
            stats["searches"] += 1
    stats["seen"], stats["matched"] = sorted(stats["seen"]), sorted(stats["matched"])
    with open(out, "w") as f:
        json.dump(stats, f)


def writer(hub, out, journal, seconds, prefix, seed, map_size):
    _setup()
    import _hubcheck as hc
    import fitsketch

    rnd = random.Random(seed)
    fd = os.open(journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    live, adds, removes = [], 0, 0
    with fitsketch.Hub(hub, map_size=map_size) as h:
        deadline = time.monotonic() + seconds
        i = 0
        while time.monotonic() < deadline:
            name = f"{prefix}-{i}"
            os.write(fd, f"start {name}\n".encode())
            h.add(name, hc.make_frame(name), metadata={"writer": prefix})
            live.append(name)
            adds += 1
            i += 1
            if len(live) > 3 and rnd.random() < 0.4:
                gone = live.pop(rnd.randrange(len(live)))
                h.remove(gone)
                removes += 1
    with open(out, "w") as f:
        json.dump({"live": live, "adds": adds, "removes": removes}, f)
'''


def _run(tmp_path, readers: int, writers: int, seconds: float):
    z = hc.zygote()
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    path, journal = tmp_path / "hub", tmp_path / "journal"
    base = [f"base-{i}" for i in range(4)]
    with fitsketch.open(path) as hub:
        for n in base:
            hub.add(n, hc.make_frame(n))
    rng = np.random.default_rng()
    pids = {}
    for w in range(writers):
        pids[z.spawn(script, "writer", tmp_path / f"w{w}.log", hub=str(path), out=str(tmp_path / f"w{w}.json"),
                     journal=str(journal), seconds=seconds, prefix=f"w{w}", seed=int(rng.integers(1 << 30)),
                     map_size=1 << 20)] = f"w{w}"
    for r in range(readers):
        pids[z.spawn(script, "reader", tmp_path / f"r{r}.log", hub=str(path), out=str(tmp_path / f"r{r}.json"),
                     seconds=seconds, seed=int(rng.integers(1 << 30)))] = f"r{r}"
    failed = {}
    for pid, who in pids.items():
        rc = z.wait(pid)
        if rc != 0:
            log = tmp_path / f"{who}.log"
            failed[who] = (rc, log.read_text()[-3000:] if log.exists() else "")
    assert not failed, f"workers failed: {failed}"
    started = {line.split(" ", 1)[1] for line in journal.read_text().splitlines()}
    ws = [json.loads((tmp_path / f"w{w}.json").read_text()) for w in range(writers)]
    rs = [json.loads((tmp_path / f"r{r}.json").read_text()) for r in range(readers)]
    with fitsketch.open(path) as hub:
        names = hc.check_hub(hub)
        want = set(base).union(*(w["live"] for w in ws))
        assert set(names) == want, (f"missing {sorted(want - set(names))}, "
                                    f"unexpected {sorted(set(names) - want)}")
    known = set(base) | started
    for r in rs:
        assert r["searches"] > 0 and r["checks"] > 0
        assert set(r["seen"]) <= known and set(r["matched"]) <= known
        assert set(base) <= set(r["seen"])
    assert all(w["adds"] > 0 for w in ws)
    figures = {"searches": sum(r["searches"] for r in rs), "snapshot checks": sum(r["checks"] for r in rs),
               "adds": sum(w["adds"] for w in ws), "removes": sum(w["removes"] for w in ws),
               "matches gone before get": sum(r["gone"] for r in rs)}
    print(f"\nconcurrency ({readers} readers, {writers} writers, {seconds} s): {figures}")
    return figures


def test_readers_and_two_writers_processes(tmp_path):
    _run(tmp_path, readers=4, writers=2, seconds=2.0)


@pytest.mark.slow
def test_eight_readers_one_writer_processes(tmp_path):
    _run(tmp_path, readers=8, writers=1, seconds=2.0)


@pytest.mark.slow
def test_eight_readers_two_writers_processes_long(tmp_path):
    figures = _run(tmp_path, readers=8, writers=2, seconds=12.0)
    assert figures["removes"] > 0


def test_threads_sharing_one_hub(tmp_path):
    """4 reader threads and 1 writer thread on one Hub handle, with a map that must grow."""
    errors, stats = [], {"checks": 0, "searches": 0}
    stop = threading.Event()
    base = [f"base-{i}" for i in range(3)]
    with fitsketch.Hub(tmp_path / "hub", map_size=1 << 20) as hub:
        for n in base:
            hub.add(n, hc.make_frame(n))
        started = set(base)
        queries = [hc.make_frame(n) for n in base]

        def reader(i):
            try:
                while not stop.is_set():
                    with hub.store.read() as txn:
                        names = hc.check_txn(txn)
                    assert set(names) <= started
                    for m in hub.search(queries[i % len(queries)], k=3, method="exact-js"):
                        assert m.name in started
                    stats["checks"] += 1
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        def writer():
            rnd = np.random.default_rng()
            live = []
            try:
                for i in range(10_000):
                    if stop.is_set():
                        break
                    name = f"t-{i}"
                    started.add(name)
                    hub.add(name, hc.make_frame(name))
                    live.append(name)
                    if len(live) > 3 and rnd.random() < 0.4:
                        hub.remove(live.pop(int(rnd.integers(len(live)))))
            except BaseException as e:  # noqa: BLE001
                errors.append(e)
            stats["live"] = live

        threads = [threading.Thread(target=reader, args=(i,)) for i in range(4)] + [threading.Thread(target=writer)]
        for t in threads:
            t.start()
        time.sleep(2.0)
        deadline = time.monotonic() + 30             # on a loaded machine: at least a few rounds
        while stats["checks"] < 4 and time.monotonic() < deadline and not errors:
            time.sleep(0.05)
        stop.set()
        for t in threads:
            t.join(30)
        assert not any(t.is_alive() for t in threads)
        assert not errors, errors
        assert hc.check_hub(hub) == sorted(set(base) | set(stats["live"]))
        assert stats["checks"] >= 4


def test_readonly_handle_in_another_process_sees_new_entries(tmp_path):
    """A reader process opened before a write sees it in its next read transaction."""
    script = tmp_path / "worker.py"
    script.write_text(r'''
import json, os, sys, time
def poll(hub, out, want):
    import fitsketch
    with fitsketch.open(hub, readonly=True) as h:
        deadline = time.monotonic() + 30
        while want not in h and time.monotonic() < deadline:
            time.sleep(0.01)
        with open(out, "w") as f:
            json.dump({"names": h.names(), "len": len(h)}, f)
''')
    path = tmp_path / "hub"
    with fitsketch.open(path) as hub:
        hub.add("first", hc.make_frame("first"))
        z = hc.zygote()
        pid = z.spawn(script, "poll", tmp_path / "p.log", hub=str(path), out=str(tmp_path / "p.json"), want="second")
        time.sleep(0.2)
        hub.add("second", hc.make_frame("second"))
        assert z.wait(pid) == 0, (tmp_path / "p.log").read_text()
    assert json.loads((tmp_path / "p.json").read_text()) == {"names": ["first", "second"], "len": 2}
