"""How fast the disk holding the model cache reads, and what kind of filesystem it is.

A start reads its weights once, sequentially, mostly cold: what the page cache already
holds says nothing about it. So a measurement reads a file past the page cache, with
``O_DIRECT`` (an aligned buffer; the kernel copies straight from the device) or, where the
filesystem refuses it, after ``posix_fadvise(DONTNEED)`` has dropped the file's clean pages;
it stops at a byte or time bound, whichever comes first. The file is the largest one under
the path (a model's weights, in a cache), or a temporary file written there, synced, dropped
and removed after.

The filesystem comes from ``/proc/self/mountinfo``: a network filesystem (NFS, SMB, Ceph,
Lustre, a FUSE mount of an object store, …) reads at the network's rate and often far
slower cold than warm; tmpfs and ramfs are memory, not a disk.
"""

from __future__ import annotations

from collections.abc import Iterable
import contextlib
from dataclasses import asdict, dataclass
import errno
import json
import mmap
import os
from pathlib import Path
import tempfile
import time
from typing import Any

from labctl.errors import LabError
from labctl.home import private_dir, write_private
from labctl.units import GiB, MiB

#: Defaults: read at most this many bytes, for at most this long, in chunks of this size.
MAX_BYTES, MAX_SECONDS, CHUNK = GiB, 3.0, 8 * MiB
#: The size of the temporary file written where no file is large enough to read.
TEMP_BYTES = 256 * MiB
#: A file smaller than this says more about latency than about a sequential read rate.
MIN_FILE_BYTES = 64 * MiB
#: Entries looked at under a directory when picking the largest file.
WALK_LIMIT = 200_000
#: Where ``labctl models disk`` keeps its measurements, in ``$LABCTL_HOME``.
SAVED = "disk.json"

#: Filesystem types served over a network (or from the host of a virtual machine).
NETWORK_TYPES = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "glusterfs", "lustre", "9p", "virtiofs",
    "afs", "gpfs", "beegfs", "orangefs", "pvfs2", "wekafs", "panfs", "ocfs2", "gfs2", "davfs",
    "fuse.sshfs", "fuse.s3fs", "fuse.rclone", "fuse.gcsfuse", "fuse.goofys", "fuse.juicefs",
    "fuse.mountpoint-s3", "fuse.blobfuse", "fuse.blobfuse2", "fuse.glusterfs", "fuse.ceph",
    "fuse.cephfs", "fuse.davfs", "fuse.alluxio-fuse", "fuse.geesefs",
})  # fmt: skip
#: FUSE filesystems that are local (any other ``fuse.*`` counts as network: most are remote
#: stores seen through a user-space driver).
LOCAL_FUSE = frozenset({
    "fuse.lxcfs", "fuse.gvfsd-fuse", "fuse.portal", "fuse.xdg-document-portal",
    "fuse.fuse-overlayfs", "fuse.squashfuse", "fuse.squashfuse_ll", "fuse.AppImage",
    "fuse.bindfs", "fuse.encfs", "fuse.gocryptfs", "fuse.ntfs-3g",
})  # fmt: skip
RAM_TYPES = frozenset({"tmpfs", "ramfs"})


class DiskError(LabError, OSError):
    """The disk cannot be measured there (no such path, nothing to read, no room to write)."""


@dataclass(frozen=True)
class Mount:
    """A mounted filesystem, as ``/proc/self/mountinfo`` lists it."""

    mount_point: str
    fs_type: str
    source: str

    @property
    def network(self) -> bool:
        t = self.fs_type
        return t in NETWORK_TYPES or (t.startswith("fuse.") and t not in LOCAL_FUSE)

    @property
    def ram(self) -> bool:
        return self.fs_type in RAM_TYPES

    def flags(self) -> list[str]:
        """What a reader of the rate should know about this filesystem."""
        if self.ram:
            return [f"{self.fs_type}: RAM, not a disk (the rate is memory's)"]
        if self.network:
            return [f"{self.fs_type}: a network filesystem ({self.source}); cold reads go "
                    "over the network, and a first start reads at that rate"]  # fmt: skip
        if self.fs_type == "overlay":
            return ["overlay: a container's filesystem (the rate is its backing disk's)"]
        return []

    def doc(self) -> dict[str, Any]:
        return {**asdict(self), "network": self.network, "ram": self.ram}


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes (``\\040``)."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit() and i + 3 < len(field):
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[Mount]:
    """Mounts from ``/proc/self/mountinfo`` text, in its order (later mounts cover earlier
    ones at the same point); lines that do not parse are skipped."""
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 2:
            continue
        mounts.append(Mount(_unescape(fields[4]), tail[0], _unescape(tail[1])))
    return mounts


def mount_of(path: Path, mounts: Iterable[Mount] | None = None) -> Mount | None:
    """The filesystem that holds ``path`` (None: no mount table to read)."""
    if mounts is None:
        try:
            mounts = parse_mountinfo(Path("/proc/self/mountinfo").read_text())
        except OSError:
            return None
    real = os.path.realpath(path)
    best: Mount | None = None
    for m in mounts:
        point = m.mount_point.rstrip("/") or "/"
        inside = real == point or real.startswith(point + "/") or point == "/"
        if inside and (best is None or len(point) >= len(best.mount_point.rstrip("/") or "/")):
            best = m
    return best


@dataclass(frozen=True)
class Reading:
    """One timed sequential read."""

    file: str
    bytes: int
    seconds: float
    #: ``o_direct``, ``fadvise`` (the file's pages dropped first), or ``page_cache`` (neither
    #: was possible: the figure is the page cache's, not the disk's).
    method: str
    #: The file was written for the measurement (and removed after).
    temporary: bool

    @property
    def bytes_per_second(self) -> float:
        return self.bytes / self.seconds if self.seconds > 0 else 0.0

    def cold(self, mount: Mount | None) -> bool:
        """Whether it read from the device: past the page cache, and not from memory."""
        return self.method != "page_cache" and not (mount is not None and mount.ram)

    def doc(self) -> dict[str, Any]:
        return {**asdict(self), "read_gbps": round(self.bytes_per_second / 1e9, 3)}


def largest_file(root: Path, limit: int = WALK_LIMIT) -> Path | None:
    """The largest regular file under ``root`` (links not followed, partial downloads
    skipped), looking at no more than ``limit`` entries."""
    best, size, seen = None, -1, 0
    for top, dirs, files in os.walk(root):
        for name in files:
            seen += 1
            if name.endswith(".incomplete"):
                continue
            try:
                st = os.lstat(os.path.join(top, name))
            except OSError:
                continue
            if st.st_size > size and (st.st_mode & 0o170000) == 0o100000:
                best, size = Path(top, name), st.st_size
        seen += len(dirs)
        if seen > limit:
            break
    return best


def read_cold(
    path: Path, max_bytes: int = MAX_BYTES, max_seconds: float = MAX_SECONDS, chunk: int = CHUNK
) -> Reading:
    """Read ``path`` from its start past the page cache, up to the bounds.

    Raises:
        DiskError: it cannot be opened or read.
    """
    chunk = max(4096, min(chunk, max_bytes) // 4096 * 4096)  # O_DIRECT: whole pages
    try:
        return _timed(path, os.O_DIRECT, "o_direct", max_bytes, max_seconds, chunk)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
            raise DiskError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:  # the filesystem takes no O_DIRECT (tmpfs before Linux 6.6, some FUSE): drop, read
        return _timed(path, 0, "fadvise", max_bytes, max_seconds, chunk)
    except OSError as exc:
        raise DiskError(f"cannot read {path}: {exc.strerror or exc}") from None


def _timed(
    path: Path, flag: int, method: str, max_bytes: int, max_seconds: float, chunk: int
) -> Reading:
    fd = os.open(path, os.O_RDONLY | flag)
    buf = mmap.mmap(-1, chunk)  # page-aligned, as O_DIRECT needs
    try:
        if not flag:
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            except (AttributeError, OSError):
                method = "page_cache"
        done = 0
        start = time.perf_counter()
        while done < max_bytes and time.perf_counter() - start < max_seconds:
            n = os.preadv(fd, [buf], done)
            done += n
            if n < chunk:
                break
        seconds = time.perf_counter() - start
    finally:
        buf.close()
        os.close(fd)
    if done == 0:
        raise DiskError(f"{path} is empty; give a larger file, or a directory to write one in")
    return Reading(str(path), done, seconds, method, False)


def write_and_read(
    directory: Path, size: int = TEMP_BYTES, max_seconds: float = MAX_SECONDS,
    chunk: int = CHUNK,
) -> Reading:  # fmt: skip
    """Write ``size`` bytes to a temporary file in ``directory``, sync it, drop it from the
    page cache, read it back cold, and remove it.

    Raises:
        DiskError: the directory cannot be written, or lacks the room.
    """
    try:
        st = os.statvfs(directory)
    except OSError as exc:
        raise DiskError(f"cannot use {directory}: {exc.strerror or exc}") from None
    free = st.f_bavail * st.f_frsize
    size = min(size, (free - GiB) // chunk * chunk)  # leave a GiB to everyone else
    if size < chunk:
        raise DiskError(f"{directory} has {free / GiB:.2f} GiB free, too little to write a "
                        "test file; give a file to read instead")  # fmt: skip
    block = os.urandom(chunk)  # incompressible, so a compressing filesystem stores it all
    try:
        fd, name = tempfile.mkstemp(prefix=".labctl-disk-", dir=directory)
    except OSError as exc:
        raise DiskError(f"cannot write a test file in {directory} ({exc.strerror or exc}); "
                        "give a file to read, or a directory you can write") from None  # fmt: skip
    try:
        try:
            with os.fdopen(fd, "wb") as fh:
                for _ in range(size // chunk):
                    fh.write(block)
                fh.flush()
                os.fsync(fh.fileno())  # clean pages, which DONTNEED drops
            reading = read_cold(Path(name), size, max_seconds, chunk)
        except DiskError:
            raise
        except OSError as exc:
            raise DiskError(
                f"cannot write a test file in {directory}: {exc.strerror or exc}"
            ) from None
        return Reading(reading.file, reading.bytes, reading.seconds, reading.method, True)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)


# -- what the lab keeps -----------------------------------------------------------------


def save(home: Path, mount: Mount | None, reading: Reading) -> Path:
    """Keep a cold measurement in ``$LABCTL_HOME`` by mount point (the last one of each), for
    the lab's start predictions."""
    path = home / SAVED
    doc = _load(path)
    key = mount.mount_point if mount is not None else "/"
    doc[key] = {**reading.doc(), "cold": reading.cold(mount),
                "fs_type": mount.fs_type if mount else None, "measured_at": time.time()}  # fmt: skip
    try:
        private_dir(home)
        write_private(path, json.dumps({"measurements": doc}, indent=2))
    except OSError as exc:
        raise DiskError(f"cannot keep the measurement in {path} ({exc.strerror or exc}); "
                        "check that LABCTL_HOME is a directory you can write") from None  # fmt: skip
    return path


def saved_rate(home: Path, where: Path) -> float | None:
    """Bytes per second that the last cold measurement of ``where``'s filesystem read (None:
    it was never measured)."""
    mount = mount_of(where)
    entry = _load(home / SAVED).get(mount.mount_point if mount is not None else "/")
    if not isinstance(entry, dict) or not entry.get("cold"):
        return None
    rate = entry.get("read_gbps")
    return float(rate) * 1e9 if isinstance(rate, (int, float)) and rate > 0 else None


def _load(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    found = doc.get("measurements") if isinstance(doc, dict) else None
    return dict(found) if isinstance(found, dict) else {}
