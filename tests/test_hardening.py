"""Hostile requests and bad states (issue 23): each ends in a named error or a correct answer, and
the hub keeps serving other queries.

Consistent snapshots (a search racing a remove), bounded parameters, validated sketches and
metadata, damaged stored records skipped by searches, errors that tell the truth, compaction.
The socket server's attacks live in tests/test_hardening_server.py.
"""
from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest

import fitsketch
from fitsketch import errors as E


def _frame(rng, n=40, shift=0.0):
    return pd.DataFrame({"a": rng.normal(shift, 1.0, n), "b": rng.integers(0, 6, n) + int(shift)})


@pytest.fixture
def small_hub(tmp_path, rng):
    """A hub of 24 two-column entries (over 4 x shortlist=2, so shortlist=2 runs the profile stage)."""
    hub = fitsketch.open(tmp_path / "h")
    items = [(f"e{i:02d}", fitsketch.sketch(_frame(rng, shift=i % 6), hub.config)) for i in range(24)]
    hub.add_sketches(items)
    yield hub, rng
    hub.close()


# ------------------------------------------------------------------------ 1. consistent snapshots
def test_search_skips_entries_removed_after_the_shortlist(small_hub, monkeypatch):
    """Deterministic race: every shortlisted entry but one is removed between the shortlist's
    transaction and the scoring transaction; the search answers from what is left."""
    hub, rng = small_hub
    q = _frame(rng, shift=0)
    original = fitsketch.Hub._shortlist
    removed = []

    def racing_shortlist(self, *a, **kw):
        ids = original(self, *a, **kw)
        assert ids is not None and len(ids) == 2
        with self.store.read() as txn:
            names = sorted(txn.get("entries", key)["name"] for key in ids)
        self.remove(names[0])
        removed.append(names[0])
        return ids

    monkeypatch.setattr(fitsketch.Hub, "_shortlist", racing_shortlist)
    for method in ("adaptivity", "js", "exact-js", "l2", "coverage"):
        plan = hub.explain(q, k=5, method=method, shortlist=2)
        short = next(s for s in plan.stages if s.name == "shortlist")
        assert "1 removed since, skipped" in short.detail
        ms = hub.search(q, k=5, method=method, shortlist=2)
        got = {m.name for m in ms}
        assert got and not got & set(removed)
        assert got <= set(hub.names())


def test_search_racing_removes_in_a_thread(small_hub):
    """A thread removes and re-adds entries while another searches with the shortlist on: every
    search answers (no TypeError, no internal error) and names only entries the hub held."""
    hub, rng = small_hub
    sketches = {n: None for n in hub.names()}
    q = _frame(rng, shift=1)
    for n in list(sketches)[:12]:
        sketches[n] = fitsketch.sketch(_frame(np.random.default_rng(len(n)), shift=1), hub.config)
    stop = threading.Event()
    errors = []

    def churn():
        try:
            while not stop.is_set():
                for n, sk in sketches.items():
                    if sk is None:
                        continue
                    hub.remove(n)
                    hub.add_sketch(n, sk)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    t = threading.Thread(target=churn)
    t.start()
    try:
        answered = 0
        for _ in range(40):
            try:
                ms = hub.search(q, k=3, method="adaptivity", shortlist=2)
            except E.NoSharedFeaturesError:    # every shortlisted entry was removed: a named answer
                continue
            assert all(m.name in sketches for m in ms)
            answered += 1
    finally:
        stop.set()
        t.join()
    assert not errors
    assert answered > 0
