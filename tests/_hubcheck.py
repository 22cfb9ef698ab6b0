"""Shared checks for the reliability suites (crash, concurrency, bad input, fuzzing).

* :func:`dump` -- every key and value of every LMDB database of an open hub, read through the hub's
  own read transaction (LMDB forbids a second environment on one file in one process).
* :func:`check_txn` / :func:`check_hub` -- the hub's structural invariants inside ONE read
  transaction: names <-> entries are a bijection, every entry has its signatures and histograms,
  every LSH band record points at a live entry, counts agree. Return the sorted names.
* :class:`Zygote` -- a fork server: one subprocess imports fitsketch (and torch) once, then forks a
  fresh worker per request, so a test can start (and SIGKILL) many workers without paying the
  import each time. A worker is ``fn(**kwargs)`` from a script file; it never shares an LMDB
  environment with the zygote (the zygote opens no hub). Worker pids are reaped only on
  :meth:`Zygote.wait`, so a pid the test signals cannot have been reused.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pandas as pd

from fitsketch.partitions import unpack_hist
from fitsketch.signature_records import decode as decode_signatures
from fitsketch.storage import DBS, from_u64

_AE_PREFIX = b"ae:"


# ------------------------------------------------------------------------------ invariants
def dump(hub) -> dict:
    """{db: [(key, raw value), ...]} of every database, in key order (``bands``: every duplicate)."""
    out = {}
    with hub.store.read() as txn:
        for db in DBS:
            if db == "bands":
                out[db] = [(k, v) for k, v in txn.items(db)]
            else:
                out[db] = [(k, txn.get_raw(db, k)) for k in txn.keys(db)]
    return out


def check_txn(txn) -> list[str]:
    """Assert the invariants of a hub inside one read transaction; return its sorted names."""
    names = {}
    for key in txn.keys("names"):
        raw = txn.get_raw("names", key)
        assert raw is not None and len(raw) == 8, f"names[{key!r}] = {raw!r} is not a u64 id"
        names[key.decode("utf-8")] = raw
    n = txn.count("names")
    assert n == len(names), f"count(names)={n} but {len(names)} keys iterate"
    entry_ids = set()
    for key, rec in txn.items("entries"):
        assert isinstance(rec, dict) and rec.get("v") == 1, f"entries[{key!r}] = {rec!r}"
        assert rec["id"] == from_u64(key), f"entries[{key!r}] carries id {rec['id']}"
        assert names.get(rec["name"]) == key, f"entry {rec['name']!r} ({key!r}) has no name mapping to it"
        entry_ids.add(key)
        nf = len(rec["features"])
        sig = txn.get("signatures", key)
        assert sig is not None and decode_signatures(sig).shape[0] == nf, f"entry {rec['name']!r}: signatures missing or wrong"
        hist = txn.get("histograms", key)
        assert hist is not None and set(unpack_hist(hist)) == {"part", "feat", "bucket", "count"}, \
            f"entry {rec['name']!r}: histograms missing"
    assert set(names.values()) == entry_ids, \
        f"names without an entry record: {sorted(n for n, k in names.items() if k not in entry_ids)}"
    for db in ("entries", "signatures", "histograms"):
        assert txn.count(db) == n, f"count({db})={txn.count(db)} != count(names)={n}"
    profiled = set()
    for key in txn.keys("extra"):
        if len(key) == 9 and key[:1] in (b"p", b"k", b"d"):   # entry profile, stored band keys
            # (engine/profiles.py), screen record (engine/screen.py)
            assert key[1:] in entry_ids, f"profile extra[{key!r}] belongs to no entry"
            if key[:1] == b"p":
                profiled.add(key[1:])
        else:
            assert key in entry_ids, f"extra[{key!r}] belongs to no entry"
    for db in ("profiles", "profile_keys"):      # hub format 5: in their own databases
        for key in txn.keys(db):
            assert key in entry_ids, f"{db}[{key!r}] belongs to no entry"
            if db == "profiles":
                assert key not in profiled, f"entry {key!r} has a profile in extra and in profiles"
                profiled.add(key)
    assert profiled == entry_ids, f"entries without a profile: {sorted(entry_ids - profiled)}"
    for key in txn.keys("weights"):
        if key.startswith(_AE_PREFIX):
            assert key[len(_AE_PREFIX):] in entry_ids, f"weights[{key!r}] belongs to no entry"
    live = {from_u64(k) for k in entry_ids}
    for _, v in txn.items("bands"):
        eid = int.from_bytes(v[:4], "big")   # 4-byte postings (format 4) or 8 (entry id, feature)
        assert eid in live, f"a band record points at entry id {eid}, which does not exist"
    next_id = txn.get("meta", b"next_id")
    if live:
        assert next_id is not None and next_id > max(live), f"meta next_id={next_id} <= an existing id"
    return sorted(names)


def check_hub(hub) -> list[str]:
    with hub.store.read() as txn:
        return check_txn(txn)


def has_autoencoder(hub, name: str) -> bool:
    with hub.store.read() as txn:
        key = txn.get_raw("names", name.encode("utf-8"))
        return key is not None and txn.get_raw("weights", _AE_PREFIX + key) is not None


# ------------------------------------------------------------------------------- fork server
_ZYGOTE = r"""
import importlib.util, json, os, sys, traceback
os.environ.setdefault("TRITON_INTERPRET", "1")
import numpy, pandas, fitsketch, fitsketch.simex          # the expensive imports, once
def _warm():
    # Run one add with an autoencoder and one search in a throwaway forked child, then import
    # here every module it imported (imports only: no torch op runs before a fork).
    import tempfile
    d = tempfile.mkdtemp(prefix="fszyg")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            sys.path.insert(0, os.environ["FS_TESTS_DIR"])
            import _hubcheck as hc
            from fitsketch.simex import AEConfig
            with fitsketch.open(os.path.join(d, "h")) as h:
                h.add("w", hc.make_frame("w"), autoencoder=True, ae_config=AEConfig(**hc.TINY_AE))
                h.search(hc.make_frame("w"), method="exact-js")
                h.search(hc.make_frame("w"))
            os.write(w, "\n".join(sorted(sys.modules)).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while True:
        chunk = os.read(r, 1 << 16)
        if not chunk:
            break
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    import importlib, shutil
    shutil.rmtree(d, ignore_errors=True)
    for name in data.decode().split("\n"):
        if name and name not in sys.modules and not name.startswith("_worker"):
            try:
                importlib.import_module(name)
            except BaseException:
                pass
if os.environ.get("FS_ZYGOTE_WARM") == "1":
    _warm()
mods = {}
def load(path):
    if path not in mods:
        spec = importlib.util.spec_from_file_location(f"_worker{len(mods)}", path)
        m = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(m)
        mods[path] = m
    return mods[path]
out = sys.stdout
out.write("ready\n"); out.flush()
for line in sys.stdin:
    cmd = json.loads(line)
    if "wait" in cmd:
        _, status = os.waitpid(cmd["wait"], 0)
        out.write(json.dumps({"pid": cmd["wait"], "status": status}) + "\n"); out.flush()
        continue
    fn = getattr(load(cmd["script"]), cmd["fn"])
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            log = os.open(cmd["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.dup2(log, 1); os.dup2(log, 2)
            sys.stdout = open(1, "w", buffering=1, closefd=False)
            sys.stderr = open(2, "w", buffering=1, closefd=False)
            fn(**cmd["kwargs"])
        except BaseException:
            traceback.print_exc()
            code = 3
        finally:
            try:
                sys.stdout.flush(); sys.stderr.flush()
            finally:
                os._exit(code)
    out.write(json.dumps({"pid": pid}) + "\n"); out.flush()
"""


class Zygote:
    """``with Zygote() as z: pid = z.spawn(script, "fn", log, **kw); ...; z.wait(pid)``."""

    def __init__(self, timeout: float = 180.0, warm: bool = True):
        env = dict(os.environ, PYTHONUNBUFFERED="1", FS_ZYGOTE_WARM="1" if warm else "0",
                   FS_TESTS_DIR=os.path.dirname(os.path.abspath(__file__)))
        self.proc = subprocess.Popen([sys.executable, "-c", _ZYGOTE], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)
        self.live: set[int] = set()
        line = self._read(timeout)
        assert line == "ready", f"zygote did not start: {line!r}"

    def _read(self, timeout: float = 120.0) -> str:
        import select

        r, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert r, "zygote did not answer"
        line = self.proc.stdout.readline()
        assert line, f"zygote died (rc={self.proc.poll()})"
        return line.strip()

    def _cmd(self, cmd: dict) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return json.loads(self._read())

    def spawn(self, script: str, fn: str, log: str, **kwargs) -> int:
        pid = self._cmd({"script": str(script), "fn": fn, "log": str(log), "kwargs": kwargs})["pid"]
        self.live.add(pid)
        return pid

    def wait(self, pid: int) -> int:
        """Reap worker ``pid``; its wait status (``os.waitstatus_to_exitcode`` gives -signal)."""
        status = self._cmd({"wait": pid})["status"]
        self.live.discard(pid)
        return os.waitstatus_to_exitcode(status)

    def close(self) -> None:
        import signal

        for pid in list(self.live):          # our own unreaped workers: the pids cannot be reused
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.wait(pid)
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> "Zygote":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def exited(pid: int) -> bool:
    """Whether worker ``pid`` (unreaped) has died: a zombie, or gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def wait_for_line(path: str, text: str, timeout: float = 60.0, pid_alive=None) -> None:
    """Poll file ``path`` until a line equal to ``text`` appears."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(path) as f:
                if text in (ln.strip() for ln in f):
                    return
        except FileNotFoundError:
            pass
        time.sleep(0.01)
    raise AssertionError(f"{path} never got the line {text!r}")


def seeded_rng(name: str) -> np.random.Generator:
    import zlib

    return np.random.default_rng(zlib.crc32(name.encode("utf-8")))


def make_frame(name: str, n: int = 50):
    """The small random DataFrame of entry ``name`` (the same in every process)."""

    r = seeded_rng(name)
    shift = float(r.integers(0, 20))
    return pd.DataFrame({"a": r.normal(shift, 1.0, n), "b": r.integers(0, 8, n) + int(shift),
                         "c": r.choice(["red", "green", "blue", "cyan"], n)})


TINY_AE = dict(epochs=2, min_epochs=1, patience=1, hidden=(8, 4, 8), time_cap_s=5.0)


_ZYG: Zygote | None = None


def zygote() -> Zygote:
    """This process's shared fork server (started on first use, closed at exit)."""
    global _ZYG
    if _ZYG is None or _ZYG.proc.poll() is not None:
        import atexit

        _ZYG = Zygote()
        atexit.register(_ZYG.close)
    return _ZYG


# ------------------------------------------------------------------------------ known bugs
# Inputs that hit a reported, unfixed bug are kept out of the property tests and fuzzers, so these
# keep finding *new* bugs. The four found so far are fixed (see test_badinput.py "fixed bugs").
def hits_known_bug(data, feature_names=None) -> bool:
    return False


def set_format(path, fmt) -> None:
    """Write hub ``path``'s stored format number ``fmt`` directly (a hub as an older or newer
    fitsketch left it); the hub must be closed."""
    import lmdb
    import msgpack

    env = lmdb.open(str(path / "hub.lmdb"), subdir=False, max_dbs=16)
    try:
        with env.begin(write=True, db=env.open_db(b"meta", create=False)) as txn:
            txn.put(b"format", msgpack.packb(fmt))
    finally:
        env.close()
