"""The daemon's side of systemd's notify protocol (``Type=notify``, sd_notify(3)): one
datagram of ``KEY=value`` lines to the socket ``$NOTIFY_SOCKET`` names.

``READY=1`` goes once the deployments lab.toml lists have started, or failed to: a failed
one does not keep systemd waiting for a start that will not come; ``STATUS=`` names the
ready and the failed ones (``systemctl status labctl`` shows it; ``labctl status`` says
why). ``STOPPING=1`` goes when the stop begins, before the drain. Not run by systemd (no
``NOTIFY_SOCKET``), nothing is sent; a message that cannot be sent is logged once and never
stops the daemon.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, MutableMapping
import os
import socket
from typing import Any

#: The variable systemd sets for a ``Type=notify`` service.
NOTIFY_SOCKET = "NOTIFY_SOCKET"


def socket_address(value: str) -> str | None:
    """The AF_UNIX address ``NOTIFY_SOCKET`` names: a path, or ``@name`` for an abstract
    socket (a leading NUL byte); None for anything else (systemd's ``vsock:`` included)."""
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    return value if value.startswith("/") else None


def send(message: str, address: str) -> None:
    """Send ``message`` as one datagram to ``address``, without waiting for room.

    Raises:
        OSError: nothing listens there, or its queue is full.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.setblocking(False)
        sock.sendto(message.encode(), address)


def ready_status(deployments: Iterable[Mapping[str, Any]]) -> str:
    """The ``STATUS=`` text once the configured deployments have started: which serve and
    which do not (with their state, e.g. ``failed``)."""
    ready = [d["name"] for d in deployments if d["state"] == "ready"]
    others = [f"{d['name']} ({d['state']})" for d in deployments if d["state"] != "ready"]
    text = f"ready: {', '.join(ready) or 'none'}"
    return text + (f"; not ready: {', '.join(others)}" if others else "")


class Notifier:
    """The messages of one daemon's life, sent where systemd listens.

    It takes ``NOTIFY_SOCKET`` out of ``environ`` (as sd_notify's ``unset_environment``), so
    the engines the daemon starts do not inherit it: only the daemon speaks for the unit.
    """

    def __init__(
        self, log: Callable[[str], None], environ: MutableMapping[str, str] = os.environ
    ) -> None:
        self.log = log
        self.target = environ.pop(NOTIFY_SOCKET, "")
        self.address = socket_address(self.target) if self.target else None
        self.stopped = False
        self.quiet = False  # after the first failure, logged
        if self.target and self.address is None:
            self._failed(f"{self.target!r} is not a socket path or @name")

    def ready(self, deployments: Iterable[Mapping[str, Any]]) -> None:
        """``READY=1`` with the deployments' states; not once the stop has begun."""
        if not self.stopped:
            self.notify(f"READY=1\nSTATUS={ready_status(list(deployments))}")

    def stopping(self) -> None:
        """``STOPPING=1``: the drain and the engines' stop begin."""
        self.stopped = True
        self.notify("STOPPING=1\nSTATUS=stopping: draining requests, then every engine")

    def notify(self, message: str) -> None:
        """Send ``message``; a failure is logged once, never raised."""
        if self.address is None:
            return
        try:
            send(message, self.address)
        except OSError as exc:
            self._failed(exc.strerror or str(exc))

    def _failed(self, why: str) -> None:
        if not self.quiet:
            self.quiet = True
            self.log(f"systemd notify: cannot send to {NOTIFY_SOCKET}={self.target}: {why}")
