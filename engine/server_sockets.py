"""The server's operating-system resources: listen addresses, the TCP token file, the locks that keep one server per
hub and per socket path, binding (Unix socket with mode 0600, or loopback TCP), stale sockets.

Locks are exclusive non-blocking ``flock``\\ s on files holding the holder's pid: ``<hub>/server.lock``
(one server per hub) and ``<socket>.lock`` (one server per socket path, held while the server
lives, so a second one is refused however the first is doing)."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import logging
import os
import socket
import stat

from . import errors as E

log = logging.getLogger(__name__)

__all__ = ["parse_listen", "SOCKET_NAME", "LOCK_NAME"]

SOCKET_NAME = "fitsketch.sock"
LOCK_NAME = "server.lock"
UNIX_PATH_MAX = 107           # sun_path is 108 bytes including the NUL


# ------------------------------------------------------------------------------ addresses
def parse_listen(listen, allow_remote: bool = False) -> tuple[str, int]:
    """``"HOST:PORT"`` or ``(host, port)`` -> (host, port); refuses non-loopback hosts."""
    if isinstance(listen, str):
        host, sep, port = listen.rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit():
            raise E.InvalidArgumentError(f"--listen {listen!r} is not HOST:PORT, e.g. 127.0.0.1:7707")
        listen = (host, int(port))
    if not (isinstance(listen, tuple) and len(listen) == 2 and isinstance(listen[1], int)
            and 0 <= listen[1] < 65536):
        raise E.InvalidArgumentError(f"listen={listen!r} is not (host, port), e.g. ('127.0.0.1', 7707)")
    host, port = listen
    if not allow_remote:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as e:
            raise E.InvalidArgumentError(f"--listen host {host!r} cannot be resolved: {e}") from None
        addrs = {ipaddress.ip_address(i[4][0].split("%")[0]) for i in infos}
        if not addrs or not all(a.is_loopback for a in addrs):
            raise E.InvalidArgumentError(
                f"--listen host {host!r} is not a loopback address ({sorted(map(str, addrs))}): the protocol has "
                "no encryption; use 127.0.0.1, or pass --allow-remote if you really mean it")
    return host, port


# ------------------------------------------------------------------------------ the TCP token
def read_token(path: str) -> str:
    """The secret in ``--token-file`` ``path`` (a warning when other users can read the file)."""
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
        mode = os.stat(path).st_mode
    except OSError as e:
        raise E.InvalidArgumentError(f"--token-file {path!r} cannot be read: {e.strerror}") from None
    if not token:
        raise E.InvalidArgumentError(f"--token-file {path!r} is empty: put a long random secret in it, e.g. "
                                     "python -c 'import secrets; print(secrets.token_urlsafe(32))'")
    if mode & 0o077:
        log.warning("--token-file %s is readable by other users (mode %o): chmod 600 it", path, mode & 0o777)
    return token


# ------------------------------------------------------------------------------ locks
def flock_or_holder(fd: int) -> str | None:
    """Take an exclusive non-blocking ``flock`` on ``fd``: None when taken; when another process
    holds it, ``fd`` is closed and the text naming the holder (`` (pid N)`` when it wrote its pid,
    else empty) is returned. Other OS errors close ``fd`` and propagate."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return None
    except OSError as e:
        other = ""
        with contextlib.suppress(OSError, ValueError):
            other = f" (pid {int(os.pread(fd, 32, 0).decode().strip())})"
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return other
        raise


def _write_pid(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


def take_hub_lock(hub_path: str) -> int:
    """The fd of ``<hub>/server.lock``, locked: HubBusyError when another server holds it."""
    fd = os.open(os.path.join(hub_path, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o600)
    other = flock_or_holder(fd)
    if other is not None:
        raise E.HubBusyError(
            f"another fitsketch server{other} already serves hub at {hub_path}: stop it, or talk to it "
            f"with fitsketch.connect({hub_path!r})")
    _write_pid(fd)
    return fd


def release_hub_lock(fd: int) -> None:
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def take_socket_lock(path: str) -> tuple[int, str]:
    """``(fd, lock path)`` of an exclusive ``flock`` on ``<socket>.lock``, held while the server
    lives: a second server on the same socket path is refused however the first one is doing
    (even stopped with its backlog full, when a connect() probe would time out and call the
    socket stale)."""
    lock_path = path + ".lock"
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise E.HubBusyError(f"cannot listen on {path}: cannot create its lock file {lock_path}: "
                                 f"{e.strerror}") from None
        other = flock_or_holder(fd)
        if other is not None:
            raise E.SocketInUseError(
                f"socket {path!r} is in use by another fitsketch server{other} (it holds {lock_path}): "
                "choose another --socket, or stop that server")
        try:        # the lock file may have been removed by the server that held it, since we opened it
            same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    _write_pid(fd)
    return fd, lock_path


def release_socket_lock(fd: int, lock_path: str) -> None:
    """Remove the lock file while still holding it (see :func:`take_socket_lock`), then close it."""
    with contextlib.suppress(OSError):
        os.unlink(lock_path)
    os.close(fd)


# ------------------------------------------------------------------------------ binding
def bind_tcp(listen: tuple[str, int]) -> socket.socket:
    host, port = listen
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        s.listen(128)
    except OSError as e:
        s.close()
        raise E.HubBusyError(f"cannot listen on {host}:{port}: {e.strerror}: choose another port") from None
    return s


def bind_unix(path: str) -> tuple[socket.socket, tuple[int, int]]:
    """A listening Unix socket at ``path`` (mode 0600 before it listens) and its (device, inode),
    which :func:`unlink_socket` checks so that it never removes a newer server's socket."""
    clear_stale_socket(path)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    st = None
    try:
        s.bind(path)
        os.chmod(path, 0o600)          # before listen(): nobody can connect in between
        st = os.stat(path)
        s.listen(128)
    except OSError as e:
        s.close()
        if st is not None:
            unlink_socket(path, (st.st_dev, st.st_ino))
        raise E.HubBusyError(f"cannot listen on {path}: {e.strerror}") from None
    return s, (st.st_dev, st.st_ino)


def clear_stale_socket(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise E.InvalidArgumentError(f"socket path {path!r} exists and is not a socket: remove it or choose another")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except OSError:
        log.info("removing stale socket %s", path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    finally:
        probe.close()
    raise E.HubBusyError(f"socket {path!r} is in use by another server: choose another --socket")


def unlink_socket(path: str, sock_id) -> None:
    """Remove the socket file at ``path`` if it is still the one bound with ``sock_id``."""
    with contextlib.suppress(OSError):
        st = os.lstat(path)
        if (st.st_dev, st.st_ino) == sock_id:   # still ours, not a newer server's
            os.unlink(path)


def shutdown(sock) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
