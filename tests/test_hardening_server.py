"""The socket server against hostile clients (issue 23), over real sockets.

Before hello (and its token) a connection may send one small frame (64 KiB) decoding to few
values, within ``auth_timeout``; connections that never authenticate share ``max_pending`` slots
of their own, so they cannot keep out a client with the token; a socket path held by a live
server (even a stopped one with its backlog full) is refused to a second server.
``-m slow``: the server's memory under the pre-authentication and amplification attacks.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

import msgpack
import numpy as np
import pandas as pd
import pytest

import fitsketch
from fitsketch import errors as E
from fitsketch.client import connect
from fitsketch.protocol import MAX_ITEMS, PREAUTH_MAX_FRAME, decode_body, encode_frame, recv_frame
from fitsketch.server import Server
from fitsketch.storage import pack


@pytest.fixture
def sock_dir():
    d = tempfile.mkdtemp(dir="/tmp", prefix="fh")      # AF_UNIX paths < 108 bytes
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _raw(addr):
    if isinstance(addr, tuple):
        s = socket.create_connection(addr)
    else:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(addr)
    s.settimeout(10)
    return s


def _hello(s, token=None):
    s.sendall(encode_frame({"id": 1, "op": "hello", "args": {"protocol": 1, "token": token}}))
    return recv_frame(s, 1 << 20)


def _closed(s) -> bool:
    """The server closed ``s`` (after what it had to say: read to the end of the stream)."""
    try:
        while s.recv(1 << 16):
            pass
        return True
    except (ConnectionResetError, BrokenPipeError):
        return True


def _code(ans):
    return ans["error"]["code"]


def _nested_empty(n_outer: int, n_inner: int) -> bytes:
    """msgpack of ``n_outer`` arrays of ``n_inner`` empty arrays (1 wire byte per empty array)."""
    inner = b"\xdd" + struct.pack(">I", n_inner) + b"\x90" * n_inner
    return b"\xdd" + struct.pack(">I", n_outer) + inner * n_outer


# ----------------------------------------------------------------------------------- decoding
def test_decode_body_counts_values(rng):
    """Legitimate bodies decode as the codec does; a body of too many containers or values is
    refused however small it is on the wire."""
    cols = {"a": rng.normal(size=int(rng.integers(0, 50))), "s": [str(x) for x in rng.integers(0, 9, 30)],
            "m": {"k": [1, 2, {"z": None}]}}
    body = pack({"id": 3, "op": "add", "args": {"data": cols}})
    got = decode_body(body, 1000)
    assert got["args"]["data"]["s"] == cols["s"] and np.array_equal(got["args"]["data"]["a"], cols["a"])
    # 2 containers of 10 values each + the outer one: 1 + 2 + 2 * (1 + 10) values
    body = msgpack.packb([list(range(10)), list(range(10))])
    assert decode_body(body, 25) == [list(range(10))] * 2
    with pytest.raises(E.FrameTooLargeError):
        decode_body(body, 24)
    with pytest.raises(E.FrameTooLargeError):
        decode_body(_nested_empty(3, 400), 1000)
    with pytest.raises(E.ProtocolError):          # one array longer than the limit: msgpack's own check
        decode_body(b"\xdd" + struct.pack(">I", 2000) + b"\x90" * 2000, 1000)


# ------------------------------------------------------------------------- before authentication
def test_preauth_frames_are_small_and_bounded(tmp_path, sock_dir):
    srv = Server(tmp_path / "hub", socket_path=os.path.join(sock_dir, "s.sock"), shutdown_grace=2.0,
                 warm=False).start()
    try:
        for n in (PREAUTH_MAX_FRAME + 1, 1 << 31, (1 << 32) - 1):      # refused from the header alone
            s = _raw(srv.url())
            s.sendall(struct.pack(">I", n) + b"\x81")
            assert _code(recv_frame(s, 1 << 20)) == "frame_too_large" and _closed(s)
        s = _raw(srv.url())                                          # 60 KiB of empty arrays before hello
        body = _nested_empty(100, 600)                               # 60,505 bytes, 60,101 values
        s.sendall(struct.pack(">I", len(body)) + body)
        assert _code(recv_frame(s, 1 << 20)) == "frame_too_large" and _closed(s)
        # after hello, the same connection takes frames up to --max-frame, still counted by values
        s = _raw(srv.url())
        assert _hello(s)["ok"]
        s.sendall(encode_frame({"id": 2, "op": "add", "args": {"name": "a", "data": {
            "x": np.arange(100_000, dtype=np.float64) % 97}}}))
        assert recv_frame(s, 1 << 20)["ok"]
        big = _nested_empty(8, MAX_ITEMS // 6)                     # ~2.8 MB decoding to > MAX_ITEMS values
        s.sendall(struct.pack(">I", len(big)) + big)
        s.settimeout(120)
        assert _code(recv_frame(s, 1 << 20)) == "frame_too_large"
        with connect(srv.url()) as c:                                # the server serves on
            assert c.names() == ["a"]
    finally:
        srv.stop()


def test_unauthenticated_connections_are_dropped_and_cannot_hold_the_slots(tmp_path, sock_dir):
    srv = Server(tmp_path / "hub", socket_path=os.path.join(sock_dir, "s.sock"), max_connections=4,
                 max_pending=4, auth_timeout=0.5, shutdown_grace=2.0, warm=False).start()
    try:
        idle = [_raw(srv.url()) for _ in range(40)]                # never say hello
        with connect(srv.url()) as c:                                # a real client gets in
            assert c.ping()
        for s in idle[:-3]:                                          # the oldest were dropped for newcomers
            assert _closed(s)
        for s in idle[-3:]:                                          # the rest time out (auth_timeout)
            ans = recv_frame(s, 1 << 20)
            assert _code(ans) == "connection" and "hello" in ans["error"]["message"] and _closed(s)
        # authenticated connections still have their cap: the fifth is busy
        clients = [connect(srv.url()) for _ in range(4)]
        s = _raw(srv.url())
        assert _code(recv_frame(s, 1 << 20)) == "busy" and _closed(s)
        with pytest.raises(E.HubBusyError):
            connect(srv.url())
        for c in clients:
            assert c.ping()
            c.close()
    finally:
        srv.stop()


def test_tcp_token_client_gets_in_past_64_idle_connections(tmp_path):
    srv = Server(tmp_path / "hub", listen=("127.0.0.1", 0), token="s3cret", max_connections=64,
                 shutdown_grace=2.0, warm=False).start()
    try:
        idle = [_raw(srv.address) for _ in range(64)]
        s = _raw(srv.address)
        assert _code(_hello(s, token="wrong")) == "unauthorized" and _closed(s)
        with connect(srv.url(), token="s3cret") as c:
            assert c.ping() and c.names() == []
        for s in idle:
            s.close()
    finally:
        srv.stop()


# ------------------------------------------------------------------------------- socket takeover
def test_second_server_on_a_live_socket_is_refused(tmp_path, sock_dir):
    path = os.path.join(sock_dir, "s.sock")
    a = Server(tmp_path / "a", socket_path=path, shutdown_grace=2.0, warm=False).start()
    try:
        with pytest.raises(E.SocketInUseError):
            Server(tmp_path / "b", socket_path=path, warm=False).start()
        with connect(path) as c:
            assert c.stats()["path"] == a.hub_path
    finally:
        a.stop()
    assert not os.path.exists(path) and not os.path.exists(path + ".lock")
    b = Server(tmp_path / "b", socket_path=path, shutdown_grace=2.0, warm=False).start()   # free again
    b.stop()


def test_stopped_server_with_a_full_backlog_keeps_its_socket(tmp_path, sock_dir):
    """The attack of issue 23: SIGSTOP the serving process, fill its backlog so connect() times out,
    then serve another hub on the same --socket: refused, and the first serves again once resumed."""
    path = os.path.join(sock_dir, "s.sock")
    proc = subprocess.Popen([sys.executable, "-m", "fitsketch.server", str(tmp_path / "a"), "--socket", path,
                             "--no-warm"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    filled = []
    try:
        assert b"serving" in proc.stdout.readline()
        os.kill(proc.pid, signal.SIGSTOP)
        for _ in range(400):                       # past listen(128): connect() would block
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                s.connect(path)
            except (BlockingIOError, OSError):
                s.close()
                break
            filled.append(s)
        with pytest.raises(E.SocketInUseError):
            Server(tmp_path / "b", socket_path=path, warm=False).start()
        assert os.path.exists(path)
    finally:
        for s in filled:
            s.close()
        os.kill(proc.pid, signal.SIGCONT)
    try:
        deadline = time.monotonic() + 60
        while True:                      # the resumed server first drains its full backlog
            try:
                c = connect(path)
                break
            except E.ConnectionLostError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        with c:
            c.add("x", pd.DataFrame({"v": [1.0, 2.0, 3.0]}))
        with fitsketch.connect(path) as c:
            assert c.names() == ["x"]
    finally:
        proc.terminate()
        proc.wait(10)
    with fitsketch.open(tmp_path / "a") as h:            # the entry went to hub a
        assert h.names() == ["x"]


# ------------------------------------------------------------------------------ memory (slow)
def _rss(pid) -> tuple[int, int]:
    with open(f"/proc/{pid}/status") as f:
        st = dict(line.split(":", 1) for line in f)
    return int(st["VmRSS"].split()[0]) << 10, int(st["VmHWM"].split()[0]) << 10


@pytest.mark.slow
def test_server_memory_under_preauth_and_amplification_attacks(tmp_path, sock_dir):
    """Prints the server's RSS (bench/SUMMARY.md, Reliability) and holds it under 1.5 GB."""
    path = os.path.join(sock_dir, "s.sock")
    token = tmp_path / "tok"
    token.write_text("s3cret")
    token.chmod(0o600)
    unix = subprocess.Popen([sys.executable, "-m", "fitsketch.server", str(tmp_path / "a"), "--socket", path,
                             "--no-warm"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tcp = subprocess.Popen([sys.executable, "-m", "fitsketch.server", str(tmp_path / "b"), "--listen",
                            f"127.0.0.1:{port}", "--token-file", str(token), "--no-warm"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert b"serving" in unix.stdout.readline() and b"serving" in tcp.stdout.readline()
        report = []
        for proc, addr in ((tcp, ("127.0.0.1", port)), (unix, path)):
            base = _rss(proc.pid)[0]
            for n_conn in (8, 64):
                socks = []
                for i in range(n_conn):               # announce a huge frame, send 1 byte of it, hold
                    s = _raw(addr)
                    s.sendall(struct.pack(">I", (64 << 20) if i % 2 else PREAUTH_MAX_FRAME) + b"\x80")
                    socks.append(s)
                time.sleep(1.0)
                rss = _rss(proc.pid)[0]
                report.append(f"{'tcp' if proc is tcp else 'unix'} {n_conn} pre-auth connections announcing "
                              f"64 MiB / 64 KiB frames: RSS {base / 2**20:.0f} -> {rss / 2**20:.0f} MB")
                assert rss - base < 64 << 20
                for s in socks:
                    s.close()
            # a 32 MiB frame of empty arrays before hello: refused from its header
            s = _raw(addr)
            body = _nested_empty(32, 1 << 20)
            s.sendall(struct.pack(">I", len(body)))
            assert _code(recv_frame(s, 1 << 20)) == "frame_too_large"
            s.close()
        # after hello (the Unix socket: its mode is the authentication), the same 32 MiB frame
        s = _raw(path)
        assert _hello(s)["ok"]
        body = _nested_empty(32, 1 << 20)
        s.sendall(struct.pack(">I", len(body)) + body)
        assert _code(recv_frame(s, 1 << 20)) == "frame_too_large"
        s.close()
        rss, hwm = _rss(unix.pid)
        report.append(f"unix, authenticated: a 32 MiB frame of 33.5M empty arrays refused; peak RSS {hwm / 2**20:.0f} MB")
        with connect(path) as c:
            assert c.ping()
        print("\n" + "\n".join(report))
        assert hwm < 1.5 * 2**30 and _rss(tcp.pid)[1] < 1.5 * 2**30
    finally:
        for p in (unix, tcp):
            p.terminate()
            p.wait(10)


# ------------------------------------------------------------------------------- poisoned entries
def test_poisoned_add_sketch_over_the_wire_is_refused(tmp_path, sock_dir, rng):
    srv = Server(tmp_path / "hub", socket_path=os.path.join(sock_dir, "s.sock"), shutdown_grace=2.0,
                 warm=False).start()
    try:
        with connect(srv.url()) as c:
            frame = pd.DataFrame({"a": rng.normal(size=300), "b": rng.integers(0, 5, 300)})
            c.add("good", frame)
            cfg = srv.hub.config
            sk = fitsketch.sketch_data(frame, cfg)
            cov = sk.coverage
            for bad in ({**cov, "keys": cov["keys"][::-1].copy()}, {**cov, "bits": 30}, {**cov, "tables": 65536}):
                sk.coverage = bad
                with pytest.raises(E.InvalidArgumentError):
                    c.add_sketch("poison", sk)
            sk.coverage = cov
            sk.hist = {**sk.hist, "bucket": sk.hist["bucket"][::-1].copy()}
            with pytest.raises(E.InvalidArgumentError):
                c.add_sketch("poison", sk)
            with pytest.raises(E.CodecError):
                c.add_sketch("poison", fitsketch.sketch_data(frame, cfg), metadata={"task": np.array([1, 2])})
            assert c.names() == ["good"]
            assert [m.name for m in c.search(frame, method="coverage")] == ["good"]
    finally:
        srv.stop()
