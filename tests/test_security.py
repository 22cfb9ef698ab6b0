"""Security: no deserialization of code anywhere in the packages, the socket's permissions, the TCP
token, loopback-only listening, and request paths that cannot escape ``--allow-paths``.

The source scan walks the AST of every .py file under engine/, kernels/, storage/ and bench/
(storage has its own, stricter import scan in test_storage.py).
"""
from __future__ import annotations

import ast
import os
import pathlib
import shutil
import socket
import stat
import tempfile

import numpy as np
import pandas as pd
import pytest

import _hubcheck as hc
import fitsketch
from fitsketch import errors as E
from fitsketch.client import connect
from fitsketch.protocol import encode_frame, recv_frame, resolve_path
from fitsketch.server import Server, parse_listen

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("engine", "kernels", "storage", "bench")
BANNED_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "shelve", "marshal", "joblib"}


def _sources():
    files = [f for pkg in PACKAGES for f in sorted((ROOT / pkg).rglob("*.py"))]
    assert len(files) > 20
    return files


def _dotted(node) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else node.attr
    return ""


def _kw(call: ast.Call, name: str):
    for k in call.keywords:
        if k.arg == name:
            return k.value
    return None


def _findings(src: str, filename: str) -> list[str]:
    out = []
    tree = ast.parse(src, filename)
    aliases = {}                                   # local name -> module it stands for
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                aliases[a.asname or a.name.split(".")[0]] = a.name
                if a.name.split(".")[0] in BANNED_MODULES:
                    out.append(f"{filename}:{node.lineno}: import {a.name}")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] in BANNED_MODULES:
                out.append(f"{filename}:{node.lineno}: from {node.module} import ...")
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
                if f"{node.module}.{a.name}" in ("torch.load", "yaml.load", "numpy.load", "pandas.read_pickle",
                                                 "yaml.unsafe_load", "yaml.full_load"):
                    out.append(f"{filename}:{node.lineno}: from {node.module} import {a.name}")
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        head, _, rest = name.partition(".")
        full = f"{aliases.get(head, head)}.{rest}" if rest else aliases.get(head, head)
        where = f"{filename}:{node.lineno}: {name}(...)"
        if isinstance(node.func, ast.Name) and node.func.id in ("eval", "exec", "compile", "__import__"):
            out.append(where)
        elif full in ("importlib.import_module", "importlib.__import__") and not (
                node.args and isinstance(node.args[0], ast.Constant)):
            out.append(where + " with a computed module name")
        elif full in ("torch.load", "pandas.read_pickle", "yaml.unsafe_load", "yaml.full_load") \
                or name.endswith((".read_pickle", ".to_pickle")):
            out.append(where)
        elif full in ("numpy.load", "np.load") or name in ("np.load", "numpy.load"):
            ap = _kw(node, "allow_pickle")          # numpy's default is False (since 1.16.3)
            if ap is not None and not (isinstance(ap, ast.Constant) and ap.value is False):
                out.append(where + " with allow_pickle not False")
        elif full == "yaml.load" or name == "yaml.load":
            loader = _kw(node, "Loader")
            if loader is None or "Safe" not in _dotted(loader):
                out.append(where + " without a SafeLoader")
        elif full in ("marshal.loads", "marshal.load"):
            out.append(where)
    return out


def test_no_code_deserialization_in_any_package():
    found = []
    for f in _sources():
        found += _findings(f.read_text(), str(f.relative_to(ROOT)))
    assert not found, "code-executing deserialization or dynamic code:\n" + "\n".join(found)


@pytest.mark.parametrize("snippet", [
    "import pickle", "from pickle import loads", "import dill as d", "import marshal",
    "eval('1')", "exec('x=1')", "__import__(name)", "import importlib\nimportlib.import_module(user)",
    "import torch\ntorch.load(f)", "from torch import load\nload(f)", "import numpy as np\nnp.load(f, allow_pickle=flag)",
    "import numpy as np\nnp.load(f, allow_pickle=True)", "import yaml\nyaml.load(s)",
    "import yaml\nyaml.load(s, Loader=yaml.Loader)", "import pandas as pd\npd.read_pickle(p)",
])
def test_the_scan_finds_what_it_looks_for(snippet):
    assert _findings(snippet, "x.py"), snippet


@pytest.mark.parametrize("snippet", [
    "model.eval()", "import numpy as np\nnp.load(f, allow_pickle=False)", "import numpy as np\nnp.load(f)", "import yaml\nyaml.load(s, Loader=yaml.SafeLoader)",
    "import yaml\nyaml.safe_load(s)", "import importlib\nimportlib.import_module('json')", "x = 'pickle'",
])
def test_the_scan_passes_safe_code(snippet):
    assert not _findings(snippet, "x.py"), snippet


def test_transformers_weights_are_loaded_as_safetensors_only():
    """``from_pretrained`` without ``use_safetensors=True`` falls back to a pickled pytorch_model.bin
    when the safetensors file is missing; fitsketch checks for model.safetensors first, but the
    loader itself should refuse the fallback."""
    found = []
    for f in _sources():
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Call) and _dotted(node.func).endswith("AutoModel.from_pretrained"):
                v = _kw(node, "use_safetensors")
                if not (isinstance(v, ast.Constant) and v.value is True):
                    found.append(f"{f.relative_to(ROOT)}:{node.lineno}")
    if found:
        pytest.xfail(f"hardening (not exploitable while model.safetensors is checked first): "
                     f"from_pretrained without use_safetensors=True at {found}")


# ----------------------------------------------------------------------------------- socket
@pytest.fixture
def sock_dir():
    d = tempfile.mkdtemp(dir="/tmp", prefix="fsec")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_unix_socket_is_0600_whatever_the_umask(tmp_path, sock_dir):
    old = os.umask(0)
    try:
        srv = Server(tmp_path / "hub", socket_path=os.path.join(sock_dir, "s.sock"), shutdown_grace=2.0).start()
    finally:
        os.umask(old)
    try:
        st = os.stat(srv.url())
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        lock = os.stat(tmp_path / "hub" / "server.lock")
        assert stat.S_IMODE(lock.st_mode) & 0o077 == 0
    finally:
        srv.stop()


def test_tcp_token_is_compared_in_constant_time_in_the_source():
    src = (ROOT / "engine" / "server.py").read_text()
    tree = ast.parse(src)
    hello = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "_hello")
    calls = {_dotted(n.func) for n in ast.walk(hello) if isinstance(n, ast.Call)}
    assert "hmac.compare_digest" in calls
    for n in ast.walk(hello):                     # no == / != / in on the token
        if isinstance(n, ast.Compare):
            names = {x.id for x in ast.walk(n) if isinstance(x, ast.Name)} | \
                    {x.attr for x in ast.walk(n) if isinstance(x, ast.Attribute)}
            assert not ({"token"} & names and any(isinstance(op, (ast.Eq, ast.NotEq, ast.In)) for op in n.ops)), \
                ast.unparse(n)


def _tcp_hello(addr, token):
    s = socket.create_connection(addr, timeout=10)
    try:
        s.sendall(encode_frame({"id": 1, "op": "hello", "args": {"protocol": 1, "token": token}}))
        r = recv_frame(s, 1 << 20)
        closed = True
        if r["ok"]:
            s.sendall(encode_frame({"id": 2, "op": "names", "args": {}}))
            closed = not recv_frame(s, 1 << 20)["ok"]
        else:
            try:
                closed = s.recv(1) == b""
            except ConnectionResetError:
                closed = True
        return r, closed
    finally:
        s.close()


def test_tcp_refuses_wrong_and_empty_tokens(tmp_path):
    token = "Zx9-secret-token-ü"
    with pytest.raises(E.InvalidArgumentError, match="token"):
        Server(tmp_path / "hub", listen="127.0.0.1:0", token="")
    srv = Server(tmp_path / "hub", listen="127.0.0.1:0", token=token, shutdown_grace=2.0).start()
    try:
        for bad in ("", " ", token[:-1], token + "\x00", token.upper(), token.encode().decode("latin-1"),
                    [token], {"t": token}, 0, True, b"x"):
            r, closed = _tcp_hello(srv.address, bad)
            assert not r["ok"] and r["error"]["code"] == "unauthorized" and closed, bad
        r, closed = _tcp_hello(srv.address, token)
        assert r["ok"] and not closed
        with pytest.raises(E.UnauthorizedError):
            connect(srv.url(), token="")
        with connect(srv.url(), token=token) as c:
            assert c.ping()
    finally:
        srv.stop()


@pytest.mark.parametrize("addr", ["0.0.0.0:7707", "[::]:7707", ":::7707", "0:7707", "[::ffff:8.8.8.8]:1",
                                  "10.0.0.1:80", "192.168.1.1:80", "[fe80::1]:80", "255.255.255.255:1"])
def test_non_loopback_listen_is_refused_without_the_flag(tmp_path, addr):
    with pytest.raises(E.InvalidArgumentError):
        parse_listen(addr)
    with pytest.raises(E.InvalidArgumentError):
        Server(tmp_path / "hub", listen=addr, token="t" * 16)
    assert not (tmp_path / "hub").exists()


@pytest.mark.parametrize("addr", ["127.0.0.1:0", "localhost:0", "[::1]:0", "127.8.9.10:0"])
def test_loopback_listen_is_accepted(addr):
    parse_listen(addr)


# ------------------------------------------------------------------------------------ paths
def test_request_paths_cannot_escape_the_allowed_directories(tmp_path, sock_dir):
    allowed = tmp_path / "data"
    (allowed / "sub").mkdir(parents=True)
    sibling = tmp_path / "data-evil"                 # shares the prefix "data"
    sibling.mkdir()
    secret = tmp_path / "secret.csv"
    df = pd.DataFrame({"a": np.arange(20.0), "b": np.arange(20) % 3})
    for p in (allowed / "ok.csv", allowed / "sub" / "ok2.csv", sibling / "x.csv", secret):
        df.to_csv(p, index=False)
    (allowed / "link.csv").symlink_to(secret)
    (allowed / "dirlink").symlink_to(tmp_path)                          # a directory link out
    (allowed / "sub" / "chain.csv").symlink_to(allowed / "link.csv")    # a chain that ends outside
    (allowed / "inside.csv").symlink_to(allowed / "ok.csv")             # a link that stays inside: fine
    escapes = [str(secret), str(allowed / ".." / "secret.csv"), str(allowed / "sub" / ".." / ".." / "secret.csv"),
               str(allowed / "link.csv"), str(allowed / "dirlink" / "secret.csv"), str(allowed / "sub" / "chain.csv"),
               str(sibling / "x.csv"), "data/ok.csv", "./" + str(allowed / "ok.csv"), "~/x.csv",
               str(allowed / "ok.csv") + "\x00.npy", "/etc/passwd", "/proc/self/environ", "/dev/zero", ""]
    for p in escapes:
        with pytest.raises(E.InvalidArgumentError):
            resolve_path(p, [str(allowed)])
    assert resolve_path(str(allowed / "sub" / ".." / "ok.csv"), [str(allowed)]) == str(allowed / "ok.csv")
    assert resolve_path(str(allowed / "inside.csv"), [str(allowed)]) == str(allowed / "ok.csv")
    with pytest.raises(E.InvalidArgumentError):
        resolve_path(str(allowed / "ok.csv"), [])

    srv = Server(tmp_path / "hub", socket_path=os.path.join(sock_dir, "s.sock"), allow_paths=[allowed],
                 shutdown_grace=2.0).start()
    try:
        with connect(srv.url(), remote_paths=True) as c:
            c.add("ok", str(allowed / "ok.csv"))
            for i, p in enumerate(escapes):
                if "\x00" in p or not p:
                    continue
                with pytest.raises(E.InvalidArgumentError):
                    c.add(f"x{i}", p)
                with pytest.raises(E.InvalidArgumentError):
                    c.search(p)
            assert c.names() == ["ok"]
            hc.check_hub(srv.hub)
    finally:
        srv.stop()


def test_ops_outside_the_allow_list_are_unreachable(tmp_path, sock_dir):
    srv = Server(tmp_path / "hub", socket_path=os.path.join(sock_dir, "s.sock"), shutdown_grace=2.0).start()
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(srv.url())
        s.sendall(encode_frame({"id": 0, "op": "hello", "args": {"protocol": 1}}))
        assert recv_frame(s, 1 << 20)["ok"]
        from fitsketch.server import HANDLERS

        for op in ("close", "store", "_transact", "__init__", "__del__", "__class__", "config", "path", "_add",
                   "_store", "serve_forever", "stop", "hub", "HANDLERS", "_op_remove", "os.system", "hello "):
            assert op not in HANDLERS
            s.sendall(encode_frame({"id": 1, "op": op, "args": {}}))
            r = recv_frame(s, 1 << 20)
            assert not r["ok"] and r["error"]["code"] == "protocol", op
        s.sendall(encode_frame({"id": 2, "op": "ping", "args": {}}))
        assert recv_frame(s, 1 << 20)["ok"]
        s.close()
        assert srv.hub is not None and srv._accept_thread.is_alive()
    finally:
        srv.stop()


def test_hub_refuses_pickled_and_object_values(tmp_path):
    """Nothing a user passes is stored through pickle: object arrays in metadata are refused."""
    import pickle  # noqa: S403 - only to build the hostile payload

    with fitsketch.open(tmp_path / "h") as hub:
        before = hc.dump(hub)
        for meta in ({"x": np.array([object()], dtype=object)}, {"x": object()}):
            with pytest.raises(E.CodecError):
                hub.add("m", hc.make_frame("m"), metadata=meta)
        e = hub.add("p", hc.make_frame("p"), metadata={"blob": pickle.dumps(os.system)})
        assert isinstance(hub.get("p").metadata["blob"], bytes)     # stored as bytes, never unpickled
        assert e.name == "p" and len(hc.dump(hub)["entries"]) == len(before["entries"]) + 1
