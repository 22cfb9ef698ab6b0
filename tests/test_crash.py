"""Crash safety: a writer SIGKILLed at a random moment leaves a hub that opens, holds every entry
whose ``add`` returned, holds no entry that was never started, and holds no partial entry.

The writer is a forked worker (see ``_hubcheck.Zygote``) running ``WORKER`` from a temporary
script: it journals ``start NAME`` (fsync'd) before each ``hub.add`` and ``done NAME`` (fsync'd)
after it returns. The parent kills it after a random delay, reopens the hub and checks it; the
hub is reused across iterations, so each iteration also recovers from every earlier kill.
Default suite: 10 iterations; ``-m slow``: 120.
"""
from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

import _hubcheck as hc
import fitsketch

WORKER = r'''
import os, sys


def writer(hub, journal, prefix, ae_every):
    sys.path.insert(0, os.environ["FS_TESTS_DIR"])
    import _hubcheck as hc
    import fitsketch
    from fitsketch.simex import AEConfig

    ae_cfg = AEConfig(**hc.TINY_AE)
    fd = os.open(journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def note(line):
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)

    h = fitsketch.open(hub)
    frames = [(f"{prefix}-{i}", hc.make_frame(f"{prefix}-{i}")) for i in range(200)]
    note(f"ready {prefix}")
    for i, (name, df) in enumerate(frames):
        ae = ae_every > 0 and i % ae_every == 0
        note(f"start {name}")
        h.add(name, df, metadata={"ae": ae, "i": i}, autoencoder=ae, ae_config=ae_cfg if ae else None)
        note(f"done {name}")
    note(f"finished {prefix}")
'''


def _journal(path) -> tuple[list[str], set[str]]:
    started, done = [], set()
    if os.path.exists(path):
        for line in open(path).read().splitlines():
            what, _, name = line.partition(" ")
            if what == "start":
                started.append(name)
            elif what == "done":
                done.add(name)
    return started, done


def _check_after_kill(path, journal, fresh: set[str]) -> dict:
    """Open the hub after a kill and check it against the journal; return the iteration's figures."""
    started, done = _journal(journal)
    with fitsketch.open(path) as hub:
        names = hc.check_hub(hub)                   # no partial entry, names <-> entries, counts agree
        assert hub.names() == names and len(hub) == len(names)
        lost = sorted(set(done) - set(names))
        assert not lost, f"entries whose add returned are missing after the kill: {lost}"
        never = sorted(set(names) - set(started))
        assert not never, f"entries that were never started: {never}"
        in_flight = [n for n in started if n not in done]     # at most one per killed writer
        # every entry this iteration wrote (and the one in flight, if it committed) is complete
        for name in sorted((fresh | set(in_flight[-1:])) & set(names)):
            e = hub.get(name)
            assert (e.name, e.n_rows, e.features) == (name, 50, ["a", "b", "c"])
            assert hc.has_autoencoder(hub, name) == e.metadata["ae"], name
            found = [m.name for m in hub.search(hc.make_frame(name), k=len(names), method="exact-js")]
            assert name in found, f"search over {name}'s own data does not find it"
        return {"names": len(names), "lost": len(lost),
                "in_flight_committed": len(set(in_flight[-1:]) & set(names) - set(done))}


def _run(tmp_path, iterations: int, max_delay: float, seed=None):
    rng = np.random.default_rng(seed)
    z = hc.zygote()
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    path, journal, log = tmp_path / "hub", tmp_path / "journal", tmp_path / "worker.log"
    fitsketch.open(path).close()
    killed_mid_add = committed_in_flight = 0
    done_before: set[str] = set()
    for it in range(iterations):
        pid = z.spawn(script, "writer", log, hub=str(path), journal=str(journal), prefix=f"it{it}",
                      ae_every=int(rng.choice([0, 3])))
        try:
            hc.wait_for_line(journal, f"ready it{it}", timeout=60)
        except AssertionError:
            raise AssertionError(f"worker did not start:\n{log.read_text() if log.exists() else ''}") from None
        time.sleep(float(rng.uniform(0.0, max_delay)))
        os.kill(pid, signal.SIGKILL)               # our own unreaped worker: the pid is still its
        rc = z.wait(pid)
        assert rc == -signal.SIGKILL, f"worker exited with {rc} before the kill:\n{log.read_text()}"
        started, done = _journal(journal)
        fresh = done - done_before
        done_before = set(done)
        figures = _check_after_kill(path, journal, fresh)
        if started and started[-1] not in done:
            killed_mid_add += 1
            committed_in_flight += figures["in_flight_committed"]
    started, done = _journal(journal)
    print(f"\ncrash: iterations survived={iterations}, entries done={len(done)}, entries lost=0, "
          f"killed inside add={killed_mid_add} (committed anyway: {committed_in_flight})")
    return killed_mid_add


def test_sigkill_during_adds_loses_nothing_and_leaves_nothing_partial(tmp_path):
    _run(tmp_path, iterations=10, max_delay=0.4)


@pytest.mark.slow
def test_sigkill_during_adds_many_iterations(tmp_path):
    killed_mid_add = _run(tmp_path, iterations=120, max_delay=0.6)
    assert killed_mid_add >= 10, "the kills should often land inside an add"


def test_journal_parsing_and_checks_catch_a_partial_entry(tmp_path):
    """The checker itself: a hub with an entry record but no signatures must fail check_hub."""
    from fitsketch.storage import u64

    with fitsketch.open(tmp_path / "h") as hub:
        hub.add("whole", hc.make_frame("whole"))
        assert hc.check_hub(hub) == ["whole"]
        hub.store.transact(lambda t: t.delete("signatures", t.get_raw("names", b"whole")))
        with pytest.raises(AssertionError, match="signatures"):
            hc.check_hub(hub)
        hub.store.transact(lambda t: t.put_raw("names", b"ghost", u64(999)))
        with pytest.raises(AssertionError):
            hc.check_hub(hub)
