"""One wallet per port and per data folder. A second instance must fail before it starts a
server: sharing a port, the kernel would split the providers' calls between two wallets;
sharing a data folder, two redis-servers would write one AOF."""

import contextlib
import errno
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from gateway.settings import Settings

LOCK_FILE_NAME = "up.lock"
PID_TEXT_BYTES_MAX = 32


class InstanceConflict(RuntimeError):
    """Another instance holds a port or the data folder (a one-line reason)."""


def check_ports_free(settings: Settings) -> None:
    """Bind every listener's address as the listeners will, without SO_REUSEPORT (with it the
    bind would join the other instance's port), and raise InstanceConflict naming the setting
    of a port that is taken. All probes are held at once: GATEWAY_PORT == ADMIN_PORT fails too."""
    listeners = (
        ("GATEWAY_PORT", settings.gateway_host, settings.gateway_port),
        ("ADMIN_PORT", settings.admin_host, settings.admin_port),
    )
    with contextlib.ExitStack() as probes:
        for name, host, port in listeners:
            if port == 0:  # the kernel picks a free one
                continue
            addresses = socket.getaddrinfo(
                host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
            for family, kind, protocol, _, address in dict.fromkeys(addresses):
                probe = probes.enter_context(socket.socket(family, kind, protocol))
                # as asyncio's listeners: a port left in TIME_WAIT by a stopped instance is free
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                try:
                    probe.bind(address)
                except OSError as exc:
                    reason = (
                        "is in use (another wallet-gateway?)"
                        if exc.errno == errno.EADDRINUSE
                        else f"cannot be listened on: {exc.strerror}"
                    )
                    raise InstanceConflict(f"{name} {port} on {address[0]} {reason}") from None


@contextlib.contextmanager
def data_dir_locked(data_dir: str) -> Iterator[None]:
    """Hold DATA_DIR for as long as the block runs (`up`: its whole life), or raise
    InstanceConflict naming the pid of the process holding it. The kernel releases the lock
    when the process dies, however it dies: a stale lock file locks nothing."""
    path = Path(data_dir).absolute()
    path.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path / LOCK_FILE_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, PID_TEXT_BYTES_MAX, 0).decode(errors="replace").strip()
            raise InstanceConflict(
                f"DATA_DIR {path} is in use by another `wallet-gateway up` "
                f"(pid {holder or 'unknown'})"
            ) from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(descriptor)  # releases the lock
