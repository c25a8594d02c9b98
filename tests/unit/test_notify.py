"""The daemon's systemd notify messages: datagrams to NOTIFY_SOCKET, a path or an abstract
name; nothing without one; a failure logged once, never raised."""

from __future__ import annotations

from collections.abc import Iterator
import os
from pathlib import Path
import socket

import pytest

from labctl.daemon.notify import Notifier, ready_status, socket_address


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound AF_UNIX datagram socket, as systemd's, and its NOTIFY_SOCKET value."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify"
    sock.bind(str(path))
    sock.settimeout(2)
    try:
        yield sock, str(path)
    finally:
        sock.close()


def test_ready_then_stopping_arrive_in_order(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    env = {"NOTIFY_SOCKET": path, "OTHER": "1"}
    logged: list[str] = []
    notifier = Notifier(logged.append, env)
    assert env == {"OTHER": "1"}  # the engines it starts do not inherit it
    notifier.ready([{"name": "chat", "state": "ready"}, {"name": "asr", "state": "failed"}])
    notifier.stopping()
    notifier.ready([])  # a start that ends after the stop began: no READY=1 then
    assert sock.recv(4096) == b"READY=1\nSTATUS=ready: chat; not ready: asr (failed)"
    assert sock.recv(4096).startswith(b"STOPPING=1\nSTATUS=stopping")
    sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        sock.recv(4096)
    assert logged == []


def test_an_abstract_socket_name() -> None:
    name = f"labctl-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        Notifier(print, {"NOTIFY_SOCKET": f"@{name}"}).stopping()
        assert sock.recv(4096).startswith(b"STOPPING=1\n")


def test_unset_sends_nothing_and_logs_nothing() -> None:
    logged: list[str] = []
    notifier = Notifier(logged.append, {})
    notifier.ready([{"name": "chat", "state": "ready"}])
    notifier.stopping()
    assert notifier.address is None and logged == []


def test_a_dead_socket_is_logged_once_never_raised(tmp_path: Path) -> None:
    logged: list[str] = []
    notifier = Notifier(logged.append, {"NOTIFY_SOCKET": str(tmp_path / "gone")})
    notifier.ready([])
    notifier.stopping()
    assert len(logged) == 1 and "cannot send to NOTIFY_SOCKET=" in logged[0]


def test_an_address_of_another_kind_is_logged_once() -> None:
    logged: list[str] = []
    Notifier(logged.append, {"NOTIFY_SOCKET": "vsock:2:1234"}).stopping()
    assert len(logged) == 1 and "not a socket path or @name" in logged[0]


def test_socket_address() -> None:
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("@abc") == "\0abc"
    assert socket_address("@") is None and socket_address("relative") is None


def test_ready_status() -> None:
    assert ready_status([]) == "ready: none"
    assert ready_status([{"name": "a", "state": "ready"}]) == "ready: a"
