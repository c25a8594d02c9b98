"""The disk measurement's parts: the mount table, the file it picks, the bounded cold read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from labctl.cache import disk
from labctl.units import GiB, MiB

MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
25 24 0:23 / /dev/shm rw,relatime - tmpfs tmpfs rw,size=24683584k
61 27 0:52 / /mnt/models rw,relatime shared:30 - nfs4 filer:/export/models rw,vers=4.2,addr=10.0.0.5
62 27 0:53 / /mnt/share rw,relatime - cifs //nas/share rw,vers=3.1.1
63 27 0:54 / /home/u/remote rw,nosuid - fuse.sshfs u@box:/data rw,user_id=1000
64 27 0:55 / /var/lib/lxcfs rw,nosuid - fuse.lxcfs lxcfs rw
65 27 0:56 / /mnt/my\\040models rw - ext4 /dev/sdb1 rw
66 61 0:57 / /mnt/models/scratch rw - tmpfs tmpfs rw
this line does not parse
"""


def test_the_mount_table_names_network_filesystems_and_ram() -> None:
    mounts = disk.parse_mountinfo(MOUNTINFO)
    assert len(mounts) == 9
    by_point = {m.mount_point: m for m in mounts}
    nfs = by_point["/mnt/models"]
    assert (nfs.fs_type, nfs.source, nfs.network, nfs.ram) == (
        "nfs4", "filer:/export/models", True, False,
    )  # fmt: skip
    assert "a network filesystem (filer:/export/models)" in nfs.flags()[0]
    assert by_point["/mnt/share"].network and by_point["/home/u/remote"].network
    assert not by_point["/var/lib/lxcfs"].network  # a FUSE filesystem that is local
    shm = by_point["/dev/shm"]
    assert (
        shm.ram
        and not shm.network
        and shm.flags() == ["tmpfs: RAM, not a disk (the rate is memory's)"]
    )
    assert by_point["/"].flags() == [] and by_point["/mnt/my models"].fs_type == "ext4"


def test_a_path_belongs_to_the_deepest_mount_that_holds_it() -> None:
    mounts = disk.parse_mountinfo(MOUNTINFO)

    def of(path: str) -> str:
        m = disk.mount_of(Path(path), mounts)
        assert m is not None
        return m.fs_type

    assert of("/mnt/models/hub/models--Qwen--Qwen3-8B") == "nfs4"
    assert of("/mnt/models/scratch/x") == "tmpfs"
    assert of("/mnt/modelsfoo") == "ext4"  # a prefix of the name is not a parent
    assert of("/mnt/my models/a.gguf") == "ext4" and of("/dev/shm") == "tmpfs"
    real = disk.mount_of(Path("/"))  # this machine's own table
    assert real is not None and real.mount_point == "/"


def test_the_largest_file_is_picked_and_partial_downloads_and_links_are_not(
    tmp_path: Path,
) -> None:
    (tmp_path / "blobs").mkdir()
    (tmp_path / "blobs" / "small").write_bytes(b"x" * 10)
    (tmp_path / "blobs" / "big").write_bytes(b"x" * 1000)
    (tmp_path / "blobs" / "bigger.incomplete").write_bytes(b"x" * 5000)
    (tmp_path / "link").symlink_to(tmp_path / "blobs" / "big")
    assert disk.largest_file(tmp_path) == tmp_path / "blobs" / "big"
    assert disk.largest_file(tmp_path / "empty-dir-that-is-not-there") is None


def test_a_cold_read_stops_at_its_byte_bound_and_says_how_it_read(tmp_path: Path) -> None:
    f = tmp_path / "weights.bin"
    f.write_bytes(os.urandom(3 * MiB))
    whole = disk.read_cold(f, max_bytes=GiB, chunk=MiB)
    assert whole.bytes == 3 * MiB and whole.method in ("o_direct", "fadvise")
    assert whole.seconds > 0 and whole.bytes_per_second > 0 and not whole.temporary
    part = disk.read_cold(f, max_bytes=MiB, chunk=MiB)
    assert part.bytes == MiB
    assert whole.cold(disk.Mount("/", "ext4", "/dev/sda")) is True
    assert whole.cold(disk.Mount("/dev/shm", "tmpfs", "tmpfs")) is False
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(disk.DiskError, match="is empty"):
        disk.read_cold(tmp_path / "empty")
    with pytest.raises(disk.DiskError, match="cannot read"):
        disk.read_cold(tmp_path / "missing")


def test_a_temporary_file_is_written_read_cold_and_removed(tmp_path: Path) -> None:
    reading = disk.write_and_read(tmp_path, size=4 * MiB, chunk=MiB)
    assert reading.temporary and reading.bytes == 4 * MiB
    assert Path(reading.file).parent == tmp_path and list(tmp_path.iterdir()) == []
    with pytest.raises(disk.DiskError, match="cannot use"):
        disk.write_and_read(tmp_path / "missing")


def test_a_cold_measurement_is_kept_by_filesystem_and_a_warm_one_is_not(tmp_path: Path) -> None:
    home = tmp_path / "home"
    mount = disk.mount_of(tmp_path)
    assert disk.saved_rate(home, tmp_path) is None
    disk.save(home, mount, disk.Reading("f", 2 * 10**9, 1.0, "o_direct", False))
    assert disk.saved_rate(home, tmp_path) == pytest.approx(2e9)
    assert (home / disk.SAVED).stat().st_mode & 0o777 == 0o600
    disk.save(home, mount, disk.Reading("f", 2 * 10**9, 0.1, "page_cache", False))
    assert disk.saved_rate(home, tmp_path) is None  # the page cache's rate is not the disk's
