"""The socket server and client: parity with the embedded Hub, concurrency, hostile frames,
permissions, locking, reconnection, and crashes of a server running in a real subprocess."""
import os
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pandas as pd
import pytest

import fitsketch
from fitsketch import errors as E
from fitsketch.client import Client, connect
from fitsketch.protocol import PROTOCOL_VERSION, ClosedError, UnauthorizedError, recv_frame
from fitsketch.server import HANDLERS, Server, add_serve_parser, cmd_serve, parse_listen
from fitsketch.storage import pack

N = 50            # rows per dataset
PART = 25         # partition_size
METHODS = ("adaptivity", "coverage", "js", "exact-js", "l2")


def _data(seed: int, shift: int = 0, cols=("a", "b", "c")) -> dict:
    r = np.random.default_rng(seed)
    return {c: r.integers(shift + i, shift + i + 20, size=N) for i, c in enumerate(cols)}


def _fill(h, n: int = 5) -> list:
    return [h.add(f"m{i}", _data(100 + i, shift=i), metadata={"i": i}, partition_size=PART) for i in range(n)]


@pytest.fixture
def sock_dir():
    d = tempfile.mkdtemp(dir="/tmp", prefix="fs")     # AF_UNIX paths must stay < 108 bytes
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def server(tmp_path, sock_dir):
    srv = Server(tmp_path / "hub", socket_path=os.path.join(sock_dir, "s.sock"), shutdown_grace=2.0).start()
    yield srv
    srv.stop()


@pytest.fixture(params=["embedded", "client"])
def api(request, tmp_path, sock_dir):
    """The same tests against ``fitsketch.open`` and against a Client of a served hub."""
    if request.param == "embedded":
        with fitsketch.open(tmp_path / "hub") as hub:
            yield hub
        return
    srv = Server(tmp_path / "hub", socket_path=os.path.join(sock_dir, "s.sock"), shutdown_grace=2.0).start()
    try:
        with connect(srv.url()) as c:
            assert isinstance(c, Client)
            yield c
    finally:
        srv.stop()


# ------------------------------------------------------------------------------- parity
def test_add_names_len_contains_get(api):
    assert len(api) == 0 and api.names() == [] and "m0" not in api
    e = api.add("m0", _data(1), metadata={"task": "em", "acc": 0.9}, partition_size=PART)
    assert isinstance(e, fitsketch.Entry)
    assert (e.name, e.features, e.n_rows, e.n_partitions, e.metadata) == ("m0", ["a", "b", "c"], N, 2,
                                                                           {"task": "em", "acc": 0.9})
    x = np.random.default_rng(2).normal(size=(N, 3)).astype(np.float32)
    e2 = api.add("arr", x, feature_names=["u", "v", "w"], partition_size=PART)
    assert e2.features == ["u", "v", "w"] and e2.n_rows == N
    e3 = api.add("df", pd.DataFrame({"s": [f"t{i % 7}" for i in range(N)], "n": np.arange(N)}), partition_size=PART)
    assert e3.kinds == fitsketch.sketch_data(pd.DataFrame({"s": ["t0"], "n": [0]})).kinds
    assert api.names() == ["arr", "df", "m0"] and len(api) == 3
    assert "m0" in api and "nope" not in api and 5 not in api
    assert api.get("m0") == e and api.get("arr") == e2
    api.remove("m0")
    assert "m0" not in api and len(api) == 2
    st = api.stats()
    assert st["entries"] == 2 and "config" in st
    assert api.warm() == 2     # profiles of the live entries (the removed one is dropped)


def test_add_sketch(api):
    cfg = api.config
    sk = fitsketch.sketch_data(_data(3), cfg, partition_size=PART)
    e = api.add_sketch("sk", sk, metadata={"k": [1, 2]})
    assert e.n_rows == N and e.metadata == {"k": [1, 2]} and api.get("sk") == e
    assert api.search(sk, method="exact-js")[0].name == "sk"


def test_add_sketches(api):
    cfg = api.config
    sks = {f"b{i}": fitsketch.sketch_data(_data(20 + i, shift=i), cfg, partition_size=PART) for i in range(7)}
    api.add("m0", _data(1), partition_size=PART)
    assert api.add_sketches([]) == 0
    items = [(n, sk, {"i": i}) if i % 2 else (n, sk) for i, (n, sk) in enumerate(sks.items())]
    assert api.add_sketches(items, batch=3) == 7
    assert api.names() == ["b0", "b1", "b2", "b3", "b4", "b5", "b6", "m0"]
    for i, (n, sk) in enumerate(sks.items()):
        e = api.get(n)
        assert (e.n_rows, e.features, e.metadata) == (N, ["a", "b", "c"], {"i": i} if i % 2 else {})
    want = [(m.name, m.score) for m in api.search(sks["b3"], k=8, method="exact-js")]
    assert want[0] == ("b3", pytest.approx(1.0))
    # refused before anything is written: a name in the hub, a name twice, a bad item, a bad batch
    fresh = fitsketch.sketch_data(_data(99), cfg, partition_size=PART)
    bad = {
        E.EntryExistsError: [("new", fresh), ("b2", fresh)],
        E.InvalidArgumentError: [("new", fresh), ("x", "not a sketch")],
    }
    for cls, its in bad.items():
        with pytest.raises(cls):
            api.add_sketches(its)
    with pytest.raises(E.EntryExistsError, match="twice"):
        api.add_sketches([("new", fresh), ("new", fresh)])
    with pytest.raises(E.InvalidArgumentError):
        api.add_sketches([("new", fresh)], batch=0)
    with pytest.raises(E.InvalidArgumentError):
        api.add_sketches([("new", fresh, {"k": 1}, "extra")])
    other = fitsketch.sketch_data(_data(99), cfg.replace(num_perm=64, lsh_l=16), partition_size=PART)
    with pytest.raises(E.InvalidArgumentError, match="parameters"):
        api.add_sketches([("new", fresh), ("odd", other)])
    assert len(api) == 8 and "new" not in api


def test_client_add_sketches_splits_requests_at_the_frame_limit(tmp_path, sock_dir):
    srv = Server(tmp_path / "hub", socket_path=os.path.join(sock_dir, "s.sock"), max_frame=20_000,
                 shutdown_grace=2.0).start()
    try:
        with connect(srv.url()) as c, fitsketch.open(tmp_path / "ref") as ref:
            cfg = c.config
            sks = [(f"e{i:02d}", fitsketch.sketch_data(_data(40 + i, shift=i % 5), cfg, partition_size=PART), {"i": i})
                   for i in range(13)]
            one = len(pack({"name": "e00", "sketch": sks[0][1].to_record(), "metadata": {"i": 0}}))
            assert 2 * one < 20_000 < 13 * one            # several items fit a request, not all
            sent = []
            call = c._call
            c._call = lambda op, args: (sent.append(len(args.get("items", ()))), call(op, args))[1]
            assert c.add_sketches(sks, batch=1000) == 13
            c._call = call
            assert len(sent) > 1 and sum(sent) == 13 and 1 < max(sent) and max(sent) * one < 20_000
            ref.add_sketches(sks)
            assert c.names() == ref.names()
            q = fitsketch.sketch_data(_data(45, shift=0), cfg, partition_size=PART)
            assert [(m.name, m.score) for m in c.search(q, k=13)] == \
                [(m.name, pytest.approx(m.score, abs=1e-12)) for m in ref.search(q, k=13)]
            # a later request refused: the earlier ones stay, and the error says how many went in
            more = [(f"f{i:02d}", sk, md) for i, (_, sk, md) in enumerate(sks)][:12] + [("e05", sks[5][1])]
            with pytest.raises(E.EntryExistsError, match="the 12 entries of the requests before this one were added"):
                c.add_sketches(more, batch=3)
            assert len(c) == 25 and "f11" in c
    finally:
        srv.stop()


@pytest.mark.parametrize("case", ["exists", "not_found_get", "not_found_remove", "unknown_method", "empty_dict",
                                  "empty_array", "bad_k", "bad_name", "no_shared"])
def test_errors_same_class(api, case):
    api.add("m0", _data(1), partition_size=PART)
    calls = {
        "exists": (E.EntryExistsError, lambda: api.add("m0", _data(2))),
        "not_found_get": (E.EntryNotFoundError, lambda: api.get("zz")),
        "not_found_remove": (E.EntryNotFoundError, lambda: api.remove("zz")),
        "unknown_method": (E.UnknownMethodError, lambda: api.search(_data(1), method="magic")),
        "empty_dict": (E.EmptyDataError, lambda: api.add("e", {"a": []})),
        "empty_array": (E.EmptyDataError, lambda: api.search(np.zeros((0, 3)))),
        "bad_k": (E.InvalidArgumentError, lambda: api.search(_data(1), k=0)),
        "bad_name": (E.InvalidArgumentError, lambda: api.get("")),
        "no_shared": (E.NoSharedFeaturesError, lambda: api.search({"zz": np.arange(N) + 10_000})),
    }
    cls, fn = calls[case]
    with pytest.raises(cls) as ei:
        fn()
    assert type(ei.value) is cls
    assert api.names() == ["m0"]          # the hub is unchanged and still answers


@pytest.fixture
def pair(tmp_path, sock_dir):
    """(embedded hub, client of another hub) holding the same entries."""
    srv = Server(tmp_path / "served", socket_path=os.path.join(sock_dir, "s.sock"), shutdown_grace=2.0).start()
    hub = fitsketch.open(tmp_path / "embedded")
    client = connect(srv.url())
    try:
        for h in (hub, client):
            _fill(h, 6)
            h.add("arr", np.random.default_rng(7).integers(0, 30, size=(N, 3)), feature_names=["a", "b", "x"],
                  partition_size=PART)
        yield hub, client
    finally:
        client.close()
        hub.close()
        srv.stop()


def test_search_and_explain_equal_embedded(pair):
    hub, client = pair
    queries = [_data(42, shift=2), pd.DataFrame(_data(43, shift=1)),
               np.random.default_rng(44).integers(0, 25, size=(N, 2)), fitsketch.sketch_data(_data(45), hub.config)]
    for q in queries:
        fn = ["a", "b"] if isinstance(q, np.ndarray) else None
        for method in METHODS:
            a = hub.search(q, k=4, method=method, feature_names=fn)
            b = client.search(q, k=4, method=method, feature_names=fn)
            assert a and a == b, (method, type(q))
            assert all(type(m) is fitsketch.Match and isinstance(m.features[0], tuple) for m in b)
    kw = dict(k=3, method="adaptivity", where={"i": 2}, feature_threshold=0.3)
    assert hub.search(queries[0], **kw) == client.search(queries[0], **kw)
    pa, pb = hub.explain(queries[0], **kw), client.explain(queries[0], **kw)
    assert type(pb) is type(pa)
    strip = [(s.name, s.detail, s.estimated, s.actual) for s in pa.stages]
    assert strip == [(s.name, s.detail, s.estimated, s.actual) for s in pb.stages]


def _profiles_state(hub):
    with hub.store.read() as txn:
        gen = int(txn.get("meta", b"generation"))
    idx = hub._profile_index()
    return idx.generation == gen, len(idx)


@pytest.mark.parametrize("warm", [True, False])
def test_server_warms_the_hub_at_start(tmp_path, sock_dir, warm):
    """By default a server loads the entry profiles in the background as it starts (so a big hub's
    first search is not the slow one); warm=False leaves that to the first search."""
    with fitsketch.open(tmp_path / "hub") as hub:
        _fill(hub, 7)
    srv = Server(tmp_path / "hub", socket_path=os.path.join(sock_dir, "s.sock"), shutdown_grace=2.0,
                 warm=warm).start()
    try:
        assert srv.warmed.wait(30)
        assert _profiles_state(srv.hub) == ((True, 7) if warm else (False, 0))
        with connect(srv.url()) as c:
            assert c.search(_data(42), k=3)
            assert _profiles_state(srv.hub) == ((True, 7) if warm else (False, 0))   # 7 entries: no shortlist
            assert c.warm() == 7 and _profiles_state(srv.hub) == (True, 7)
    finally:
        srv.stop()


def test_server_serves_when_warming_fails(tmp_path, sock_dir, monkeypatch, caplog):
    with fitsketch.open(tmp_path / "hub") as hub:
        _fill(hub, 3)
        ref = hub.search(_data(42), k=3)

    def broken(self):
        raise E.CorruptHubError("profile record unreadable")

    monkeypatch.setattr(fitsketch.Hub, "warm", broken)
    srv = Server(tmp_path / "hub", socket_path=os.path.join(sock_dir, "s.sock"), shutdown_grace=2.0).start()
    try:
        assert srv.warmed.wait(30)
        with connect(srv.url()) as c:
            assert c.search(_data(42), k=3) == ref
    finally:
        srv.stop()
    assert "warming hub" in caplog.text and "profile record unreadable" in caplog.text


def test_concurrent_clients_match_serial(tmp_path, sock_dir):
    srv = Server(tmp_path / "hub", socket_path=os.path.join(sock_dir, "s.sock"), shutdown_grace=2.0).start()
    ref = fitsketch.open(tmp_path / "ref")
    try:
        with connect(srv.url()) as c:
            _fill(c, 5)
        _fill(ref, 5)
        # added entries hold values no query holds (features match by values), so they never change
        # what the searches see
        n_threads, rounds = 16, 3
        queries = {(t, r): _data(1000 + 10 * t + r, shift=t % 4) for t in range(n_threads) for r in range(rounds)}
        adds = {(t, r): _data(5000 + 10 * t + r, shift=1_000_000, cols=("x", "y"))
                for t in range(n_threads) for r in range(rounds)}
        expected = {key: ref.search(q, k=3, method=("exact-js", "adaptivity")[key[1] % 2])
                    for key, q in queries.items()}
        got, added, failures = {}, {}, []
        barrier = threading.Barrier(n_threads)

        def work(t):
            try:
                with connect(srv.url()) as cl:
                    barrier.wait()
                    for r in range(rounds):
                        got[t, r] = cl.search(queries[t, r], k=3, method=("exact-js", "adaptivity")[r % 2])
                        added[t, r] = cl.add(f"t{t}-{r}", adds[t, r], partition_size=PART)
            except BaseException as e:  # noqa: BLE001 - reported below
                failures.append(repr(e))

        threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
        assert not failures
        assert got == expected
        with connect(srv.url()) as c:
            assert len(c) == 5 + n_threads * rounds
            for (t, r), e in added.items():
                assert c.get(f"t{t}-{r}") == e
            assert len({e.id for e in added.values()}) == n_threads * rounds
    finally:
        ref.close()
        srv.stop()


def test_shared_client_across_threads(server):
    with connect(server.url()) as c:
        _fill(c, 3)
        want = c.search(_data(9), method="exact-js")
        out = []
        ths = [threading.Thread(target=lambda: out.append(c.search(_data(9), method="exact-js"))) for _ in range(8)]
        for th in ths:
            th.start()
        for th in ths:
            th.join(30)
        assert out == [want] * 8


# --------------------------------------------------------------------------- raw frames
def _raw(address) -> socket.socket:
    if isinstance(address, tuple):
        s = socket.create_connection(address, timeout=5)
    else:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(address)
    return s


def _send(s, obj) -> None:
    body = pack(obj)
    s.sendall(struct.pack(">I", len(body)) + body)


def _ask(s, obj):
    _send(s, obj)
    return recv_frame(s, 1 << 30)


def _hello(s, token=None):
    r = _ask(s, {"id": 0, "op": "hello", "args": {"protocol": PROTOCOL_VERSION, "token": token}})
    assert r["ok"] and r["result"]["protocol"] == PROTOCOL_VERSION, r
    return r["result"]


def _closed(s) -> bool:
    try:
        return s.recv(1) == b""
    except (ConnectionError, socket.timeout):
        return True


def _code(resp):
    assert resp["ok"] is False, resp
    return resp["error"]["code"]


def test_malformed_frames_get_errors_and_server_keeps_serving(tmp_path, sock_dir):
    srv = Server(tmp_path / "hub", socket_path=os.path.join(sock_dir, "s.sock"), max_frame=1 << 16,
                 shutdown_grace=2.0).start()
    try:
        good = connect(srv.url())
        _fill(good, 2)
        addr = srv.url()
        # a frame cut short, then the client goes away
        s = _raw(addr)
        _hello(s)
        s.sendall(struct.pack(">I", 100) + b"\x81\xa2id")
        s.close()
        # a length prefix over the limit: error frame, then close, before any body is read
        s = _raw(addr)
        _hello(s)
        s.sendall(struct.pack(">I", 1 << 20))
        r = recv_frame(s, 1 << 20)
        assert _code(r) == "frame_too_large" and _closed(s)
        # bytes that are not msgpack, a body that is not a map, unknown op, bad args: error, stays open
        s = _raw(addr)
        info = _hello(s)
        assert info["hub"] == str(tmp_path / "hub") and info["max_frame"] == 1 << 16
        s.sendall(struct.pack(">I", 3) + b"\xc1\xc1\xc1")
        assert _code(recv_frame(s, 1 << 20)) == "protocol"
        assert _code(_ask(s, [1, 2, 3])) == "protocol"
        assert _code(_ask(s, "hello")) == "protocol"
        r = _ask(s, {"id": 7, "op": "__class__", "args": {}})
        assert _code(r) == "protocol" and r["id"] == 7
        assert _code(_ask(s, {"id": 8, "op": "_op_remove", "args": {"name": "m0"}})) == "protocol"
        assert _code(_ask(s, {"id": 9, "op": "get", "args": {"name": 5}})) == "invalid_argument"
        assert _code(_ask(s, {"id": 10, "op": "get", "args": []})) == "invalid_argument"
        assert _code(_ask(s, {"id": 11, "op": "names", "args": {"x": 1}})) == "invalid_argument"
        assert _code(_ask(s, {"id": 12, "op": "search", "args": {"data": _data(1), "k": "ten"}})) == "invalid_argument"
        assert _code(_ask(s, {"id": 13, "op": "search", "args": {"data": 3.5}})) == "invalid_argument"
        assert _code(_ask(s, {"id": 13, "op": "search", "args": {"data": _data(1), "params": {"k": 1}}})) == \
            "invalid_argument"
        assert _code(_ask(s, {"id": 13, "op": "search", "args": {"data": _data(1), "params": {"bogus": 1}}})) == \
            "invalid_argument"
        assert _code(_ask(s, {"id": 14, "op": "add", "args": {"name": "x", "data": "/etc/passwd"}})) == "invalid_argument"
        assert _code(_ask(s, {"id": 15, "op": "add_sketch", "args": {"name": "x", "sketch": {"v": 1}}})) == \
            "invalid_argument"
        r = _ask(s, {"id": 17, "op": "len", "args": {}})
        assert r == {"id": 17, "ok": True, "result": 2}
        s.close()
        # a request before hello, a wrong protocol version: error frame, then close
        for first in ({"id": 1, "op": "names", "args": {}},
                      {"id": 1, "op": "hello", "args": {"protocol": 99}}):
            s = _raw(addr)
            assert _code(_ask(s, first)) == "protocol" and _closed(s)
        assert good.names() == ["m0", "m1"] and good.ping()
        assert "x" not in good
        good.close()
    finally:
        srv.stop()


def test_malformed_sketch_records_are_refused(server):
    with connect(server.url()) as c:
        rec = fitsketch.sketch_data(_data(1), c.config, partition_size=PART).to_record()
        s = _raw(server.url())
        _hello(s)
        bad = [
            {**rec, "signatures": rec["signatures"][:, :5]},
            {**rec, "signatures": rec["signatures"][:1]},
            {**rec, "names": ["a", "b"]},
            {**rec, "sums": rec["sums"][:1]},
            {**rec, "n_rows": -1},
            {**rec, "hist": {**rec["hist"], "feat": rec["hist"]["feat"] + 5}},
            {**rec, "hist": {**rec["hist"], "part": rec["hist"]["part"][:3]}},
            {**rec, "hist": {"part": [1]}},
            {**rec, "v": 99},
        ]
        for i, r in enumerate(bad):
            resp = _ask(s, {"id": i, "op": "add_sketch", "args": {"name": f"b{i}", "sketch": r}})
            assert _code(resp) == "invalid_argument", i
        assert _ask(s, {"id": 99, "op": "add_sketch", "args": {"name": "ok", "sketch": rec}})["ok"]
        # add_sketches: one bad item refuses the whole request
        for j, item in enumerate([bad[0], "text", {"name": 3, "sketch": rec}, {"name": "z", "sketch": rec, "x": 1},
                                  {"name": "z", "sketch": rec, "metadata": [1]}]):
            item = {"name": f"c{j}", "sketch": item} if item is bad[0] else item
            resp = _ask(s, {"id": 200 + j, "op": "add_sketches", "args": {"items": [{"name": "fine", "sketch": rec},
                                                                                     item]}})
            assert _code(resp) == "invalid_argument", j
        assert _code(_ask(s, {"id": 300, "op": "add_sketches", "args": {"items": {"a": 1}}})) == "invalid_argument"
        assert _ask(s, {"id": 301, "op": "add_sketches", "args": {"items": [{"name": "two", "sketch": rec}]}}) == \
            {"id": 301, "ok": True, "result": 1}
        assert c.names() == ["ok", "two"]
        s.close()


def test_tcp_needs_hello_with_the_right_token(tmp_path):
    srv = Server(tmp_path / "hub", listen="127.0.0.1:0", token="s3cret-token", shutdown_grace=2.0).start()
    try:
        addr = srv.address
        s = _raw(addr)
        assert _code(_ask(s, {"id": 1, "op": "names", "args": {}})) == "protocol" and _closed(s)
        for token in (None, "wrong", "s3cret-token-and-more", 5):
            s = _raw(addr)
            assert _code(_ask(s, {"id": 1, "op": "hello", "args": {"protocol": 1, "token": token}})) == "unauthorized"
            assert _closed(s)
        s = _raw(addr)
        _hello(s, "s3cret-token")
        assert _ask(s, {"id": 2, "op": "names", "args": {}})["result"] == []
        s.close()
        with pytest.raises(UnauthorizedError):
            connect(srv.url())
        with connect(srv.url(), token="s3cret-token") as c:
            c.add("m", _data(1), partition_size=PART)
            assert c.names() == ["m"]
    finally:
        srv.stop()


def test_listen_refuses_non_loopback_and_missing_token(tmp_path):
    assert parse_listen("127.0.0.1:7707") == ("127.0.0.1", 7707)
    assert parse_listen("localhost:0")[1] == 0
    for bad in ("0.0.0.0:7707", "8.8.8.8:1", "no-port", "127.0.0.1:http"):
        with pytest.raises(E.InvalidArgumentError):
            parse_listen(bad)
    assert parse_listen("0.0.0.0:7707", allow_remote=True) == ("0.0.0.0", 7707)
    with pytest.raises(E.InvalidArgumentError, match="token"):
        Server(tmp_path / "hub", listen="127.0.0.1:0")
    with pytest.raises(E.InvalidArgumentError, match="108|allow"):
        Server(tmp_path / ("x" * 120), socket_path="/tmp/" + "y" * 120 + ".sock")


def test_frame_limit_on_the_client_side(tmp_path, sock_dir):
    srv = Server(tmp_path / "hub", socket_path=os.path.join(sock_dir, "s.sock"), max_frame=4096,
                 shutdown_grace=2.0).start()
    try:
        with connect(srv.url()) as c:
            with pytest.raises(E.FrameTooLargeError):
                c.add("big", {"a": np.arange(10_000)})
            c.add("small", {"a": np.arange(20)})
            assert c.names() == ["small"]
    finally:
        srv.stop()


def test_data_paths(tmp_path, sock_dir):
    allowed = tmp_path / "data"
    allowed.mkdir()
    csv = allowed / "d.csv"
    pd.DataFrame(_data(1)).to_csv(csv, index=False)
    outside = tmp_path / "secret.csv"
    pd.DataFrame(_data(2)).to_csv(outside, index=False)
    (allowed / "link.csv").symlink_to(outside)
    with fitsketch.open(tmp_path / "ref") as ref:
        want = ref.add("d", str(csv), partition_size=PART)
    srv = Server(tmp_path / "hub", socket_path=os.path.join(sock_dir, "s.sock"), shutdown_grace=2.0).start()
    try:
        with connect(srv.url()) as c:                     # local file: read here, sent as columns
            e = c.add("d", str(csv), partition_size=PART)
            assert (e.features, e.n_rows, e.kinds) == (want.features, want.n_rows, want.kinds)
        with connect(srv.url(), remote_paths=True) as c:  # server without --allow-paths reads nothing
            with pytest.raises(E.InvalidArgumentError, match="allow-paths"):
                c.add("r", str(csv))
    finally:
        srv.stop()
    srv = Server(tmp_path / "hub", socket_path=os.path.join(sock_dir, "s.sock"), allow_paths=[allowed],
                 shutdown_grace=2.0).start()
    try:
        with connect(srv.url(), remote_paths=True) as c:
            assert c.add("r", str(csv), partition_size=PART).n_rows == N
            for bad in (str(outside), str(allowed / ".." / "secret.csv"), str(allowed / "link.csv")):
                with pytest.raises(E.InvalidArgumentError, match="outside"):
                    c.add("r2", bad)
            assert c.names() == ["d", "r"]
    finally:
        srv.stop()


# ------------------------------------------------------------------ server resources
def test_socket_mode_and_removal_and_one_server_per_hub(tmp_path, sock_dir):
    path = os.path.join(sock_dir, "s.sock")
    srv = Server(tmp_path / "hub", socket_path=path).start()
    try:
        st = os.stat(path)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        with pytest.raises(E.HubBusyError):
            Server(tmp_path / "hub", socket_path=os.path.join(sock_dir, "t.sock")).start()
        with pytest.raises(E.HubBusyError):                # the socket answers: not stale
            Server(tmp_path / "other", socket_path=path).start()
        assert connect(srv.url()).ping()
    finally:
        srv.stop()
    assert not os.path.exists(path)
    # a hub directory: its socket answers -> a Client; no server -> the embedded Hub
    hub = os.path.join(sock_dir, "h")                   # short: the default socket lives inside the hub
    with Server(hub, shutdown_grace=2.0) as srv2:
        assert os.path.exists(os.path.join(hub, "fitsketch.sock"))
        with connect(hub) as c:
            assert isinstance(c, Client) and c.path == hub
    assert not os.path.exists(os.path.join(hub, "fitsketch.sock")) and srv2.hub is None
    with connect(hub) as h:
        assert isinstance(h, fitsketch.Hub)


def test_stop_answers_idle_connections(server):
    s = _raw(server.url())
    _hello(s)
    with connect(server.url()) as c:
        c.add("m", _data(1), partition_size=PART)
        server.stop()
        r = recv_frame(s, 1 << 20)                        # unasked: the server says why it goes away
        assert _code(r) == "connection" and _closed(s)
        with pytest.raises(E.ConnectionLostError):
            c.names()


def test_stop_lets_the_request_in_flight_finish(server, monkeypatch):
    started = threading.Event()

    def slow_ping(srv, hub, args):
        started.set()
        time.sleep(0.5)
        return {"pong": True}

    monkeypatch.setitem(HANDLERS, "ping", slow_ping)
    with connect(server.url()) as c:
        out = []
        th = threading.Thread(target=lambda: out.append(c.ping()))
        th.start()
        assert started.wait(10)
        t0 = time.time()
        server.stop()
        th.join(10)
        assert out == [True] and time.time() - t0 >= 0.3 and server.hub is None


def test_connection_cap(tmp_path, sock_dir):
    srv = Server(tmp_path / "hub", socket_path=os.path.join(sock_dir, "s.sock"), max_connections=2,
                 shutdown_grace=2.0).start()
    try:
        a, b = connect(srv.url()), connect(srv.url())
        s = _raw(srv.url())
        assert _code(recv_frame(s, 1 << 20)) == "busy" and _closed(s)
        with pytest.raises(E.HubBusyError):
            connect(srv.url())
        a.close()
        deadline = time.time() + 5
        while True:
            try:
                c = connect(srv.url())
                break
            except E.HubBusyError:
                assert time.time() < deadline
                time.sleep(0.05)
        assert c.ping() and b.ping()
        b.close(), c.close()
    finally:
        srv.stop()


def test_idle_connection_is_closed_and_client_reconnects(tmp_path, sock_dir):
    srv = Server(tmp_path / "hub", socket_path=os.path.join(sock_dir, "s.sock"), idle_timeout=0.3,
                 shutdown_grace=2.0).start()
    try:
        with connect(srv.url()) as c:
            c.add("a", _data(1), partition_size=PART)
            time.sleep(0.8)          # the server has closed the idle connection: nothing was sent yet,
            c.add("b", _data(2), partition_size=PART)      # so even a write reconnects
            assert c.names() == ["a", "b"]
    finally:
        srv.stop()


class _FakeServer:
    """Answers hello; then, per connection, either drops the first request or answers it."""

    def __init__(self, path, plan):
        self.plan = list(plan)          # "drop" | "answer" | "hang", one per connection
        self.requests = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(8)
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        for what in self.plan:
            conn, _ = self.sock.accept()
            conn.settimeout(10)
            _hello_req = recv_frame(conn, 1 << 20)
            info = {"protocol": 1, "hub": "fake", "max_frame": 1 << 20}
            _send(conn, {"id": _hello_req["id"], "ok": True, "result": info})
            req = recv_frame(conn, 1 << 20)
            self.requests.append(req["op"])
            if what == "answer":
                _send(conn, {"id": req["id"], "ok": True, "result": ["x"]})
                time.sleep(0.2)
            elif what == "hang":
                time.sleep(1.5)
            conn.close()


def test_lost_connection_retries_reads_once_never_writes(sock_dir):
    path = os.path.join(sock_dir, "f.sock")
    fake = _FakeServer(path, ["drop", "answer", "drop", "hang"])
    c = Client(path, timeout=0.5)
    assert c.names() == ["x"]                        # dropped after sending: a read is retried once
    c._drop()
    with pytest.raises(E.ConnectionLostError, match="may or may not"):
        c.remove("x")                                # a write is not
    t0 = time.time()
    with pytest.raises(E.ConnectionLostError, match="did not answer"):
        c.names()                                    # a timeout is not retried either
    assert time.time() - t0 < 1.4
    assert fake.requests == ["names", "names", "remove", "names"]
    c.close()
    fake.sock.close()
    with pytest.raises(E.ConnectionLostError):
        Client(os.path.join(sock_dir, "nobody.sock"))


def test_allow_list_is_pinned():
    assert sorted(HANDLERS) == sorted(["add", "add_sketch", "add_sketches", "contains", "explain", "get", "len", "names", "nearest",
                                "ping", "remove", "sample", "search", "search_logits", "stats", "warm", "class_pool"])


def test_cli_parser():
    import argparse

    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="command")
    add_serve_parser(sub)
    a = p.parse_args(["serve", "h", "--listen", "127.0.0.1:0", "--token-file", "t", "--max-frame", "1024",
                      "--allow-paths", "/data"])
    assert (a.fn, a.listen, a.token_file, a.max_frame, a.allow_paths) == (cmd_serve, "127.0.0.1:0", "t", 1024, ["/data"])
    assert a.warm is True and p.parse_args(["serve", "h", "--no-warm"]).warm is False
    with pytest.raises(SystemExit):
        p.parse_args(["serve", "h", "--listen", "127.0.0.1:0", "--socket", "/tmp/x.sock"])
    with pytest.raises(E.InvalidArgumentError, match="token-file"):
        cmd_serve(p.parse_args(["serve", "h", "--listen", "127.0.0.1:0"]))


def test_server_main_has_its_own_parser_and_not_the_cli(tmp_path):
    """``python -m fitsketch.server``: the serve options, errors as the CLI prints them (one line,
    status 2), and the CLI module is never imported."""
    code = ("import sys, fitsketch.server as s\n"
            "rc = s.main([sys.argv[1], '--listen', '127.0.0.1:0'])\n"
            "print(rc, 'fitsketch.cli' in sys.modules)\n"
            "print(s.main(['--help']) , s.main([sys.argv[1], '--bogus']))\n")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "h")], capture_output=True, text=True, timeout=120)
    lines = r.stdout.strip().splitlines()
    assert lines[0] == "2 False" and lines[-1] == "0 2", r.stdout + r.stderr
    assert "fitsketch: error [invalid_argument]: --listen needs --token-file F" in r.stderr
    assert "--token-file" in r.stdout and "--no-warm" in r.stdout    # the --help text
    assert not (tmp_path / "h").exists()      # refused before the hub is created


# ------------------------------------------------------------------------ subprocesses
def _spawn(hub, sock):
    return subprocess.Popen([sys.executable, "-m", "fitsketch.server", str(hub), "--socket", sock],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_ready(proc, sock, timeout=60.0) -> Client:
    deadline = time.time() + timeout
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}: {proc.stderr.read()}")
        try:
            return Client(sock, timeout=10)
        except E.ConnectionLostError:
            assert time.time() < deadline, "server did not come up"
            time.sleep(0.05)


def test_sigkill_mid_write_then_restart_and_sigterm(tmp_path, sock_dir):
    hub, sock = tmp_path / "hub", os.path.join(sock_dir, "s.sock")
    hub2, sock2 = tmp_path / "hub2", os.path.join(sock_dir, "t.sock")
    proc, proc2 = _spawn(hub, sock), _spawn(hub2, sock2)     # started together: imports overlap
    try:
        # SIGKILL while a client is writing: the hub holds whole entries only
        c = _wait_ready(proc, sock)
        acked, errors = [], []
        big = {f"f{j}": np.random.default_rng(j).integers(0, 1000, size=500) for j in range(8)}

        def writer():
            try:
                for i in range(10_000):
                    c.add(f"e{i}", big, partition_size=100)
                    acked.append(f"e{i}")
            except E.ConnectionLostError as e:
                errors.append(e)

        th = threading.Thread(target=writer)
        th.start()
        deadline = time.time() + 60
        while len(acked) < 3 and th.is_alive() and time.time() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)                # while the next add is being written
        th.join(30)
        proc.wait(10)
        c.close()
        assert len(errors) == 1 and len(acked) >= 3
        assert os.path.exists(sock)                     # killed: the socket file stays behind
        with fitsketch.open(hub) as h:
            names = h.names()
            assert set(acked) <= set(names) and len(names) <= len(acked) + 1
            assert len(h) == len(names)
            with h.store.read() as txn:
                assert txn.count("entries") == txn.count("signatures") == txn.count("histograms") == len(names)
            for n in names:
                assert h.get(n).n_rows == 500
            q = {"f0": big["f0"][:N], "f1": big["f1"][:N]}
            want = h.search(q, method="exact-js", k=3)
        # a restarted server (the stale socket is replaced) serves the same hub
        with Server(hub, socket_path=sock, shutdown_grace=2.0) as srv, connect(sock) as c2:
            assert c2.names() == names and c2.search(q, method="exact-js", k=3) == want
            c2.add("after", _data(3), partition_size=PART)
            assert len(c2) == len(names) + 1
        assert not os.path.exists(sock) and srv.hub is None

        # SIGTERM: the request in flight is answered, then the server exits 0 and removes its socket
        with _wait_ready(proc2, sock2) as c3:
            c3.add("m", _data(1), partition_size=PART)
        with pytest.raises(E.HubBusyError, match="another fitsketch server"):
            Server(hub2, socket_path=os.path.join(sock_dir, "u.sock")).start()    # flock across processes
        s = _raw(sock2)
        _hello(s)
        _send(s, {"id": 1, "op": "search", "args": {"data": _data(1), "method": "exact-js"}})
        time.sleep(0.3)                                  # let the server read it (it answers either way)
        proc2.send_signal(signal.SIGTERM)
        r = recv_frame(s, 1 << 20)      # answered, or (if it lost the race with the signal) told why not
        assert (r["ok"] and r["result"][0]["name"] == "m") or _code(r) == "connection"
        if r["ok"]:     # answered before the signal: the now idle connection may be told it is closing
            try:
                note = recv_frame(s, 1 << 20)
                assert _code(note) == "connection" and "shutting down" in note["error"]["message"]
            except (ClosedError, ConnectionError, socket.timeout):
                pass
        assert _closed(s)
        assert proc2.wait(20) == 0
        assert not os.path.exists(sock2)
        with fitsketch.open(hub2) as h:
            assert h.names() == ["m"]
    finally:
        for p in (proc, proc2):
            if p.poll() is None:
                p.kill()
                p.wait()


def test_nearest_sample_and_search_logits_equal_embedded(rng, tmp_path, sock_dir):
    """The embedding and ProbeLog reads through the socket give what the embedded hub gives."""
    from fitsketch.probelog import make_probes

    srv = Server(tmp_path / "served", socket_path=os.path.join(sock_dir, "n.sock"), shutdown_grace=2.0).start()
    hub = fitsketch.open(tmp_path / "embedded")
    client = connect(srv.url())
    emb = {f"e{i}": rng.normal(size=(N, 8)) for i in range(3)}
    probes = make_probes(rng.normal(size=(200, 4)), 40, seed=1)
    W = [rng.normal(size=(4, 3)) for _ in range(2)]
    try:
        for h in (hub, client):
            for name, e in emb.items():
                h.add(name, _data(hash(name) % 100), embedding=e, partition_size=PART)
        hub.add_probes("p", probes, default=True)
        for i, w in enumerate(W):
            hub.add(f"m{i}", _data(i + 50), model=lambda x, w=w: x @ w, partition_size=PART)
        xq = rng.normal(size=(4, 8))
        Da, Ia = hub.nearest(xq, 5, index="flat")
        Db, Ib = client.nearest(xq, 5, index="flat")
        assert np.array_equal(Ia, Ib) and np.allclose(Da, Db, atol=1e-6)
        assert hub.sample(int(Ia[0, 0])) == client.sample(int(Ib[0, 0]))
        ea, eb = hub.nearest(xq[0], 2, level="entry"), client.nearest(xq[0], 2, level="entry")
        assert [m.name for m in ea] == [m.name for m in eb]
        with pytest.raises(E.DimensionError):
            client.nearest(rng.normal(size=(2, 5)), 3)
    finally:
        client.close()
        hub.close()
        srv.stop()
    # ProbeLog through a server on the hub that holds the models
    srv2 = Server(tmp_path / "embedded", socket_path=os.path.join(sock_dir, "p.sock"), shutdown_grace=2.0).start()
    try:
        with connect(srv2.url()) as c:
            got = c.search_logits(("m0", 1), k=3)
            assert got and all(m.name in ("m0", "m1") for m in got)
            assert not any(m.name == "m0" and m.logit == 1 for m in got)  # the query logit itself is left out
            with pytest.raises(E.InvalidArgumentError):
                c.search_logits(("m0", 99))
    finally:
        srv2.stop()


def test_wire_sketch_with_a_bad_coverage_record_is_refused():
    from fitsketch.protocol import sketch_from_wire

    sk = fitsketch.sketch_data(_data(3))
    back = sketch_from_wire(sk.to_record()).coverage      # the good record crosses the wire unchanged
    assert back is not None and sorted(back) == sorted(sk.coverage)
    for key, v in sk.coverage.items():
        if isinstance(v, np.ndarray):
            assert back[key].dtype == v.dtype, key
            np.testing.assert_array_equal(back[key], v, err_msg=key)
        else:
            assert back[key] == v, key
    for mutate in (lambda c: c.update(code=c["code"].astype(np.int64) + (1 << 20)),
                   lambda c: c.update(table=c["table"][:-1]),
                   lambda c: c.update(center=np.full_like(c["center"], np.nan)),
                   lambda c: c.update(bits=99)):
        rec = sk.to_record()
        rec["coverage"] = dict(rec["coverage"])
        mutate(rec["coverage"])
        with pytest.raises(E.InvalidArgumentError, match="coverage"):
            sketch_from_wire(rec)
