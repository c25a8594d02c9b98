"""The state directory (``$LABCTL_HOME``): private, usable, and the admin token in it.

The directory holds the journal (with every deploy's settings), engine logs and
the admin token, so it is created 0700 and the files labctl writes there 0600.
A directory that cannot be used (read-only, a regular file, under one) is one
clear error at start, not a traceback in the middle of a deploy.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
import secrets
import stat
import urllib.parse

from labctl.errors import LabError

TOKEN_FILE = "admin-token"
#: Bytes of randomness in a generated admin token (43 characters of URL-safe base64).
TOKEN_BYTES = 32


class HomeError(LabError, OSError):
    """``$LABCTL_HOME`` cannot be used."""

    exit_code = 3


def prepare(home: Path) -> Path:
    """Create ``home`` (0700) if needed and check that labctl can write there.

    Raises:
        HomeError: it is a file, sits under one, or cannot be written.
    """
    try:
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:
        raise HomeError(
            f"LABCTL_HOME={home} is a file, not a directory; point LABCTL_HOME at a directory"
        ) from None
    except NotADirectoryError:
        raise HomeError(
            f"LABCTL_HOME={home} sits under a file; point LABCTL_HOME at a directory"
        ) from None
    except OSError as exc:
        raise HomeError(
            f"LABCTL_HOME={home} cannot be created ({exc.strerror or exc}); point LABCTL_HOME "
            "at a directory you can write"
        ) from None
    if not home.is_dir():
        raise HomeError(f"LABCTL_HOME={home} is not a directory; point LABCTL_HOME at one")
    owner = home.stat().st_uid
    if owner != os.getuid():  # its owner could plant a token, links or a journal there
        raise HomeError(
            f"LABCTL_HOME={home} belongs to uid {owner}, not to you (uid {os.getuid()}); point "
            "LABCTL_HOME at a directory of your own"
        )
    with contextlib.suppress(OSError):
        home.chmod(0o700)
    probe = home / f".probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.close(fd)
        probe.unlink()
    except OSError as exc:
        raise HomeError(
            f"LABCTL_HOME={home} is not writable ({exc.strerror or exc}); make it writable or "
            "point LABCTL_HOME at a directory you can write"
        ) from None
    return home


def private_dir(path: Path) -> Path:
    """``path`` as a directory, each part that had to be made private to its owner (0700)."""
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    for part in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made meanwhile by another process
            part.mkdir(mode=0o700)
    return missing[0] if missing else path


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, readable by its owner only."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def read_token(home: Path, strict: bool = False) -> str | None:
    """The lab's generated admin token in ``home``, if it made one.

    A token file that is not the user's own, that others may read, or that is too short to
    be one labctl made is not used: None, or with ``strict`` an error that says so.

    Raises:
        HomeError: with ``strict``, such a file.
    """
    path = home / TOKEN_FILE
    try:
        st = path.stat()
        token = path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    why = (
        f"belongs to uid {st.st_uid}" if st.st_uid != os.getuid()
        else f"may be read by others (mode {stat.S_IMODE(st.st_mode):o})" if st.st_mode & 0o077
        else "is too short to be one labctl made" if len(token) < 16
        else None
    )  # fmt: skip
    if why is None:
        return token
    if strict:
        raise HomeError(f"{path} {why}; delete it, and the lab makes a new token at its next start")
    return None


def ensure_token(home: Path) -> str:
    """The lab's generated admin token: read from ``home``, or made (0600) at first start.

    Raises:
        HomeError: the token file there is not one to trust (see :func:`read_token`).
    """
    token = read_token(home, strict=True)
    if token is None:
        token = secrets.token_urlsafe(TOKEN_BYTES)
        write_private(home / TOKEN_FILE, token + "\n")
    return token


URL_FILE = "url"


def same_lab(url: str, home: Path) -> bool:
    """Whether ``url`` is where the lab of ``home`` last listened (so that its token, read from
    ``home``, is sent to that lab and to no other server)."""
    try:
        known = (home / URL_FILE).read_text().strip()
    except OSError:
        return False
    a, b = urllib.parse.urlsplit(url), urllib.parse.urlsplit(known)
    loopback = {"localhost", "127.0.0.1", "::1"}
    hosts = {a.hostname, b.hostname}
    return a.port == b.port and (
        len(hosts) == 1
        or hosts <= loopback
        or (b.hostname in ("0.0.0.0", "::") and a.hostname in loopback)
    )


LOCK_FILE = "daemon.lock"


class DaemonLock:
    """The lab daemon's claim on ``home``: one daemon per state directory.

    Two daemons on one journal would each think the other's engines are leftovers; the
    lock (``flock``, released by the kernel however the holder dies) keeps it to one.
    """

    def __init__(self, home: Path) -> None:
        self.path = home / LOCK_FILE
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            holder = lock_holder(home)
            raise HomeError(
                f"another `labctl up` (pid {holder or '?'}) runs on LABCTL_HOME={home}; stop it "
                "with `labctl down`, or give this one another LABCTL_HOME"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing drops the lock
            self.fd = -1


def lock_holder(home: Path) -> int | None:
    """The pid of the daemon that holds ``home``, or None when no daemon runs on it."""
    try:
        fd = os.open(home / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else 0
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
