"""The signature dictionary (engine/signature_records.py ``dictionary``) compiled against its NumPy
definition, in one process: per call on the scale suite's 32 x 128 signatures, and the add rate of
``add_sketches`` it is part of. Not a suite (an A/B of one change):

    OMP_NUM_THREADS=1 python -m bench.sig_records_ab [--entries 2000] [--rounds 3]

Per call: each arm over the same entries' signatures, the arms alternating, ``--rounds`` rounds, CPU
(``time.process_time``) and wall per call. Add rate: ``add_sketches`` of ``--entries`` entries
(bench/scale.py's, seed 3) into a new hub with ``threads=1`` and ``threads=2``, band compaction left
out (``band_blocks.COMPACT_MIN``), one untimed add first, then ``--rounds`` rounds with the arms'
order alternating; entries/s wall and per CPU second, each round's and the median. The NumPy arm is
the same engine with ``kernels/ingest.py``'s ``sig_dictionary`` answering None (the fallback). The
load average is printed beside each result: the machine may be shared.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np

from . import harness as H
from .scale import build_sketches


def _arms():
    from fitsketch.kernels import ingest

    compiled = ingest.sig_dictionary

    def use(on: bool):
        ingest.sig_dictionary = compiled if on else (lambda sig: None)

    return {"numpy": lambda: use(False), "compiled": lambda: use(True)}, lambda: use(True)


def per_call(sigs: list, rounds: int) -> None:
    from fitsketch import signature_records as S

    def each():
        for s in sigs:
            S.dictionary(s)

    arms, restore = _arms()
    try:
        for r in range(rounds):
            for name in (list(arms) if r % 2 == 0 else list(arms)[::-1]):
                arms[name]()
                S.dictionary(sigs[0])
                t = H.Samples()
                t.call(each)
                print(f"  round {r} {name:9s} {1e3 * t.cpu[0] / len(sigs):.4f} ms CPU, {1e3 * t.wall[0] / len(sigs):.4f} ms "
                      f"wall a call ({len(sigs)} calls, load {H.load_average():.2f})")
    finally:
        restore()


def add_rate(items: list, rounds: int) -> None:
    import fitsketch
    import fitsketch.band_blocks as BB

    arms, restore = _arms()
    saved = BB.COMPACT_MIN
    BB.COMPACT_MIN = 1 << 62          # compaction left out: the add alone
    tmp = Path(tempfile.mkdtemp(prefix="sigrec_ab_"))
    n = len(items)

    def add(threads: int, tag: str):
        path = tmp / tag

        def run():
            with fitsketch.open(path) as hub:
                assert hub.add_sketches(items, threads=threads) == n

        t = H.Samples()
        t.call(run)
        shutil.rmtree(path)
        return n / t.wall[0], n / t.cpu[0]

    try:
        for threads in (1, 2):
            arms["compiled"]()
            add(threads, "warm")                      # untimed: the process's memos filled
            got = {name: [] for name in arms}
            for r in range(rounds):
                for name in (list(arms) if r % 2 == 0 else list(arms)[::-1]):
                    arms[name]()
                    wall, cpu = add(threads, f"{name}{r}")
                    got[name].append((wall, cpu))
                    print(f"  threads={threads} round {r} {name:9s} {wall:6.0f} entries/s wall, {cpu:6.0f} per CPU "
                          f"second (load {H.load_average():.2f})")
            med = {k: np.median(np.array(v), axis=0) for k, v in got.items()}
            print(f"threads={threads}: median numpy {med['numpy'][0]:.0f} wall / {med['numpy'][1]:.0f} CPU, compiled "
                  f"{med['compiled'][0]:.0f} wall / {med['compiled'][1]:.0f} CPU entries/s: "
                  f"x{med['compiled'][0] / med['numpy'][0]:.3f} wall, x{med['compiled'][1] / med['numpy'][1]:.3f} CPU")
    finally:
        BB.COMPACT_MIN = saved
        restore()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--entries", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    sketches, _ = build_sketches(20, 8, args.entries, seed=3)
    print(f"{len(sketches)} sketches built (load {H.load_average():.2f})")
    print(f"per call, {sketches[0].signatures.shape[0]} x {sketches[0].signatures.shape[1]} signatures:")
    per_call([s.signatures for s in sketches], args.rounds)
    print("add_sketches:")
    add_rate([(f"e{i}", s) for i, s in enumerate(sketches)], args.rounds)


if __name__ == "__main__":
    main()
